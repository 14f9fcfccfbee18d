//! Turning the kernel's cumulative per-flow counts into output lines that add up.
//!
//! The kernel counts every drop in its flow table and writes a record for a flow's first
//! packet and then at most once a second, carrying the flow's cumulative count. Records
//! can be lost (ring buffer full, userspace stalled); counts cannot. So each line reports
//! the packets since the last line of its flow (`count`), and at the end — and every second
//! for recently active flows — the flow table itself is read to report what no record
//! carried. The sum of `count` over all lines then equals what the kernel counted.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tracer_common::FlowKey;

use crate::record::DropRecord;

/// Flows remembered at most (as many as the kernel tracks).
const MAX_TRACKED: usize = tracer_common::MAX_FLOWS as usize;

/// Flows that grew this recently are re-read from the kernel on every tick.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Seen {
    reported: u64,
    /// Boxed: a record is ~850 bytes, and the table's empty buckets would hold as much
    /// each (at 131,072 flows, 262,144 buckets: over 200 MB instead of a few MB).
    template: Box<DropRecord>,
    /// When a record or a re-read last found the flow grown.
    last_growth: Instant,
}

#[derive(Debug, Default)]
pub struct FlowBook {
    seen: HashMap<FlowKey, Seen>,
}

impl FlowBook {
    /// Packets of `key` not yet reported, given the kernel's cumulative count.
    pub fn unreported(&self, key: &FlowKey, cumulative: u64) -> u64 {
        cumulative.saturating_sub(self.seen.get(key).map_or(0, |s| s.reported))
    }

    /// Records that `rec` (whose `count` is already the delta) reports the flow up to
    /// `cumulative`.
    pub fn reported(&mut self, key: FlowKey, cumulative: u64, rec: &DropRecord) {
        if self.seen.len() >= MAX_TRACKED && !self.seen.contains_key(&key) {
            self.forget_oldest();
        }
        let now = Instant::now();
        self.seen
            .entry(key)
            .and_modify(|s| {
                s.reported = s.reported.max(cumulative);
                s.last_growth = now;
            })
            .or_insert_with(|| Seen {
                reported: cumulative,
                template: Box::new(rec.clone()),
                last_growth: now,
            });
    }

    /// Flows that grew within `window`: worth re-reading from the kernel.
    pub fn active(&self, window: Duration) -> Vec<FlowKey> {
        self.seen
            .iter()
            .filter(|(_, s)| s.last_growth.elapsed() <= window)
            .map(|(k, _)| *k)
            .collect()
    }

    /// A line for `delta` more packets of a known flow, dated `time`.
    pub fn catch_up(&mut self, key: &FlowKey, cumulative: u64, time: String) -> Option<DropRecord> {
        let s = self.seen.get_mut(key)?;
        let delta = cumulative.checked_sub(s.reported).filter(|d| *d > 0)?;
        s.reported = cumulative;
        s.last_growth = Instant::now();
        let mut rec = (*s.template).clone();
        rec.count = delta;
        rec.time = time;
        // No packet of this line reached userspace: nothing to capture.
        rec.headers.clear();
        Some(rec)
    }

    pub fn knows(&self, key: &FlowKey) -> bool {
        self.seen.contains_key(key)
    }

    fn forget_oldest(&mut self) {
        // Drop the older half: amortised, and flows that old are not active.
        let mut ages: Vec<Instant> = self.seen.values().map(|s| s.last_growth).collect();
        ages.sort_unstable();
        let cutoff = ages[ages.len() / 2];
        self.seen.retain(|_, s| s.last_growth > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    fn key(dport: u16) -> FlowKey {
        FlowKey {
            saddr: [0; 16],
            daddr: [0; 16],
            location: 0,
            netns: 1,
            reason: 12,
            sport: 1,
            dport,
            family: 2,
            proto: 17,
            tcp_flags: 0,
            ct_info: 0,
        }
    }

    #[test]
    fn lines_add_up_to_the_kernel_count() {
        let mut book = FlowBook::default();
        let k = key(5044);
        // First record: cumulative 1.
        assert_eq!(book.unreported(&k, 1), 1);
        book.reported(k, 1, &sample());
        // The next record arrives at cumulative 40: 39 new packets.
        assert_eq!(book.unreported(&k, 40), 39);
        book.reported(k, 40, &sample());
        // A stale record (reordered across CPUs) adds nothing.
        assert_eq!(book.unreported(&k, 30), 0);
        // The final sweep finds 100 in the kernel.
        let rec = book.catch_up(&k, 100, "t".into()).unwrap();
        assert_eq!(rec.count, 60);
        assert_eq!(
            book.catch_up(&k, 100, "t".into()),
            None,
            "nothing left to report"
        );
        assert_eq!(1 + 39 + 60, 100);
    }

    #[test]
    fn unknown_flows_are_not_caught_up() {
        let mut book = FlowBook::default();
        assert_eq!(book.catch_up(&key(1), 5, "t".into()), None);
        assert!(!book.knows(&key(1)));
    }

    #[test]
    fn active_flows_are_the_recent_ones() {
        let mut book = FlowBook::default();
        book.reported(key(1), 1, &sample());
        assert_eq!(book.active(Duration::from_secs(10)), vec![key(1)]);
    }
}
