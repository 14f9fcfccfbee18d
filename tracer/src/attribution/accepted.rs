//! Naming the rule that let an attempt through: the other half of an intermittent failure.
//!
//! The kernel reports the first packet of each attempt that got through with the conntrack
//! state the firewall saw it in (tracer-ebpf/src/passed.rs). Walking the namespace's
//! ruleset with that packet and that state gives the rule that accepted it; the rule's
//! packet counter, grown since the capture began by at least the attempts it is given,
//! confirms it (`exact`), as for drops.

use ruleset::{Backend, DecidedBy, Hook, eval::Verdict};

use super::{Attribution, Attributor, GONE, Level, candidates::named, snapshot::Snapshot};

impl Attributor {
    /// The rule that let each of `packets` (leaving namespace `netns` through OUTPUT, with
    /// how many attempts each stands for) through, read now and checked against the counters
    /// since the namespace's first read.
    pub fn accepted(&mut self, netns: u32, packets: &[(ruleset::Packet, u64)]) -> Vec<Attribution> {
        let Some(now) = self.read_now(netns) else {
            return vec![Attribution::none(GONE); packets.len()];
        };
        let grown = self.namespaces[&netns]
            .baseline
            .as_ref()
            .map(|b| ruleset::counters::counter_deltas(&b.ruleset, &now.ruleset));
        let mut named_rules: Vec<(DecidedBy, u64)> = Vec::new();
        let mut out: Vec<(Attribution, Option<DecidedBy>)> = packets
            .iter()
            .map(|(p, n)| {
                let (a, by) = accepting(&now, p);
                if let Some(by) = &by {
                    match named_rules.iter_mut().find(|(d, _)| d.is_same(by)) {
                        Some((_, total)) => *total += n,
                        None => named_rules.push((by.clone(), *n)),
                    }
                }
                (a, by)
            })
            .collect();
        for (a, by) in &mut out {
            let (Some(by), Some(grown)) = (by.as_ref(), grown.as_ref()) else {
                continue;
            };
            let given = named_rules
                .iter()
                .find(|(d, _)| d.is_same(by))
                .map_or(0, |(_, n)| *n);
            let growth = grown
                .iter()
                .find(|(d, _)| d.is_same(by))
                .map_or(0, |(_, n)| *n);
            if growth >= given {
                a.attribution = Level::Exact;
                a.why = format!(
                    "evaluated with the state the kernel saw; its counter grew by {growth} \
                     (>= {given} attempts)"
                );
            } else {
                a.why = format!(
                    "evaluated with the state the kernel saw, but its counter grew by {growth} \
                     only, for {given} attempts"
                );
            }
        }
        out.into_iter().map(|(a, _)| a).collect()
    }
}

/// The rule or policy that accepts `packet` on OUTPUT in `snap`, when every way the
/// undecided rules can go agrees.
fn accepting(snap: &Snapshot, packet: &ruleset::Packet) -> (Attribution, Option<DecidedBy>) {
    let ev = ruleset::eval::evaluate(
        &snap.ruleset,
        &Backend::ALL,
        packet.family,
        Hook::Output,
        packet,
    );
    let outcomes: Vec<_> = ev.outcomes().collect();
    if outcomes.iter().any(|o| o.verdict != Verdict::Accept) {
        let why = if ev.verdict == Verdict::Accept {
            "unsure: rules the packet's fields cannot decide may drop it"
        } else {
            "the ruleset as read now drops it (it changed since?)"
        };
        return (Attribution::none(why), None);
    }
    if outcomes.iter().any(|o| !o.by.is_same(&ev.by)) {
        return (
            Attribution::none("unsure: rules the packet's fields cannot decide may accept it"),
            None,
        );
    }
    match named(&ev.by, "ACCEPT") {
        Some(mut a) => {
            if matches!(ev.by, DecidedBy::Policy(_)) {
                a.verdict = Some(crate::record::rule::POLICY_ACCEPT.into());
            }
            a.why = "evaluated with the state the kernel saw; counters not checked".into();
            (a, Some(ev.by))
        }
        None => (Attribution::none("no rule accepts it"), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The incident's rules (shared/incident-iptables-egress.txt), as iptables-save prints
    /// them.
    const HARDENED: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A OUTPUT -o lo -j ACCEPT
-A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A OUTPUT -p tcp -m multiport --dports 80,443,22,3306 -j ACCEPT
-A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP
COMMIT
";

    fn snapshot(text: &str) -> Snapshot {
        Snapshot::of(
            ruleset::iptables_save::parse_ruleset(
                text,
                Backend::IptablesNft,
                ruleset::Family::Ipv4,
            )
            .unwrap(),
        )
    }

    fn syn(dport: u16, ct_state: ruleset::CtState) -> ruleset::Packet {
        ruleset::Packet {
            proto: 6,
            src: "198.51.100.2".parse().unwrap(),
            dst: "203.0.113.10".parse().unwrap(),
            sport: Some(40002),
            dport: Some(dport),
            tcp_flags: Some(0x02),
            oif: Some("eth0".into()),
            uid: Some(0),
            ct_state: Some(ct_state),
            unknown: ruleset::Unknown {
                gid: true,
                ..ruleset::Unknown::NONE
            },
            ..ruleset::Packet::unknown(ruleset::Family::Ipv4)
        }
    }

    #[test]
    fn an_established_syn_is_let_through_by_the_conntrack_rule() {
        let (a, by) = accepting(
            &snapshot(HARDENED),
            &syn(8443, ruleset::CtState::Established),
        );
        assert!(by.is_some());
        assert_eq!(
            a.label().unwrap(),
            "filter/OUTPUT rule 2 `-A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`"
        );
        assert_eq!(
            a.attribution,
            Level::Inferred,
            "not exact before the counters"
        );
    }

    #[test]
    fn a_new_syn_to_a_low_port_is_let_through_by_the_policy() {
        let (a, _) = accepting(&snapshot(HARDENED), &syn(587, ruleset::CtState::New));
        assert_eq!(a.label().unwrap(), "filter/OUTPUT policy ACCEPT");
    }

    #[test]
    fn a_packet_the_ruleset_drops_names_no_accepting_rule() {
        let (a, by) = accepting(&snapshot(HARDENED), &syn(8443, ruleset::CtState::New));
        assert!(by.is_none());
        assert_eq!(a.label(), None);
        assert!(a.why.contains("drops it"), "{}", a.why);
    }

    #[test]
    fn an_undecidable_rule_that_may_drop_leaves_it_unsure() {
        let text = HARDENED.replace(
            "-A OUTPUT -o lo -j ACCEPT\n",
            "-A OUTPUT -m owner --gid-owner 5 -j DROP\n",
        );
        let (a, by) = accepting(&snapshot(&text), &syn(587, ruleset::CtState::New));
        assert!(by.is_none(), "{a:?}");
        assert!(a.why.starts_with("unsure"), "{}", a.why);
    }
}
