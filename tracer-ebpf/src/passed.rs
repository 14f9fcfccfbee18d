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
use tracer_common::PassedKey;

/// Packets per first-packet key. Declared tiny: userspace sizes it when it attaches the
/// program (tracer_common::inventory::MAX_PASSED).
#[map]
static PASSED: LruHashMap<PassedKey, u64> = LruHashMap::with_max_entries(1, 0);

/// `trace_net_dev_queue(skb)` (include/trace/events/net.h).
#[btf_tracepoint(function = "net_dev_queue")]
pub fn attempt_passed(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    if let Some(key) = crate::drops::attempt_key(skb) {
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
