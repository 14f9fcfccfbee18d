//! `droptrace verify`: exit codes a script can trust, and probes, on real rules.

use droptrace_tests::{Topology, droptrace_output};
use serde_json::Value;

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

fn harden(t: &Topology) {
    for rule in HARDENING {
        let mut args = vec!["iptables"];
        args.extend_from_slice(rule);
        t.client.exec(&args).unwrap();
    }
}

/// Each probe's result, in order.
fn results(report: &Value) -> Vec<&str> {
    report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["result"].as_str().unwrap())
        .collect()
}

fn verify(t: &Topology, extra: &[&str]) -> (i32, Value, String) {
    verify_with_timeout(t, "1s", extra)
}

/// `verify` from the client namespace for 2 s, with this `--probe-timeout`, as JSON.
fn verify_with_timeout(t: &Topology, timeout: &str, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec![
        "verify",
        "--netns",
        &t.client.name,
        "--duration",
        "2s",
        "--probe-timeout",
        timeout,
        "--json",
    ];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = droptrace_output(&args).unwrap();
    let report: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (code, report, stderr)
}

#[test]
fn verify_fails_before_the_fix_naming_the_drop_and_passes_after_it() {
    let t = Topology::new().unwrap();
    for port in [8443, 443] {
        t.gateway.tcp_listen(t.gateway_addr(port)).unwrap();
    }
    harden(&t);
    let probes = [
        "--probe",
        "tcp://203.0.113.10:8443",
        "--probe",
        "tcp://203.0.113.10:443",
    ];
    let (code, report, stderr) = verify(&t, &probes);
    assert_eq!(code, 1, "{report} {stderr}");
    assert_eq!(report["verdict"], "fail");
    assert_eq!(report["probes"][0]["result"], "dropped", "{report}");
    assert!(
        report["probes"][0]["dropped_by"]
            .as_str()
            .unwrap()
            .contains("OUTPUT")
    );
    assert_eq!(report["probes"][1]["result"], "reachable");
    assert_eq!(report["drops"][0]["dst"], "203.0.113.10:8443");

    // The fix from the incident: whitelist the service before the DROP rule.
    t.client
        .exec(&[
            "iptables", "-I", "OUTPUT", "3", "-p", "tcp", "--dport", "8443", "-j", "ACCEPT",
        ])
        .unwrap();
    let (code, report, stderr) = verify(&t, &probes);
    assert_eq!(code, 0, "{report} {stderr}");
    assert_eq!(report["verdict"], "pass");
    assert_eq!(report["total"], 0);
    assert!(
        report["probes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["result"] == "reachable")
    );
}

#[test]
fn probes_tell_reachable_dropped_and_refused_apart() {
    let t = Topology::new().unwrap();
    t.gateway.tcp_listen(t.gateway_addr(443)).unwrap();
    t.client
        .exec(&[
            "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "5044", "-j", "DROP",
        ])
        .unwrap();
    let dir = std::env::temp_dir().join(format!("dt-probes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("inventory.txt");
    // Nothing listens on 9999: refused. 5044/udp is dropped locally.
    std::fs::write(&file, "# external services\ntcp://203.0.113.10:443\nudp://203.0.113.10:5044\ntcp://203.0.113.10:9999\n").unwrap();
    let (code, report, stderr) = verify(&t, &["--probe-file", file.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, 1, "{report} {stderr}");
    let results = results(&report);
    assert_eq!(results, ["reachable", "dropped", "refused"], "{report}");
}

/// The user's filters narrow the report, never the probes: a probe to 7000 dropped by a
/// local rule is "dropped" even with `--dport 22`.
#[test]
fn probe_drops_are_watched_whatever_the_filters() {
    let t = Topology::new().unwrap();
    t.client
        .exec(&[
            "iptables", "-A", "OUTPUT", "-p", "tcp", "--dport", "7000", "-j", "DROP",
        ])
        .unwrap();
    let (code, report, stderr) =
        verify(&t, &["--dport", "22", "--probe", "tcp://203.0.113.10:7000"]);
    assert_eq!(code, 1, "{report} {stderr}");
    assert_eq!(report["probes"][0]["result"], "dropped", "{report}");
    assert!(report["probes"][0]["drops"].as_u64().unwrap() >= 1);
    assert_eq!(report["total"], report["probes"][0]["drops"], "{report}");
    assert_eq!(
        report["probes_from"],
        format!("namespace {}", t.client.name),
        "{report}"
    );
    assert_eq!(report["drops_from"], format!("namespace {}", t.client.name));
}

/// UDP: what came back is said, never "reachable" for silence.
#[test]
fn udp_probes_say_what_came_back() {
    let t = Topology::new().unwrap();
    // An echo service on 5300; nothing on 5301, so the gateway answers port unreachable.
    t.gateway.udp_echo(t.gateway_addr(5300)).unwrap();
    // 5302 is silently dropped by the gateway: nothing comes back.
    t.gateway
        .exec(&[
            "iptables", "-A", "INPUT", "-p", "udp", "--dport", "5302", "-j", "DROP",
        ])
        .unwrap();
    let (code, report, stderr) = verify(
        &t,
        &[
            "--probe",
            "udp://203.0.113.10:5300",
            "--probe",
            "udp://203.0.113.10:5301",
            "--probe",
            "udp://203.0.113.10:5302",
        ],
    );
    assert_eq!(code, 1, "{report} {stderr}");
    let results = results(&report);
    assert_eq!(results, ["reachable", "refused", "sent"], "{report}");
}

/// A service dropped one time in two (`-m statistic --mode nth`, deterministic) is
/// INTERMITTENT with several attempts, and passes once the rule is gone; the kernel's counter
/// of the rule agrees with the attempts reported dropped.
#[test]
fn intermittent_drops_are_caught_by_several_attempts() {
    let t = Topology::new().unwrap();
    t.gateway.udp_echo(t.gateway_addr(5400)).unwrap();
    t.client
        .exec(&[
            "iptables",
            "-A",
            "OUTPUT",
            "-p",
            "udp",
            "--dport",
            "5400",
            "-m",
            "statistic",
            "--mode",
            "nth",
            "--every",
            "2",
            "--packet",
            "0",
            "-j",
            "DROP",
        ])
        .unwrap();
    let probe = ["--probe", "udp://203.0.113.10:5400", "--attempts", "4"];
    let (code, report, stderr) = verify(&t, &probe);
    assert_eq!(code, 1, "{report} {stderr}");
    let p = &report["probes"][0];
    assert_eq!(p["result"], "intermittent", "{report}");
    assert_eq!(p["attempts"], 4);
    assert_eq!(p["dropped_attempts"], 2, "{report}");
    let counter = t
        .client
        .exec(&["iptables", "-L", "OUTPUT", "-v", "-x", "-n"])
        .unwrap();
    let dropped: u64 = counter
        .lines()
        .find(|l| l.contains("dpt:5400"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("the rule's counter");
    assert_eq!(dropped, 2, "{counter}");
    // One attempt may be lucky: that is what --attempts is for.
    t.client.exec(&["iptables", "-D", "OUTPUT", "1"]).unwrap();
    let (code, report, stderr) = verify(&t, &probe);
    assert_eq!(code, 0, "{report} {stderr}");
    assert_eq!(report["probes"][0]["result"], "reachable", "{report}");
}

/// Silence is not evidence: a window with a DROP rule in place, no probe and no matching
/// traffic is INCONCLUSIVE (exit 2) unless the user asks for a passive window.
#[test]
fn a_quiet_window_is_inconclusive_unless_passive_and_bad_input_is_an_error() {
    let t = Topology::new().unwrap();
    harden(&t);
    let (code, report, _) = verify(&t, &[]);
    assert_eq!(code, 2, "{report}");
    assert_eq!(report["verdict"], "inconclusive", "{report}");
    let (code, report, _) = verify(&t, &["--passive"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["verdict"], "pass");
    assert!(
        report["reason"].as_str().unwrap().starts_with("passive"),
        "{report}"
    );
    let empty = std::env::temp_dir().join(format!("dt-empty-probes-{}", std::process::id()));
    std::fs::write(&empty, "# nothing to probe\n\n").unwrap();
    let empty_path = empty.display().to_string();
    for bad in [
        // An empty probe file proves nothing.
        vec![
            "verify",
            "--netns",
            &t.client.name,
            "--probe-file",
            &empty_path,
        ],
        vec![
            "verify",
            "--netns",
            &t.client.name,
            "--probe-file",
            "/dev/null",
        ],
        vec!["verify", "--probe", "8443"],
        vec!["verify", "--netns", "dt-no-such-ns"],
        vec!["verify", "--probe-file", "/nonexistent/inventory.txt"],
        // Probes without --netns: where they start must be said.
        vec!["verify", "--probe", "tcp://203.0.113.10:443"],
        // A target that does not resolve cannot be verified.
        vec![
            "verify",
            "--netns",
            &t.client.name,
            "--probe",
            "tcp://no-such-host.invalid:443",
        ],
    ] {
        let (code, stdout, stderr) = droptrace_output(&bad).unwrap();
        assert_eq!(code, 2, "{bad:?}: {stdout} {stderr}");
        assert!(!stderr.contains("panicked"));
    }
    std::fs::remove_file(&empty).unwrap();
}

/// An interrupted window is not a pass: Ctrl-C 2 s into an hour says INTERRUPTED, exit 130.
#[test]
fn an_interrupted_window_is_not_a_pass() {
    let t = Topology::new().unwrap();
    harden(&t);
    let child = std::process::Command::new(droptrace_tests::droptrace_bin())
        .args([
            "verify",
            "--netns",
            &t.client.name,
            "--duration",
            "1h",
            "--passive",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(stdout.starts_with("INTERRUPTED"), "{stdout}");
    assert!(!stdout.contains("PASS"), "{stdout}");
}

/// With probes that answer at once, the window is --duration (not the probes' worst case),
/// and the report says how long it watched and why.
#[test]
fn the_window_ends_once_every_probe_has_its_answer() {
    let t = Topology::new().unwrap();
    harden(&t);
    t.gateway.tcp_listen(t.gateway_addr(443)).unwrap();
    let (code, report, stderr) =
        verify_with_timeout(&t, "5s", &["--probe", "tcp://203.0.113.10:443"]);
    assert_eq!(code, 0, "{report} {stderr}");
    // Three attempts of at most 5.1 s would make a 16.3 s window; they answer in
    // milliseconds, so it ends after --duration (2 s) and a moment.
    assert!(report["duration_s"].as_f64().unwrap() < 10.0, "{report}");
    assert!(
        report["window"]
            .as_str()
            .unwrap()
            .contains("until every probe had its answer"),
        "{report}"
    );
}

#[test]
fn explain_names_the_rule_watch_sees_the_kernel_use() {
    let t = Topology::new().unwrap();
    t.gateway.tcp_listen(t.gateway_addr(8443)).unwrap();
    harden(&t);
    let w = droptrace_tests::Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    assert!(
        !t.client
            .tcp_connect(t.gateway_addr(8443), std::time::Duration::from_millis(1500))
            .unwrap()
    );
    let lines = w.stop().unwrap();
    let seen = droptrace_tests::drops(&lines)[0].clone();
    let (code, stdout, stderr) = droptrace_output(&[
        "explain",
        "--netns",
        &t.client.name,
        "--proto",
        "tcp",
        "--dst",
        "203.0.113.10",
        "--dport",
        "8443",
        "--src",
        "198.51.100.2",
        "--oif",
        seen["ifname"].as_str().unwrap(),
        "--json",
    ])
    .unwrap();
    assert_eq!(code, 1, "would be dropped: {stdout} {stderr}");
    let explained: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(explained["outcome"], "drop");
    for field in ["backend", "table", "chain", "rule", "rule_num", "verdict"] {
        assert_eq!(
            explained[field], seen[field],
            "{field}: explain {explained} vs watch {seen}"
        );
    }
    // And a whitelisted port passes, exit 0.
    let (code, _, _) = droptrace_output(&[
        "explain",
        "--netns",
        &t.client.name,
        "--proto",
        "tcp",
        "--dst",
        "203.0.113.10",
        "--dport",
        "443",
    ])
    .unwrap();
    assert_eq!(code, 0);
}

/// `explain` fills in what the kernel would (the output interface and source address of the
/// namespace's route to the destination) and says so; a rule on `-o` or `-s` is then the one
/// named, as the kernel's counters show it is the one that drops.
#[test]
fn explain_uses_the_route_the_kernel_would() {
    let t = Topology::new().unwrap();
    let route: Value = serde_json::from_str(
        &t.client
            .exec(&["ip", "-j", "route", "get", "203.0.113.10"])
            .unwrap(),
    )
    .unwrap();
    let dev = route[0]["dev"].as_str().unwrap().to_string();
    for rule in [
        vec![
            "-A", "OUTPUT", "-o", &dev, "-p", "tcp", "--dport", "22", "-j", "DROP",
        ],
        vec![
            "-A",
            "OUTPUT",
            "-s",
            "198.51.100.2/32",
            "-p",
            "tcp",
            "--dport",
            "23",
            "-j",
            "REJECT",
        ],
        vec!["-A", "OUTPUT", "-p", "tcp", "--dport", "23", "-j", "DROP"],
    ] {
        let mut args = vec!["iptables"];
        args.extend(rule.iter().copied());
        t.client.exec(&args).unwrap();
    }
    let explain = |port: &str| explain_tcp(&t.client.name, "203.0.113.10", port);
    let (code, v) = explain("22");
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["outcome"], "drop");
    assert_eq!(v["rule_num"], 1);
    assert!(
        v["assumed"]
            .to_string()
            .contains(&format!("output interface {dev}")),
        "{v}"
    );
    let (code, v) = explain("23");
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["outcome"], "reject");
    assert_eq!(v["rule_num"], 2);
    assert!(
        v["assumed"].to_string().contains("source 198.51.100.2"),
        "{v}"
    );

    // The kernel agrees: its counters grow on the rules explain named.
    for port in [22, 23] {
        assert!(
            !t.client
                .tcp_connect(t.gateway_addr(port), std::time::Duration::from_millis(500))
                .unwrap()
        );
    }
    let save = t.client.exec(&["iptables-save", "-c"]).unwrap();
    let counter = |needle: &str| {
        let line = save.lines().find(|l| l.contains(needle)).unwrap();
        let packets: u64 = line[1..line.find(':').unwrap()].parse().unwrap();
        packets
    };
    assert!(counter("--dport 22 -j DROP") >= 1, "{save}");
    assert!(counter("-j REJECT") >= 1, "{save}");
    assert_eq!(counter("--dport 23 -j DROP"), 0, "{save}");
}

/// An output chain that starts with `oif "lo" accept` and accepts what an earlier chain
/// marked (a network plugin's shape): `explain` follows the interface and the mark as the
/// kernel does, and its answers are the kernel's own (the connections made or not).
#[test]
fn explain_follows_interfaces_and_marks_as_the_kernel_does() {
    let t = Topology::new().unwrap();
    t.gateway.tcp_listen(t.gateway_addr(8443)).unwrap();
    t.gateway.tcp_listen(t.gateway_addr(9443)).unwrap();
    for cmd in [
        "add table inet dt",
        "add chain inet dt tag { type filter hook output priority -150; }",
        "add chain inet dt out { type filter hook output priority 0; policy drop; }",
        "add rule inet dt tag tcp dport 8443 meta mark set meta mark or 0x10000",
        "add rule inet dt out oif \"lo\" accept",
        "add rule inet dt out meta mark and 0x10000 == 0x10000 accept",
    ] {
        t.client.exec(&["nft", cmd]).unwrap();
    }
    // The kernel's answers.
    let short = std::time::Duration::from_millis(1500);
    assert!(t.client.tcp_connect(t.gateway_addr(8443), short).unwrap());
    assert!(!t.client.tcp_connect(t.gateway_addr(9443), short).unwrap());
    let explain = |dst: &str, port: &str| explain_tcp(&t.client.name, dst, port);
    let (code, v) = explain("203.0.113.10", "8443");
    assert_eq!((code, v["outcome"].as_str()), (0, Some("accept")), "{v}");
    let (code, v) = explain("203.0.113.10", "9443");
    assert_eq!((code, v["outcome"].as_str()), (1, Some("drop")), "{v}");
    assert_eq!(v["verdict"], "policy", "{v}");
    // Through the loopback: the first rule accepts, nothing is left undecided.
    let (code, v) = explain("127.0.0.1", "9443");
    assert_eq!((code, v["outcome"].as_str()), (0, Some("accept")), "{v}");
}

/// `droptrace explain --json` of a TCP packet to `dst:port` in `netns`: (exit code, answer).
fn explain_tcp(netns: &str, dst: &str, port: &str) -> (i32, Value) {
    let (code, stdout, stderr) = droptrace_output(&[
        "explain", "--netns", netns, "--proto", "tcp", "--dst", dst, "--dport", port, "--json",
    ])
    .unwrap();
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    (code, v)
}
