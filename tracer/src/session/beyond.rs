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

use std::collections::HashMap;

use tracer_common::{AggCount, AggKey};

use crate::{
    attribution::{beyond::Counted, packet::rule_ct_state},
    kernel::{
        drop::CtState,
        filter::proto_name,
        stack::{Engine, Hook},
    },
    record::DropRecord,
};

/// Lines a capture that counts beyond the flow table makes per second, at most: the rest
/// of a burst is left to the aggregates, so a scan costs bounded memory and CPU (a line in
/// flight is a few KB with its rule candidates; 131,072 of them at once took 1 GB).
pub const LINES_PER_TICK: usize = 2_048;
/// Lines made at the end of a capture, at most (the final sweep of the flow table).
pub const LINES_AT_END: usize = 8_192;

/// A drop site's hook and engine, as its records' stacks name them.
type Site = (Option<Hook>, Option<Engine>);

/// What the drop site a stack digest stands for is: learnt from records whose stack the
/// site was taken from.
#[derive(Debug, Default)]
pub struct SiteBook {
    /// `None`: records of the site named different hooks (a digest collision).
    sites: HashMap<u32, Option<Site>>,
}

impl SiteBook {
    pub fn learn(&mut self, site: u32, hook: Option<Hook>, engine: Option<Engine>) {
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
    pub fn of(&self, site: u32) -> (Option<Hook>, Option<Engine>) {
        self.sites
            .get(&site)
            .copied()
            .flatten()
            .unwrap_or((None, None))
    }
}

/// Drops reported on lines, per aggregate.
#[derive(Debug, Default)]
pub struct LineBook {
    lines: HashMap<AggKey, u64>,
}

impl LineBook {
    pub fn credit(&mut self, r: &DropRecord) {
        if let Some(k) = r.aggregate {
            *self.lines.entry(k).or_default() += r.count;
        }
    }

    /// What each aggregate counted beyond its lines. A line's aggregate that the kernel
    /// does not have was counted in its coarse key (the table had no room for it).
    pub fn beyond(&self, aggregates: &HashMap<AggKey, AggCount>) -> Vec<(AggKey, u64)> {
        let mut lines: HashMap<AggKey, u64> = HashMap::new();
        for (k, n) in &self.lines {
            let at = if aggregates.contains_key(k) {
                *k
            } else {
                k.coarse()
            };
            *lines.entry(at).or_default() += n;
        }
        let mut out: Vec<(AggKey, u64)> = aggregates
            .iter()
            .filter_map(|(k, c)| {
                let n = c.packets.saturating_sub(lines.get(k).copied().unwrap_or(0));
                (n > 0).then_some((*k, n))
            })
            .collect();
        out.sort_unstable();
        out
    }
}

/// What an aggregate key says of its drops, for the rule engine.
pub fn counted(k: &AggKey, sites: &SiteBook) -> Counted {
    let (hook, engine) = sites.of(k.site);
    let icmp = matches!(k.proto, 1 | 58);
    let coarse = k.other != 0;
    Counted {
        hook,
        engine,
        family: if k.family == tracer_common::AF_INET6 {
            ruleset::Family::Ipv6
        } else {
            ruleset::Family::Ipv4
        },
        proto: k.proto,
        dport: (!coarse && tracer_common::has_ports(k.proto)).then_some(k.dport),
        icmp: (!coarse && icmp).then_some(((k.dport >> 8) as u8, k.dport as u8)),
        tcp_flags: (!coarse && k.proto == 6).then_some(k.tcp_flags),
        // As for lines (a drop without conntrack entry is what `--ctstate INVALID` matches).
        ct_state: (!coarse).then(|| rule_ct_state(CtState::of(k.ct_info))),
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
        assert_eq!(
            lines.beyond(&aggs),
            vec![(key(53).coarse(), 5), (key(53), 7), (key(80), 4)]
        );
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
