//! The drop programs: on the `kfree_skb` tracepoint, shared by both objects (see
//! `main.rs` and `perf.rs`, which differ only in how a record reaches userspace).
//!
//! Every freed packet passes here, so the program returns as early as it can: first the
//! drop reason (`SKB_DROP_REASON_NETFILTER_DROP` unless `--all-reasons`), then the
//! user's filters, and only then does it write a record. Offsets of kernel structs come
//! from userspace (BTF) through [`CONFIG`]; all kernel memory is read with
//! `bpf_probe_read_kernel`, which never faults.
//!
//! The parts: [`kmem`] reads kernel memory (every program's helpers), [`headers`] parses
//! the packet and applies the filters, [`flows`] counts it (flow cache, flow table,
//! aggregates); this module is the programs and the record.

use aya_ebpf::{
    EbpfContext,
    helpers::generated,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, tracepoint},
    maps::PerCpuArray,
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::{
    ANY_REASON, Config, DropEvent, FlowKey, HEADER_BYTES, NO_OFFSET, REASON_BY_LOCATION,
    STAT_COUNT, STAT_LOST, STAT_MATCHED, flags,
    netfilter::{
        icmp_port,
        ipproto::{ICMP as IPPROTO_ICMP, ICMPV6 as IPPROTO_ICMPV6},
    },
};

/// Written by the loader before the program is verified (read-only data).
#[unsafe(no_mangle)]
pub(crate) static CONFIG: Config = Config::EMPTY;

/// Reads one field of [`CONFIG`]. Volatile, so that the compiler neither folds in the
/// default value nor copies the whole struct onto the 512-byte BPF stack.
#[macro_export]
macro_rules! conf {
    ($($path:tt)+) => {{
        let field = &raw const $crate::drops::CONFIG.$($path)+;
        // SAFETY: a field of a static, aligned and initialised.
        unsafe { core::ptr::read_volatile(field) }
    }};
}

mod flows;
pub(crate) mod headers;
pub(crate) mod kmem;

use flows::{FLOW_CACHE, count_drop, counted_again, raw_key, through_cache};
use headers::{
    PEEK_BYTES, conntrack_of, ct_info, early_filters, parse_l3, ruled_out_early, watched,
};
use kmem::{SkbFields, copy_kernel, current_comm, load, read};

/// Where a record is assembled before it is copied into [`EVENTS`] (see `handle`).
#[map]
pub(crate) static SCRATCH: PerCpuArray<DropEvent> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counters: drops matched and records lost (ring buffer full).
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// `(u16)~0U`: `skb->network_header` not set (include/linux/skbuff.h).
pub(crate) const HEADER_UNSET: u16 = u16::MAX;

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

    // The connection's mark (`nf_conn.mark`): zero when there is no connection or the
    // kernel has no such field (the read fails). Whether it was read, userspace tells from
    // `ct_info` and the offset it gave: a flag here cost 16 bytes of stack.
    copy_kernel(
        (&raw mut e.ct_mark).cast(),
        4,
        conntrack_of(fields.get::<u64>(conf!(offsets.skb_nfct))),
        conf!(offsets.ct_mark),
    );

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

// Both objects (main.rs, perf.rs) include this module: their panic handler and licence.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
