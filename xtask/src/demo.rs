//! `cargo xtask demo`: the incident from the brief, replayed in network namespaces.
//!
//! An "app" namespace (the production server) reaches an "ext" namespace (its external
//! services, at 203.0.113.10) over a veth pair. The weekend's hardening rules are applied
//! in "app", each service client runs as its own process with a recognisable name, and
//! droptrace shows which connections the firewall drops. Everything is removed at the end,
//! also when the demo fails: the namespaces take their rules and interfaces with them.
//!
//! The payment gateway fails intermittently, as in the incident: its client ("java")
//! reconnects from the source ports of its pool, and the pool's connections opened before
//! the change are still in conntrack, so those attempts pass the ESTABLISHED,RELATED rule
//! while the new ones hit the DROP (`watch --attempts` shows both halves).

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader},
    net::TcpListener,
    os::unix::fs::symlink,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use nix::{
    sched::{CloneFlags, setns},
    sys::signal::{Signal, kill},
    unistd::Pid,
};

const APP: &str = "droptrace-demo-app";
const EXT: &str = "droptrace-demo-ext";
const APP_ADDR: &str = "198.51.100.2";
const EXT_ADDR: &str = "203.0.113.10";

/// (service, client process name, port) — the audit of the incident, plus the ports the
/// hardening script allowed.
const SERVICES: &[(&str, &str, u16)] = &[
    ("metrics collector", "prometheus", 9090),
    ("log aggregator", "filebeat", 5044),
    ("webhook endpoint", "webhook-worker", 8080),
    ("SMTP relay", "postfix", 587),
    ("HTTPS API", "curl", 443),
    ("HTTP mirror", "apt", 80),
    ("bastion", "ssh", 22),
    ("database", "mysqld", 3306),
];

/// The payment gateway's client: five attempts from its pool's source ports, two of which
/// still have a conntrack entry from before the change.
const PAYMENT_PORT: u16 = 8443;
const POOL_PORTS: &[u16] = &[40001, 40002, 40003, 40004, 40005];
const POOL_LIVE: &[u16] = &[40002, 40004];

/// The hardening script's rules (iptables-nft), as in the incident report.
const HARDENING: &[&[&str]] = &[
    &["-A", "OUTPUT", "-o", "lo", "-j", "ACCEPT"],
    &[
        "-A",
        "OUTPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "ACCEPT",
    ],
    &[
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-m",
        "multiport",
        "--dports",
        "80,443,22,3306",
        "-j",
        "ACCEPT",
    ],
    &[
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "--dport",
        "1024:65535",
        "-j",
        "DROP",
    ],
];

struct Namespaces;

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [APP, EXT] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(bin_dir());
        eprintln!("demo: cleaned up (namespaces {APP}, {EXT} and their rules removed)");
    }
}

fn bin_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("droptrace-demo-bin")
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    crate::run_checked(Command::new("ip").args(args))
}

fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    crate::run_checked(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

pub fn run(droptrace: &Path) -> anyhow::Result<()> {
    // A previous demo killed half-way may have left its namespaces.
    drop(Namespaces);
    let _guard = Namespaces;

    eprintln!("demo: building namespaces {APP} (the server) and {EXT} (its services)");
    ip(&["netns", "add", APP])?;
    ip(&["netns", "add", EXT])?;
    ip(&[
        "link", "add", "dt-app", "netns", APP, "type", "veth", "peer", "dt-ext", "netns", EXT,
    ])?;
    for (ns, dev, addr, peer) in [
        (APP, "dt-app", APP_ADDR, EXT_ADDR),
        (EXT, "dt-ext", EXT_ADDR, APP_ADDR),
    ] {
        in_ns(ns, &["ip", "link", "set", "lo", "up"])?;
        in_ns(
            ns,
            &["ip", "addr", "add", &format!("{addr}/32"), "dev", dev],
        )?;
        in_ns(ns, &["ip", "link", "set", dev, "up"])?;
        in_ns(
            ns,
            &["ip", "route", "add", &format!("{peer}/32"), "dev", dev],
        )?;
    }
    listen(SERVICES.iter().map(|s| s.2).chain([PAYMENT_PORT]))?;
    eprintln!(
        "demo: java's connection pool, opened before the change, left conntrack entries for \
         source ports {POOL_LIVE:?}"
    );
    for sport in POOL_LIVE {
        crate::run_checked(
            Command::new("ip")
                .args(["netns", "exec", APP, "conntrack", "-I", "-p", "tcp"])
                .args([
                    "-s",
                    APP_ADDR,
                    "-d",
                    EXT_ADDR,
                    "--sport",
                    &sport.to_string(),
                ])
                .args([
                    "--dport",
                    &PAYMENT_PORT.to_string(),
                    "--state",
                    "ESTABLISHED",
                ])
                .args(["-t", "600", "-u", "SEEN_REPLY,ASSURED"])
                // It says "1 flow entries have been created" on stderr.
                .stderr(Stdio::null()),
        )?;
    }
    eprintln!("demo: applying the weekend's hardening rules in {APP}:");
    for rule in HARDENING {
        eprintln!("        iptables {}", rule.join(" "));
        in_ns(APP, &[&["iptables"][..], rule].concat())?;
    }

    // Each service client is its own process, named like the real one (a symlink to bash
    // makes the kernel's comm "java", "prometheus", ...).
    fs::create_dir_all(bin_dir())?;
    for (_, name, _) in SERVICES {
        let link = bin_dir().join(name);
        let _ = fs::remove_file(&link);
        symlink("/bin/bash", &link)?;
    }
    // "java" is this program, connecting from chosen source ports (see `client`).
    symlink(std::env::current_exe()?, bin_dir().join("java"))?;

    eprintln!("demo: starting droptrace watch --netns {APP} --attempts");
    let mut watch = Command::new(droptrace)
        .args(["watch", "--netns", APP, "--attempts", "--duration", "20s"])
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start droptrace")?;
    let stderr = watch.stderr.take().expect("piped");
    let mut stderr = BufReader::new(stderr).lines();
    match stderr.next() {
        Some(Ok(line)) if line.starts_with("droptrace: watching") => eprintln!("{line}"),
        other => {
            let _ = watch.wait();
            bail!("droptrace did not start: {other:?}");
        }
    }
    thread::spawn(move || stderr.map_while(Result::ok).for_each(|l| eprintln!("{l}")));

    eprintln!("demo: the applications connect to their services (3 s timeout each)");
    let clients: Vec<_> = SERVICES
        .iter()
        .map(|(service, name, port)| {
            let child = Command::new("ip")
                .args(["netns", "exec", APP, "timeout", "3"])
                .arg(bin_dir().join(name))
                .args(["-c", &format!("exec 3<>/dev/tcp/{EXT_ADDR}/{port}")])
                .stderr(Stdio::null())
                .spawn();
            (service, name, port, child)
        })
        .collect();
    let ports: Vec<String> = POOL_PORTS.iter().map(u16::to_string).collect();
    let java = Command::new("ip")
        .args(["netns", "exec", APP])
        .arg(bin_dir().join("java"))
        .args(["demo-client", "--to", &format!("{EXT_ADDR}:{PAYMENT_PORT}")])
        .args(["--from-ports", &ports.join(",")])
        .stdout(Stdio::piped())
        .output();
    let mut results = Vec::new();
    let java = java?;
    results.push(format!(
        "demo:   {:<18} {:<15} {EXT_ADDR}:{:<5} {}",
        "payment gateway",
        "java",
        PAYMENT_PORT,
        String::from_utf8_lossy(&java.stdout).trim()
    ));
    for (service, name, port, child) in clients {
        let ok = child?.wait()?.success();
        results.push(format!(
            "demo:   {:<18} {:<15} {EXT_ADDR}:{:<5} {}",
            service,
            name,
            port,
            if ok {
                "connected"
            } else {
                "FAILED (timed out)"
            }
        ));
    }
    for r in results {
        eprintln!("{r}");
    }
    thread::sleep(Duration::from_millis(300));
    interrupt(watch.id())?;
    let status = watch.wait()?;
    if !status.success() {
        bail!("droptrace exited with {status}");
    }
    Ok(())
}

/// TCP listeners for every service port in the "ext" namespace, on a thread that entered it.
fn listen(ports: impl Iterator<Item = u16> + Send + 'static) -> anyhow::Result<()> {
    let ns = File::open(Path::new("/run/netns").join(EXT))?;
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let result = (|| -> anyhow::Result<Vec<TcpListener>> {
            // Only this thread enters the namespace; its sockets stay there.
            setns(&ns, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {EXT}"))?;
            ports
                .map(|p| Ok(TcpListener::bind((EXT_ADDR, p))?))
                .collect()
        })();
        match result {
            Ok(listeners) => {
                let _ = tx.send(Ok(()));
                for l in listeners {
                    thread::spawn(move || l.incoming().for_each(drop));
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    rx.recv()?
}

/// `java`'s side of the demo (`cargo xtask demo-client`, run through a symlink named java
/// so the kernel knows it by that name): one connection attempt from each source port, all
/// at once, 3 s each; prints how many connected.
pub fn client(to: std::net::SocketAddr, from_ports: &[u16]) -> anyhow::Result<()> {
    use socket2::{Domain, Socket, Type};
    let attempts: Vec<_> = from_ports
        .iter()
        .map(|&port| {
            thread::spawn(move || -> std::io::Result<bool> {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                s.set_reuse_address(true)?;
                s.bind(
                    &std::net::SocketAddr::new(APP_ADDR.parse().expect("address"), port).into(),
                )?;
                Ok(s.connect_timeout(&to.into(), Duration::from_secs(3))
                    .is_ok())
            })
        })
        .collect();
    let mut connected = 0;
    for a in attempts {
        if a.join()
            .map_err(|_| anyhow::anyhow!("attempt panicked"))??
        {
            connected += 1;
        }
    }
    let n = from_ports.len();
    if connected == n {
        println!("connected");
    } else {
        println!("{connected} of {n} attempts connected: INTERMITTENT");
    }
    Ok(())
}

/// Ctrl-C for droptrace: it drains what it has and prints the summary.
fn interrupt(pid: u32) -> anyhow::Result<()> {
    let pid = Pid::from_raw(i32::try_from(pid)?);
    kill(pid, Signal::SIGINT).context("cannot signal droptrace")
}
