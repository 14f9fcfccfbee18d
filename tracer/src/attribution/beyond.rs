//! Naming the rule of drops that no line reported: flows beyond the flow table.
//!
//! When flows outnumber the kernel's flow table (a port scan), the kernel still counts
//! every drop in its aggregates, by namespace, drop site (hence hook), protocol,
//! destination port, TCP flags and conntrack state — not by address. Those drops are
//! attributed here by walking the hook's chains with a packet that has only those fields:
//! rules on what is not known (addresses, source port, mark, length, interfaces, socket
//! owner) are undecidable, and a rule is named only when every outcome that drops agrees
//! on it. A one-rule `-p udp -j DROP` is named; two rules told apart by address are not
//! (`unsure`, listing both): never a guess.

use super::{
    Attribution, Attributor, GONE, Level,
    candidates::{Candidate, evaluate_candidates},
    packet::rule_hook,
};
use crate::kernel::stack;

/// What an aggregate knows of its drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// From the drop site's stack; `None` when no record of the site reached us.
    pub hook: Option<stack::Hook>,
    pub engine: Option<stack::DropEngine>,
    pub family: ruleset::Family,
    pub proto: u8,
    /// Destination port, for protocols with ports; `None` in a coarse aggregate.
    pub dport: Option<u16>,
    /// ICMP type and code, when known.
    pub icmp: Option<(u8, u8)>,
    pub tcp_flags: Option<u8>,
    pub ct_state: Option<ruleset::CtState>,
}

/// Why a rule named from an aggregate is never `exact`: its counter covers these drops
/// and the reported ones alike, so it cannot confirm this share alone.
const NAMED_WHY: &str = "evaluated from the protocol, port, TCP flags and conntrack state the kernel \
     counted (flows beyond the flow table: addresses not kept)";

impl Attributor {
    /// The rule of each of `items` (drops counted in aggregate in namespace `netns`), from
    /// the namespace's ruleset as read now.
    pub fn beyond(&mut self, netns: u32, items: &[Counted]) -> Vec<Attribution> {
        let Some(now) = self.read_now(netns) else {
            return vec![Attribution::none(GONE); items.len()];
        };
        let mixed = super::candidates::backends_mixed(&now.ruleset);
        items
            .iter()
            .map(|c| Attribution {
                backends_mixed: mixed,
                cause: None,
                ..judged(&now.ruleset, c)
            })
            .collect()
    }
}

/// The packet an aggregate stands for: its known fields, the rest unknown.
pub fn packet_of(c: &Counted) -> ruleset::Packet {
    ruleset::Packet {
        proto: c.proto,
        dport: c.dport,
        tcp_flags: c.tcp_flags,
        icmp_type: c.icmp.map(|(t, _)| t),
        icmp_code: c.icmp.map(|(_, code)| code),
        ct_state: c.ct_state,
        ..ruleset::Packet::unknown(c.family)
    }
}

fn judged(rs: &ruleset::Ruleset, c: &Counted) -> Attribution {
    let Some(hook) = c.hook else {
        return Attribution::none(
            "no record of this drop site reached droptrace: its hook is unknown",
        );
    };
    let Some(hook) = rule_hook(hook) else {
        return Attribution::none("drops outside the IP hooks are not evaluated");
    };
    let engines = match c.engine {
        Some(e) => vec![e.engine],
        None => vec![ruleset::Engine::NfTables, ruleset::Engine::Xtables],
    };
    let packet = packet_of(c);
    let mut found: Vec<Candidate> = Vec::new();
    for engine in engines {
        for cand in evaluate_candidates(rs, engine, hook, &packet).candidates {
            if !found.iter().any(|f| f.decided.is_same(&cand.decided)) {
                found.push(cand);
            }
        }
    }
    match found.as_slice() {
        [] => Attribution::none("the ruleset as read at the end drops none of these (it changed?)"),
        [one] => {
            let mut a = one.attribution.clone();
            a.attribution = Level::Inferred;
            a.why = NAMED_WHY.into();
            a.alternatives.clear();
            a
        }
        several => {
            let labels: Vec<String> = several
                .iter()
                .map(|c| {
                    c.attribution
                        .label()
                        .unwrap_or_else(|| c.decided.to_string())
                })
                .collect();
            Attribution::none(format!(
                "unsure: {} rules could have dropped these, as their addresses (not kept beyond \
                 the flow table) would tell: {}",
                several.len(),
                labels.join("; ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(dport: u16) -> Counted {
        Counted {
            hook: Some(stack::Hook::Output),
            engine: Some(stack::DropEngine::nftables(stack::TableFamily::Ip)),
            family: ruleset::Family::Ipv4,
            proto: 17,
            dport: Some(dport),
            icmp: None,
            tcp_flags: None,
            ct_state: Some(ruleset::CtState::New),
        }
    }

    fn rules(text: &str) -> ruleset::Ruleset {
        super::super::tests::ipt_nft_v4(text)
    }

    #[test]
    fn a_rule_on_protocol_alone_is_named() {
        let rs = rules("*filter\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p udp -j DROP\nCOMMIT\n");
        let a = judged(&rs, &udp(5353));
        assert_eq!(
            a.label().unwrap(),
            "filter/OUTPUT rule 1 `-A OUTPUT -p udp -j DROP`"
        );
        assert_eq!(a.attribution, Level::Inferred);
        assert!(a.why.contains("addresses not kept"), "{}", a.why);
    }

    #[test]
    fn rules_told_apart_by_address_leave_it_unsure() {
        let rs = rules(
            "*filter\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -d 10.0.0.0/8 -p udp -j DROP\n\
             -A OUTPUT -p udp -j DROP\nCOMMIT\n",
        );
        let a = judged(&rs, &udp(5353));
        assert_eq!(a.label(), None);
        assert!(a.why.starts_with("unsure: 2 rules"), "{}", a.why);
    }

    #[test]
    fn an_accept_on_address_before_the_drop_does_not_hide_it() {
        // Drops happened, so the accepting outcome is not among the candidates.
        let rs = rules(
            "*filter\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -d 192.0.2.1 -j ACCEPT\n\
             -A OUTPUT -p udp --dport 5000:6000 -j DROP\nCOMMIT\n",
        );
        let a = judged(&rs, &udp(5353));
        assert_eq!(
            a.label().unwrap(),
            "filter/OUTPUT rule 2 `-A OUTPUT -p udp --dport 5000:6000 -j DROP`"
        );
        // A port the rule does not cover: nothing drops it.
        assert_eq!(judged(&rs, &udp(80)).label(), None);
    }

    #[test]
    fn an_unknown_site_names_nothing() {
        let rs = rules("*filter\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p udp -j DROP\nCOMMIT\n");
        let mut c = udp(1);
        c.hook = None;
        assert!(judged(&rs, &c).why.contains("hook is unknown"));
    }
}
