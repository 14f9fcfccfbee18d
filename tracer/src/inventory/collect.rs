//! Taking an inventory: the kernel programs of [`crate::kernel::inventory`] record every distinct
//! outbound flow (TCP connection attempts, UDP and ICMP echo sends, seen before the
//! firewall), a [`Session`] runs beside them for the drops, and both are folded into an
//! [`Inventory`]: flows grouped into services, each marked dropped when the kernel reported
//! drops of its packets, with the rule that dropped them.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio::signal::unix::{SignalKind, signal};
use tracer_common::{
    InventoryKey, InventoryState, inventory as k,
    netfilter::{CtState, icmp_of_port, ip_addr, ipproto},
};

use crate::{
    enrich::netns::{NetnsNames, NetnsSelector},
    enrich::procinfo::{ProcCache, ProcInfo, container_of},
    escape::terminal,
    kernel::btf::KernelBtf,
    kernel::filter::proto_name,
    kernel::program::c_string,
    kernel::stack::Hook,
    record::DropRecord,
    session::Session,
    session::options::{CaptureArgs, FilterArgs},
};

use super::document::*;

/// Wall-clock dates for the kernel's monotonic timestamps.
pub(crate) struct Clock {
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
pub(crate) struct Seen {
    state: InventoryState,
    proc: Option<ProcInfo>,
}

/// Every flow seen so far.
#[derive(Default)]
pub(crate) struct Book {
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

/// The flow the kernel saw, before routes and drops are added.
pub(crate) fn flow_of(key: &InventoryKey, seen: &Seen, clock: &Clock) -> Flow {
    let s = &seen.state;
    let icmp = ipproto::is_icmp(key.proto);
    let src = ip_addr(key.family, &s.saddr);
    let info = seen.proc.clone().unwrap_or_default();
    Flow {
        netns: key.netns,
        netns_name: None,
        proto: proto_name(key.proto),
        dst: ip_addr(key.family, &key.daddr),
        dport: (!icmp).then_some(key.dport),
        icmp_type: icmp.then_some(icmp_of_port(key.dport).0),
        icmp_code: icmp.then_some(icmp_of_port(key.dport).1),
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
pub(crate) struct CgroupPaths {
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

pub(crate) fn scan_cgroups() -> HashMap<u64, String> {
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
pub(crate) fn cgroup2_mount(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(str::to_string))?
    })
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Sender {
    Process(u32),
    /// The flow's local port, which names the flow when no process does.
    Port(Option<u16>),
}

/// Drops of the window, indexed by the service they belong to.
#[derive(Default)]
pub(crate) struct DropIndex {
    /// Packets dropped, and what dropped them.
    by_service: BTreeMap<DropKey, (u64, BTreeSet<String>)>,
    /// First packets dropped on the way out, for flows that started before the window.
    first_packets: Vec<DropRecord>,
}

/// What dropped a record, in words.
pub(crate) fn drop_label(r: &DropRecord) -> String {
    r.dropped_by()
}

impl DropIndex {
    pub(crate) fn new(records: &[DropRecord]) -> Self {
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
            if egress && first_packet && matches!(r.ct_state.state(), Some(CtState::New) | None) {
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
    pub(crate) fn mark(&self, flows: &mut [Flow]) {
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
    pub(crate) fn unseen_flows(&self, flows: &[Flow]) -> Vec<Flow> {
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
pub(crate) fn services(flows: Vec<Flow>) -> Vec<Service> {
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
pub(crate) fn wanted(filters: &FilterArgs, f: &Flow) -> bool {
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
    let mut cap =
        crate::kernel::inventory::InventoryCapture::start(&kernel, &kernel_filters, false)?;
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
        (_, None) => filters.netns.given.clone(),
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

/// A service in one namespace, as sent to by one process, or (no known process: a
/// retransmission or reply dropped in softirq) from one local port.
pub(crate) type DropKey = (ServiceKey, u32, Sender);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernel::stack::Hook;
    use crate::record::tests::sample;

    pub(crate) fn flow(port: u16, pid: u32, comm: &str) -> Flow {
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

    pub(crate) fn inventory(flows: Vec<Flow>) -> Inventory {
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
