//! `cargo xtask soak [--duration 1h]`: `droptrace serve` (release build) through churn at a
//! steady drop rate, printing its RSS, CPU and series at the start and at the end. Figures
//! only, like the bench: a soak that leaks shows it as an end far above the start.
//!
//! The churn, over and over: a new namespace every 10 s with its own DROP rule (the oldest
//! of six deleted, so series of gone namespaces must expire), a rule inserted above the
//! dropping one every 5 s (renumbering it: new series), and datagrams to ever new ports
//! (new flows) at `--rate` drops a second.

use std::{
    collections::VecDeque,
    fs::File,
    net::UdpSocket,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::sched::{CloneFlags, setns};

use crate::netns::Netns;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long to churn.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub duration: Duration,
    /// Drops a second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
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

/// What the serve process looks like at one moment.
struct Snapshot {
    at: Instant,
    rss_mb: f64,
    cpu_s: f64,
    series: usize,
}

pub fn run(droptrace: &Path, args: &Args) -> anyhow::Result<()> {
    let mut serve = Serve::start(droptrace)?;
    let mut spaces: VecDeque<Netns> = VecDeque::new();
    let started = Instant::now();
    let mut next_ns = Instant::now();
    let mut next_rule = Instant::now() + Duration::from_secs(5);
    let mut port: u16 = 1;
    let mut sent: u64 = 0;
    let mut first: Option<Snapshot> = None;
    let mut made = 0u32;
    while started.elapsed() < args.duration {
        if Instant::now() >= next_ns {
            next_ns += Duration::from_secs(10);
            made += 1;
            let ns = Netns::create(&format!("dt-soak{made}"))?;
            ns.exec(&["iptables", "-A", "OUTPUT", "-p", "udp", "-j", "DROP"])?;
            spaces.push_back(ns);
            if spaces.len() > 6 {
                spaces.pop_front();
            }
        }
        if Instant::now() >= next_rule
            && let Some(ns) = spaces.back()
        {
            next_rule += Duration::from_secs(5);
            ns.exec(&[
                "iptables", "-I", "OUTPUT", "1", "-p", "udp", "--dport", "9", "-j", "DROP",
            ])?;
        }
        // One second's drops, from the newest namespace, each to the next port.
        let ns = spaces.back().context("no namespace")?;
        let tick = Instant::now();
        let ports: Vec<u16> = (0..args.rate)
            .map(|_| {
                port = if port >= 60_000 { 10 } else { port + 1 };
                port
            })
            .collect();
        sent += send_in(ns, &ports)?;
        // The first snapshot after a minute of churn, once start-up is behind.
        if first.is_none() && started.elapsed() >= Duration::from_secs(60) {
            first = Some(serve.snapshot()?);
        }
        if let Some(left) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            std::thread::sleep(left);
        }
        if let Some(status) = serve.child.try_wait()? {
            bail!("droptrace serve exited during the soak: {status}");
        }
    }
    let last = serve.snapshot()?;
    let first = first.context("the soak is shorter than its one-minute warm-up")?;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let cpu_pct = |a: &Snapshot, b: &Snapshot| {
        100.0 * (b.cpu_s - a.cpu_s) / b.at.duration_since(a.at).as_secs_f64()
    };
    say(&format!(
        "{minutes:.0} min, {made} namespaces, {sent} datagrams sent (all dropped)"
    ));
    println!("bench: soak_minutes={minutes:.1}");
    println!("bench: soak_rss_start_mb={:.1}", first.rss_mb);
    println!("bench: soak_rss_end_mb={:.1}", last.rss_mb);
    println!("bench: soak_cpu_pct_average={:.2}", cpu_pct(&first, &last));
    println!("bench: soak_series_start={}", first.series);
    println!("bench: soak_series_end={}", last.series);
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

struct Serve {
    child: Child,
    addr: String,
}

impl Serve {
    fn start(droptrace: &Path) -> anyhow::Result<Serve> {
        use std::io::{BufRead as _, BufReader};
        let mut child = Command::new(droptrace)
            .args(["serve", "--listen", "127.0.0.1:0", "--series-ttl", "30s"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start droptrace serve")?;
        let stderr = child.stderr.take().expect("piped");
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines
                .next()
                .transpose()?
                .context("droptrace serve ended before serving")?;
            if let Some(rest) = line.strip_prefix("droptrace: serving http://") {
                break rest.split('/').next().unwrap_or_default().to_string();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        say(&format!("droptrace serve on {addr}"));
        Ok(Serve { child, addr })
    }

    fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let (rss_mb, cpu_s) = crate::procstat::usage(self.child.id())?;
        let series = crate::http::get(&self.addr, "/metrics")?
            .lines()
            .filter(|l| l.starts_with("droptrace_") && !l.starts_with('#'))
            .count();
        Ok(Snapshot {
            at: Instant::now(),
            rss_mb,
            cpu_s,
            series,
        })
    }

    fn stop(mut self) -> anyhow::Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("droptrace serve exited with {status} on SIGTERM");
        }
        Ok(())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
