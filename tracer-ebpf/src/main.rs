//! The kernel half of droptrace, with drop records sent through a BPF ring buffer
//! (Linux 5.8+): the programs of [`drops`] and [`verdict`], and in [`inventory`] the
//! programs that list the flows the host starts.
//!
//! `perf.rs` builds the same drop programs with a perf event array instead, for kernels
//! without ring buffers; userspace loads one object or the other.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so core's atomic types lack fetch_add; the
// intrinsic compiles to the BPF atomic add instruction (BPF_ATOMIC | BPF_ADD).
#![feature(core_intrinsics)]
#![allow(
    internal_features,
    reason = "core::intrinsics::atomic_xadd: BPF atomics without a fetch"
)]

use aya_ebpf::{EbpfContext, macros::map, maps::RingBuf};
use tracer_common::DropEvent;

/// The drop programs (`kfree_skb`).
mod drops;
/// `droptrace inventory`'s programs: outbound flows as they start (not drops).
mod inventory;
/// `--attempts`: first packets that got through, with their conntrack state.
mod passed;
/// The rule engines' verdicts, where kprobes exist.
mod verdict;

/// Drop records for userspace. 4 MiB holds ~14k records: seconds of a flood.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Unread bytes in [`EVENTS`] from which a record wakes the reader (~330 records).
const WAKE_AT_BYTES: u64 = 256 << 10;

/// Sends a drop record to userspace; false when the ring buffer is full.
///
/// Without a flag the kernel wakes the reader whenever it has caught up, which a fast
/// reader always has: a wake-up (irq_work) per record, the dearest part of a new flow's
/// drop in a scan (the 100,000-flow bench paid ~1 µs a drop). The reader is woken only
/// once a batch is waiting, and drains the buffer every 100 ms besides
/// (`session::DRAIN_EVERY`), so a lone drop still arrives within that.
#[inline(always)]
fn emit<C: EbpfContext>(_ctx: &C, e: &DropEvent) -> bool {
    use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKE_AT_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    EVENTS.output(e, flags as u64).is_ok()
}
