//! `cargo xtask soak [--duration 1h] [--week]`: `droptrace serve` (release build) through
//! churn at a steady drop rate, printing its RSS, CPU, series and scrape time at the
//! start (after the warm-up), every 10 minutes and at the end. It fails when RSS grows
//! after the warm-up or a family of series passes its cap: a process meant to run for
//! weeks must hold flat.
//!
//! The churn, over and over: namespaces (containers) created, each with its own DROP rule,
//! the oldest deleted (series of gone namespaces must expire, their aggregates leave the
//! kernel); rules inserted above the dropping one and deleted again (renumbering it: new
//! series); datagrams to ever new ports (new flows) at `--rate` a second, half from this
//! process, half from short-lived processes of ever new names (per-process series come
//! and go, `serve --labels process`). `--week` packs a week of a busy node into the
//! duration: a namespace every 2 s instead of 10 s, rules every second, and a port scan
//! (`flood --flows 200000 --seconds 3`) every 5 minutes.

use std::{
    collections::VecDeque,
    fs::File,
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{
    sched::{CloneFlags, setns},
    sys::signal::{SigHandler, Signal, signal},
};

use crate::{
    netns::Netns,
    serve_process::{Serve, series, sum},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long to churn.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub duration: Duration,
    /// Drops a second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// A week of a busy node compressed: faster namespace and rule churn, and a port scan
    /// every 5 minutes.
    #[arg(long)]
    pub week: bool,
    /// This droptrace (e.g. the static binary of `cargo xtask dist`) instead of a release
    /// build of the tree.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("not a duration: {s}"))?;
    match unit {
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("not a duration: {s} (30s, 10m, 1h)")),
    }
}

fn say(msg: &str) {
    eprintln!("xtask soak: {msg}");
}

/// serve's caps in the soak (its flags below), to check the series against.
const MAX_SERIES: usize = 500;
const MAX_DESTINATIONS: usize = 100;
const MAX_PORTS: usize = 1000;
/// How often the figures are printed.
const REPORT_EVERY: Duration = Duration::from_secs(600);
/// RSS may exceed the warm-up's peak by this much (allocator noise), no more.
const RSS_SLACK_MB: f64 = 8.0;
/// The ceiling the fleet docs promise and the DaemonSet requests (deploy/kubernetes).
const RSS_CEILING_MB: f64 = 128.0;

/// How hard the churn is.
struct Churn {
    namespace_every: Duration,
    live_namespaces: usize,
    rule_every: Duration,
    scan_every: Option<Duration>,
}

impl Churn {
    fn of(args: &Args) -> Churn {
        if args.week {
            Churn {
                namespace_every: Duration::from_secs(2),
                live_namespaces: 20,
                rule_every: Duration::from_secs(1),
                scan_every: Some(Duration::from_secs(300)),
            }
        } else {
            Churn {
                namespace_every: Duration::from_secs(10),
                live_namespaces: 6,
                rule_every: Duration::from_secs(5),
                scan_every: None,
            }
        }
    }

    /// Churn before the first figures: long enough for every cap and TTL to have been
    /// reached once and, with scans, for three scans to be behind. A scan's peak depends
    /// on what else serve holds at that moment (namespaces alive, series at their caps), so
    /// one scan is not the peak to hold the rest of the soak to.
    fn warm_up(&self, duration: Duration) -> Duration {
        let base = Duration::from_secs(120);
        let after_scans = self.scan_every.map_or(base, |every| {
            every / 2 + every * 2 + Duration::from_secs(120)
        });
        after_scans.min(duration / 3)
    }
}

/// RSS between two report lines: its low is the level serve settles at between scans,
/// its high a scan's peak.
#[derive(Clone, Copy)]
struct Window {
    low: f64,
    high: f64,
    samples: u32,
}

impl Default for Window {
    fn default() -> Window {
        Window {
            low: f64::INFINITY,
            high: 0.0,
            samples: 0,
        }
    }
}

impl Window {
    fn add(&mut self, rss_mb: f64) {
        self.low = self.low.min(rss_mb);
        self.high = self.high.max(rss_mb);
        self.samples += 1;
    }
}

/// What the serve process looks like at one moment.
struct Snapshot {
    at: Instant,
    rss_mb: f64,
    cpu_s: f64,
    series: usize,
    drops_series: usize,
    destination_series: usize,
    port_series: usize,
    scrape: Duration,
}

impl Snapshot {
    fn of(serve: &Serve) -> anyhow::Result<Snapshot> {
        let (rss_mb, cpu_s) = crate::procstat::usage(serve.child.id())?;
        let (body, scrape) = serve.scrape()?;
        Ok(Snapshot {
            at: Instant::now(),
            rss_mb,
            cpu_s,
            series: series(&body),
            drops_series: sum(&body, "droptrace_drops_total", "").1,
            destination_series: sum(&body, "droptrace_destination_drops_total", "").1,
            port_series: sum(&body, "droptrace_port_drops_total", "").1,
            scrape,
        })
    }

    fn line(&self, label: &str, since: &Snapshot, window: &Window) -> String {
        let secs = self.at.duration_since(since.at).as_secs_f64();
        let cpu = if secs > 0.0 {
            100.0 * (self.cpu_s - since.cpu_s) / secs
        } else {
            0.0
        };
        format!(
            "{label}: RSS {:.1} MB ({:.1}-{:.1} since the last line), CPU {cpu:.1}%, {} samples ({} rule, \
             {} destination, {} port series), scrape {} ms",
            self.rss_mb,
            window.low,
            window.high,
            self.series,
            self.drops_series,
            self.destination_series,
            self.port_series,
            self.scrape.as_millis()
        )
    }

    /// Whether every family is within its cap (plus its one overflow series).
    fn within_caps(&self) -> Result<(), String> {
        for (name, n, cap) in [
            ("rule", self.drops_series, MAX_SERIES),
            ("destination", self.destination_series, MAX_DESTINATIONS),
            ("port", self.port_series, MAX_PORTS),
        ] {
            if n > cap + 1 {
                return Err(format!("{n} {name} series, past the cap of {cap}"));
            }
        }
        Ok(())
    }
}

/// Set by SIGINT or SIGTERM: the loop stops, and the namespaces and serve are cleaned up
/// on the way out (an interrupted soak is not a pass).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn interrupted(_: i32) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

pub fn run(droptrace: &Path, args: &Args) -> anyhow::Result<()> {
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { signal(sig, SigHandler::Handler(interrupted)) }?;
    }
    let churn = Churn::of(args);
    let flood = churn
        .scan_every
        .map(|_| crate::bench::build_flood())
        .transpose()?;
    let senders = SenderNames::new()?;
    let (max_series, max_destinations, max_ports) = (
        MAX_SERIES.to_string(),
        MAX_DESTINATIONS.to_string(),
        MAX_PORTS.to_string(),
    );
    let serve = Serve::start(
        droptrace,
        &[
            "--series-ttl",
            "30s",
            "--labels",
            "process",
            "--max-series",
            &max_series,
            "--max-destinations",
            &max_destinations,
            "--max-ports",
            &max_ports,
        ],
    )?;
    let mut spaces: VecDeque<Netns> = VecDeque::new();
    let started = Instant::now();
    let warm_up = churn.warm_up(args.duration);
    let mut next_ns = Instant::now();
    let mut next_rule = Instant::now() + churn.rule_every;
    let mut next_scan = churn.scan_every.map(|every| Instant::now() + every / 2);
    let mut next_report = Instant::now() + warm_up;
    let mut port: u16 = 1;
    let (mut sent, mut made, mut scans, mut rules) = (0u64, 0u32, 0u32, 0u32);
    let mut first: Option<Snapshot> = None;
    let mut warm_peak: f64 = 0.0;
    let mut peak: f64 = 0.0;
    let mut window = Window::default();
    let mut windows: Vec<Window> = Vec::new();
    while started.elapsed() < args.duration {
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!(
                "interrupted after {:.0} min: an interrupted soak is not a pass",
                started.elapsed().as_secs_f64() / 60.0
            );
        }
        let tick = Instant::now();
        if tick >= next_ns {
            next_ns += churn.namespace_every;
            made += 1;
            let ns = Netns::create(&format!("dt-soak{made}"))?;
            ns.exec(&["iptables", "-A", "OUTPUT", "-p", "udp", "-j", "DROP"])?;
            spaces.push_back(ns);
            if spaces.len() > churn.live_namespaces {
                spaces.pop_front();
            }
        }
        if tick >= next_rule
            && let Some(ns) = spaces.back()
        {
            next_rule += churn.rule_every;
            rules += 1;
            // Insert one above the dropping rule, or take the last one out again.
            if rules % 3 == 0 {
                ns.exec(&["iptables", "-D", "OUTPUT", "1"])?;
            } else {
                let dport = (rules % 50 + 1).to_string();
                ns.exec(&[
                    "iptables", "-I", "OUTPUT", "1", "-p", "udp", "--dport", &dport, "-j", "DROP",
                ])?;
            }
        }
        let ns = spaces.back().context("no namespace")?;
        if let (Some(at), Some(flood)) = (next_scan, &flood)
            && tick >= at
        {
            next_scan = churn.scan_every.map(|every| at + every);
            scans += 1;
            // 200,000 flows in 3 s, beyond the kernel's flow table.
            crate::scan::burst_of(ns, flood, "200000")?;
        }
        // One second's drops, from the newest namespace, each to the next port.
        let ports: Vec<u16> = (0..args.rate)
            .map(|_| {
                port = if port >= 60_000 { 10 } else { port + 1 };
                port
            })
            .collect();
        let (ours, theirs) = ports.split_at(ports.len() / 2);
        let churned = tick.elapsed();
        sent += send_in(ns, ours)?;
        let sent_ours = tick.elapsed();
        sent += senders.send(ns, made, theirs)?;
        let sent_theirs = tick.elapsed();
        let (rss, _) = crate::procstat::usage(serve.child.id())?;
        peak = peak.max(rss);
        window.add(rss);
        if started.elapsed() < warm_up {
            warm_peak = warm_peak.max(rss);
        }
        if Instant::now() >= next_report {
            next_report += REPORT_EVERY;
            let now = Snapshot::of(&serve)?;
            let minutes = started.elapsed().as_secs_f64() / 60.0;
            match &first {
                None => say(&now.line(&format!("{minutes:.0} min (start)"), &now, &window)),
                Some(f) => {
                    say(&now.line(&format!("{minutes:.0} min"), f, &window));
                    windows.push(window);
                }
            }
            window = Window::default();
            now.within_caps().map_err(anyhow::Error::msg)?;
            first.get_or_insert(now);
        }
        // A second's churn that takes longer is not the churn asked for: say where it went.
        if tick.elapsed() > Duration::from_secs(2) {
            say(&format!(
                "a second's churn took {:.1} s (namespaces, rules, scans {:.1} s; sending {:.1} \
                 + {:.1} s)",
                tick.elapsed().as_secs_f64(),
                churned.as_secs_f64(),
                (sent_ours - churned).as_secs_f64(),
                (sent_theirs - sent_ours).as_secs_f64()
            ));
        }
        if let Some(left) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            std::thread::sleep(left);
        }
    }
    let first = first.context("the soak is shorter than its warm-up")?;
    let last = Snapshot::of(&serve)?;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    say(&last.line(&format!("{minutes:.0} min (end)"), &first, &window));
    if window.samples > 0 {
        windows.push(window);
    }
    say(&format!(
        "{made} namespaces, {rules} rule changes, {scans} port scans, {sent} datagrams sent \
         (all dropped)"
    ));
    let cpu_pct =
        100.0 * (last.cpu_s - first.cpu_s) / last.at.duration_since(first.at).as_secs_f64();
    println!("bench: soak_minutes={minutes:.1}");
    println!("bench: soak_week_compressed={}", args.week);
    println!("bench: soak_rss_warm_up_peak_mb={warm_peak:.1}");
    println!("bench: soak_rss_start_mb={:.1}", first.rss_mb);
    println!("bench: soak_rss_end_mb={:.1}", last.rss_mb);
    println!("bench: soak_rss_peak_mb={peak:.1}");
    println!("bench: soak_cpu_pct_average={cpu_pct:.2}");
    println!("bench: soak_series_start={}", first.series);
    println!("bench: soak_series_end={}", last.series);
    println!("bench: soak_scrape_ms_end={}", last.scrape.as_millis());
    let (settled_first, settled_last) = (
        windows.first().map_or(0.0, |w| w.low),
        windows.last().map_or(0.0, |w| w.low),
    );
    println!("bench: soak_rss_settled_first_window_mb={settled_first:.1}");
    println!("bench: soak_rss_settled_last_window_mb={settled_last:.1}");
    last.within_caps().map_err(anyhow::Error::msg)?;
    if peak > warm_peak + RSS_SLACK_MB {
        bail!(
            "RSS grew after the warm-up: peak {peak:.1} MB, {warm_peak:.1} MB during the warm-up"
        );
    }
    // The level RSS settles at between scans: growth there is memory kept, not a scan's.
    if settled_last > settled_first + RSS_SLACK_MB {
        bail!(
            "RSS grew after the warm-up: it settled at {settled_first:.1} MB in the first \
             10 minutes after it and at {settled_last:.1} MB in the last"
        );
    }
    if peak > RSS_CEILING_MB {
        bail!("RSS peaked at {peak:.1} MB, past the {RSS_CEILING_MB} MB the fleet docs promise");
    }
    drop(spaces);
    serve.stop()
}

/// Sends one datagram to 127.0.0.1 at each port, from inside `ns`; how many were sent
/// (every one is dropped in OUTPUT, so the kernel refuses each with EPERM).
fn send_in(ns: &Netns, ports: &[u16]) -> anyhow::Result<u64> {
    let file = File::open(Path::new("/run/netns").join(&ns.name))?;
    let ports = ports.to_vec();
    std::thread::spawn(move || -> anyhow::Result<u64> {
        setns(&file, CloneFlags::CLONE_NEWNET)?;
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        Ok(ports
            .iter()
            .filter(|p| sock.send_to(b"soak", ("127.0.0.1", **p)).is_err())
            .count() as u64)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the sender panicked"))?
}

/// Short-lived sender processes with names of their own: bash through symlinks named
/// `sender-N` (a process's name is its executable's), writing to bash's /dev/udp.
struct SenderNames {
    dir: PathBuf,
}

/// Distinct sender names, reused in turn: processes come and go, series expire.
const SENDER_NAMES: u32 = 200;

impl SenderNames {
    fn new() -> anyhow::Result<SenderNames> {
        let dir = std::env::temp_dir().join(format!("dt-soak-senders-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let bash = which_bash()?;
        for i in 0..SENDER_NAMES {
            let link = dir.join(format!("sender-{i}"));
            if !link.exists() {
                std::os::unix::fs::symlink(&bash, &link)?;
            }
        }
        Ok(SenderNames { dir })
    }

    /// One process named after `n` sends a datagram to each port from `ns`; returns how
    /// many it sent (each fails with EPERM, so bash reports them: counted from the ports).
    fn send(&self, ns: &Netns, n: u32, ports: &[u16]) -> anyhow::Result<u64> {
        let exe = self.dir.join(format!("sender-{}", n % SENDER_NAMES));
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        let status = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(&exe)
            .args([
                "-c",
                "for p in $PORTS; do echo soak 2>/dev/null >/dev/udp/127.0.0.1/$p; done; true",
            ])
            .env("PORTS", list.join(" "))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot run a sender")?;
        if !status.success() {
            bail!("a sender exited with {status}");
        }
        Ok(ports.len() as u64)
    }
}

impl Drop for SenderNames {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn which_bash() -> anyhow::Result<PathBuf> {
    ["/usr/bin/bash", "/bin/bash"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("bash not found")
}
