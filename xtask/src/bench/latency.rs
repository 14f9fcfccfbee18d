//! The drop-to-line round: how long after a drop its line, with the rule named, reaches
//! the engineer, with a ruleset of 2,000 rules (a first-time user measured 1.8 s median
//! there), and what naming rules costs meanwhile.
//!
//! A sender in the round's namespace sends one UDP datagram every [`PERIOD`] to a new
//! port (a new flow each, so each gets its own line) into a DROP rule after 2,000 rules
//! that do not match; `droptrace watch --json` runs beside it. A datagram's latency is
//! from its `sendto` to the moment its line is read from droptrace's stdout, both on this
//! process's monotonic clock. Then Ctrl-C, timed to the exit. CPU time is droptrace's and
//! its children's (the ruleset tools), from wait4.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::UdpSocket,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::sys::signal::Signal;

use super::{Proc, START_TIMEOUT, median, read_all, say};
use crate::netns::Netns;

/// Rules before the DROP rule.
const RULES: usize = 2000;
/// Drops sent, one per [`PERIOD`] (5 a second, as the first-time user's capture).
const DROPS: usize = 100;
const PERIOD: Duration = Duration::from_millis(200);
/// The first destination port; the DROP rule takes this and the next [`DROPS`].
const FIRST_PORT: u16 = 20000;
/// How long to wait for the last lines after the last drop.
const LINGER: Duration = Duration::from_secs(3);

pub(super) struct Latency {
    pub median_s: f64,
    pub p99_s: f64,
    pub max_s: f64,
    pub lines: usize,
    pub exact: usize,
    pub cpu_s: f64,
    pub wall_s: f64,
    pub exit_ms: f64,
}

/// The ruleset: `RULES` ACCEPT rules for TCP to addresses nothing here sends to, then
/// the DROP rule for the round's UDP ports.
fn ruleset() -> String {
    let mut s =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for i in 0..RULES {
        s += &format!(
            "-A OUTPUT -d 10.{}.{}.1/32 -p tcp --dport {} -j ACCEPT\n",
            (i >> 8) & 255,
            i & 255,
            1000 + i
        );
    }
    s += &format!(
        "-A OUTPUT -p udp --dport {FIRST_PORT}:{} -j DROP\nCOMMIT\n",
        FIRST_PORT as usize + DROPS
    );
    s
}

pub(super) fn run(droptrace: &Path) -> anyhow::Result<Latency> {
    let ns = Netns::create("droptrace-latency")?;
    let mut restore = Command::new("ip")
        .args(["netns", "exec", &ns.name, "iptables-nft-restore"])
        .stdin(Stdio::piped())
        .spawn()
        .context("iptables-nft-restore")?;
    restore
        .stdin
        .take()
        .expect("piped")
        .write_all(ruleset().as_bytes())?;
    if !restore.wait()?.success() {
        bail!("iptables-nft-restore of the {RULES}-rule ruleset failed");
    }
    say(&format!(
        "drop-to-line round: {RULES} rules in {}, {DROPS} drops {} ms apart",
        ns.name,
        PERIOD.as_millis()
    ));

    let mut cmd = Command::new(droptrace);
    cmd.args(["watch", "--netns", &ns.name, "--json", "--proto", "udp"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let began = Instant::now();
    let mut proc = Proc::spawn(&mut cmd, "droptrace")?;
    let stdout = proc.child.stdout.take().expect("piped");
    let stderr = read_all(proc.child.stderr.take().expect("piped"));
    // (when read, the line's destination port, whether its rule is `exact`); None: started.
    let (tx, lines) = mpsc::channel::<(Instant, Option<(u16, bool)>)>();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let at = Instant::now();
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let seen = match v["type"].as_str() {
                Some("start") => None,
                Some("drop") => {
                    let Some(port) = v["dport"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
                        continue;
                    };
                    Some((port, v["attribution"] == "exact"))
                }
                _ => continue,
            };
            if tx.send((at, seen)).is_err() {
                break;
            }
        }
    });
    match lines.recv_timeout(START_TIMEOUT) {
        Ok((_, None)) => {}
        _ => {
            proc.kill();
            bail!(
                "droptrace did not start: {}",
                stderr.join().unwrap_or_default().trim()
            );
        }
    }

    let sent = send_drops(&ns.name)?;
    thread::sleep(LINGER);
    let signalled = Instant::now();
    let exit = proc.stop(Signal::SIGINT)?;
    let exit_ms = signalled.elapsed().as_secs_f64() * 1e3;
    let wall_s = began.elapsed().as_secs_f64();
    if !exit.success() {
        bail!(
            "droptrace exited with status {:#x}: {}",
            exit.status,
            stderr.join().unwrap_or_default().trim()
        );
    }

    let mut latencies = Vec::new();
    let mut exact = 0;
    let mut seen = std::collections::HashSet::new();
    for (at, line) in lines.try_iter() {
        let Some((port, is_exact)) = line else {
            continue;
        };
        let Some(i) = port.checked_sub(FIRST_PORT).map(usize::from) else {
            continue;
        };
        if let Some(sent_at) = sent.get(i)
            && seen.insert(port)
        {
            latencies.push(at.saturating_duration_since(*sent_at).as_secs_f64());
            exact += usize::from(is_exact);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies
        .get((latencies.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN);
    Ok(Latency {
        median_s: median(latencies.clone()),
        p99_s: p99,
        max_s: latencies.last().copied().unwrap_or(f64::NAN),
        lines: latencies.len(),
        exact,
        cpu_s: exit.cpu_s(),
        wall_s,
        exit_ms,
    })
}

/// Sends the round's datagrams from a thread inside the namespace (sockets take the
/// namespace of the thread that creates them); when each was sent.
fn send_drops(netns: &str) -> anyhow::Result<Vec<Instant>> {
    let path = format!("/run/netns/{netns}");
    thread::spawn(move || -> anyhow::Result<Vec<Instant>> {
        let ns = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let mut sent = Vec::with_capacity(DROPS);
        for i in 0..DROPS {
            sent.push(Instant::now());
            // Dropped in OUTPUT: the send fails with EPERM, as it should.
            let _ = socket.send_to(b"droptrace latency", ("127.0.0.1", FIRST_PORT + i as u16));
            thread::sleep(PERIOD);
        }
        Ok(sent)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the sender thread panicked"))?
}

impl Latency {
    pub(super) fn print(&self) {
        println!(
            "\ndrop to line ({RULES} rules before the DROP rule; {DROPS} drops {} ms apart, each a \
             new flow; from sendto to the line read from `droptrace watch --json`): median {:.3} s, \
             p99 {:.3} s, max {:.3} s; {} of {DROPS} lines, {} exact; droptrace and its ruleset \
             tools {:.2} s of CPU over {:.1} s ({:.1}% of a core); Ctrl-C to exit {:.0} ms",
            PERIOD.as_millis(),
            self.median_s,
            self.p99_s,
            self.max_s,
            self.lines,
            self.exact,
            self.cpu_s,
            self.wall_s,
            100.0 * self.cpu_s / self.wall_s,
            self.exit_ms,
        );
        println!("bench: line_latency_median_s={:.3}", self.median_s);
        println!("bench: line_latency_p99_s={:.3}", self.p99_s);
        println!(
            "bench: line_latency_lines={}/{DROPS} exact={}",
            self.lines, self.exact
        );
        println!(
            "bench: line_latency_cpu_share={:.3}",
            self.cpu_s / self.wall_s
        );
        println!("bench: ctrl_c_exit_ms={:.0}", self.exit_ms);
    }
}
