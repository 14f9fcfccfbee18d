//! Which of a connection's addresses the ruleset can have translated: what `ct status
//! dnat` (nft) and `--ctstate DNAT` (iptables) test, decided from the rules rather than
//! left undecidable.
//!
//! The kernel sets `IPS_DST_NAT` and `IPS_SRC_NAT` only when NAT changed the connection's
//! tuple (`nf_nat_setup_info`, net/netfilter/nf_nat_core.c). A destination changes only
//! by a rule that translates destinations (DNAT, REDIRECT, NETMAP, nft `dnat`/`redirect`),
//! or by a helper's expected connection following its master's translation
//! (`nf_nat_follow_master`, net/netfilter/nf_nat_helper.c): the implicit "null binding"
//! never changes a destination ("If it's dst rewrite, can't change port",
//! `nf_nat_l4proto_unique_tuple`). A source, though, can change with no SNAT rule at
//! all: a null binding remaps a source port that clashes, once any nat chain is
//! registered. So firewalld's `ct status dnat accept`, ahead of every zone, is decided
//! on the many hosts that forward no ports, and stays undecidable where one is forwarded.
//!
//! Not seen in rules: NAT entries created from userspace (conntrackd, `conntrack -I`),
//! and connections older than the ruleset read.

use crate::model::{ChainKind, Ruleset, Table, Target};

/// `IPS_SRC_NAT`, include/uapi/linux/netfilter/nf_conntrack_common.h.
pub const IPS_SRC_NAT: u32 = 1 << 4;
/// `IPS_DST_NAT`, include/uapi/linux/netfilter/nf_conntrack_common.h.
pub const IPS_DST_NAT: u32 = 1 << 5;

/// The status bits no connection in the ruleset's namespace can have: those of the
/// translations no rule (nor any rule-assigned helper) can make.
pub(crate) fn never_set(ruleset: &Ruleset) -> u32 {
    let nat_tables: Vec<&Table> = ruleset
        .tables
        .iter()
        .filter(|table| {
            table
                .chains
                .iter()
                .any(|chain| chain.base.is_some_and(|base| base.kind == ChainKind::Nat))
        })
        .collect();
    if nat_tables.is_empty() {
        // Without a nat chain there is no NAT at all, not even a null binding.
        return IPS_SRC_NAT | IPS_DST_NAT;
    }
    let rules = || {
        ruleset
            .tables
            .iter()
            .flat_map(|table| table.chains.iter())
            .flat_map(|chain| chain.rules.iter())
    };
    let helper = rules().any(|rule| assigns_helper(&rule.target, &rule.text));
    let translates_destinations = helper
        || nat_tables
            .iter()
            .flat_map(|table| table.chains.iter())
            .flat_map(|chain| chain.rules.iter())
            .any(|rule| match &rule.target {
                Target::Nat { action } => translates_destination(action),
                // A target whose effect is not known, in a table that can hold DNAT.
                Target::Unknown { .. } => true,
                _ => false,
            });
    if translates_destinations {
        0
    } else {
        IPS_DST_NAT
    }
}

/// Whether a rule's target assigns a conntrack helper: nft `ct helper set`, iptables
/// `-j CT --helper` (a `CT` target whose options are not shown counts too).
fn assigns_helper(target: &Target, text: &str) -> bool {
    let Target::Continue {
        action: Some(actions),
    } = target
    else {
        return false;
    };
    actions.split(',').any(|action| match action {
        "ct helper" => true,
        "CT" => !text.contains("--notrack") || text.contains("--helper"),
        _ => false,
    })
}

/// Whether a NAT target or statement can change a destination (DNAT, REDIRECT, NETMAP in
/// PREROUTING or OUTPUT, nft `dnat`/`redirect`) rather than only a source.
pub(crate) fn translates_destination(action: &str) -> bool {
    !matches!(action, "SNAT" | "MASQUERADE" | "snat" | "masquerade")
}
