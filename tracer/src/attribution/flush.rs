//! Confirming pending lines with the rules' counters, in steps.
//!
//! A line waits for the read of its namespace's ruleset after its drops; then each rule
//! that may have dropped it ([`Pending::candidates`]) is looked up again in the newer read
//! (a rule inserted above renumbers it), the drops every rule may account for in the
//! window are summed over all waiting lines (a counter that grew by 3 confirms three
//! drops, not one each of six lines), and each line is settled: confirmed, capped, taken
//! over by the newer ruleset's answer, or said to be dropped by no rule.

use ruleset::DecidedBy;

use super::{
    Attributor, GONE, Level, Namespace, PENDING_KEPT, Pending,
    candidates::backends_mixed,
    cap_inferred, conntrack,
    evidence::{Evidence, confirm, has_counter},
    nfqueue, no_rule_dropped, owner, reconsider,
    snapshot::Snapshot,
};
use crate::record::{DropRecord, rule::Attribution};

/// How each rule's counter grew, by rule.
type Deltas = Vec<(DecidedBy, u64)>;

/// The counter windows a flush compares lines against.
struct Windows {
    /// Since the current read: what drops stamped after it account for.
    recent: Option<Deltas>,
    /// Since the read before it (at least `WIDE_WINDOW` older): for lines that sum up
    /// older drops, or that may already be in the current read's counters.
    wide: Option<Deltas>,
    /// When the current read was done, on the records' clock.
    current_done: Option<u64>,
}

impl Windows {
    fn of(ns: &Namespace, after: Option<&Snapshot>) -> Windows {
        let deltas_since = |baseline: Option<&Snapshot>| match (baseline, after) {
            (Some(before), Some(after)) => Some(ruleset::counters::counter_deltas(
                &before.ruleset,
                &after.ruleset,
            )),
            _ => None,
        };
        let recent = deltas_since(ns.current.as_ref());
        let wide = match ns.previous() {
            Some(previous) => deltas_since(Some(previous)),
            None => recent.clone(),
        };
        Windows {
            recent,
            wide,
            current_done: ns.current.as_ref().map(|s| s.done_ns),
        }
    }

    /// Whether a record's packets may be in the reference's counters already.
    fn early(&self, r: &DropRecord) -> bool {
        r.count != 1
            || self
                .current_done
                .is_none_or(|done| r.ts_ns <= done + 1_000_000)
    }
}

/// The reads a line is compared from: the oldest kept, and the current one.
#[derive(Clone, Copy)]
struct Baselines<'a> {
    earliest: Option<&'a Snapshot>,
    current: Option<&'a Snapshot>,
}

/// Each pending line's candidates as they are in the newer read: a rule inserted or
/// deleted above one renumbers it, and its counter is found under the new number.
/// Looked up once per distinct rule: each lookup keys both whole rulesets, and a flood
/// brings thousands of lines of the same few rules (with 2,000 rules and 34,000 lines,
/// Ctrl-C took a minute of CPU).
fn found_again(ns: &Namespace, after: Option<&Snapshot>) -> Vec<Vec<Option<DecidedBy>>> {
    let mut seen: Vec<(DecidedBy, Option<DecidedBy>)> = Vec::new();
    let mut find_again = |d: &DecidedBy| {
        if let Some((_, r)) = seen.iter().find(|(k, _)| k.is_same(d)) {
            return r.clone();
        }
        let r = match (&ns.current, after) {
            (Some(current), Some(after)) => {
                ruleset::counters::find_again(&current.ruleset, d, &after.ruleset)
            }
            _ => None,
        };
        seen.push((d.clone(), r.clone()));
        r
    };
    ns.pending
        .iter()
        .map(|p| {
            p.candidates
                .iter()
                .map(|c| find_again(&c.decided))
                .collect()
        })
        .collect()
}

/// What each rule may account for in this window: (rule, all its lines' drops, those of
/// lines stamped after the reference was read). A line with several candidates is
/// claimed by each of them.
type Claims = Vec<(DecidedBy, u64, u64)>;

fn claims(pending: &[Pending], found: &[Vec<Option<DecidedBy>>], w: &Windows) -> Claims {
    let mut claimed: Claims = Vec::new();
    for (p, found) in pending.iter().zip(found) {
        let late = if w.early(&p.record) {
            0
        } else {
            p.record.count
        };
        for d in found.iter().flatten() {
            match claimed.iter_mut().find(|(c, ..)| c.is_same(d)) {
                Some((_, all, l)) => {
                    *all += p.record.count;
                    *l += late;
                }
                None => claimed.push((d.clone(), p.record.count, late)),
            }
        }
    }
    claimed
}

/// What every line of one namespace's flush is settled against.
struct Settling<'a> {
    windows: &'a Windows,
    claimed: &'a Claims,
    reads: Baselines<'a>,
    after: Option<&'a Snapshot>,
    /// Drops no rule made among the lines (see `conntrack::cause`).
    no_rule: u64,
    /// The newer read translates source addresses (see `conntrack::source_nat`): once
    /// per flush, not per line.
    source_nat: bool,
}

/// Settles one line: its candidates weighed by their counters' growth, its rule renumbered
/// as it is now, reconsidered against the newer ruleset when not confirmed, or said to be
/// dropped by no rule when both reads say so.
fn settle(
    mut p: Pending,
    mut found: Vec<Option<DecidedBy>>,
    cx: &Settling<'_>,
    upto: &mut Vec<(DecidedBy, u64)>,
) -> Vec<DropRecord> {
    let (w, claimed, reads, after, no_rule) =
        (cx.windows, cx.claimed, cx.reads, cx.after, cx.no_rule);
    let is_early = w.early(&p.record);
    let mut counters_all_still = false;
    let (deltas, baseline) = if is_early {
        (&w.wide, reads.earliest.or(reads.current))
    } else {
        (&w.recent, reads.current)
    };
    if let Some(deltas) = deltas
        && p.record.rule.is_some()
        && !p.candidates.is_empty()
    {
        let evidence: Vec<Evidence> = p
            .candidates
            .iter()
            .zip(&found)
            .map(|(c, now)| {
                let grew = now.as_ref().map(|n| {
                    deltas
                        .iter()
                        .find(|(d, _)| d.is_same(n))
                        .map_or(0, |(_, g)| *g)
                });
                let want = now
                    .as_ref()
                    .and_then(|n| claimed.iter().find(|(d, ..)| d.is_same(n)))
                    .map_or(
                        p.record.count,
                        |(_, all, late)| {
                            if is_early { *all } else { *late }
                        },
                    );
                Evidence {
                    counted: has_counter(&c.decided),
                    grew,
                    want,
                }
            })
            .collect();
        // Every candidate's counter read and none grew: no rule of them dropped it.
        counters_all_still = evidence.iter().all(|e| e.counted && e.growth() == Some(0));
        if let Some(shares) = split_by_counters(&p, &found, &evidence, upto) {
            return split_record(p, &found, &evidence, &shares);
        }
        let a = p.record.rule.as_mut().expect("checked above");
        let chosen = confirm(a, &p.candidates, &evidence);
        if p.hook_inferred {
            cap_inferred(a, "the hook was inferred");
        }
        // Renumbered by a rule inserted or deleted above it: give the number
        // `iptables -L --line-numbers` shows now.
        if let (DecidedBy::Rule(then), Some(DecidedBy::Rule(moved))) =
            (&p.candidates[chosen].decided, &found[chosen])
            && then.position != moved.position
            && a.rule_num.is_some()
        {
            a.rule_num = Some(moved.position);
            a.why = format!(
                "{}; rule {} when last read, now rule {}",
                a.why, then.position, moved.position
            );
        }
        // What `reconsider` compares against: the rule named now.
        p.candidates.swap(0, chosen);
        found.swap(0, chosen);
    }
    if let (Some(_), Some(after), Some(deltas)) = (baseline, after, deltas)
        && p.record
            .rule
            .as_ref()
            .is_none_or(|a| a.attribution != Level::Exact)
    {
        reconsider(
            &mut p,
            found.first().and_then(Option::as_ref),
            &after.ruleset,
            deltas,
        );
    }
    if counters_all_still
        && let (Some(before), Some(now)) = (baseline, after)
        && let Some(cause) = before.conntrack.zip(now.conntrack).and_then(|(b, a)| {
            conntrack::cause(
                &b,
                &a,
                p.record.hook,
                no_rule + p.record.count,
                cx.source_nat,
            )
        })
        && cause.certain
        && let Some(a) = p.record.rule.as_mut()
    {
        // conntrack dropped it before the rule could (a full table's drops match
        // `ctstate INVALID`, which has no connection to look at): its counter says so.
        let rule = a.label().unwrap_or_default();
        *a = Attribution::none(format!(
            "{}; not {rule}, which matches it but whose counter did not grow: netfilter's \
             core dropped it in {}",
            cause.text(),
            p.record.location
        ));
        a.cause = Some(cause);
        p.candidates.clear();
    } else if p.candidates.is_empty()
        && p.query.is_some()
        && let (Some(before), Some(now)) = (baseline, after)
    {
        // Only what was read in full can tell that no rule dropped it.
        if before.problems.is_empty() && now.problems.is_empty() {
            let cause = before
                .conntrack
                .zip(now.conntrack)
                .and_then(|(b, a)| conntrack::cause(&b, &a, p.record.hook, no_rule, cx.source_nat));
            no_rule_dropped(&mut p.record, before.digest == now.digest, cause);
        }
    }
    // A queue's own drop (see `nfqueue`): the rule is right, the queue says why.
    if p.record.location == nfqueue::LOCATION
        && let Some(a) = p.record.rule.as_mut()
        && a.verdict.as_deref() == Some("QUEUE")
        && let Some(rule) = &a.rule
        && let Some(cause) = nfqueue::cause(
            rule,
            baseline.and_then(|b| b.queues.as_ref()),
            after.and_then(|n| n.queues.as_ref()),
        )
    {
        a.why = format!("{}; {}", cause.text(), a.why);
        a.cause = Some(cause);
    }
    if let (Some(a), Some(snap)) = (p.record.rule.as_mut(), after) {
        owner::policy_owner(a, &snap.ruleset);
        owner::ufw_number(a, &snap.ruleset);
        owner::libvirt_network(a);
        owner::calico_policy(a, &snap.ruleset);
        owner::docker_direct_access(a, &snap.ruleset);
        a.backends_mixed = backends_mixed(&snap.ruleset);
    }
    // No read after the drop: no counter could confirm it.
    if after.is_none()
        && let Some(a) = p.record.rule.as_mut()
        && a.attribution != Level::None
    {
        cap_inferred(a, &format!("{GONE}: its counters could not be read again"));
    }
    vec![p.record]
}

/// Rules whose split drops are followed at most per namespace: beyond, the oldest are
/// forgotten (a split line then takes what their counters grew since its own baseline).
const SPLIT_RULES_KEPT: usize = 256;

/// How a line's drops split among its candidates when the rules decide per packet
/// (`limit`, `quota`, `statistic`, ...: some packets of one flow match, the next do not):
/// several candidates' counters grew in the window (or earlier lines of them were split)
/// and every candidate is a rule with a counter. Each takes, in the order the kernel evaluates them, what its counter grew
/// beyond the drops earlier split lines took (`upto`, per rule, from the line's baseline
/// read when first seen), so the totals by rule follow the counters across flushes.
/// `None` when the counters do not hold the line's drops.
fn split_by_counters(
    p: &Pending,
    found: &[Option<DecidedBy>],
    evidence: &[Evidence],
    upto: &mut Vec<(DecidedBy, u64)>,
) -> Option<Vec<u64>> {
    // Several counters grew now, or earlier lines were split among these rules (their
    // counters grew before this window: the flow's drops came faster than its lines).
    let grown = evidence
        .iter()
        .filter(|e| e.growth().is_some_and(|g| g > 0))
        .count();
    let followed = found
        .iter()
        .flatten()
        .any(|d| upto.iter().any(|(u, _)| u.is_same(d)));
    if p.candidates.len() < 2 || (grown < 2 && !followed) {
        return None;
    }
    let counter = |d: &DecidedBy| match d {
        DecidedBy::Rule(r) => r.counters.as_ref().map(|c| c.packets),
        _ => None,
    };
    // (rule now, its counter now, from where this line may take its drops: the window's
    // start, or where earlier split lines in it left the counter)
    let mut rules = Vec::with_capacity(found.len());
    for (now, e) in found.iter().zip(evidence) {
        let now = now.as_ref()?;
        let value = counter(now)?;
        let start = value.saturating_sub(e.growth()?);
        let from = upto
            .iter()
            .find(|(d, _)| d.is_same(now))
            .map_or(start, |(_, u)| (*u).max(start))
            .min(value);
        rules.push((now, value, from));
    }
    let available: u64 = rules.iter().map(|(_, value, from)| value - from).sum();
    if available < p.record.count {
        return None;
    }
    // The kernel's order: a rule earlier in the chain saw the packets first (a limit's
    // burst is the flow's first packets).
    let mut order: Vec<usize> = (0..rules.len()).collect();
    let same_chain = rules.windows(2).all(|w| match (w[0].0, w[1].0) {
        (DecidedBy::Rule(a), DecidedBy::Rule(b)) => a.table == b.table && a.chain == b.chain,
        _ => false,
    });
    if same_chain {
        order.sort_by_key(|&i| match rules[i].0 {
            DecidedBy::Rule(r) => r.position,
            _ => u32::MAX,
        });
    }
    let mut left = p.record.count;
    let mut shares = vec![0; rules.len()];
    for &i in &order {
        let (_, value, from) = rules[i];
        shares[i] = (value - from).min(left);
        left -= shares[i];
    }
    // One rule takes it all and only its counter grew now: no split, the counters
    // confirm that rule as they would any line (exact when nothing else grew).
    if grown < 2 && shares.iter().filter(|&&s| s > 0).count() < 2 {
        return None;
    }
    for i in order {
        let (now, _, from) = rules[i];
        let share = shares[i];
        match upto.iter_mut().find(|(d, _)| d.is_same(now)) {
            Some((_, u)) => *u = from + share,
            None => {
                if upto.len() >= SPLIT_RULES_KEPT {
                    upto.remove(0);
                }
                upto.push((now.clone(), from + share));
            }
        }
    }
    Some(shares)
}

/// The line as one line per candidate that took a share (see [`split_by_counters`]).
fn split_record(
    p: Pending,
    found: &[Option<DecidedBy>],
    evidence: &[Evidence],
    shares: &[u64],
) -> Vec<DropRecord> {
    let labels: Vec<String> = p
        .candidates
        .iter()
        .zip(evidence)
        .map(|(c, e)| {
            format!(
                "{} grew by {}",
                c.attribution.label().unwrap_or_default(),
                e.growth().unwrap_or(0)
            )
        })
        .collect();
    let why = format!(
        "one flow's drops split among the rules that dropped them, by their counters ({}, \
         for {} drop(s)): a rule that decides per packet (limit, quota, statistic, ...) took \
         some packets and a later rule the rest",
        labels.join(", "),
        evidence.first().map_or(0, |e| e.want)
    );
    let (count, bytes) = (p.record.count, p.record.bytes);
    let mut bytes_left = bytes;
    let parts: Vec<usize> = (0..shares.len()).filter(|&i| shares[i] > 0).collect();
    parts
        .iter()
        .enumerate()
        .map(|(n, &i)| {
            let mut rec = p.record.clone();
            rec.count = shares[i];
            // The packets of a line are not told apart: its bytes go pro rata.
            rec.bytes = if n + 1 == parts.len() {
                bytes_left
            } else {
                bytes * shares[i] / count
            };
            bytes_left -= rec.bytes;
            let mut a = p.candidates[i].attribution.clone();
            if let (DecidedBy::Rule(then), Some(DecidedBy::Rule(now))) =
                (&p.candidates[i].decided, &found[i])
                && then.position != now.position
                && a.rule_num.is_some()
            {
                a.rule_num = Some(now.position);
            }
            a.attribution = Level::Inferred;
            a.why = why.clone();
            a.alternatives = parts
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| p.candidates[j].described.clone())
                .collect();
            a.backends_mixed = p.record.rule.as_ref().is_some_and(|r| r.backends_mixed);
            rec.rule = Some(a);
            rec
        })
        .collect()
}

impl Attributor {
    /// Re-reads the rulesets of namespaces with pending records (`all`), or of those whose
    /// last read is old enough to read again (`read_gap`), confirms attributions with the
    /// counters, and returns the records in time order.
    pub fn flush(&mut self, all: bool) -> Vec<DropRecord> {
        let mut out = Vec::new();
        for (inode, ns) in self
            .namespaces
            .iter_mut()
            .filter(|(_, n)| !n.pending.is_empty() && (all || n.due()))
        {
            if ns.relocate(*inode) {
                // The pending records were judged against a ruleset read through the old
                // way in: no counter can confirm them.
                ns.current = None;
                ns.earlier.clear();
            }
            let after = ns.read();
            let windows = Windows::of(ns, after.as_ref());
            let found = found_again(ns, after.as_ref());
            let claimed = claims(&ns.pending, &found, &windows);
            let reads = Baselines {
                earliest: ns.earlier.front(),
                current: ns.current.as_ref(),
            };
            // What conntrack's counters must account for to name the cause of these.
            let no_rule = ns
                .pending
                .iter()
                .filter(|p| p.candidates.is_empty() && p.query.is_some())
                .map(|p| p.record.count)
                .sum();
            let cx = Settling {
                windows: &windows,
                claimed: &claimed,
                reads,
                after: after.as_ref(),
                no_rule,
                source_nat: after
                    .as_ref()
                    .is_some_and(|a| conntrack::source_nat(&a.ruleset)),
            };
            for (p, found) in ns.pending.drain(..).zip(found) {
                out.extend(settle(p, found, &cx, &mut ns.split_upto));
            }
            // A burst's queue is not kept at its peak (tens of MB) once it has gone out.
            ns.pending.shrink_to(PENDING_KEPT);
            if let Some(after) = after {
                ns.advance(after);
            }
        }
        // Namespaces are flushed one after the other; lines go out in time order.
        out.sort_by_key(|r| r.ts_ns);
        out
    }
}
