//! Attempts beside drops (`--attempts`): for each destination service, the connection
//! attempts (TCP) or first packets (UDP, ICMP echo) the host's processes made, how many
//! were dropped, and which rule let the others through, in the conntrack state the kernel
//! saw them in. A service with both is intermittent: "sometimes it works" explained.
//!
//! Attempts come from the inventory's programs (tracer-ebpf/src/inventory.rs: counted
//! before the firewall); the first packets that got through from `attempt_passed`
//! (tracer-ebpf/src/passed.rs), loaded with them; drops from the capture's own lines.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use serde::Serialize;
use tracer_common::{
    InventoryKey, PassedKey, inventory,
    netfilter::{CtInfo, CtState, Family, icmp_of_port, icmp_port, ip_addr, ipproto},
};

use crate::{
    attribution::{Attribution, Attributor},
    kernel::{
        btf::KernelBtf,
        filter::{Filters, proto_name},
        inventory::InventoryCapture,
        stack::Hook,
    },
    record::{DropRecord, endpoint},
};

use ipproto::{TCP, UDP};

/// Services and dropped TCP attempts remembered at most: a scan's further ones are left
/// out of the per-service view (the drops themselves stay counted in the summary).
const MAX_SERVICES: usize = 4096;
const MAX_DROPPED_FLOWS: usize = 65_536;

/// Where attempts go: namespace, destination, protocol and port (ICMP: `type << 8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Service {
    netns: u32,
    dst: IpAddr,
    proto: u8,
    port: u16,
}

impl Service {
    fn of(netns: u32, family: u8, daddr: &[u8; 16], proto: u8, port: u16) -> Service {
        Service {
            netns,
            dst: ip_addr(family, daddr),
            proto,
            port,
        }
    }

    /// The service of an inventory flow (attempts, before the firewall).
    fn of_attempt(k: &InventoryKey) -> Service {
        Service::of(k.netns, k.family, &k.daddr, k.proto, k.dport)
    }

    /// The service of a first packet that got through.
    fn of_passed(k: &PassedKey) -> Service {
        Service::of(k.netns, k.family, &k.daddr, k.proto, k.dport)
    }
}

/// First packets that got through, by service and conntrack state: one packet to judge
/// and the attempts it stands for.
type Group = ((Service, u8), ruleset::Packet, u64);

#[derive(Debug, Default)]
struct Dropped {
    /// TCP: the attempts (source address and port) whose SYN was dropped.
    flows: HashSet<(IpAddr, u16)>,
    /// UDP and ICMP: first packets dropped.
    packets: u64,
}

/// One service's attempts, for the summary.
#[derive(Debug, Serialize, PartialEq)]
pub struct ServiceAttempts {
    pub netns: u32,
    pub dst: String,
    pub proto: String,
    /// Connection attempts (`connect()`), or datagrams and echo requests sent.
    pub attempts: u64,
    /// Attempts whose first packet was dropped.
    pub dropped: u64,
    /// Attempts whose first packet got through every hook.
    pub passed: u64,
    /// Both dropped and passed in this capture.
    pub intermittent: bool,
    /// False when the kernel's tables (attempts, first packets that got through) or the
    /// per-service list of dropped attempts filled up during the capture: LRU tables
    /// forget their oldest entries, so the counts above may be short.
    pub complete: bool,
    /// The processes that made the attempts.
    pub processes: Vec<String>,
    /// Who let the passed ones through, by conntrack state.
    pub accepted_by: Vec<AcceptedBy>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct AcceptedBy {
    pub count: u64,
    /// The conntrack state the firewall saw: `new`, `established`, `related`, `untracked`.
    pub ct_state: &'static str,
    /// `filter/OUTPUT rule 1 `...``, or null when no rule could be named.
    pub label: Option<String>,
    #[serde(flatten)]
    pub rule: Attribution,
}

pub struct AttemptsBook {
    kernel: InventoryCapture,
    dropped: HashMap<Service, Dropped>,
}

impl AttemptsBook {
    /// Loads the attempt programs with the capture's filters.
    pub fn start(kernel: &KernelBtf, filters: &Filters) -> anyhow::Result<Self> {
        Ok(AttemptsBook {
            kernel: InventoryCapture::start(kernel, filters, true)?,
            dropped: HashMap::new(),
        })
    }

    /// Counts a drop line whose packets are first packets of attempts the host made.
    pub fn observe(&mut self, r: &DropRecord) {
        if !matches!(r.hook, Some(Hook::Output | Hook::Postrouting)) {
            return;
        }
        let proto = r
            .proto
            .parse::<crate::kernel::filter::Proto>()
            .map_or(0, |p| p.0);
        let port = match (proto, r.icmp_type) {
            (TCP, _) if r.tcp_flags_raw.is_some_and(|f| f & 0x12 == 0x02) => r.dport,
            (UDP, _) => r.dport,
            (ipproto::ICMP, Some(8)) | (ipproto::ICMPV6, Some(128)) => {
                r.icmp_type.map(|t| icmp_port(t, 0))
            }
            _ => None,
        };
        let Some(port) = port else { return };
        let service = Service {
            netns: r.netns,
            dst: r.dst,
            proto,
            port,
        };
        if self.dropped.len() >= MAX_SERVICES && !self.dropped.contains_key(&service) {
            return;
        }
        let d = self.dropped.entry(service).or_default();
        if proto == TCP {
            if d.flows.len() < MAX_DROPPED_FLOWS {
                d.flows.insert((r.src, r.sport.unwrap_or(0)));
            }
        } else {
            d.packets += r.count;
        }
    }

    /// Attempts and attempts that got through so far, by destination (`203.0.113.10:8443`,
    /// all namespaces together): `top`'s live columns. Reads the kernel's tables; names no
    /// rule (that takes ruleset reads: the end's [`AttemptsBook::report`] does it).
    pub fn counts(&self) -> HashMap<String, (u64, u64)> {
        let mut out: HashMap<String, (u64, u64)> = HashMap::new();
        for (k, st) in self.kernel.flows() {
            let s = Service::of_attempt(&k);
            out.entry(destination(&s)).or_default().0 += st.count;
        }
        for (k, packets) in self.kernel.passed() {
            let s = Service::of_passed(&k);
            out.entry(destination(&s)).or_default().1 += if k.proto == TCP { 1 } else { packets };
        }
        out
    }

    /// Every service seen, most attempts first, with the rules that let attempts through
    /// named by `attributor` (none without it: `--no-rules`).
    pub fn report(&mut self, mut attributor: Option<&mut Attributor>) -> Vec<ServiceAttempts> {
        let flows = self.kernel.flows();
        let passed_keys = self.kernel.passed();
        // A table at its size has been evicting (LRU): what it forgot is not counted.
        let tables_full = flows.len() >= inventory::MAX_FLOWS as usize
            || passed_keys.len() >= inventory::MAX_PASSED as usize
            || self.dropped.len() >= MAX_SERVICES;
        let mut attempts: HashMap<Service, (u64, Vec<String>)> = HashMap::new();
        for (k, st) in flows {
            let e = attempts.entry(Service::of_attempt(&k)).or_default();
            e.0 += st.count;
            let comm = crate::kernel::program::c_string(&st.comm);
            if !e.1.contains(&comm) {
                e.1.push(comm);
            }
        }
        // Passed attempts by service and state, with one packet of each to evaluate.
        let mut passed: BTreeMap<(Service, u8), (u64, PassedKey)> = BTreeMap::new();
        for (k, packets) in passed_keys {
            let e = passed
                .entry((Service::of_passed(&k), k.ct_info))
                .or_insert((0, k));
            // A TCP attempt is its SYN's flow, retransmissions included.
            e.0 += if k.proto == TCP { 1 } else { packets };
        }
        // Judged a namespace at a time: one ruleset read each, and a rule that let several
        // services' attempts through is checked against their sum.
        let mut by_netns: BTreeMap<u32, Vec<Group>> = BTreeMap::new();
        for ((s, ct), (n, k)) in &passed {
            by_netns
                .entry(s.netns)
                .or_default()
                .push(((*s, *ct), packet_of(k), *n));
        }
        let mut judged: HashMap<(Service, u8), Attribution> = HashMap::new();
        for (netns, groups) in by_netns {
            let rules = match attributor.as_deref_mut() {
                Some(a) => {
                    let packets: Vec<(ruleset::Packet, u64)> =
                        groups.iter().map(|(_, p, n)| (p.clone(), *n)).collect();
                    a.accepted(netns, &packets)
                }
                None => vec![Attribution::none("rules not read (--no-rules)"); groups.len()],
            };
            judged.extend(groups.into_iter().map(|(key, ..)| key).zip(rules));
        }
        let services: HashSet<Service> = attempts
            .keys()
            .chain(self.dropped.keys())
            .chain(passed.keys().map(|(s, _)| s))
            .copied()
            .collect();
        let mut out: Vec<ServiceAttempts> = services
            .into_iter()
            .map(|s| {
                let accepted_by: Vec<AcceptedBy> = passed
                    .range((s, 0)..=(s, u8::MAX))
                    .map(|((_, ct), (n, _))| {
                        let rule = judged
                            .remove(&(s, *ct))
                            .unwrap_or_else(|| Attribution::none("not judged"));
                        AcceptedBy {
                            count: *n,
                            ct_state: state_name(*ct),
                            label: rule.label(),
                            rule,
                        }
                    })
                    .collect();
                let d = self.dropped.get(&s);
                let dropped = d.map_or(0, |d| d.flows.len() as u64 + d.packets);
                let passed_n: u64 = accepted_by.iter().map(|a| a.count).sum();
                let (n, processes) = attempts.remove(&s).unwrap_or_default();
                ServiceAttempts {
                    netns: s.netns,
                    dst: destination(&s),
                    proto: proto_name(s.proto),
                    attempts: n,
                    dropped,
                    passed: passed_n,
                    intermittent: dropped > 0 && passed_n > 0,
                    complete: !tables_full && d.is_none_or(|d| d.flows.len() < MAX_DROPPED_FLOWS),
                    processes,
                    accepted_by,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (b.intermittent, b.dropped, b.attempts)
                .cmp(&(a.intermittent, a.dropped, a.attempts))
                .then_with(|| a.dst.cmp(&b.dst))
        });
        out
    }
}

fn destination(s: &Service) -> String {
    match s.proto {
        p if ipproto::is_icmp(p) => format!("{} (echo)", s.dst),
        _ => endpoint(s.dst, Some(s.port)),
    }
}

/// A first packet's conntrack state (the original direction). Unlike a drop, whose
/// packet without an entry is what `--ctstate INVALID` matches, a first packet let
/// through without one was not tracked.
fn first_packet_state(ct_info: u8) -> CtState {
    let info = CtInfo(ct_info);
    if info == CtInfo::NONE {
        CtState::Untracked
    } else {
        info.state().unwrap_or(CtState::Invalid)
    }
}

fn state_name(ct_info: u8) -> &'static str {
    first_packet_state(ct_info).as_str()
}

/// The first packet as the rule engine sees it.
fn packet_of(k: &PassedKey) -> ruleset::Packet {
    let icmp = ipproto::is_icmp(k.proto);
    let ports = !icmp;
    let oif = crate::kernel::program::c_string(&k.oif);
    ruleset::Packet {
        proto: k.proto,
        src: ip_addr(k.family, &k.saddr),
        dst: ip_addr(k.family, &k.daddr),
        sport: ports.then_some(k.sport),
        dport: ports.then_some(k.dport),
        tcp_flags: (k.proto == TCP).then_some(0x02),
        icmp_type: icmp.then_some(icmp_of_port(k.dport).0),
        icmp_code: icmp.then_some(icmp_of_port(k.dport).1),
        oif: (!oif.is_empty()).then_some(oif),
        mark: k.mark,
        uid: (k.uid != u32::MAX).then_some(k.uid),
        ct_state: Some(first_packet_state(k.ct_info)),
        // Not read by the kernel program: `-m owner --gid-owner` stays undecided. The
        // input interface is absent on an attempt's way out.
        unknown: ruleset::Unknown {
            gid: true,
            ..ruleset::Unknown::NONE
        },
        ..ruleset::Packet::unknown(Family::of_af(k.family))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_named_as_the_rules_name_them() {
        assert_eq!(state_name(0), "established");
        assert_eq!(state_name(2), "new");
        assert_eq!(state_name(tracer_common::CT_NONE), "untracked");
    }
}
