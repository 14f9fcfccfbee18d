//! Which rules' counters grew between two snapshots.
//!
//! The evaluator replays the ruleset on the reported packet; the kernel's
//! own counters are independent evidence. If the rule the evaluator names is
//! among those whose packet counter grew around the drop, the attribution is
//! confirmed; if another DROP rule grew instead, something is off (a rule
//! changed, or an undecidable match went the other way).

use std::collections::HashMap;

use crate::model::{Backend, ChainRef, DecidedBy, RuleRef, Ruleset, TableFamily};

/// How a rule is recognised in another snapshot: nftables rules by handle
/// (stable for the rule's life); iptables rules by position and text
/// (positions shift when rules are inserted, and the text tells).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    ByHandle {
        backend: Backend,
        family: TableFamily,
        table: String,
        chain: String,
        handle: u64,
    },
    ByPosition {
        backend: Backend,
        family: TableFamily,
        table: String,
        chain: String,
        position: u32,
        text: String,
    },
    Policy(ChainRef),
}

fn rule_key(rule: &RuleRef) -> Key {
    match rule.handle {
        Some(handle) => Key::ByHandle {
            backend: rule.backend,
            family: rule.family,
            table: rule.table.clone(),
            chain: rule.chain.clone(),
            handle,
        },
        None => Key::ByPosition {
            backend: rule.backend,
            family: rule.family,
            table: rule.table.clone(),
            chain: rule.chain.clone(),
            position: rule.position,
            text: rule.text.clone(),
        },
    }
}

/// Packet counts of every rule and policy that has counters.
fn packet_counts(ruleset: &Ruleset) -> Vec<(Key, DecidedBy, u64)> {
    let mut counts = Vec::new();
    for table in &ruleset.tables {
        for chain in &table.chains {
            if let Some(counters) = chain.policy_counters {
                let chain_ref = ChainRef::of(table, chain);
                counts.push((
                    Key::Policy(chain_ref.clone()),
                    DecidedBy::Policy(chain_ref),
                    counters.packets,
                ));
            }
            for rule in &chain.rules {
                if let Some(counters) = rule.counters {
                    let rule_ref = RuleRef::of(table, chain, rule);
                    counts.push((
                        rule_key(&rule_ref),
                        DecidedBy::Rule(rule_ref),
                        counters.packets,
                    ));
                }
            }
        }
    }
    counts
}

/// Rules and policies whose packet counter grew from `before` to `after`,
/// with by how much, in `after`'s order. The [`DecidedBy`] values carry
/// `after`'s counters; compare them to an evaluation's `by` with
/// [`DecidedBy::is_same`]. Rules missing from `before` are left out (their
/// growth cannot be told), as are counters that went down (reset).
pub fn counter_deltas(before: &Ruleset, after: &Ruleset) -> Vec<(DecidedBy, u64)> {
    let earlier: HashMap<Key, u64> = packet_counts(before)
        .into_iter()
        .map(|(key, _, packets)| (key, packets))
        .collect();
    packet_counts(after)
        .into_iter()
        .filter_map(|(key, decided_by, packets)| {
            let grown = packets.checked_sub(*earlier.get(&key)?)?;
            (grown > 0).then_some((decided_by, grown))
        })
        .collect()
}
