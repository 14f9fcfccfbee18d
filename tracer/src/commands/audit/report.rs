//! The audit's result: services that would be blocked (by rule, with their processes),
//! those that depend on rules droptrace cannot decide, and those that pass.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ruleset::Family;
use serde::Serialize;

use super::{judge::*, proposed::Proposed};
use crate::inventory::{Flow, Inventory, Service};

/// A service the proposed ruleset would block, with the processes that would break.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BlockedService {
    pub destination: String,
    pub proto: String,
    pub dst: IpAddr,
    pub dport: Option<u16>,
    pub icmp_type: Option<u8>,
    pub processes: Vec<String>,
    /// Flows (process × namespace) and their attempts in the inventory.
    pub flows: usize,
    pub count: u64,
}

/// Everything one rule would block.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Blocked {
    pub rule: String,
    /// `drop` or `reject`.
    pub verdict: &'static str,
    pub hook: &'static str,
    pub services: Vec<BlockedService>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UnsureService {
    pub destination: String,
    pub proto: String,
    pub dst: IpAddr,
    pub dport: Option<u16>,
    pub processes: Vec<String>,
    pub why: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PassingService {
    pub destination: String,
    pub proto: String,
    pub dst: IpAddr,
    pub dport: Option<u16>,
    /// The accepting rule, when one does.
    pub by: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AuditReport {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `pass`: nothing would be dropped; `fail`: something would (or might) be.
    pub verdict: &'static str,
    pub ruleset: String,
    pub format: String,
    pub flows_from: String,
    pub services: usize,
    pub flows: usize,
    pub would_drop: Vec<Blocked>,
    pub unsure: Vec<UnsureService>,
    pub would_pass: Vec<PassingService>,
    pub notes: Vec<String>,
}

impl AuditReport {
    pub fn failed(&self) -> bool {
        !self.would_drop.is_empty() || !self.unsure.is_empty()
    }
}

fn processes(flows: &[&Flow]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in flows {
        let p = f.process();
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Judges every flow of `inv` and groups the result by rule and service.
pub fn audit(proposed: &Proposed, inv: &Inventory, ruleset: &str, flows_from: &str) -> AuditReport {
    let mut blocked: BTreeMap<(String, &'static str, &'static str), Vec<BlockedService>> =
        BTreeMap::new();
    let mut unsure = Vec::new();
    let mut would_pass = Vec::new();
    let mut notes = Vec::new();
    let mut flows = 0;
    for s in &inv.services {
        flows += s.flows.len();
        // Flows of one service can differ (process, namespace, mark, owner).
        let mut by_rule: BTreeMap<(String, &'static str, &'static str), Vec<&Flow>> =
            BTreeMap::new();
        let mut doubts: BTreeMap<String, Vec<&Flow>> = BTreeMap::new();
        let mut accepted: BTreeSet<Option<String>> = BTreeSet::new();
        for f in &s.flows {
            match judge(&proposed.ruleset, f) {
                Judgement::Blocked { verdict, by, hook } => {
                    by_rule.entry((by, verdict, hook)).or_default().push(f)
                }
                Judgement::Unsure { why } => doubts.entry(why).or_default().push(f),
                Judgement::Pass { by } => {
                    accepted.insert(by);
                }
            }
        }
        let blocked_any = !by_rule.is_empty();
        for (key, fs) in by_rule {
            blocked.entry(key).or_default().push(BlockedService {
                destination: s.destination(),
                proto: s.proto.clone(),
                dst: s.dst,
                dport: s.dport,
                icmp_type: s.icmp_type,
                processes: processes(&fs),
                flows: fs.len(),
                count: fs.iter().map(|f| f.count).sum(),
            });
        }
        for (why, fs) in &doubts {
            unsure.push(UnsureService {
                destination: s.destination(),
                proto: s.proto.clone(),
                dst: s.dst,
                dport: s.dport,
                processes: processes(fs),
                why: why.clone(),
            });
        }
        if !blocked_any && doubts.is_empty() {
            would_pass.push(PassingService {
                destination: s.destination(),
                proto: s.proto.clone(),
                dst: s.dst,
                dport: s.dport,
                by: accepted.into_iter().flatten().next(),
            });
        }
    }
    let families_seen = |ipv6: bool| {
        proposed.ruleset.tables.iter().any(|t| {
            t.family
                .sees(if ipv6 { Family::Ipv6 } else { Family::Ipv4 })
        })
    };
    for (v6, name) in [(false, "IPv4"), (true, "IPv6")] {
        if inv.services.iter().any(|s: &Service| s.dst.is_ipv6() == v6) && !families_seen(v6) {
            notes.push(format!(
                "the proposed ruleset has no {name} table: {name} flows pass untouched"
            ));
        }
    }
    if inv.services.is_empty() {
        notes.push("the inventory has no flows: nothing was checked".into());
    }
    let mut would_drop: Vec<Blocked> = blocked
        .into_iter()
        .map(|((rule, verdict, hook), services)| Blocked {
            rule,
            verdict,
            hook,
            services,
        })
        .collect();
    would_drop.sort_by_key(|b| std::cmp::Reverse(b.services.len()));
    let failed = !would_drop.is_empty() || !unsure.is_empty();
    AuditReport {
        kind: "audit",
        verdict: if failed { "fail" } else { "pass" },
        ruleset: ruleset.to_string(),
        format: proposed.format.clone(),
        flows_from: flows_from.to_string(),
        services: inv.services.len(),
        flows,
        would_drop,
        unsure,
        would_pass,
        notes,
    }
}
