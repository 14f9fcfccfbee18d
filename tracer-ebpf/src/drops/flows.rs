//! Counting: the per-CPU flow cache a flood is counted in, the flow table (LRU) every
//! drop is counted in, and the aggregates that keep totals exact when flows outnumber the
//! table. The functions that are BPF functions of their own (not inlined) are so for the
//! verifier: see each.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use tracer_common::{
    AGG_RESERVE, AggCount, AggKey, CACHE_BATCH, CACHE_TIMED, DropEvent, FLOW_UPDATE_NS, FlowCache,
    FlowKey, FlowState, HEADER_BYTES, MAX_AGGREGATES, MAX_FLOWS, STAT_MATCHED, STAT_UNAGGREGATED,
    netfilter::ipproto::{ICMP as IPPROTO_ICMP, TCP as IPPROTO_TCP},
};

use super::{bump, kmem::current_comm, take_stack};

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
pub(super) static FLOW_CACHE: PerCpuArray<FlowCache> = PerCpuArray::with_max_entries(1, 0);

/// Counts the drop in this CPU's flow cache when it is the cache's flow (see `FlowCache`):
/// `None` then, the path a flood takes. Otherwise, or when the cache's batch is full or a
/// record is due, moves the cache's packets into the flow table, gives the cache this
/// drop's flow and returns whether the cache counted this drop, and the time.
///
/// One way out for the three cases: each path multiplies the old verifiers' work.
#[inline(always)]
pub(super) fn through_cache(key: &FlowKey, raw: &[u64; 4], len: u32) -> Option<(bool, u64)> {
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
        // refused). The flow first: a drop in an aggregate is then in its flow too, which
        // `serve` relies on when it reads the aggregates before the flows
        // (tracer/src/session/beyond.rs).
        add_to_flow(&cache.key, packets, bytes, cache.site);
        aggregate(&cache.key, cache.site, packets, bytes);
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
pub(super) fn raw_key(
    h: &[u8; HEADER_BYTES],
    location: u64,
    netns: u32,
    reason: u32,
    ct: u8,
) -> [u64; 4] {
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
pub(super) fn counted_again(raw: &[u64; 4], len: u32) -> bool {
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
pub(super) fn store_words<T, const N: usize>(dst: *mut T, words: [u64; N]) {
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
#[allow(
    clippy::too_many_arguments,
    reason = "inlined: arguments cost no stack"
)]
pub(super) fn count_drop<C: EbpfContext>(
    ctx: &C,
    e: &mut DropEvent,
    key: &FlowKey,
    packets: u64,
    bytes: u64,
    now: u64,
    pid_tgid: u64,
    uid: Option<u32>,
) -> Option<(u64, u64)> {
    let due = add_to_new_or_known_flow(ctx, e, key, packets, bytes, now, pid_tgid, uid);
    // After the flow (as in `through_cache`): a drop counted in its aggregate is then in
    // its flow too.
    if packets != 0 {
        aggregate(key, e.site, packets, bytes);
    }
    due
}

/// The flow part of [`count_drop`]: `e.site` is set on every path that returns.
#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "inlined: arguments cost no stack"
)]
fn add_to_new_or_known_flow<C: EbpfContext>(
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
        return bump_flow(state, packets, bytes, now);
    }
    e.site = take_stack(ctx, e);
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
