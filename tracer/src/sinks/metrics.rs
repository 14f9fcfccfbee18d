//! Drops as Prometheus metrics, for `droptrace serve`.
//!
//! Counters by rule, labelled with the rule's identity and how sure droptrace is of it
//! (`attribution`, as in `watch`): their number follows the rulesets,
//! not the traffic, so a port scan adds no series. Destinations, which do follow the
//! traffic, are a family of their own capped at `max_destinations` series, the rest
//! counted in one `other` series. Series of namespaces that are gone are removed after a
//! TTL; with process or container labels, series idle for a TTL are too (processes come
//! and go). The exposition is the maintained `prometheus-client` crate's, in the
//! Prometheus text format or OpenMetrics.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{prometheus_text, text as openmetrics_text},
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use crate::{
    enrich::netns::{LiveNamespaces, NsIdentity},
    record::DropRecord,
    session::Health,
};

/// A series' labels, in order; only the labels asked for are present.
type Labels = Vec<(&'static str, String)>;

/// Optional labels of `droptrace_drops_total`, off by default: they follow processes,
/// which come and go, rather than the ruleset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ExtraLabel {
    /// The sending (or, for incoming packets, receiving) process's name.
    Process,
    /// The container or systemd unit of that process.
    Container,
}

/// What the metrics look like: caps, TTL, optional labels.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub max_destinations: usize,
    pub ttl: Duration,
    pub extra: Vec<ExtraLabel>,
    /// For `droptrace_build_info`.
    pub version: String,
    pub capture_mode: String,
}

/// When a series last grew and which namespace it belongs to (the last one: a name
/// deleted and made again is one series).
#[derive(Debug)]
struct SeriesAge {
    netns: NsIdentity,
    last_growth: Instant,
}

pub struct DropMetrics {
    registry: Registry,
    drops: Family<Labels, Counter>,
    /// Same labels as `drops`.
    dropped_bytes: Family<Labels, Counter>,
    destinations: Family<Labels, Counter>,
    matched: Counter,
    records_lost: Counter,
    unreported: Gauge,
    reads: Counter,
    read_problems: Counter,
    series: HashMap<Labels, SeriesAge>,
    destination_series: HashMap<Labels, SeriesAge>,
    /// Namespaces found gone, and since when.
    gone_since: HashMap<NsIdentity, Instant>,
    config: MetricsConfig,
    last_health: Option<Health>,
}

/// The series that holds destinations beyond the cap.
fn other_destination() -> Labels {
    ["netns", "proto", "dst", "port"]
        .into_iter()
        .map(|k| (k, crate::session::summary::OTHER.to_string()))
        .collect()
}

impl DropMetrics {
    pub fn new(config: MetricsConfig) -> Self {
        let mut registry = Registry::default();
        let drops = Family::<Labels, Counter>::default();
        registry.register(
            "droptrace_drops",
            "Packets dropped by the firewall, by the rule that dropped them",
            drops.clone(),
        );
        let dropped_bytes = Family::<Labels, Counter>::default();
        registry.register(
            "droptrace_dropped_bytes",
            "Bytes of the packets in droptrace_drops (from the network header on, as a rule's \
             byte counter counts them)",
            dropped_bytes.clone(),
        );
        let destinations = Family::<Labels, Counter>::default();
        registry.register(
            "droptrace_destination_drops",
            format!(
                "Dropped packets by destination; beyond {} destinations, counted in dst=\"other\"",
                config.max_destinations
            ),
            destinations.clone(),
        );
        let matched = Counter::default();
        registry.register(
            "droptrace_kernel_matched_drops",
            "Drops the kernel program counted (after the filters): the sum of droptrace_drops \
             when nothing was lost",
            matched.clone(),
        );
        let records_lost = Counter::default();
        registry.register(
            "droptrace_records_lost",
            "Records the kernel could not hand over (ring buffer full); their packets are \
             still counted from the flow table",
            records_lost.clone(),
        );
        let unreported = Gauge::default();
        registry.register(
            "droptrace_unreported_drops",
            "Drops counted by the kernel and reported by no series yet: a second's worth in \
             flight, or more when the flow table overflowed",
            unreported.clone(),
        );
        let reads = Counter::default();
        registry.register(
            "droptrace_ruleset_reads",
            "Reads of a namespace's rulesets (iptables, ip6tables, nft, ipset)",
            reads.clone(),
        );
        let read_problems = Counter::default();
        registry.register(
            "droptrace_ruleset_read_failures",
            "Ruleset reads that left a source unread or unparsed (drops then lack rule names)",
            read_problems.clone(),
        );
        registry.register(
            "droptrace_build",
            "The droptrace version and how it captures drops",
            Info::new(vec![
                ("version", config.version.clone()),
                ("capture", config.capture_mode.clone()),
            ]),
        );
        DropMetrics {
            registry,
            drops,
            dropped_bytes,
            destinations,
            matched,
            records_lost,
            unreported,
            reads,
            read_problems,
            series: HashMap::new(),
            destination_series: HashMap::new(),
            gone_since: HashMap::new(),
            config,
            last_health: None,
        }
    }

    /// Counts a drop line.
    pub fn observe(&mut self, r: &DropRecord, now: Instant) {
        let labels = self.rule_labels(r);
        self.drops.get_or_create(&labels).inc_by(r.count);
        self.dropped_bytes.get_or_create(&labels).inc_by(r.bytes);
        touch(&mut self.series, labels, identity(r), now);

        let mut dest: Labels = vec![
            ("netns", netns_label(r)),
            ("proto", r.proto.clone()),
            ("dst", r.dst.to_string()),
            ("port", r.dport.map(|p| p.to_string()).unwrap_or_default()),
        ];
        let beyond_cap = !self.destination_series.contains_key(&dest)
            && self.destination_series.len() >= self.config.max_destinations;
        if beyond_cap {
            dest = other_destination();
        }
        self.destinations.get_or_create(&dest).inc_by(r.count);
        if !beyond_cap {
            touch(&mut self.destination_series, dest, identity(r), now);
        }
    }

    fn rule_labels(&self, r: &DropRecord) -> Labels {
        let a = r.rule.as_ref();
        let field = |f: fn(&crate::record::rule::Attribution) -> Option<String>| {
            a.and_then(f).unwrap_or_default()
        };
        let rule = match a {
            Some(a) if a.verdict.as_deref() == Some("policy") => "policy".to_string(),
            Some(a) => a
                .rule_num
                .map(|n| n.to_string())
                .or(a.rule_handle.map(|h| format!("handle {h}")))
                .unwrap_or_default(),
            None => String::new(),
        };
        let owner = a.and_then(|a| a.owner.as_ref());
        let mut labels: Labels = vec![
            ("backend", field(|a| a.backend.clone())),
            ("table_family", field(|a| a.table_family.clone())),
            ("table", field(|a| a.table.clone())),
            ("chain", field(|a| a.chain.clone())),
            ("rule", rule),
            ("verdict", field(|a| a.verdict.clone())),
            ("rule_text", field(|a| a.rule.clone())),
            // How sure: a rule named on `inferred` grounds says so here too.
            (
                "attribution",
                a.map(|a| a.attribution.as_str().to_string())
                    .unwrap_or_default(),
            ),
            (
                "owner",
                owner.map(|o| o.tool.to_string()).unwrap_or_default(),
            ),
            (
                "owner_object",
                owner.and_then(|o| o.object.clone()).unwrap_or_default(),
            ),
            (
                "hook",
                r.hook.map(|h| h.as_str().to_string()).unwrap_or_default(),
            ),
            ("netns", netns_label(r)),
        ];
        for extra in &self.config.extra {
            labels.push(match extra {
                ExtraLabel::Process => ("process", r.comm.clone()),
                ExtraLabel::Container => ("container", r.container.clone().unwrap_or_default()),
            });
        }
        labels
    }

    /// Brings the capture's health counters up to `h` (counters only grow: the deltas).
    pub fn set_health(&mut self, h: &Health) {
        let before = self.last_health.as_ref();
        let grow = |c: &Counter, now: Option<u64>, then: Option<u64>| {
            if let Some(now) = now {
                c.inc_by(now.saturating_sub(then.unwrap_or(0)));
            }
        };
        grow(
            &self.matched,
            h.matched_in_kernel,
            before.and_then(|b| b.matched_in_kernel),
        );
        grow(
            &self.records_lost,
            h.records_lost,
            before.and_then(|b| b.records_lost),
        );
        grow(
            &self.reads,
            Some(h.ruleset_reads),
            before.map(|b| b.ruleset_reads),
        );
        grow(
            &self.read_problems,
            Some(h.ruleset_reads_with_problems),
            before.map(|b| b.ruleset_reads_with_problems),
        );
        if let Some(m) = h.matched_in_kernel {
            let unreported = m.saturating_sub(h.reported + h.filtered_out);
            self.unreported
                .set(i64::try_from(unreported).unwrap_or(i64::MAX));
        }
        self.last_health = Some(h.clone());
    }

    /// Removes the series of namespaces gone for a TTL (and, with process labels, series
    /// idle for a TTL). `live` holds the namespaces that exist now; a namespace whose inode
    /// went to a new namespace is gone (see [`NsIdentity`]).
    pub fn expire(&mut self, live: &LiveNamespaces, now: Instant) {
        let ttl = self.config.ttl;
        self.gone_since.retain(|ns, _| !live.holds(ns));
        for age in self.series.values().chain(self.destination_series.values()) {
            if !live.holds(&age.netns) {
                self.gone_since.entry(age.netns.clone()).or_insert(now);
            }
        }
        let gone_long = |netns: &NsIdentity| {
            self.gone_since
                .get(netns)
                .is_some_and(|t| now.duration_since(*t) >= ttl)
        };
        let idle_expires = !self.config.extra.is_empty();
        let expired = |age: &SeriesAge| {
            gone_long(&age.netns) || (idle_expires && now.duration_since(age.last_growth) >= ttl)
        };
        remove_where(
            &[&self.drops, &self.dropped_bytes],
            &mut self.series,
            expired,
        );
        remove_where(&[&self.destinations], &mut self.destination_series, |a| {
            gone_long(&a.netns)
        });
        let referenced: HashSet<&NsIdentity> = self
            .series
            .values()
            .chain(self.destination_series.values())
            .map(|a| &a.netns)
            .collect();
        self.gone_since.retain(|ns, _| referenced.contains(ns));
    }

    /// The exposition: OpenMetrics when `openmetrics`, else the Prometheus text format.
    pub fn encode(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        if openmetrics {
            openmetrics_text::encode(&mut out, &self.registry)?;
        } else {
            prometheus_text::encode(&mut out, &self.registry)?;
        }
        Ok(out)
    }

    /// Series of `droptrace_drops_total` and of destinations (without `other`).
    pub fn series_count(&self) -> (usize, usize) {
        (self.series.len(), self.destination_series.len())
    }
}

/// Removes from `families` (and from `ages`) the series whose age says so.
fn remove_where(
    families: &[&Family<Labels, Counter>],
    ages: &mut HashMap<Labels, SeriesAge>,
    expired: impl Fn(&SeriesAge) -> bool,
) {
    ages.retain(|labels, age| {
        let keep = !expired(age);
        if !keep {
            for family in families {
                family.remove(labels);
            }
        }
        keep
    });
}

fn touch(map: &mut HashMap<Labels, SeriesAge>, labels: Labels, netns: NsIdentity, now: Instant) {
    match map.get_mut(&labels) {
        Some(age) => {
            age.last_growth = now;
            age.netns = netns;
        }
        None => {
            map.insert(
                labels,
                SeriesAge {
                    netns,
                    last_growth: now,
                },
            );
        }
    }
}

fn identity(r: &DropRecord) -> NsIdentity {
    NsIdentity {
        inode: r.netns,
        name: r.netns_name.clone(),
    }
}

/// The namespace's name, or its inode when it has none.
fn netns_label(r: &DropRecord) -> String {
    r.netns_name.clone().unwrap_or_else(|| r.netns.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    fn config(max_destinations: usize) -> MetricsConfig {
        MetricsConfig {
            max_destinations,
            ttl: Duration::from_secs(60),
            extra: vec![],
            version: "0.1.0".into(),
            capture_mode: "tp_btf/kfree_skb".into(),
        }
    }

    /// The incident's drop, named: filter/OUTPUT rule 4, exact, 37 packets.
    fn attributed() -> DropRecord {
        let mut r = sample();
        r.rule = Some(crate::attribution::tests::brief_rule());
        r.count = 37;
        r.bytes = 37 * 60;
        r
    }

    #[test]
    fn a_drop_is_counted_under_its_rule() {
        let mut m = DropMetrics::new(config(10));
        m.observe(&attributed(), Instant::now());
        let text = m.encode(false).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("droptrace_drops_total{"))
            .unwrap();
        assert!(line.contains(r#"chain="OUTPUT""#), "{line}");
        assert!(line.contains(r#"rule="4""#), "{line}");
        assert!(
            line.contains(r#"rule_text="-A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP""#),
            "{line}"
        );
        assert!(line.contains(r#"hook="OUTPUT""#), "{line}");
        assert!(line.contains(r#"attribution="exact""#), "{line}");
        assert!(line.contains(r#"netns="client""#), "{line}");
        assert!(
            !line.contains("process="),
            "no process label unless asked: {line}"
        );
        assert!(line.ends_with(" 37"), "{line}");
        assert!(
            text.contains("# TYPE droptrace_drops_total counter"),
            "{text}"
        );
        assert!(text.contains(r#"droptrace_destination_drops_total{netns="client",proto="tcp",dst="203.0.113.10",port="8443"} 37"#), "{text}");
        assert!(text.contains("droptrace_build_info{"), "{text}");
        let bytes = text
            .lines()
            .find(|l| l.starts_with("droptrace_dropped_bytes_total{"))
            .unwrap();
        assert_eq!(
            bytes
                .rsplit_once(' ')
                .unwrap()
                .0
                .replace("dropped_bytes", "drops"),
            line.rsplit_once(' ').unwrap().0,
            "the bytes carry the drops' labels"
        );
        assert!(bytes.ends_with(" 2220"), "{bytes}");
        let om = m.encode(true).unwrap();
        assert!(om.ends_with("# EOF\n"), "{om}");
    }

    #[test]
    fn destinations_beyond_the_cap_go_to_other() {
        let mut m = DropMetrics::new(config(3));
        let mut r = attributed();
        r.count = 1;
        for port in 1..=10 {
            r.dport = Some(port);
            m.observe(&r, Instant::now());
        }
        assert_eq!(m.series_count(), (1, 3));
        let text = m.encode(false).unwrap();
        let dests: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("droptrace_destination_drops_total{"))
            .collect();
        assert_eq!(dests.len(), 4, "{text}");
        assert!(text.contains(r#"dst="other",port="other"} 7"#), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut m = DropMetrics::new(config(3));
        let mut r = attributed();
        r.rule.as_mut().unwrap().rule = Some("-m comment --comment \"a\\b\nc\"".into());
        m.observe(&r, Instant::now());
        let text = m.encode(false).unwrap();
        assert!(
            text.contains(r#"rule_text="-m comment --comment \"a\\b\nc\"""#),
            "{text}"
        );
    }

    #[test]
    fn process_labels_only_when_asked() {
        let mut c = config(3);
        c.extra = vec![ExtraLabel::Process, ExtraLabel::Container];
        let mut m = DropMetrics::new(c);
        m.observe(&attributed(), Instant::now());
        let text = m.encode(false).unwrap();
        assert!(
            text.contains(r#"process="java",container="payments.service"} 37"#),
            "{text}"
        );
    }

    #[test]
    fn series_of_gone_namespaces_expire_after_the_ttl() {
        let mut m = DropMetrics::new(config(3));
        let t0 = Instant::now();
        let r = attributed();
        m.observe(&r, t0);
        let none = LiveNamespaces::default();
        m.expire(&none, t0);
        assert_eq!(m.series_count(), (1, 1), "gone, but not for a TTL yet");
        m.expire(&none, t0 + Duration::from_secs(61));
        assert_eq!(m.series_count(), (0, 0));
        assert!(!m.encode(false).unwrap().contains("droptrace_drops_total{"));
        // A namespace that lives keeps its series however idle.
        m.observe(&r, t0);
        let live = LiveNamespaces::from_names(&[(r.netns, r.netns_name.as_deref())]);
        m.expire(&live, t0 + Duration::from_secs(3600));
        assert_eq!(m.series_count(), (1, 1));
    }

    #[test]
    fn series_of_a_namespace_whose_inode_was_reused_expire() {
        let mut m = DropMetrics::new(config(3));
        let t0 = Instant::now();
        let r = attributed();
        m.observe(&r, t0);
        // The namespace was deleted and the kernel gave its inode to "next".
        let live = LiveNamespaces::from_names(&[(r.netns, Some("next"))]);
        m.expire(&live, t0);
        m.expire(&live, t0 + Duration::from_secs(61));
        assert_eq!(m.series_count(), (0, 0));
    }

    #[test]
    fn health_counters_only_grow() {
        let mut m = DropMetrics::new(config(3));
        let mut h = Health {
            matched_in_kernel: Some(10),
            records_lost: Some(2),
            error: None,
            reported: 7,
            filtered_out: 0,
            ruleset_reads: 5,
            ruleset_reads_with_problems: 1,
        };
        m.set_health(&h);
        h.matched_in_kernel = Some(12);
        h.reported = 12;
        h.ruleset_reads = 6;
        m.set_health(&h);
        let text = m.encode(false).unwrap();
        assert!(
            text.contains("droptrace_kernel_matched_drops_total 12"),
            "{text}"
        );
        assert!(text.contains("droptrace_records_lost_total 2"), "{text}");
        assert!(text.contains("droptrace_ruleset_reads_total 6"), "{text}");
        assert!(
            text.contains("droptrace_ruleset_read_failures_total 1"),
            "{text}"
        );
        assert!(text.contains("droptrace_unreported_drops 0"), "{text}");
    }
}
