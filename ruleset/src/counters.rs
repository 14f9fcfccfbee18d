//! Which rules' counters grew between two snapshots.
//!
//! The evaluator replays the ruleset on the reported packet; the kernel's
//! own counters are independent evidence. If the rule the evaluator names is
//! among those whose packet counter grew around the drop, the attribution is
//! confirmed; if another DROP rule grew instead, something is off (a rule
//! changed, or an undecidable match went the other way).

use std::collections::{HashMap, HashSet};

use crate::model::{Backend, ChainRef, DecidedBy, RuleRef, Ruleset, TableFamily};

/// How a rule is recognised in another snapshot: nftables rules by handle
/// (stable for the rule's life); iptables rules, which have no handle, by
/// their text and which occurrence of that text in the chain they are. Not by
/// position: inserting or deleting a rule above (`iptables -I OUTPUT 3 ...`,
/// the usual fix) renumbers every rule below it, and the rule that dropped
/// must still be recognised, with its counter's growth, after that.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    ByHandle {
        backend: Backend,
        family: TableFamily,
        table: String,
        chain: String,
        handle: u64,
    },
    ByText {
        backend: Backend,
        family: TableFamily,
        table: String,
        chain: String,
        text: String,
        /// 0 for the first rule with this text in the chain, 1 for the next...
        occurrence: u32,
    },
    Policy(ChainRef),
}

fn rule_key(rule: &RuleRef, occurrence: u32) -> Key {
    match rule.handle {
        Some(handle) => Key::ByHandle {
            backend: rule.backend,
            family: rule.family,
            table: rule.table.clone(),
            chain: rule.chain.clone(),
            handle,
        },
        None => Key::ByText {
            backend: rule.backend,
            family: rule.family,
            table: rule.table.clone(),
            chain: rule.chain.clone(),
            text: rule.text.clone(),
            occurrence,
        },
    }
}

/// Every rule and policy of `ruleset` with its key and packet count (`None`
/// for rules and policies without counters).
fn keyed(ruleset: &Ruleset) -> Vec<(Key, DecidedBy, Option<u64>)> {
    let mut all = Vec::new();
    for table in &ruleset.tables {
        for chain in &table.chains {
            if chain.base.is_some() || chain.policy_counters.is_some() {
                let chain_ref = ChainRef::of(table, chain);
                all.push((
                    Key::Policy(chain_ref.clone()),
                    DecidedBy::Policy(chain_ref),
                    chain.policy_counters.map(|c| c.packets),
                ));
            }
            let mut seen: HashMap<&str, u32> = HashMap::new();
            for rule in &chain.rules {
                let occurrence = seen.entry(rule.text.as_str()).or_default();
                let rule_ref = RuleRef::of(table, chain, rule);
                all.push((
                    rule_key(&rule_ref, *occurrence),
                    DecidedBy::Rule(rule_ref),
                    rule.counters.map(|c| c.packets),
                ));
                *occurrence += 1;
            }
        }
    }
    all
}

/// Packet counts of every rule and policy that has counters.
fn packet_counts(ruleset: &Ruleset) -> Vec<(Key, DecidedBy, u64)> {
    keyed(ruleset)
        .into_iter()
        .filter_map(|(key, decided_by, packets)| Some((key, decided_by, packets?)))
        .collect()
}

/// `by`, named in `before`, as it is in `after`: the same rule (by handle, or
/// by text and occurrence as in [`counter_deltas`]) with `after`'s position
/// and counters, or the same chain's policy. `None` when it is no longer
/// there (deleted, edited, chain gone). Lets a drop evaluated against one
/// snapshot be checked against the counters of the next even when rules were
/// inserted or deleted above it in between.
pub fn find_again(before: &Ruleset, by: &DecidedBy, after: &Ruleset) -> Option<DecidedBy> {
    if matches!(by, DecidedBy::NoBaseChain) {
        return Some(DecidedBy::NoBaseChain);
    }
    if same_rules(before, after) {
        return in_place(by, after);
    }
    let key = keyed(before)
        .into_iter()
        .find(|(_, candidate, _)| candidate.is_same(by))?
        .0;
    keyed(after)
        .into_iter()
        .find(|(candidate, ..)| *candidate == key)
        .map(|(_, decided_by, _)| decided_by)
}

/// Rules and policies whose packet counter grew from `before` to `after`,
/// with by how much, in `after`'s order. The [`DecidedBy`] values carry
/// `after`'s counters; compare them to an evaluation's `by` with
/// [`DecidedBy::is_same`]. Rules inserted since `before` grew by their whole
/// counter; other rules missing from `before` are left out (their growth cannot be told),
/// as are counters that went down (reset).
pub fn counter_deltas(before: &Ruleset, after: &Ruleset) -> Vec<(DecidedBy, u64)> {
    if same_rules(before, after) {
        return deltas_in_place(before, after);
    }
    deltas_by_key(before, after)
}

/// [`counter_deltas`] of any two reads: rules paired by [`Key`]; a rule [`inserted`]
/// since `before` grew by its whole counter.
fn deltas_by_key(before: &Ruleset, after: &Ruleset) -> Vec<(DecidedBy, u64)> {
    let earlier: HashMap<Key, u64> = packet_counts(before)
        .into_iter()
        .map(|(key, _, packets)| (key, packets))
        .collect();
    let inserted = inserted(before, after);
    packet_counts(after)
        .into_iter()
        .filter_map(|(key, decided_by, packets)| {
            let grown = match earlier.get(&key) {
                Some(was) => packets.checked_sub(*was)?,
                None if inserted.contains(&key) => packets,
                None => return None,
            };
            (grown > 0).then_some((decided_by, grown))
        })
        .collect()
}

/// Keys of `after`'s rules that were certainly inserted after `before` was read, so that
/// their counter, which started at 0, counts only packets since then (the fix inserted
/// mid-incident, `iptables -I OUTPUT 1 ...`, confirmed by its first drops). Certain only
/// where the chain gained rules and lost none, and, for rules known by their text, no rule
/// of that text was there before: an edit, a rename (`iptables -E` changes the text of the
/// rules that jump to the chain) or a duplicate shifting occurrences could otherwise pass
/// an old rule, with its old counter, for a new one.
fn inserted(before: &Ruleset, after: &Ruleset) -> HashSet<Key> {
    let chain_of = |key: &Key| match key {
        Key::ByHandle {
            backend,
            family,
            table,
            chain,
            ..
        }
        | Key::ByText {
            backend,
            family,
            table,
            chain,
            ..
        } => Some((*backend, *family, table.clone(), chain.clone())),
        Key::Policy(_) => None,
    };
    type Chains = HashMap<(Backend, TableFamily, String, String), HashSet<Key>>;
    let by_chain = |ruleset: &Ruleset| {
        let mut chains = Chains::new();
        for (key, ..) in keyed(ruleset) {
            if let Some(chain) = chain_of(&key) {
                chains.entry(chain).or_default().insert(key);
            }
        }
        chains
    };
    let (was, now) = (by_chain(before), by_chain(after));
    let had_chain = |chain: &(Backend, TableFamily, String, String)| {
        before.tables.iter().any(|t| {
            (t.backend, t.family, &t.name) == (chain.0, chain.1, &chain.2)
                && t.chain(&chain.3).is_some()
        })
    };
    let text = |key: &Key| match key {
        Key::ByText { text, .. } => Some(text.clone()),
        _ => None,
    };
    let none = HashSet::new();
    let mut out = HashSet::new();
    for (chain, keys) in now {
        let old = was.get(&chain).unwrap_or(&none);
        if !had_chain(&chain) || !old.iter().all(|k| keys.contains(k)) {
            continue;
        }
        let old_texts: HashSet<String> = old.iter().filter_map(text).collect();
        out.extend(
            keys.into_iter()
                .filter(|k| !old.contains(k) && text(k).is_none_or(|t| !old_texts.contains(&t))),
        );
    }
    out
}

/// Whether two reads hold the same tables, chains and rules in the same order, counters
/// aside (the usual case: a ruleset re-read to see its counters grow). Each rule is then
/// at the same place in both, and nothing needs keying: with 2,000 rules, keying both
/// reads cost milliseconds at every read.
fn same_rules(a: &Ruleset, b: &Ruleset) -> bool {
    fn zip_all<T>(a: &[T], b: &[T], same: impl Fn(&T, &T) -> bool) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
    }
    zip_all(&a.tables, &b.tables, |s, t| {
        s.backend == t.backend
            && s.family == t.family
            && s.name == t.name
            && zip_all(&s.chains, &t.chains, |c, d| {
                c.name == d.name
                    && c.base == d.base
                    && zip_all(&c.rules, &d.rules, |r, q| {
                        r.position == q.position && r.handle == q.handle && r.text == q.text
                    })
            })
    })
}

/// [`counter_deltas`] of two reads with [`same_rules`]: counters compared place by place.
fn deltas_in_place(before: &Ruleset, after: &Ruleset) -> Vec<(DecidedBy, u64)> {
    let grown = |b: Option<crate::model::Counters>, a: Option<crate::model::Counters>| {
        a?.packets.checked_sub(b?.packets).filter(|g| *g > 0)
    };
    let mut out = Vec::new();
    for (tb, ta) in before.tables.iter().zip(&after.tables) {
        for (cb, ca) in tb.chains.iter().zip(&ta.chains) {
            if let Some(g) = grown(cb.policy_counters, ca.policy_counters) {
                out.push((DecidedBy::Policy(ChainRef::of(ta, ca)), g));
            }
            for (rb, ra) in cb.rules.iter().zip(&ca.rules) {
                if let Some(g) = grown(rb.counters, ra.counters) {
                    out.push((DecidedBy::Rule(RuleRef::of(ta, ca, ra)), g));
                }
            }
        }
    }
    out
}

/// [`find_again`] in a read with [`same_rules`]: the rule or policy at the same place.
fn in_place(by: &DecidedBy, after: &Ruleset) -> Option<DecidedBy> {
    let chain_of = |backend, family, table: &str, chain: &str| {
        let t = after
            .tables
            .iter()
            .find(|t| t.backend == backend && t.family == family && t.name == table)?;
        Some((t, t.chains.iter().find(|c| c.name == chain)?))
    };
    match by {
        DecidedBy::Rule(r) => {
            let (t, c) = chain_of(r.backend, r.family, &r.table, &r.chain)?;
            let rule = c
                .rules
                .get(usize::try_from(r.position).ok()?.checked_sub(1)?)?;
            let now = RuleRef::of(t, c, rule);
            now.is_same_rule(r).then_some(DecidedBy::Rule(now))
        }
        DecidedBy::Policy(p) => {
            let (t, c) = chain_of(p.backend, p.family, &p.table, &p.chain)?;
            Some(DecidedBy::Policy(ChainRef::of(t, c)))
        }
        DecidedBy::NoBaseChain => Some(DecidedBy::NoBaseChain),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Backend;
    use crate::packet::Family;

    fn filter(rules: &[&str]) -> Ruleset {
        let save = format!(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{}\nCOMMIT\n",
            rules.join("\n")
        );
        crate::iptables_save::parse_ruleset(&save, Backend::IptablesNft, Family::Ipv4).unwrap()
    }

    fn position(by: &DecidedBy) -> u32 {
        match by {
            DecidedBy::Rule(rule) => rule.position,
            other => panic!("not a rule: {other:?}"),
        }
    }

    /// The incident's fix inserts a whitelist rule at 3 while packets are still being
    /// dropped: the range rule, now number 5, must still show its growth.
    #[test]
    fn growth_is_seen_when_a_rule_is_inserted_above() {
        let before = filter(&[
            "[0:0] -A OUTPUT -o lo -j ACCEPT",
            "[0:0] -A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "[0:0] -A OUTPUT -p tcp -m multiport --dports 80,443,22,3306 -j ACCEPT",
            "[2:120] -A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP",
        ]);
        let after = filter(&[
            "[0:0] -A OUTPUT -o lo -j ACCEPT",
            "[0:0] -A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "[0:0] -A OUTPUT -p tcp -m multiport --dports 8443,9090,5044,8080 -j ACCEPT",
            "[0:0] -A OUTPUT -p tcp -m multiport --dports 80,443,22,3306 -j ACCEPT",
            "[3:180] -A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP",
        ]);
        let deltas = counter_deltas(&before, &after);
        assert_eq!(deltas.len(), 1, "{deltas:#?}");
        assert_eq!(position(&deltas[0].0), 5, "reported where the rule is now");
        assert_eq!(deltas[0].1, 1);
        // Deleting rules above works the same way.
        let deltas = counter_deltas(&after, &before);
        assert!(deltas.is_empty(), "counter went down: a reset, not growth");
    }

    #[test]
    fn a_rule_is_found_again_where_it_moved_and_not_when_it_is_gone() {
        let before = filter(&[
            "[0:0] -A OUTPUT -o lo -j ACCEPT",
            "[2:120] -A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP",
        ]);
        let after = filter(&[
            "[0:0] -A OUTPUT -p tcp -m multiport --dports 8443,9090 -j ACCEPT",
            "[0:0] -A OUTPUT -o lo -j ACCEPT",
            "[3:180] -A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP",
        ]);
        let by = |ruleset: &Ruleset, position: usize| {
            let table = &ruleset.tables[0];
            let chain = table.chain("OUTPUT").unwrap();
            DecidedBy::Rule(RuleRef::of(table, chain, &chain.rules[position - 1]))
        };
        let again = find_again(&before, &by(&before, 2), &after).unwrap();
        assert_eq!(position(&again), 3);
        assert!(again.is_same(&by(&after, 3)));
        // Its growth is found under its new place.
        let deltas = counter_deltas(&before, &after);
        assert!(deltas[0].0.is_same(&again));
        // Edited or deleted: not the same rule any more.
        let edited = filter(&["[0:0] -A OUTPUT -p tcp -m tcp --dport 2000:65535 -j DROP"]);
        assert_eq!(find_again(&before, &by(&before, 2), &edited), None);
        // Policies are found by chain.
        let policy = DecidedBy::Policy(ChainRef::of(
            &before.tables[0],
            before.tables[0].chain("OUTPUT").unwrap(),
        ));
        assert_eq!(find_again(&before, &policy, &after), Some(policy.clone()));
        assert_eq!(find_again(&before, &policy, &Ruleset::default()), None);
    }

    /// A rule inserted since the earlier read counted from 0: all its packets came after
    /// that read, so a drop seen since is confirmed by it even when no read was taken
    /// between the insertion and the drop.
    #[test]
    fn an_inserted_rule_grew_by_its_whole_counter() {
        let before = filter(&["[2:120] -A OUTPUT -p udp -m udp --dport 5044 -j DROP"]);
        let after = filter(&[
            "[3:180] -A OUTPUT -p udp -m udp --dport 5044 -m comment --comment new -j DROP",
            "[2:120] -A OUTPUT -p udp -m udp --dport 5044 -j DROP",
        ]);
        let deltas = counter_deltas(&before, &after);
        assert_eq!(deltas.len(), 1, "{deltas:#?}");
        assert_eq!((position(&deltas[0].0), deltas[0].1), (1, 3));
    }

    /// Where an old rule could pass for a new one, nothing is counted: a rule edited in
    /// place (one lost, one gained), a duplicate of a rule already there, and every rule
    /// of a chain the earlier read did not have (renamed, or not read).
    #[test]
    fn only_certain_insertions_count_whole() {
        let before = filter(&["[2:120] -A OUTPUT -p udp -j DROP"]);
        let edited = filter(&["[7:420] -A OUTPUT -p tcp -j DROP"]);
        assert!(counter_deltas(&before, &edited).is_empty());
        let duplicated = filter(&[
            "[4:240] -A OUTPUT -p udp -j DROP",
            "[2:120] -A OUTPUT -p udp -j DROP",
        ]);
        let deltas = counter_deltas(&before, &duplicated);
        assert_eq!(deltas.len(), 1, "{deltas:#?}");
        assert_eq!(
            (position(&deltas[0].0), deltas[0].1),
            (1, 2),
            "occurrence 0 paired"
        );
        let new_chain = filter(&[":NEW - [0:0]", "[9:540] -A NEW -j DROP"]);
        assert!(counter_deltas(&before, &new_chain).is_empty());
    }

    /// Identical rules (a duplicate added by a script run twice) are told apart by
    /// which occurrence they are, so one's counter is never taken for the other's.
    #[test]
    fn identical_rules_keep_their_own_counters() {
        let before = filter(&[
            "[0:0] -A OUTPUT -p udp -j DROP",
            "[5:300] -A OUTPUT -p udp -j DROP",
        ]);
        let after = filter(&[
            "[0:0] -A OUTPUT -o lo -j ACCEPT",
            "[1:60] -A OUTPUT -p udp -j DROP",
            "[5:300] -A OUTPUT -p udp -j DROP",
        ]);
        let deltas = counter_deltas(&before, &after);
        assert_eq!(deltas.len(), 1, "{deltas:#?}");
        assert_eq!((position(&deltas[0].0), deltas[0].1), (2, 1));
    }

    /// Two reads of the same rules pair rules place by place, without keying: the same
    /// deltas, and the same rules found again, as keying gives.
    #[test]
    fn unchanged_rules_are_paired_in_place_as_keys_would() {
        let before = filter(&[
            "[5:300] -A OUTPUT -p tcp --dport 22 -j ACCEPT",
            "[1:60] -A OUTPUT -p tcp -j DROP",
            "[1:60] -A OUTPUT -p tcp -j DROP",
        ]);
        let after = filter(&[
            "[5:300] -A OUTPUT -p tcp --dport 22 -j ACCEPT",
            "[4:240] -A OUTPUT -p tcp -j DROP",
            "[9:540] -A OUTPUT -p tcp -j DROP",
        ]);
        assert!(same_rules(&before, &after));
        let in_place = counter_deltas(&before, &after);
        let keyed = deltas_by_key(&before, &after);
        let show = |d: &[(DecidedBy, u64)]| format!("{d:?}");
        assert_eq!(show(&in_place), show(&keyed));
        assert_eq!(in_place.len(), 2);
        assert_eq!((position(&in_place[1].0), in_place[1].1), (3, 8));
        let third = &in_place[1].0;
        let found = find_again(&before, third, &after).unwrap();
        assert_eq!((position(&found), found.is_same(third)), (3, true));
        assert!(!same_rules(
            &before,
            &filter(&["[1:60] -A OUTPUT -p tcp -j DROP"])
        ));
    }
}
