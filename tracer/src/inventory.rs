//! `droptrace inventory`: which external services does this host talk to, from which
//! process — the list nobody had before the hardening rules went live.
//!
//! For a window (`--duration`, or until Ctrl-C) the kernel programs of [`kernel`] record
//! every distinct outbound flow the host starts: TCP connection attempts and UDP / ICMP
//! echo sends, seen before the firewall so flows it drops are listed too, each with its
//! process, cgroup, namespace, first and last sighting and a count.
//!
//! Whether the *current* ruleset dropped a flow is not guessed by evaluating rules: the
//! drop capture of `watch` ([`Session`]) runs side by side, and a flow is `dropped` when
//! the kernel reported NETFILTER_DROP drops of its packets (a first packet in OUTPUT, or a
//! reply dropped on the way in), named by rule as `watch` names them. That is what
//! happened, not what a model predicts; predicting is `droptrace audit`'s job, for a
//! ruleset that is not applied yet.
//!
//! `--write FILE` keeps the inventory as JSON for `droptrace audit --from FILE` and
//! `droptrace verify --probe-file FILE` ([`probe_targets_from_file`]).

pub mod kernel;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    io::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};
use tracer_common::{AF_INET6, InventoryKey, InventoryState, inventory as k};

use crate::{
    enrich::netns::{NetnsNames, NetnsSelector},
    enrich::procinfo::{ProcCache, ProcInfo, container_of},
    escape::terminal,
    kernel::btf::KernelBtf,
    kernel::drop::CtState,
    kernel::filter::proto_name,
    kernel::program::c_string,
    kernel::stack::Hook,
    probe::{ProbeProto, Target},
    record::{DropRecord, endpoint},
    session::Session,
    session::options::{CaptureArgs, FilterArgs},
};

/// Version of the `--write` file format.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, clap::Args)]
pub struct InventoryArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
    /// How long to watch (e.g. 10m, 1h); default: until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = crate::session::options::parse_duration)]
    pub duration: Option<Duration>,
    /// Print the inventory as one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write the inventory (JSON) to FILE, for `droptrace audit --from FILE` and
    /// `droptrace verify --probe-file FILE`.
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Do not watch drops alongside (the `dropped` column is then unknown).
    #[arg(long)]
    pub no_drops: bool,
}

/// An inventory: what `--json` prints and `--write` keeps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Inventory {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    /// When the window started (RFC 3339, UTC).
    pub started: String,
    pub duration_s: f64,
    /// The namespace(s) watched, as `--netns` named them.
    pub netns: String,
    #[serde(default)]
    pub filters: String,
    /// Kernel hooks that saw the flows.
    #[serde(default)]
    pub sources: Vec<String>,
    /// What could not be seen, and why.
    #[serde(default)]
    pub blind_spots: Vec<String>,
    /// How `dropped` was decided; null when drops were not watched.
    #[serde(default)]
    pub drops_from: Option<String>,
    /// Flows whose first sighting the kernel could not hand over (their process details
    /// may be missing; the flows themselves are listed).
    #[serde(default)]
    pub lost: u64,
    pub services: Vec<Service>,
}

/// A destination service (protocol, address, port or ICMP type) and everyone who used it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Service {
    pub proto: String,
    pub dst: IpAddr,
    #[serde(default)]
    pub dport: Option<u16>,
    #[serde(default)]
    pub icmp_type: Option<u8>,
    /// `comm[pid]` (with `@unit` or `@container`), one per process.
    #[serde(default)]
    pub processes: Vec<String>,
    /// Connection attempts (TCP) or datagrams (UDP, ICMP), all flows together.
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
    /// Whether the current ruleset dropped its packets; null when drops were not watched.
    #[serde(default)]
    pub dropped: Option<bool>,
    /// Dropped packets (NETFILTER_DROP) of this service.
    #[serde(default)]
    pub drops: u64,
    #[serde(default)]
    pub dropped_by: Vec<String>,
    pub flows: Vec<Flow>,
}

/// One flow: a service as one process, in one namespace, reached it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Flow {
    pub netns: u32,
    #[serde(default)]
    pub netns_name: Option<String>,
    pub proto: String,
    pub dst: IpAddr,
    #[serde(default)]
    pub dport: Option<u16>,
    #[serde(default)]
    pub icmp_type: Option<u8>,
    #[serde(default)]
    pub icmp_code: Option<u8>,
    /// Source address: the flow's own when the kernel had chosen it, else the route's.
    #[serde(default)]
    pub src: Option<IpAddr>,
    /// Source port of the first attempt, when already chosen.
    #[serde(default)]
    pub sport: Option<u16>,
    /// Output interface, from the namespace's routing table at the end of the window.
    #[serde(default)]
    pub oif: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub comm: String,
    #[serde(default)]
    pub cmdline: Option<String>,
    #[serde(default)]
    pub cgroup: Option<String>,
    #[serde(default)]
    pub container: Option<String>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub mark: u32,
    /// Connection attempts (TCP) or datagrams (UDP, ICMP); for a flow seen only through
    /// its drops, the dropped packets.
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
    /// `connect` (TCP SYN_SENT), `send` (a datagram), or `drop` (seen only being dropped:
    /// it started before the window).
    pub seen_by: String,
    #[serde(default)]
    pub dropped: Option<bool>,
    #[serde(default)]
    pub drops: u64,
    #[serde(default)]
    pub dropped_by: Vec<String>,
}

impl Flow {
    fn service_key(&self) -> ServiceKey {
        (self.proto.clone(), self.dst, self.dport, self.icmp_type)
    }

    /// `comm[pid]`, with the unit or container when it names one; escaped for terminals.
    pub fn process(&self) -> String {
        let Some(pid) = self.pid else {
            return "unknown".to_string();
        };
        match self.container.as_deref() {
            Some(c) if !c.ends_with(".scope") => {
                format!("{}[{pid}]@{}", terminal(&self.comm), terminal(c))
            }
            _ => format!("{}[{pid}]", terminal(&self.comm)),
        }
    }
}

impl Service {
    /// `203.0.113.10:8443`, `[2001:db8::10]:53`, or `203.0.113.10 echo` for ICMP.
    pub fn destination(&self) -> String {
        match (self.dport, self.icmp_type) {
            (Some(p), _) => endpoint(self.dst, Some(p)),
            (None, Some(8 | 128)) => format!("{} echo", self.dst),
            (None, Some(t)) => format!("{} type {t}", self.dst),
            (None, None) => self.dst.to_string(),
        }
    }
}

/// (proto, dst, dport, icmp type): what makes flows one service.
type ServiceKey = (String, IpAddr, Option<u16>, Option<u8>);

pub async fn run(args: InventoryArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.write {
        // Before the window, not after it: a typo must not cost the capture.
        writable(path)?;
    }
    let inv = collect(&args.filters, args.duration, !args.no_drops).await?;
    if let Some(path) = &args.write {
        write_file(path, &inv)?;
        let flows: usize = inv.services.iter().map(|s| s.flows.len()).sum();
        eprintln!(
            "droptrace: wrote {} service(s), {flows} flow(s) to {} (for `droptrace audit --from` and `droptrace verify --probe-file`)",
            inv.services.len(),
            terminal(&path.display().to_string())
        );
    }
    let mut out = io::stdout().lock();
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &inv)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        write_table(&mut out, &inv)
    };
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `path` can be written (the file, or the directory it would be created in).
fn writable(path: &Path) -> anyhow::Result<()> {
    let target = if path.exists() {
        path.to_path_buf()
    } else {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    };
    nix::unistd::access(&target, nix::unistd::AccessFlags::W_OK)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `inv` as pretty JSON.
pub fn write_file(path: &Path, inv: &Inventory) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(inv)?;
    text.push('\n');
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads an inventory written by `--write`.
pub fn parse(text: &str) -> Result<Inventory, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not a droptrace inventory: {e}"))?;
    if v.get("type").and_then(|t| t.as_str()) != Some("inventory") {
        return Err(
            "not a droptrace inventory (no \"type\": \"inventory\"; write one with `droptrace inventory --write FILE`)"
                .into(),
        );
    }
    match v.get("version").and_then(|t| t.as_u64()) {
        Some(n) if n == u64::from(FORMAT_VERSION) => {}
        other => {
            return Err(format!(
                "inventory format version {} is not supported (this droptrace reads version {FORMAT_VERSION})",
                other.map_or("missing".to_string(), |n| n.to_string())
            ));
        }
    }
    serde_json::from_value(v).map_err(|e| format!("malformed inventory: {e}"))
}

/// Probe targets for `verify --probe-file`: one per TCP or UDP service of an inventory.
/// `None` when `text` is not an inventory (then it is a plain list of targets).
pub fn probe_targets_from_file(text: &str) -> Option<Result<Vec<Target>, String>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    if v.get("type").and_then(|t| t.as_str()) != Some("inventory") {
        return None;
    }
    Some(parse(text).map(|inv| probe_targets(&inv)))
}

fn probe_targets(inv: &Inventory) -> Vec<Target> {
    let mut seen = BTreeSet::new();
    inv.services
        .iter()
        .filter_map(|s| {
            let proto = match s.proto.as_str() {
                "tcp" => ProbeProto::Tcp,
                "udp" => ProbeProto::Udp,
                _ => return None,
            };
            let port = s.dport.filter(|p| *p != 0)?;
            seen.insert((s.proto.clone(), s.dst, port)).then(|| Target {
                proto,
                host: s.dst.to_string(),
                port,
            })
        })
        .collect()
}

/// Wall-clock dates for the kernel's monotonic timestamps.
struct Clock {
    offset_ns: i128,
}

impl Clock {
    fn new() -> Self {
        let ns = |clock| {
            nix::time::clock_gettime(clock).map_or(0, |t| {
                i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
            })
        };
        Clock {
            offset_ns: ns(nix::time::ClockId::CLOCK_REALTIME)
                - ns(nix::time::ClockId::CLOCK_MONOTONIC),
        }
    }

    fn wall(&self, mono_ns: u64) -> String {
        jiff::Timestamp::from_nanosecond(i128::from(mono_ns) + self.offset_ns)
            .map_or_else(|_| "?".into(), |t| t.to_string())
    }
}

/// A flow as the kernel reported it, with what /proc said about its process then.
struct Seen {
    state: InventoryState,
    proc: Option<ProcInfo>,
}

/// Every flow seen so far.
#[derive(Default)]
struct Book {
    flows: HashMap<InventoryKey, Seen>,
    procs: ProcCache,
}

impl Book {
    /// A first sighting: read the process's details now, while it exists.
    fn first(&mut self, key: InventoryKey, state: InventoryState) {
        if self.flows.contains_key(&key) {
            return;
        }
        let proc = self.process(&key, &state);
        self.flows.insert(key, Seen { state, proc });
    }

    fn process(&mut self, key: &InventoryKey, state: &InventoryState) -> Option<ProcInfo> {
        if key.tgid == 0 {
            return None;
        }
        let info = self.procs.get(key.tgid, &c_string(&state.comm));
        (info != ProcInfo::default()).then_some(info)
    }

    /// The kernel's current counters (also flows whose first sighting was lost).
    fn refresh(&mut self, flows: Vec<(InventoryKey, InventoryState)>) {
        for (key, state) in flows {
            match self.flows.get_mut(&key) {
                Some(seen) => {
                    seen.state.count = seen.state.count.max(state.count);
                    seen.state.last_ns = seen.state.last_ns.max(state.last_ns);
                }
                None => self.first(key, state),
            }
        }
    }
}

fn addr(family: u8, a: &[u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*a))
    } else {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    }
}

/// The flow the kernel saw, before routes and drops are added.
fn flow_of(key: &InventoryKey, seen: &Seen, clock: &Clock) -> Flow {
    let s = &seen.state;
    let icmp = matches!(key.proto, 1 | 58);
    let src = addr(key.family, &s.saddr);
    let info = seen.proc.clone().unwrap_or_default();
    Flow {
        netns: key.netns,
        netns_name: None,
        proto: proto_name(key.proto),
        dst: addr(key.family, &key.daddr),
        dport: (!icmp).then_some(key.dport),
        icmp_type: icmp.then_some((key.dport >> 8) as u8),
        icmp_code: icmp.then_some(key.dport as u8),
        src: (!src.is_unspecified()).then_some(src),
        sport: (!icmp && s.sport != 0).then_some(s.sport),
        oif: None,
        pid: (key.tgid != 0).then_some(key.tgid),
        comm: c_string(&s.comm),
        cmdline: info.cmdline,
        container: info.container,
        cgroup: info.cgroup,
        uid: (s.uid != u32::MAX).then_some(s.uid),
        mark: s.mark,
        count: s.count,
        first_seen: clock.wall(s.first_ns),
        last_seen: clock.wall(s.last_ns),
        seen_by: match s.source {
            k::SOURCE_TCP_CONNECT => "connect",
            _ => "send",
        }
        .to_string(),
        dropped: None,
        drops: 0,
        dropped_by: Vec::new(),
    }
}

/// cgroup v2 paths by cgroup id (the directory's inode), for processes that exited
/// before /proc could be read. Scans the cgroup2 mount once, lazily.
#[derive(Default)]
struct CgroupPaths {
    by_id: Option<HashMap<u64, String>>,
}

impl CgroupPaths {
    fn get(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        self.by_id
            .get_or_insert_with(scan_cgroups)
            .get(&id)
            .cloned()
    }
}

fn scan_cgroups() -> HashMap<u64, String> {
    let mut out = HashMap::new();
    let Some(root) = fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|t| cgroup2_mount(&t))
    else {
        return out;
    };
    // Bounded: a host has thousands of cgroups, not millions.
    let mut stack = vec![(PathBuf::from(&root), String::from("/"))];
    while let Some((dir, path)) = stack.pop() {
        if out.len() > 200_000 {
            break;
        }
        if let Ok(meta) = fs::metadata(&dir) {
            out.insert(meta.ino(), path.clone());
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir())
                && let Some(name) = e.file_name().to_str()
            {
                let child = if path == "/" {
                    format!("/{name}")
                } else {
                    format!("{path}/{name}")
                };
                stack.push((e.path(), child));
            }
        }
    }
    out
}

/// The mount point of the cgroup v2 hierarchy, from /proc/self/mountinfo.
fn cgroup2_mount(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(str::to_string))?
    })
}

/// A service in one namespace, as sent to by one process, or (no known process: a
/// retransmission or reply dropped in softirq) from one local port.
type DropKey = (ServiceKey, u32, Sender);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Sender {
    Process(u32),
    /// The flow's local port, which names the flow when no process does.
    Port(Option<u16>),
}

/// Drops of the window, indexed by the service they belong to.
#[derive(Default)]
struct DropIndex {
    /// Packets dropped, and what dropped them.
    by_service: BTreeMap<DropKey, (u64, BTreeSet<String>)>,
    /// First packets dropped on the way out, for flows that started before the window.
    first_packets: Vec<DropRecord>,
}

/// What dropped a record, in words.
fn drop_label(r: &DropRecord) -> String {
    crate::verify::dropped_by(r)
}

impl DropIndex {
    fn new(records: &[DropRecord]) -> Self {
        let mut idx = DropIndex::default();
        for r in records {
            let egress = matches!(r.hook, Some(Hook::Output | Hook::Postrouting));
            let ingress = matches!(r.hook, Some(Hook::Prerouting | Hook::Input));
            let (key, label, local_port) = if egress {
                let icmp = matches!(r.proto.as_str(), "icmp" | "icmpv6");
                (
                    (
                        r.proto.clone(),
                        r.dst,
                        r.dport,
                        if icmp { r.icmp_type } else { None },
                    ),
                    drop_label(r),
                    r.sport,
                )
            } else if ingress && r.sport.is_some() {
                // A reply to one of our flows, dropped on its way in: the flow is broken
                // all the same.
                (
                    (r.proto.clone(), r.src, r.sport, None),
                    format!("reply dropped by {}", drop_label(r)),
                    r.dport,
                )
            } else {
                continue;
            };
            let sender = r.pid.map_or(Sender::Port(local_port), Sender::Process);
            let e = idx.by_service.entry((key, r.netns, sender)).or_default();
            e.0 += r.count;
            e.1.insert(label);
            let first_packet = match r.proto.as_str() {
                "tcp" => r.tcp_flags_raw.is_some_and(|f| f & 0x12 == 0x02),
                "udp" => true,
                "icmp" => r.icmp_type == Some(8),
                "icmpv6" => r.icmp_type == Some(128),
                _ => false,
            };
            if egress && first_packet && matches!(r.ct_state, CtState::New | CtState::None) {
                idx.first_packets.push(r.clone());
            }
        }
        idx
    }

    /// Marks each flow with the drops of its service from its process, and those of no
    /// known process from its local port. Each drop is counted on one flow only: those of
    /// no known process that match no flow's port go to one flow of the service (one of no
    /// known process if there is one), never to every flow, so no process is marked as
    /// dropped for another's packets.
    fn mark(&self, flows: &mut [Flow]) {
        let mut taken: BTreeSet<&DropKey> = BTreeSet::new();
        for f in flows.iter_mut() {
            f.dropped = Some(false);
            f.drops = 0;
            f.dropped_by = Vec::new();
        }
        let add = |f: &mut Flow, n: u64, labels: &BTreeSet<String>| {
            f.dropped = Some(f.drops + n > 0);
            f.drops += n;
            for l in labels {
                if !f.dropped_by.contains(l) {
                    f.dropped_by.push(l.clone());
                }
            }
            f.dropped_by.sort();
        };
        for f in flows.iter_mut() {
            let key = f.service_key();
            let own = [
                f.pid.map(Sender::Process),
                f.sport.is_some().then_some(Sender::Port(f.sport)),
            ];
            for sender in own.into_iter().flatten() {
                if let Some((k, (n, labels))) =
                    self.by_service
                        .get_key_value(&(key.clone(), f.netns, sender))
                    && taken.insert(k)
                {
                    add(f, *n, labels);
                }
            }
        }
        // Drops of no known process whose port no flow has.
        for (k, (n, labels)) in &self.by_service {
            if !matches!(k.2, Sender::Port(_)) || taken.contains(k) {
                continue;
            }
            let of_service = |f: &Flow| f.service_key() == k.0 && f.netns == k.1;
            let target = match flows.iter().position(|f| of_service(f) && f.pid.is_none()) {
                Some(i) => Some(i),
                None => flows.iter().position(of_service),
            };
            if let Some(i) = target {
                add(&mut flows[i], *n, labels);
            }
        }
    }

    /// Flows known only from their dropped first packets (connections that started
    /// before the window and keep retrying).
    fn unseen_flows(&self, flows: &[Flow]) -> Vec<Flow> {
        let mut out: Vec<Flow> = Vec::new();
        for r in &self.first_packets {
            let icmp = matches!(r.proto.as_str(), "icmp" | "icmpv6");
            let f = Flow {
                netns: r.netns,
                netns_name: r.netns_name.clone(),
                proto: r.proto.clone(),
                dst: r.dst,
                dport: r.dport,
                icmp_type: if icmp { r.icmp_type } else { None },
                icmp_code: if icmp { r.icmp_code } else { None },
                src: Some(r.src),
                sport: r.sport,
                oif: (!r.out_ifname.is_empty()).then(|| r.out_ifname.clone()),
                pid: r.pid,
                comm: r.comm.clone(),
                cmdline: r.cmdline.clone(),
                cgroup: r.cgroup.clone(),
                container: r.container.clone(),
                uid: r.uid,
                mark: r.mark,
                count: r.count,
                first_seen: r.time.clone(),
                last_seen: r.time.clone(),
                seen_by: "drop".into(),
                dropped: None,
                drops: 0,
                dropped_by: Vec::new(),
            };
            let same = |g: &Flow| {
                g.service_key() == f.service_key() && g.netns == f.netns && g.pid == f.pid
            };
            if flows.iter().any(same) {
                continue;
            }
            match out.iter_mut().find(|g| same(g)) {
                Some(g) => {
                    g.count += f.count;
                    g.last_seen = f.last_seen;
                }
                None => out.push(f),
            }
        }
        out
    }
}

/// Groups flows into services, sorted by destination.
fn services(flows: Vec<Flow>) -> Vec<Service> {
    let mut groups: BTreeMap<(String, IpAddr, u16, u8), Vec<Flow>> = BTreeMap::new();
    for f in flows {
        groups
            .entry((
                f.proto.clone(),
                f.dst,
                f.dport.unwrap_or(0),
                f.icmp_type.unwrap_or(0),
            ))
            .or_default()
            .push(f);
    }
    let mut out: Vec<Service> = groups
        .into_values()
        .map(|mut flows| {
            flows.sort_by(|a, b| a.first_seen.cmp(&b.first_seen));
            let first = &flows[0];
            let mut processes: Vec<String> = Vec::new();
            for f in &flows {
                let p = f.process();
                if !processes.contains(&p) {
                    processes.push(p);
                }
            }
            let dropped = if flows.iter().any(|f| f.dropped.is_none()) {
                None
            } else {
                Some(flows.iter().any(|f| f.dropped == Some(true)))
            };
            let dropped_by: BTreeSet<String> = flows
                .iter()
                .flat_map(|f| f.dropped_by.iter().cloned())
                .collect();
            Service {
                proto: first.proto.clone(),
                dst: first.dst,
                dport: first.dport,
                icmp_type: first.icmp_type,
                processes,
                count: flows.iter().map(|f| f.count).sum(),
                first_seen: flows
                    .iter()
                    .map(|f| &f.first_seen)
                    .min()
                    .cloned()
                    .unwrap_or_default(),
                last_seen: flows
                    .iter()
                    .map(|f| &f.last_seen)
                    .max()
                    .cloned()
                    .unwrap_or_default(),
                dropped,
                drops: flows.iter().map(|f| f.drops).sum(),
                dropped_by: dropped_by.into_iter().collect(),
                flows,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (a.dst, a.proto.as_str(), a.dport, a.icmp_type).cmp(&(
            b.dst,
            b.proto.as_str(),
            b.dport,
            b.icmp_type,
        ))
    });
    out
}

/// The user's filters that the kernel cannot apply to flows: source, process.
fn wanted(filters: &FilterArgs, f: &Flow) -> bool {
    filters
        .src
        .is_none_or(|c| f.src.is_some_and(|s| c.contains(&s)))
        && filters
            .sport
            .is_none_or(|p| f.sport.is_some_and(|s| p.contains(s)))
        && filters.pid.is_none_or(|p| f.pid == Some(p))
        && filters
            .comm
            .as_ref()
            .is_none_or(|c| f.pid.is_some() && &f.comm == c)
        && filters
            .cgroup
            .as_ref()
            .is_none_or(|c| f.cgroup.as_ref().is_some_and(|g| g.contains(c.as_str())))
}

/// Watches for the window and returns the inventory. With `watch_drops`, the drop capture
/// runs alongside and each flow says whether the current ruleset dropped it.
pub async fn collect(
    filters: &FilterArgs,
    duration: Option<Duration>,
    watch_drops: bool,
) -> anyhow::Result<Inventory> {
    let kernel_filters = filters.to_filters()?;
    let kernel = KernelBtf::load()?;
    // First: it may mount tracefs in a private mount namespace, which needs one thread.
    let mut cap = kernel::InventoryCapture::start(&kernel, &kernel_filters)?;
    let mut blind_spots = cap.blind_spots.clone();
    let mut sources = cap.sources.clone();
    let capture_args = CaptureArgs {
        duration,
        ..CaptureArgs::default()
    };
    let mut session = if watch_drops {
        match Session::start(filters, &capture_args, false) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("cannot watch drops: {e:#}");
                blind_spots.push(format!("drops: {}", terminal(&format!("{e:#}"))));
                None
            }
        }
    } else {
        None
    };
    // Everything is attached: give up what the rest of the run does not need.
    crate::kernel::privileges::drop_after_attach();
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let started = Instant::now();
    let started_wall = jiff::Timestamp::now();

    let selector = filters.netns_selector();
    let netns_label = match (&selector, kernel_filters.netns) {
        (NetnsSelector::All, _) => "all".to_string(),
        (_, Some(ino)) => format!("{} ({ino})", filters.netns),
        (_, None) => filters.netns.clone(),
    };
    let until = match duration {
        Some(d) => format!("for {} or until Ctrl-C", humantime::format_duration(d)),
        None => "until Ctrl-C".to_string(),
    };
    let drops_from = session
        .as_ref()
        .map(|_| "NETFILTER_DROP drops of the flow seen during the window (kfree_skb)".to_string());
    if let Some(s) = &session {
        sources.push(format!("drops: {}", s.capture.mode));
    }
    eprintln!(
        "droptrace: inventory of outbound flows in netns {} via {}, {until}",
        terminal(&netns_label),
        sources.join(", "),
    );

    let mut book = Book::default();
    let mut drop_records: Vec<DropRecord> = Vec::new();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let deadline = duration.map(|d| tokio::time::Instant::from_std(started + d));

    let drops_side = async {
        let result = match session.as_mut() {
            Some(s) => {
                s.run(&capture_args, |r| {
                    drop_records.push(r.clone());
                    Ok(())
                })
                .await
            }
            None => {
                let sleep =
                    tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now));
                tokio::select! {
                    _ = sigint.recv() => {}
                    _ = sigterm.recv() => {}
                    _ = sleep, if deadline.is_some() => {}
                }
                Ok(())
            }
        };
        let _ = stop_tx.send(true);
        result
    };
    let inventory_side = async {
        // Counts are read exactly at the end; meanwhile this only picks up flows whose
        // first sighting did not fit in the ring buffer, while their process still exists.
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            let stop = tokio::select! {
                r = cap.readable() => { r?; false }
                _ = tick.tick() => { book.refresh(cap.flows()); false }
                _ = stop_rx.changed() => true,
            };
            cap.drain(&mut batch);
            for (key, state) in batch.drain(..) {
                book.first(key, state);
            }
            if stop {
                break;
            }
        }
        book.refresh(cap.flows());
        anyhow::Ok(())
    };
    let (drops_result, inventory_result) = tokio::join!(drops_side, inventory_side);
    inventory_result?;
    drops_result?;
    let lost = cap.lost();
    drop(cap);
    drop(session);
    let duration_s = started.elapsed().as_secs_f64();

    // Enrich: namespace names, routes, cgroups of processes that already exited.
    let clock = Clock::new();
    let mut names = NetnsNames::new();
    let mut cgroups = CgroupPaths::default();
    let mut routes: HashMap<(u32, IpAddr, u32), Option<crate::enrich::routes::Route>> =
        HashMap::new();
    let mut netns_paths: HashMap<u32, Option<Option<PathBuf>>> = HashMap::new();
    let mut flows: Vec<Flow> = Vec::new();
    for (key, seen) in &book.flows {
        let mut f = flow_of(key, seen, &clock);
        f.netns_name = names.name(key.netns);
        if f.cgroup.is_none()
            && let Some(path) = cgroups.get(seen.state.cgroup_id)
        {
            f.container = container_of(&path);
            f.cgroup = Some(path);
        }
        let route = routes
            .entry((key.netns, f.dst, f.mark))
            .or_insert_with(|| {
                let ns = netns_paths
                    .entry(key.netns)
                    .or_insert_with(|| crate::enrich::netns::path_of(key.netns))
                    .clone()?;
                crate::enrich::routes::lookup(ns.as_deref(), f.dst, f.mark)
            })
            .clone();
        if let Some(r) = route {
            f.oif = r.dev;
            if f.src.is_none() {
                f.src = r.src;
            }
        }
        flows.push(f);
    }
    if watch_drops && drops_from.is_some() {
        let idx = DropIndex::new(&drop_records);
        let mut unseen = idx.unseen_flows(&flows);
        flows.append(&mut unseen);
        idx.mark(&mut flows);
    }
    flows.retain(|f| wanted(filters, f));
    Ok(Inventory {
        kind: "inventory".into(),
        version: FORMAT_VERSION,
        started: started_wall.to_string(),
        duration_s,
        netns: netns_label,
        filters: filters.describe(),
        sources,
        blind_spots,
        drops_from,
        lost,
        services: services(flows),
    })
}

/// `HH:MM:SS.mmm` of an RFC 3339 time (UTC), for the table.
fn clock_time(rfc3339: &str) -> String {
    rfc3339
        .parse::<jiff::Timestamp>()
        .map(|t| t.strftime("%H:%M:%S%.3f").to_string())
        .unwrap_or_else(|_| terminal(rfc3339).into_owned())
}

/// The readable table: one line per service, its processes, and what dropped it.
pub fn write_table(out: &mut impl io::Write, inv: &Inventory) -> io::Result<()> {
    writeln!(
        out,
        "{:<6} {:<28} {:>6}  {:<12}  {:<12}  {:<7}  PROCESSES",
        "PROTO", "DESTINATION", "COUNT", "FIRST(UTC)", "LAST(UTC)", "DROPPED"
    )?;
    for s in &inv.services {
        let dropped = match s.dropped {
            Some(true) => "YES",
            Some(false) => "no",
            None => "?",
        };
        const SHOWN: usize = 4;
        let mut procs = s
            .processes
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if s.processes.len() > SHOWN {
            procs.push_str(&format!(" +{} more", s.processes.len() - SHOWN));
        }
        writeln!(
            out,
            "{:<6} {:<28} {:>6}  {:<12}  {:<12}  {:<7}  {}",
            s.proto,
            s.destination(),
            s.count,
            clock_time(&s.first_seen),
            clock_time(&s.last_seen),
            dropped,
            procs
        )?;
        for by in &s.dropped_by {
            writeln!(out, "{:>8}dropped by {}", "", terminal(by))?;
        }
    }
    let flows: usize = inv.services.iter().map(|s| s.flows.len()).sum();
    let dropped = inv
        .services
        .iter()
        .filter(|s| s.dropped == Some(true))
        .count();
    write!(
        out,
        "{} service(s), {flows} flow(s) in {:.1}s",
        inv.services.len(),
        inv.duration_s
    )?;
    if inv.drops_from.is_some() {
        writeln!(out, "; {dropped} dropped by the current ruleset")?;
    } else {
        writeln!(out, "; drops not watched")?;
    }
    if inv.lost > 0 {
        writeln!(
            out,
            "note: {} first sighting(s) arrived late; their process details may be missing",
            inv.lost
        )?;
    }
    for b in &inv.blind_spots {
        writeln!(out, "note: {}", terminal(b))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    fn flow(port: u16, pid: u32, comm: &str) -> Flow {
        Flow {
            netns: 4026532300,
            netns_name: Some("client".into()),
            proto: "tcp".into(),
            dst: "203.0.113.10".parse().unwrap(),
            dport: Some(port),
            icmp_type: None,
            icmp_code: None,
            src: Some("198.51.100.2".parse().unwrap()),
            sport: None,
            oif: Some("veth-c".into()),
            pid: Some(pid),
            comm: comm.into(),
            cmdline: None,
            cgroup: None,
            container: None,
            uid: Some(0),
            mark: 0,
            count: 1,
            first_seen: "2026-11-24T10:30:00Z".into(),
            last_seen: "2026-11-24T10:30:01Z".into(),
            seen_by: "connect".into(),
            dropped: None,
            drops: 0,
            dropped_by: vec![],
        }
    }

    fn inventory(flows: Vec<Flow>) -> Inventory {
        Inventory {
            kind: "inventory".into(),
            version: FORMAT_VERSION,
            started: "2026-11-24T10:30:00Z".into(),
            duration_s: 10.0,
            netns: "client (4026532300)".into(),
            filters: String::new(),
            sources: vec![],
            blind_spots: vec![],
            drops_from: Some("test".into()),
            lost: 0,
            services: services(flows),
        }
    }

    #[test]
    fn flows_group_into_services_with_their_processes() {
        let mut a = flow(8443, 812, "java");
        a.count = 3;
        let mut b = flow(8443, 813, "java");
        b.first_seen = "2026-11-24T10:29:59Z".into();
        let c = flow(443, 900, "curl");
        let s = services(vec![a, b, c]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].dport, Some(443), "sorted by port");
        let java = &s[1];
        assert_eq!(java.count, 4);
        assert_eq!(java.processes, ["java[813]", "java[812]"]);
        assert_eq!(java.first_seen, "2026-11-24T10:29:59Z");
        assert_eq!(java.dropped, None, "drops not watched: unknown, not `no`");
    }

    #[test]
    fn drops_mark_their_flows_and_name_the_rule() {
        // sample(): tcp SYN 198.51.100.2:40000 -> 203.0.113.10:8443 from java[812], OUTPUT.
        let mut d = sample();
        d.count = 2;
        let mut retrans = sample();
        retrans.pid = None; // a retransmission, dropped in softirq
        let idx = DropIndex::new(&[d, retrans]);
        let mut flows = vec![
            flow(8443, 812, "java"),
            flow(8443, 999, "other"),
            flow(443, 900, "curl"),
        ];
        idx.mark(&mut flows);
        assert_eq!(flows[0].dropped, Some(true));
        assert_eq!(
            flows[0].drops, 3,
            "the retransmission is java's: same local port"
        );
        assert_eq!(flows[0].dropped_by, ["OUTPUT (nftables/ip)"]);
        assert_eq!(
            (flows[1].drops, flows[1].dropped),
            (0, Some(false)),
            "another process of the same service was never dropped"
        );
        assert_eq!(flows[2].dropped, Some(false));
        let s = services(flows);
        assert_eq!(
            s.iter().find(|s| s.dport == Some(8443)).unwrap().drops,
            3,
            "each drop counted once"
        );
        assert_eq!(s[0].dropped, Some(false));
    }

    #[test]
    fn dropped_replies_break_the_flow_too() {
        let mut reply = sample();
        reply.hook = Some(Hook::Input);
        reply.src = "203.0.113.10".parse().unwrap();
        reply.sport = Some(443);
        reply.dst = "198.51.100.2".parse().unwrap();
        reply.dport = Some(40000);
        reply.pid = None;
        let idx = DropIndex::new(&[reply]);
        assert!(idx.first_packets.is_empty(), "a reply is not a flow start");
        let mut flows = vec![flow(443, 900, "curl")];
        idx.mark(&mut flows);
        assert_eq!(flows[0].dropped, Some(true));
        assert!(flows[0].dropped_by[0].starts_with("reply dropped by "));
    }

    #[test]
    fn flows_seen_only_dropped_are_listed() {
        let idx = DropIndex::new(&[sample(), sample()]);
        let unseen = idx.unseen_flows(&[]);
        assert_eq!(unseen.len(), 1);
        assert_eq!(unseen[0].seen_by, "drop");
        assert_eq!(unseen[0].count, 2);
        assert_eq!(unseen[0].pid, Some(812));
        assert!(idx.unseen_flows(&[flow(8443, 812, "java")]).is_empty());
    }

    #[test]
    fn inventory_files_round_trip_and_bad_ones_say_why() {
        let inv = inventory(vec![flow(8443, 812, "java"), flow(443, 900, "curl")]);
        let text = serde_json::to_string_pretty(&inv).unwrap();
        assert_eq!(parse(&text).unwrap(), inv);
        for (bad, why) in [
            ("", "not a droptrace inventory"),
            ("tcp://203.0.113.10:443\n", "not a droptrace inventory"),
            (r#"{"type":"verify"}"#, "no \"type\": \"inventory\""),
            (r#"{"type":"inventory","version":99}"#, "version 99"),
            (r#"{"type":"inventory"}"#, "version missing"),
            (
                r#"{"type":"inventory","version":1,"services":[{"proto":"tcp"}]}"#,
                "malformed inventory",
            ),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn probe_targets_come_from_tcp_and_udp_services() {
        let mut udp = flow(53, 1, "resolved");
        udp.proto = "udp".into();
        let mut ping = flow(0, 2, "ping");
        ping.proto = "icmp".into();
        ping.dport = None;
        ping.icmp_type = Some(8);
        let inv = inventory(vec![flow(8443, 812, "java"), udp, ping]);
        let text = serde_json::to_string(&inv).unwrap();
        let targets = probe_targets_from_file(&text).unwrap().unwrap();
        let shown: Vec<String> = targets.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["tcp://203.0.113.10:8443", "udp://203.0.113.10:53"]);
        assert!(probe_targets_from_file("tcp://203.0.113.10:443\n").is_none());
        assert!(probe_targets_from_file(r#"{"type":"other"}"#).is_none());
        assert!(
            probe_targets_from_file(r#"{"type":"inventory","version":1}"#)
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn the_table_escapes_what_processes_chose() {
        let mut evil = flow(8443, 812, "\x1b[2Jjava");
        evil.container = Some("pay\u{202e}ments.service".into());
        evil.dropped = Some(true);
        evil.dropped_by = vec!["filter/OUTPUT rule 4 `-A OUTPUT -j DROP \x1b]0;x\x07`".into()];
        let mut buf = Vec::new();
        write_table(&mut buf, &inventory(vec![evil])).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(
            !text.contains('\x1b') && !text.contains('\u{202e}'),
            "{text}"
        );
        assert!(
            text.contains("\\x1b[2Jjava[812]@pay\\u{202e}ments.service"),
            "{text}"
        );
        assert!(text.contains("YES"), "{text}");
        assert!(text.contains("10:30:00.000"), "{text}");
        assert!(text.contains("1 service(s), 1 flow(s)"), "{text}");
    }

    #[test]
    fn userspace_filters_apply_to_flows() {
        let f = flow(8443, 812, "java");
        let mut args = FilterArgs::default();
        assert!(wanted(&args, &f));
        args.comm = Some("curl".into());
        assert!(!wanted(&args, &f));
        args.comm = Some("java".into());
        args.src = Some("198.51.100.0/24".parse().unwrap());
        assert!(wanted(&args, &f));
        args.sport = Some("1024-65535".parse().unwrap());
        assert!(!wanted(&args, &f), "no source port known: not in the range");
    }

    #[test]
    fn icmp_services_read_as_echo() {
        let mut ping = flow(0, 2, "ping");
        ping.proto = "icmp".into();
        ping.dport = None;
        ping.icmp_type = Some(8);
        assert_eq!(services(vec![ping])[0].destination(), "203.0.113.10 echo");
    }

    #[test]
    fn cgroup2_mount_is_found_in_mountinfo() {
        let mi = "35 24 0:30 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory\n\
36 24 0:31 / /sys/fs/cgroup/unified rw,relatime shared:15 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(mi).as_deref(), Some("/sys/fs/cgroup/unified"));
        assert_eq!(cgroup2_mount("garbage"), None);
    }
}
