//! One flow against the proposed ruleset: its first packet, evaluated on the egress hooks
//! of both engines; definite only when every way the undecided rules can go agrees.

use ruleset::{Engine, Hook, Ruleset, eval::Verdict};

use crate::{attribution, inventory::Flow, kernel::filter::Proto};

/// Source port assumed when the flow's own was not known yet (a TCP connect is seen
/// before the kernel picks it): the start of the IANA ephemeral range.
const EPHEMERAL_PORT: u16 = 49152;

/// The flow's first packet, as the proposed ruleset would see it leave the host.
pub fn packet_of(f: &Flow) -> Result<ruleset::Packet, String> {
    let proto = f.proto.parse::<Proto>().map_err(|e| e.to_string())?.0;
    let v6 = f.dst.is_ipv6();
    let ports = ruleset::names::has_ports(proto);
    if ports && f.dport.is_none() {
        return Err(format!("a {} flow without a port", f.proto));
    }
    let mut p = ruleset::Packet::first_of_flow(
        proto,
        f.src.filter(|s| s.is_ipv6() == v6),
        f.dst,
        f.sport.unwrap_or(EPHEMERAL_PORT),
        f.dport.filter(|_| ports),
        ruleset::CtState::New,
        Hook::Output,
    )
    .map_err(|e| e.to_string())?;
    if p.icmp_type.is_some() {
        p.icmp_type = f.icmp_type.or(p.icmp_type);
        p.icmp_code = f.icmp_code.or(p.icmp_code);
    }
    p.oif = f.oif.clone();
    p.mark = f.mark;
    p.uid = f.uid;
    Ok(p)
}

/// What the proposed ruleset would do to one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    Pass {
        /// The rule that accepts it, when one does (else the policies let it through).
        by: Option<String>,
    },
    /// Dropped or rejected, by this rule.
    Blocked {
        verdict: &'static str,
        by: String,
        hook: &'static str,
    },
    /// Depends on rules the engine cannot evaluate (or on a userspace queue).
    Unsure { why: String },
}

/// Evaluates `f`'s first packet on the egress hooks, in both engines, like the kernel.
pub fn judge(rs: &Ruleset, f: &Flow) -> Judgement {
    let mut pkt = match packet_of(f) {
        Ok(p) => p,
        Err(why) => return Judgement::Unsure { why },
    };
    // A notrack rule in raw OUTPUT leaves the first packet UNTRACKED for the rules after.
    match ruleset::eval::conntrack_skipped(rs, pkt.family, Hook::Output, &pkt) {
        ruleset::eval::Conntrack::Tracks => {}
        ruleset::eval::Conntrack::SkippedBy(_) => pkt.ct_state = Some(ruleset::CtState::Untracked),
        ruleset::eval::Conntrack::MaybeSkippedBy(..) => pkt.ct_state = None,
    }
    let mut unsure = Vec::new();
    let mut accepted_by = None;
    for hook in [Hook::Output, Hook::Postrouting] {
        for engine in [Engine::NfTables, Engine::Xtables] {
            if !rs
                .tables
                .iter()
                .any(|t| engine.backends().contains(&t.backend))
            {
                continue;
            }
            let ev = ruleset::eval::evaluate(rs, engine.backends(), pkt.family, hook, &pkt);
            let label = attribution::attribution_of(&ev).label();
            let blocks = |v: &Verdict| matches!(v, Verdict::Drop | Verdict::Reject { .. });
            let outcomes: Vec<_> = ev.outcomes().collect();
            let dropping = outcomes.iter().filter(|o| blocks(&o.verdict)).count();
            let queued = outcomes.iter().any(|o| matches!(o.verdict, Verdict::Queue));
            // A verdict is definite only when every outcome the undecided rules allow
            // agrees; rules whose outcomes all accept (a `-m limit` LOG) change nothing.
            if dropping == outcomes.len() && !ev.alternatives_truncated && !queued {
                return Judgement::Blocked {
                    verdict: if matches!(ev.verdict, Verdict::Drop) {
                        "drop"
                    } else {
                        "reject"
                    },
                    by: label.unwrap_or_else(|| format!("{hook} (no rule named)")),
                    hook: hook.as_str(),
                };
            }
            if dropping > 0 || queued || ev.alternatives_truncated {
                let undecided: Vec<String> = ev
                    .undecided
                    .iter()
                    .map(|(r, why)| format!("{} cannot be evaluated: {why}", r.place()))
                    .collect();
                let fate = if queued {
                    "a userspace queue (NFQUEUE) may decide it".to_string()
                } else {
                    format!(
                        "{dropping} of {} ways these rules can go drop it",
                        outcomes.len()
                    )
                };
                unsure.push(format!("{hook}: {fate}; {}", undecided.join("; ")));
                continue;
            }
            if let ruleset::DecidedBy::Rule(r) = &ev.by {
                accepted_by = Some(format!("{} `{}`", r.place(), r.text));
            }
        }
    }
    if unsure.is_empty() {
        Judgement::Pass { by: accepted_by }
    } else {
        Judgement::Unsure {
            why: unsure.join("; "),
        }
    }
}
