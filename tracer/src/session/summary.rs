//! Totals of a capture: by destination, by hook, and what was lost. Printed when a
//! capture ends, in text or as the final JSON line.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::{kernel::stack::Hook, record::DropRecord};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct DestinationKey {
    pub dst: String,
    pub proto: String,
}

/// Destinations counted one by one; a port scan's further ones share one `other` entry,
/// so a capture of weeks (`serve`) or of a scan keeps its summary bounded.
pub const MAX_DESTINATIONS: usize = 10_000;

/// The entry that counts the destinations beyond [`MAX_DESTINATIONS`].
pub const OTHER: &str = "other";

/// Rules counted one by one; drops of further rules (a ruleset rewritten over weeks) share
/// the entry [`OTHER_RULES`].
pub const MAX_RULES: usize = 1_000;

/// The entry that counts the rules beyond [`MAX_RULES`].
pub const OTHER_RULES: &str = "(other rules)";

#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub total: u64,
    by_destination: HashMap<DestinationKey, u64>,
    by_hook: BTreeMap<String, u64>,
    /// Label → (the rule as first seen, drops).
    by_rule: HashMap<String, (Option<crate::record::rule::Attribution>, u64)>,
    /// (protocol, destination port) → drops; `None`: no port, or beyond the cap.
    by_port: HashMap<(String, Option<u16>), u64>,
    /// Drops counted only in the kernel's aggregates (see `session::beyond`).
    beyond_flow_table: u64,
}

/// Drops per protocol and destination port (`port` null: a protocol without ports, or
/// the ports beyond [`MAX_DESTINATIONS`], or drops counted without their port).
#[derive(Debug, Serialize, PartialEq)]
pub struct PortCount {
    pub proto: String,
    pub port: Option<u16>,
    pub count: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct DestinationCount {
    pub dst: String,
    pub proto: String,
    pub count: u64,
}

/// Drops per rule. `rule` is the label text output shows (`filter/OUTPUT rule 4 `...``);
/// the other fields are the drop lines' rule fields, for scripts.
#[derive(Debug, Serialize, PartialEq)]
pub struct RuleCount {
    pub rule: String,
    pub backend: Option<String>,
    pub table_family: Option<String>,
    pub table: Option<String>,
    pub chain: Option<String>,
    pub rule_num: Option<u32>,
    pub rule_handle: Option<u64>,
    pub verdict: Option<String>,
    /// The front-end that manages the rule (see [`crate::attribution::owner`]).
    pub owner: Option<crate::record::rule::Owner>,
    /// The command that lists the rule in its backend (see
    /// [`crate::record::rule::Attribution::list_command`]).
    pub list: Option<String>,
    /// For drops no rule made: the stable name of their cause (`conntrack_table_full`).
    pub cause: Option<&'static str>,
    /// Its namespace has rules of more than one backend: text names the backend.
    #[serde(skip)]
    pub backends_mixed: bool,
    pub count: u64,
}

/// The final JSON line of a capture.
#[derive(Debug, Serialize)]
pub struct SummaryRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub total: u64,
    /// Dropped packets counted by the kernel but reported on no line (flows evicted
    /// from a full flow table). Zero means `total` is exact; null means the kernel's
    /// counters could not be read (see `error`), so nobody knows.
    pub lost: Option<u64>,
    /// Ring-buffer records the kernel could not write (userspace too slow); their packets
    /// are still in `total`, read from the kernel's flow table.
    pub records_lost: u64,
    /// Drops that matched the filters in the kernel; `total + lost + beyond_count` when
    /// nothing is missing; null when unreadable.
    pub matched_in_kernel: Option<u64>,
    /// Drops the kernel counted after `--count` was reached and before the capture
    /// stopped: not reported on purpose, not lost.
    pub beyond_count: u64,
    /// Why the kernel's counters could not be read, when they could not.
    pub error: Option<String>,
    pub duration_s: f64,
    pub destinations: Vec<DestinationCount>,
    pub hooks: BTreeMap<String, u64>,
    pub rules: Vec<RuleCount>,
    pub ports: Vec<PortCount>,
    /// Drops of flows beyond the kernel's flow table, or beyond the lines a capture makes
    /// per second: counted in `total` and by rule, hook and port from the kernel's
    /// aggregates, but reported on no line (no addresses, no process).
    pub beyond_flow_table: u64,
    /// With `--attempts`: attempts beside drops, per destination service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<crate::session::attempts::ServiceAttempts>>,
    /// With `--attempts`, when they could not be counted: why (the kernel refused the
    /// programs that count them). Drops are reported all the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts_unavailable: Option<String>,
}

impl Summary {
    pub fn add(&mut self, r: &DropRecord) {
        self.total += r.count;
        self.count_destination(r.destination(), r.proto.clone(), r.count);
        self.count_by_hook_rule_port(r.hook, r.rule.as_ref(), &r.proto, r.dport, r.count);
    }

    /// Adds drops counted only in aggregate: `dst` is what the aggregate knows of their
    /// destination (`*:5353`), `port` their port when it has one.
    pub fn add_beyond(&mut self, b: &crate::session::beyond::BeyondCount) {
        self.total += b.count;
        self.beyond_flow_table += b.count;
        self.count_destination(b.dst.clone(), b.proto.clone(), b.count);
        self.count_by_hook_rule_port(b.hook, Some(&b.rule), &b.proto, b.port, b.count);
    }

    /// Drops counted only in the kernel's aggregates so far.
    pub fn beyond_flow_table(&self) -> u64 {
        self.beyond_flow_table
    }

    fn count_destination(&mut self, dst: String, proto: String, count: u64) {
        let mut key = DestinationKey { dst, proto };
        if self.by_destination.len() >= MAX_DESTINATIONS && !self.by_destination.contains_key(&key)
        {
            key = DestinationKey {
                dst: OTHER.into(),
                proto: OTHER.into(),
            };
        }
        *self.by_destination.entry(key).or_default() += count;
    }

    fn count_by_hook_rule_port(
        &mut self,
        hook: Option<Hook>,
        rule: Option<&crate::record::rule::Attribution>,
        proto: &str,
        port: Option<u16>,
        count: u64,
    ) {
        let hook = hook.map_or("unknown", Hook::as_str).to_string();
        *self.by_hook.entry(hook).or_default() += count;
        let mut label = rule
            .and_then(|a| a.summary_label())
            .unwrap_or_else(|| "(rule unknown)".to_string());
        let mut first = rule.filter(|a| a.summary_label().is_some()).cloned();
        if self.by_rule.len() >= MAX_RULES && !self.by_rule.contains_key(&label) {
            (label, first) = (OTHER_RULES.to_string(), None);
        }
        self.by_rule.entry(label).or_insert((first, 0)).1 += count;
        let mut key = (proto.to_string(), port);
        if self.by_port.len() >= MAX_DESTINATIONS && !self.by_port.contains_key(&key) {
            key.1 = None;
        }
        *self.by_port.entry(key).or_default() += count;
    }

    /// Ports, most drops first (ties by protocol and port).
    pub fn ports(&self) -> Vec<PortCount> {
        let mut v: Vec<PortCount> = self
            .by_port
            .iter()
            .map(|((proto, port), count)| PortCount {
                proto: proto.clone(),
                port: *port,
                count: *count,
            })
            .collect();
        v.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| (&a.proto, a.port).cmp(&(&b.proto, b.port)))
        });
        v
    }

    /// Rules, most drops first.
    pub fn rules(&self) -> Vec<RuleCount> {
        let mut v: Vec<RuleCount> = self
            .by_rule
            .iter()
            .map(|(rule, (a, count))| {
                let field = |f: fn(&crate::record::rule::Attribution) -> Option<String>| {
                    a.as_ref().and_then(f)
                };
                RuleCount {
                    rule: rule.clone(),
                    backend: field(|a| a.backend.clone()),
                    table_family: field(|a| a.table_family.clone()),
                    table: field(|a| a.table.clone()),
                    chain: field(|a| a.chain.clone()),
                    rule_num: a.as_ref().and_then(|a| a.rule_num),
                    rule_handle: a.as_ref().and_then(|a| a.rule_handle),
                    verdict: field(|a| a.verdict.clone()),
                    owner: a.as_ref().and_then(|a| a.owner.clone()),
                    list: a.as_ref().and_then(|a| a.list_command()),
                    cause: a.as_ref().and_then(|a| a.cause.as_ref()).map(|c| c.name),
                    backends_mixed: a.as_ref().is_some_and(|a| a.backends_mixed),
                    count: *count,
                }
            })
            .collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.rule.cmp(&b.rule)));
        v
    }

    /// Destinations, most drops first (ties by name, so output is stable).
    pub fn destinations(&self) -> Vec<DestinationCount> {
        let mut v: Vec<DestinationCount> = self
            .by_destination
            .iter()
            .map(|(k, c)| DestinationCount {
                dst: k.dst.clone(),
                proto: k.proto.clone(),
                count: *c,
            })
            .collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.dst.cmp(&b.dst)));
        v
    }

    pub fn hooks(&self) -> &BTreeMap<String, u64> {
        &self.by_hook
    }

    pub fn record(&self, lost: u64, matched: u64, duration_s: f64) -> SummaryRecord {
        SummaryRecord {
            kind: "summary",
            total: self.total,
            lost: Some(lost),
            records_lost: 0,
            matched_in_kernel: Some(matched),
            beyond_count: 0,
            error: None,
            duration_s,
            destinations: self.destinations(),
            hooks: self.by_hook.clone(),
            rules: self.rules(),
            ports: self.ports(),
            beyond_flow_table: self.beyond_flow_table,
            services: None,
            attempts_unavailable: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    #[test]
    fn groups_by_destination_and_hook() {
        let mut s = Summary::default();
        let a = sample();
        let mut b = sample();
        b.dport = Some(9090);
        b.count = 3;
        s.add(&a);
        s.add(&b);
        s.add(&a);
        assert_eq!(s.total, 5);
        let d = s.destinations();
        assert_eq!(
            d[0],
            DestinationCount {
                dst: "203.0.113.10:9090".into(),
                proto: "tcp".into(),
                count: 3
            }
        );
        assert_eq!(d[1].count, 2);
        assert_eq!(s.hooks().get("OUTPUT"), Some(&5));
        let r = s.record(0, 5, 1.0);
        assert_eq!(serde_json::to_value(&r).unwrap()["type"], "summary");
    }

    #[test]
    fn destinations_beyond_the_cap_share_one_entry() {
        let mut s = Summary::default();
        let mut r = sample();
        for port in 0..(MAX_DESTINATIONS + 10) {
            r.dport = Some(u16::try_from(port).unwrap());
            s.add(&r);
        }
        let d = s.destinations();
        // The cap's worth of destinations plus the `other` entry.
        assert_eq!(d.len(), MAX_DESTINATIONS + 1);
        let other = d.iter().find(|d| d.dst == OTHER).unwrap();
        assert_eq!(other.count, 10);
        assert_eq!(s.total, (MAX_DESTINATIONS + 10) as u64);
    }

    #[test]
    fn rules_beyond_the_cap_share_one_entry() {
        let mut s = Summary::default();
        let mut r = sample();
        for n in 0..(MAX_RULES + 5) {
            r.rule = Some(crate::record::rule::Attribution {
                table: Some("filter".into()),
                chain: Some("OUTPUT".into()),
                rule: Some(format!("-A OUTPUT -p udp --dport {n} -j DROP")),
                rule_num: Some(u32::try_from(n).unwrap() + 1),
                ..crate::record::rule::Attribution::none("")
            });
            s.add(&r);
        }
        let rules = s.rules();
        assert_eq!(rules.len(), MAX_RULES + 1);
        let other = rules.iter().find(|r| r.rule == OTHER_RULES).unwrap();
        assert_eq!((other.count, other.chain.as_deref()), (5 * r.count, None));
    }

    /// An iptables rule and the ip6tables rule with the same text at the same place are
    /// two rules: `iptables -D OUTPUT 4` would delete only one of them.
    #[test]
    fn rules_of_both_families_stay_apart_with_their_fields() {
        let rule = |family: &str| crate::record::rule::Attribution {
            backend: Some("iptables-nft".into()),
            table_family: Some(family.into()),
            table: Some("filter".into()),
            chain: Some("OUTPUT".into()),
            rule: Some("-A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP".into()),
            rule_num: Some(4),
            verdict: Some("DROP".into()),
            ..crate::record::rule::Attribution::none("")
        };
        let mut s = Summary::default();
        let mut v4 = sample();
        v4.rule = Some(rule("ip"));
        let mut v6 = sample();
        v6.dst = "2001:db8:2::10".parse().unwrap();
        v6.rule = Some(rule("ip6"));
        s.add(&v4);
        s.add(&v6);
        let rules = s.rules();
        assert_eq!(rules.len(), 2);
        let json = serde_json::to_value(&rules).unwrap();
        let v6 = json
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["table_family"] == "ip6")
            .unwrap();
        assert!(
            v6["rule"]
                .as_str()
                .unwrap()
                .starts_with("ip6 filter/OUTPUT rule 4")
        );
        assert_eq!(v6["chain"], "OUTPUT");
        assert_eq!(v6["rule_num"], 4);
    }
}
