//! Intermittent failures (`--attempts`): a service whose connections are sometimes
//! accepted by a conntrack rule and sometimes dropped, as in
//! shared/incident-iptables-egress.txt. Arranged deterministically: the client reconnects
//! from source ports that still have a live conntrack entry (`conntrack -I`, as a pooled
//! connection opened before the hardening rules would leave), so those SYNs are
//! ESTABLISHED and pass rule 1, while the others are NEW and hit rule 2. The kernel's
//! counters of both rules are the oracle.

use std::{net::SocketAddr, time::Duration};

use droptrace_tests::{
    CLIENT_V4, GATEWAY_V4, Topology, Watcher, bpftool_json, drops, held_bpf_ids, packets, summary,
};
use serde_json::Value;

/// A live conntrack entry for a connection from `sport` to the gateway's 8443.
fn live_entry(t: &Topology, sport: u16) {
    t.client
        .exec(&[
            "conntrack",
            "-I",
            "-p",
            "tcp",
            "-s",
            CLIENT_V4,
            "-d",
            GATEWAY_V4,
            "--sport",
            &sport.to_string(),
            "--dport",
            "8443",
            "--state",
            "ESTABLISHED",
            "-t",
            "600",
            "-u",
            "SEEN_REPLY,ASSURED",
        ])
        .unwrap();
}

/// Source ports of the client's pooled connections still in conntrack.
const LIVE: [u16; 3] = [41001, 41004, 41007];

/// The incident's half-broken payment gateway: rule 1 accepts ESTABLISHED,RELATED, rule 2
/// drops new connections to 8443, and three source ports have a live entry.
fn intermittent_service() -> Topology {
    let t = Topology::new().unwrap();
    t.gateway.tcp_listen(t.gateway_addr(8443)).unwrap();
    for rule in [
        &[
            "-A",
            "OUTPUT",
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "ACCEPT",
        ][..],
        &["-A", "OUTPUT", "-p", "tcp", "--dport", "8443", "-j", "DROP"][..],
    ] {
        t.client.exec(&[&["iptables"][..], rule].concat()).unwrap();
    }
    for sport in LIVE {
        live_entry(&t, sport);
    }
    t
}

/// Ten connection attempts, from source ports 41001 to 41010; how many connected.
fn connect_ten_times(t: &Topology) -> usize {
    (41001..=41010)
        .filter(|&sport| {
            let from = SocketAddr::new(CLIENT_V4.parse().unwrap(), sport);
            t.client
                .tcp_connect_from(from, t.gateway_addr(8443), Duration::from_millis(300))
                .unwrap()
        })
        .count()
}

#[test]
fn attempts_beside_drops_name_the_rule_that_let_the_others_through() {
    let t = intermittent_service();
    let before = t.client.output_counters();
    let w = Watcher::start(&["watch", "--netns", &t.client.name, "--attempts"]).unwrap();
    let connected = connect_ten_times(&t);
    assert_eq!(
        connected,
        LIVE.len(),
        "only the source ports with a live entry connect"
    );
    let lines = w.stop().unwrap();
    let after = t.client.output_counters();
    let grown: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();

    let end = summary(&lines);
    let services = end["services"]
        .as_array()
        .expect("services with --attempts");
    let s: &Value = services
        .iter()
        .find(|s| s["dst"] == "203.0.113.10:8443")
        .unwrap_or_else(|| panic!("{end}"));
    assert_eq!(s["proto"], "tcp");
    // Attempts counted equal the connections made; each dropped attempt is one flow.
    assert_eq!(s["attempts"], 10, "{s}");
    assert_eq!(s["dropped"], 7, "{s}");
    assert_eq!(s["passed"], 3, "{s}");
    assert_eq!(s["intermittent"], true, "{s}");
    assert_eq!(s["complete"], true, "{s}");
    let by = &s["accepted_by"][0];
    assert_eq!(s["accepted_by"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(by["count"], 3);
    assert_eq!(by["ct_state"], "established", "{s}");
    assert_eq!(by["chain"], "OUTPUT");
    assert_eq!(by["rule_num"], 1, "{s}");
    assert_eq!(by["attribution"], "exact", "{s}");
    // The kernel's counters: the accepting rule passed at least those SYNs (and the rest of
    // those connections), the dropping rule dropped exactly what the drop lines report.
    assert!(grown[0] >= 3, "{grown:?}");
    let d = drops(&lines);
    assert_eq!(packets(&d), grown[1], "{grown:?}");
    assert!(
        d.iter()
            .all(|l| l["rule_num"] == 2 && l["attribution"] == "exact")
    );
}

/// An optional part never takes the rest down: with the program that counts attempts
/// refused (as a kernel whose verifier rejects it would), `watch --attempts` still reports
/// each drop with its rule, says why attempts are missing, and exits 0.
#[test]
fn refused_attempt_programs_leave_drops_reported_with_their_rules() {
    let t = intermittent_service();
    let before = t.client.output_counters();
    let w = Watcher::start_with_env(
        &["watch", "--netns", &t.client.name, "--attempts"],
        &[("DROPTRACE_TEST_REFUSE_PROGRAMS", "attempt_passed")],
        |_| {},
    )
    .unwrap();
    connect_ten_times(&t);
    let lines = w.stop().unwrap(); // exit status 0, or this fails
    let grown = t.client.output_counters()[1] - before[1];
    let d = drops(&lines);
    assert!(grown > 0);
    assert_eq!(
        packets(&d),
        grown,
        "every drop the rule counted is reported"
    );
    assert!(
        d.iter()
            .all(|l| l["rule_num"] == 2 && l["attribution"] == "exact"),
        "{d:?}"
    );
    let end = summary(&lines);
    assert!(end.get("services").is_none(), "{end}");
    let why = end["attempts_unavailable"]
        .as_str()
        .unwrap_or_else(|| panic!("{end}"));
    assert!(why.contains("attempt_passed"), "{why}");
}

#[test]
fn top_shows_attempts_beside_drops() {
    let t = intermittent_service();
    let top = std::process::Command::new(droptrace_tests::droptrace_bin())
        .args([
            "top",
            "--netns",
            &t.client.name,
            "--attempts",
            "--duration",
            "5s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Attached once the first table (every second) is out; 2 s leaves room for a slow start.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(connect_ten_times(&t), LIVE.len());
    let out = top.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    // The last table, after the end line, and the services.
    let last = stdout.rsplit(" drops in ").next().unwrap();
    let row = last
        .lines()
        .find(|l| l.contains("203.0.113.10:8443"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.contains("10 (3 passed)!"), "{row}");
    assert!(last.contains("INTERMITTENT"), "{last}");
}

/// The names of the BPF programs process `pid` holds, directly or through links.
fn programs_of(pid: u32) -> Vec<String> {
    let (mut progs, links) = held_bpf_ids(Some(pid));
    progs.extend(
        bpftool_json(&["link", "show"])
            .iter()
            .filter(|l| l["id"].as_u64().is_some_and(|id| links.contains(&id)))
            .filter_map(|l| l["prog_id"].as_u64()),
    );
    bpftool_json(&["prog", "show"])
        .iter()
        .filter(|p| p["id"].as_u64().is_some_and(|id| progs.contains(&id)))
        .filter_map(|p| Some(p["name"].as_str()?.to_string()))
        .collect()
}

/// Attempts cost something on every packet the host sends: without the flag, nothing of
/// them is loaded, and the summary has no services.
#[test]
fn without_the_flag_no_attempt_program_runs() {
    let t = Topology::new().unwrap();
    t.client
        .exec(&[
            "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "5044", "-j", "DROP",
        ])
        .unwrap();
    let with = Watcher::start(&["watch", "--netns", &t.client.name, "--attempts"]).unwrap();
    let without = Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    let loaded = programs_of(with.pid());
    assert!(
        loaded.iter().any(|n| n == "attempt_passed"),
        "the check sees the program when it runs: {loaded:?}"
    );
    let loaded = programs_of(without.pid());
    assert!(
        loaded.iter().any(|n| n.starts_with("kfree_skb")),
        "{loaded:?}"
    );
    assert!(
        !loaded
            .iter()
            .any(|n| n == "attempt_passed" || n.starts_with("inventory_")),
        "{loaded:?}"
    );
    t.client.udp_send(t.gateway_addr(5044), 2).unwrap();
    let lines = without.stop().unwrap();
    assert!(summary(&lines).get("services").is_none());
    assert!(summary(&with.stop().unwrap()).get("services").is_some());
}

/// `verify` on a TCP service whose SYNs are dropped every other time (`-m statistic --mode
/// nth`, the other deterministic arrangement): five attempts, each from a fresh source
/// port and waiting less than the SYN retransmission (1 s), so every attempt is decided by
/// its first SYN. INTERMITTENT and exit 1; after the fix, exit 0.
#[test]
fn verify_catches_the_intermittent_service_and_passes_after_the_fix() {
    let t = Topology::new().unwrap();
    t.gateway.tcp_listen(t.gateway_addr(8443)).unwrap();
    let nth_drop = [
        "OUTPUT",
        "-p",
        "tcp",
        "--dport",
        "8443",
        "--syn",
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
    ];
    t.client
        .exec(&[&["iptables", "-A"][..], &nth_drop[..]].concat())
        .unwrap();
    let verify = |t: &Topology| {
        let (code, stdout, stderr) = droptrace_tests::droptrace_output(&[
            "verify",
            "--netns",
            &t.client.name,
            "--probe",
            "tcp://203.0.113.10:8443",
            "--attempts",
            "5",
            "--probe-timeout",
            "500ms",
            "--duration",
            "2s",
            "--json",
        ])
        .unwrap();
        let report: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        (code, report, stderr)
    };
    let before = t.client.output_counters();
    let (code, report, stderr) = verify(&t);
    let dropped = t.client.output_counters()[0] - before[0];
    assert_eq!(code, 1, "{report} {stderr}");
    let p = &report["probes"][0];
    assert_eq!(p["result"], "intermittent", "{report}");
    assert_eq!(p["attempts"], 5);
    assert_eq!(p["dropped_attempts"], 3, "{report}");
    assert_eq!(dropped, 3, "the rule's counter");

    // The fix: the DROP rule goes.
    t.client
        .exec(&[&["iptables", "-D"][..], &nth_drop[..]].concat())
        .unwrap();
    let (code, report, stderr) = verify(&t);
    assert_eq!(code, 0, "{report} {stderr}");
    assert_eq!(report["probes"][0]["result"], "reachable", "{report}");
}
