//! The rule engines' own verdicts: a kprobe on entry and a kretprobe on return of
//! `nft_do_chain` (nftables, iptables-nft) and `ipt_do_table` / `ip6t_do_table`
//! (iptables-legacy). When one returns `NF_DROP`, the packet, table and base chain are
//! kept in [`LAST_VERDICT`]; `nf_hook_slow` then frees that very packet on the same CPU
//! (net/netfilter/core.c: `case NF_DROP: kfree_skb_reason(skb,
//! SKB_DROP_REASON_NETFILTER_DROP)`), where the drop program takes it.
//!
//! This is the kernel saying which table and chain dropped the packet, instead of
//! userspace working it out. It needs kprobes (most distribution kernels have them; the
//! development machine does not, the `cargo xtask vm-test` guests do), so userspace
//! attaches these programs when it can and says so in the start-up line.
//!
//! Entry and return are paired through a small per-CPU stack: the functions run with
//! the CPU's softirqs able to nest another call on top (a local packet in OUTPUT, then a
//! received one in INPUT), and each return pops the call it ends. Arguments cannot be
//! read at return (the registers are gone), hence the entry probe.

use aya_ebpf::{
    macros::{kprobe, kretprobe, map},
    maps::PerCpuArray,
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{KernelVerdict, VERDICT_NAME_LEN, engine};

use crate::drops::{
    CONFIG,
    kmem::{copy_kernel, read},
};

/// Calls nested on one CPU beyond this overwrite the oldest; four is more than the
/// process, softirq and hardirq levels at which netfilter hooks run.
const DEPTH: u32 = 4;
/// `NF_VERDICT_MASK` (include/uapi/linux/netfilter.h): the verdict proper, without the
/// errno or queue number kept in the upper bits.
const NF_VERDICT_MASK: u32 = 0xff;
const NF_DROP: u32 = 0;
const HOOK_UNKNOWN: u8 = 0xff;

#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Call {
    skb: u64,
    /// `struct nft_chain *` or `struct xt_table *`.
    object: u64,
    /// `const struct nf_hook_state *`.
    state: u64,
    engine: u8,
    _pad: [u8; 7],
}

#[repr(C)]
pub(crate) struct Calls {
    depth: u32,
    _pad: u32,
    calls: [Call; DEPTH as usize],
}

#[map]
static CALLS: PerCpuArray<Calls> = PerCpuArray::with_max_entries(1, 0);

/// The last `NF_DROP` returned on this CPU, consumed by the drop program.
#[map]
pub(crate) static LAST_VERDICT: PerCpuArray<KernelVerdict> = PerCpuArray::with_max_entries(1, 0);

macro_rules! vconf {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const CONFIG.verdicts.$field) }
    };
}

#[inline(always)]
fn push(skb: u64, object: u64, state: u64, engine: u8) {
    let Some(c) = CALLS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU slot; kprobe programs do not nest on one CPU.
    let c = unsafe { &mut *c };
    let slot = &mut c.calls[(c.depth % DEPTH) as usize];
    slot.skb = skb;
    slot.object = object;
    slot.state = state;
    slot.engine = engine;
    c.depth = c.depth.wrapping_add(1);
}

/// `unsigned int nft_do_chain(struct nft_pktinfo *pkt, void *priv)`, `priv` being the
/// base chain (net/netfilter/nf_tables_core.c).
#[kprobe]
pub fn nft_do_chain_entry(ctx: ProbeContext) -> u32 {
    let pkt: u64 = ctx.arg(0).unwrap_or(0);
    let chain: u64 = ctx.arg(1).unwrap_or(0);
    let skb: u64 = read(pkt, vconf!(pkt_skb));
    let state: u64 = read(pkt, vconf!(pkt_state));
    push(skb, chain, state, engine::NFTABLES);
    0
}

/// `ipt_do_table` and `ip6t_do_table` (net/ipv4/netfilter/ip_tables.c and the ipv6 twin):
/// the argument order changed in 5.16, so userspace gives the positions from BTF.
#[kprobe]
pub fn xt_do_table_entry(ctx: ProbeContext) -> u32 {
    // All three read first, then chosen: choosing the register to read would make the
    // verifier see a computed context offset, which it refuses.
    let (a0, a1, a2): (u64, u64, u64) = (
        ctx.arg(0).unwrap_or(0),
        ctx.arg(1).unwrap_or(0),
        ctx.arg(2).unwrap_or(0),
    );
    let arg = |n: u8| -> u64 {
        if n == 0 {
            a0
        } else if n == 1 {
            a1
        } else {
            a2
        }
    };
    let table = arg(vconf!(xt_arg_table));
    let skb = arg(vconf!(xt_arg_skb));
    let state = arg(vconf!(xt_arg_state));
    push(skb, table, state, engine::XTABLES);
    0
}

/// The return of any of the three functions: pops its call, and keeps it when the
/// verdict is a drop.
#[kretprobe]
pub fn do_table_return(ctx: RetProbeContext) -> u32 {
    let verdict: u32 = ctx.ret();
    let Some(c) = CALLS.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: as in `push`.
    let c = unsafe { &mut *c };
    if c.depth == 0 {
        // A return whose entry was not seen (attached in between): nothing to pair.
        return 0;
    }
    c.depth -= 1;
    if verdict & NF_VERDICT_MASK != NF_DROP {
        return 0;
    }
    let call = c.calls[(c.depth % DEPTH) as usize];
    if let Some(v) = LAST_VERDICT.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, read by the drop program on this CPU after we return.
        keep(unsafe { &mut *v }, &call, verdict);
    }
    0
}

/// For the drop program: the engine's verdict on `skb`, if one was seen, in this CPU's
/// [`LAST_VERDICT`] slot (which is cleared for the next drop either way).
///
/// Two ways a drop shows up: the engine returned `NF_DROP` and `nf_hook_slow` freed the
/// packet (the return probe kept it), or the engine freed the packet itself and returned
/// `NF_STOLEN` (nft_do_chain does since Linux 6.x: `NF_DROP_REASON()` in
/// include/linux/netfilter.h), so the free happens while its call is still open: the call
/// on top of this CPU's stack is for this very packet.
#[inline(always)]
pub(crate) fn take(skb: u64) -> Option<(*mut KernelVerdict, bool)> {
    let v = LAST_VERDICT.get_ptr_mut(0)?;
    // SAFETY: this CPU's slots; kprobe and tracepoint programs do not nest on one CPU.
    let (vr, c) = unsafe { (&mut *v, &*CALLS.get_ptr_mut(0)?) };
    let mut seen = vr.skb == skb;
    if !seen && c.depth != 0 {
        let call = c.calls[((c.depth - 1) % DEPTH) as usize];
        if call.skb == skb {
            keep(vr, &call, NF_DROP);
            seen = true;
        }
    }
    vr.skb = 0;
    Some((v, seen))
}

/// Writes `call`'s table and chain into `v`.
#[inline(always)]
fn keep(v: &mut KernelVerdict, call: &Call, verdict: u32) {
    v.skb = call.skb;
    v.verdict = verdict;
    v.engine = call.engine;
    v._pad = 0;
    let hook_off = vconf!(state_hook);
    v.hook = if hook_off == tracer_common::NO_OFFSET {
        HOOK_UNKNOWN
    } else {
        read::<u8>(call.state, hook_off)
    };
    if call.engine == engine::NFTABLES {
        let table: u64 = read(call.object, vconf!(chain_table));
        let family: u16 = read(table, vconf!(table_family));
        let bits = vconf!(table_family_bits) as u32;
        let mask = if bits == 0 || bits >= 16 {
            0xffff
        } else {
            (1u16 << bits) - 1
        };
        v.family = ((family >> (vconf!(table_family_shift) & 15)) & mask) as u8;
        let table_name: u64 = read(table, vconf!(table_name));
        let chain_name: u64 = read(call.object, vconf!(chain_name));
        read_str(&mut v.table, table_name);
        read_str(&mut v.chain, chain_name);
    } else {
        v.family = read(call.object, vconf!(xt_table_af));
        copy_kernel(
            v.table.as_mut_ptr(),
            VERDICT_NAME_LEN as u32,
            call.object,
            vconf!(xt_table_name),
        );
        v.chain = [0; VERDICT_NAME_LEN];
    }
}

/// A NUL-terminated kernel string into `dst` (empty when unreadable).
#[inline(always)]
fn read_str(dst: &mut [u8; VERDICT_NAME_LEN], src: u64) {
    // SAFETY: the helper writes at most `dst.len()` bytes, NUL included, and on failure
    // leaves an empty string.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel_str(
            dst.as_mut_ptr().cast(),
            VERDICT_NAME_LEN as u32,
            src as *const core::ffi::c_void,
        )
    };
}
