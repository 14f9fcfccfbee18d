//! The drop programs of `main.rs`, sending records through a perf event array (one
//! buffer per CPU) instead of a ring buffer: for kernels before 5.8, where creating a
//! `BPF_MAP_TYPE_RINGBUF` map fails and with it the whole object. Userspace loads this
//! object when the kernel has no ring buffer, or when `--events perf` asks for it.
//! `droptrace inventory` needs the ring buffer and is not built here.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(
    internal_features,
    reason = "core::intrinsics::atomic_xadd: BPF atomics without a fetch"
)]

use aya_ebpf::{
    EbpfContext, bindings::BPF_F_CURRENT_CPU, helpers::generated::bpf_perf_event_output,
    macros::map, maps::PerfEventArray,
};
use tracer_common::DropEvent;

/// The drop programs (`kfree_skb`).
mod drops;
/// The rule engines' verdicts, where kprobes exist.
mod verdict;

/// Drop records for userspace, to this CPU's buffer (sized by userspace at open).
#[map]
static EVENTS: PerfEventArray<DropEvent> = PerfEventArray::new(0);

/// Sends a drop record to userspace; false when this CPU's buffer is full.
#[inline(always)]
fn emit<C: EbpfContext>(ctx: &C, e: &DropEvent) -> bool {
    // The helper itself rather than `PerfEventArray::output`, which drops its result: a
    // full buffer must count as a lost record, as with the ring buffer.
    // SAFETY: `e` is a live record of the size given; the map is this object's.
    let r = unsafe {
        bpf_perf_event_output(
            ctx.as_ptr(),
            (&raw const EVENTS).cast_mut().cast(),
            BPF_F_CURRENT_CPU,
            (e as *const DropEvent).cast_mut().cast(),
            size_of::<DropEvent>() as u64,
        )
    };
    r == 0
}
