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

/// Where a destination-translating rule sends a connection, as its text says: the new
/// address (`None` for REDIRECT, which sends it to the receiving interface's primary
/// address) and the new port (`None`: unchanged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatTo {
    pub addr: Option<std::net::IpAddr>,
    pub port: Option<u16>,
}

/// The one destination a DNAT or REDIRECT rule translates to: iptables' `-j DNAT
/// --to-destination A[:P]` and `-j REDIRECT [--to-ports P]`, nft's `dnat [ip|ip6] to A[:P]`
/// and `redirect [to :P]`. `None` when the rule picks among several (address or port
/// ranges, maps, `random`) or says it in a way not read here.
pub fn dnat_target(text: &str) -> Option<NatTo> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |w: &str| {
        words
            .iter()
            .position(|x| *x == w)
            .and_then(|i| words.get(i + 1))
    };
    let iptables = words.first() == Some(&"-A");
    if iptables {
        let target = after("-j")?;
        return match *target {
            "DNAT" => {
                let (addr, port) = addr_port(after("--to-destination")?)?;
                Some(NatTo {
                    addr: Some(addr?),
                    port,
                })
            }
            "REDIRECT" => Some(NatTo {
                addr: None,
                port: match after("--to-ports") {
                    Some(p) => Some(p.parse().ok()?),
                    None => None,
                },
            }),
            _ => None,
        };
    }
    if words
        .iter()
        .any(|w| matches!(*w, "map" | "random" | "persistent"))
    {
        return None;
    }
    let verb = words
        .iter()
        .position(|w| matches!(*w, "dnat" | "redirect"))?;
    let rest = &words[verb + 1..];
    let rest = match rest.first() {
        Some(&"ip" | &"ip6") => &rest[1..],
        _ => rest,
    };
    let to = match rest {
        [] => None,
        ["to", to, ..] => Some(*to),
        _ => return None,
    };
    let (addr, port) = match to {
        Some(to) => addr_port(to)?,
        None => (None, None),
    };
    match words[verb] {
        "dnat" => Some(NatTo {
            addr: Some(addr?),
            port,
        }),
        _ => Some(NatTo { addr: None, port }),
    }
}

/// `10.0.0.1`, `10.0.0.1:22`, `[2001:db8::1]:22`, `2001:db8::1`, `:22`: (address, port);
/// `None` for ranges.
fn addr_port(s: &str) -> Option<(Option<std::net::IpAddr>, Option<u16>)> {
    let s = s.trim_matches('"');
    let (addr, port) = if let Some(rest) = s.strip_prefix('[') {
        let (addr, tail) = rest.split_once(']')?;
        (addr, tail.strip_prefix(':'))
    } else if s.matches(':').count() == 1 {
        let (addr, port) = s.split_once(':')?;
        (addr, Some(port))
    } else {
        (s, None)
    };
    let addr = match addr {
        "" => None,
        a => Some(a.parse().ok()?),
    };
    let port = match port {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    Some((addr, port))
}

#[cfg(test)]
mod dnat_target_tests {
    use super::*;

    fn to(addr: Option<&str>, port: Option<u16>) -> Option<NatTo> {
        Some(NatTo {
            addr: addr.map(|a| a.parse().unwrap()),
            port,
        })
    }

    /// The forms iptables-save and nft list write, and what is left unread.
    #[test]
    fn the_one_destination_a_rule_translates_to() {
        let t = dnat_target;
        assert_eq!(
            t(
                "-A DOCKER ! -i br0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80"
            ),
            to(Some("172.17.0.2"), Some(80))
        );
        assert_eq!(
            t("-A PREROUTING -p tcp -j DNAT --to-destination [2001:db8::2]:80"),
            to(Some("2001:db8::2"), Some(80))
        );
        assert_eq!(
            t("-A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.2"),
            to(Some("10.0.0.2"), None)
        );
        assert_eq!(
            t("-A PREROUTING -p tcp --dport 11 -j REDIRECT --to-ports 22"),
            to(None, Some(22))
        );
        assert_eq!(
            t("meta nfproto ipv4 tcp dport 11 redirect to :22"),
            to(None, Some(22))
        );
        assert_eq!(
            t(
                "ip daddr 192.168.188.25 tcp dport 8080 ct mark set meta mark | 0x00001000 dnat ip to 10.89.0.2:8080"
            ),
            to(Some("10.89.0.2"), Some(8080))
        );
        assert_eq!(t("tcp dport 80 redirect"), to(None, None));
        // Several destinations: which one is not known.
        assert_eq!(t("-A P -j DNAT --to-destination 10.0.0.2-10.0.0.9"), None);
        assert_eq!(t("-A P -j DNAT --to-destination 10.0.0.2:8000-8010"), None);
        assert_eq!(t("dnat to ip daddr map @backends"), None);
        assert_eq!(t("dnat to 10.0.0.2:80 random"), None);
        assert_eq!(t("-A P -j MASQUERADE"), None);
    }
}
