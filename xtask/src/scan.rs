//! `cargo xtask scan [--bursts 10] [--gap 30] [--flows 200000]`: port-scan bursts beyond the
//! kernel's flow table (131,072 flows) while `droptrace watch --json` (release build) runs in
//! a namespace that drops all UDP with one rule, as a first-time user measured it (the issue
//! "Port scans and long captures"). Prints whether the totals equal the rule's counter, what
//! was lost, the drops left without a rule, peak and final RSS, and userspace CPU, including
//! in the quiet seconds after each burst (a backlog shows there). Figures, not a test.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Bursts of `flood --flows N --seconds 3`.
    #[arg(long, default_value_t = 10)]
    pub bursts: u32,
    /// Seconds from the end of one burst to the start of the next.
    #[arg(long, default_value_t = 30)]
    pub gap: u64,
    /// Distinct flows per burst.
    #[arg(long, default_value_t = 200_000)]
    pub flows: usize,
    /// Against `droptrace serve` (its series and /metrics) instead of `watch --json`.
    #[arg(long)]
    pub serve: bool,
    /// This droptrace (e.g. the static binary of `cargo xtask dist`) instead of a release
    /// build of the tree.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
}

impl Args {
    /// The round `cargo xtask bench` runs: fewer, closer bursts than the ten.
    pub fn bench_round(quick: bool) -> Args {
        Args {
            bursts: if quick { 2 } else { 4 },
            gap: if quick { 10 } else { 20 },
            flows: 200_000,
            serve: false,
            binary: None,
        }
    }
}

fn say(msg: &str) {
    eprintln!("xtask scan: {msg}");
}

/// The packet counter of the namespace's first OUTPUT rule.
pub fn rule_counter(ns: &Netns) -> anyhow::Result<u64> {
    ns.exec(&["iptables", "-L", "OUTPUT", "-v", "-x", "-n"])?
        .lines()
        .nth(2)
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .context("no counter on OUTPUT rule 1")
}

/// One burst: `flood --flows FLOWS --seconds 3` in `ns`.
pub fn burst_of(ns: &Netns, flood: &Path, flows: &str) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(flood)
        .args(["--flows", flows, "--seconds", "3"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run flood")?;
    if !out.status.success() {
        bail!("flood failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A process's peak RSS, sampled every 200 ms on a thread of its own.
pub struct PeakRss {
    done: Arc<AtomicBool>,
    sampler: thread::JoinHandle<f64>,
}

impl PeakRss {
    pub fn sample(pid: u32) -> PeakRss {
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let sampler = thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while !stop.load(Ordering::Relaxed) {
                if let Ok((rss, _)) = crate::procstat::usage(pid) {
                    peak = peak.max(rss);
                }
                thread::sleep(Duration::from_millis(200));
            }
            peak
        });
        PeakRss { done, sampler }
    }

    /// The peak in MiB.
    pub fn stop(self) -> anyhow::Result<f64> {
        self.done.store(true, Ordering::Relaxed);
        self.sampler
            .join()
            .map_err(|_| anyhow::anyhow!("sampler panicked"))
    }
}

pub fn run(droptrace: &Path, args: &Args) -> anyhow::Result<()> {
    if args.serve {
        return crate::serve_scan::run(droptrace, args);
    }
    let flood: PathBuf = crate::bench::build_flood()?;
    let ns = Netns::create("dt-scan")?;
    ns.exec(&["iptables", "-A", "OUTPUT", "-p", "udp", "-j", "DROP"])?;
    let before = rule_counter(&ns)?;

    let mut child = Command::new(droptrace)
        .args(["watch", "--json", "--netns", &ns.name])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start droptrace")?;
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped");
    // Every line is read (a full pipe would stall droptrace); only the summary is kept.
    let (started_tx, started) = std::sync::mpsc::channel();
    let reader = thread::spawn(move || -> Option<serde_json::Value> {
        let mut summary = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("{\"type\":\"start\"") {
                let _ = started_tx.send(());
            } else if line.starts_with("{\"type\":\"summary\"") {
                summary = serde_json::from_str(&line).ok();
            }
        }
        summary
    });
    started
        .recv_timeout(Duration::from_secs(60))
        .context("droptrace did not start")?;

    let peak = PeakRss::sample(pid);

    let flows = args.flows.to_string();
    let mut after_first = None;
    let mut quiet_cpu_pct: f64 = 0.0;
    let t0 = Instant::now();
    for burst in 1..=args.bursts {
        burst_of(&ns, &flood, &flows)?;
        // Userspace CPU in the quiet seconds after the burst, past a 5-second grace.
        thread::sleep(Duration::from_secs(5.min(args.gap)));
        let (_, cpu0) = crate::procstat::usage(pid)?;
        let quiet = Duration::from_secs(args.gap.saturating_sub(5));
        thread::sleep(quiet);
        let (rss, cpu1) = crate::procstat::usage(pid)?;
        if !quiet.is_zero() {
            quiet_cpu_pct = quiet_cpu_pct.max(100.0 * (cpu1 - cpu0) / quiet.as_secs_f64());
        }
        if burst == 1 {
            after_first = Some(rss);
        }
        say(&format!(
            "burst {burst}/{}: RSS {rss:.0} MB, CPU {cpu1:.1} s so far ({:.0} s)",
            args.bursts,
            t0.elapsed().as_secs_f64()
        ));
    }
    let (rss_end, cpu_end) = crate::procstat::usage(pid)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let status = child.wait()?;
    let peak = peak.stop()?;
    let summary = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?
        .with_context(|| format!("droptrace printed no summary ({status})"))?;
    let counted = rule_counter(&ns)? - before;

    let num = |k: &str| summary[k].as_u64().unwrap_or(0);
    let unknown: u64 = summary["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["rule"] == "(rule unknown)")
        .filter_map(|r| r["count"].as_u64())
        .sum();
    let by_rule: u64 = summary["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["rule_num"] == 1)
        .filter_map(|r| r["count"].as_u64())
        .sum();
    println!(
        "bench: scan_bursts={} scan_flows_per_burst={}",
        args.bursts, args.flows
    );
    println!("bench: scan_rule_counter={counted}");
    println!("bench: scan_matched_in_kernel={}", num("matched_in_kernel"));
    println!("bench: scan_total={}", num("total"));
    println!("bench: scan_total_exact={}", num("total") == counted);
    println!("bench: scan_lost={}", num("lost"));
    println!("bench: scan_records_lost={}", num("records_lost"));
    println!("bench: scan_beyond_flow_table={}", num("beyond_flow_table"));
    let by_port: u64 = summary["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["count"].as_u64())
        .sum();
    println!("bench: scan_by_port_sum_exact={}", by_port == counted);
    println!("bench: scan_by_rule_1={by_rule}");
    println!("bench: scan_by_rule_exact={}", by_rule == counted);
    println!("bench: scan_rule_unknown={unknown}");
    println!(
        "bench: scan_rss_after_first_burst_mb={:.0}",
        after_first.unwrap_or(0.0)
    );
    println!("bench: scan_rss_peak_mb={peak:.0}");
    println!("bench: scan_rss_end_mb={rss_end:.0}");
    println!("bench: scan_cpu_s={cpu_end:.1}");
    println!("bench: scan_quiet_cpu_pct_max={quiet_cpu_pct:.1}");
    Ok(())
}
