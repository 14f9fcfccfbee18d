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

/// Settles one line: its candidates weighed by their counters' growth, its rule renumbered
/// as it is now, reconsidered against the newer ruleset when not confirmed, or said to be
/// dropped by no rule when both reads say so.
fn settle(
    mut p: Pending,
    mut found: Vec<Option<DecidedBy>>,
    w: &Windows,
    claimed: &Claims,
    reads: Baselines<'_>,
    after: Option<&Snapshot>,
    no_rule: u64,
) -> DropRecord {
    let is_early = w.early(&p.record);
    let mut counters_all_still = false;
    let (deltas, baseline) = if is_early {
        (&w.wide, reads.earliest.or(reads.current))
    } else {
        (&w.recent, reads.current)
    };
    if let (Some(deltas), Some(a)) = (deltas, p.record.rule.as_mut())
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
                conntrack::source_nat(&now.ruleset),
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
            let cause = before.conntrack.zip(now.conntrack).and_then(|(b, a)| {
                conntrack::cause(
                    &b,
                    &a,
                    p.record.hook,
                    no_rule,
                    conntrack::source_nat(&now.ruleset),
                )
            });
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
        a.backends_mixed = backends_mixed(&snap.ruleset);
    }
    // No read after the drop: no counter could confirm it.
    if after.is_none()
        && let Some(a) = p.record.rule.as_mut()
        && a.attribution != Level::None
    {
        cap_inferred(a, &format!("{GONE}: its counters could not be read again"));
    }
    p.record
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
            for (p, found) in ns.pending.drain(..).zip(found) {
                out.push(settle(
                    p,
                    found,
                    &windows,
                    &claimed,
                    reads,
                    after.as_ref(),
                    no_rule,
                ));
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
