//! Turning the kernel's cumulative per-flow counts into output lines that add up.
//!
//! The kernel counts every drop in its flow table and writes a record for a flow's first
//! packet and then at most once a second, carrying the flow's cumulative count. Records
//! can be lost (ring buffer full, userspace stalled); counts cannot. So each line reports
//! the packets since the last line of its flow (`count`), and at the end — and every second
//! for recently active flows — the flow table itself is read to report what no record
//! carried. The sum of `count` over all lines then equals what the kernel counted.
//!
//! Every flow's count is remembered (as many as the kernel tracks), but its full record,
//! the template of its next lines (~1.5 KB with its strings), only for the most recent
//! [`MAX_TEMPLATES`] flows: a scan of 100,000 flows would otherwise keep 150 MB of records
//! of flows long silent. An older flow that grows again keeps what its rule needs (hook,
//! engine, devices, socket) in a [`Sketch`], and its line is rebuilt from the kernel's flow
//! entry and that sketch.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tracer_common::FlowKey;

use crate::{
    kernel::{
        drop::Tally,
        stack::{DropEngine, Hook},
    },
    record::DropRecord,
};

/// Flows remembered at most, unless told (as many as the kernel's table holds by default).
const MAX_TRACKED: usize = tracer_common::MAX_FLOWS as usize;

/// Flows whose full record is kept, at most (the most recently grown): ~6 MB of records.
const MAX_TEMPLATES: usize = 4_096;

/// Flows that grew this recently are re-read from the kernel on every tick.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Seen {
    reported: Tally,
    /// The flow's last line, for the next; `None` once the flow is among the older ones.
    /// Boxed: a record is ~850 bytes, and the table's empty buckets would hold as much
    /// each (at 131,072 flows, 262,144 buckets: over 200 MB instead of a few MB).
    template: Option<Box<DropRecord>>,
    sketch: Sketch,
    /// When a record or a re-read last found the flow grown.
    last_growth: Instant,
}

/// What a line rebuilt from the kernel's flow entry lacks and its rule may need: the hook
/// and engine (from the stack of its first record), the devices, whether it had a socket.
#[derive(Debug, Clone, Default)]
pub struct Sketch {
    hook: Option<Hook>,
    engine: Option<DropEngine>,
    engine_guessed: bool,
    has_socket: bool,
    receiver: bool,
    /// `None` for a flow given up to the aggregates (no record to take them from): a scan
    /// leaves 131,072 of those, each an allocation fewer.
    devices: Option<Box<(String, String, String)>>,
}

impl Sketch {
    fn of(r: &DropRecord) -> Sketch {
        Sketch {
            hook: r.hook,
            engine: r.engine,
            engine_guessed: r.engine_guessed,
            has_socket: r.has_socket,
            receiver: r.receiver,
            devices: Some(Box::new((
                r.ifname.clone(),
                r.in_ifname.clone(),
                r.out_ifname.clone(),
            ))),
        }
    }

    /// Gives a line rebuilt from the flow table what the flow's first record knew.
    pub fn apply(&self, r: &mut DropRecord) {
        r.hook = r.hook.or(self.hook);
        if self.engine.is_some() {
            r.engine = self.engine;
            r.engine_guessed = self.engine_guessed;
        }
        r.has_socket |= self.has_socket;
        r.receiver |= self.receiver;
        if let Some(devices) = &self.devices {
            let (ifname, in_ifname, out_ifname) = &**devices;
            r.ifname.clone_from(ifname);
            r.in_ifname.clone_from(in_ifname);
            r.out_ifname.clone_from(out_ifname);
        }
    }
}

/// What a re-read of a known flow gives.
#[derive(Debug)]
pub enum CatchUp {
    /// Nothing new.
    Nothing,
    /// The line for the packets since the last.
    Line(Box<DropRecord>),
    /// New packets of a flow whose record was let go: rebuild its line from the flow
    /// table entry, [`Sketch::apply`] this, and report it with [`FlowBook::reported`].
    Rebuild(Sketch),
}

#[derive(Debug)]
pub struct FlowBook {
    seen: HashMap<FlowKey, Seen>,
    templates: usize,
    /// Flows remembered at most: as many as the kernel's flow table holds.
    max_tracked: usize,
}

impl Default for FlowBook {
    fn default() -> Self {
        FlowBook::tracking(MAX_TRACKED)
    }
}

impl FlowBook {
    /// A book for a kernel flow table of `flows` flows.
    pub fn tracking(flows: usize) -> Self {
        FlowBook {
            seen: HashMap::new(),
            templates: 0,
            max_tracked: flows.max(1),
        }
    }

    /// Packets and bytes of `key` not yet reported, given the kernel's cumulative counts.
    pub fn unreported(&self, key: &FlowKey, cumulative: Tally) -> Tally {
        cumulative.since(
            self.seen
                .get(key)
                .map_or_else(Tally::default, |s| s.reported),
        )
    }

    /// Records that `rec` (whose `count` and `bytes` are already the delta) reports the
    /// flow up to `cumulative`, and keeps it as the flow's template.
    pub fn reported(&mut self, key: FlowKey, cumulative: Tally, rec: &DropRecord) {
        let now = Instant::now();
        let template = Some(Box::new(rec.clone()));
        match self.seen.get_mut(&key) {
            Some(s) => {
                // A late record carries older counts than a re-read already reported.
                if cumulative.packets > s.reported.packets {
                    s.reported = cumulative;
                }
                s.last_growth = now;
                if s.template.is_none() {
                    self.templates += 1;
                }
                s.template = template;
            }
            None => {
                self.templates += 1;
                self.seen.insert(
                    key,
                    Seen {
                        reported: cumulative,
                        template,
                        sketch: Sketch::of(rec),
                        last_growth: now,
                    },
                );
            }
        }
        if self.templates > MAX_TEMPLATES {
            self.let_old_templates_go();
        }
    }

    /// Takes the flow's drops up to `cumulative` as reported without a line: `serve` left
    /// them to the aggregates (see `session::beyond::LiveBook`), and no later line may
    /// bring them again. Not marked active: a scan's given-up flows are not re-read every
    /// second; a flow that grows again writes a record.
    pub fn give_up(&mut self, key: FlowKey, cumulative: Tally) {
        match self.seen.get_mut(&key) {
            Some(s) => {
                if cumulative.packets > s.reported.packets {
                    s.reported = cumulative;
                }
            }
            None => {
                let now = Instant::now();
                let idle = now.checked_sub(ACTIVE_WINDOW * 2).unwrap_or(now);
                self.seen.insert(
                    key,
                    Seen {
                        reported: cumulative,
                        template: None,
                        sketch: Sketch::default(),
                        last_growth: idle,
                    },
                );
            }
        }
    }

    /// Flows that grew within `window`: worth re-reading from the kernel.
    pub fn active(&self, window: Duration) -> Vec<FlowKey> {
        self.seen
            .iter()
            .filter(|(_, s)| s.last_growth.elapsed() <= window)
            .map(|(k, _)| *k)
            .collect()
    }

    /// The line for the packets of a known flow up to `cumulative`, dated `time`.
    pub fn catch_up(&mut self, key: &FlowKey, cumulative: Tally, time: String) -> CatchUp {
        let Some(s) = self.seen.get_mut(key) else {
            return CatchUp::Nothing;
        };
        if cumulative.packets <= s.reported.packets {
            return CatchUp::Nothing;
        }
        let delta = cumulative.since(s.reported);
        let Some(template) = &s.template else {
            return CatchUp::Rebuild(s.sketch.clone());
        };
        s.reported = cumulative;
        s.last_growth = Instant::now();
        let mut rec = template.clone();
        rec.count = delta.packets;
        rec.bytes = delta.bytes;
        rec.time = time;
        // No packet of this line reached userspace: nothing to capture.
        rec.headers.clear();
        CatchUp::Line(rec)
    }

    /// Forgets the flows the kernel's table no longer holds (`live`: every flow it holds,
    /// read whole). Their counts were reported as far as anyone can: should such a flow
    /// drop again, the kernel counts it from zero in a new entry, which a remembered
    /// count would hide. A scan would otherwise leave 100,000 silent flows here.
    pub fn forget_absent(&mut self, live: &std::collections::HashSet<&FlowKey>) {
        self.seen.retain(|k, _| live.contains(k));
        self.templates = self.seen.values().filter(|s| s.template.is_some()).count();
        self.give_back_room();
    }

    /// After a scan, the table is not kept at the scan's size (four times the kernel's
    /// flows, tens of MB): twice what the kernel holds is room enough.
    fn give_back_room(&mut self) {
        self.seen.shrink_to(self.max_tracked.saturating_mul(2));
    }

    /// Whether the book holds more flows than the kernel's table can: those it no longer
    /// holds are to be forgotten ([`FlowBook::forget_absent`], from a read of the table).
    /// Forgetting by age instead could forget a flow the table still counts, whose next
    /// line would then report its drops again.
    pub fn over_table(&self) -> bool {
        self.seen.len() > self.max_tracked
    }

    /// Whether the book holds four times the flows the kernel's table can: no new flow
    /// may be added before those the table no longer holds are forgotten
    /// ([`FlowBook::forget_absent`]). Not by age: the kernel's LRU keeps some old flows
    /// (it evicts per CPU, roughly), and a flow forgotten while the table still held it
    /// was reported again by the next read of the table.
    pub fn full(&self) -> bool {
        self.seen.len() >= self.max_tracked.saturating_mul(4)
    }

    pub fn knows(&self, key: &FlowKey) -> bool {
        self.seen.contains_key(key)
    }

    /// Lets the older half of the templates go (their flows keep their counts and sketch).
    fn let_old_templates_go(&mut self) {
        let mut ages: Vec<Instant> = self
            .seen
            .values()
            .filter(|s| s.template.is_some())
            .map(|s| s.last_growth)
            .collect();
        ages.sort_unstable();
        let cutoff = ages[ages.len() / 2];
        for s in self.seen.values_mut() {
            if s.last_growth <= cutoff {
                s.template = None;
            }
        }
        self.templates = self.seen.values().filter(|s| s.template.is_some()).count();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    /// Cumulative counts of `packets` packets of 100 bytes.
    fn t(packets: u64) -> Tally {
        Tally {
            packets,
            bytes: packets * 100,
        }
    }

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
        assert_eq!(book.unreported(&k, t(1)), t(1));
        book.reported(k, t(1), &sample());
        // The next record arrives at cumulative 40: 39 new packets.
        assert_eq!(book.unreported(&k, t(40)), t(39));
        book.reported(k, t(40), &sample());
        // A stale record (reordered across CPUs) adds nothing.
        assert_eq!(book.unreported(&k, t(30)), t(0));
        // The final sweep finds 100 in the kernel.
        let CatchUp::Line(rec) = book.catch_up(&k, t(100), "t".into()) else {
            panic!("no line")
        };
        assert_eq!((rec.count, rec.bytes), (60, 6000));
        assert!(
            matches!(book.catch_up(&k, t(100), "t".into()), CatchUp::Nothing),
            "nothing left to report"
        );
        assert_eq!(1 + 39 + 60, 100);
    }

    #[test]
    fn a_given_up_flow_reports_only_what_came_after() {
        let mut book = FlowBook::default();
        let k = key(7);
        book.give_up(k, t(5));
        assert!(book.knows(&k));
        assert!(
            book.active(ACTIVE_WINDOW).is_empty(),
            "not re-read every second"
        );
        assert_eq!(book.unreported(&k, t(5)), t(0));
        // It grows again: only the new packets, rebuilt from the kernel's entry.
        assert!(matches!(
            book.catch_up(&k, t(8), "t".into()),
            CatchUp::Rebuild(_)
        ));
        assert_eq!(book.unreported(&k, t(8)), t(3));
        // A known flow given up keeps the larger count.
        book.reported(k, t(8), &sample());
        book.give_up(k, t(6));
        assert_eq!(book.unreported(&k, t(8)), t(0));
    }

    #[test]
    fn unknown_flows_are_not_caught_up() {
        let mut book = FlowBook::default();
        assert!(matches!(
            book.catch_up(&key(1), t(5), "t".into()),
            CatchUp::Nothing
        ));
        assert!(!book.knows(&key(1)));
    }

    #[test]
    fn old_flows_keep_their_counts_and_sketch_but_not_their_record() {
        let mut book = FlowBook::default();
        let first = key(1);
        let mut r = sample();
        r.out_ifname = "eth9".into();
        book.reported(first, t(3), &r);
        for port in 2..=(MAX_TEMPLATES as u16 + 1) {
            book.reported(key(port), t(1), &sample());
        }
        assert!(book.templates <= MAX_TEMPLATES, "{}", book.templates);
        // The first flow's record went; a re-read with new packets asks for a rebuild
        // carrying its hook and devices, and nothing is reported twice.
        let CatchUp::Rebuild(sketch) = book.catch_up(&first, t(5), "t".into()) else {
            panic!("the oldest flow's template should be gone")
        };
        let mut rebuilt = sample();
        rebuilt.hook = None;
        rebuilt.out_ifname.clear();
        sketch.apply(&mut rebuilt);
        assert_eq!(rebuilt.hook, r.hook);
        assert_eq!(rebuilt.out_ifname, "eth9");
        assert_eq!(book.unreported(&first, t(5)), t(2));
        book.reported(first, t(5), &rebuilt);
        assert!(matches!(
            book.catch_up(&first, t(5), "t".into()),
            CatchUp::Nothing
        ));
    }

    #[test]
    fn flows_gone_from_the_kernel_are_forgotten_and_count_from_zero_again() {
        let mut book = FlowBook::default();
        book.reported(key(1), t(40), &sample());
        book.reported(key(2), t(5), &sample());
        let live = key(2);
        book.forget_absent(&std::collections::HashSet::from([&live]));
        assert!(!book.knows(&key(1)) && book.knows(&key(2)));
        // Evicted, then dropped again: the kernel's new entry starts from zero.
        assert_eq!(book.unreported(&key(1), t(3)), t(3));
    }

    #[test]
    fn a_full_book_forgets_nothing_by_itself() {
        // Four times a table of 2: full, and every flow still known (only a read of the
        // table may say which are gone).
        let mut book = FlowBook::tracking(2);
        for i in 0..8 {
            book.reported(key(i), t(1), &sample());
        }
        assert!(book.full());
        assert!((0..8).all(|i| book.knows(&key(i))));
        assert_eq!(book.unreported(&key(0), t(1)), t(0));
        let live = key(7);
        book.forget_absent(&std::collections::HashSet::from([&live]));
        assert!(!book.full() && book.knows(&key(7)));
    }

    #[test]
    fn active_flows_are_the_recent_ones() {
        let mut book = FlowBook::default();
        book.reported(key(1), t(1), &sample());
        assert_eq!(book.active(Duration::from_secs(10)), vec![key(1)]);
    }
}
