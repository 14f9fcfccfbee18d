//! Loading and attaching the eBPF program, and reading its records.
//!
//! The program is attached through a BPF link owned by this process (no pinning): when
//! droptrace exits, even by `kill -9`, the kernel closes the file descriptors and detaches
//! it, so nothing outlives the tool.

use std::{collections::HashMap, io};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{BtfTracePoint, ProgramError, TracePoint},
};
use tracer_common::{
    ANY_REASON, AggCount, AggKey, Config, DropEvent, FlowCache, FlowKey, FlowState, NO_OFFSET,
    REASON_BY_LOCATION, STAT_LOST, STAT_MATCHED, STAT_UNAGGREGATED,
};

use crate::{
    kernel::btf::{KernelBtf, TracepointRecord},
    kernel::drop::Drop,
    kernel::event_source::{BufferKind, EventSource},
    kernel::filter::Filters,
    kernel::program::{error_chain, program_error},
};

/// The compiled eBPF object, built by build.rs (aya-build) from tracer-ebpf.
pub(crate) static PROGRAM: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/droptrace"));
/// The same drop programs writing to perf buffers (tracer-ebpf/src/perf.rs), for kernels
/// without a BPF ring buffer.
static PROGRAM_PERF: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/droptrace-perf"));

/// Every eBPF object this binary carries, by the name build.rs gave it.
pub fn shipped_objects() -> [(&'static str, &'static [u8]); 2] {
    [("droptrace", PROGRAM), ("droptrace-perf", PROGRAM_PERF)]
}

/// Name of the tracepoint, of the program inside the object, and of its maps.
const TRACEPOINT: &str = "kfree_skb";
const CLASSIC_PROGRAM: &str = "kfree_skb_tp";
/// The program types, as errors name them.
const TP_BTF_KIND: &str = "BTF tracepoint (tp_btf/kfree_skb)";
const CLASSIC_KIND: &str = "tracepoint (skb/kfree_skb)";
const RING: &str = "EVENTS";
const STATS: &str = "STATS";
const FLOWS: &str = "FLOWS";
const FLOW_CACHE: &str = "FLOW_CACHE";
const AGGREGATES: &str = "AGGREGATES";
const AGG_USED: &str = "AGG_USED";

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("missing capabilities: {0}; run as root")]
    MissingCapabilities(String),
    #[error(
        "this kernel's kfree_skb tracepoint has no drop reason (Linux 5.17+); use --detect location (or auto)"
    )]
    NoDropReasons,
    #[error(
        "cannot find nf_hook_slow in /proc/kallsyms, needed to recognise netfilter drops on a kernel without drop reasons"
    )]
    NoNetfilterSymbols,
    #[error("cannot use the skb/kfree_skb tracepoint: {0}")]
    TracepointLayout(String),
    #[error("this kernel's BTF has no SKB_DROP_REASON_NETFILTER_DROP")]
    NoNetfilterReason,
    #[error("the kernel refused to load the BPF object: {0}")]
    Load(String),
    #[error("the kernel refused the {0} program: {1}")]
    Program(&'static str, String),
    #[error(
        "kernel lockdown is in {0} mode, which forbids BPF programs to read kernel memory; droptrace needs a boot with lockdown=integrity or none"
    )]
    Lockdown(String),
    #[error("cannot open map {0}: {1}")]
    Map(&'static str, String),
    #[error("the rule engines' verdicts cannot be watched: {0}")]
    Verdicts(String),
    #[error("cannot watch the record buffer: {0}")]
    Poll(io::Error),
}

/// Which kernel hook the program attaches to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// tp_btf when the kernel allows it, else the classic tracepoint.
    #[default]
    Auto,
    /// BTF tracepoint `tp_btf/kfree_skb` (needs BTF with BTF ids).
    TpBtf,
    /// Classic tracepoint `skb/kfree_skb` (record layout from BTF or tracefs).
    Tracepoint,
}

/// How a netfilter drop is recognised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Detect {
    /// By drop reason when the kernel has them (5.17+), else by location.
    #[default]
    Auto,
    /// `SKB_DROP_REASON_NETFILTER_DROP`.
    Reason,
    /// The packet was freed inside `nf_hook_slow` (where both engines' NF_DROP ends).
    Location,
}

impl Detect {
    /// Whether drops are recognised by location on `kernel` (which needs /proc/kallsyms).
    pub fn by_location(self, kernel: &KernelBtf) -> bool {
        match self {
            Detect::Location => true,
            Detect::Reason => false,
            Detect::Auto => !kernel.tracepoint_has_reason,
        }
    }
}

/// Whether to watch the rule engines' verdicts (kprobes on `nft_do_chain`, `ipt_do_table`
/// and `ip6t_do_table`), so the kernel itself names the table and chain of each drop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum VerdictMode {
    /// When the kernel has kprobes and the engines' BTF; else say why and go on.
    #[default]
    Auto,
    /// Required: fail when no engine can be watched.
    On,
    /// Never: attribution by evaluation and counters only.
    Off,
}

/// What to capture.
#[derive(Debug, Clone, Default)]
pub struct CaptureOptions {
    pub filters: Filters,
    /// Keep drops of every reason, not only netfilter's.
    pub all_reasons: bool,
    /// Copy packet headers into each record (for pcapng).
    pub capture_headers: bool,
    pub attach: AttachMode,
    pub detect: Detect,
    /// `[start, end)` of the functions that free packets on a netfilter verdict, for
    /// `Detect::Location`: `nf_hook_slow` and `nf_hook_slow_list` (net/netfilter/core.c), and
    /// `nft_do_chain`, which frees dropped packets itself on recent kernels.
    pub netfilter_ranges: Vec<(u64, u64)>,
    pub verdicts: VerdictMode,
    pub buffer: BufferKind,
    /// The kernel's BTF as aya reads it, when already parsed (else read from sysfs).
    pub btf: Option<aya::Btf>,
    /// Flows the kernel's flow table holds (`tracer_common::MAX_FLOWS` when `None`): small
    /// in tests, to see what happens beyond it without sending 131,072 flows.
    pub flow_table: Option<u32>,
}

/// Counters kept by the program in the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Drops that passed the filters.
    pub matched: u64,
    /// Records that could not be written because the ring buffer was full (their packets
    /// are still counted in the flow table).
    pub records_lost: u64,
    /// Drops counted in no aggregate (its table and reserve full).
    pub unaggregated: u64,
}

pub struct Capture {
    /// How drops are captured, for the start line (`tp_btf/kfree_skb`, ...).
    pub mode: String,
    /// Which engines' verdicts the kernel reports (`nft_do_chain, ipt_do_table`), or why
    /// none (`off: ...`), for the start line.
    pub verdicts: String,
    /// Whether the program reads the connection's mark (its offset was found in BTF).
    ct_mark_read: bool,
    // Owns the program and its link: dropping it detaches everything.
    _ebpf: Ebpf,
    events: EventSource,
    stats: PerCpuArray<MapData, u64>,
    flows: BpfHashMap<MapData, FlowKey, FlowState>,
    cache: PerCpuArray<MapData, FlowCache>,
    aggregates: BpfHashMap<MapData, AggKey, AggCount>,
    /// Keys the program tried to add to `aggregates` (tracer-ebpf/src/drops.rs).
    aggregates_used: Array<MapData, u64>,
}

/// What the CPUs' flow caches hold of one flow, not yet in the flow table nor in its
/// aggregate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cached {
    pub packets: u64,
    pub bytes: u64,
    pub site: u32,
}

/// What the CPUs' flow caches hold, per flow.
pub type Pending = HashMap<FlowKey, Cached>;

impl Capture {
    /// Loads the program with the offsets of this kernel and the user's filters, attaches
    /// it and opens its maps. Must run inside a tokio runtime.
    pub fn start(kernel: &KernelBtf, opts: &CaptureOptions) -> Result<Self, CaptureError> {
        if let Some(missing) = crate::kernel::privileges::missing_for_load() {
            return Err(CaptureError::MissingCapabilities(missing));
        }
        if let Some(mode) = crate::kernel::privileges::lockdown_forbidding_bpf_reads() {
            return Err(CaptureError::Lockdown(mode));
        }
        raise_memlock_limit();
        let mut cfg = Config::EMPTY;
        cfg.offsets = kernel.offsets;
        let ct_mark_read = kernel.offsets.ct_mark != NO_OFFSET;
        let by_location = opts.detect.by_location(kernel);
        if by_location {
            if opts.netfilter_ranges.is_empty() {
                return Err(CaptureError::NoNetfilterSymbols);
            }
            cfg.match_location = 1;
            for (i, (start, end)) in opts.netfilter_ranges.iter().take(3).enumerate() {
                cfg.nf_ranges[2 * i] = *start;
                cfg.nf_ranges[2 * i + 1] = *end;
            }
        } else if !kernel.tracepoint_has_reason && !opts.all_reasons {
            return Err(CaptureError::NoDropReasons);
        }
        cfg.drop_reason = if opts.all_reasons {
            ANY_REASON
        } else if by_location {
            REASON_BY_LOCATION
        } else {
            kernel
                .reason_value("NETFILTER_DROP")
                .ok_or(CaptureError::NoNetfilterReason)?
        };
        cfg.capture_headers = u8::from(opts.capture_headers);
        cfg.verdicts = kernel.verdicts.config;
        cfg.verdicts.watched = u8::from(
            opts.verdicts != VerdictMode::Off
                && crate::kernel::verdicts::possible(&kernel.verdicts),
        );
        opts.filters.apply(&mut cfg);

        // The classic tracepoint's layout: from BTF, else from tracefs.
        let record = match (opts.attach, kernel.tracepoint_record) {
            (AttachMode::TpBtf, _) => None,
            (_, Some(r)) => Some(r),
            (_, None) => crate::kernel::tracefs::kfree_skb_format().ok(),
        };
        if let Some(r) = record {
            cfg.tp_skb = r.skbaddr;
            cfg.tp_location = r.location;
        }
        // One field serves both programs: NO_OFFSET means "this kernel passes no reason".
        cfg.tp_reason = match (kernel.tracepoint_has_reason, record) {
            (false, _) => NO_OFFSET,
            (
                true,
                Some(TracepointRecord {
                    reason: Some(off), ..
                }),
            ) => off,
            (true, _) => 0,
        };

        let buffer = opts.buffer.resolve();
        let object = if buffer == BufferKind::Perf {
            PROGRAM_PERF
        } else {
            PROGRAM
        };
        // Parsed once, for the loader (should it need it) and the tp_btf attachment.
        let btf = opts.btf.clone().or_else(|| aya::Btf::from_sys_fs().ok());
        let mut loader = EbpfLoader::new();
        if let Some(btf) = &btf {
            loader.btf(btf);
        }
        if let Some(n) = opts.flow_table {
            loader.map_max_entries(FLOWS, n);
        }
        let mut ebpf = loader
            .override_global("CONFIG", &cfg, true)
            .load(object)
            .map_err(|e| CaptureError::Load(error_chain(&e)))?;
        let attached = match opts.attach {
            AttachMode::TpBtf => attach_tp_btf(&mut ebpf, btf.as_ref()),
            AttachMode::Tracepoint => attach_classic(&mut ebpf, record),
            AttachMode::Auto => attach_tp_btf(&mut ebpf, btf.as_ref()).or_else(|e| {
                log::info!("tp_btf unavailable ({e}); using the classic tracepoint");
                attach_classic(&mut ebpf, record)
            }),
        }?;
        let verdicts = match opts.verdicts {
            VerdictMode::Off => "off (--kernel-verdicts off)".to_string(),
            mode => match crate::kernel::verdicts::attach(&mut ebpf, &kernel.verdicts) {
                Ok(functions) => functions.join(", "),
                Err(why) if mode == VerdictMode::On => return Err(CaptureError::Verdicts(why)),
                Err(why) => {
                    log::info!("rule engine verdicts not watched: {why}");
                    format!("off ({why})")
                }
            },
        };
        let mode = if by_location {
            format!("{attached}, netfilter drops recognised by location")
        } else {
            attached.to_string()
        };
        let mode = if buffer == BufferKind::Perf {
            format!("{mode}, records through perf buffers")
        } else {
            mode
        };

        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name)
                .ok_or_else(|| CaptureError::Map(name, "missing from object".into()))
        };
        let events = match buffer {
            BufferKind::Perf => EventSource::perf(take(&mut ebpf, RING)?),
            _ => EventSource::ring(take(&mut ebpf, RING)?),
        }
        .map_err(|e| CaptureError::Map(RING, e))?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, STATS)?)
            .map_err(|e| CaptureError::Map(STATS, e.to_string()))?;
        let flows = BpfHashMap::try_from(take(&mut ebpf, FLOWS)?)
            .map_err(|e| CaptureError::Map(FLOWS, e.to_string()))?;
        let cache = PerCpuArray::try_from(take(&mut ebpf, FLOW_CACHE)?)
            .map_err(|e| CaptureError::Map(FLOW_CACHE, e.to_string()))?;
        let aggregates = BpfHashMap::try_from(take(&mut ebpf, AGGREGATES)?)
            .map_err(|e| CaptureError::Map(AGGREGATES, e.to_string()))?;
        let aggregates_used = Array::try_from(take(&mut ebpf, AGG_USED)?)
            .map_err(|e| CaptureError::Map(AGG_USED, e.to_string()))?;
        Ok(Capture {
            mode,
            verdicts,
            ct_mark_read,
            _ebpf: ebpf,
            events,
            stats,
            flows,
            cache,
            aggregates,
            aggregates_used,
        })
    }

    /// The programs loaded, with the instructions the verifier processed for each (Linux
    /// 5.16+; `None` before).
    pub fn programs_loaded(&self) -> Vec<(String, Option<u32>)> {
        loaded_programs(&self._ebpf)
    }

    /// Waits until records are available.
    pub async fn readable(&self) -> Result<(), CaptureError> {
        self.events.readable().await.map_err(CaptureError::Poll)
    }

    /// Moves every record now buffered into `out`; returns how many.
    pub fn drain(&mut self, out: &mut Vec<Drop>) -> usize {
        let mut n = 0;
        self.events.drain(|item| {
            if item.len() < size_of::<DropEvent>() {
                return;
            }
            // SAFETY: the record was written by our program as a DropEvent; read_unaligned
            // copes with the buffers' 8-byte alignment guarantee being all we have.
            let raw: DropEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let mut drop = Drop::from(&raw);
            if !self.ct_mark_read {
                drop.ct_mark = None;
            }
            out.push(drop);
            n += 1;
        });
        n
    }

    /// The program's own counters. An error is an error: without them nothing can say
    /// whether the lines reported every drop.
    pub fn stats(&self) -> Result<KernelStats, String> {
        let sum = |i: u32| {
            self.stats
                .get(&i, 0)
                .map(|v| v.iter().sum::<u64>())
                .map_err(|e| format!("cannot read the kernel's counters ({STATS}[{i}]): {e}"))
        };
        Ok(KernelStats {
            matched: sum(STAT_MATCHED)?,
            records_lost: sum(STAT_LOST)?,
            unaggregated: sum(STAT_UNAGGREGATED)?,
        })
    }

    /// Detaches the drop program, so the kernel counts nothing more: the counters and flows
    /// read after this are the capture's final ones, and drops after the end of a capture
    /// are not mistaken for losses.
    pub fn stop_counting(&mut self) {
        for name in [TRACEPOINT, CLASSIC_PROGRAM] {
            let result = match self._ebpf.program_mut(name) {
                Some(aya::programs::Program::BtfTracePoint(p)) => p.unload(),
                Some(aya::programs::Program::TracePoint(p)) => p.unload(),
                _ => Ok(()),
            };
            if let Err(e) = result {
                log::debug!("detaching {name}: {e}");
            }
        }
    }

    /// What the CPUs' flow caches hold. Read it after the flow table entries it completes
    /// (see [`FlowCache`]): a batch moving between the two is then missed, never counted
    /// twice.
    pub fn pending(&self) -> Pending {
        pending_of(&self.caches())
    }

    /// The CPUs' flow caches, one per CPU in CPU order (none when they cannot be read).
    pub fn caches(&self) -> Vec<FlowCache> {
        self.cache
            .get(&0, 0)
            .map(|c| c.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Every aggregate the kernel counted, completed by what the caches hold (read after
    /// the aggregates, as [`Capture::pending`] after the flows). A cached flow's packets
    /// go where the kernel will put them: its own key if the table has it, else its coarse
    /// key if that exists.
    pub fn aggregates(&self) -> Result<HashMap<AggKey, AggCount>, String> {
        let mut out = self.aggregates_in_map()?;
        add_pending(&mut out, self.pending());
        Ok(out)
    }

    /// The aggregates as the kernel's map holds them, without what the caches hold. For a
    /// capture that reports beyond the flow table while the program runs (`serve`): the
    /// kernel adds a cache's batch to its flow before its aggregate (see the eBPF side's
    /// `through_cache`), so a batch the map counted is in the flow table when the table
    /// is read after it; a batch read from a cache may move to its flow between the
    /// table's read and the cache's, and come again in a later line (see
    /// [`held_through`] for the batches that can be added safely).
    pub fn aggregates_in_map(&self) -> Result<HashMap<AggKey, AggCount>, String> {
        let mut out = HashMap::new();
        for item in self.aggregates.iter() {
            let (k, v) = item
                .map_err(|e| format!("cannot read the kernel's aggregates ({AGGREGATES}): {e}"))?;
            out.insert(k, v);
        }
        Ok(out)
    }

    /// Deletes the aggregates of the namespaces `gone` names, and gives their room back to
    /// new keys (the program sends new keys to their coarse key once it has tried to add
    /// `MAX_AGGREGATES - AGG_RESERVE`). Only for a capture that reported their drops as it
    /// went (`serve`): their counts are gone with them. Returns how many were deleted.
    pub fn forget_aggregates(&mut self, gone: &impl Fn(u32) -> bool) -> Result<usize, String> {
        let err = |e: aya::maps::MapError| format!("cannot prune the kernel's aggregates: {e}");
        let mut keep = 0u64;
        let mut doomed = Vec::new();
        for key in self.aggregates.keys() {
            let key = key.map_err(err)?;
            if gone(key.netns) {
                doomed.push(key);
            } else {
                keep += 1;
            }
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        for key in &doomed {
            // Another CPU cannot add to a namespace that is gone; a key already deleted
            // is no error.
            let _ = self.aggregates.remove(key);
        }
        // What is left is what the table holds; CPUs racing with this write only make the
        // count run a little ahead, which the reserve covers.
        self.aggregates_used.set(0, &keep, 0).map_err(err)?;
        Ok(doomed.len())
    }

    /// The state of each of `keys` the kernel counted: the flow table's, counts completed
    /// by what the caches hold.
    pub fn flows_of(&self, keys: &[FlowKey]) -> Vec<(FlowKey, FlowState)> {
        let states = keys
            .iter()
            .filter_map(|k| Some((*k, self.flows.get(k, 0).ok()?)))
            .collect();
        let mut pending = self.pending();
        pending.retain(|k, _| keys.contains(k));
        with_pending(states, pending)
    }

    /// Every flow the kernel counted (one walk of the flow table: for the end of a
    /// capture), counts completed by what the caches hold.
    pub fn flows(&self) -> Vec<(FlowKey, FlowState)> {
        let states = self.flows.iter().filter_map(Result::ok).collect();
        with_pending(states, self.pending())
    }
}

/// The programs of `ebpf` that are loaded, with the instructions the verifier processed.
pub(crate) fn loaded_programs(ebpf: &Ebpf) -> Vec<(String, Option<u32>)> {
    ebpf.programs()
        .filter_map(|(name, p)| {
            Some((
                name.to_string(),
                p.info().ok()?.verified_instruction_count(),
            ))
        })
        .collect()
}

/// What `caches` hold, per flow.
fn pending_of(caches: &[FlowCache]) -> Pending {
    let mut out = Pending::new();
    for c in caches.iter().filter(|c| c.live != 0 && c.pending != 0) {
        let e = out.entry(c.key).or_default();
        e.packets += c.pending;
        e.bytes += c.bytes;
        e.site = c.site;
    }
    out
}

/// What the caches held in `before` and still held in `after`: the same flow since the
/// same moment (`since_ns` changes whenever a cache moves its batch to the flow table)
/// and no fewer packets. Those packets were in neither the flow table nor the
/// aggregates at any time between the two reads; any other cache's batch may have moved
/// meanwhile, and counting it would count it twice.
pub fn held_through(before: &[FlowCache], after: &[FlowCache]) -> Pending {
    let held: Vec<FlowCache> = before
        .iter()
        .zip(after)
        .filter(|(b, a)| {
            b.live != 0
                && a.live != 0
                && b.key == a.key
                && b.since_ns == a.since_ns
                && a.pending >= b.pending
        })
        .map(|(b, _)| *b)
        .collect();
    pending_of(&held)
}

/// Adds what caches hold to the aggregates, where the kernel will put it: its own key if
/// the table has it, else its coarse key if that exists.
pub fn add_pending(aggregates: &mut HashMap<AggKey, AggCount>, pending: Pending) {
    for (key, c) in pending {
        let fine = AggKey::of(&key, c.site);
        let at = if !aggregates.contains_key(&fine) && aggregates.contains_key(&fine.coarse()) {
            fine.coarse()
        } else {
            fine
        };
        let sum: &mut AggCount = aggregates.entry(at).or_default();
        sum.packets += c.packets;
        sum.bytes += c.bytes;
    }
}

/// Adds the caches' packets to their flows' states; a flow the table no longer holds (it
/// was evicted while a cache counted it) gets a state of its own.
fn with_pending(
    mut states: Vec<(FlowKey, FlowState)>,
    mut pending: Pending,
) -> Vec<(FlowKey, FlowState)> {
    for (key, state) in &mut states {
        if let Some(c) = pending.remove(key) {
            state.count += c.packets;
            state.bytes += c.bytes;
        }
    }
    states.extend(
        pending
            .into_iter()
            .map(|(key, c)| (key, FlowState::counted_only(c.packets, c.bytes, c.site))),
    );
    states
}

fn attach_tp_btf(ebpf: &mut Ebpf, btf: Option<&aya::Btf>) -> Result<&'static str, CaptureError> {
    let btf = btf.ok_or_else(|| {
        CaptureError::Program(
            TP_BTF_KIND,
            "no kernel BTF at /sys/kernel/btf/vmlinux".into(),
        )
    })?;
    let program: &mut BtfTracePoint = ebpf
        .program_mut(TRACEPOINT)
        .ok_or_else(|| CaptureError::Load(format!("program {TRACEPOINT} missing from object")))?
        .try_into()
        .map_err(|e: ProgramError| CaptureError::Program(TP_BTF_KIND, e.to_string()))?;
    if let Some(why) = crate::kernel::program::refused_for_test(TRACEPOINT) {
        return Err(CaptureError::Program(TP_BTF_KIND, why));
    }
    program
        .load(TRACEPOINT, btf)
        .map_err(|e| CaptureError::Program(TP_BTF_KIND, program_error(&e)))?;
    log_verifier_work(program.info());
    program
        .attach()
        .map_err(|e| CaptureError::Program(TP_BTF_KIND, program_error(&e)))?;
    Ok("tp_btf/kfree_skb")
}

fn attach_classic(
    ebpf: &mut Ebpf,
    record: Option<TracepointRecord>,
) -> Result<&'static str, CaptureError> {
    if record.is_none() {
        return Err(CaptureError::TracepointLayout(
            "not in BTF, and tracefs has no skb/kfree_skb/format".into(),
        ));
    }
    crate::kernel::tracefs::ensure_mounted()
        .map_err(|e| CaptureError::TracepointLayout(format!("tracefs: {e}")))?;
    let program: &mut TracePoint = ebpf
        .program_mut(CLASSIC_PROGRAM)
        .ok_or_else(|| {
            CaptureError::Load(format!("program {CLASSIC_PROGRAM} missing from object"))
        })?
        .try_into()
        .map_err(|e: ProgramError| CaptureError::Program(CLASSIC_KIND, e.to_string()))?;
    if let Some(why) = crate::kernel::program::refused_for_test(CLASSIC_PROGRAM) {
        return Err(CaptureError::Program(CLASSIC_KIND, why));
    }
    program
        .load()
        .map_err(|e| CaptureError::Program(CLASSIC_KIND, program_error(&e)))?;
    log_verifier_work(program.info());
    program
        .attach("skb", "kfree_skb")
        .map_err(|e| CaptureError::Program(CLASSIC_KIND, program_error(&e)))?;
    Ok("tracepoint/skb/kfree_skb")
}

/// How much work the verifier did: the number to watch, since old kernels refuse
/// programs over a million verified instructions (see `cargo xtask vm-test`).
fn log_verifier_work(info: Result<aya::programs::ProgramInfo, ProgramError>) {
    match info.map(|i| i.verified_instruction_count()) {
        Ok(Some(n)) => log::info!("the verifier processed {n} instructions"),
        Ok(None) => log::info!("this kernel does not report the verifier's work"),
        Err(e) => log::info!("no program info: {e}"),
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones use memcg. Raising
/// the limit may be refused (no CAP_SYS_RESOURCE): that is not fatal.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dport: u16, pending: u64, since_ns: u64) -> FlowCache {
        let mut c: FlowCache = unsafe { std::mem::zeroed() };
        c.key.dport = dport;
        c.pending = pending;
        c.bytes = pending * 100;
        c.live = 1;
        c.since_ns = since_ns;
        c
    }

    #[test]
    fn only_batches_that_stayed_in_their_cache_are_held_through() {
        let before = [
            cache(53, 5, 10),
            cache(80, 7, 20),
            cache(443, 3, 30),
            cache(22, 4, 40),
        ];
        let after = [
            cache(53, 9, 10),  // grew, same batch: held
            cache(80, 0, 25),  // moved to its flow: not held
            cache(443, 2, 30), // fewer: the batch moved and another began
            cache(25, 4, 40),  // another flow
        ];
        let held = held_through(&before, &after);
        assert_eq!(held.len(), 1, "{held:?}");
        let (key, c) = held.iter().next().unwrap();
        assert_eq!((key.dport, c.packets, c.bytes), (53, 5, 500));
    }

    #[test]
    fn a_batch_goes_to_the_coarse_key_only_when_its_own_is_not_there() {
        let c = cache(53, 5, 10);
        let fine = AggKey::of(&c.key, c.site);
        let mut aggregates = HashMap::from([(fine.coarse(), AggCount::default())]);
        add_pending(&mut aggregates, pending_of(&[c]));
        assert_eq!(aggregates[&fine.coarse()].packets, 5);
        aggregates.insert(fine, AggCount::default());
        add_pending(&mut aggregates, pending_of(&[c]));
        assert_eq!(aggregates[&fine].packets, 5);
    }
}
