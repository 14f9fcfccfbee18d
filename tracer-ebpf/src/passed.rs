//! `--attempts`: the first packets of attempts that got through the firewall, counted by
//! flow and by the conntrack state the firewall saw them in, so userspace can name the
//! rule that let them through (an intermittent failure is drops beside these).
//!
//! `net_dev_queue` fires in `__dev_queue_xmit` (net/core/dev.c), after every netfilter
//! hook of the way out, POSTROUTING included, accepted the packet; its conntrack entry is
//! still attached (`skb->_nfct`, set by `nf_conntrack_in` at LOCAL_OUT before the filter
//! table ran). Only attached when a command asks for attempts: every packet the host
//! sends passes here.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::{btf_tracepoint, map},
    maps::LruHashMap,
    programs::BtfTracePointContext,
};
use tracer_common::{
    CT_NONE, HEADER_BYTES, PassedKey, flags,
    netfilter::{
        icmp_port,
        ipproto::{
            ICMP as IPPROTO_ICMP, ICMPV6 as IPPROTO_ICMPV6, TCP as IPPROTO_TCP, UDP as IPPROTO_UDP,
        },
    },
};

use crate::{
    conf,
    drops::{
        HEADER_UNSET, SCRATCH,
        headers::{ct_info, parse_l3, watched},
        kmem::{SkbFields, copy_kernel, load, read},
    },
};

/// Packets per first-packet key. Declared tiny: userspace sizes it when it attaches the
/// program (tracer_common::inventory::MAX_PASSED).
#[map]
static PASSED: LruHashMap<PassedKey, u64> = LruHashMap::with_max_entries(1, 0);

/// `trace_net_dev_queue(skb)` (include/trace/events/net.h).
#[btf_tracepoint(function = "net_dev_queue")]
pub fn attempt_passed(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    if let Some(key) = attempt_key(skb) {
        count(&key);
    }
    0
}

#[inline(always)]
fn count(key: &PassedKey) {
    if let Some(n) = PASSED.get_ptr_mut(key) {
        // SAFETY: a map value pointer, valid for this run; other CPUs add too.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, 1) };
        return;
    }
    if PASSED.insert(key, &1, BPF_NOEXIST as u64).is_err()
        && let Some(n) = PASSED.get_ptr_mut(key)
    {
        // Another CPU inserted it meanwhile.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, 1) };
    }
}

/// The key of `skb` (a typed `struct sk_buff *`) when it is the first packet of an
/// attempt from a local socket, in a namespace and flow the filters watch: a TCP SYN
/// without ACK, a UDP datagram, an ICMP echo request — in the original direction of its
/// conntrack entry (a reply is no attempt).
#[inline(always)]
fn attempt_key(skb: u64) -> Option<PassedKey> {
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
