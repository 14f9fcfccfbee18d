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
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{
    libc,
    sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction},
};

use crate::{floor::Floor, netns::Netns, run_checked, setup, workspace_root};

mod latency;
mod proc;
mod prog_stats;
mod report;

use proc::{Proc, read_all};
use prog_stats::{ProgStats, bpf_stats, kfree_skb_progs, settle};
use report::{median, report};

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

pub fn run(droptrace: &Path, quick: bool, write_docs: bool) -> anyhow::Result<()> {
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

    let figures = report(
        &samples,
        runs,
        &many_base,
        &many_dt,
        &diag,
        (&load_before, &load_after),
        began.elapsed(),
    );
    if write_docs {
        report::write_docs(&figures)?;
        say("wrote the figures into docs/performance.md");
    }
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

/// Installs bpftrace for the comparison rounds.
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
    let mut cmd = crate::inner_build(Command::new("cargo"));
    cmd.args([
        "build",
        "--release",
        "--package",
        "droptrace-bench",
        "--bin",
        "flood",
    ]);
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
