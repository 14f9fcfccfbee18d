//! NFQUEUE rules whose queue drops: no program listening, or its queue full.
//!
//! A packet a rule hands to a queue is dropped by netfilter's core when no program is
//! bound to the queue (unless the rule says `--queue-bypass` / `bypass`) or the queue is
//! full (unless the program asked to fail open): `nf_queue` frees it with the
//! NETFILTER_DROP reason (net/netfilter/nf_queue.c), so the drop's location names
//! `nf_queue`. Which of the two is told by the namespace's bound queues,
//! /proc/net/netfilter/nfnetlink_queue (`queue_num portid queue_total copy_mode copy_range
//! queue_dropped ...`, see `seq_show` in net/netfilter/nfnetlink_queue.c).

use std::path::Path;

use crate::record::rule::Cause;

/// The location of a drop the queue made (the program or queue was missing).
pub const LOCATION: &str = "nf_queue";

/// The queues a program is bound to in a namespace: (number, packets dropped full).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listeners(pub Vec<(u32, u64)>);

impl Listeners {
    /// The bound queues of the namespace at `netns` (None: ours); `None` when the file
    /// cannot be read (nfnetlink_queue not loaded: no queue has a listener).
    pub fn read(netns: Option<&Path>) -> Option<Listeners> {
        crate::tools::on_thread_in(netns, || {
            std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue")
        })
        .ok()
        .map(|text| Listeners::parse(&text))
    }

    fn parse(text: &str) -> Listeners {
        Listeners(
            text.lines()
                .filter_map(|l| {
                    let cells: Vec<&str> = l.split_whitespace().collect();
                    Some((cells.first()?.parse().ok()?, cells.get(5)?.parse().ok()?))
                })
                .collect(),
        )
    }
}

/// The queues a rule hands packets to, from its text: iptables `--queue-num N`,
/// `--queue-balance A:B`, nft `queue num N`, `queue to A-B` (default 0), and whether it
/// lets packets through when no program listens.
fn queues_of(rule: &str) -> (Vec<u32>, bool) {
    let words: Vec<&str> = rule.split_whitespace().collect();
    let after = |key: &[&str]| {
        words
            .windows(key.len() + 1)
            .find(|w| w[..key.len()] == *key)
            .map(|w| w[key.len()])
    };
    let value = after(&["--queue-num"])
        .or(after(&["--queue-balance"]))
        .or(after(&["queue", "num"]))
        .or(after(&["queue", "to"]))
        .or_else(|| {
            // nft lists `queue flags bypass to 3`.
            words
                .iter()
                .position(|w| *w == "queue")
                .and_then(|i| {
                    words[i..]
                        .iter()
                        .position(|w| *w == "to")
                        .map(|j| i + j + 1)
                })
                .and_then(|k| words.get(k).copied())
        })
        .unwrap_or("0");
    let range = |s: &str| -> Option<Vec<u32>> {
        let (a, b) = s.split_once([':', '-']).unwrap_or((s, s));
        let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
        (a <= b && b - a < 1024).then(|| (a..=b).collect())
    };
    let bypass = words
        .iter()
        .any(|w| *w == "--queue-bypass" || w.contains("bypass"));
    (range(value).unwrap_or_default(), bypass)
}

/// Why a packet `rule` queued was dropped at [`LOCATION`], given the namespace's bound
/// queues `before` and `after` the drop.
pub fn cause(rule: &str, before: Option<&Listeners>, after: Option<&Listeners>) -> Option<Cause> {
    let (queues, bypass) = queues_of(rule);
    if queues.is_empty() {
        return None;
    }
    let label = match queues.as_slice() {
        [one] => format!("NFQUEUE {one}"),
        [first, .., last] => format!("NFQUEUE {first}-{last}"),
        [] => return None,
    };
    let bound = |l: Option<&Listeners>| -> Vec<(u32, u64)> {
        l.map(|l| {
            l.0.iter()
                .filter(|(n, _)| queues.contains(n))
                .copied()
                .collect()
        })
        .unwrap_or_default()
    };
    let (was, now) = (bound(before), bound(after));
    if was.is_empty() && now.is_empty() {
        let fix = if bypass {
            String::new()
        } else {
            " (--queue-bypass lets packets through when none does)".to_string()
        };
        return Some(Cause {
            name: "nfqueue_no_listener",
            title: format!("no program listens on {label}{fix}"),
            certain: true,
        });
    }
    let full: u64 = now
        .iter()
        .map(|(n, d)| d.saturating_sub(was.iter().find(|(m, _)| m == n).map_or(0, |w| w.1)))
        .sum();
    (full > 0).then(|| Cause {
        name: "nfqueue_full",
        title: format!("{label} full: its program did not keep up (queue_dropped +{full})"),
        certain: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_numbers_come_from_either_syntax() {
        assert_eq!(
            queues_of("-A OUTPUT -p udp -j NFQUEUE --queue-num 3"),
            (vec![3], false)
        );
        assert_eq!(
            queues_of("-A OUTPUT -j NFQUEUE --queue-balance 2:4 --queue-bypass"),
            (vec![2, 3, 4], true)
        );
        assert_eq!(queues_of("-A OUTPUT -j NFQUEUE"), (vec![0], false));
        assert_eq!(queues_of("udp dport 53 queue num 7"), (vec![7], false));
        assert_eq!(queues_of("queue flags bypass to 1-2"), (vec![1, 2], true));
    }

    #[test]
    fn a_queue_without_program_or_with_a_full_one_is_named() {
        let rule = "-A OUTPUT -p udp -j NFQUEUE --queue-num 3";
        let none = cause(
            rule,
            Some(&Listeners::default()),
            Some(&Listeners::default()),
        )
        .unwrap();
        assert_eq!(none.name, "nfqueue_no_listener");
        assert_eq!(
            none.title,
            "no program listens on NFQUEUE 3 (--queue-bypass lets packets through when none does)"
        );
        let text = "    3  12345     0 2 65531     0     0        0  1\n";
        let before = Listeners::parse(text);
        let after = Listeners::parse("    3  12345     0 2 65531     4     0       10  1\n");
        assert_eq!(before.0, vec![(3, 0)]);
        let full = cause(rule, Some(&before), Some(&after)).unwrap();
        assert_eq!(full.name, "nfqueue_full");
        assert!(full.title.contains("queue_dropped +4"), "{}", full.title);
        // Bound and not full: the program dropped it itself (a verdict, not the queue).
        assert_eq!(cause(rule, Some(&before), Some(&before)), None);
    }
}
