//! `droptrace inventory`: the outbound flows the host starts, seen before the firewall.
//!
//! The inventory must see a flow even when the current ruleset drops it, and must name the
//! process that opened it, so every hook here runs before netfilter's OUTPUT hook and in
//! the sending task's context. On our kernels only tracepoints and tp_btf attach (no
//! kprobes, no fentry), which rules out hooking `udp_sendmsg` or `ip_local_out` directly:
//!
//! - TCP: the classic tracepoint `sock:inet_sock_set_state` with `newstate == SYN_SENT`,
//!   set by `tcp_v4_connect`/`tcp_v6_connect` in the `connect()` caller. One per connection
//!   attempt (SYN retransmissions do not repeat it). Its record carries the addresses and
//!   ports, so only the socket's namespace is read from kernel memory.
//! - UDP and ICMP echo: there is no "datagram sent" tracepoint that carries the
//!   destination, but every unconnected send routes the datagram first, and the route
//!   lookup tracepoints (`tp_btf/fib_table_lookup`, `tp_btf/fib6_table_lookup`) see the
//!   full flow key (`struct flowi4/6`: addresses, protocol, ports or ICMP type, mark, uid)
//!   in the sender's context, before netfilter. A lookup alone is not a send, though:
//!   `connect()` on a UDP socket routes too, and glibc connects UDP sockets only to sort a
//!   host's addresses, sending nothing. So a lookup is parked ([`INV_PENDING`], keyed by
//!   thread, protocol and source port) and becomes a flow only when
//!   `tp_btf/sock_send_length` — the end of every `sock_sendmsg` — fires on the same thread
//!   for a socket of that protocol, bound to that port, in the same namespace. The port
//!   matters: on loopback and veth the receiver runs inside the sender's `sendmsg`, and
//!   the ICMP error it may send routes the *reversed* flow (`xfrm_decode_session_reverse`)
//!   on the very same thread before the send returns. Connected sockets do not route each
//!   datagram: for them the send itself is the sighting, and the peer is read from the
//!   socket.
//! - `net:net_dev_queue` and cgroup egress programs were rejected: they run after
//!   netfilter (a dropped flow never reaches them) and, for a packet queued behind ARP, in
//!   softirq context, where the current task is not the sender.
//!
//! Each flow (namespace, destination, port or ICMP type, protocol, process) is counted in
//! an LRU table ([`INV_FLOWS`]); its first sighting also goes to a ring buffer so userspace
//! reads the process's command line and cgroup while the process still exists.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::bpf_get_current_comm,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::{
    AF_INET, AF_INET6, InventoryConfig, InventoryEvent, InventoryKey, InventoryPending,
    InventoryState, NO_OFFSET,
    inventory::{
        LOOPBACK_IFINDEX, SOURCE_CONNECTED_SEND, SOURCE_ROUTED_SEND, SOURCE_TCP_CONNECT,
        STAT_COUNT, STAT_LOST, TCP_ESTABLISHED, TCP_SYN_SENT,
    },
    netfilter::{
        icmp_port,
        ipproto::{
            ICMP as IPPROTO_ICMP, ICMPV6 as IPPROTO_ICMPV6, TCP as IPPROTO_TCP, UDP as IPPROTO_UDP,
            UDPLITE as IPPROTO_UDPLITE,
        },
    },
};

use crate::drops::{
    CONFIG,
    headers::{port_in, prefix_matches},
};

/// Like `drops::read`, for callers that must tell a failed read (or a null base) from a zero.
/// It branches on the result, so the main drop path avoids it (see `drops::read`).
#[inline(always)]
pub(crate) fn read_checked<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 || off == NO_OFFSET {
        return None;
    }
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// Written by the loader before the programs are verified (read-only data).
#[unsafe(no_mangle)]
static INVENTORY: InventoryConfig = InventoryConfig::EMPTY;

/// Reads one field of [`INVENTORY`] (volatile, for the same reasons as `conf!`).
macro_rules! inv {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const INVENTORY.$field) }
    };
}

// Declared tiny: `watch` loads this object too and never uses them. `inventory` sizes them
// at load time (tracer_common::inventory::{MAX_FLOWS, MAX_PENDING, RING_BYTES}).

/// Every flow seen, with its counters.
#[map]
static INV_FLOWS: LruHashMap<InventoryKey, InventoryState> = LruHashMap::with_max_entries(1, 0);

/// Route lookups for outgoing datagrams, until their send: by [`pending_key`].
#[map]
static INV_PENDING: LruHashMap<u64, InventoryPending> = LruHashMap::with_max_entries(1, 0);

/// First sightings, for userspace.
#[map]
static INV_EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Per-CPU room where [`record`] assembles a new flow's key, state and event, off the
/// stack. Nothing else runs in it meanwhile: a program run does not nest on its CPU (the
/// tracepoint and tp_btf runners keep one run per CPU), and only [`record`] uses it, from
/// the sending task's context.
#[map]
static INV_SCRATCH: PerCpuArray<InventoryEvent> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU: first sightings that did not fit in the ring buffer (the flow is still in
/// [`INV_FLOWS`]).
#[map]
static INV_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

const ICMP_ECHO: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// TCP connection attempts: `connect()` moves the socket to SYN_SENT.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inventory_tcp(ctx: TracePointContext) -> i32 {
    let _ = tcp_connect(&ctx);
    0
}

#[inline(always)]
fn field<T>(ctx: &TracePointContext, off: u32) -> Option<T> {
    if off == NO_OFFSET {
        return None;
    }
    unsafe { ctx.read_at::<T>(off as usize) }.ok()
}

fn tcp_connect(ctx: &TracePointContext) -> Option<()> {
    let newstate: i32 = field(ctx, inv!(tp_newstate))?;
    if newstate as u32 != TCP_SYN_SENT {
        return None;
    }
    let protocol: u16 = field(ctx, inv!(tp_protocol))?;
    if protocol != IPPROTO_TCP as u16 {
        return None;
    }
    let family: u16 = field(ctx, inv!(tp_family))?;
    let sk: u64 = field(ctx, inv!(tp_skaddr))?;
    let mut key = InventoryKey {
        daddr: [0; 16],
        netns: sock_netns(sk),
        tgid: 0,
        dport: field(ctx, inv!(tp_dport))?,
        family: AF_INET,
        proto: IPPROTO_TCP,
    };
    let mut saddr = [0u8; 16];
    let v4 = |ctx: &TracePointContext, key: &mut InventoryKey, saddr: &mut [u8; 16]| {
        let d: [u8; 4] = field(ctx, inv!(tp_daddr))?;
        let s: [u8; 4] = field(ctx, inv!(tp_saddr))?;
        key.daddr[..4].copy_from_slice(&d);
        saddr[..4].copy_from_slice(&s);
        Some(())
    };
    if family == AF_INET as u16 {
        v4(ctx, &mut key, &mut saddr)?;
    } else if family == AF_INET6 as u16 {
        let d: [u8; 16] = field(ctx, inv!(tp_daddr_v6))?;
        if v4_mapped(&d) {
            // An IPv6 socket connecting to an IPv4 peer: the kernel sends IPv4.
            v4(ctx, &mut key, &mut saddr)?;
        } else {
            key.daddr = d;
            key.family = AF_INET6;
            saddr = field(ctx, inv!(tp_saddr_v6)).unwrap_or([0; 16]);
        }
    } else {
        return None;
    }
    let seen = InventoryPending {
        key,
        mark: read_checked::<u32>(sk, inv!(sk_mark)).unwrap_or(0),
        saddr,
        uid: read_checked::<u32>(sk, conf_offset_sk_uid()).unwrap_or(u32::MAX),
        sport: field(ctx, inv!(tp_sport)).unwrap_or(0),
        _pad: 0,
    };
    record(&seen, SOURCE_TCP_CONNECT)
}

#[inline(always)]
fn conf_offset_sk_uid() -> u32 {
    unsafe { core::ptr::read_volatile(&raw const CONFIG.offsets.sk_uid) }
}

#[inline(always)]
fn v4_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff
}

/// The namespace inode of a socket (0 when it cannot be read).
#[inline(always)]
fn sock_netns(sk: u64) -> u32 {
    let (sk_net, inum) = unsafe {
        (
            core::ptr::read_volatile(&raw const CONFIG.offsets.sk_net),
            core::ptr::read_volatile(&raw const CONFIG.offsets.net_ns_inum),
        )
    };
    read_checked::<u64>(sk, sk_net)
        .and_then(|net| read_checked::<u32>(net, inum))
        .unwrap_or(0)
}

/// The flow's port field for a datagram protocol we inventory, from `flowi_uli`
/// (`ports.dport`, `ports.sport` in network order; or `icmpt.type`, `icmpt.code`):
/// `(dport, sport)`, or `None` for anything but UDP, UDP-Lite and ICMP echo requests.
#[inline(always)]
fn datagram_ports(proto: u8, uli: &[u8; 4]) -> Option<(u16, u16)> {
    match proto {
        IPPROTO_UDP | IPPROTO_UDPLITE => Some((
            u16::from_be_bytes([uli[0], uli[1]]),
            u16::from_be_bytes([uli[2], uli[3]]),
        )),
        IPPROTO_ICMP if uli[0] == ICMP_ECHO => Some((icmp_port(uli[0], uli[1]), 0)),
        IPPROTO_ICMPV6 if uli[0] == ICMPV6_ECHO_REQUEST => Some((icmp_port(uli[0], uli[1]), 0)),
        _ => None,
    }
}

/// IPv4 route lookups: `(tb_id, const struct flowi4 *, const struct fib_nh_common *, err)`.
#[btf_tracepoint(function = "fib_table_lookup")]
pub fn inventory_route4(ctx: BtfTracePointContext) -> i32 {
    let flp: u64 = ctx.arg(1);
    let nhc: u64 = ctx.arg(2);
    let err: i32 = ctx.arg(3);
    if err == 0 {
        let _ = route4(flp, nhc);
    }
    0
}

fn route4(flp: u64, nhc: u64) -> Option<()> {
    let iif: u32 = read_checked(flp, inv!(fl4_iif))?;
    if iif != LOOPBACK_IFINDEX {
        return None; // a received or forwarded packet's lookup
    }
    let proto: u8 = read_checked(flp, inv!(fl4_proto))?;
    let uli: [u8; 4] = read_checked(flp, inv!(fl4_uli))?;
    let (dport, sport) = datagram_ports(proto, &uli)?;
    // The route's device lives in the namespace that routed the datagram.
    let (nd_net, inum) = unsafe {
        (
            core::ptr::read_volatile(&raw const CONFIG.offsets.dev_nd_net),
            core::ptr::read_volatile(&raw const CONFIG.offsets.net_ns_inum),
        )
    };
    let dev: u64 = read_checked(nhc, inv!(nhc_dev))?;
    let net: u64 = read_checked(dev, nd_net)?;
    let netns: u32 = read_checked(net, inum)?;
    let d: [u8; 4] = read_checked(flp, inv!(fl4_daddr))?;
    let s: [u8; 4] = read_checked(flp, inv!(fl4_saddr)).unwrap_or([0; 4]);
    let mut pending = InventoryPending {
        key: InventoryKey {
            daddr: [0; 16],
            netns,
            tgid: 0,
            dport,
            family: AF_INET,
            proto,
        },
        mark: read_checked(flp, inv!(fl4_mark)).unwrap_or(0),
        saddr: [0; 16],
        uid: read_checked(flp, inv!(fl4_uid)).unwrap_or(u32::MAX),
        sport,
        _pad: 0,
    };
    pending.key.daddr[..4].copy_from_slice(&d);
    pending.saddr[..4].copy_from_slice(&s);
    park(&pending)
}

/// IPv6 route lookups: `(net, const struct fib6_result *, table, const struct flowi6 *)`.
/// Fires once per table tried; a table without a route answers with the null entry.
#[btf_tracepoint(function = "fib6_table_lookup")]
pub fn inventory_route6(ctx: BtfTracePointContext) -> i32 {
    let net: u64 = ctx.arg(0);
    let res: u64 = ctx.arg(1);
    let flp: u64 = ctx.arg(3);
    let _ = route6(net, res, flp);
    0
}

fn route6(net: u64, res: u64, flp: u64) -> Option<()> {
    let iif: u32 = read_checked(flp, inv!(fl6_iif))?;
    if iif != LOOPBACK_IFINDEX {
        return None;
    }
    let proto: u8 = read_checked(flp, inv!(fl6_proto))?;
    let uli: [u8; 4] = read_checked(flp, inv!(fl6_uli))?;
    let (dport, sport) = datagram_ports(proto, &uli)?;
    if let (Some(f6i), Some(null)) = (
        read_checked::<u64>(res, inv!(res6_f6i)),
        read_checked::<u64>(net, inv!(net_fib6_null_entry)),
    ) && f6i == null
    {
        return None; // no route in this table
    }
    let inum = unsafe { core::ptr::read_volatile(&raw const CONFIG.offsets.net_ns_inum) };
    let pending = InventoryPending {
        key: InventoryKey {
            daddr: read_checked(flp, inv!(fl6_daddr))?,
            netns: read_checked(net, inum)?,
            tgid: 0,
            dport,
            family: AF_INET6,
            proto,
        },
        mark: read_checked(flp, inv!(fl6_mark)).unwrap_or(0),
        saddr: read_checked(flp, inv!(fl6_saddr)).unwrap_or([0; 16]),
        uid: read_checked(flp, inv!(fl6_uid)).unwrap_or(u32::MAX),
        sport,
        _pad: 0,
    };
    park(&pending)
}

const EMPTY_PENDING: InventoryPending = InventoryPending {
    key: InventoryKey {
        daddr: [0; 16],
        netns: 0,
        tgid: 0,
        dport: 0,
        family: 0,
        proto: 0,
    },
    mark: 0,
    saddr: [0; 16],
    uid: 0,
    sport: 0,
    _pad: 0,
};

/// Thread, source port (0 for ICMP) and protocol of a parked lookup.
#[inline(always)]
fn pending_key(sport: u16, proto: u8) -> u64 {
    let tid = bpf_get_current_pid_tgid() as u32;
    (tid as u64) << 32 | (sport as u64) << 8 | proto as u64
}

#[inline(always)]
fn park(p: &InventoryPending) -> Option<()> {
    INV_PENDING
        .insert(&pending_key(p.sport, p.key.proto), p, 0)
        .ok()
}

/// The end of every `sock_sendmsg`: `(struct sock *sk, int ret, int flags)`. Failed sends
/// count too: a datagram the firewall dropped fails with EPERM, and it is exactly the
/// flow the inventory must not miss.
#[btf_tracepoint(function = "sock_send_length")]
pub fn inventory_send(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let _ = sent(sk);
    0
}

fn sent(sk: u64) -> Option<()> {
    let protocol: u16 = read_checked(sk, inv!(sk_protocol))?;
    let proto = match protocol {
        p if p == IPPROTO_UDP as u16 => IPPROTO_UDP,
        p if p == IPPROTO_UDPLITE as u16 => IPPROTO_UDPLITE,
        p if p == IPPROTO_ICMP as u16 => IPPROTO_ICMP,
        p if p == IPPROTO_ICMPV6 as u16 => IPPROTO_ICMPV6,
        _ => return None,
    };
    // The source port the lookup was parked under (ICMP flows have none).
    let sport: u16 = if proto == IPPROTO_UDP || proto == IPPROTO_UDPLITE {
        read_checked(sk, inv!(sk_num)).unwrap_or(0)
    } else {
        0
    };
    let key = pending_key(sport, proto);
    // Copied into a zeroed record rather than an Option: the verifier refuses the
    // uninitialised payload of a `None` being copied around.
    let mut pending = EMPTY_PENDING;
    let parked = match unsafe { INV_PENDING.get(&key) } {
        Some(p) => {
            pending = *p;
            true
        }
        None => false,
    };
    if parked {
        let _ = INV_PENDING.remove(&key);
    }
    let netns = sock_netns(sk);
    let uid = read_checked::<u32>(sk, conf_offset_sk_uid()).unwrap_or(u32::MAX);
    let mark = read_checked::<u32>(sk, inv!(sk_mark)).unwrap_or(0);
    let state: u8 = read_checked(sk, inv!(sk_state)).unwrap_or(0);
    if state == TCP_ESTABLISHED {
        // A connected socket: no lookup per datagram; its peer is the destination.
        return connected_send(sk, proto, netns, uid, mark);
    }
    if !parked || pending.key.proto != proto || pending.key.netns != netns {
        return None;
    }
    record(&pending, SOURCE_ROUTED_SEND)
}

fn connected_send(sk: u64, proto: u8, netns: u32, uid: u32, mark: u32) -> Option<()> {
    let family: u16 = read_checked(sk, inv!(sk_family))?;
    let dport = match proto {
        IPPROTO_ICMP => icmp_port(ICMP_ECHO, 0),
        IPPROTO_ICMPV6 => icmp_port(ICMPV6_ECHO_REQUEST, 0),
        _ => u16::from_be(read_checked::<u16>(sk, inv!(sk_dport))?),
    };
    let sport: u16 = read_checked(sk, inv!(sk_num)).unwrap_or(0);
    let mut key = InventoryKey {
        daddr: [0; 16],
        netns,
        tgid: 0,
        dport,
        family: AF_INET,
        proto,
    };
    let mut saddr = [0u8; 16];
    let mut v6 = false;
    if family == AF_INET6 as u16 {
        let d: [u8; 16] = read_checked(sk, inv!(sk_v6_daddr))?;
        if !v4_mapped(&d) {
            v6 = true;
            key.daddr = d;
            key.family = AF_INET6;
            saddr = read_checked(sk, inv!(sk_v6_rcv_saddr)).unwrap_or([0; 16]);
        }
    } else if family != AF_INET as u16 {
        return None;
    }
    if !v6 {
        let d: [u8; 4] = read_checked(sk, inv!(sk_daddr))?;
        let s: [u8; 4] = read_checked(sk, inv!(sk_rcv_saddr)).unwrap_or([0; 4]);
        key.daddr[..4].copy_from_slice(&d);
        saddr[..4].copy_from_slice(&s);
    }
    let seen = InventoryPending {
        key,
        mark,
        saddr,
        uid,
        sport,
        _pad: 0,
    };
    record(&seen, SOURCE_CONNECTED_SEND)
}

/// Applies the user's filters (the same `CONFIG` fields as drops: namespace, family,
/// protocol, destination, destination port) and counts the flow; a new flow is also
/// written to the ring buffer. `seen` is one sighting (the pending record's shape: BPF
/// functions take at most five arguments).
///
/// Never inlined, and its frame kept small: its callers' frames and this one share the
/// verifier's 512 bytes (a fresh toolchain once built 176 + 344 here, which the verifier
/// refused), so the new flow's key, state and event are assembled in [`INV_SCRATCH`]
/// rather than on the stack. `cargo xtask test` checks the figures of every program.
#[inline(never)]
fn record(seen: &InventoryPending, source: u8) -> Option<()> {
    let (netns, family, proto) = unsafe {
        (
            core::ptr::read_volatile(&raw const CONFIG.netns),
            core::ptr::read_volatile(&raw const CONFIG.family),
            core::ptr::read_volatile(&raw const CONFIG.proto),
        )
    };
    if netns != 0 && seen.key.netns != netns {
        return None;
    }
    if family != 0 && family != seen.key.family {
        return None;
    }
    if proto != 0 && proto != seen.key.proto {
        return None;
    }
    let dport = unsafe { core::ptr::read_volatile(&raw const CONFIG.dport) };
    let has_ports = seen.key.proto != IPPROTO_ICMP && seen.key.proto != IPPROTO_ICMPV6;
    if !port_in(dport, seen.key.dport, has_ports) {
        return None;
    }
    let dst = unsafe { core::ptr::read_volatile(&raw const CONFIG.dst) };
    if !prefix_matches(&dst, seen.key.family, &seen.key.daddr) {
        return None;
    }

    // SAFETY: this CPU's slot of a one-entry per-CPU array, valid for this run; see
    // INV_SCRATCH for why no other program run can be using it.
    let ev = unsafe { &mut *INV_SCRATCH.get_ptr_mut(0)? };
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.key = seen.key;
    ev.key.tgid = (pid_tgid >> 32) as u32;
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(state) = INV_FLOWS.get_ptr_mut(&ev.key) {
        bump(state, now);
        return Some(());
    }
    // Field by field: a struct literal would be built on the stack and copied.
    let st = &mut ev.state;
    st.first_ns = now;
    st.last_ns = now;
    st.count = 1;
    st.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    st.saddr = seen.saddr;
    st.uid = seen.uid;
    st.mark = seen.mark;
    st.sport = seen.sport;
    st.source = source;
    st._pad = 0;
    st.tid = pid_tgid as u32;
    // SAFETY: the helper writes at most NAME_LEN bytes into the map value.
    if unsafe { bpf_get_current_comm(st.comm.as_mut_ptr().cast(), tracer_common::NAME_LEN as u32) }
        != 0
    {
        st.comm = [0; tracer_common::NAME_LEN];
    }
    ev._pad = 0;
    if INV_FLOWS
        .insert(&ev.key, &ev.state, BPF_NOEXIST as u64)
        .is_err()
    {
        // Another CPU created it in the meantime.
        bump(INV_FLOWS.get_ptr_mut(&ev.key)?, now);
        return Some(());
    }
    if INV_EVENTS.output(ev, 0).is_err()
        && let Some(lost) = INV_STATS.get_ptr_mut(STAT_LOST)
    {
        unsafe { *lost += 1 };
    }
    Some(())
}

#[inline(always)]
fn bump(state: *mut InventoryState, now: u64) {
    // SAFETY: a map value pointer, valid for this program run; other CPUs may count the
    // same flow, hence the atomic add. `last_ns` is a plain store: any recent time will do.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*state).count, 1);
        (*state).last_ns = now;
    }
}
