//! The drop record droptrace prints: a kernel [`Drop`] enriched with what userspace knows
//! (hook and engine from the stack, namespace name, the process behind the socket, the
//! reason's name). This is the one type both output formats render, so text and JSON
//! never disagree.

use std::{collections::HashMap, net::IpAddr};

use serde::Serialize;

use crate::{
    kernel::btf::KernelBtf,
    kernel::drop::{CtState, Drop, tcp_flags_text},
    kernel::filter::proto_name,
    kernel::kallsyms::Kallsyms,
    kernel::stack::{self, Context, Engine, Hook},
    netns::NetnsNames,
};

/// One line of output: a dropped packet, or `count` identical ones.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DropRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Wall-clock time of the (first) drop, RFC 3339.
    pub time: String,
    #[serde(skip)]
    pub ts_ns: u64,
    pub netns: u32,
    pub netns_name: Option<String>,
    /// For a namespace without a name: a process inside it (its /proc/PID/ns/net).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns_pid: Option<u32>,
    /// The interface the hook is about: input for PREROUTING/INPUT, output otherwise.
    pub ifname: String,
    pub family: &'static str,
    pub proto: String,
    pub src: IpAddr,
    pub sport: Option<u16>,
    pub dst: IpAddr,
    pub dport: Option<u16>,
    /// Reverse DNS name of `dst` (`--resolve`), once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_name: Option<String>,
    pub tcp_flags: Option<String>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    pub len: u32,
    pub mark: u32,
    pub ct_state: CtState,
    pub reason: String,
    pub hook: Option<Hook>,
    pub engine: Option<Engine>,
    /// Kernel function that freed the packet.
    pub location: String,
    pub context: Context,
    /// Sender process; `None` (and comm `unknown`) when the drop ran in softirq and the
    /// socket's owner was never seen. For an incoming packet without a socket (INPUT), the
    /// owner of the local socket it was for, with `receiver` set.
    pub pid: Option<u32>,
    pub comm: String,
    /// `pid`/`comm` are the receiving process (the local socket the packet was for), not
    /// the sender.
    pub receiver: bool,
    /// The sender's full command line, cgroup, and container or systemd unit.
    pub cmdline: Option<String>,
    pub cgroup: Option<String>,
    pub container: Option<String>,
    pub uid: Option<u32>,
    /// The socket owner's group: the sending process's filesystem gid, when the packet
    /// has a socket and its process is known.
    pub gid: Option<u32>,
    /// Packets this line stands for (>= 1).
    pub count: u64,
    /// Which rule dropped it (absent when attribution is off).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub rule: Option<crate::attribution::Attribution>,
    #[serde(skip)]
    pub headers: Vec<u8>,
    /// Both devices and the raw TCP flags, for the rule engine.
    #[serde(skip)]
    pub in_ifname: String,
    #[serde(skip)]
    pub out_ifname: String,
    #[serde(skip)]
    pub tcp_flags_raw: Option<u8>,
    /// The rule engine's own verdict for this packet, when the kernel reported it.
    #[serde(skip)]
    pub kernel: Option<crate::kernel::verdicts::KernelSaw>,
    /// `engine` is a guess from the drop's location alone (no engine frame in the stack).
    #[serde(skip)]
    pub engine_guessed: bool,
    /// The packet had a socket (`skb->sk`): owner matches apply to it.
    #[serde(skip)]
    pub has_socket: bool,
}

impl DropRecord {
    /// `dst:dport` (IPv6 in brackets), or the bare address for port-less protocols.
    pub fn destination(&self) -> String {
        endpoint(self.dst, self.dport)
    }

    pub fn source(&self) -> String {
        endpoint(self.src, self.sport)
    }

    /// The rule that dropped it, in words, when attributed.
    pub fn rule_label(&self) -> Option<String> {
        self.rule.as_ref().and_then(|a| a.label())
    }
}

pub fn endpoint(addr: IpAddr, port: Option<u16>) -> String {
    match (addr, port) {
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    }
}

/// Who sent packets on a socket, learnt from drops seen in process context.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    pid: u32,
    comm: String,
}

/// Turns kernel drops into records. Holds the caches that make that cheap per packet.
pub struct Enricher {
    kernel: KernelBtf,
    kallsyms: Kallsyms,
    netns: NetnsNames,
    owners: HashMap<u64, Owner>,
    /// Sockets whose owner /proc could not tell (not asked again).
    unowned: std::collections::HashSet<u64>,
    sockets: crate::sockets::SocketOwners,
    procs: crate::procinfo::ProcCache,
    /// Unnamed namespaces: a pid inside each (None when none was found).
    netns_pids: HashMap<u32, Option<u32>>,
    resolver: Option<crate::resolve::Resolver>,
    /// Wall clock minus monotonic clock, to date the kernel's monotonic timestamps.
    realtime_offset_ns: i128,
}

/// Sockets remembered at most; old entries are forgotten wholesale when full.
const MAX_OWNERS: usize = 65_536;

impl Enricher {
    pub fn new(kernel: KernelBtf, kallsyms: Kallsyms) -> Self {
        Enricher {
            kernel,
            kallsyms,
            netns: NetnsNames::new(),
            owners: HashMap::new(),
            unowned: std::collections::HashSet::new(),
            sockets: crate::sockets::SocketOwners::default(),
            procs: crate::procinfo::ProcCache::default(),
            netns_pids: HashMap::new(),
            resolver: None,
            realtime_offset_ns: realtime_offset_ns(),
        }
    }

    /// Resolve destination names in the background (`--resolve`).
    pub fn resolve_names(&mut self) {
        self.resolver = Some(crate::resolve::Resolver::start());
    }

    /// A process inside an unnamed namespace, found once by scanning /proc.
    fn netns_pid(&mut self, inode: u32) -> Option<u32> {
        if self.netns.name(inode).is_some() {
            return None;
        }
        *self.netns_pids.entry(inode).or_insert_with(|| {
            crate::netns::path_of(inode).flatten().and_then(|p| {
                p.to_str()?
                    .strip_prefix("/proc/")?
                    .split('/')
                    .next()?
                    .parse()
                    .ok()
            })
        })
    }

    pub fn netns_name(&mut self, inode: u32) -> Option<String> {
        self.netns.name(inode)
    }

    /// Builds the record of `drop` whose kernel stack is `stack` (innermost first).
    pub fn record(&mut self, drop: Drop) -> DropRecord {
        let frames: Vec<&str> = drop
            .stack
            .iter()
            .filter_map(|ip| self.kallsyms.resolve(*ip))
            .collect();
        let facts = stack::classify(frames.iter().copied());
        let location = self
            .kallsyms
            .resolve(drop.location)
            .unwrap_or("?")
            .to_string();
        let engine_guessed = drop.kernel.is_none() && facts.engine.is_none();
        // What the engine itself reported beats what its stack frames suggest.
        let engine = drop
            .kernel
            .as_ref()
            .and_then(|k| k.stack_engine())
            .or(facts.engine)
            .or_else(|| stack::engine_from_location(&location));
        // The idle task (pid 0) is never the sender.
        let context = if facts.softirq || drop.pid == 0 {
            Context::Softirq
        } else {
            Context::Process
        };
        let hook = drop.kernel.as_ref().and_then(|k| k.hook).or(facts.hook);
        let (mut pid, mut comm) = self.sender(&drop, context);
        let mut receiver = false;
        if pid.is_none()
            && drop.socket.is_none()
            && hook == Some(Hook::Input)
            && let Some((p, c)) = self.receiver(&drop)
        {
            (pid, comm, receiver) = (Some(p), c, true);
        }
        let info = pid.map(|p| self.procs.get(p, &comm)).unwrap_or_default();
        let ifname = match hook {
            Some(Hook::Prerouting | Hook::Input | Hook::Ingress) => &drop.ifname,
            _ if !drop.out_ifname.is_empty() => &drop.out_ifname,
            _ => &drop.ifname,
        }
        .clone();
        DropRecord {
            kind: "drop",
            time: self.wall_clock(drop.ts_ns),
            ts_ns: drop.ts_ns,
            netns: drop.netns,
            netns_name: self.netns.name(drop.netns),
            netns_pid: self.netns_pid(drop.netns),
            dst_name: self.resolver.as_mut().and_then(|r| r.name(drop.dst)),
            ifname,
            family: if drop.src.is_ipv6() { "ipv6" } else { "ipv4" },
            proto: proto_name(drop.proto),
            src: drop.src,
            sport: drop.sport,
            dst: drop.dst,
            dport: drop.dport,
            tcp_flags: drop.tcp_flags.map(tcp_flags_text),
            icmp_type: drop.icmp.map(|(t, _)| t),
            icmp_code: drop.icmp.map(|(_, c)| c),
            len: drop.len,
            mark: drop.mark,
            ct_state: drop.ct_state,
            reason: self.kernel.reason_name(drop.reason),
            hook,
            engine,
            location,
            context,
            pid,
            comm,
            receiver,
            cmdline: info.cmdline,
            cgroup: info.cgroup,
            container: info.container,
            uid: drop.uid,
            gid: drop.socket.and(info.fsgid),
            count: 1,
            rule: None,
            headers: drop.headers,
            in_ifname: drop.ifname.clone(),
            out_ifname: drop.out_ifname.clone(),
            tcp_flags_raw: drop.tcp_flags,
            kernel: drop.kernel,
            engine_guessed,
            has_socket: drop.socket.is_some(),
        }
    }

    /// The process behind a drop: the current task in process context (remembered as the
    /// socket's owner), else the socket's remembered owner, else unknown.
    fn sender(&mut self, drop: &Drop, context: Context) -> (Option<u32>, String) {
        if context == Context::Process {
            if let Some(sk) = drop.socket {
                self.remember_owner(sk, drop.pid, &drop.comm);
            }
            return (Some(drop.pid), drop.comm.clone());
        }
        let Some(sk) = drop.socket else {
            return (None, "unknown".to_string());
        };
        if let Some(o) = self.owners.get(&sk) {
            return (Some(o.pid), o.comm.clone());
        }
        match self.owner_from_proc(drop) {
            Some((pid, comm)) => {
                self.remember_owner(sk, pid, &comm);
                (Some(pid), comm)
            }
            None => (None, "unknown".to_string()),
        }
    }

    fn remember_owner(&mut self, sk: u64, pid: u32, comm: &str) {
        if self.owners.len() >= MAX_OWNERS {
            self.owners.clear();
        }
        self.owners.insert(
            sk,
            Owner {
                pid,
                comm: comm.to_string(),
            },
        );
    }

    /// A socket never seen in process context (its connect() predates droptrace): ask
    /// /proc, once per socket. Its packets leave from it, so the source is the local end.
    fn owner_from_proc(&mut self, drop: &Drop) -> Option<(u32, String)> {
        let sk = drop.socket?;
        if self.unowned.contains(&sk) {
            return None;
        }
        let local = std::net::SocketAddr::new(drop.src, drop.sport?);
        let remote = std::net::SocketAddr::new(drop.dst, drop.dport?);
        let found = crate::netns::path_of(drop.netns)
            .and_then(|ns| self.sockets.owner(ns, drop.proto, local, remote));
        if found.is_none() {
            if self.unowned.len() >= MAX_OWNERS {
                self.unowned.clear();
            }
            self.unowned.insert(sk);
        }
        found
    }

    /// The process owning the local socket an incoming packet was for (a listener on the
    /// destination port, or the connection it belongs to), as `ss -p` would find it.
    fn receiver(&mut self, drop: &Drop) -> Option<(u32, String)> {
        let local = std::net::SocketAddr::new(drop.dst, drop.dport?);
        let remote = std::net::SocketAddr::new(drop.src, drop.sport?);
        crate::netns::path_of(drop.netns)
            .and_then(|ns| self.sockets.owner(ns, drop.proto, local, remote))
    }

    /// The current time, formatted like drop times.
    pub fn now(&self) -> String {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
            t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
        });
        self.wall_clock(mono)
    }

    fn wall_clock(&self, mono_ns: u64) -> String {
        let ns = i128::from(mono_ns) + self.realtime_offset_ns;
        jiff::Timestamp::from_nanosecond(ns).map_or_else(|_| "?".into(), |t| t.to_string())
    }
}

fn realtime_offset_ns() -> i128 {
    let ns = |clock| {
        nix::time::clock_gettime(clock).map_or(0, |t| {
            i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
        })
    };
    ns(nix::time::ClockId::CLOCK_REALTIME) - ns(nix::time::ClockId::CLOCK_MONOTONIC)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record as the enricher would build it, for renderer tests.
    pub fn sample() -> DropRecord {
        DropRecord {
            kind: "drop",
            time: "2026-11-24T10:30:00.123456789Z".into(),
            ts_ns: 1,
            netns: 4026532300,
            netns_name: Some("client".into()),
            netns_pid: None,
            ifname: "veth-c".into(),
            family: "ipv4",
            proto: "tcp".into(),
            src: "198.51.100.2".parse().unwrap(),
            sport: Some(40000),
            dst: "203.0.113.10".parse().unwrap(),
            dport: Some(8443),
            dst_name: None,
            tcp_flags: Some("S".into()),
            icmp_type: None,
            icmp_code: None,
            len: 60,
            mark: 0,
            ct_state: CtState::New,
            reason: "NETFILTER_DROP".into(),
            hook: Some(Hook::Output),
            engine: Some(Engine::Nftables(stack::NftFamily::Ip)),
            location: "nft_do_chain".into(),
            context: Context::Process,
            pid: Some(812),
            comm: "java".into(),
            receiver: false,
            cmdline: Some("java -jar payments.jar".into()),
            cgroup: Some("/system.slice/payments.service".into()),
            container: Some("payments.service".into()),
            uid: Some(0),
            gid: Some(0),
            count: 1,
            rule: None,
            headers: vec![],
            in_ifname: String::new(),
            out_ifname: "veth-c".into(),
            tcp_flags_raw: Some(0x02),
            kernel: None,
            engine_guessed: false,
            has_socket: true,
        }
    }

    #[test]
    fn endpoints_bracket_ipv6() {
        assert_eq!(
            endpoint("2001:db8::1".parse().unwrap(), Some(443)),
            "[2001:db8::1]:443"
        );
        assert_eq!(
            endpoint("203.0.113.10".parse().unwrap(), None),
            "203.0.113.10"
        );
    }

    #[test]
    fn json_carries_the_documented_fields() {
        let v = serde_json::to_value(sample()).unwrap();
        for k in [
            "type", "time", "netns", "ifname", "family", "proto", "src", "sport", "dst", "dport",
            "reason", "hook", "pid", "comm", "count",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["type"], "drop");
        assert_eq!(v["hook"], "OUTPUT");
        assert_eq!(v["dst"], "203.0.113.10");
    }
}
