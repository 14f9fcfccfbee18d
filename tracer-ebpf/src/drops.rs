//! The drop programs: on the `kfree_skb` tracepoint, shared by both objects (see
//! `main.rs` and `perf.rs`, which differ only in how a record reaches userspace).
//!
//! Every freed packet passes here, so the program returns as early as it can: first the
//! drop reason (`SKB_DROP_REASON_NETFILTER_DROP` unless `--all-reasons`), then the
//! user's filters, and only then does it write a record. Offsets of kernel structs come
//! from userspace (BTF) through [`CONFIG`]; all kernel memory is read with
//! `bpf_probe_read_kernel`, which never faults.

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    mem::MaybeUninit,
};

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::generated,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::{
    AF_INET, AF_INET6, AGG_RESERVE, ANY_REASON, AggCount, AggKey, CACHE_BATCH, CACHE_TIMED,
    CT_NONE, Config, DropEvent, FLOW_UPDATE_NS, FlowCache, FlowKey, FlowState, HEADER_BYTES,
    MAX_AGGREGATES, MAX_FLOWS, NO_OFFSET, PassedKey, PortRange, Prefix, REASON_BY_LOCATION,
    SKB_COPY_BYTES, STAT_COUNT, STAT_LOST, STAT_MATCHED, STAT_UNAGGREGATED, flags,
    netfilter::{
        icmp_port,
        ipproto::{
            ICMP as IPPROTO_ICMP, ICMPV6 as IPPROTO_ICMPV6, TCP as IPPROTO_TCP, UDP as IPPROTO_UDP,
        },
    },
};

/// Written by the loader before the program is verified (read-only data).
#[unsafe(no_mangle)]
pub(crate) static CONFIG: Config = Config::EMPTY;

/// Reads one field of [`CONFIG`]. Volatile, so that the compiler neither folds in the
/// default value nor copies the whole struct onto the 512-byte BPF stack.
macro_rules! conf {
    ($($path:tt)+) => {
        unsafe { core::ptr::read_volatile(&raw const CONFIG.$($path)+) }
    };
}

/// A copy of the dropped `sk_buff`, read in one helper call (see [`SkbFields`]).
#[map]
static SKB_COPY: PerCpuArray<[u8; SKB_COPY_BYTES]> = PerCpuArray::with_max_entries(1, 0);

/// Where a record is assembled before it is copied into [`EVENTS`] (see `handle`).
#[map]
static SCRATCH: PerCpuArray<DropEvent> = PerCpuArray::with_max_entries(1, 0);

/// Packet and byte counts per flow: every drop is counted here, so totals stay exact
/// whatever happens to the ring buffer.
#[map]
static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Drops per [`AggKey`]: counted wherever the flow table is, so totals by rule location,
/// hook and destination port stay exact when flows outnumber the flow table (a port scan),
/// whose LRU then evicts flows with counts no record carried. Never evicted (see
/// [`aggregate`]).
#[map]
static AGGREGATES: HashMap<AggKey, AggCount> = HashMap::with_max_entries(MAX_AGGREGATES, 0);

/// Keys [`aggregate`] tried to add to [`AGGREGATES`] (a few more than it holds, when CPUs
/// race): past `MAX_AGGREGATES - AGG_RESERVE`, new keys go to their coarse key.
#[map]
static AGG_USED: Array<u64> = Array::with_max_entries(1, 0);

/// Update records a CPU may write per second (see `update_allowed`).
const UPDATES_PER_CPU_SECOND: u64 = 2048;

#[repr(C)]
struct UpdateBudget {
    window_ns: u64,
    used: u64,
}

#[map]
static UPDATE_BUDGET: PerCpuArray<UpdateBudget> = PerCpuArray::with_max_entries(1, 0);

/// Where a new flow's state is assembled before the flow table copies it (see
/// `count_drop`).
#[map]
static NEW_FLOW: PerCpuArray<FlowState> = PerCpuArray::with_max_entries(1, 0);

/// The flow each CPU dropped last, with the packets counted there (see [`FlowCache`]).
#[map]
static FLOW_CACHE: PerCpuArray<FlowCache> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counters: drops matched and records lost (ring buffer full).
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

const IP_VERSION_4: u8 = 4;
/// `NFCT_INFOMASK` in include/linux/skbuff.h: low bits of `skb->_nfct` hold ctinfo.
const NFCT_INFOMASK: u64 = 7;
/// `(u16)~0U`: `skb->network_header` not set (include/linux/skbuff.h).
const HEADER_UNSET: u16 = u16::MAX;

/// Arguments of `trace_kfree_skb(skb, location, reason, ...)` (include/trace/events/skb.h).
/// The reason exists since Linux 5.17; on older kernels only `match_location` applies.
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason: u32 = if conf!(tp_reason) == NO_OFFSET {
        0
    } else {
        ctx.arg(2)
    };
    let _ = handle::<_, true>(&ctx, skb, location, reason);
    0
}

/// The classic tracepoint, for kernels where tp_btf cannot attach (no BTF ids, or BTF
/// tracing refused). The record layout comes from userspace (BTF or tracefs format).
#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn kfree_skb_tp(ctx: TracePointContext) -> i32 {
    let field = |off: u32| -> u64 {
        if off == NO_OFFSET {
            0
        } else {
            unsafe { ctx.read_at::<u64>(off as usize) }.unwrap_or(0)
        }
    };
    let skb = field(conf!(tp_skb));
    let location = field(conf!(tp_location));
    let reason_off = conf!(tp_reason);
    let reason: u32 = if reason_off == NO_OFFSET {
        0
    } else {
        unsafe { ctx.read_at::<u32>(reason_off as usize) }.unwrap_or(0)
    };
    let _ = handle::<_, false>(&ctx, skb, location, reason);
    0
}

/// Whether `location` lies in one of the netfilter drop functions.
#[inline(always)]
fn in_netfilter(location: u64) -> bool {
    let within = |i: usize| {
        let (start, end) = (conf!(nf_ranges[i]), conf!(nf_ranges[i + 1]));
        location >= start && location < end
    };
    within(0) || within(2) || within(4)
}

/// Reads kernel memory at `base + off`, zero when the read fails (the helper zero-fills
/// its buffer then) or the field does not exist on this kernel.
///
/// Nothing branches on the helper's result: every branch here would double the paths the
/// verifier walks through the rest of the program, and old kernels stop at a million
/// instructions. `off` comes from frozen read-only data, so its check costs no path.
#[inline(always)]
pub(crate) fn read<T>(base: u64, off: u32) -> T {
    let mut v = MaybeUninit::<T>::uninit();
    copy_kernel(v.as_mut_ptr().cast(), size_of::<T>() as u32, base, off);
    // SAFETY: copy_kernel filled `v` with the kernel's bytes or with zeros; every T used
    // here is plain data.
    unsafe { v.assume_init() }
}

/// `bpf_probe_read_kernel` of `len` bytes at `base + off` into `dst`. The helper zero-fills
/// `dst` when the read fails, so a missing field (`off == NO_OFFSET`) is read from address
/// 0 on purpose: no branch, no compiler `memset` (an outlined call whose stack frame adds to
/// ours, over the 512 bytes old verifiers allow for the whole call chain).
#[inline(always)]
pub(crate) fn copy_kernel(dst: *mut u8, len: u32, base: u64, off: u32) {
    let src = if off == NO_OFFSET {
        0
    } else {
        base + off as u64
    };
    // SAFETY: the helper writes exactly `len` bytes at `dst`, a live buffer of that size.
    unsafe { generated::bpf_probe_read_kernel(dst.cast(), len, src as *const core::ffi::c_void) };
}

/// The dropped `sk_buff`'s fields, from one copy of the whole struct when its size is known
/// (a single helper call: each `bpf_probe_read_kernel` costs ~10 ns, paid per dropped
/// packet), else read one by one.
struct SkbFields<const BTF: bool> {
    skb: u64,
    copy: *const u8,
    size: u32,
}

impl<const BTF: bool> SkbFields<BTF> {
    #[inline(always)]
    fn copy(skb: u64) -> Option<Self> {
        if BTF {
            // Typed pointer: fields are loaded directly (see `load`), no copy needed.
            return Some(SkbFields {
                skb,
                copy: core::ptr::null(),
                size: 0,
            });
        }
        let size = conf!(offsets.skb_size);
        let buf = SKB_COPY.get_ptr_mut(0)?;
        if size != 0 {
            copy_kernel(buf.cast(), size.min(SKB_COPY_BYTES as u32), skb, 0);
        }
        Some(SkbFields {
            skb,
            copy: buf as *const u8,
            size,
        })
    }

    #[inline(always)]
    fn get<T>(&self, off: u32) -> T {
        if BTF || self.size == 0 {
            return load::<T, BTF>(self.skb, off);
        }
        if off == NO_OFFSET || off as usize + size_of::<T>() > self.size as usize {
            // SAFETY: only integers are read through here; zero is a valid value.
            return unsafe { core::mem::zeroed() };
        }
        // SAFETY: `off + size_of::<T>()` lies within the copied bytes (checked above).
        unsafe { core::ptr::read_unaligned(self.copy.add(off as usize).cast::<T>()) }
    }
}

/// Reads a field of a kernel struct. `BTF`: `base` is a pointer the verifier knows the type
/// of (a tp_btf argument, or a pointer field loaded from one), so the field is a plain load
/// that the verifier checks against BTF and the JIT guards against faults (BPF_PROBE_MEM,
/// kernel/bpf/verifier.c): about a nanosecond, against some ten for a helper call. A null
/// `base` reads as zero. Otherwise, [`read`].
#[inline(always)]
fn load<T, const BTF: bool>(base: u64, off: u32) -> T {
    if !BTF {
        return read(base, off);
    }
    // Pointers loaded from fields may be null, and the verifier refuses arithmetic on them
    // before a null check.
    if base == 0 || off == NO_OFFSET {
        // SAFETY: only integers are read through here; zero is a valid value.
        return unsafe { core::mem::zeroed() };
    }
    // SAFETY: see above; the verifier rewrites this load into a fault-safe one.
    unsafe { core::ptr::read_volatile((base + off as u64) as *const T) }
}

/// The current task's command name, written in place (zeros if it cannot be read).
#[inline(always)]
fn current_comm(dst: &mut [u8; 16]) {
    // SAFETY: the helper writes at most 16 bytes into the 16-byte array.
    unsafe { generated::bpf_get_current_comm(dst.as_mut_ptr().cast(), 16) };
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        unsafe { *counter += 1 };
    }
}

fn handle<C: EbpfContext, const BTF: bool>(
    ctx: &C,
    skb: u64,
    location: u64,
    reason: u32,
) -> Option<()> {
    let wanted = conf!(drop_reason);
    let reason = if conf!(match_location) != 0 {
        if wanted != ANY_REASON && !in_netfilter(location) {
            return None;
        }
        // No reason on this kernel: the location says whether netfilter dropped it.
        if in_netfilter(location) {
            REASON_BY_LOCATION
        } else {
            0
        }
    } else {
        if wanted != ANY_REASON && reason != wanted {
            return None;
        }
        reason
    };

    // The rule engine's verdict, if it was this packet's (see `verdict`). Taken now, so a
    // verdict for a packet filtered out below is not left for a later one. Not looked for
    // when no verdict program can run (two map lookups saved per drop: helper calls before
    // Linux 6.10); the record then reads its verdict from address 0, that is zeros.
    let (kv, kernel_saw) = if conf!(verdicts.watched) != 0 {
        crate::verdict::take(skb)?
    } else {
        (core::ptr::null_mut(), false)
    };

    let fields = SkbFields::<BTF>::copy(skb)?;
    let sk: u64 = fields.get::<u64>(conf!(offsets.skb_sk));
    let dev: u64 = fields.get::<u64>(conf!(offsets.skb_dev));

    // The namespace: the socket's if any, else the device's, else the route's device's.
    // Read in that order and no further than needed: this decides whether the drop is
    // watched at all, and every drop of the host pays for it (helper reads cost ~10 ns
    // each here, several times that on some CPUs). The socket's and device's `struct net`
    // pointers are typed (BTF loads); the route's device is reached through the untyped
    // `_skb_refdst`, so it costs two helper reads and is taken last.
    let inum = conf!(offsets.net_ns_inum);
    let sk_net: u64 = load::<_, BTF>(sk, conf!(offsets.sk_net));
    let netns: u32 = if sk_net != 0 {
        load::<_, BTF>(sk_net, inum)
    } else {
        let dev_net: u64 = load::<_, BTF>(dev, conf!(offsets.dev_nd_net));
        if dev_net != 0 {
            load::<_, BTF>(dev_net, inum)
        } else {
            // `_skb_refdst` keeps a "no reference" flag in bit 0 (SKB_DST_NOREF).
            let dst: u64 = fields.get::<u64>(conf!(offsets.skb_refdst)) & !1;
            let out_dev: u64 = read(dst, conf!(offsets.dst_dev));
            read(read::<u64>(out_dev, conf!(offsets.dev_nd_net)), inum)
        }
    };
    if conf!(netns) != 0 && netns != conf!(netns) {
        return None;
    }

    let head: u64 = fields.get::<u64>(conf!(offsets.skb_head));
    let nh: u16 = fields.get::<u16>(conf!(offsets.skb_network_header));
    if nh == HEADER_UNSET {
        return None;
    }
    let l3 = head + nh as u64;
    // The record is assembled in a per-CPU map slot, not on the stack: old verifiers allow
    // 512 bytes of stack for the whole call chain.
    // SAFETY: index 0 of one-entry per-CPU arrays; nothing else on this CPU uses them
    // while this program runs (tracing programs do not nest on one CPU).
    let e = unsafe { &mut *SCRATCH.get_ptr_mut(0)? };
    // The headers in one helper call, into the record's own buffer: the parser reads
    // them from there, and pcapng gets them without a second copy. A failed read leaves
    // zeros, which no IP version matches. With a port, protocol or family filter, the
    // first bytes come first, and a packet they rule out costs no more.
    if early_filters() {
        copy_kernel(e.headers.as_mut_ptr(), PEEK_BYTES as u32, l3, 0);
        if ruled_out_early(&e.headers) {
            return None;
        }
        // SAFETY: PEEK_BYTES < HEADER_BYTES: the rest of the record's buffer.
        let rest = unsafe { e.headers.as_mut_ptr().add(PEEK_BYTES) };
        copy_kernel(
            rest,
            (HEADER_BYTES - PEEK_BYTES) as u32,
            l3 + PEEK_BYTES as u64,
            0,
        );
    } else {
        copy_kernel(e.headers.as_mut_ptr(), HEADER_BYTES as u32, l3, 0);
    }
    let ct_info = ct_info(fields.get::<u64>(conf!(offsets.skb_nfct)));
    let len: u32 = fields.get::<u32>(conf!(offsets.skb_len));
    // A flood of one flow: a packet whose first header bytes are those of the flow this
    // CPU counts in its cache is counted there, before the parse, the filters (which the
    // flow passed) and the key.
    let raw = if BTF {
        raw_key(&e.headers, location, netns, reason, ct_info)
    } else {
        [0; 4]
    };
    if BTF && counted_again(&raw, len) {
        return None;
    }
    let l4_flags = parse_l3(e, l3)?;

    if !watched(e, l4_flags) {
        return None;
    }

    let icmp = e.proto == IPPROTO_ICMP || e.proto == IPPROTO_ICMPV6;
    // On the stack: built in a map slot instead, it cost some 40 ns per drop more.
    let key = &FlowKey {
        saddr: e.saddr,
        daddr: e.daddr,
        location,
        netns,
        reason,
        sport: if icmp {
            icmp_port(e.icmp_type, e.icmp_code)
        } else {
            e.sport
        },
        dport: e.dport,
        family: e.family,
        proto: e.proto,
        tcp_flags: e.tcp_flags,
        ct_info,
    };
    bump(STAT_MATCHED);

    // The classic tracepoint serves kernels where tp_btf cannot attach, and the cache
    // (below) makes its program too much for Debian 5.10's verifier (minutes): it counts
    // every drop in the flow table, as before the cache.
    let (hit, now) = if BTF {
        through_cache(key, &raw, len)?
    } else {
        (false, unsafe { bpf_ktime_get_ns() })
    };
    let this = u64::from(!hit);
    let pid_tgid = bpf_get_current_pid_tgid();
    // Read unconditionally (zero when there is no socket), so the value is written on
    // every path: LLVM may load it where it is not needed, and verifiers before 6.x refuse
    // a read of a stack slot that one path left unwritten.
    let uid_raw: u32 = read(sk, conf!(offsets.sk_uid));
    let uid = (sk != 0 && conf!(offsets.sk_uid) != NO_OFFSET).then_some(uid_raw);
    // Not taken yet: `count_drop` takes it for a new flow (its site comes from it).
    e.stack_bytes = STACK_NOT_TAKEN;
    let due = count_drop(ctx, e, key, this, this * len as u64, now, pid_tgid, uid);
    if BTF && !hit {
        // The cache took this flow in `through_cache`; its site is known now.
        // SAFETY: index 0 of a one-entry per-CPU array, as above.
        if let Some(cache) = FLOW_CACHE.get_ptr_mut(0) {
            unsafe { (*cache).site = e.site };
        }
    }
    let (count, bytes) = due?;

    // The output device, for the record (only drops that write one pay for it).
    let dst: u64 = fields.get::<u64>(conf!(offsets.skb_refdst)) & !1;
    let out_dev: u64 = read(dst, conf!(offsets.dst_dev));

    // The record is copied into the ring buffer at the end, rather than reserved first:
    // verifiers before 6.x cannot prune paths that hold a reservation, so every branch
    // below would multiply their work past their million-instruction limit (seen on
    // Debian's 6.1 and 5.10 under `cargo xtask vm-test`).
    e.count = count;
    e.bytes = bytes;
    e.ts_ns = now;
    e.location = location;
    e.sk = sk;
    e.netns = netns;
    e.ifindex = read(dev, conf!(offsets.dev_ifindex));
    e.out_ifindex = read(out_dev, conf!(offsets.dev_ifindex));
    e.pid = (pid_tgid >> 32) as u32;
    e.tid = pid_tgid as u32;
    e.reason = reason;
    e.mark = fields.get::<u32>(conf!(offsets.skb_mark));
    e.len = len;
    if e.stack_bytes == STACK_NOT_TAKEN {
        take_stack(ctx, e);
    }
    e.ct_info = ct_info;
    let mut f = l4_flags & (flags::HAS_L4 | flags::FRAGMENT);
    if sk != 0 {
        f |= flags::HAS_SOCKET;
    }
    e.uid = match uid {
        Some(uid) => {
            f |= flags::HAS_UID;
            uid
        }
        None => u32::MAX,
    };
    e.flags = f;
    e._pad = 0;
    e._pad2 = 0;
    current_comm(&mut e.comm);
    // Absent devices and fields read as zeros: an empty name.
    let name_off = conf!(offsets.dev_name);
    copy_kernel(e.ifname.as_mut_ptr(), 16, dev, name_off);
    copy_kernel(e.out_ifname.as_mut_ptr(), 16, out_dev, name_off);
    copy_kernel(
        (&raw mut e.kernel).cast(),
        size_of::<tracer_common::KernelVerdict>() as u32,
        kv as u64,
        0,
    );
    if !kernel_saw {
        e.kernel.engine = tracer_common::engine::NONE;
    }
    e.headers_len = if conf!(capture_headers) != 0 {
        HEADER_BYTES as u16
    } else {
        0
    };
    if !crate::emit(ctx, e) {
        bump(STAT_LOST);
    }
    Some(())
}

/// `DropEvent::stack_bytes` before the stack is taken (the helper returns at most the
/// buffer's size, or a negative errno well above this).
const STACK_NOT_TAKEN: i32 = i32::MIN;

/// The drop's kernel stack, into the record. The stack itself, not an id in a stack map:
/// a map's hash buckets collide, and a colliding stack is refused for good (-EEXIST),
/// losing the hook of its drops. Returns its site ([`tracer_common::site_of`]).
#[inline(always)]
fn take_stack<C: EbpfContext>(ctx: &C, e: &mut DropEvent) -> u32 {
    // SAFETY: the helper writes at most `size_of_val(&e.stack)` bytes into the record, and
    // zero-fills what it does not write (kernel/bpf/stackmap.c), so the site's frames are
    // the same for the same path.
    e.stack_bytes = unsafe {
        generated::bpf_get_stack(
            ctx.as_ptr(),
            e.stack.as_mut_ptr().cast(),
            size_of_val(&e.stack) as u32,
            0,
        )
    } as i32;
    tracer_common::site_of(&e.stack)
}

/// `enum ip_conntrack_info` from `skb->_nfct` (a pointer with ctinfo in its low bits,
/// include/linux/skbuff.h), or [`CT_NONE`] when no entry is attached.
#[inline(always)]
fn ct_info(nfct: u64) -> u8 {
    if nfct & !NFCT_INFOMASK != 0 {
        (nfct & NFCT_INFOMASK) as u8
    } else {
        CT_NONE
    }
}

/// Bytes read first when [`early_filters`]: an IPv4 header without options or an IPv6
/// header, and the ports after it.
const PEEK_BYTES: usize = 44;

/// Whether a port, protocol or family filter is set (read-only data: the verifier keeps
/// only the branch taken).
#[inline(always)]
fn early_filters() -> bool {
    let any = |r: PortRange| r.lo == 0 && r.hi == u16::MAX;
    conf!(family) != 0 || conf!(proto) != 0 || !any(conf!(sport)) || !any(conf!(dport))
}

/// Whether the first [`PEEK_BYTES`] of the headers show that [`watched`] will refuse the
/// packet, by family, protocol or ports. `false` when they cannot tell (IPv4 options, IPv6
/// extension headers, a fragment of IPv6): the full parse decides then. A port filter
/// refuses what has no ports, as in `watched`.
#[inline(always)]
fn ruled_out_early(h: &[u8; HEADER_BYTES]) -> bool {
    let (family, proto, l4, fragment) = match h[0] {
        // Version 4, 5 words of header: no options. frag_off@6 (offset bits).
        0x45 => (
            AF_INET,
            h[9],
            20,
            u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0,
        ),
        first if first >> 4 == 6 && (tracer_common::has_ports(h[6]) || h[6] == IPPROTO_ICMPV6) => {
            (AF_INET6, h[6], 40, false)
        }
        _ => return false,
    };
    if conf!(family) != 0 && conf!(family) != family {
        return true;
    }
    if conf!(proto) != 0 && conf!(proto) != proto {
        return true;
    }
    let has_ports = tracer_common::has_ports(proto) && !fragment;
    let (sport, dport) = if l4 == 20 {
        (
            u16::from_be_bytes([h[20], h[21]]),
            u16::from_be_bytes([h[22], h[23]]),
        )
    } else {
        (
            u16::from_be_bytes([h[40], h[41]]),
            u16::from_be_bytes([h[42], h[43]]),
        )
    };
    !port_in(conf!(sport), sport, has_ports) || !port_in(conf!(dport), dport, has_ports)
}

/// Whether the user's filters (family, protocol, ports, addresses) take the packet parsed
/// into `e`; `l4_flags` as [`parse_l3`] returns them.
#[inline(always)]
fn watched(e: &DropEvent, l4_flags: u8) -> bool {
    if conf!(family) != 0 && conf!(family) != e.family {
        return false;
    }
    if conf!(proto) != 0 && conf!(proto) != e.proto {
        return false;
    }
    let has_ports = l4_flags & HAS_PORTS != 0;
    if !port_in(conf!(sport), e.sport, has_ports) || !port_in(conf!(dport), e.dport, has_ports) {
        return false;
    }
    prefix_matches(&raw const CONFIG.src, e.family, &e.saddr)
        && prefix_matches(&raw const CONFIG.dst, e.family, &e.daddr)
}

/// The key of `skb` (a typed `struct sk_buff *`) when it is the first packet of an
/// attempt from a local socket, in a namespace and flow the filters watch: a TCP SYN
/// without ACK, a UDP datagram, an ICMP echo request — in the original direction of its
/// conntrack entry (a reply is no attempt). For [`crate::passed`].
#[inline(always)]
// Unused in perf.rs, which builds no attempts program.
#[allow(dead_code)]
pub(crate) fn attempt_key(skb: u64) -> Option<PassedKey> {
    let fields = SkbFields::<true>::copy(skb)?;
    let sk: u64 = fields.get::<u64>(conf!(offsets.skb_sk));
    if sk == 0 {
        return None;
    }
    let sk_net: u64 = load::<_, true>(sk, conf!(offsets.sk_net));
    let netns: u32 = load::<_, true>(sk_net, conf!(offsets.net_ns_inum));
    if conf!(netns) != 0 && netns != conf!(netns) {
        return None;
    }
    let ct_info = ct_info(fields.get::<u64>(conf!(offsets.skb_nfct)));
    // IP_CT_IS_REPLY (3) and above: the reply direction.
    if ct_info != CT_NONE && ct_info >= 3 {
        return None;
    }
    let head: u64 = fields.get::<u64>(conf!(offsets.skb_head));
    let nh: u16 = fields.get::<u16>(conf!(offsets.skb_network_header));
    if nh == HEADER_UNSET {
        return None;
    }
    let l3 = head + nh as u64;
    // SAFETY: as in `handle`; the object loaded for attempts runs no drop program.
    let e = unsafe { &mut *SCRATCH.get_ptr_mut(0)? };
    copy_kernel(e.headers.as_mut_ptr(), HEADER_BYTES as u32, l3, 0);
    let l4_flags = parse_l3(e, l3)?;
    let first = l4_flags & flags::FRAGMENT == 0
        && match e.proto {
            // SYN without ACK (struct tcphdr's flags byte: ACK 0x10, SYN 0x02).
            IPPROTO_TCP => e.tcp_flags & 0x12 == 0x02,
            IPPROTO_UDP => true,
            // Echo requests (RFC 792, RFC 4443).
            IPPROTO_ICMP => e.icmp_type == 8,
            IPPROTO_ICMPV6 => e.icmp_type == 128,
            _ => false,
        };
    if !first || !watched(e, l4_flags) {
        return None;
    }
    let icmp = e.proto == IPPROTO_ICMP || e.proto == IPPROTO_ICMPV6;
    let dev: u64 = fields.get::<u64>(conf!(offsets.skb_dev));
    let mut oif = [0u8; 16];
    copy_kernel(oif.as_mut_ptr(), 16, dev, conf!(offsets.dev_name));
    Some(PassedKey {
        saddr: e.saddr,
        daddr: e.daddr,
        netns,
        uid: read(sk, conf!(offsets.sk_uid)),
        mark: fields.get::<u32>(conf!(offsets.skb_mark)),
        sport: if icmp { 0 } else { e.sport },
        dport: if icmp {
            icmp_port(e.icmp_type, e.icmp_code)
        } else {
            e.dport
        },
        family: e.family,
        proto: e.proto,
        ct_info,
        _pad: 0,
        oif,
    })
}

/// Counts the drop in this CPU's flow cache when it is the cache's flow (see `FlowCache`):
/// `None` then, the path a flood takes. Otherwise, or when the cache's batch is full or a
/// record is due, moves the cache's packets into the flow table, gives the cache this
/// drop's flow and returns whether the cache counted this drop, and the time.
///
/// One way out for the three cases: each path multiplies the old verifiers' work.
#[inline(always)]
fn through_cache(key: &FlowKey, raw: &[u64; 4], len: u32) -> Option<(bool, u64)> {
    // SAFETY: index 0 of a one-entry per-CPU array, as in `handle`.
    let cache = unsafe { &mut *FLOW_CACHE.get_ptr_mut(0)? };
    let hit = cache.live != 0 && same_flow(&cache.key, key);
    let mut now = 0;
    if hit {
        cache.pending += 1;
        cache.bytes += len as u64;
        if cache.pending < CACHE_BATCH {
            if cache.pending > CACHE_TIMED {
                return None;
            }
            now = unsafe { bpf_ktime_get_ns() };
            if now.wrapping_sub(cache.since_ns) < FLOW_UPDATE_NS {
                return None;
            }
        }
    }
    if now == 0 {
        now = unsafe { bpf_ktime_get_ns() };
    }
    let (packets, bytes) = (cache.pending, cache.bytes);
    // Cleared before the table has them (see `FlowCache`).
    store_words(&raw mut cache.pending, [0]);
    store_words(&raw mut cache.bytes, [0]);
    if packets != 0 {
        // Two calls from here rather than one inside the other: old verifiers allow 512
        // bytes of stack for the whole chain of BPF functions (6.12: 344 + 128 + 56 was
        // refused).
        aggregate(&cache.key, cache.site, packets, bytes);
        add_to_flow(&cache.key, packets, bytes, cache.site);
    }
    cache.key = *key;
    cache.raw = *raw;
    cache.live = 1;
    cache.since_ns = now;
    Some((hit, now))
}

/// The packet's first header bytes that decide its [`FlowKey`], with the key's other
/// fields, in four words: an IPv4 header without options that is no fragment's tail
/// (addresses, protocol, ports or ICMP type and code, TCP flags), `location`, `netns`,
/// `reason` and `ct_info`. Equal words mean equal keys, and so the same filters' verdict.
/// Zeros, which no such packet gives (the version byte is in them), for other packets.
#[inline(always)]
fn raw_key(h: &[u8; HEADER_BYTES], location: u64, netns: u32, reason: u32, ct: u8) -> [u64; 4] {
    // struct iphdr: frag_off@6, protocol@9, saddr@12, daddr@16; the L4 header @20.
    if h[0] != 0x45 || u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
        return [0; 4];
    }
    let proto = h[9];
    // Whole words, not bytes: `h` is the record's buffer, at an 8-aligned offset of a map
    // value (checked in tracer-common), so bytes 12, 16 and 20 are 4-aligned.
    let word = |at: usize| -> u64 {
        // SAFETY: `at + 4 <= 24 < HEADER_BYTES`, 4-aligned (above).
        u64::from(unsafe { core::ptr::read(h.as_ptr().add(at).cast::<u32>()) })
    };
    // What the key takes from the L4 header, as `parse_l3` reads it.
    let l4 = if tracer_common::has_ports(proto) {
        word(20)
            | if proto == IPPROTO_TCP {
                (h[33] as u64) << 32
            } else {
                0
            }
    } else if proto == IPPROTO_ICMP {
        // Type and code (the first two bytes, little-endian load).
        word(20) & 0xffff
    } else {
        0
    };
    [
        word(12) << 32 | word(16),
        0x45 << 56 | (ct as u64) << 48 | (proto as u64) << 40 | l4,
        location,
        (reason as u64) << 32 | netns as u64,
    ]
}

/// Counts the drop in this CPU's flow cache when `raw` (see [`raw_key`]) is the cache's
/// flow and the cache has nothing else to do for it (no batch full, no clock to read: see
/// [`through_cache`], which handles the rest).
#[inline(always)]
fn counted_again(raw: &[u64; 4], len: u32) -> bool {
    let Some(cache) = FLOW_CACHE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: index 0 of a one-entry per-CPU array, as in `handle`.
    let cache = unsafe { &mut *cache };
    // The batch first: a drop of another flow than the last finds it empty (the cache took
    // that flow with its drop counted in the table), and costs no more than this.
    if cache.pending < CACHE_TIMED || cache.pending + 1 >= CACHE_BATCH {
        return false;
    }
    let c = &cache.raw;
    let differs = (c[0] ^ raw[0]) | (c[1] ^ raw[1]) | (c[2] ^ raw[2]) | (c[3] ^ raw[3]);
    if raw[1] == 0 || differs != 0 {
        return false;
    }
    cache.pending += 1;
    cache.bytes += len as u64;
    bump(STAT_MATCHED);
    true
}

/// Writes `words` at `dst` (8-byte aligned: a map value's field) with one store each.
/// Plain assignments of zeros to neighbouring fields are merged by LLVM into a `memset`
/// call, which in BPF is compiler-builtins' byte-by-byte loop: 32 bytes of addresses
/// zeroed that way cost some 130 instructions per drop.
#[inline(always)]
fn store_words<T, const N: usize>(dst: *mut T, words: [u64; N]) {
    const { assert!(size_of::<T>() == 8 * N) };
    let dst = dst.cast::<u64>();
    for (i, w) in words.into_iter().enumerate() {
        // SAFETY: `dst` points to a live T of 8 * N bytes, 8-byte aligned (see above);
        // volatile keeps LLVM from merging the stores back into a `memset`.
        unsafe { core::ptr::write_volatile(dst.add(i), w) };
    }
}

/// Whether two flow keys are equal, compared as the seven words they are (a byte-wise
/// comparison would be a loop or a `memcmp` call, neither of which BPF has).
#[inline(always)]
fn same_flow(a: &FlowKey, b: &FlowKey) -> bool {
    const WORDS: usize = size_of::<FlowKey>() / 8;
    let (a, b) = (
        (a as *const FlowKey).cast::<[u64; WORDS]>(),
        (b as *const FlowKey).cast::<[u64; WORDS]>(),
    );
    // SAFETY: FlowKey is 56 bytes, 8-byte aligned (it holds a u64), with no padding.
    let (a, b) = unsafe { (&*a, &*b) };
    let mut diff = 0;
    for i in 0..WORDS {
        diff |= a[i] ^ b[i];
    }
    diff == 0
}

/// Adds packets a CPU's cache held to their flow, without a record (the packet at hand
/// belongs to another flow).
///
/// A BPF function of its own, not inlined: its three outcomes (found, inserted, lost the
/// race) all return to one state in the caller, where the verifier prunes them, instead of
/// walking the rest of the program three times (Debian 5.10's verifier took minutes).
#[inline(never)]
fn add_to_flow(key: &FlowKey, packets: u64, bytes: u64, site: u32) {
    if let Some(state) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a map value pointer from the kernel, valid for this program run.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*state).count, packets);
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*state).bytes, bytes);
        }
        return;
    }
    // Evicted meanwhile (more flows than the table holds): counted again from here; the
    // packets counted before are lost to per-flow detail, as with any eviction (not to
    // the aggregates, which the caller counted them in).
    let state = FlowState::counted_only(packets, bytes, site);
    let _ = FLOWS.insert(key, &state, BPF_NOEXIST as u64);
}

/// Adds drops of the flow `flow`, dropped at `site`, to their aggregate. A key is added
/// while the table has room short of its reserve; then a new key's drops go to its coarse
/// key (`AggKey::coarse`), which the reserve holds: a handful per namespace, site and
/// protocol. A BPF function of its own for the verifier, as `add_to_flow`, and the key is
/// built here, in its frame, not in the caller's.
#[inline(never)]
fn aggregate(flow: &FlowKey, site: u32, packets: u64, bytes: u64) {
    let key = &mut AggKey::of(flow, site);
    if add_to_aggregate(key, packets, bytes) {
        return;
    }
    let Some(used) = AGG_USED.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a map value pointer from the kernel, valid for this program run. The add's
    // result is read with a plain load: fetching it needs BPF_FETCH (5.12+, not 5.10), and
    // racing CPUs only make the count run a little ahead (the reserve covers that).
    let tried = unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(used, 1);
        core::ptr::read_volatile(used)
    };
    if tried >= (MAX_AGGREGATES - AGG_RESERVE) as u64 {
        // In place: a second key would be a second 32 bytes of this frame, which adds to
        // the caller's along the chain.
        key.coarsen();
        if add_to_aggregate(key, packets, bytes) {
            return;
        }
    }
    let count = AggCount { packets, bytes };
    // BPF_NOEXIST: another CPU may have added the key meanwhile; then count in its entry.
    if AGGREGATES.insert(key, &count, BPF_NOEXIST as u64).is_ok()
        || add_to_aggregate(key, packets, bytes)
    {
        return;
    }
    bump(STAT_UNAGGREGATED);
}

#[inline(always)]
fn add_to_aggregate(key: &AggKey, packets: u64, bytes: u64) -> bool {
    let Some(count) = AGGREGATES.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: a map value pointer from the kernel, valid for this program run; other CPUs
    // count in the same entry.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*count).packets, packets);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*count).bytes, bytes);
    }
    true
}

/// Counts `packets` drops in their flow. Returns the flow's cumulative packets and bytes when a record
/// should be written (a new flow, or [`FLOW_UPDATE_NS`] since the last record), `None`
/// otherwise.
///
/// Also counts them in their aggregate, and writes the flow's site into `e.site`: the
/// state's, or for a new flow the site of its stack, taken into `e` now (the new flow's
/// record needs it anyway).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn count_drop<C: EbpfContext>(
    ctx: &C,
    e: &mut DropEvent,
    key: &FlowKey,
    packets: u64,
    bytes: u64,
    now: u64,
    pid_tgid: u64,
    uid: Option<u32>,
) -> Option<(u64, u64)> {
    if let Some(state) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a map value pointer from the kernel, valid for this program run.
        e.site = unsafe { (*state).site };
        if packets != 0 {
            aggregate(key, e.site, packets, bytes);
        }
        return bump_flow(state, packets, bytes, now);
    }
    e.site = take_stack(ctx, e);
    if packets != 0 {
        aggregate(key, e.site, packets, bytes);
    }
    // In a per-CPU slot, not on the stack: this frame and the functions it calls share
    // the verifier's 512 bytes (see tracer/src/kernel/stack_depth.rs); only a new flow
    // pays the slot's lookup.
    let st = NEW_FLOW.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot (tracing programs do not nest on one CPU); every field is
    // written before the map copies it.
    unsafe {
        (*st).count = packets;
        (*st).bytes = bytes;
        (*st).first_ns = now;
        (*st).last_emit_ns = now;
        (*st).pid = (pid_tgid >> 32) as u32;
        (*st).uid = uid.unwrap_or(u32::MAX);
        current_comm(&mut (*st).comm);
        (*st).site = e.site;
        (*st)._pad = 0;
    }
    // SAFETY: a map value pointer, initialised just above.
    match FLOWS.insert(key, unsafe { &*st }, BPF_NOEXIST as u64) {
        Ok(()) => Some((packets, bytes)),
        // Another CPU created the flow in the meantime: count in its entry.
        Err(_) => bump_flow(FLOWS.get_ptr_mut(key)?, packets, bytes, now),
    }
}

#[inline(always)]
fn bump_flow(state: *mut FlowState, packets: u64, bytes: u64, now: u64) -> Option<(u64, u64)> {
    // SAFETY: a map value pointer from the kernel, valid for this program run; counters
    // are updated with atomic adds because other CPUs may count the same flow.
    unsafe {
        // Not for nothing (a cache hit asking only whether a record is due): LLVM turns an
        // atomic add of a known 0 into an atomic OR, which kernels before 5.12 refuse
        // ("BPF_STX uses reserved fields").
        if packets != 0 {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*state).count, packets);
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*state).bytes, bytes);
        }
        if now.wrapping_sub((*state).last_emit_ns) < FLOW_UPDATE_NS {
            return None;
        }
        (*state).last_emit_ns = now;
        if !update_allowed(now) {
            return None;
        }
        Some(((*state).count, (*state).bytes))
    }
}

/// Whether this CPU may write another update record (a known flow's periodic one) in the
/// current second. A scan of 100 000 flows would otherwise write 100 000 records a
/// second, each with its stack: most of the program's time, and of userspace's. Counts do
/// not depend on records (the flow table has them, and userspace re-reads the flows that
/// grow); first records of new flows are not limited here.
#[inline(always)]
fn update_allowed(now: u64) -> bool {
    let Some(b) = UPDATE_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; tracing programs do not nest on one CPU.
    let b = unsafe { &mut *b };
    if now.wrapping_sub(b.window_ns) >= 1_000_000_000 {
        b.window_ns = now;
        b.used = 0;
    }
    b.used += 1;
    b.used <= UPDATES_PER_CPU_SECOND
}

/// `parse_l3`'s result bit: the protocol has ports (beside `flags::HAS_L4` and
/// `flags::FRAGMENT`, which go into the record as they are).
const HAS_PORTS: u8 = 1 << 7;

/// Parses the IPv4 or IPv6 header, then the L4 header, from `e.headers` (the packet's
/// first [`HEADER_BYTES`] bytes from its network header, copied from `l3`) into the
/// record's address, port, TCP and ICMP fields. Only headers beyond those bytes (IPv4
/// options, IPv6 extension headers) are read from the kernel again. Returns
/// `flags::HAS_L4`, `flags::FRAGMENT` and [`HAS_PORTS`] bits.
#[inline(always)]
fn parse_l3(e: &mut DropEvent, l3: u64) -> Option<u8> {
    let first = e.headers[0];
    let mut bits = 0;
    e.sport = 0;
    e.dport = 0;
    e.tcp_flags = 0;
    e.icmp_type = 0;
    e.icmp_code = 0;
    // Where the L4 header starts.
    let l4_off: u64;
    match first >> 4 {
        IP_VERSION_4 => {
            // struct iphdr: ihl:4 version:4, tos, tot_len, id, frag_off@6, ttl, protocol@9,
            // check, saddr@12, daddr@16.
            let h = &e.headers;
            e.family = AF_INET;
            e.proto = h[9];
            if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                bits |= flags::FRAGMENT;
            }
            let (s, d): ([u8; 4], [u8; 4]) =
                (h[12..16].try_into().ok()?, h[16..20].try_into().ok()?);
            // The address in the first four bytes, zeros after (little-endian words).
            store_words(&raw mut e.saddr, [u64::from(u32::from_ne_bytes(s)), 0]);
            store_words(&raw mut e.daddr, [u64::from(u32::from_ne_bytes(d)), 0]);
            l4_off = ((first & 0x0f) as u64) * 4;
        }
        6 => {
            // struct ipv6hdr: nexthdr@6, saddr@8, daddr@24; 40 bytes.
            e.family = AF_INET6;
            e.saddr = e.headers[8..24].try_into().ok()?;
            e.daddr = e.headers[24..40].try_into().ok()?;
            let mut next: u8 = e.headers[6];
            let mut off: u64 = 40;
            // Walk extension headers (RFC 8200 section 4). Every unrolled iteration
            // multiplies the paths the verifier walks through the rest of the program, and
            // pre-6.x verifiers give up at a million instructions: two headers (hop-by-hop
            // then routing or fragment) cover what real traffic carries.
            for _ in 0..2 {
                if !matches!(next, 0 | 43 | 60 | 51 | 44) {
                    break;
                }
                let hdr: [u8; 4] = read(l3, off as u32);
                off += match next {
                    51 => (hdr[1] as u64 + 2) * 4,
                    44 => 8,
                    _ => (hdr[1] as u64 + 1) * 8,
                };
                if next == 44 && u16::from_be_bytes([hdr[2], hdr[3]]) & !7 != 0 {
                    bits |= flags::FRAGMENT;
                }
                next = hdr[0];
            }
            e.proto = next;
            l4_off = off;
        }
        _ => return None,
    };
    if bits & flags::FRAGMENT != 0 {
        return Some(bits);
    }
    // The first 14 bytes of the L4 header (ports and TCP flags), from the copy at the two
    // usual offsets (constant indexes the verifier checks once), else from the kernel.
    let l4: [u8; 14] = match l4_off {
        20 => e.headers[20..34].try_into().ok()?,
        40 => e.headers[40..54].try_into().ok()?,
        _ => read(l3 + l4_off, 0),
    };
    match e.proto {
        proto if tracer_common::has_ports(proto) => {
            e.sport = u16::from_be_bytes([l4[0], l4[1]]);
            e.dport = u16::from_be_bytes([l4[2], l4[3]]);
            bits |= HAS_PORTS | flags::HAS_L4;
            if e.proto == IPPROTO_TCP {
                // struct tcphdr: flags byte at offset 13 (CWR..FIN).
                e.tcp_flags = l4[13];
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            e.icmp_type = l4[0];
            e.icmp_code = l4[1];
            bits |= flags::HAS_L4;
        }
        _ => {}
    }
    Some(bits)
}

#[inline(always)]
pub(crate) fn port_in(range: PortRange, port: u16, has_ports: bool) -> bool {
    if range.lo == 0 && range.hi == u16::MAX {
        return true;
    }
    has_ports && port >= range.lo && port <= range.hi
}

/// Whether `addr` is inside `prefix` (a pointer into [`CONFIG`], read field by field).
#[inline(always)]
pub(crate) fn prefix_matches(prefix: *const Prefix, family: u8, addr: &[u8; 16]) -> bool {
    // SAFETY: `prefix` points into CONFIG; volatile keeps the loader's values.
    let field = |p: *const u64| unsafe { core::ptr::read_volatile(p) };
    let want = unsafe { core::ptr::read_volatile(&raw const (*prefix).family) };
    if want == 0 {
        return true;
    }
    let negate = unsafe { core::ptr::read_volatile(&raw const (*prefix).negate) } != 0;
    let words = Prefix::words(addr);
    let differs = |i: usize| unsafe {
        (words[i] ^ field(&raw const (*prefix).addr[i])) & field(&raw const (*prefix).mask[i]) != 0
    };
    let inside = want == family && !differs(0) && !differs(1);
    inside != negate
}

// Both objects (main.rs, perf.rs) include this module: their panic handler and licence.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
