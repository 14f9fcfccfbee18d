//! Drops as Prometheus metrics, for `droptrace serve`.
//!
//! Counters by rule, labelled with the rule's identity and how sure droptrace is of it
//! (`attribution`, as in `watch`): their number follows the rulesets, not the traffic, so
//! a port scan adds no series. Drops beyond the kernel's flow table come from its
//! aggregates ([`DropMetrics::observe_beyond`]), so every rule's series adds up to its
//! counter whatever the number of flows; what they lack is per-flow detail (address,
//! process), never drops.
//!
//! What follows the traffic is capped, the rest counted in one `other` series each:
//! destinations (`max_destinations`), destination ports (`max_ports`), and the series of
//! `droptrace_drops_total` (`max_series`: with process or container labels, a new one
//! past nine tenths of the cap loses those; past the cap, all its labels). Series of namespaces that are gone are
//! removed after a TTL; with process or container labels, series idle for a TTL are too
//! (processes come and go). The exposition is the maintained `prometheus-client` crate's,
//! in the Prometheus text format or OpenMetrics.

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
    kernel::stack::Hook,
    record::{DropRecord, rule::Attribution},
    session::{Health, beyond::BeyondCount, summary::OTHER},
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
    /// Destination-port series kept at most.
    pub max_ports: usize,
    /// Series of `droptrace_drops_total` kept at most.
    pub max_series: usize,
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

/// A family's series with their ages, under a cap: further series go to one overflow.
struct Capped {
    family: Family<Labels, Counter>,
    ages: HashMap<Labels, SeriesAge>,
    cap: usize,
}

impl Capped {
    fn new(cap: usize) -> Self {
        Capped {
            family: Family::default(),
            ages: HashMap::new(),
            cap,
        }
    }

    fn has_room_for(&self, labels: &Labels) -> bool {
        self.ages.contains_key(labels) || self.ages.len() < self.cap
    }

    /// Room for a new series that names a process: up to nine tenths of the cap, the
    /// rest kept for the series that no longer do (`process="other"`).
    fn has_room_for_process(&self, labels: &Labels) -> bool {
        self.ages.contains_key(labels) || self.ages.len() < self.cap - self.cap / 10
    }

    /// Adds `n` to `labels`' series, or to the overflow series (every label `other`,
    /// not counted against the cap) when the cap is reached.
    fn add(&mut self, labels: Labels, n: u64, netns: NsIdentity, now: Instant) {
        if self.has_room_for(&labels) {
            self.family.get_or_create(&labels).inc_by(n);
            touch(&mut self.ages, labels, netns, now);
        } else {
            self.family.get_or_create(&overflow(&labels)).inc_by(n);
        }
    }
}

/// The series that counts what a cap left out: the same label names, every value `other`.
fn overflow(labels: &Labels) -> Labels {
    labels
        .iter()
        .map(|(k, _)| (*k, OTHER.to_string()))
        .collect()
}

pub struct DropMetrics {
    registry: Registry,
    drops: Capped,
    /// Same labels as `drops`.
    dropped_bytes: Family<Labels, Counter>,
    destinations: Capped,
    ports: Capped,
    matched: Counter,
    records_lost: Counter,
    unreported: Gauge,
    beyond_flow_table: Counter,
    lines_given_up: Counter,
    reads: Counter,
    read_problems: Counter,
    /// Namespaces found gone, and since when.
    gone_since: HashMap<NsIdentity, Instant>,
    config: MetricsConfig,
    last_health: Option<Health>,
}

/// What one count of drops says, from a line or from an aggregate.
struct Observed<'a> {
    rule: Option<&'a Attribution>,
    hook: Option<Hook>,
    netns: NsIdentity,
    proto: &'a str,
    dst: String,
    port: Option<u16>,
    process: Option<&'a str>,
    container: Option<&'a str>,
    count: u64,
    bytes: u64,
}

impl DropMetrics {
    pub fn new(config: MetricsConfig) -> Self {
        let mut registry = Registry::default();
        let drops = Capped::new(config.max_series);
        registry.register(
            "droptrace_drops",
            format!(
                "Packets dropped by the firewall, by the rule that dropped them; beyond {} \
                 series, counted in one series whose labels are all \"other\"",
                config.max_series
            ),
            drops.family.clone(),
        );
        let dropped_bytes = Family::<Labels, Counter>::default();
        registry.register(
            "droptrace_dropped_bytes",
            "Bytes of the packets in droptrace_drops (from the network header on, as a rule's \
             byte counter counts them)",
            dropped_bytes.clone(),
        );
        let destinations = Capped::new(config.max_destinations);
        registry.register(
            "droptrace_destination_drops",
            format!(
                "Dropped packets by destination (dst=\"*\": drops beyond the flow table, whose \
                 address is not kept); beyond {} destinations, counted in dst=\"other\"",
                config.max_destinations
            ),
            destinations.family.clone(),
        );
        let ports = Capped::new(config.max_ports);
        registry.register(
            "droptrace_port_drops",
            format!(
                "Dropped packets by destination port (ICMP: empty), whatever the address; \
                 beyond {} series, counted in port=\"other\"",
                config.max_ports
            ),
            ports.family.clone(),
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
            "Drops counted by the kernel and reported by no series yet: a few seconds' worth \
             in flight, more when serve falls behind (see /healthz)",
            unreported.clone(),
        );
        let beyond_flow_table = Counter::default();
        registry.register(
            "droptrace_beyond_flow_table_drops",
            "Drops counted in droptrace_drops from the kernel's aggregates, without per-flow \
             detail (more flows at once than the flow table or the lines a second hold)",
            beyond_flow_table.clone(),
        );
        let lines_given_up = Counter::default();
        registry.register(
            "droptrace_lines_given_up",
            "Flows whose drops went to the aggregates instead of a line (no address, process \
             or /drops entry for them)",
            lines_given_up.clone(),
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
            ports,
            matched,
            records_lost,
            unreported,
            beyond_flow_table,
            lines_given_up,
            reads,
            read_problems,
            gone_since: HashMap::new(),
            config,
            last_health: None,
        }
    }

    /// Counts a drop line.
    pub fn observe(&mut self, r: &DropRecord, now: Instant) {
        self.count(
            Observed {
                rule: r.rule.as_ref(),
                hook: r.hook,
                netns: NsIdentity {
                    inode: r.netns,
                    name: r.netns_name.clone(),
                },
                proto: &r.proto,
                dst: r.dst.to_string(),
                port: r.dport,
                process: Some(&r.comm),
                container: r.container.as_deref(),
                count: r.count,
                bytes: r.bytes,
            },
            now,
        );
    }

    /// Counts drops the kernel's aggregates counted beyond the lines: no address, no
    /// process (those labels are empty).
    pub fn observe_beyond(&mut self, b: &BeyondCount, netns_name: Option<String>, now: Instant) {
        self.count(
            Observed {
                rule: Some(&b.rule),
                hook: b.hook,
                netns: NsIdentity {
                    inode: b.netns,
                    name: netns_name,
                },
                proto: &b.proto,
                dst: "*".to_string(),
                port: b.port,
                process: None,
                container: None,
                count: b.count,
                bytes: b.bytes,
            },
            now,
        );
    }

    fn count(&mut self, o: Observed<'_>, now: Instant) {
        let netns = o
            .netns
            .name
            .clone()
            .unwrap_or_else(|| o.netns.inode.to_string());
        let mut labels = rule_labels(o.rule, o.hook, &netns);
        for extra in &self.config.extra {
            labels.push(match extra {
                ExtraLabel::Process => ("process", o.process.unwrap_or_default().to_string()),
                ExtraLabel::Container => ("container", o.container.unwrap_or_default().to_string()),
            });
        }
        // Near the cap, a series first loses what follows processes.
        if !self.config.extra.is_empty() && !self.drops.has_room_for_process(&labels) {
            for (k, v) in &mut labels {
                if matches!(*k, "process" | "container") {
                    *v = OTHER.to_string();
                }
            }
        }
        let labels = if self.drops.has_room_for(&labels) {
            labels
        } else {
            overflow(&labels)
        };
        self.dropped_bytes.get_or_create(&labels).inc_by(o.bytes);
        self.drops.add(labels, o.count, o.netns.clone(), now);

        let port = o.port.map(|p| p.to_string()).unwrap_or_default();
        let dest: Labels = vec![
            ("netns", netns.clone()),
            ("proto", o.proto.to_string()),
            ("dst", o.dst),
            ("port", port.clone()),
        ];
        self.destinations.add(dest, o.count, o.netns.clone(), now);
        let port: Labels = vec![
            ("netns", netns),
            ("proto", o.proto.to_string()),
            ("port", port),
        ];
        self.ports.add(port, o.count, o.netns, now);
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
        grow(
            &self.beyond_flow_table,
            Some(h.beyond_flow_table),
            before.map(|b| b.beyond_flow_table),
        );
        grow(
            &self.lines_given_up,
            Some(h.lines_given_up),
            before.map(|b| b.lines_given_up),
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
        for family in [&self.drops, &self.destinations, &self.ports] {
            for age in family.ages.values() {
                if !live.holds(&age.netns) {
                    self.gone_since.entry(age.netns.clone()).or_insert(now);
                }
            }
        }
        let gone_since = &self.gone_since;
        let gone_long = |netns: &NsIdentity| {
            gone_since
                .get(netns)
                .is_some_and(|t| now.duration_since(*t) >= ttl)
        };
        let idle_expires = !self.config.extra.is_empty();
        let bytes = &self.dropped_bytes;
        remove_where(&mut self.drops, Some(bytes), |age| {
            gone_long(&age.netns) || (idle_expires && now.duration_since(age.last_growth) >= ttl)
        });
        remove_where(&mut self.destinations, None, |a| gone_long(&a.netns));
        remove_where(&mut self.ports, None, |a| gone_long(&a.netns));
        let referenced: HashSet<NsIdentity> = [&self.drops, &self.destinations, &self.ports]
            .iter()
            .flat_map(|f| f.ages.values().map(|a| a.netns.clone()))
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

    /// Series of `droptrace_drops_total`, of destinations and of ports (without the
    /// overflow series).
    pub fn series_count(&self) -> (usize, usize, usize) {
        (
            self.drops.ages.len(),
            self.destinations.ages.len(),
            self.ports.ages.len(),
        )
    }
}

/// The labels that name a rule, with its hook and namespace.
fn rule_labels(a: Option<&Attribution>, hook: Option<Hook>, netns: &str) -> Labels {
    let field = |f: fn(&Attribution) -> Option<String>| a.and_then(f).unwrap_or_default();
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
    vec![
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
        // What dropped it when no rule did (`conntrack_table_full`, ...).
        (
            "cause",
            a.and_then(|a| a.cause.as_ref())
                .map(|c| c.name.to_string())
                .unwrap_or_default(),
        ),
        (
            "hook",
            hook.map(|h| h.as_str().to_string()).unwrap_or_default(),
        ),
        ("netns", netns.to_string()),
    ]
}

/// Removes from `c` (and from `also`) the series whose age says so.
fn remove_where(
    c: &mut Capped,
    also: Option<&Family<Labels, Counter>>,
    expired: impl Fn(&SeriesAge) -> bool,
) {
    let family = &c.family;
    c.ages.retain(|labels, age| {
        let keep = !expired(age);
        if !keep {
            family.remove(labels);
            if let Some(also) = also {
                also.remove(labels);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    fn config(max_destinations: usize) -> MetricsConfig {
        MetricsConfig {
            max_destinations,
            max_ports: 1000,
            max_series: 1000,
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
        assert_eq!(m.series_count(), (1, 3, 10));
        let text = m.encode(false).unwrap();
        let dests: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("droptrace_destination_drops_total{"))
            .collect();
        assert_eq!(dests.len(), 4, "{text}");
        assert!(text.contains(r#"dst="other",port="other"} 7"#), "{text}");
    }

    #[test]
    fn ports_and_drops_series_beyond_their_caps_go_to_other() {
        let mut c = config(100);
        c.max_ports = 2;
        c.max_series = 10;
        c.extra = vec![ExtraLabel::Process];
        let mut m = DropMetrics::new(c);
        let mut r = attributed();
        r.count = 1;
        for (port, comm) in (1..=4).zip(["a", "b", "c", "d"]) {
            r.dport = Some(port);
            m.observe(&r, Instant::now());
            r.comm = comm.into();
        }
        assert_eq!(m.series_count(), (4, 4, 2));
        let text = m.encode(false).unwrap();
        assert!(
            text.contains(
                r#"droptrace_port_drops_total{netns="other",proto="other",port="other"} 2"#
            ),
            "{text}"
        );
        // Past nine tenths of the cap, new processes lose their name; the rule keeps its.
        for i in 0..20 {
            r.comm = format!("p{i}");
            m.observe(&r, Instant::now());
        }
        assert_eq!(m.series_count().0, 10);
        let text = m.encode(false).unwrap();
        assert!(
            text.contains(r#"rule="4""#) && text.contains(r#"process="other"} 15"#),
            "{text}"
        );
        // A fourth rule series finds no room even without its process: every label other.
        r.rule.as_mut().unwrap().rule_num = Some(9);
        m.observe(&r, Instant::now());
        let text = m.encode(false).unwrap();
        assert!(
            text.contains(r#"droptrace_drops_total{backend="other",table_family="other""#),
            "{text}"
        );
    }

    #[test]
    fn drops_beyond_the_flow_table_count_under_their_rule_without_address() {
        let mut m = DropMetrics::new(config(10));
        let b = BeyondCount {
            netns: 7,
            count: 500,
            bytes: 500 * 60,
            hook: Some(Hook::Output),
            rule: crate::attribution::tests::brief_rule(),
            dst: "*:8443".into(),
            proto: "tcp".into(),
            port: Some(8443),
        };
        m.observe_beyond(&b, Some("client".into()), Instant::now());
        m.observe(&attributed(), Instant::now());
        let text = m.encode(false).unwrap();
        let rule = text
            .lines()
            .filter(|l| l.starts_with("droptrace_drops_total{") && l.contains(r#"rule="4""#))
            .collect::<Vec<_>>();
        assert_eq!(rule.len(), 1, "one series for lines and aggregates: {text}");
        assert!(rule[0].ends_with(" 537"), "{text}");
        assert!(
            text.contains(
                r#"droptrace_port_drops_total{netns="client",proto="tcp",port="8443"} 537"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"dst="*",port="8443"} 500"#), "{text}");
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
        assert_eq!(m.series_count(), (1, 1, 1), "gone, but not for a TTL yet");
        m.expire(&none, t0 + Duration::from_secs(61));
        assert_eq!(m.series_count(), (0, 0, 0));
        assert!(!m.encode(false).unwrap().contains("droptrace_drops_total{"));
        // A namespace that lives keeps its series however idle.
        m.observe(&r, t0);
        let live = LiveNamespaces::from_names(&[(r.netns, r.netns_name.as_deref())]);
        m.expire(&live, t0 + Duration::from_secs(3600));
        assert_eq!(m.series_count(), (1, 1, 1));
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
        assert_eq!(m.series_count(), (0, 0, 0));
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
            beyond_flow_table: 0,
            lines_given_up: 0,
            detail_degraded: false,
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
