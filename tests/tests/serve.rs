//! `droptrace serve`: a real Prometheus scrapes it while drops happen in namespaces, and
//! its per-rule counts must equal the kernel's rule counters; series follow rulesets and
//! namespaces; bad input is one line and exit 2.
//!
//! Each test runs its own `serve` on a port the kernel picks (`--listen 127.0.0.1:0`) and
//! looks only at its own namespace's series, so tests run in parallel.

use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use droptrace_tests::{Netns, droptrace_bin, droptrace_output};
use serde_json::Value;

/// A running `droptrace serve`, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    stdout: mpsc::Receiver<String>,
}

impl Server {
    fn start(args: &[&str]) -> anyhow::Result<Server> {
        let mut child = Command::new(droptrace_bin())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start droptrace serve")?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let _ = tx.send(line);
            }
        });
        let stdout = child.stdout.take().expect("piped");
        let (out_tx, out_rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = out_tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(90);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let line = rx.recv_timeout(left).context("serve did not start")?;
            if let Some(rest) = line.strip_prefix("droptrace: serving http://") {
                let addr = rest.split('/').next().unwrap_or_default().parse()?;
                return Ok(Server {
                    child,
                    addr,
                    stdout: out_rx,
                });
            }
        }
        bail!("serve did not start")
    }

    fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(&format!("http://{}{path}", self.addr))
    }

    /// The samples of `metric` whose labels include `netns="NAME"`.
    fn samples(&self, metric: &str, netns: &str) -> anyhow::Result<Vec<String>> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        let label = format!("netns=\"{netns}\"");
        Ok(body
            .lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&label))
            .map(str::to_string)
            .collect())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent.get(url).call()?;
    let status = resp.status().as_u16();
    Ok((status, resp.body_mut().read_to_string()?))
}

/// The value of a sample line (`name{labels} value`).
fn value(sample: &str) -> f64 {
    sample
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Packet and byte counters of the filter/OUTPUT rules, in order.
fn output_counters(ns: &Netns) -> anyhow::Result<Vec<(u64, u64)>> {
    let out = ns.exec(&["iptables", "-L", "OUTPUT", "-v", "-n", "-x"])?;
    Ok(out
        .lines()
        .skip(2)
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            Some((cols.next()?.parse().ok()?, cols.next()?.parse().ok()?))
        })
        .collect())
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> anyhow::Result<bool>) {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(true) => return,
            Ok(false) | Err(_) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(250))
            }
            Ok(false) => panic!("timed out waiting for {what}"),
            Err(e) => panic!("timed out waiting for {what}: {e:#}"),
        }
    }
}

/// The alert rules the README documents (deploy/prometheus/droptrace-alerts.yml).
fn alert_rules() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/droptrace-alerts.yml")
}

/// A Prometheus server (Debian's package) on a free local port, scraping `target` every
/// second; stopped and its data removed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: SocketAddr) -> anyhow::Result<Prometheus> {
        let dir = std::env::temp_dir().join(format!(
            "droptrace-prometheus-{}-{}",
            std::process::id(),
            target.port()
        ));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  \
                 evaluation_interval: 1s\n\
                 rule_files: ['{}']\n\
                 scrape_configs:\n  - job_name: droptrace\n    static_configs:\n      \
                 - targets: ['{target}']\n",
                alert_rules().display()
            ),
        )?;
        // A free port: bound, then released for Prometheus.
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start prometheus (cargo xtask setup installs it)")?;
        let p = Prometheus { child, addr, dir };
        wait_for("prometheus to be ready", Duration::from_secs(60), || {
            Ok(http_get(&format!("http://{}/-/ready", p.addr))?.0 == 200)
        });
        Ok(p)
    }

    /// The alerts firing now.
    fn firing(&self) -> anyhow::Result<Vec<Value>> {
        let (_, body) = http_get(&format!("http://{}/api/v1/alerts", self.addr))?;
        let v: Value = serde_json::from_str(&body)?;
        Ok(v["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["state"] == "firing")
            .collect())
    }

    /// An instant PromQL query's result vector.
    fn query(&self, promql: &str) -> anyhow::Result<Vec<Value>> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let body = agent
            .get(&format!("http://{}/api/v1/query", self.addr))
            .query("query", promql)
            .call()?
            .body_mut()
            .read_to_string()?;
        let v: Value = serde_json::from_str(&body)?;
        if v["status"] != "success" {
            bail!("query {promql} failed: {body}");
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn prometheus_sees_each_rules_drops_as_its_counters_count_them() -> anyhow::Result<()> {
    let ns = Netns::new("prom")?;
    // The incident's rules (shared/incident-iptables-egress.txt), two of them dropping.
    ns.exec(&[
        "iptables", "-A", "OUTPUT", "-o", "lo", "-p", "tcp", "--dport", "22", "-j", "ACCEPT",
    ])?;
    ns.exec(&[
        "iptables",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "--dport",
        "1024:65535",
        "-j",
        "DROP",
    ])?;
    ns.exec(&[
        "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "5044", "-j", "DROP",
    ])?;
    let before = output_counters(&ns)?;
    let server = Server::start(&["--netns", &ns.name, "--log-drops"])?;
    let prom = Prometheus::start(server.addr)?;

    for _ in 0..3 {
        ns.tcp_connect("127.0.0.1:8443".parse()?, Duration::from_millis(300))?;
    }
    ns.udp_send("127.0.0.1:5044".parse()?, 25)?;

    let after = output_counters(&ns)?;
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a.0 - b.0).collect();
    let delta_bytes: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a.1 - b.1).collect();
    assert!(delta[1] >= 3 && delta[2] == 25, "rule counters: {delta:?}");
    let sum_by_rule = |metric: &str| {
        format!(
            "sum by (rule, rule_text) ({metric}{{netns=\"{}\",chain=\"OUTPUT\"}})",
            ns.name
        )
    };
    let query = sum_by_rule("droptrace_drops_total");
    // Every counted drop must reach Prometheus: serve's counters start at zero with the
    // capture, so their value is the increase since then, like the rule counters' delta.
    let mut seen = Vec::new();
    wait_for(
        "Prometheus to have every drop",
        Duration::from_secs(30),
        || {
            seen = prom.query(&query)?;
            let by_rule = |n: &str| {
                seen.iter()
                    .find(|s| s["metric"]["rule"] == n)
                    .and_then(|s| s["value"][1].as_str()?.parse::<u64>().ok())
            };
            Ok(by_rule("2") == Some(delta[1]) && by_rule("3") == Some(delta[2]))
        },
    );
    assert_eq!(seen.len(), 2, "no other rule dropped anything: {seen:?}");
    // Bytes as the rules' byte counters count them.
    let bytes = prom.query(&sum_by_rule("droptrace_dropped_bytes_total"))?;
    let bytes_of = |n: &str| {
        bytes
            .iter()
            .find(|s| s["metric"]["rule"] == n)
            .and_then(|s| s["value"][1].as_str()?.parse::<u64>().ok())
    };
    assert_eq!(
        (bytes_of("2"), bytes_of("3")),
        (Some(delta_bytes[1]), Some(delta_bytes[2])),
        "{bytes:?}"
    );
    let tcp = seen.iter().find(|s| s["metric"]["rule"] == "2").unwrap();
    assert_eq!(
        tcp["metric"]["rule_text"],
        "-A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP"
    );
    // The README's alert fires for the rule that started dropping, naming it.
    let mut alert = None;
    wait_for("the alert to fire", Duration::from_secs(30), || {
        alert = prom.firing()?.into_iter().find(|a| {
            a["labels"]["alertname"] == "FirewallRuleStartedDropping"
                && a["labels"]["netns"] == ns.name.as_str()
                && a["labels"]["rule"] == "2"
        });
        Ok(alert.is_some())
    });
    let summary = alert.unwrap()["annotations"]["summary"].clone();
    assert!(
        summary
            .as_str()
            .unwrap()
            .contains("filter/OUTPUT rule 2 started dropping"),
        "{summary}"
    );
    // Prometheus sees the capture's health too.
    let lost = prom.query("droptrace_records_lost_total")?;
    assert_eq!(lost[0]["value"][1], "0");
    let build = prom.query("droptrace_build_info")?;
    assert_eq!(build.len(), 1, "{build:?}");

    // The recent drops, with watch --json's fields.
    let (status, body) = server.get("/drops?since=5m")?;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body)?;
    let drops = v["drops"].as_array().unwrap();
    let udp: u64 = drops
        .iter()
        .filter(|d| d["dport"] == 5044)
        .map(|d| d["count"].as_u64().unwrap())
        .sum();
    assert_eq!(udp, 25, "{body}");
    assert!(
        drops
            .iter()
            .all(|d| d["type"] == "drop" && d["attribution"].is_string())
    );
    let (status, body) = server.get("/drops?since=soon")?;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.get("/healthz")?;
    assert_eq!(status, 200, "{body}");

    // --log-drops: the same drops as JSON lines on stdout.
    let mut logged = 0;
    while let Ok(line) = server.stdout.recv_timeout(Duration::from_millis(500)) {
        let d: Value = serde_json::from_str(&line)?;
        logged += d["count"].as_u64().unwrap_or(0);
    }
    assert_eq!(logged, delta[1] + delta[2]);
    Ok(())
}

#[test]
fn a_ruleset_change_starts_a_new_series_and_stops_the_old() -> anyhow::Result<()> {
    let ns = Netns::new("change")?;
    ns.exec(&[
        "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "5044", "-j", "DROP",
    ])?;
    let server = Server::start(&["--netns", &ns.name])?;
    let text = "-A OUTPUT -p udp -m udp --dport 5044 -j DROP";
    let series = |rule: &str| -> anyhow::Result<Option<f64>> {
        Ok(server
            .samples("droptrace_drops_total", &ns.name)?
            .iter()
            .find(|s| s.contains(&format!("rule=\"{rule}\"")) && s.contains(text))
            .map(|s| value(s)))
    };
    ns.udp_send("127.0.0.1:5044".parse()?, 5)?;
    wait_for("rule 1's series", Duration::from_secs(15), || {
        Ok(series("1")? == Some(5.0))
    });
    // A rule inserted above: the same rule is now number 2.
    ns.exec(&[
        "iptables", "-I", "OUTPUT", "1", "-p", "udp", "--dport", "9999", "-j", "DROP",
    ])?;
    thread::sleep(Duration::from_millis(1500));
    ns.udp_send("127.0.0.1:5044".parse()?, 7)?;
    wait_for("rule 2's series", Duration::from_secs(15), || {
        Ok(series("2")? == Some(7.0))
    });
    assert_eq!(
        series("1")?,
        Some(5.0),
        "the old series stopped where it was"
    );
    assert_eq!(
        output_counters(&ns)?[1].0,
        12,
        "the rule's own counter has both"
    );
    Ok(())
}

/// The inode of a namespace file.
fn inode(ns: &Netns) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(ns.path())?.ino())
}

/// A new namespace with the inode `wanted`, which a deleted namespace had: the kernel gives
/// the lowest free number to the next namespace made (once the old one is cleaned up, in
/// a work queue), so namespaces are made, and held, until one has it. `None` when another
/// process took it first.
fn namespace_reusing(wanted: u64) -> anyhow::Result<Option<Netns>> {
    let mut held = Vec::new();
    for _ in 0..40 {
        let ns = Netns::new("reuse")?;
        let got = inode(&ns)?;
        if got == wanted {
            return Ok(Some(ns));
        }
        if got > wanted {
            // Held, so the next one is given a lower free number.
            held.push(ns);
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(None)
}

#[test]
fn the_series_of_a_deleted_namespace_go_after_the_ttl() -> anyhow::Result<()> {
    // All namespaces: a namespace that is gone can no longer be named on the command line.
    let server = Server::start(&["--series-ttl", "2s"])?;
    // Namespaces come and go, and the kernel hands a deleted namespace's inode to the next
    // one: the old series must still go, and the new namespace's drops be its own.
    for attempt in 1..=3 {
        let ns = Netns::new("ttl")?;
        ns.exec(&[
            "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "5044", "-j", "DROP",
        ])?;
        let name = ns.name.clone();
        ns.udp_send("127.0.0.1:5044".parse()?, 3)?;
        wait_for("the namespace's series", Duration::from_secs(15), || {
            Ok(!server.samples("droptrace_drops_total", &name)?.is_empty())
        });
        assert!(
            !server
                .samples("droptrace_destination_drops_total", &name)?
                .is_empty()
        );
        let old_inode = inode(&ns)?;
        drop(ns);
        let Some(next) = namespace_reusing(old_inode)? else {
            eprintln!("attempt {attempt}: another process took inode {old_inode}");
            continue;
        };
        next.exec(&[
            "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "5045", "-j", "DROP",
        ])?;
        next.udp_send("127.0.0.1:5045".parse()?, 2)?;
        wait_for(
            "the old series to go and the new namespace's to come",
            Duration::from_secs(20),
            || {
                let new = server.samples("droptrace_drops_total", &next.name)?;
                Ok(server.samples("droptrace_drops_total", &name)?.is_empty()
                    && server
                        .samples("droptrace_destination_drops_total", &name)?
                        .is_empty()
                    && new
                        .iter()
                        .any(|s| s.contains("--dport 5045") && value(s) == 2.0))
            },
        );
        // The new namespace's series is its own, never the old rule's.
        let new = server.samples("droptrace_drops_total", &next.name)?;
        assert!(new.iter().all(|s| !s.contains("5044")), "{new:?}");
        return Ok(());
    }
    bail!("no namespace got a deleted namespace's inode in 3 attempts")
}

#[test]
fn a_hundred_thousand_flows_keep_the_destination_series_at_the_cap() -> anyhow::Result<()> {
    let ns = Netns::new("scan")?;
    ns.exec(&["iptables", "-A", "OUTPUT", "-p", "udp", "-j", "DROP"])?;
    let server = Server::start(&["--netns", &ns.name, "--max-destinations", "50"])?;
    let mut sent = 0;
    for ip in ["127.0.0.2", "127.0.0.3"] {
        sent += ns.udp_spray(ip.parse()?, 1..=50_000)?;
    }
    assert_eq!(sent, 0, "every datagram is dropped in OUTPUT (EPERM)");
    let counters = output_counters(&ns)?;
    assert_eq!(counters[0].0, 100_000);
    let mut dests = Vec::new();
    let mut seen = 0.0;
    wait_for("every drop in the metrics", Duration::from_secs(60), || {
        dests = server.samples("droptrace_destination_drops_total", &ns.name)?;
        let rules = server.samples("droptrace_drops_total", &ns.name)?;
        seen = rules.iter().map(|s| value(s)).sum::<f64>();
        if seen > 100_000.0 {
            anyhow::bail!("the rule series sum to {seen}, more than the 100,000 drops");
        }
        Ok(seen == 100_000.0)
    });
    assert_eq!(dests.len(), 50, "the cap: {} series", dests.len());
    let (_, body) = server.get("/metrics")?;
    let other: f64 = body
        .lines()
        .filter(|l| {
            l.starts_with("droptrace_destination_drops_total{") && l.contains("dst=\"other\"")
        })
        .map(value)
        .sum();
    let listed: f64 = dests.iter().map(|s| value(s)).sum();
    assert_eq!(listed + other, 100_000.0);
    // Bounded memory: the flow table's worth of flows, whatever the series.
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    eprintln!("serve RSS after 100,000 flows: {} MB", rss_kb / 1024);
    assert!(rss_kb < 512 * 1024, "RSS {} MB", rss_kb / 1024);
    Ok(())
}

/// More flows than a deliberately small flow table (`--flow-table-size`, hidden, for tests),
/// sent while `serve` is stopped: the rule's series still adds up to its counter (the
/// kernel's aggregates give what no line carried), the port series to what was sent to
/// each port, and /healthz says serve is degraded while it lasts.
#[test]
fn series_stay_exact_beyond_the_flow_table_and_healthz_says_so() -> anyhow::Result<()> {
    let ns = Netns::new("beyond")?;
    ns.exec(&["iptables", "-A", "OUTPUT", "-p", "udp", "-j", "DROP"])?;
    let server = Server::start(&[
        "--netns",
        &ns.name,
        "--flow-table-size",
        "256",
        "--max-ports",
        "5000",
    ])?;
    let (status, body) = server.get("/healthz")?;
    assert_eq!(status, 200);
    assert!(body.contains(r#""status":"ok""#), "{body}");
    let pid = nix::unistd::Pid::from_raw(server.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
    // 3,000 flows of one datagram and one of 200: twelve times the flow table.
    let sent = ns.udp_spray("127.0.0.2".parse()?, 20_000..=22_999);
    let sent_one = ns.udp_send("127.0.0.2:5353".parse()?, 200);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)?;
    assert_eq!(
        (sent?, sent_one?),
        (0, 0),
        "every datagram is dropped (EPERM)"
    );
    let counter = output_counters(&ns)?[0].0;
    assert_eq!(counter, 3200);
    let mut degraded = None;
    let mut rules = Vec::new();
    wait_for(
        "the rule's series to reach its counter",
        Duration::from_secs(30),
        || {
            let (_, health) = server.get("/healthz")?;
            if health.contains(r#""status":"degraded""#) {
                degraded = Some(health);
            }
            rules = server.samples("droptrace_drops_total", &ns.name)?;
            let sum = rules.iter().map(|s| value(s)).sum::<f64>();
            if sum != counter as f64 {
                // Said at the timeout: how far from the counter, and which way.
                anyhow::bail!("the series sum to {sum}, the rule's counter is {counter}");
            }
            Ok(true)
        },
    );
    // One rule, named in every series (lines exact, aggregates inferred).
    assert!(!rules.is_empty());
    for r in &rules {
        assert!(r.contains(r#"chain="OUTPUT",rule="1""#), "{r}");
    }
    let health = degraded.expect("/healthz said degraded while flows were given up");
    let health: Value = serde_json::from_str(&health)?;
    assert!(
        health["beyond_flow_table_drops"].as_u64().unwrap() > 0,
        "{health}"
    );
    assert!(
        !health["reasons"].as_array().unwrap().is_empty(),
        "{health}"
    );
    // By port: what was sent to each.
    let ports = server.samples("droptrace_port_drops_total", &ns.name)?;
    assert_eq!(ports.len(), 3001, "port series");
    for p in &ports {
        let expect = if p.contains(r#"port="5353""#) {
            200.0
        } else {
            1.0
        };
        assert_eq!(value(p), expect, "{p}");
    }
    let (_, body) = server.get("/metrics")?;
    assert!(
        body.lines()
            .any(|l| l.starts_with("droptrace_beyond_flow_table_drops_total ") && value(l) > 0.0),
        "{body}"
    );
    Ok(())
}

#[test]
fn bad_input_is_one_line_and_exit_2() -> anyhow::Result<()> {
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    for (args, expect) in [
        (vec!["serve", "--listen", addr.as_str()], "cannot listen on"),
        (vec!["serve", "--listen", "localhost"], "--listen"),
        (vec!["serve", "--labels", "process,pod"], "pod"),
        (
            vec!["serve", "--max-destinations", "many"],
            "--max-destinations",
        ),
    ] {
        let (code, _, stderr) = droptrace_output(&args)?;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    Ok(())
}
