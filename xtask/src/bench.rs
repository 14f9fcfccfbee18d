//! `cargo xtask bench`: what droptrace costs a host under a flood of netfilter drops, next
//! to bpftrace doing less.
//!
//! One sender thread (`flood`, in bench/) sends 64-byte UDP datagrams to 127.0.0.1:9 inside
//! a private network namespace whose OUTPUT chain drops them, and reports drops/s. Each
//! round runs it with a different tracer (or none); rounds are interleaved (run 1 of every
//! round, then run 2, ...) and a round's figure is the median of its runs. droptrace's runs
//! also compare its reported total with the DROP rule's packet counter and record its CPU
//! time, peak RSS and start-up time (spawn to the JSON start line). A last round sends to
//! 100 000 distinct flows. Then unscored diagnostic runs with the kernel's BPF run-time
//! statistics on say how many ns droptrace's eBPF program spends per drop, and where.
//! Figures only: nothing here asserts a timing.
//!
//! The output ends with one `bench: key=value` line per figure.

use std::{
    collections::HashSet,
    fmt::Write as _,
    io::{self, BufRead as _, BufReader, Read as _},
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{
    libc,
    sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction},
    unistd::Pid,
};

use crate::{floor::Floor, netns::Netns, run_checked, setup, workspace_root};

mod latency;

/// Seconds of flood per run.
const FLOOD_SECONDS: f64 = 3.0;
/// Runs per round (`--quick`: [`QUICK_RUNS`]).
const RUNS: usize = 5;
const QUICK_RUNS: usize = 2;
/// Seconds of flood per diagnostic run.
const DIAG_SECONDS: f64 = 2.0;
/// Distinct flows of the many-flows round (droptrace's kernel flow table holds 131072).
const MANY_FLOWS: usize = 100_000;
/// How long a tracer may take to start before the bench gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a tracer may take to exit once asked to (it prints its summary first).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Runs bpftrace in a private mount namespace with tracefs mounted (bpftrace reads the
/// tracepoint's format there; tracefs is not mounted on our machines, and mounting it for
/// the whole host would outlive the bench). `unshare` and `sh` exec, so the pid is bpftrace's.
const BPFTRACE_SH: &str =
    "[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing || exit 1
exec bpftrace \"$@\"";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn say(msg: &str) {
    eprintln!("xtask bench: {msg}");
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Round {
    Baseline,
    Droptrace,
    DroptraceRules,
    /// droptrace watching the host's namespace while the bench's drops: every drop is
    /// rejected by its namespace test.
    DroptraceOtherNetns,
    BpftracePrintf,
    BpftraceCount,
    /// An empty tp_btf program on kfree_skb, loaded by the bench ([`Floor`]).
    EmptyProg,
    /// The second sender: one datagram per `sendto` call.
    BaselineSendto,
    DroptraceRulesSendto,
}

impl Round {
    const ALL: [Round; 9] = [
        Round::Baseline,
        Round::Droptrace,
        Round::DroptraceRules,
        Round::DroptraceOtherNetns,
        Round::BpftracePrintf,
        Round::BpftraceCount,
        Round::EmptyProg,
        Round::BaselineSendto,
        Round::DroptraceRulesSendto,
    ];

    fn label(self) -> &'static str {
        match self {
            Round::Baseline => "baseline (no tracer)",
            Round::Droptrace => "droptrace watch --no-rules",
            Round::DroptraceRules => "droptrace watch (rules named)",
            Round::DroptraceOtherNetns => "droptrace watching another netns",
            Round::BpftracePrintf => "bpftrace printf per drop",
            Round::BpftraceCount => "bpftrace count() in kernel",
            Round::EmptyProg => "empty tp_btf prog (floor)",
            Round::BaselineSendto => "sendto: baseline (no tracer)",
            Round::DroptraceRulesSendto => "sendto: droptrace (rules named)",
        }
    }

    /// The round its ratio is taken against: the baseline with the same sender.
    fn baseline(self) -> Round {
        match self {
            Round::BaselineSendto | Round::DroptraceRulesSendto => Round::BaselineSendto,
            _ => Round::Baseline,
        }
    }
}

/// flood's arguments for the second sender.
const SENDTO: &[&str] = &["--sendto"];

/// One run of the flood, with what the tracer of its round did.
struct Sample {
    drops_per_s: f64,
    /// flood's CPU share (see [`Flood`]).
    flood_cpu: f64,
    /// kfree_skb programs already loaded before the run (another droptrace or bpftrace on
    /// this host, whose cost lands on every drop of the run).
    others: usize,
    tracer: Option<TracerRun>,
}

struct TracerRun {
    cpu_s: f64,
    peak_rss_kib: u64,
    startup: Duration,
    /// droptrace only.
    check: Option<Check>,
    /// ns per run of the tracer's programs over the flood (diagnostic runs only).
    prog_ns: Option<f64>,
    /// droptrace's CPU time (its ruleset tools' included) from its start line to its exit,
    /// over that time: what it costs while it runs, without its start-up.
    running_share: Option<f64>,
}

/// Which tracer a run starts, how long it floods, and whether it reads BPF run-time stats.
#[derive(Clone, Copy)]
struct RunOpts<'a> {
    flood_args: &'a [&'a str],
    seconds: f64,
    stats: bool,
}

impl<'a> RunOpts<'a> {
    fn scored(flood_args: &'a [&'a str]) -> Self {
        RunOpts {
            flood_args,
            seconds: FLOOD_SECONDS,
            stats: false,
        }
    }
    fn diag(flood_args: &'a [&'a str]) -> Self {
        RunOpts {
            flood_args,
            seconds: DIAG_SECONDS,
            stats: true,
        }
    }
}

/// The diagnostic runs' ns per program run.
struct Diag {
    empty: Option<f64>,
    netns_filtered: Option<f64>,
    port_filtered: Option<f64>,
    counted: Option<f64>,
    many_flows: Option<f64>,
}

/// droptrace's summary next to the kernel's rule counter.
struct Check {
    total: u64,
    counter: u64,
    flood_dropped: u64,
    lost: u64,
    records_lost: u64,
    matched_in_kernel: u64,
    drop_lines: u64,
}

impl Check {
    fn exact(&self) -> bool {
        self.total == self.counter
    }
}

struct Flood {
    dropped: u64,
    drops_per_s: f64,
    /// flood's CPU time / its wall time: below ~0.95, something else kept it off the CPU.
    cpu_share: f64,
}

pub fn run(droptrace: &Path, quick: bool) -> anyhow::Result<()> {
    if !crate::nix_is_root() {
        bail!("the bench loads eBPF programs and creates a network namespace: run as root");
    }
    install_bpftrace()?;
    let flood = build_flood()?;
    let reason = netfilter_drop_reason()?;
    let handler = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &handler) }.context("sigaction")?;
    }

    let runs = if quick { QUICK_RUNS } else { RUNS };
    let ns = Netns::create("droptrace-bench")?;
    ns.exec(&[
        "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "DROP",
    ])?;
    let bench = Bench {
        ns,
        flood,
        droptrace: droptrace.to_path_buf(),
        reason,
    };
    let began = Instant::now();
    let load_before = loadavg();
    say(&format!(
        "netns {}: lo up, iptables -A OUTPUT -p udp --dport 9 -j DROP; NETFILTER_DROP = {reason}; \
         {runs} run(s) of {FLOOD_SECONDS} s per round, interleaved",
        bench.ns.name
    ));
    // Warm-up (caches, CPU frequency, the namespace's first route lookups): not measured.
    bench.flood_for(1.0, &[])?;

    let mut samples: Vec<(Round, Sample)> = Vec::new();
    for i in 0..runs {
        // Rotate the order, so no round always follows the same one.
        for k in 0..Round::ALL.len() {
            let round = Round::ALL[(i + k) % Round::ALL.len()];
            let sample = bench.sample(round, &[])?;
            say(&format!(
                "run {}/{runs} {:<30} {:>9.0} drops/s",
                i + 1,
                round.label(),
                sample.drops_per_s
            ));
            samples.push((round, sample));
            check_interrupted()?;
        }
    }

    // Where droptrace's per-drop time goes (not scored: the statistics cost time too).
    let ns = bench.ns.name.clone();
    let no_rules = ["--no-rules"];
    let mut diag = Diag {
        empty: None,
        netns_filtered: None,
        port_filtered: None,
        counted: None,
        many_flows: None,
    };
    if let Some(stats) = bpf_stats()? {
        say("diagnostic runs with BPF run-time statistics on");
        diag.empty = bench.floor_ns()?;
        diag.netns_filtered = bench
            .droptrace(&no_rules, "/proc/self/ns/net", RunOpts::diag(&[]))?
            .prog_ns();
        diag.port_filtered = bench
            .droptrace(&["--no-rules", "--dport", "10"], &ns, RunOpts::diag(&[]))?
            .prog_ns();
        diag.counted = bench
            .droptrace(&no_rules, &ns, RunOpts::diag(&[]))?
            .prog_ns();
        drop(stats);
    }

    // Many flows: every UDP packet dropped, 100k distinct 5-tuples.
    bench.ns.exec(&["iptables", "-F", "OUTPUT"])?;
    bench
        .ns
        .exec(&["iptables", "-A", "OUTPUT", "-p", "udp", "-j", "DROP"])?;
    let flows = MANY_FLOWS.to_string();
    let many_args = ["--flows", flows.as_str()];
    let many_base = bench.sample(Round::Baseline, &many_args)?;
    check_interrupted()?;
    let many_dt = bench.sample(Round::Droptrace, &many_args)?;
    if let Some(stats) = bpf_stats()? {
        diag.many_flows = bench
            .droptrace(&no_rules, &ns, RunOpts::diag(&many_args))?
            .prog_ns();
        drop(stats);
    }
    let load_after = loadavg();

    report(
        &samples,
        runs,
        &many_base,
        &many_dt,
        &diag,
        (&load_before, &load_after),
        began.elapsed(),
    );
    check_interrupted()?;
    latency::run(droptrace)?.print();
    check_interrupted()?;
    // Port-scan bursts beyond the flow table (the issue "Port scans and long captures"),
    // against watch and against serve.
    let round = crate::scan::Args::bench_round(quick);
    crate::scan::run(droptrace, &round)?;
    check_interrupted()?;
    crate::serve_scan::run(droptrace, &round)
}

/// Only the drop-to-line round ([`latency`]).
pub fn latency_only(droptrace: &Path) -> anyhow::Result<()> {
    if !crate::nix_is_root() {
        bail!("the bench creates a network namespace: run as root");
    }
    latency::run(droptrace)?.print();
    Ok(())
}

impl Sample {
    fn prog_ns(&self) -> Option<f64> {
        self.tracer.as_ref()?.prog_ns
    }
}

/// Turns on the kernel's BPF run-time statistics (`bpf(BPF_ENABLE_STATS)`) until the
/// returned fd is closed. Reference-counted by the kernel: it never turns off statistics
/// someone else enabled, and they stop by themselves if the bench dies. `None` (with a
/// note) if the kernel refuses.
fn bpf_stats() -> anyhow::Result<Option<OwnedFd>> {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    const BPF_STATS_RUN_TIME: u32 = 0;
    let attr: [u32; 2] = [BPF_STATS_RUN_TIME, 0];
    // SAFETY: attr is a valid `union bpf_attr` prefix of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_ptr(),
            size_of_val(&attr),
        )
    };
    if fd < 0 {
        say(&format!(
            "no BPF run-time statistics ({}): diagnostics skipped",
            io::Error::last_os_error()
        ));
        return Ok(None);
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// Loaded BPF programs on kfree_skb (droptrace's and bpftrace's are all named kfree_skb*),
/// with their run-time statistics (zero unless enabled): id -> (run_time_ns, run_cnt).
fn kfree_skb_progs() -> anyhow::Result<Vec<(u64, u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .context("cannot run bpftool")?;
    let progs: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("bpftool -j prog show")?;
    Ok(progs
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("kfree_skb"))
        })
        .filter_map(|p| {
            Some((
                p["id"].as_u64()?,
                p["run_time_ns"].as_u64().unwrap_or(0),
                p["run_cnt"].as_u64().unwrap_or(0),
            ))
        })
        .collect())
}

/// Waits (up to 3 s) for the previous run's programs to be gone: the kernel frees a
/// program some time after its last fd is closed, and a run should not start beside one.
fn settle() -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(3);
    while !kfree_skb_progs()?.is_empty() && Instant::now() < until {
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The programs a tracer loaded (those not in `before`) and their summed statistics.
struct ProgStats {
    ids: HashSet<u64>,
}

impl ProgStats {
    fn new_since(before: &HashSet<u64>) -> anyhow::Result<ProgStats> {
        let ids = kfree_skb_progs()?
            .into_iter()
            .map(|p| p.0)
            .filter(|id| !before.contains(id))
            .collect();
        Ok(ProgStats { ids })
    }
    /// (run_time_ns, run_cnt) summed over the tracer's programs.
    fn read(&self) -> anyhow::Result<(u64, u64)> {
        Ok(kfree_skb_progs()?
            .into_iter()
            .filter(|p| self.ids.contains(&p.0))
            .fold((0, 0), |(t, n), p| (t + p.1, n + p.2)))
    }
}

/// Runs `flood` between two readings of the tracer's program statistics (when asked):
/// returns the flood and the ns per program run in between.
fn timed_flood(
    bench: &Bench,
    before: &HashSet<u64>,
    opts: RunOpts,
) -> anyhow::Result<(Flood, Option<f64>)> {
    let stats = if opts.stats {
        Some(ProgStats::new_since(before)?)
    } else {
        None
    };
    let start = stats.as_ref().map(ProgStats::read).transpose()?;
    let flood = bench.flood_for(opts.seconds, opts.flood_args)?;
    let ns = match (stats, start) {
        (Some(s), Some((t0, n0))) => {
            let (t1, n1) = s.read()?;
            (n1 > n0).then(|| (t1 - t0) as f64 / (n1 - n0) as f64)
        }
        _ => None,
    };
    Ok((flood, ns))
}

struct Bench {
    ns: Netns,
    flood: PathBuf,
    droptrace: PathBuf,
    reason: u32,
}

impl Bench {
    fn sample(&self, round: Round, flood_args: &[&str]) -> anyhow::Result<Sample> {
        settle()?;
        let r = self.reason;
        let opts = RunOpts::scored(flood_args);
        let ns = self.ns.name.as_str();
        match round {
            Round::Baseline => self.untraced(flood_args, false),
            Round::BaselineSendto => self.untraced(&[flood_args, SENDTO].concat(), false),
            Round::EmptyProg => self.untraced(flood_args, true),
            Round::Droptrace => self.droptrace(&["--no-rules"], ns, opts),
            Round::DroptraceRules => self.droptrace(&[], ns, opts),
            Round::DroptraceRulesSendto => {
                let args = [flood_args, SENDTO].concat();
                self.droptrace(&[], ns, RunOpts::scored(&args))
            }
            Round::DroptraceOtherNetns => self.droptrace(&[], "/proc/self/ns/net", opts),
            Round::BpftracePrintf => self.bpftrace(
                &format!(
                    "tracepoint:skb:kfree_skb /args->reason == {r}/ \
                     {{ printf(\"%s %d %p %d\\n\", comm, pid, args->location, args->protocol); }}"
                ),
                opts,
            ),
            Round::BpftraceCount => self.bpftrace(
                &format!("tracepoint:skb:kfree_skb /args->reason == {r}/ {{ @[args->protocol] = count(); }}"),
                opts,
            ),
        }
    }

    /// ns per run of the empty program, from the BPF run-time statistics over a flood.
    fn floor_ns(&self) -> anyhow::Result<Option<f64>> {
        let before: HashSet<u64> = kfree_skb_progs()?.into_iter().map(|p| p.0).collect();
        let _floor = Floor::attach()?;
        Ok(timed_flood(self, &before, RunOpts::diag(&[]))?.1)
    }

    /// A run of the flood with no tracer, or with only the bench's empty program.
    fn untraced(&self, flood_args: &[&str], floor: bool) -> anyhow::Result<Sample> {
        let others = kfree_skb_progs()?.len();
        let _floor = floor.then(Floor::attach).transpose()?;
        let f = self.flood(flood_args)?;
        Ok(Sample {
            drops_per_s: f.drops_per_s,
            flood_cpu: f.cpu_share,
            others,
            tracer: None,
        })
    }

    /// Runs flood in the namespace for [`FLOOD_SECONDS`] (default target: 127.0.0.1:9).
    fn flood(&self, extra: &[&str]) -> anyhow::Result<Flood> {
        self.flood_for(FLOOD_SECONDS, extra)
    }

    fn flood_for(&self, seconds: f64, extra: &[&str]) -> anyhow::Result<Flood> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(&self.flood)
            .args(["--seconds", &seconds.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .context("cannot run flood")?;
        check_interrupted()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "flood failed ({}): {}{}",
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = stdout
            .lines()
            .find(|l| l.starts_with("flood:"))
            .context("flood printed no result")?;
        let field = |k: &str| -> anyhow::Result<f64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {k} in {line:?}"))
        };
        if field("other_errors")? != 0.0 || field("sent")? != 0.0 {
            bail!("flood: every datagram should have been dropped by the rule: {line}");
        }
        Ok(Flood {
            dropped: field("dropped")? as u64,
            drops_per_s: field("drops_per_s")?,
            cpu_share: field("cpu_s")? / field("seconds")?,
        })
    }

    /// Packets counted by the rules of the namespace's OUTPUT chain.
    fn counter(&self) -> anyhow::Result<u64> {
        let out = self
            .ns
            .exec(&["iptables", "-L", "OUTPUT", "-v", "-x", "-n"])?;
        out.lines()
            .skip(2)
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .with_context(|| format!("unexpected iptables line {l:?}"))
            })
            .sum()
    }

    /// A run with `droptrace watch --netns NETNS --json ARGS...` capturing.
    fn droptrace(&self, args: &[&str], netns: &str, opts: RunOpts) -> anyhow::Result<Sample> {
        let mut cmd = Command::new(&self.droptrace);
        cmd.args(["watch", "--netns", netns, "--json"]).args(args);
        let before: HashSet<u64> = kfree_skb_progs()?.into_iter().map(|p| p.0).collect();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut proc = Proc::spawn(&mut cmd, "droptrace")?;
        let stdout = proc.child.stdout.take().expect("piped");
        let stderr = read_all(proc.child.stderr.take().expect("piped"));
        let (tx, started) = mpsc::channel();
        let reader = thread::spawn(move || {
            let mut tx = Some(tx);
            let mut out = DroptraceOutput::default();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(tx) = tx.take() {
                    let _ = tx.send((Instant::now(), line.contains(r#""type":"start""#)));
                }
                if line.contains(r#""type":"drop""#) {
                    out.drop_lines += 1;
                } else if line.contains(r#""type":"summary""#) {
                    out.summary = serde_json::from_str(&line).ok();
                }
            }
            out
        });
        let startup = match started.recv_timeout(START_TIMEOUT) {
            Ok((at, true)) => at - spawned,
            Ok((_, false)) => bail!("droptrace's first JSON line is not the start line"),
            Err(_) => {
                proc.kill();
                bail!(
                    "droptrace did not start: {}",
                    stderr.join().unwrap_or_default().trim()
                );
            }
        };
        let running_since = Instant::now();
        let cpu_at_start = crate::procstat::cpu_with_children(proc.child.id()).ok();
        let counter_before = self.counter()?;
        let (flood, prog_ns) = timed_flood(self, &before, opts)?;
        let counter_after = self.counter()?;
        let exit = proc.stop(Signal::SIGINT)?;
        let running_share =
            cpu_at_start.map(|c| (exit.cpu_s() - c) / running_since.elapsed().as_secs_f64());
        let out = reader
            .join()
            .map_err(|_| anyhow::anyhow!("droptrace reader panicked"))?;
        let err = stderr.join().unwrap_or_default();
        if !exit.success() {
            bail!(
                "droptrace exited with status {:#x}: {}",
                exit.status,
                err.trim()
            );
        }
        let summary = out
            .summary
            .with_context(|| format!("droptrace printed no summary: {}", err.trim()))?;
        let num = |k: &str| {
            summary[k]
                .as_u64()
                .with_context(|| format!("summary has no {k}: {summary}"))
        };
        let check = Check {
            total: num("total")?,
            counter: counter_after - counter_before,
            flood_dropped: flood.dropped,
            lost: num("lost")?,
            records_lost: num("records_lost")?,
            matched_in_kernel: num("matched_in_kernel")?,
            drop_lines: out.drop_lines,
        };
        Ok(Sample {
            drops_per_s: flood.drops_per_s,
            flood_cpu: flood.cpu_share,
            others: before.len(),
            tracer: Some(TracerRun {
                cpu_s: exit.cpu_s(),
                peak_rss_kib: exit.peak_rss_kib(),
                startup,
                check: Some(check),
                prog_ns,
                running_share,
            }),
        })
    }

    fn bpftrace(&self, program: &str, opts: RunOpts) -> anyhow::Result<Sample> {
        let before: HashSet<u64> = kfree_skb_progs()?.into_iter().map(|p| p.0).collect();
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            BPFTRACE_SH,
            "sh",
            "-e",
            program,
        ]);
        // Its output, like a user's `> /dev/null`.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut proc = Proc::spawn(&mut cmd, "bpftrace")?;
        let stderr = read_all(proc.child.stderr.take().expect("piped"));
        // Attached once the kernel lists its perf event on the tracepoint.
        let pid = proc.child.id().to_string();
        let startup = loop {
            let perf = Command::new("bpftool")
                .args(["perf", "show"])
                .output()
                .context("cannot run bpftool")?;
            let attached = String::from_utf8_lossy(&perf.stdout).lines().any(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some("pid")
                    && words.next() == Some(pid.as_str())
                    && l.contains("kfree_skb")
            });
            if attached {
                break spawned.elapsed();
            }
            if proc.exited()
                || spawned.elapsed() > START_TIMEOUT
                || INTERRUPTED.load(Ordering::SeqCst)
            {
                proc.kill();
                check_interrupted()?;
                bail!(
                    "bpftrace did not attach: {}",
                    bpftrace_errors(&stderr.join().unwrap_or_default())
                );
            }
            thread::sleep(Duration::from_millis(5));
        };
        let (flood, prog_ns) = timed_flood(self, &before, opts)?;
        let exit = proc.stop(Signal::SIGINT)?;
        let err = stderr.join().unwrap_or_default();
        if !exit.success() {
            bail!(
                "bpftrace exited with status {:#x}: {}",
                exit.status,
                bpftrace_errors(&err)
            );
        }
        Ok(Sample {
            drops_per_s: flood.drops_per_s,
            flood_cpu: flood.cpu_share,
            others: before.len(),
            tracer: Some(TracerRun {
                cpu_s: exit.cpu_s(),
                peak_rss_kib: exit.peak_rss_kib(),
                startup,
                check: None,
                prog_ns,
                running_share: None,
            }),
        })
    }
}

#[derive(Default)]
struct DroptraceOutput {
    summary: Option<serde_json::Value>,
    drop_lines: u64,
}

/// bpftrace's stderr without its harmless RLIMIT_MEMLOCK complaint (memlock cannot be
/// raised here and is not needed on 5.11+).
fn bpftrace_errors(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.contains("RLIMIT_MEMLOCK"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn read_all(mut r: ChildStderr) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// A child process that is killed and reaped if the bench stops early.
struct Proc {
    child: Child,
    reaped: bool,
    /// What it is, for messages.
    name: String,
}

struct Exit {
    status: libc::c_int,
    usage: libc::rusage,
}

impl Exit {
    fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }
    fn cpu_s(&self) -> f64 {
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(self.usage.ru_utime) + t(self.usage.ru_stime)
    }
    fn peak_rss_kib(&self) -> u64 {
        self.usage.ru_maxrss as u64
    }
}

impl Proc {
    fn spawn(cmd: &mut Command, what: &str) -> anyhow::Result<Proc> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what} ({cmd:?})"))?;
        Ok(Proc {
            child,
            reaped: false,
            name: what.to_string(),
        })
    }

    /// Whether it has already exited (then it is reaped).
    fn exited(&mut self) -> bool {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            self.reaped = true;
        }
        self.reaped
    }

    fn kill(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }

    /// Sends `sig` and waits for the exit, with the process's resource usage (its CPU
    /// time and peak RSS, from wait4).
    /// Sends `sig` and reaps the process. The signal is sent again every 5 s while the
    /// process lives (bpftrace was once seen to miss a SIGINT and wait for minutes), and after
    /// [`STOP_TIMEOUT`] it is killed.
    fn stop(&mut self, sig: Signal) -> anyhow::Result<Exit> {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, sig);
        let started = Instant::now();
        let mut signalled = Instant::now();
        let mut status = 0;
        // SAFETY: rusage is plain old data.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            let flags = if started.elapsed() > STOP_TIMEOUT {
                let _ = kill(pid, Signal::SIGKILL);
                0
            } else {
                libc::WNOHANG
            };
            // SAFETY: valid pointers to locals; the pid is our unreaped child.
            let r = unsafe { libc::wait4(pid.as_raw(), &mut status, flags, &mut usage) };
            if r == pid.as_raw() {
                break;
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(e).context("wait4");
                }
                continue;
            }
            if signalled.elapsed() > Duration::from_secs(5) {
                say(&format!("{} still running: sending {sig} again", self.name));
                let _ = kill(pid, sig);
                signalled = Instant::now();
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.reaped = true;
        Ok(Exit { status, usage })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The bench's network namespace, deleted when dropped (also on error and Ctrl-C).
fn install_bpftrace() -> anyhow::Result<()> {
    setup::install_packages(
        &[(
            "bpftrace",
            "Debian's bpftrace (0.17 on Debian 12): the comparison rounds",
        )],
        say,
    )
}

/// Builds flood with the machine's default (stable) toolchain.
pub fn build_flood() -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "build",
        "--release",
        "--package",
        "droptrace-bench",
        "--bin",
        "flood",
    ]);
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "CARGO",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PATH", setup::path_with_cargo_bin());
    cmd.current_dir(workspace_root());
    say("building flood (bench/) with the default toolchain");
    run_checked(&mut cmd)?;
    Ok(workspace_root().join("target/release/flood"))
}

/// SKB_DROP_REASON_NETFILTER_DROP on the running kernel, by name from its BTF.
fn netfilter_drop_reason() -> anyhow::Result<u32> {
    let out = Command::new("bpftool")
        .args([
            "btf",
            "dump",
            "file",
            "/sys/kernel/btf/vmlinux",
            "format",
            "raw",
        ])
        .output()
        .context("cannot run bpftool")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("'SKB_DROP_REASON_NETFILTER_DROP' val=")?
                .parse()
                .ok()
        })
        .context("SKB_DROP_REASON_NETFILTER_DROP is not in the kernel's BTF")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn report(
    samples: &[(Round, Sample)],
    runs: usize,
    many_base: &Sample,
    many_dt: &Sample,
    diag: &Diag,
    load: (&str, &str),
    took: Duration,
) {
    let of = |r: Round| samples.iter().filter(move |(k, _)| *k == r).map(|(_, s)| s);
    let med = |r: Round, f: &dyn Fn(&Sample) -> Option<f64>| median(of(r).filter_map(f).collect());
    let rate = |r: Round| med(r, &|s| Some(s.drops_per_s));
    let base = rate(Round::Baseline);
    let cpu = |r: Round| med(r, &|s| s.tracer.as_ref().map(|t| t.cpu_s));
    let running = |r: Round| med(r, &|s| s.tracer.as_ref().and_then(|t| t.running_share));
    let startup_ms = |r: Round| {
        med(r, &|s| {
            s.tracer.as_ref().map(|t| t.startup.as_secs_f64() * 1e3)
        })
    };
    let rss = |r: Round| {
        of(r)
            .filter_map(|s| s.tracer.as_ref().map(|t| t.peak_rss_kib))
            .max()
    };
    let opt = |v: Option<f64>, prec: usize| {
        v.filter(|v| v.is_finite())
            .map_or("-".to_string(), |v| format!("{v:.prec$}"))
    };

    let mut t = String::new();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        t,
        "\ndroptrace bench: one flood thread, 64-byte UDP payloads to 127.0.0.1:9 dropped in OUTPUT \
         (iptables-nft), {FLOOD_SECONDS} s per run, median of {runs} interleaved runs; {cpus} CPUs; \
         load average {} before, {} after; measuring took {:.0} s",
        load.0,
        load.1,
        took.as_secs_f64()
    );
    let _ = writeln!(
        t,
        "\n{:<34} {:>10} {:>6} {:>9} {:>7} {:>7} {:>8} {:>8}   runs (drops/s)",
        "round", "drops/s", "ratio", "flood_cpu", "cpu_s", "running", "rss_kib", "start_ms"
    );
    for r in Round::ALL {
        let _ = writeln!(
            t,
            "{:<34} {:>10.0} {:>6.3} {:>9.2} {:>7} {:>7} {:>8} {:>8}   {}",
            r.label(),
            rate(r),
            rate(r) / rate(r.baseline()),
            med(r, &|s| Some(s.flood_cpu)),
            opt(Some(cpu(r)), 3),
            opt(Some(running(r)), 3),
            rss(r).map_or("-".into(), |v| v.to_string()),
            opt(Some(startup_ms(r)), 0),
            of(r)
                .map(|s| format!("{:.0}", s.drops_per_s))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let _ = writeln!(
        t,
        "(flood_cpu: the sender's CPU time / wall time, well below 1 when something else took its \
         CPU; cpu_s, rss_kib: the tracer process's user+sys time and peak RSS over its whole run, from \
         wait4; running: droptrace's CPU time, its ruleset tools' included, from its start line to \
         its exit, over that time (a share of one core); start_ms: spawn to droptrace's JSON start line, or to bpftrace's probe being attached)"
    );

    let _ = writeln!(
        t,
        "\n{:<34} {:>9} {:>9} {:>6} {:>9} {:>5} {:>12} {:>9} {:>6}",
        "droptrace run",
        "total",
        "counter",
        "equal",
        "flood",
        "lost",
        "records_lost",
        "matched",
        "lines"
    );
    let mut dt_runs: Vec<(String, &Check)> = Vec::new();
    for r in [
        Round::Droptrace,
        Round::DroptraceRules,
        Round::DroptraceRulesSendto,
    ] {
        for (i, s) in of(r).enumerate() {
            if let Some(c) = s.tracer.as_ref().and_then(|t| t.check.as_ref()) {
                dt_runs.push((format!("{} #{}", r.label(), i + 1), c));
            }
        }
    }
    let many_check = many_dt.tracer.as_ref().and_then(|t| t.check.as_ref());
    if let Some(c) = many_check {
        dt_runs.push((format!("--no-rules, {MANY_FLOWS} flows"), c));
    }
    for (name, c) in &dt_runs {
        let _ = writeln!(
            t,
            "{:<34} {:>9} {:>9} {:>6} {:>9} {:>5} {:>12} {:>9} {:>6}",
            name,
            c.total,
            c.counter,
            c.exact(),
            c.flood_dropped,
            c.lost,
            c.records_lost,
            c.matched_in_kernel,
            c.drop_lines
        );
    }
    let _ = writeln!(
        t,
        "(total: droptrace's summary; counter: the OUTPUT rules' packet counter delta over the flood; \
         flood: sends that failed with EPERM; lines: JSON drop lines)"
    );
    let many_rate = many_dt.drops_per_s / many_base.drops_per_s;
    let many_cpu = many_dt.tracer.as_ref().map(|t| t.cpu_s);
    let many_rss = many_dt.tracer.as_ref().map_or(0, |t| t.peak_rss_kib);
    let _ = writeln!(
        t,
        "\nmany flows ({MANY_FLOWS} flows: 127.0.0.1/127.0.0.2 x 4 source ports x dports from 1024, \
         cycled; iptables -A OUTPUT -p udp -j DROP; 1 run each): baseline {:.0} drops/s, with droptrace \
         --no-rules {:.0} drops/s (ratio {many_rate:.3}); droptrace cpu {} s, peak RSS {many_rss} KiB",
        many_base.drops_per_s,
        many_dt.drops_per_s,
        opt(many_cpu, 3),
    );

    let ns_per = |rate: f64| 1e9 / rate;
    let added = ns_per(rate(Round::Droptrace)) - ns_per(base);
    let _ = writeln!(
        t,
        "\nper drop: {:.0} ns without a tracer, {:.0} ns with droptrace --no-rules (+{added:.0} ns). \
         Time per program run from the kernel's BPF run-time statistics ({DIAG_SECONDS} s unscored \
         runs; the timing itself adds a little to each):",
        ns_per(base),
        ns_per(rate(Round::Droptrace)),
    );
    for (what, v) in [
        ("empty tp_btf prog (the floor)", diag.empty),
        ("droptrace, drop of another netns", diag.netns_filtered),
        ("droptrace, filtered out by --dport 10", diag.port_filtered),
        ("droptrace, counted in its flow (1 flow)", diag.counted),
        (
            &format!("droptrace, {MANY_FLOWS} flows") as &str,
            diag.many_flows,
        ),
    ] {
        let _ = writeln!(t, "  {what:<44} {:>6} ns", opt(v, 0));
    }
    let runs_with_others = samples.iter().filter(|(_, s)| s.others > 0).count();
    if runs_with_others > 0 {
        let _ = writeln!(
            t,
            "\nnote: in {runs_with_others} of {} runs other kfree_skb programs (another droptrace or \
             bpftrace on this host) were loaded: their cost is in those runs' figures",
            samples.len()
        );
    }

    let all_exact = dt_runs.iter().all(|(_, c)| c.exact());
    let _ = writeln!(t);
    let mut line = |k: &str, v: String| {
        let _ = writeln!(t, "bench: {k}={v}");
    };
    line("baseline_drops_per_s", format!("{base:.0}"));
    line(
        "droptrace_drops_per_s",
        format!("{:.0}", rate(Round::Droptrace)),
    );
    line(
        "droptrace_ratio",
        format!("{:.3}", rate(Round::Droptrace) / base),
    );
    line(
        "droptrace_rules_ratio",
        format!("{:.3}", rate(Round::DroptraceRules) / base),
    );
    line(
        "bpftrace_printf_ratio",
        format!("{:.3}", rate(Round::BpftracePrintf) / base),
    );
    line(
        "bpftrace_count_ratio",
        format!("{:.3}", rate(Round::BpftraceCount) / base),
    );
    line(
        "droptrace_rules_sendto_ratio",
        format!(
            "{:.3}",
            rate(Round::DroptraceRulesSendto) / rate(Round::BaselineSendto)
        ),
    );
    line(
        "droptrace_other_netns_ratio",
        format!("{:.3}", rate(Round::DroptraceOtherNetns) / base),
    );
    line(
        "empty_prog_ratio",
        format!("{:.3}", rate(Round::EmptyProg) / base),
    );
    line(
        "droptrace_rules_below_floor",
        format!(
            "{:.3}",
            (rate(Round::EmptyProg) - rate(Round::DroptraceRules)) / base
        ),
    );
    line(
        "droptrace_total_equals_counter",
        format!("{all_exact} runs={}", dt_runs.len()),
    );
    line("droptrace_cpu_s", format!("{:.3}", cpu(Round::Droptrace)));
    line(
        "droptrace_running_cpu_share",
        format!("{:.3}", running(Round::Droptrace)),
    );
    line(
        "droptrace_rules_running_cpu_share",
        format!("{:.3}", running(Round::DroptraceRules)),
    );
    line(
        "droptrace_rules_cpu_s",
        format!("{:.3}", cpu(Round::DroptraceRules)),
    );
    line(
        "droptrace_peak_rss_kib",
        rss(Round::Droptrace).unwrap_or(0).to_string(),
    );
    line(
        "droptrace_rules_peak_rss_kib",
        rss(Round::DroptraceRules).unwrap_or(0).to_string(),
    );
    line("startup_ms", format!("{:.0}", startup_ms(Round::Droptrace)));
    line(
        "startup_rules_ms",
        format!("{:.0}", startup_ms(Round::DroptraceRules)),
    );
    line(
        "bpftrace_startup_ms",
        format!("{:.0}", startup_ms(Round::BpftraceCount)),
    );
    if let Some(c) = many_check {
        line(
            "many_flows_total",
            format!(
                "{} counter={} equal={} lost={} ratio={many_rate:.3}",
                c.total,
                c.counter,
                c.exact(),
                c.lost
            ),
        );
    }
    // The target for 100 000 flows: peak RSS under 128 MB.
    line("many_flows_peak_rss_kib", many_rss.to_string());
    line("droptrace_added_ns_per_drop", format!("{added:.0}"));
    line("droptrace_prog_ns_per_drop", opt(diag.counted, 0));
    line(
        "droptrace_prog_ns_port_filtered",
        opt(diag.port_filtered, 0),
    );
    line(
        "droptrace_prog_ns_netns_filtered",
        opt(diag.netns_filtered, 0),
    );
    line("droptrace_prog_ns_many_flows", opt(diag.many_flows, 0));
    line("empty_prog_ns_per_run", opt(diag.empty, 0));
    let over_floor = |v: Option<f64>| opt(v.zip(diag.empty).map(|(v, e)| v - e), 0);
    line(
        "droptrace_netns_filtered_over_floor_ns",
        over_floor(diag.netns_filtered),
    );
    line(
        "droptrace_port_filtered_over_floor_ns",
        over_floor(diag.port_filtered),
    );
    line(
        "runs_with_other_kfree_skb_progs",
        format!("{runs_with_others}/{}", samples.len()),
    );
    print!("{t}");
}
