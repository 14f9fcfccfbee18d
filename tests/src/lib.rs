//! Test harness: throw-away network topologies and a droptrace process to watch them.
//!
//! Each test builds its own "client" and "gateway" namespaces joined by a veth pair, with
//! names unique to the test process and test, and runs droptrace scoped to its own
//! namespace (`--netns`), so tests run in parallel without seeing each other's drops.
//! Everything is removed on drop, also when the test panics: deleting a namespace
//! deletes its interfaces and its iptables/nftables rules with it.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::sched::{CloneFlags, setns};
use serde_json::Value;

pub const CLIENT_V4: &str = "198.51.100.2";
pub const GATEWAY_V4: &str = "203.0.113.10";
pub const CLIENT_V6: &str = "2001:db8:1::2";
pub const GATEWAY_V6: &str = "2001:db8:2::10";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command, failing with its stderr when it fails.
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Ids of the BPF programs and links that process `pid` (every process with `None`) holds
/// a file descriptor to, from /proc/PID/fdinfo (bpftool's own pid column misses some
/// holders).
pub fn held_bpf_ids(pid: Option<u32>) -> (Vec<u64>, Vec<u64>) {
    let procs: Vec<PathBuf> = match pid {
        Some(pid) => vec![PathBuf::from(format!("/proc/{pid}"))],
        None => std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect(),
    };
    let (mut progs, mut links) = (Vec::new(), Vec::new());
    for proc_dir in procs {
        let Ok(fds) = std::fs::read_dir(proc_dir.join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            for line in info.lines() {
                let mut kv = line.split_whitespace();
                match (kv.next(), kv.next().and_then(|v| v.parse::<u64>().ok())) {
                    (Some("prog_id:"), Some(id)) => progs.push(id),
                    (Some("link_id:"), Some(id)) => links.push(id),
                    _ => {}
                }
            }
        }
    }
    (progs, links)
}

/// `bpftool ARGS --json`, parsed.
pub fn bpftool_json(args: &[&str]) -> Vec<Value> {
    let out = Command::new("bpftool")
        .args(args)
        .arg("--json")
        .output()
        .expect("bpftool");
    serde_json::from_slice(&out.stdout).expect("bpftool json")
}

/// droptrace's programs (`kfree_skb`, `kfree_skb_tp`, and with `--attempts` `attempt_passed`
/// and the `inventory_*` ones; the kernel shows names cut at 15 bytes) that no process holds,
/// directly or through a link: these would have outlived their droptrace.
///
/// One look races the other tests, which load and unload their own droptrace meanwhile: a
/// program whose process just exited is freed after an RCU grace period. Assert on
/// [`lasting_orphans`], which looks again.
pub fn orphaned_programs() -> Vec<Value> {
    // Programs first, holders second: a program loaded after the first look is not listed,
    // so every listed one had its holder when the holders are read (unless it just exited).
    let programs = bpftool_json(&["prog", "show"]);
    let links = bpftool_json(&["link", "show"]);
    let (held_progs, held_links) = held_bpf_ids(None);
    let linked: Vec<u64> = links
        .iter()
        .filter(|l| l["id"].as_u64().is_some_and(|id| held_links.contains(&id)))
        .filter_map(|l| l["prog_id"].as_u64())
        .collect();
    programs
        .into_iter()
        .filter(|p| {
            let id = p["id"].as_u64().unwrap_or_default();
            let name = p["name"].as_str().unwrap_or_default();
            ["kfree_skb", "attempt_passed", "inventory_"]
                .iter()
                .any(|ours| name.starts_with(ours))
                && !held_progs.contains(&id)
                && !linked.contains(&id)
        })
        .collect()
}

/// The [`orphaned_programs`] that stay orphaned in every look for `within` (every 100 ms):
/// one whose process exited a moment ago is freed meanwhile and drops out; one that
/// outlived its droptrace stays in every look.
pub fn lasting_orphans(within: Duration) -> Vec<Value> {
    let id = |p: &Value| p["id"].as_u64().unwrap_or_default();
    let deadline = Instant::now() + within;
    let mut orphans = orphaned_programs();
    while !orphans.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        let now: Vec<u64> = orphaned_programs().iter().map(id).collect();
        orphans.retain(|p| now.contains(&id(p)));
    }
    orphans
}

/// A named network namespace (/run/netns/NAME), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("dt-{}-{n}-{tag}", std::process::id());
        sh(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets made there stay in
    /// the namespace; the test's own thread is untouched.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let file = File::open(self.path())?;
        thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in netns panicked"))
    }

    /// Starts a TCP listener that accepts (and closes) connections until the test ends.
    pub fn tcp_listen(&self, addr: SocketAddr) -> anyhow::Result<()> {
        let listener = self.run(move || TcpListener::bind(addr))??;
        thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
            }
        });
        Ok(())
    }

    /// Starts a UDP echo service that answers every datagram until the test ends.
    pub fn udp_echo(&self, addr: SocketAddr) -> anyhow::Result<()> {
        let sock = self.run(move || UdpSocket::bind(addr))??;
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        });
        Ok(())
    }

    /// Tries a TCP connection from this namespace; `Ok(true)` when it connected.
    pub fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> anyhow::Result<bool> {
        self.run(move || TcpStream::connect_timeout(&addr, timeout).is_ok())
    }

    /// Tries a TCP connection from this namespace's `from` address and port, as a client
    /// that reuses its source port does; `Ok(true)` when it connected.
    pub fn tcp_connect_from(
        &self,
        from: SocketAddr,
        to: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<bool> {
        use socket2::{Domain, Socket, Type};
        self.run(move || -> std::io::Result<bool> {
            let s = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&from.into())?;
            Ok(s.connect_timeout(&to.into(), timeout).is_ok())
        })?
        .map_err(Into::into)
    }

    /// The packet counters of the rules of iptables' OUTPUT chain, in order: the kernel's
    /// own count, the tests' oracle.
    pub fn output_counters(&self) -> Vec<u64> {
        self.exec(&["iptables", "-L", "OUTPUT", "-v", "-x", "-n"])
            .expect("iptables -L OUTPUT")
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// A column of the namespace's conntrack counters (/proc/net/stat/nf_conntrack:
    /// `drop`, `insert_failed`, ...), summed over the CPUs.
    pub fn conntrack_stat(&self, column: &str) -> anyhow::Result<u64> {
        let text = self.exec(&["cat", "/proc/net/stat/nf_conntrack"])?;
        let mut lines = text.lines();
        let at = lines
            .next()
            .and_then(|h| h.split_whitespace().position(|c| c == column))
            .with_context(|| format!("no column {column} in /proc/net/stat/nf_conntrack"))?;
        lines
            .map(|l| {
                let cell = l.split_whitespace().nth(at).unwrap_or_default();
                Ok(u64::from_str_radix(cell, 16)?)
            })
            .sum()
    }

    /// Sends one datagram to each port of `ports` (one flow each); returns how many the
    /// kernel accepted.
    pub fn udp_spray(
        &self,
        ip: IpAddr,
        ports: std::ops::RangeInclusive<u16>,
    ) -> anyhow::Result<usize> {
        self.run(move || {
            let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
            ports
                .filter(|p| sock.send_to(b"x", SocketAddr::new(ip, *p)).is_ok())
                .count()
        })
    }

    /// Sends `n` UDP datagrams from one socket; returns how many the kernel accepted
    /// (a datagram dropped in OUTPUT fails with EPERM).
    pub fn udp_send(&self, addr: SocketAddr, n: usize) -> anyhow::Result<usize> {
        self.run(move || {
            let bind: SocketAddr = if addr.is_ipv6() {
                "[::]:0".parse().unwrap()
            } else {
                "0.0.0.0:0".parse().unwrap()
            };
            let sock = UdpSocket::bind(bind).expect("bind");
            (0..n)
                .filter(|_| sock.send_to(b"droptrace test", addr).is_ok())
                .count()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A client and a gateway namespace joined by a veth pair, IPv4 and IPv6.
pub struct Topology {
    pub client: Netns,
    pub gateway: Netns,
}

impl Topology {
    pub fn new() -> anyhow::Result<Self> {
        let client = Netns::new("c")?;
        let gateway = Netns::new("g")?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (vc, vg) = (format!("dtc{n}"), format!("dtg{n}"));
        sh(&[
            "ip",
            "link",
            "add",
            &vc,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            &vg,
            "netns",
            &gateway.name,
        ])?;
        for (ns, dev, v4, v6, peer4, peer6) in [
            (&client, &vc, CLIENT_V4, CLIENT_V6, GATEWAY_V4, GATEWAY_V6),
            (&gateway, &vg, GATEWAY_V4, GATEWAY_V6, CLIENT_V4, CLIENT_V6),
        ] {
            ns.exec(&["ip", "addr", "add", &format!("{v4}/32"), "dev", dev])?;
            ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{v6}/128"),
                "dev",
                dev,
                "nodad",
            ])?;
            ns.exec(&["ip", "link", "set", dev, "up"])?;
            ns.exec(&["ip", "route", "add", &format!("{peer4}/32"), "dev", dev])?;
            ns.exec(&[
                "ip",
                "-6",
                "route",
                "add",
                &format!("{peer6}/128"),
                "dev",
                dev,
            ])?;
        }
        Ok(Topology { client, gateway })
    }

    pub fn gateway_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(GATEWAY_V4.parse().unwrap(), port)
    }

    pub fn gateway_addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(GATEWAY_V6.parse::<IpAddr>().unwrap(), port)
    }
}

/// The droptrace binary under test: $DROPTRACE_BIN (set by `cargo xtask test`), else the
/// debug build in the workspace.
pub fn droptrace_bin() -> PathBuf {
    std::env::var_os("DROPTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/droptrace")
        })
}

/// `droptrace ARGS` in text mode (ARGS end the capture by themselves, `--duration`):
/// `traffic` runs once droptrace says it is watching; returns what it printed on stdout.
pub fn watch_text(args: &[&str], traffic: impl FnOnce()) -> String {
    let mut child = Command::new(droptrace_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kept open until the end: droptrace still writes to it.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut start = String::new();
    stderr.read_line(&mut start).unwrap();
    assert!(start.starts_with("droptrace: watching"), "{start}");
    traffic();
    let out = child.wait_with_output().unwrap();
    drop(stderr);
    String::from_utf8(out.stdout).unwrap()
}

/// Runs droptrace with `args`, returning (exit code, stdout, stderr).
pub fn droptrace_output(args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new(droptrace_bin()).args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A running `droptrace ... --json`, attached and ready when `start` returns.
pub struct Watcher {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Watcher {
    /// The droptrace process under test.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        Self::start_checked(args, |_| {})
    }

    /// Like [`Watcher::start`], handing the start line to `check`.
    pub fn start_checked(args: &[&str], check: impl FnOnce(&Value)) -> anyhow::Result<Self> {
        Self::start_with_env(args, &[], check)
    }

    /// Like [`Watcher::start_checked`], with variables added to droptrace's environment.
    pub fn start_with_env(
        args: &[&str],
        env: &[(&str, &str)],
        check: impl FnOnce(&Value),
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(droptrace_bin());
        command.args(args).envs(env.iter().copied()).arg("--json");
        Self::spawn(command, check)
    }

    /// Starts `command`, which ends by running `droptrace ... --json` in its own process
    /// (`exec`: signals reach droptrace), as [`Watcher::start_checked`] does.
    pub fn spawn(mut command: Command, check: impl FnOnce(&Value)) -> anyhow::Result<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start droptrace")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(e) => panic!("droptrace printed a line that is not JSON ({e}): {line}"),
                }
            }
        });
        let w = Watcher {
            child,
            lines,
            seen: Vec::new(),
        };
        // Only a guard against a hang: start-up is measured by `cargo xtask bench`, and a
        // loaded CI machine verifying many programs at once can take a while.
        let first = w
            .lines
            .recv_timeout(Duration::from_secs(90))
            .context("droptrace did not start")?;
        if first["type"] != "start" {
            bail!("first line is not the start line: {first}");
        }
        check(&first);
        Ok(w)
    }

    /// Sends a signal to droptrace (SIGSTOP/SIGCONT to stall it).
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> anyhow::Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)?;
        Ok(())
    }

    /// Stops droptrace (SIGINT, as Ctrl-C) and returns every JSON line after the start line.
    pub fn stop(self) -> anyhow::Result<Vec<Value>> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )?;
        self.finish()
    }

    /// Waits for droptrace to end by itself (--duration, --count).
    pub fn finish(mut self) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => bail!("droptrace did not finish"),
            }
        }
        let status = self.child.wait()?;
        if !status.success() {
            bail!("droptrace exited with {status}");
        }
        Ok(std::mem::take(&mut self.seen))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The drop lines of a capture.
pub fn drops(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|v| v["type"] == "drop").collect()
}

/// Packets the drop lines stand for (the sum of their `count`).
pub fn packets(drops: &[&Value]) -> u64 {
    drops
        .iter()
        .map(|v| v["count"].as_u64().expect("count"))
        .sum()
}

/// The summary line, which must be the last line.
pub fn summary(lines: &[Value]) -> &Value {
    let last = lines.last().expect("no output");
    assert_eq!(
        last["type"], "summary",
        "last line is not the summary: {last}"
    );
    last
}
