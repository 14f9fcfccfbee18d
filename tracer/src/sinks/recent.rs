//! The recent distinct drops, for `serve`'s `GET /drops?since=DURATION`.
//!
//! One entry per flow and rule, with when it was first and last seen and how many packets
//! it lost; bounded in number (the least recently seen go first) and in age, so a scan or
//! weeks of traffic keep it small. Entries render with `watch --json`'s field names.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::record::DropRecord;

/// What makes two drops the same for the list: the flow (ports included) and the rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    netns: u32,
    proto: String,
    src: IpAddr,
    sport: Option<u16>,
    dst: IpAddr,
    dport: Option<u16>,
    rule: Option<String>,
}

#[derive(Debug)]
struct Entry {
    /// The first line of the drop, its count and bytes the totals so far.
    record: DropRecord,
    first_seen: Instant,
    last_seen: Instant,
    last_time: String,
}

/// One drop of the list: a drop line with the totals since it was first seen.
#[derive(Debug, Serialize)]
pub struct RecentDrop<'a> {
    #[serde(flatten)]
    pub record: &'a DropRecord,
    /// Wall-clock time of the last packet, RFC 3339 (`time` is the first's).
    pub last_time: String,
    pub first_seen_s_ago: f64,
    pub last_seen_s_ago: f64,
}

pub struct RecentDrops {
    entries: HashMap<Key, Entry>,
    max_entries: usize,
    max_age: Duration,
}

impl RecentDrops {
    pub fn new(max_entries: usize, max_age: Duration) -> Self {
        RecentDrops {
            entries: HashMap::new(),
            max_entries: max_entries.max(1),
            max_age,
        }
    }

    pub fn observe(&mut self, r: &DropRecord, now: Instant) {
        let key = Key {
            netns: r.netns,
            proto: r.proto.clone(),
            src: r.src,
            sport: r.sport,
            dst: r.dst,
            dport: r.dport,
            rule: r.rule_label(),
        };
        if let Some(e) = self.entries.get_mut(&key) {
            e.record.count += r.count;
            e.record.bytes += r.bytes;
            e.last_seen = now;
            e.last_time.clone_from(&r.time);
            return;
        }
        if self.entries.len() >= self.max_entries {
            self.forget_least_recent();
        }
        let mut record = r.clone();
        // The packet bytes are for pcapng, not for the list.
        record.headers = Vec::new();
        self.entries.insert(
            key,
            Entry {
                record,
                first_seen: now,
                last_seen: now,
                last_time: r.time.clone(),
            },
        );
    }

    /// Drops seen within `since` of `now`, most recent first.
    pub fn since(&self, since: Duration, now: Instant) -> Vec<RecentDrop<'_>> {
        let mut v: Vec<(&Entry, RecentDrop<'_>)> = self
            .entries
            .values()
            .filter(|e| now.duration_since(e.last_seen) <= since)
            .map(|e| {
                (
                    e,
                    RecentDrop {
                        record: &e.record,
                        last_time: e.last_time.clone(),
                        first_seen_s_ago: now.duration_since(e.first_seen).as_secs_f64(),
                        last_seen_s_ago: now.duration_since(e.last_seen).as_secs_f64(),
                    },
                )
            })
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.0.last_seen));
        v.into_iter().map(|(_, d)| d).collect()
    }

    /// Forgets drops older than the list keeps.
    pub fn expire(&mut self, now: Instant) {
        let max_age = self.max_age;
        self.entries
            .retain(|_, e| now.duration_since(e.last_seen) <= max_age);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops the least recently seen tenth: amortised over many inserts.
    fn forget_least_recent(&mut self) {
        let mut ages: Vec<Instant> = self.entries.values().map(|e| e.last_seen).collect();
        ages.sort_unstable();
        let cutoff = ages[ages.len() / 10];
        self.entries.retain(|_, e| e.last_seen > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    #[test]
    fn the_same_flow_adds_up_and_others_stay_apart() {
        let mut list = RecentDrops::new(100, Duration::from_secs(3600));
        let t0 = Instant::now();
        let mut r = sample();
        (r.count, r.bytes) = (2, 120);
        list.observe(&r, t0);
        (r.count, r.bytes) = (3, 180);
        r.time = "later".into();
        list.observe(&r, t0 + Duration::from_secs(5));
        r.dport = Some(9090);
        list.observe(&r, t0 + Duration::from_secs(6));
        let now = t0 + Duration::from_secs(10);
        let all = list.since(Duration::from_secs(60), now);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].record.dport, Some(9090), "most recent first");
        assert_eq!((all[1].record.count, all[1].record.bytes), (5, 300));
        assert_eq!(all[1].last_time, "later");
        assert_eq!(all[1].first_seen_s_ago, 10.0);
        let v = serde_json::to_value(&all[1]).unwrap();
        for k in [
            "type", "time", "dst", "dport", "comm", "pid", "count", "bytes", "hook",
        ] {
            assert!(v.get(k).is_some(), "watch --json field {k} missing: {v}");
        }
        assert_eq!(list.since(Duration::from_secs(4), now).len(), 1);
    }

    #[test]
    fn the_list_stays_bounded() {
        let mut list = RecentDrops::new(1000, Duration::from_secs(60));
        let t0 = Instant::now();
        let mut r = sample();
        for port in 0..50_000u32 {
            r.sport = Some(u16::try_from(port % 65536).unwrap());
            r.dport = Some(u16::try_from(port / 65536 + 1).unwrap());
            list.observe(&r, t0 + Duration::from_micros(u64::from(port)));
        }
        assert!(list.len() <= 1000, "{}", list.len());
        list.expire(t0 + Duration::from_secs(120));
        assert!(list.is_empty());
    }
}
