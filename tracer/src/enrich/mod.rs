//! Enrichment: a kernel [`Drop`] becomes a [`DropRecord`] with what userspace knows — the
//! hook and engine from the stack, the namespace's name, the process behind the socket (or
//! the one a received packet was for), its command line and unit, and the reason's name.
//!
//! The sources live in their own modules: [`netns`] (namespace names and files),
//! [`procinfo`] (/proc/PID), [`sockets`] (socket owners, as `ss -p` finds them),
//! [`resolve`] (reverse DNS in the background), [`routes`] (a namespace's route to a
//! destination), [`ufw`] (ufw's rule numbers, from its rules files) and [`libvirt`] (the
//! network behind a bridge, from libvirtd's state).

pub mod libvirt;
pub mod netns;
pub mod procinfo;
pub mod resolve;
pub mod routes;
pub mod sockets;
pub mod ufw;

use std::{collections::HashMap, path::Path};

use crate::{
    kernel::btf::KernelBtf,
    kernel::drop::{Drop, tcp_flags_text},
    kernel::filter::proto_name,
    kernel::kallsyms,
    kernel::stack::{self, Context, Hook},
    record::DropRecord,
};
use netns::NetnsNames;

/// Who sent packets on a socket, learnt from drops seen in process context.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    pid: u32,
    comm: String,
}

/// Turns kernel drops into records. Holds the caches that make that cheap per packet.
pub struct Enricher {
    kernel: KernelBtf,
    kallsyms: kallsyms::Background,
    netns: NetnsNames,
    owners: HashMap<u64, Owner>,
    /// Sockets whose owner /proc could not tell (not asked again).
    unowned: std::collections::HashSet<u64>,
    sockets: sockets::SocketOwners,
    procs: procinfo::ProcCache,
    /// Unnamed namespaces: a pid inside each (None when none was found), and when it
    /// was looked for.
    netns_pids: HashMap<u32, (Option<u32>, std::time::Instant)>,
    resolver: Option<resolve::Resolver>,
    /// Wall clock minus monotonic clock, to date the kernel's monotonic timestamps.
    realtime_offset_ns: i128,
}

/// How long "no process in this namespace" is believed.
const NETNS_PID_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Sockets remembered at most; old entries are forgotten wholesale when full.
const MAX_OWNERS: usize = 65_536;

impl Enricher {
    pub fn new(kernel: KernelBtf, kallsyms: kallsyms::Background) -> Self {
        Enricher {
            kernel,
            kallsyms,
            netns: NetnsNames::new(),
            owners: HashMap::new(),
            unowned: std::collections::HashSet::new(),
            sockets: sockets::SocketOwners::default(),
            procs: procinfo::ProcCache::default(),
            netns_pids: HashMap::new(),
            resolver: None,
            realtime_offset_ns: realtime_offset_ns(),
        }
    }

    /// Resolve destination names in the background (`--resolve`).
    pub fn resolve_names(&mut self) {
        self.resolver = Some(resolve::Resolver::start());
    }

    /// A process inside an unnamed namespace, found by scanning /proc, and found again when
    /// it left the namespace (the inode may now be another namespace's) or, when none was
    /// found, ten seconds later.
    fn netns_pid(&mut self, inode: u32) -> Option<u32> {
        if self.netns.name(inode).is_some() {
            return None;
        }
        let still = match self.netns_pids.get(&inode) {
            Some((Some(pid), _)) => {
                netns::inode_of(Path::new(&format!("/proc/{pid}/ns/net"))) == Some(inode)
            }
            Some((None, looked)) => looked.elapsed() < NETNS_PID_RETRY,
            None => false,
        };
        if !still {
            let pid = netns::path_of(inode).flatten().and_then(|p| {
                p.to_str()?
                    .strip_prefix("/proc/")?
                    .split('/')
                    .next()?
                    .parse()
                    .ok()
            });
            self.netns_pids
                .insert(inode, (pid, std::time::Instant::now()));
        }
        self.netns_pids.get(&inode).and_then(|(pid, _)| *pid)
    }

    /// Forgets what it found in namespaces that are gone and of processes that exited: a
    /// node that makes a container a second would otherwise have each remembered for as
    /// long as droptrace runs.
    pub fn forget_gone(&mut self, live: &netns::LiveNamespaces) {
        self.netns_pids.retain(|inode, _| live.has_inode(*inode));
        self.procs.forget_exited();
    }

    pub fn netns_name(&mut self, inode: u32) -> Option<String> {
        self.netns.name(inode)
    }

    /// Builds the record of `drop` whose kernel stack is `stack` (innermost first).
    pub fn record(&mut self, drop: Drop) -> DropRecord {
        let symbols = self.kallsyms.get();
        let frames: Vec<&str> = drop
            .stack
            .iter()
            .filter_map(|ip| symbols.resolve(*ip))
            .collect();
        let facts = stack::classify(frames.iter().copied());
        let location = symbols.resolve(drop.location).unwrap_or("?").to_string();
        let engine_guessed = drop.kernel.is_none() && facts.engine.is_none();
        // What the engine itself reported beats what its stack frames suggest.
        let engine = drop
            .kernel
            .as_ref()
            .and_then(|k| k.stack_engine())
            .or(facts.engine)
            .or_else(|| stack::engine_from_location(&location));
        let hook = drop.kernel.as_ref().and_then(|k| k.hook).or(facts.hook);
        // A packet the kernel made (its stack says which), or one leaving a local
        // process's stack without a socket: whatever task ran did not send it. The idle
        // task (pid 0) is never the sender.
        let context = if facts.kernel_sender.is_some()
            || (drop.socket.is_none() && hook == Some(Hook::Output))
        {
            Context::Kernel
        } else if facts.softirq || drop.pid == 0 {
            Context::Softirq
        } else {
            Context::Process
        };
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
            aggregate: Some(drop.aggregate),
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
            ct_mark: drop.ct_mark,
            ct_state: drop.ct_state,
            reason: self.kernel.reason_name(drop.reason),
            hook,
            engine,
            location,
            context,
            kernel_sender: facts.kernel_sender,
            pid,
            comm,
            receiver,
            cmdline: info.cmdline,
            cgroup: info.cgroup,
            container: info.container,
            uid: drop.uid,
            gid: drop.socket.and(info.fsgid),
            count: 1,
            bytes: u64::from(drop.len),
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
        if context == Context::Kernel {
            return (None, "kernel".to_string());
        }
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
        let found = netns::path_of(drop.netns)
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
        netns::path_of(drop.netns).and_then(|ns| self.sockets.owner(ns, drop.proto, local, remote))
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
