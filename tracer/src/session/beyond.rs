//! Drops beyond the flow table: what the kernel's aggregates counted that no line reported.
//!
//! The flow table (LRU) holds 131,072 flows; a port scan sends more, and evicted flows take
//! counts no record carried. The kernel also counts every drop in an aggregate keyed by
//! where it was dropped and by the fields rules decide on that are not per flow
//! (`tracer_common::AggKey`). Lines carry the aggregate their drops were counted in, so at
//! the end of a capture an aggregate's count minus its lines' is what per-flow detail gave
//! up: reported by rule (evaluated from the aggregate's fields, see
//! [`crate::attribution::beyond`]), hook and port, without addresses or processes. Totals
//! then equal the kernel's count whatever the number of flows.
//!
//! Only at the end: during a capture some of an aggregate's drops are still on their way
//! to a line (a flow's next record), and reporting them twice would break the sums.
//!
//! `serve` has no end: it reports them as it goes ([`LiveBook`]). A line it cannot make
//! within the second's budget is given up (its flow's count is taken as reported), so no
//! line can later bring drops an aggregate already gave; then, after the records waiting
//! in the ring buffer and the whole flow table were read, whatever an aggregate counted
//! (read first) beyond its lines is beyond for good. The kernel counts a drop in its flow
//! before its aggregate (and writes the record a few instructions later), so every drop
//! in that read is in a flow or a record read after it; a drop counted after the aggregates were read
//! can only make the estimate smaller, never count twice. (Records left to the next tick
//! were seen to: a scan evicted their flows meanwhile, and their lines reported drops an
//! aggregate had already given.)

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use tracer_common::{
    AggCount, AggKey,
    netfilter::{CtInfo, Family, icmp_of_port, ipproto},
};

use crate::{
    attribution::beyond::Counted,
    kernel::{
        drop::Tally,
        filter::proto_name,
        stack::{DropEngine, Hook},
    },
    record::{DropRecord, rule::Attribution},
};

/// Lines a capture that counts beyond the flow table makes per second, at most: the rest
/// of a burst is left to the aggregates, so a scan costs bounded memory and CPU (a line in
/// flight is a few KB with its rule candidates; 131,072 of them at once took 1 GB).
pub const LINES_PER_TICK: usize = 2_048;
/// Lines made at the end of a capture, at most (the final sweep of the flow table).
pub const LINES_AT_END: usize = 8_192;
/// Aggregate keys the lines are credited to, at most, before the aggregates are read to
/// compact them ([`LineBook::compact`]): half as many again as the kernel can hold, so a
/// busy node reads them now and then rather than on every tick.
pub const LINE_KEYS_KEPT: usize = tracer_common::MAX_AGGREGATES as usize * 3 / 2;

/// A drop site's hook and engine, as its records' stacks name them.
type Site = (Option<Hook>, Option<DropEngine>);

/// What the drop site a stack digest stands for is: learnt from records whose stack the
/// site was taken from.
#[derive(Debug, Default)]
pub struct SiteBook {
    /// `None`: records of the site named different hooks (a digest collision).
    sites: HashMap<u32, Option<Site>>,
}

impl SiteBook {
    pub fn learn(&mut self, site: u32, hook: Option<Hook>, engine: Option<DropEngine>) {
        if hook.is_none() {
            return;
        }
        let seen = (hook, engine);
        match self.sites.get_mut(&site) {
            None => {
                self.sites.insert(site, Some(seen));
            }
            Some(known) => {
                if known.is_some_and(|k| k != seen) {
                    *known = None;
                }
            }
        }
    }

    /// The hook and engine of `site`, when every record of it agreed.
    pub fn of(&self, site: u32) -> (Option<Hook>, Option<DropEngine>) {
        self.sites
            .get(&site)
            .copied()
            .flatten()
            .unwrap_or((None, None))
    }
}

/// Drops reported on lines, per aggregate: credited when a line is made, not when it is
/// printed, so lines still waiting for their rule are not taken for drops beyond.
#[derive(Debug, Default)]
pub struct LineBook {
    lines: HashMap<AggKey, Tally>,
    /// Keys of lines that the last read of the aggregates did not have (see
    /// [`LineBook::compact`]).
    absent: HashSet<AggKey>,
    total: u64,
}

impl LineBook {
    pub fn credit(&mut self, r: &DropRecord) {
        if let Some(k) = r.aggregate {
            let t = self.lines.entry(k).or_default();
            t.packets += r.count;
            t.bytes += r.bytes;
            self.total += r.count;
        }
    }

    /// Drops credited to lines so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether the lines' keys are more than [`LINE_KEYS_KEPT`]: time to read the
    /// aggregates and [`LineBook::compact`].
    pub fn crowded(&self) -> bool {
        self.lines.len() > LINE_KEYS_KEPT
    }

    /// Moves the lines of keys the kernel did not have in this read of its aggregates nor
    /// in the one before to their coarse key, where the kernel counted their drops (its
    /// table had no room for the key). One read is not enough: the aggregates are read
    /// before the flow table, so a line made from the sweep that follows may be of a key
    /// the kernel added in between, in the next read; moved for good, its drops would be
    /// reported again from its own key (serve's series then ran ahead of the rule's
    /// counter). What remains is about one entry per aggregate the kernel holds
    /// ([`tracer_common::MAX_AGGREGATES`]) and the keys of the last read's lines: without
    /// this, every flow a scan sends adds a key here for as long as its namespace lives.
    /// The table is rebuilt at its new size, so a scan's peak is not kept either.
    pub fn compact(&mut self, aggregates: &HashMap<AggKey, AggCount>) {
        let mut kept: HashMap<AggKey, Tally> =
            HashMap::with_capacity(self.lines.len().min(aggregates.len()));
        let mut absent = HashSet::new();
        for (k, n) in self.lines.drain() {
            let at = if aggregates.contains_key(&k) {
                k
            } else if self.absent.contains(&k) {
                k.coarse()
            } else {
                absent.insert(k);
                k
            };
            let t = kept.entry(at).or_default();
            t.packets += n.packets;
            t.bytes += n.bytes;
        }
        self.lines = kept;
        self.absent = absent;
    }

    /// What each aggregate counted beyond its lines (and beyond `given`, what was
    /// reported beyond before). A line's aggregate that the kernel does not have (yet) is
    /// counted against its coarse key for this read: an estimate from above, a drop
    /// counted after the read only makes it smaller.
    pub fn beyond(
        &mut self,
        aggregates: &HashMap<AggKey, AggCount>,
        given: &HashMap<AggKey, Tally>,
    ) -> Vec<(AggKey, Tally)> {
        self.compact(aggregates);
        let mut in_coarse: HashMap<AggKey, Tally> = HashMap::new();
        for k in &self.absent {
            if let Some(n) = self.lines.get(k) {
                let t = in_coarse.entry(k.coarse()).or_default();
                t.packets += n.packets;
                t.bytes += n.bytes;
            }
        }
        let lines = &self.lines;
        let mut out: Vec<(AggKey, Tally)> = aggregates
            .iter()
            .filter_map(|(k, c)| {
                let mut reported = lines.get(k).copied().unwrap_or_default();
                for more in [given.get(k), in_coarse.get(k)].into_iter().flatten() {
                    reported.packets += more.packets;
                    reported.bytes += more.bytes;
                }
                let counted = Tally {
                    packets: c.packets,
                    bytes: c.bytes,
                };
                let n = counted.since(reported);
                (n.packets > 0).then_some((*k, n))
            })
            .collect();
        out.sort_unstable_by_key(|(k, _)| *k);
        out
    }

    /// Forgets the aggregates of namespaces `gone` names (a capture of weeks).
    pub fn forget(&mut self, gone: &impl Fn(u32) -> bool) {
        self.lines.retain(|k, _| !gone(k.netns));
        self.absent.retain(|k| !gone(k.netns));
    }
}

/// Drops counted only in an aggregate, with the rule named from its fields.
#[derive(Debug, Clone)]
pub struct BeyondCount {
    pub netns: u32,
    pub count: u64,
    pub bytes: u64,
    pub hook: Option<Hook>,
    pub rule: Attribution,
    /// What the aggregate knows of the destination: `*:5353`.
    pub dst: String,
    pub proto: String,
    pub port: Option<u16>,
}

/// How often, at most, `serve` reads the aggregates and the whole flow table to report
/// drops beyond it: a full read of a busy table costs a few hundred milliseconds of CPU.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(3);

/// How long `serve` says it is degraded after per-flow detail was last given up.
pub const DEGRADED_FOR: Duration = Duration::from_secs(60);

/// `serve`'s running account of drops reported beyond the flow table (see the module doc).
#[derive(Debug, Default)]
pub struct LiveBook {
    /// What each aggregate gave so far.
    given: HashMap<AggKey, Tally>,
    total: u64,
    /// Reported since the front-end last took them.
    fresh: Vec<BeyondCount>,
    last_reconcile: Option<Instant>,
    /// Lines given up (their flows' drops left to the aggregates), and when last.
    lines_given_up: u64,
    last_given_up: Option<Instant>,
}

impl LiveBook {
    /// Whether the aggregates are to be read now: `needed` (the lines left drops
    /// unreported, or their keys are to be compacted), and not read within
    /// [`RECONCILE_EVERY`].
    pub fn due(&self, needed: bool) -> bool {
        needed
            && self
                .last_reconcile
                .is_none_or(|t| t.elapsed() >= RECONCILE_EVERY)
    }

    pub fn gave_up_line(&mut self) {
        self.lines_given_up += 1;
        self.last_given_up = Some(Instant::now());
    }

    /// What `lines` leave of `aggregates` beyond what was given before: to be attributed
    /// and handed to [`LiveBook::report`].
    pub fn unreported(
        &mut self,
        lines: &mut LineBook,
        aggregates: &HashMap<AggKey, AggCount>,
    ) -> Vec<(AggKey, Tally)> {
        self.last_reconcile = Some(Instant::now());
        lines.beyond(aggregates, &self.given)
    }

    pub fn report(&mut self, key: AggKey, n: Tally, count: BeyondCount) {
        let g = self.given.entry(key).or_default();
        g.packets += n.packets;
        g.bytes += n.bytes;
        self.total += n.packets;
        self.fresh.push(count);
    }

    /// Drops reported beyond the flow table so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn take(&mut self) -> Vec<BeyondCount> {
        std::mem::take(&mut self.fresh)
    }

    /// Lines given up so far, and whether one was within [`DEGRADED_FOR`].
    pub fn lines_given_up(&self) -> (u64, bool) {
        (
            self.lines_given_up,
            self.last_given_up
                .is_some_and(|t| t.elapsed() < DEGRADED_FOR),
        )
    }

    /// Forgets the aggregates of namespaces `gone` names.
    pub fn forget(&mut self, gone: &impl Fn(u32) -> bool) {
        self.given.retain(|k, _| !gone(k.netns));
    }
}

/// What an aggregate key says of its drops, for the rule engine.
pub fn counted(k: &AggKey, sites: &SiteBook) -> Counted {
    let (hook, engine) = sites.of(k.site);
    let coarse = k.other != 0;
    Counted {
        hook,
        engine,
        family: Family::of_af(k.family),
        proto: k.proto,
        dport: (!coarse && ipproto::has_ports(k.proto)).then_some(k.dport),
        icmp: (!coarse && ipproto::is_icmp(k.proto)).then_some(icmp_of_port(k.dport)),
        tcp_flags: (!coarse && k.proto == ipproto::TCP).then_some(k.tcp_flags),
        ct_state: (!coarse).then(|| CtInfo(k.ct_info).rule_state()),
    }
}

/// The destination an aggregate's drops are summed under: any address, its port.
pub fn destination(k: &AggKey) -> (String, String) {
    let port = if k.other != 0 || !tracer_common::has_ports(k.proto) {
        "*".to_string()
    } else {
        k.dport.to_string()
    };
    let any = if k.family == tracer_common::AF_INET6 {
        "[*]"
    } else {
        "*"
    };
    (format!("{any}:{port}"), proto_name(k.proto))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    fn key(dport: u16) -> AggKey {
        AggKey {
            netns: 1,
            reason: 12,
            location: 0,
            site: 5,
            dport,
            family: tracer_common::AF_INET,
            proto: 17,
            tcp_flags: 0,
            ct_info: 2,
            other: 0,
            _pad: 0,
            _pad2: 0,
        }
    }

    fn count(packets: u64) -> AggCount {
        AggCount { packets, bytes: 0 }
    }

    #[test]
    fn what_lines_did_not_report_is_beyond() {
        let mut lines = LineBook::default();
        let mut r = sample();
        r.aggregate = Some(key(53));
        r.count = 3;
        lines.credit(&r);
        // A line whose own key did not fit: the kernel counted it in the coarse key.
        r.aggregate = Some(key(54));
        r.count = 2;
        lines.credit(&r);
        let aggs = HashMap::from([
            (key(53), count(10)),
            (key(53).coarse(), count(7)),
            (key(80), count(4)),
        ]);
        let packets = |v: Vec<(AggKey, Tally)>| -> Vec<(AggKey, u64)> {
            v.into_iter().map(|(k, t)| (k, t.packets)).collect()
        };
        assert_eq!(
            packets(lines.beyond(&aggs, &HashMap::new())),
            vec![(key(53).coarse(), 5), (key(53), 7), (key(80), 4)]
        );
        assert_eq!(lines.total(), 5);
        // What was given before is not given again.
        let given = HashMap::from([(
            key(53),
            Tally {
                packets: 7,
                bytes: 0,
            },
        )]);
        assert_eq!(
            packets(lines.beyond(&aggs, &given)),
            vec![(key(53).coarse(), 5), (key(80), 4)]
        );
    }

    /// A scan's lines, each to its own port, end in the coarse key the kernel counted
    /// them in: the book keeps one entry per aggregate the kernel has, not one per flow.
    #[test]
    fn compacted_lines_keep_one_key_per_kernel_aggregate_and_their_sums() {
        let mut lines = LineBook::default();
        let mut r = sample();
        r.count = 1;
        for n in 1..=LINE_KEYS_KEPT + 1 {
            // More keys than ports: the flags tell them apart too (and are not coarse).
            let mut k = key(n as u16);
            k.tcp_flags = (n >> 16) as u8;
            r.aggregate = Some(k);
            lines.credit(&r);
        }
        assert!(lines.crowded());
        let aggs = HashMap::from([(key(53), count(1)), (key(53).coarse(), count(70_000))]);
        let before = lines.beyond(&aggs, &HashMap::new());
        lines.compact(&aggs);
        assert!(!lines.crowded());
        assert_eq!(lines.lines.len(), 2);
        assert!(lines.lines.capacity() < 16, "the scan's table is not kept");
        assert_eq!(lines.beyond(&aggs, &HashMap::new()), before);
        assert_eq!(lines.total(), LINE_KEYS_KEPT as u64 + 1);
    }

    /// What `serve` does at each read: report what the lines leave of the aggregates.
    fn give(live: &mut LiveBook, lines: &mut LineBook, aggs: &HashMap<AggKey, AggCount>) {
        for (k, n) in live.unreported(lines, aggs) {
            let c = BeyondCount {
                netns: k.netns,
                count: n.packets,
                bytes: n.bytes,
                hook: None,
                rule: Attribution::none("test"),
                dst: "*:53".into(),
                proto: "udp".into(),
                port: Some(53),
            };
            live.report(k, n, c);
        }
    }

    /// The aggregates are read before the flow table: a line from the sweep that follows
    /// may be of a key the kernel added in between. Its drops stay the line's when the
    /// next read has the key (moved to the coarse key for good, they were reported again:
    /// serve's series ran ahead of the rule's counter in a scan); a key the kernel never
    /// had (counted in its coarse key) goes there after two reads.
    #[test]
    fn a_key_the_kernel_adds_after_the_read_is_reported_once() {
        let mut lines = LineBook::default();
        let mut live = LiveBook::default();
        let mut aggs = HashMap::new();
        let mut r = sample();
        r.aggregate = Some(key(80));
        r.count = 5;
        lines.credit(&r);
        give(&mut live, &mut lines, &aggs);
        aggs.insert(key(80), count(5));
        give(&mut live, &mut lines, &aggs);
        give(&mut live, &mut lines, &aggs);
        assert_eq!(live.total(), 0, "{:?}", live.take());
        r.aggregate = Some(key(81));
        r.count = 3;
        lines.credit(&r);
        aggs.insert(key(81).coarse(), count(3));
        give(&mut live, &mut lines, &aggs);
        assert!(lines.lines.contains_key(&key(81)), "one read is not enough");
        give(&mut live, &mut lines, &aggs);
        assert!(!lines.lines.contains_key(&key(81)));
        assert_eq!(lines.lines[&key(81).coarse()].packets, 3);
        assert_eq!(live.total(), 0, "{:?}", live.take());
        assert_eq!(lines.total(), 8);
    }

    #[test]
    fn live_reports_give_each_drop_once() {
        let mut lines = LineBook::default();
        let mut live = LiveBook::default();
        assert!(live.due(true) && !live.due(false));
        let mut aggs = HashMap::from([(key(53), count(10))]);
        let mut r = sample();
        r.aggregate = Some(key(53));
        r.count = 4;
        lines.credit(&r);
        give(&mut live, &mut lines, &aggs);
        assert_eq!(live.total(), 6);
        assert!(!live.due(true), "read again only after RECONCILE_EVERY");
        // The kernel counted 5 more, of which a line reported 2.
        aggs.insert(key(53), count(15));
        r.count = 2;
        lines.credit(&r);
        give(&mut live, &mut lines, &aggs);
        assert_eq!(live.total() + lines.total(), 15);
        assert_eq!(live.take().iter().map(|c| c.count).sum::<u64>(), 9);
        assert!(live.take().is_empty());
        live.forget(&|ns| ns == 1);
        lines.forget(&|ns| ns == 1);
        assert!(live.given.is_empty() && lines.lines.is_empty());
    }

    #[test]
    fn a_site_whose_records_disagree_has_no_hook() {
        let mut sites = SiteBook::default();
        sites.learn(9, Some(Hook::Output), None);
        assert_eq!(sites.of(9).0, Some(Hook::Output));
        sites.learn(9, Some(Hook::Output), None);
        assert_eq!(sites.of(9).0, Some(Hook::Output));
        sites.learn(9, Some(Hook::Input), None);
        assert_eq!(sites.of(9), (None, None));
        assert_eq!(sites.of(10), (None, None));
    }

    #[test]
    fn an_aggregate_is_a_packet_with_what_the_kernel_counted() {
        let mut sites = SiteBook::default();
        sites.learn(5, Some(Hook::Output), None);
        let c = counted(&key(5353), &sites);
        assert_eq!(
            (c.hook, c.proto, c.dport, c.ct_state),
            (
                Some(Hook::Output),
                17,
                Some(5353),
                Some(ruleset::CtState::New)
            )
        );
        let coarse = counted(&key(5353).coarse(), &sites);
        assert_eq!((coarse.dport, coarse.ct_state), (None, None));
        assert_eq!(destination(&key(5353)), ("*:5353".into(), "udp".into()));
        assert_eq!(
            destination(&key(5353).coarse()),
            ("*:*".into(), "udp".into())
        );
    }
}
