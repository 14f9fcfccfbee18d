//! Choosing among candidates: the rules' packet counters ([`confirm`]), and the verdict the
//! engine itself reported where kprobes exist ([`weigh_kernel_candidates`]).

use ruleset::DecidedBy;

use crate::kernel::verdicts::KernelSaw;

use super::candidates::{Candidate, Evaluated};
use super::{Attribution, Level};

/// Weighs an evaluation against the verdict the engine itself reported for the packet.
///
/// Agreement (same table, and for nftables the reported base chain on the evaluated
/// path) makes the evaluated rule `exact`: the kernel names the table and chain, the
/// evaluation the rule within. Otherwise the kernel's table and chain stand, at level
/// `chain`, and the evaluation's answer goes into `why`.
pub(super) fn weigh_kernel(
    a: &mut Attribution,
    decided: Option<&DecidedBy>,
    path: &[ruleset::ChainRef],
    k: &KernelSaw,
    rs: &ruleset::Ruleset,
) {
    let family = k
        .family
        .and_then(|f| ruleset::TableFamily::from_nft(f.as_str()));
    let (d_backend, d_family, d_table) = match decided {
        Some(DecidedBy::Rule(r)) => (r.backend, r.family, r.table.as_str()),
        Some(DecidedBy::Policy(c)) => (c.backend, c.family, c.table.as_str()),
        _ => (ruleset::Backend::Nftables, ruleset::TableFamily::Netdev, ""),
    };
    let agrees = match k.engine {
        tracer_common::engine::NFTABLES => {
            d_backend != ruleset::Backend::IptablesLegacy
                && Some(d_family) == family
                && d_table == k.table
                && path.iter().any(|c| {
                    c.backend == d_backend
                        && c.family == d_family
                        && c.table == k.table
                        && Some(&c.chain) == k.chain.as_ref()
                })
        }
        _ => {
            d_backend == ruleset::Backend::IptablesLegacy
                && Some(d_family) == family
                && d_table == k.table
        }
    };
    if decided.is_some() && agrees {
        a.attribution = Level::Exact;
        a.kernel_confirmed = true;
        a.why = format!(
            "the kernel confirmed it: {} for this packet; the rule is the one evaluation finds there",
            k.describe()
        );
        return;
    }
    let evaluated = match a.label() {
        Some(label) if decided.is_some() => format!("evaluation named {label}"),
        _ => format!("evaluation: {}", a.why),
    };
    let backend = if k.engine == tracer_common::engine::NFTABLES {
        // iptables-nft and nft share the engine; the table says whose it is.
        rs.tables
            .iter()
            .find(|t| {
                t.backend != ruleset::Backend::IptablesLegacy
                    && Some(t.family) == family
                    && t.name == k.table
            })
            .map_or(ruleset::Backend::Nftables, |t| t.backend)
    } else {
        ruleset::Backend::IptablesLegacy
    };
    *a = Attribution {
        backend: Some(backend.as_str().into()),
        table_family: family.map(|f| f.to_string()),
        table: Some(k.table.clone()),
        chain: k
            .chain
            .clone()
            .or_else(|| k.hook.map(|h| h.as_str().to_string())),
        rule: None,
        rule_num: None,
        rule_handle: None,
        verdict: Some("DROP".into()),
        attribution: Level::Chain,
        why: format!(
            "the kernel says {}; {evaluated} (ruleset changed, or a match droptrace reads differently)",
            k.describe()
        ),
        alternatives: Vec::new(),
        owner: super::owner::owner_of(family, &k.table, k.chain.as_deref().unwrap_or(""), ""),
        kernel_confirmed: false,
        backends_mixed: false,
        cause: None,
    };
}

/// What the counters say about one candidate.
pub(super) struct Evidence {
    /// The rule (or policy) keeps a packet counter.
    pub(super) counted: bool,
    /// How much its counter grew in the window; `None` when it is not in the newer read.
    pub(super) grew: Option<u64>,
    /// The drops attributed to it in the window.
    pub(super) want: u64,
}

impl Evidence {
    /// The counter is readable: it grew by `grew` (maybe 0).
    pub(super) fn growth(&self) -> Option<u64> {
        self.grew.filter(|_| self.counted)
    }
}

pub(super) fn has_counter(d: &DecidedBy) -> bool {
    match d {
        DecidedBy::Rule(r) => r.counters.is_some(),
        // nftables keeps no counter for a chain's policy.
        DecidedBy::Policy(c) => c.backend != ruleset::Backend::Nftables,
        DecidedBy::NoBaseChain => false,
    }
}

/// Lets the counters choose among the candidates and sets `a` (the record's attribution)
/// to the one chosen, at the level the evidence earns; returns its index.
///
/// `exact` only when one candidate's counter grew by at least the drops attributed to it
/// and every other candidate's readable counter did not grow at all. A candidate whose
/// counter did not grow is never named while another's did.
pub(super) fn confirm(
    a: &mut Attribution,
    candidates: &[Candidate],
    evidence: &[Evidence],
) -> usize {
    let kernel_confirmed = a.kernel_confirmed;
    let grown: Vec<usize> = (0..candidates.len())
        .filter(|&i| evidence[i].growth().is_some_and(|g| g > 0))
        .collect();
    let unreadable: Vec<usize> = (0..candidates.len())
        .filter(|&i| evidence[i].growth().is_none())
        .collect();
    let chosen = grown.first().copied().unwrap_or(0);
    if chosen != 0 {
        *a = candidates[chosen].attribution.clone();
    }
    let ev = &evidence[chosen];
    let what = |i: usize| match candidates[i].decided {
        DecidedBy::Policy(_) if !evidence[i].counted => "an nftables policy",
        _ => "the rule",
    };
    if candidates.len() == 1 {
        match ev.growth() {
            None if !ev.counted => {
                a.why = format!("{}; {} has no counter to confirm it", a.why, what(0));
            }
            None => {
                a.attribution = Level::Inferred;
                a.why = format!("{}; the rule is gone from the newer read", a.why);
            }
            Some(grew) if grew >= ev.want && kernel_confirmed => {
                a.why = format!(
                    "{}; its packet counter grew by {grew} for {} drop(s)",
                    a.why, ev.want
                );
            }
            Some(grew) if grew >= ev.want => {
                a.attribution = Level::Exact;
                a.why = format!(
                    "its packet counter grew by {grew} for {} drop(s) attributed to it; {}",
                    ev.want, a.why
                );
            }
            Some(grew) => {
                a.attribution = Level::Inferred;
                a.why = format!(
                    "{}; its counter grew by {grew}, fewer than the {} drop(s) seen",
                    a.why, ev.want
                );
            }
        }
        return 0;
    }
    let others: Vec<String> = (0..candidates.len())
        .filter(|&i| i != chosen)
        .map(|i| candidates[i].described.clone())
        .collect();
    match ev.growth() {
        Some(grew) if grew >= ev.want && grown.len() == 1 && unreadable.is_empty() => {
            a.attribution = Level::Exact;
            a.alternatives = Vec::new();
            a.why = format!(
                "its packet counter grew by {grew} for {} drop(s); the counters of the other rules \
                 undecided matches could lead to did not grow: {}",
                ev.want,
                others.join("; ")
            );
        }
        _ => {
            a.attribution = Level::Inferred;
            a.alternatives = others;
            let counters: Vec<String> = (0..candidates.len())
                .map(|i| {
                    let label = candidates[i].attribution.label().unwrap_or_default();
                    match evidence[i].growth() {
                        Some(g) => format!("{label} grew by {g}"),
                        None => format!("{label} has no counter"),
                    }
                })
                .collect();
            a.why = format!(
                "rules droptrace cannot decide leave {} possible rules, and the counters do not \
                 single one out ({} drop(s) seen: {}); named the {}",
                candidates.len(),
                ev.want,
                counters.join(", "),
                if grown.is_empty() {
                    "first"
                } else {
                    "first whose counter grew"
                }
            );
        }
    }
    chosen
}

/// Weighs the candidates against the verdict the engine reported: the first that agrees
/// with the kernel is the answer; when none does, the kernel's table and chain stand.
pub(super) fn weigh_kernel_candidates(e: &mut Evaluated, k: &KernelSaw, rs: &ruleset::Ruleset) {
    for c in &e.candidates {
        let mut a = c.attribution.clone();
        weigh_kernel(&mut a, Some(&c.decided), &c.path, k, rs);
        if a.kernel_confirmed {
            e.attribution = a;
            e.candidates = vec![c.clone()];
            return;
        }
    }
    let first = e.candidates.first();
    weigh_kernel(
        &mut e.attribution,
        first.map(|c| &c.decided),
        first.map_or(&[][..], |c| &c.path[..]),
        k,
        rs,
    );
    // The rule evaluation named is not the one that dropped: no counter to check.
    e.candidates.clear();
}
