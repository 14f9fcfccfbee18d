//! Connectivity probes: droptrace sends the traffic itself (`verify --probe`), from the
//! namespace being checked, and reports per target whether it got through.
//!
//! Each probe binds its socket before sending, so its source port is known and the drop
//! records of exactly that flow can be matched to it: "dropped" is only said when the
//! kernel reported a netfilter drop of the probe's own packet.

use std::{
    fmt, io,
    net::{IpAddr, SocketAddr, ToSocketAddrs as _, UdpSocket},
    path::Path,
    str::FromStr,
    time::Duration,
};

use serde::Serialize;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeProto {
    Tcp,
    Udp,
}

/// A target: `tcp://HOST:PORT` or `udp://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub proto: ProbeProto,
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.proto {
            ProbeProto::Tcp => "tcp",
            ProbeProto::Udp => "udp",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid probe target {0:?}: expected tcp://HOST:PORT or udp://HOST:PORT")]
pub struct TargetError(String);

impl FromStr for Target {
    type Err = TargetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || TargetError(s.to_string());
        let (scheme, rest) = s.trim().split_once("://").ok_or_else(err)?;
        let proto = match scheme.to_ascii_lowercase().as_str() {
            "tcp" => ProbeProto::Tcp,
            "udp" => ProbeProto::Udp,
            _ => return Err(err()),
        };
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (h, p) = v6.split_once("]:").ok_or_else(err)?;
                (h, p)
            }
            None => rest.rsplit_once(':').ok_or_else(err)?,
        };
        let port: u16 = port.parse().map_err(|_| err())?;
        if host.is_empty() || port == 0 || host.contains(['/', ' ']) {
            return Err(err());
        }
        Ok(Target {
            proto,
            host: host.to_string(),
            port,
        })
    }
}

/// Reads a probe file: one target per line; blank lines and `#` comments are skipped.
pub fn parse_probe_file(text: &str) -> Result<Vec<Target>, String> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i, l.split('#').next().unwrap_or("").trim()))
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| {
            l.parse()
                .map_err(|e: TargetError| format!("line {}: {e}", i + 1))
        })
        .collect()
}

/// What happened to a probe's packet, before drops are matched to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result", content = "detail")]
pub enum Outcome {
    /// TCP connected.
    Connected,
    /// UDP datagram left the host and nothing came back within the timeout: not dropped
    /// locally, delivery unknown (UDP cannot prove it).
    Sent,
    /// A UDP reply came back.
    Replied,
    Refused,
    TimedOut,
    /// The kernel refused the send (EPERM: dropped by a local firewall rule).
    NotPermitted,
    Failed(String),
}

/// A probe that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub target: Target,
    /// The probe's own flow, for matching drop records.
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub outcome: Outcome,
}

/// Pause between two attempts at one target: enough for a dropped SYN's flow to be told
/// apart from the next attempt's, short beside any probe timeout.
const BETWEEN_ATTEMPTS: Duration = Duration::from_millis(100);

/// Runs every probe `attempts` times (each from a fresh socket, so a fresh source port and
/// its own flow) from the namespace at `netns` (None: our own), targets in parallel, the
/// attempts at one target one after the other. Attempts come back grouped by target, in the
/// order given.
pub fn run_all(
    targets: &[Target],
    netns: Option<&Path>,
    timeout: Duration,
    attempts: u32,
) -> io::Result<Vec<Attempt>> {
    let targets = targets.to_vec();
    crate::tools::on_thread_in(netns, move || {
        // Sockets take the namespace of the thread that creates them: spawn the probes
        // from here so they inherit it.
        let n = attempts.max(1);
        let handles: Vec<_> = targets
            .into_iter()
            .map(|t| {
                let target = t.clone();
                let handle = std::thread::spawn(move || {
                    (0..n)
                        .map(|i| {
                            if i > 0 {
                                std::thread::sleep(BETWEEN_ATTEMPTS);
                            }
                            probe(t.clone(), timeout)
                        })
                        .collect::<Vec<Attempt>>()
                });
                (target, handle)
            })
            .collect();
        // Every attempt is reported: one whose thread died is a failed attempt, never a
        // missing one that lets the others pass.
        Ok(handles
            .into_iter()
            .flat_map(|(target, h)| joined(target, n, h.join()))
            .collect())
    })
}

/// A probe thread's attempts; a panic makes every attempt of its target a failed one.
fn joined(target: Target, n: u32, result: std::thread::Result<Vec<Attempt>>) -> Vec<Attempt> {
    result.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".into());
        (0..n)
            .map(|_| Attempt {
                target: target.clone(),
                local: None,
                remote: None,
                outcome: Outcome::Failed(format!("the probe crashed: {why}")),
            })
            .collect()
    })
}

fn probe(target: Target, timeout: Duration) -> Attempt {
    let remote = match resolve(&target) {
        Ok(r) => r,
        Err(e) => {
            return Attempt {
                target,
                local: None,
                remote: None,
                outcome: Outcome::Failed(e.to_string()),
            };
        }
    };
    let (local, outcome) = match target.proto {
        ProbeProto::Tcp => tcp(remote, timeout),
        ProbeProto::Udp => udp(remote, timeout),
    };
    Attempt {
        target,
        local,
        remote: Some(remote),
        outcome,
    }
}

/// Resolves every target, so a name that does not resolve is an error before the capture
/// starts (verify cannot tell anything about it) rather than a failed probe.
pub fn resolve_all(targets: &[Target]) -> Result<(), String> {
    for t in targets {
        resolve(t).map_err(|e| format!("cannot resolve probe target {t}: {e}"))?;
    }
    Ok(())
}

fn resolve(t: &Target) -> io::Result<SocketAddr> {
    if let Ok(ip) = t.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, t.port));
    }
    (t.host.as_str(), t.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
}

fn classify(e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Outcome::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Outcome::TimedOut,
        io::ErrorKind::PermissionDenied => Outcome::NotPermitted,
        _ if e.raw_os_error() == Some(libc::EPERM) => Outcome::NotPermitted,
        _ => Outcome::Failed(e.to_string()),
    }
}

fn tcp(remote: SocketAddr, timeout: Duration) -> (Option<SocketAddr>, Outcome) {
    let sock = match Socket::new(
        Domain::for_address(remote),
        Type::STREAM,
        Some(Protocol::TCP),
    ) {
        Ok(s) => s,
        Err(e) => return (None, classify(&e)),
    };
    let any: SocketAddr = if remote.is_ipv6() {
        "[::]:0".parse().unwrap()
    } else {
        "0.0.0.0:0".parse().unwrap()
    };
    if let Err(e) = sock.bind(&SockAddr::from(any)) {
        return (None, classify(&e));
    }
    let local = sock.local_addr().ok().and_then(|a| a.as_socket());
    let outcome = match sock.connect_timeout(&SockAddr::from(remote), timeout) {
        Ok(()) => Outcome::Connected,
        Err(e) => classify(&e),
    };
    (local, outcome)
}

/// Sends one datagram on a connected socket and waits for what comes back: a reply, an
/// ICMP port unreachable (the kernel reports it on a connected socket as ECONNREFUSED), or
/// nothing.
fn udp(remote: SocketAddr, timeout: Duration) -> (Option<SocketAddr>, Outcome) {
    let any = if remote.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let sock = match UdpSocket::bind(any) {
        Ok(s) => s,
        Err(e) => return (None, classify(&e)),
    };
    let local = sock.local_addr().ok();
    if let Err(e) = sock.connect(remote) {
        return (local, classify(&e));
    }
    if let Err(e) = sock.send(b"droptrace probe") {
        return (local, classify(&e));
    }
    if let Err(e) = sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1)))) {
        return (local, Outcome::Failed(e.to_string()));
    }
    let mut buf = [0u8; 512];
    let outcome = match sock.recv(&mut buf) {
        Ok(_) => Outcome::Replied,
        Err(e) => match classify(&e) {
            Outcome::TimedOut => Outcome::Sent,
            other => other,
        },
    };
    (local, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_that_panics_is_a_failed_probe() {
        let t: Target = "tcp://203.0.113.10:8443".parse().unwrap();
        let crashed = std::thread::spawn(|| -> Vec<Attempt> { panic!("boom") }).join();
        let attempts = joined(t.clone(), 3, crashed);
        assert_eq!(attempts.len(), 3, "every attempt is reported");
        for a in attempts {
            assert_eq!(a.target, t);
            assert_eq!(a.outcome, Outcome::Failed("the probe crashed: boom".into()));
        }
    }

    #[test]
    fn targets_parse() {
        let t: Target = "tcp://203.0.113.10:8443".parse().unwrap();
        assert_eq!(
            (t.proto, t.host.as_str(), t.port),
            (ProbeProto::Tcp, "203.0.113.10", 8443)
        );
        let t: Target = "udp://[2001:db8::10]:53".parse().unwrap();
        assert_eq!(
            (t.proto, t.host.as_str(), t.port),
            (ProbeProto::Udp, "2001:db8::10", 53)
        );
        assert_eq!(t.to_string(), "udp://[2001:db8::10]:53");
        let t: Target = "TCP://gateway.example:443".parse().unwrap();
        assert_eq!(t.host, "gateway.example");
        for bad in [
            "203.0.113.10:8443",
            "http://h:80",
            "tcp://h",
            "tcp://h:0",
            "tcp://h:99999",
            "tcp://:80",
            "tcp://[::1:80",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn probe_files_skip_comments_and_name_bad_lines() {
        let ok = parse_probe_file(
            "# inventory\ntcp://203.0.113.10:8443  # payments\n\nudp://203.0.113.10:5044\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        let err = parse_probe_file("tcp://a:1\nbogus\n").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
    }

    #[test]
    fn refused_connection_on_loopback() {
        // Bind then close a listener to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let a = run_all(
            &[format!("tcp://127.0.0.1:{port}").parse().unwrap()],
            None,
            Duration::from_secs(2),
            2,
        )
        .unwrap();
        assert_eq!(a.len(), 2, "one attempt each time");
        assert_eq!(a[0].outcome, Outcome::Refused);
        assert!(a[0].local.is_some());
        assert_ne!(
            a[0].local, a[1].local,
            "each attempt from its own source port"
        );
    }
}
