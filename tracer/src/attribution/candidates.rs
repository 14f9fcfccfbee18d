//! Every way the packet may have been dropped: evaluation follows each outcome the
//! undecidable rules allow, and each outcome that drops is a candidate, described with what
//! it assumes.

use ruleset::{DecidedBy, eval::Verdict};

use super::{Attribution, Level};

/// The attribution an evaluation gives before any counter is consulted: the only rule that
/// drops, the first of several (the others in `alternatives`), or why none does. For
/// callers that evaluate once and use both (`explain`, `audit`).
pub fn attribution_of(ev: &ruleset::eval::Evaluation) -> Attribution {
    candidates_of(ev).attribution
}

/// One way the packet may have been dropped: a rule or policy that ends the walk with a
/// drop, reject or queue, under some choice of the rules evaluation could not decide.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub(super) attribution: Attribution,
    pub(super) decided: DecidedBy,
    /// The chains the packet went through on the way there (to check against the kernel).
    pub(super) path: Vec<ruleset::ChainRef>,
    /// The candidate in words, with what it assumes of the undecided rules.
    pub(super) described: String,
}

/// What evaluation says about a dropped packet.
pub(super) struct Evaluated {
    /// The answer before counters are consulted: the only candidate, the first of several,
    /// or why there is none.
    pub(super) attribution: Attribution,
    /// Every outcome that drops, the one with every undecided rule taken as not matching
    /// first. Empty when the ruleset as read accepts the packet whatever those rules say.
    pub(super) candidates: Vec<Candidate>,
}

pub(super) fn verdict_word(v: &Verdict) -> Option<&'static str> {
    match v {
        Verdict::Drop => Some("DROP"),
        Verdict::Reject { .. } => Some("REJECT"),
        Verdict::Queue => Some("QUEUE"),
        Verdict::Accept => None,
    }
}

/// Whether the ruleset holds rules of more than one backend (see
/// [`Attribution::backends_mixed`]).
pub fn backends_mixed(rs: &ruleset::Ruleset) -> bool {
    let mut backends = rs.tables.iter().map(|t| t.backend);
    backends
        .next()
        .is_some_and(|first| backends.any(|b| b != first))
}

pub(super) fn named(by: &DecidedBy, verdict: &'static str) -> Option<Attribution> {
    Some(match by {
        DecidedBy::Rule(r) => Attribution {
            backend: Some(r.backend.as_str().into()),
            table_family: Some(r.family.to_string()),
            table: Some(r.table.clone()),
            chain: Some(r.chain.clone()),
            rule: Some(r.text.clone()),
            rule_num: (r.backend != ruleset::Backend::Nftables).then_some(r.position),
            rule_handle: r.handle,
            verdict: Some(verdict.into()),
            attribution: Level::Inferred,
            why: "evaluated against the namespace's ruleset".into(),
            alternatives: Vec::new(),
            owner: super::owner::owner_of(Some(r.family), &r.table, &r.chain, &r.text),
            kernel_confirmed: false,
            backends_mixed: false,
            cause: None,
        },
        DecidedBy::Policy(c) => Attribution {
            backend: Some(c.backend.as_str().into()),
            table_family: Some(c.family.to_string()),
            table: Some(c.table.clone()),
            chain: Some(c.chain.clone()),
            rule: None,
            rule_num: None,
            rule_handle: None,
            verdict: Some("policy".into()),
            attribution: Level::Inferred,
            why: "no rule matched: the chain's policy".into(),
            alternatives: Vec::new(),
            owner: super::owner::owner_of(Some(c.family), &c.table, &c.chain, ""),
            kernel_confirmed: false,
            backends_mixed: false,
            cause: None,
        },
        DecidedBy::NoBaseChain => return None,
    })
}

/// A candidate in words, with what it assumes of the undecided rules.
pub(super) fn describe(c: &Candidate, assuming: &[ruleset::RuleRef]) -> String {
    let label = c
        .attribution
        .label()
        .unwrap_or_else(|| c.decided.to_string());
    if assuming.is_empty() {
        format!("{label} (if no undecided rule matched)")
    } else {
        let which: Vec<String> = assuming.iter().map(ruleset::RuleRef::place).collect();
        format!("{label} (if {} matched)", which.join(" and "))
    }
}

/// Evaluates, following every outcome the undecidable rules allow.
pub(super) fn evaluate_candidates(
    rs: &ruleset::Ruleset,
    engine: ruleset::Engine,
    hook: ruleset::Hook,
    packet: &ruleset::Packet,
) -> Evaluated {
    candidates_of(&ruleset::eval::evaluate(
        rs,
        engine.backends(),
        packet.family,
        hook,
        packet,
    ))
}

/// The candidates an evaluation leaves (see [`Evaluated`]).
pub(super) fn candidates_of(ev: &ruleset::eval::Evaluation) -> Evaluated {
    let undecided = || {
        ev.undecided
            .iter()
            .map(|(r, why)| format!("{} ({why})", r.place()))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut candidates = Vec::new();
    // The undecided rules met before the first candidate's verdict, other than those it
    // assumes matching: the only ones that could have decided otherwise.
    let mut before_first: Option<(Vec<String>, Vec<String>)> = None;
    for outcome in ev.outcomes() {
        let Some(word) = verdict_word(&outcome.verdict) else {
            continue;
        };
        let Some(mut attribution) = named(&outcome.by, word) else {
            continue;
        };
        if let Some(owner) = attribution.owner.as_mut() {
            super::owner::zone_from_path(owner, &outcome.path);
        }
        let mut c = Candidate {
            attribution,
            decided: outcome.by,
            path: outcome.path,
            described: String::new(),
        };
        c.described = describe(&c, &outcome.assuming);
        before_first.get_or_insert_with(|| {
            let (assumed, not): (Vec<_>, Vec<_>) = outcome
                .undecided
                .iter()
                .partition(|(r, _)| outcome.assuming.iter().any(|a| a.is_same_rule(r)));
            let words = |rules: Vec<&(ruleset::RuleRef, String)>| {
                rules
                    .iter()
                    .map(|(r, why)| format!("{} ({why})", r.place()))
                    .collect::<Vec<_>>()
            };
            (words(not), words(assumed))
        });
        candidates.push(c);
    }
    let described: Vec<String> = candidates.iter().map(|c| c.described.clone()).collect();
    let truncated = if ev.alternatives_truncated {
        format!(
            "; more than {} combinations of undecided rules, not all followed",
            ruleset::eval::MAX_FORKED_WALKS
        )
    } else {
        String::new()
    };
    let Some(first) = candidates.first() else {
        if matches!(ev.by, DecidedBy::NoBaseChain) {
            return Evaluated {
                attribution: Attribution::none("no chain on this hook"),
                candidates,
            };
        }
        // The kernel dropped it but the ruleset as read accepts it, whatever the rules
        // that could not be decided say.
        let mut a = Attribution::none(if ev.undecided.is_empty() {
            "the ruleset as read accepts this packet".to_string()
        } else {
            format!(
                "the ruleset as read accepts this packet whatever these rules decide: {}{truncated}",
                undecided()
            )
        });
        if let Some((r, _)) = ev.undecided.first() {
            a.backend = Some(r.backend.as_str().into());
            a.table = Some(r.table.clone());
            a.chain = Some(r.chain.clone());
            a.attribution = Level::Chain;
        }
        return Evaluated {
            attribution: a,
            candidates,
        };
    };
    let mut a = first.attribution.clone();
    if candidates.len() > 1 {
        a.why = format!(
            "{}; rules droptrace cannot decide leave {} possible rules: {}{truncated}",
            a.why,
            candidates.len(),
            described.join("; ")
        );
        a.alternatives = described[1..].to_vec();
    } else if let Some((before, assumed)) = before_first
        && !(before.is_empty() && assumed.is_empty())
    {
        if !assumed.is_empty() {
            a.why = format!("{}; taken as matching: {}", a.why, assumed.join("; "));
        }
        if !before.is_empty() {
            a.why = format!(
                "{}; earlier rules not decidable: {}",
                a.why,
                before.join("; ")
            );
        }
        a.why = format!("{}; every other outcome accepts{truncated}", a.why);
    }
    Evaluated {
        attribution: a,
        candidates,
    }
}
