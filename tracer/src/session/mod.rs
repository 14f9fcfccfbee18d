//! The session: one capture from start to summary, the way every front-end gets drops.
//!
//! A [`Session`] attaches the kernel programs ([`crate::kernel`]), turns each record into an
//! enriched [`DropRecord`] ([`crate::enrich`]), names its rule ([`crate::attribution`]),
//! folds flows ([`flows`]) and keeps the totals ([`summary`]). Front-ends give it their
//! [`options`] and a callback per record; it hands back its [`StartInfo`] and, at the end,
//! a [`summary::SummaryRecord`].

pub mod attempts;
pub mod beyond;
pub mod flows;
pub mod options;
pub mod summary;

use std::{
    io::{self, Write as _},
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    attribution::Attributor,
    enrich::Enricher,
    enrich::netns::NetnsSelector,
    escape::terminal,
    kernel::btf::KernelBtf,
    kernel::capture::{Capture, CaptureOptions},
    kernel::drop::{Drop, Tally},
    kernel::kallsyms,
    record::DropRecord,
};
use flows::{ACTIVE_WINDOW, CatchUp, FlowBook};
use options::{CaptureArgs, FilterArgs};
use summary::Summary;

/// What a capture watches, printed before the first drop.
#[derive(Debug, Clone, Serialize)]
pub struct StartInfo {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// How drops are captured (`tp_btf/kfree_skb`).
    pub mode: String,
    /// Engine functions whose verdicts the kernel reports (`nft_do_chain, ipt_do_table`),
    /// or `off (why)`.
    pub kernel_verdicts: String,
    /// `netfilter` or `all`.
    pub reasons: &'static str,
    pub netns: String,
    pub filters: String,
    /// How the capture ends.
    pub until: String,
}

impl StartInfo {
    /// Two lines for stderr: what is watched and for how long, then how.
    pub fn line(&self) -> String {
        let filters = if self.filters.is_empty() {
            String::new()
        } else {
            format!(" matching {}", self.filters)
        };
        format!(
            "droptrace: watching {} drops in netns {}{} {}\ndroptrace: via {}; kernel verdicts: {}",
            self.reasons,
            terminal(&self.netns),
            terminal(&filters),
            self.until,
            self.mode,
            terminal(&self.kernel_verdicts)
        )
    }
}

/// How often the record buffer is read without being woken: the kernel wakes droptrace
/// only once a batch of records waits (tracer-ebpf/src/main.rs), so this is how late a lone
/// drop's record can be.
pub const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// How often a long capture looks for namespaces that are gone.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// In a capture of every namespace, how often namespaces made since are looked for, to
/// read their rulesets before their first drop (see [`Attributor::prime_new`]), and how
/// long those reads may hold up the capture each time (the records wait in the ring
/// buffer meanwhile). At the start, they are read while the program loads.
const NEW_NAMESPACES_EVERY: Duration = Duration::from_secs(2);
const PRIME_PER_TICK: Duration = Duration::from_millis(100);
const PRIME_AT_START: Duration = Duration::from_secs(1);

/// Buffers bigger than this after a burst (a scan: 100,000 lines in one sweep) are freed
/// rather than kept for the next one.
const KEEP_CAPACITY: usize = 4096;

/// Frees the buffers a burst grew, and hands the freed memory back to the system, so a
/// scan does not leave a long capture (`serve`) holding hundreds of MB it no longer uses.
fn release_burst_memory(lines: &mut [&mut Vec<DropRecord>], batch: &mut Vec<Drop>) {
    let mut released = false;
    for v in lines.iter_mut() {
        if v.is_empty() && v.capacity() > KEEP_CAPACITY {
            **v = Vec::new();
            released = true;
        }
    }
    if batch.is_empty() && batch.capacity() > KEEP_CAPACITY {
        *batch = Vec::new();
        released = true;
    }
    if released {
        return_free_memory();
    }
}

/// Hands memory freed after a burst back to the system: glibc keeps it in its arenas;
/// musl (the release binary) returns it by itself.
fn return_free_memory() {
    // SAFETY: malloc_trim only releases free memory; no pointer is invalidated.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often, at most, the whole flow table is read while records are being lost.
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(3);

/// The capture's health (see [`Session::health`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Drops that matched the filters, as the kernel counted them; `None` when unreadable.
    pub matched_in_kernel: Option<u64>,
    /// Records the kernel could not hand over (their packets are still counted).
    pub records_lost: Option<u64>,
    /// Why the kernel's counters could not be read.
    pub error: Option<String>,
    /// Drops reported on lines so far.
    pub reported: u64,
    /// Drops left out by the process filters.
    pub filtered_out: u64,
    pub ruleset_reads: u64,
    /// Reads that left a source unread or unparsed.
    pub ruleset_reads_with_problems: u64,
    /// Drops reported from the kernel's aggregates, without per-flow detail (in `reported`).
    pub beyond_flow_table: u64,
    /// Flows whose line was given up to the aggregates (`serve`), and whether one was
    /// given up within `beyond::DEGRADED_FOR`.
    pub lines_given_up: u64,
    pub detail_degraded: bool,
}

/// Whether output continues after a batch of lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Open,
    /// `--count` reached.
    Limit,
    /// stdout closed.
    Closed,
}

/// A running capture with its enrichment state and running totals. Shared by the
/// commands that watch drops.
pub struct Session {
    pub capture: Capture,
    pub enricher: Enricher,
    pub summary: Summary,
    book: FlowBook,
    /// Process filters, applied to enriched records.
    process_filter: FilterArgs,
    /// Packets left out by the process filters (not lost: unwanted).
    filtered_out: u64,
    /// `--count` ended the capture.
    limited: bool,
    /// Names rules; `None` with `--no-rules`.
    attributor: Option<Attributor>,
    /// Attempts beside drops (`--attempts`).
    attempts: Option<attempts::AttemptsBook>,
    /// Why `--attempts` could not be honoured (the kernel refused its programs).
    attempts_unavailable: Option<String>,
    /// The signal that ended the capture, if one did.
    interrupted: Option<&'static str>,
    /// What each drop site is, and the drops lines reported per aggregate (see [`beyond`]).
    sites: beyond::SiteBook,
    lines_by_aggregate: beyond::LineBook,
    /// Lines still to be made this second, when the capture counts beyond the flow table
    /// ([`Session::count_beyond_flow_table`]); `None`: every line is made.
    line_budget: Option<usize>,
    /// A line was left to a later second since the flow table was last read whole.
    lines_deferred: bool,
    /// Drops beyond the flow table reported as the capture goes (`serve`), not at its end.
    live: Option<beyond::LiveBook>,
    started: Instant,
    last_prune: Instant,
    /// The capture watches every namespace: new ones are read ahead of their drops.
    every_namespace: bool,
    last_new_namespaces: Instant,
    /// Records lost when the flow table was last read whole, and when.
    lost_swept: u64,
    last_full_sweep: Instant,
    // Registered before the start line is printed, so a Ctrl-C right after it is caught.
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
    netns_label: String,
    mode: String,
    verdicts: String,
    all_reasons: bool,
}

impl Session {
    pub fn start(
        filters: &FilterArgs,
        capture: &CaptureArgs,
        capture_headers: bool,
    ) -> anyhow::Result<Self> {
        let f = filters.to_filters()?;
        // The first read of the watched namespace's ruleset, so its first drops can be
        // confirmed by their rule's counter: on a thread, while the program is made ready.
        let every_namespace = matches!(filters.netns_selector(), NetnsSelector::All);
        let attributor = (!capture.no_rules).then(|| {
            let netns = f
                .netns
                .or_else(crate::enrich::netns::own_inode)
                .unwrap_or(0);
            let keep_baselines = capture.attempts;
            std::thread::spawn(move || {
                let mut a = Attributor::default();
                if keep_baselines {
                    a.keep_baselines();
                }
                a.prime(netns);
                // The others too, while the program loads; the rest at the next ticks.
                if every_namespace {
                    a.prime_new(
                        &crate::enrich::netns::LiveNamespaces::scan(),
                        PRIME_AT_START,
                    );
                }
                a
            })
        });
        // Two reads of the kernel's BTF, side by side: for the program's offsets (here),
        // and as aya reads it (load and attach).
        let aya_btf = std::thread::spawn(|| aya::Btf::from_sys_fs().ok());
        let kernel = match &capture.btf {
            Some(file) => KernelBtf::from_file(file)?,
            None => KernelBtf::load()?,
        };
        // /proc/kallsyms names the drops' functions; only a kernel without drop reasons
        // needs it before the program is loaded (see `kallsyms::Background`).
        let mut kallsyms = capture
            .detect
            .by_location(&kernel)
            .then(kallsyms::Background::start);
        let netfilter_ranges = match &mut kallsyms {
            Some(symbols) => {
                let symbols = symbols.get();
                ["nf_hook_slow", "nf_hook_slow_list", "nft_do_chain"]
                    .iter()
                    .filter_map(|f| symbols.range(f))
                    .collect()
            }
            None => Vec::new(),
        };
        let btf = aya_btf.join().ok().flatten();
        let opts = CaptureOptions {
            filters: f,
            all_reasons: capture.all_reasons,
            capture_headers,
            attach: capture.attach,
            detect: capture.detect,
            netfilter_ranges,
            verdicts: capture.kernel_verdicts,
            buffer: capture.buffer,
            btf,
            flow_table: capture.flow_table_size,
        };
        let cap = Capture::start(&kernel, &opts)?;
        let kallsyms = kallsyms.unwrap_or_else(kallsyms::Background::start);
        // Before privileges are dropped below: it loads programs too.
        // An optional part: when the kernel refuses its programs, drops are still traced and
        // named, and the summary says why attempts are missing.
        let (attempts, attempts_unavailable) = if capture.attempts {
            match attempts::AttemptsBook::start(&kernel, &opts.filters) {
                Ok(book) => (Some(book), None),
                Err(e) => {
                    let why = format!("{e:#}");
                    log::warn!(
                        "attempts unavailable (--attempts): {why}; drops are still reported"
                    );
                    (None, Some(why))
                }
            }
        } else {
            (None, None)
        };
        crate::kernel::privileges::drop_after_attach();
        let attributor = attributor
            .map(|reading| reading.join())
            .transpose()
            .map_err(|_| anyhow::anyhow!("the first ruleset read panicked"))?;
        let mode = cap.mode.clone();
        let verdicts = cap.verdicts.clone();
        let mut enricher = Enricher::new(kernel, kallsyms);
        if capture.resolve {
            enricher.resolve_names();
        }
        let netns_label = match (filters.netns_selector(), opts.filters.netns) {
            (NetnsSelector::All, _) => "all".to_string(),
            (_, Some(ino)) => match enricher.netns_name(ino) {
                Some(name) => format!("{name} ({ino})"),
                None => format!("{} ({ino})", filters.netns),
            },
            (_, None) => filters.netns.given.clone(),
        };
        Ok(Session {
            capture: cap,
            enricher,
            summary: Summary::default(),
            book: FlowBook::tracking(
                capture.flow_table_size.unwrap_or(tracer_common::MAX_FLOWS) as usize
            ),
            attributor,
            attempts,
            attempts_unavailable,
            interrupted: None,
            sites: beyond::SiteBook::default(),
            lines_by_aggregate: beyond::LineBook::default(),
            line_budget: None,
            lines_deferred: false,
            live: None,
            process_filter: filters.clone(),
            filtered_out: 0,
            limited: false,
            started: Instant::now(),
            last_prune: Instant::now(),
            every_namespace,
            last_new_namespaces: Instant::now(),
            lost_swept: 0,
            last_full_sweep: Instant::now(),
            sigint: signal(SignalKind::interrupt())?,
            sigterm: signal(SignalKind::terminate())?,
            netns_label,
            mode,
            verdicts,
            all_reasons: capture.all_reasons,
        })
    }

    /// Reports drops beyond the flow table at the end from the kernel's aggregates (see
    /// [`beyond`]), and makes at most [`beyond::LINES_PER_TICK`] lines a second, leaving
    /// the rest of a burst to them. Not with process filters or `--count`: the aggregates
    /// know neither processes nor order.
    pub fn count_beyond_flow_table(&mut self, c: &CaptureArgs) {
        let process_filters = self.process_filter.pid.is_some()
            || self.process_filter.comm.is_some()
            || self.process_filter.cgroup.is_some();
        if !process_filters && c.count.is_none() {
            self.line_budget = Some(beyond::LINES_PER_TICK);
        }
    }

    /// Like [`Session::count_beyond_flow_table`], for a capture without an end (`serve`):
    /// drops beyond the flow table are reported every few seconds (see
    /// [`beyond::LiveBook`], taken with [`Session::take_beyond`]), and a line that does not
    /// fit in its second is given up to the aggregates rather than made later, so lines in
    /// flight stay bounded however many flows a scan brings.
    pub fn count_beyond_flow_table_live(&mut self, c: &CaptureArgs) {
        self.count_beyond_flow_table(c);
        if self.line_budget.is_some() {
            self.live = Some(beyond::LiveBook::default());
        }
    }

    /// Drops beyond the flow table reported since the last call (see
    /// [`Session::count_beyond_flow_table_live`]).
    pub fn take_beyond(&mut self) -> Vec<beyond::BeyondCount> {
        self.live
            .as_mut()
            .map(beyond::LiveBook::take)
            .unwrap_or_default()
    }

    /// Whether another line may be made now (see [`Session::count_beyond_flow_table`]).
    fn line_allowed(&mut self) -> bool {
        match &mut self.line_budget {
            None => true,
            Some(0) => {
                if let Some(live) = &mut self.live {
                    live.gave_up_line();
                } else {
                    self.lines_deferred = true;
                }
                false
            }
            Some(n) => {
                *n -= 1;
                true
            }
        }
    }

    pub fn start_info(&self, filters: &FilterArgs, c: &CaptureArgs) -> StartInfo {
        let until = match (c.duration, c.count) {
            (Some(d), Some(n)) => format!(
                "for {} or {n} drops; Ctrl-C ends it",
                humantime::format_duration(d)
            ),
            (Some(d), None) => format!("for {} or until Ctrl-C", humantime::format_duration(d)),
            (None, Some(n)) => format!("until {n} drops or Ctrl-C"),
            (None, None) => "until Ctrl-C".into(),
        };
        StartInfo {
            kind: "start",
            mode: self.mode.clone(),
            kernel_verdicts: self.verdicts.clone(),
            reasons: if self.all_reasons { "all" } else { "netfilter" },
            netns: self.netns_label.clone(),
            filters: filters.describe(),
            until,
        }
    }

    /// Captures until the duration, the count or a signal ends it, handing each record
    /// to `emit`. A closed stdout also ends it.
    pub async fn run(
        &mut self,
        c: &CaptureArgs,
        emit: impl FnMut(&DropRecord) -> io::Result<()>,
    ) -> anyhow::Result<()> {
        self.run_with_tick(c, emit, |_| Ok(())).await
    }

    /// Like [`Session::run`], calling `tick` once a second (for live views and metrics),
    /// with the session to read its [`Session::health`].
    pub async fn run_with_tick(
        &mut self,
        c: &CaptureArgs,
        emit: impl FnMut(&DropRecord) -> io::Result<()>,
        tick_fn: impl FnMut(&mut Session) -> io::Result<()>,
    ) -> anyhow::Result<()> {
        self.run_until(c, emit, tick_fn, std::future::pending())
            .await
    }

    /// Like [`Session::run_with_tick`], also ending when `until` completes (before the
    /// duration: `verify` ends once every probe has its answer).
    pub async fn run_until(
        &mut self,
        c: &CaptureArgs,
        mut emit: impl FnMut(&DropRecord) -> io::Result<()>,
        mut tick_fn: impl FnMut(&mut Session) -> io::Result<()>,
        until: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(until);
        let deadline = c
            .duration
            .map(|d| tokio::time::Instant::from_std(self.started + d));
        let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now));
        tokio::pin!(sleep);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch: Vec<Drop> = Vec::new();
        let mut staged = Vec::new();
        let mut out = Vec::new();
        loop {
            let (stop, sweep) = tokio::select! {
                r = self.capture.readable() => { r?; (false, false) }
                _ = drain.tick() => (false, false),
                _ = tick.tick() => (false, true),
                _ = self.sigint.recv() => {
                    self.interrupted = Some("SIGINT");
                    (true, false)
                }
                _ = self.sigterm.recv() => {
                    self.interrupted = Some("SIGTERM");
                    (true, false)
                }
                _ = &mut sleep, if deadline.is_some() => (true, false),
                _ = &mut until => (true, false),
            };
            if stop {
                // Nothing counted from here on: the end's counters and flows are final.
                self.capture.stop_counting();
            }
            if let Some(budget) = &mut self.line_budget {
                if stop {
                    *budget = beyond::LINES_AT_END;
                } else if sweep {
                    *budget = beyond::LINES_PER_TICK;
                }
            }
            // Before the records are read: what the lines must account for by now.
            let matched = (sweep && self.live.is_some())
                .then(|| self.capture.stats().ok())
                .flatten();
            // Drain also after a stop: records already in the ring buffer count.
            self.capture.drain(&mut batch);
            for d in batch.drain(..) {
                self.take_record(d, &mut staged);
            }
            if self.book.over_table() {
                self.forget_flows_gone();
            }
            if sweep {
                self.sweep_active(&mut staged);
                match matched {
                    Some(stats) => self.report_beyond_live(&stats, &mut staged),
                    None => self.sweep_after_lost_records(&mut staged),
                }
                if self.live.is_none() && self.lines_by_aggregate.crowded() {
                    self.compact_lines();
                }
                self.forget_gone_namespaces();
                self.prime_new_namespaces();
            }
            if stop {
                // The flow table has the packets no record carried yet.
                self.sweep_all(&mut staged);
            }
            self.attribute(&mut staged, &mut out, sweep, stop);
            let limit_hit = self.emit_all(&mut out, c.count, &mut emit)?;
            release_burst_memory(&mut [&mut staged, &mut out], &mut batch);
            if sweep && let Err(e) = tick_fn(self) {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(e.into());
            }
            if limit_hit == Flow::Closed {
                return Ok(());
            }
            if limit_hit == Flow::Limit {
                // Stopped on purpose: what the kernel counted after that is not "lost".
                self.capture.stop_counting();
                self.limited = true;
                return Ok(());
            }
            if stop {
                return Ok(());
            }
        }
    }

    /// Once a minute, forgets the rulesets of namespaces that are gone: a capture of weeks
    /// across containers coming and going keeps only the living ones.
    fn forget_gone_namespaces(&mut self) {
        if self.last_prune.elapsed() < PRUNE_EVERY {
            return;
        }
        self.last_prune = Instant::now();
        let alive = crate::enrich::netns::LiveNamespaces::scan();
        self.enricher.forget_gone(&alive);
        if let Some(a) = &mut self.attributor {
            a.forget_gone(&alive);
        }
        // `serve` reported their drops as it went: their aggregates give the kernel's
        // table room back for the namespaces to come.
        if let Some(live) = &mut self.live {
            let gone = |netns: u32| !alive.has_inode(netns);
            match self.capture.forget_aggregates(&gone) {
                Ok(0) => {}
                Ok(n) => log::debug!("forgot {n} aggregates of namespaces that are gone"),
                Err(e) => log::warn!("{e}"),
            }
            self.lines_by_aggregate.forget(&gone);
            live.forget(&gone);
        }
        // What was forgotten goes back to the system (glibc keeps it otherwise).
        return_free_memory();
    }

    /// In a capture of every namespace, every [`NEW_NAMESPACES_EVERY`], reads the rulesets
    /// of namespaces made since, so their first drops are confirmed like the next ones.
    fn prime_new_namespaces(&mut self) {
        if !self.every_namespace || self.last_new_namespaces.elapsed() < NEW_NAMESPACES_EVERY {
            return;
        }
        self.last_new_namespaces = Instant::now();
        if let Some(a) = &mut self.attributor {
            let live = crate::enrich::netns::LiveNamespaces::scan();
            let read = a.prime_new(&live, PRIME_PER_TICK);
            if read > 0 {
                log::debug!("read the rulesets of {read} new namespace(s) ahead of their drops");
            }
        }
    }

    /// The signal (`SIGINT`, `SIGTERM`) that ended the capture before its end, if one did.
    pub fn interrupted(&self) -> Option<&'static str> {
        self.interrupted
    }

    /// With `--attempts`: attempts and attempts that got through so far, by destination
    /// (see [`attempts::AttemptsBook::counts`]).
    pub fn attempt_counts(&self) -> Option<std::collections::HashMap<String, (u64, u64)>> {
        self.attempts.as_ref().map(attempts::AttemptsBook::counts)
    }

    /// The capture's own health so far: what the kernel counted, what could not be
    /// carried, how the ruleset reads went.
    pub fn health(&self) -> Health {
        use std::sync::atomic::Ordering::Relaxed;
        let kernel = self.capture.stats();
        Health {
            matched_in_kernel: kernel.as_ref().ok().map(|k| k.matched),
            records_lost: kernel.as_ref().ok().map(|k| k.records_lost),
            error: kernel.err(),
            reported: self.summary.total,
            filtered_out: self.filtered_out,
            ruleset_reads: crate::attribution::snapshot::READS.load(Relaxed),
            ruleset_reads_with_problems: crate::attribution::snapshot::READS_WITH_PROBLEMS
                .load(Relaxed),
            beyond_flow_table: self.summary.beyond_flow_table(),
            lines_given_up: self.live.as_ref().map_or(0, |l| l.lines_given_up().0),
            detail_degraded: self.live.as_ref().is_some_and(|l| l.lines_given_up().1),
        }
    }

    /// Names the rule of each staged line. Lines wait for the next ruleset read of their
    /// namespace (as soon as its last read is old enough, see `Attributor::flush`, and at
    /// the end) so their rule's counter can confirm the attribution. Once a second
    /// (`tick`), namespaces without lines waiting have their ruleset re-read.
    fn attribute(
        &mut self,
        staged: &mut Vec<DropRecord>,
        out: &mut Vec<DropRecord>,
        tick: bool,
        end: bool,
    ) {
        match &mut self.attributor {
            None => out.append(staged),
            Some(a) => {
                for r in staged.drain(..) {
                    a.submit(r);
                }
                if a.has_pending() {
                    out.extend(a.flush(end));
                }
                if tick {
                    a.refresh_idle();
                }
            }
        }
    }

    /// Enriches a kernel record into a line for the packets its flow gained since the
    /// last line.
    fn take_record(&mut self, d: Drop, out: &mut Vec<DropRecord>) {
        let delta = self.book.unreported(&d.key, d.cumulative);
        if delta.packets == 0 {
            return;
        }
        if self.book.full() && !self.book.knows(&d.key) {
            // A burst of new flows between two reads of the table (a scan into a small one).
            self.forget_flows_gone();
        }
        // Its drops stay counted in the kernel: a later line or the aggregates report them.
        if !self.line_allowed() {
            if self.live.is_some() {
                self.book.give_up(d.key, d.cumulative);
            }
            return;
        }
        let (key, cumulative, site) = (
            d.key,
            d.cumulative,
            d.stack_is_sites.then_some(d.aggregate.site),
        );
        let mut rec = self.enricher.record(d);
        if let Some(site) = site {
            self.sites.learn(site, rec.hook, rec.engine);
        }
        rec.count = delta.packets;
        rec.bytes = delta.bytes;
        self.book.reported(key, cumulative, &rec);
        self.made(rec, out);
    }

    /// A line is made: its drops are credited to its aggregate now, before it waits for
    /// its rule, so the aggregates' share beyond the lines is never counted twice.
    fn made(&mut self, rec: DropRecord, out: &mut Vec<DropRecord>) {
        self.lines_by_aggregate.credit(&rec);
        out.push(rec);
    }

    /// Forgets the flows the kernel's table no longer holds (one read of the table).
    fn forget_flows_gone(&mut self) {
        let flows = self.capture.flows();
        self.book
            .forget_absent(&flows.iter().map(|(k, _)| k).collect());
    }

    /// Re-reads the kernel's counts of recently active flows, and of the flows the CPUs'
    /// caches are counting (a flood of one flow writes no record for a long while).
    fn sweep_active(&mut self, out: &mut Vec<DropRecord>) {
        let now = self.enricher.now();
        let mut keys = self.book.active(ACTIVE_WINDOW);
        let cached = self.capture.pending();
        keys.extend(
            cached
                .keys()
                .filter(|k| self.book.knows(k) && !keys.contains(k))
                .collect::<Vec<_>>(),
        );
        for (key, state) in self.capture.flows_of(&keys) {
            self.catch_up(&key, &state, &now, out);
        }
    }

    /// After the kernel lost records (ring buffer full: a scan, a stalled reader) or lines
    /// were left to a later second, reads the whole flow table, at most every few seconds:
    /// the flows whose only record was lost or passed over are reported now (as far as the
    /// line budget goes), not at the end of the capture — which for `serve` never comes.
    fn sweep_after_lost_records(&mut self, out: &mut Vec<DropRecord>) {
        let Ok(lost) = self.capture.stats().map(|s| s.records_lost) else {
            return;
        };
        if (lost > self.lost_swept || self.lines_deferred)
            && self.last_full_sweep.elapsed() >= FULL_SWEEP_EVERY
        {
            self.lost_swept = lost;
            self.lines_deferred = false;
            self.last_full_sweep = Instant::now();
            self.sweep_all(out);
        }
    }

    /// The line for a known flow's packets since its last, from its template, or rebuilt
    /// from the flow table entry when the template was let go (see [`flows`]).
    fn catch_up(
        &mut self,
        key: &tracer_common::FlowKey,
        state: &tracer_common::FlowState,
        now: &str,
        out: &mut Vec<DropRecord>,
    ) {
        let cumulative = Tally::of(state);
        if self.book.unreported(key, cumulative).packets == 0 {
            return;
        }
        if !self.line_allowed() {
            if self.live.is_some() {
                self.book.give_up(*key, cumulative);
            }
            return;
        }
        match self.book.catch_up(key, cumulative, now.to_string()) {
            CatchUp::Nothing => {}
            CatchUp::Line(rec) => self.made(*rec, out),
            CatchUp::Rebuild(sketch) => {
                let mut rec = self.enricher.record(Drop::from_flow(key, state));
                sketch.apply(&mut rec);
                rec.time = now.to_string();
                let delta = self.book.unreported(key, cumulative);
                (rec.count, rec.bytes) = (delta.packets, delta.bytes);
                self.book.reported(*key, cumulative, &rec);
                self.made(rec, out);
            }
        }
    }

    /// Reads the whole flow table: every packet the kernel counted gets reported.
    fn sweep_all(&mut self, out: &mut Vec<DropRecord>) {
        let now = self.enricher.now();
        let flows = self.capture.flows();
        self.book
            .forget_absent(&flows.iter().map(|(k, _)| k).collect());
        for (key, state) in flows {
            if self.book.knows(&key) {
                self.catch_up(&key, &state, &now, out);
            } else {
                self.take_record(Drop::from_flow(&key, &state), out);
            }
        }
    }

    /// Emits lines, stopping at `limit` packets. Says whether the limit was hit or the
    /// output closed.
    fn emit_all(
        &mut self,
        out: &mut Vec<DropRecord>,
        limit: Option<u64>,
        emit: &mut impl FnMut(&DropRecord) -> io::Result<()>,
    ) -> anyhow::Result<Flow> {
        for mut rec in out.drain(..) {
            if !self.process_filter.wants_process(&rec) {
                self.filtered_out += rec.count;
                continue;
            }
            if let Some(n) = limit {
                let left = n.saturating_sub(self.summary.total);
                if left == 0 {
                    return Ok(Flow::Limit);
                }
                if left < rec.count {
                    // The packets of a line are not told apart: its bytes are cut pro rata.
                    rec.bytes = rec.bytes / rec.count * left;
                    rec.count = left;
                }
            }
            self.summary.add(&rec);
            if let Some(a) = &mut self.attempts {
                a.observe(&rec);
            }
            if let Err(e) = emit(&rec) {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    return Ok(Flow::Closed);
                }
                return Err(e.into());
            }
        }
        Ok(match limit {
            Some(n) if self.summary.total >= n => Flow::Limit,
            _ => Flow::Open,
        })
    }

    /// With `serve`: when the lines leave drops the kernel counted unreported (`stats`
    /// read before this tick's records), at most every [`beyond::RECONCILE_EVERY`], reads
    /// the aggregates, then the records and the whole flow table, and reports what the
    /// aggregates counted beyond the lines (see [`beyond`] for why in that order).
    fn report_beyond_live(
        &mut self,
        stats: &crate::kernel::capture::KernelStats,
        out: &mut Vec<DropRecord>,
    ) {
        let Some(live) = &self.live else {
            return;
        };
        let accounted = self.lines_by_aggregate.total() + live.total();
        let backlog = stats.matched.saturating_sub(stats.unaggregated) > accounted;
        if !live.due(backlog || self.lines_by_aggregate.crowded()) {
            return;
        }
        let caches = self.capture.caches();
        let mut aggregates = match self.capture.aggregates_in_map() {
            Ok(a) => a,
            Err(e) => {
                log::warn!("{e}: drops beyond the flow table are not reported");
                return;
            }
        };
        // The records written before the read: a flow evicted since (a scan evicts
        // thousands a second) is in no read of the table, and its record, taken after the
        // drops beyond were reported, would report its drops again.
        let mut batch = Vec::new();
        self.capture.drain(&mut batch);
        for d in batch {
            self.take_record(d, out);
        }
        self.last_full_sweep = Instant::now();
        self.sweep_all(out);
        // A cache's batch that stayed there through both reads is in no aggregate yet; the
        // lines just made have it (the table's read adds the caches). A flood's last batch
        // on a CPU that drops nothing more stays there.
        crate::kernel::capture::add_pending(
            &mut aggregates,
            crate::kernel::capture::held_through(&caches, &self.capture.caches()),
        );
        let Some(live) = &mut self.live else {
            return;
        };
        let items = live.unreported(&mut self.lines_by_aggregate, &aggregates);
        let counted = self.attribute_beyond(items);
        for (key, n, count) in counted {
            self.summary.add_beyond(&count);
            if let Some(live) = &mut self.live {
                live.report(key, n, count);
            }
        }
        // The whole table's read (tens of MB) is freed now.
        drop(aggregates);
        return_free_memory();
    }

    /// A capture that reports beyond the flow table only at its end (`watch`) still keeps
    /// its lines' keys to what the kernel holds ([`beyond::LineBook::compact`]).
    fn compact_lines(&mut self) {
        match self.capture.aggregates() {
            Ok(aggregates) => self.lines_by_aggregate.compact(&aggregates),
            Err(e) => log::warn!("{e}: lines are not compacted"),
        }
    }

    /// Names the rule of drops counted only in aggregate, from each aggregate's fields.
    fn attribute_beyond(
        &mut self,
        items: Vec<(tracer_common::AggKey, Tally)>,
    ) -> Vec<(tracer_common::AggKey, Tally, beyond::BeyondCount)> {
        let mut by_netns: std::collections::BTreeMap<u32, Vec<(tracer_common::AggKey, Tally)>> =
            std::collections::BTreeMap::new();
        for (k, n) in items {
            by_netns.entry(k.netns).or_default().push((k, n));
        }
        let mut out = Vec::new();
        for (netns, items) in by_netns {
            let counted: Vec<_> = items
                .iter()
                .map(|(k, _)| beyond::counted(k, &self.sites))
                .collect();
            let rules = match &mut self.attributor {
                Some(a) => a.beyond(netns, &counted),
                None => vec![crate::record::rule::Attribution::none("--no-rules"); counted.len()],
            };
            for (((k, n), c), rule) in items.into_iter().zip(counted).zip(rules) {
                let (dst, proto) = beyond::destination(&k);
                out.push((
                    k,
                    n,
                    beyond::BeyondCount {
                        netns,
                        count: n.packets,
                        bytes: n.bytes,
                        hook: c.hook,
                        rule,
                        dst,
                        proto,
                        port: c.dport,
                    },
                ));
            }
        }
        out
    }

    /// The closing totals, checked against the kernel's own count of matched drops.
    pub fn finish(&mut self) -> summary::SummaryRecord {
        let _ = io::stdout().flush();
        let duration = self.started.elapsed().as_secs_f64();
        let stats = match self.capture.stats() {
            Ok(s) => s,
            Err(e) => {
                let mut end = self.summary.record(0, 0, duration);
                (end.lost, end.matched_in_kernel, end.error) = (None, None, Some(e));
                return end;
            }
        };
        if self.line_budget.is_some() {
            match self.capture.aggregates() {
                Ok(aggregates) => {
                    let items = match &mut self.live {
                        Some(live) => live.unreported(&mut self.lines_by_aggregate, &aggregates),
                        None => self
                            .lines_by_aggregate
                            .beyond(&aggregates, &std::collections::HashMap::new()),
                    };
                    for (_, _, count) in self.attribute_beyond(items) {
                        self.summary.add_beyond(&count);
                    }
                }
                Err(e) => log::warn!("{e}: drops beyond the flow table are reported as lost"),
            }
            if stats.unaggregated > 0 {
                log::warn!(
                    "{} drops found no room in the kernel's aggregates either: they are lost",
                    stats.unaggregated
                );
            }
        }
        // Packets the kernel matched but no line reported: flows evicted from the flow
        // table before their last packets were read (more than MAX_FLOWS flows at once),
        // or, after `--count` ended the capture, drops deliberately not reported.
        let unreported = stats
            .matched
            .saturating_sub(self.summary.total + self.filtered_out);
        let (lost, beyond) = if self.limited {
            (0, unreported)
        } else {
            (unreported, 0)
        };
        let mut end = self.summary.record(lost, stats.matched, duration);
        end.records_lost = stats.records_lost;
        end.beyond_count = beyond;
        if let Some(a) = &mut self.attempts {
            end.services = Some(a.report(self.attributor.as_mut()));
        }
        end.attempts_unavailable = self.attempts_unavailable.clone();
        end
    }
}
