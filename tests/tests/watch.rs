//! `droptrace watch` against the real kernel: real rules, real traffic, in namespaces.

use std::time::Duration;

use droptrace_tests::{
    CLIENT_V4, GATEWAY_V4, GATEWAY_V6, Netns, Topology, Watcher, drops, droptrace_output, packets,
    summary, watch_text,
};

const SHORT: Duration = Duration::from_millis(1500);

/// A summary's counts without its long tables, for assertion messages.
fn brief(s: &serde_json::Value) -> String {
    let field = |k: &str| format!("{k}={}", s[k]);
    [
        "total",
        "lost",
        "matched_in_kernel",
        "records_lost",
        "beyond_flow_table",
    ]
    .map(field)
    .join(" ")
}

#[test]
fn tcp_to_a_port_dropped_in_output_is_reported_with_its_tuple_and_hook() {
    let t = Topology::new().unwrap();
    t.gateway.tcp_listen(t.gateway_addr(8443)).unwrap();
    t.client
        .exec(&[
            "iptables",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "--dport",
            "1024:65535",
            "-j",
            "DROP",
        ])
        .unwrap();
    let w = Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    assert!(
        !t.client.tcp_connect(t.gateway_addr(8443), SHORT).unwrap(),
        "connect should time out"
    );
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert!(!d.is_empty(), "no drop reported: {lines:?}");
    let first = d[0];
    assert_eq!(first["proto"], "tcp");
    assert_eq!(first["src"], CLIENT_V4);
    assert_eq!(first["dst"], GATEWAY_V4);
    assert_eq!(first["dport"], 8443);
    assert_eq!(first["hook"], "OUTPUT");
    assert_eq!(first["reason"], "NETFILTER_DROP");
    assert_eq!(first["tcp_flags"], "S");
    assert_eq!(
        first["engine"], "nftables/ip",
        "iptables here is iptables-nft"
    );
    assert_eq!(first["netns_name"], t.client.name.as_str());
    assert_eq!(first["context"], "process");
    assert!(first["pid"].as_u64().unwrap() > 0);
    assert!(
        first["ifname"].as_str().unwrap().starts_with("dtc"),
        "{first}"
    );
}

#[test]
fn an_allowed_port_is_not_reported() {
    let t = Topology::new().unwrap();
    t.gateway.tcp_listen(t.gateway_addr(443)).unwrap();
    t.gateway.tcp_listen(t.gateway_addr(8443)).unwrap();
    t.client
        .exec(&[
            "iptables", "-A", "OUTPUT", "-p", "tcp", "--dport", "8443", "-j", "DROP",
        ])
        .unwrap();
    let w = Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    assert!(
        t.client.tcp_connect(t.gateway_addr(443), SHORT).unwrap(),
        "443 must connect"
    );
    assert!(!t.client.tcp_connect(t.gateway_addr(8443), SHORT).unwrap());
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert!(!d.is_empty());
    assert!(
        d.iter().all(|v| v["dport"] == 8443),
        "only 8443 may appear: {d:?}"
    );
}

#[test]
fn udp_drops_are_counted_exactly_like_the_rule_counter() {
    let t = Topology::new().unwrap();
    t.client
        .exec(&[
            "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "5044", "-j", "DROP",
        ])
        .unwrap();
    let w = Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    let accepted = t.client.udp_send(t.gateway_addr(5044), 200).unwrap();
    assert_eq!(accepted, 0, "every datagram is dropped locally with EPERM");
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert!(
        d.iter()
            .all(|v| v["proto"] == "udp" && v["dport"] == 5044 && v["hook"] == "OUTPUT")
    );
    let sum: u64 = d.iter().map(|v| v["count"].as_u64().unwrap()).sum();
    let s = summary(&lines);
    assert_eq!(sum, s["total"].as_u64().unwrap(), "sum of count == total");
    assert_eq!(s["lost"], 0);
    // The kernel's own counter for the rule.
    let listing = t
        .client
        .exec(&["iptables", "-L", "OUTPUT", "-v", "-x", "-n"])
        .unwrap();
    let pkts: u64 = listing
        .lines()
        .find(|l| l.contains("udp dpt:5044"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("rule counter");
    assert_eq!(pkts, 200);
    assert_eq!(s["total"].as_u64().unwrap(), pkts);
    assert_eq!(s["destinations"][0]["dst"], format!("{GATEWAY_V4}:5044"));
    assert_eq!(s["hooks"]["OUTPUT"], 200);
}

/// One socket's datagrams to two ports, in runs longer than the batch a CPU counts before
/// it looks at the flow (the program's fast path compares header bytes, not parsed keys):
/// each port keeps its own count, exactly, and the rule's counter agrees.
#[test]
fn flows_of_one_socket_in_turn_keep_their_own_counts() {
    let t = Topology::new().unwrap();
    t.client
        .exec(&["iptables", "-A", "OUTPUT", "-p", "udp", "-j", "DROP"])
        .unwrap();
    let w = Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    let (a, b) = (t.gateway_addr(6001), t.gateway_addr(6002));
    // 100 to A, 60 to B, 100 to A, 3 to B: B's last ones follow a long run of A.
    let order: Vec<_> = [(a, 100), (b, 60), (a, 100), (b, 3)]
        .into_iter()
        .flat_map(|(to, n)| std::iter::repeat_n(to, n))
        .collect();
    let refused = t
        .client
        .run(move || {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
            order
                .iter()
                .filter(|to| sock.send_to(b"droptrace test", *to).is_err())
                .count()
        })
        .unwrap();
    assert_eq!(refused, 263, "every datagram is dropped locally");
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    let by_port = |port: u16| -> u64 {
        d.iter()
            .filter(|v| v["dport"] == port)
            .map(|v| v["count"].as_u64().unwrap())
            .sum()
    };
    assert_eq!((by_port(6001), by_port(6002)), (200, 63), "{d:#?}");
    let s = summary(&lines);
    assert_eq!(s["total"], 263);
    assert_eq!(s["lost"], 0);
    // The kernel's own counter for the rule.
    assert_eq!(t.client.output_counters(), [263]);
}

#[test]
fn ipv6_drops_are_reported() {
    let t = Topology::new().unwrap();
    t.gateway.tcp_listen(t.gateway_addr6(9090)).unwrap();
    t.client
        .exec(&[
            "ip6tables",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "--dport",
            "9090",
            "-j",
            "DROP",
        ])
        .unwrap();
    let w = Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    assert!(!t.client.tcp_connect(t.gateway_addr6(9090), SHORT).unwrap());
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert!(!d.is_empty());
    assert_eq!(d[0]["family"], "ipv6");
    assert_eq!(d[0]["dst"], GATEWAY_V6);
    assert_eq!(d[0]["dport"], 9090);
    assert_eq!(d[0]["hook"], "OUTPUT");
    assert_eq!(d[0]["engine"], "nftables/ip6");
}

#[test]
fn a_drop_in_the_gateways_input_shows_hook_input() {
    let t = Topology::new().unwrap();
    t.gateway.tcp_listen(t.gateway_addr(8080)).unwrap();
    t.gateway
        .exec(&[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "DROP",
        ])
        .unwrap();
    let w = Watcher::start(&["watch", "--netns", &t.gateway.name]).unwrap();
    assert!(!t.client.tcp_connect(t.gateway_addr(8080), SHORT).unwrap());
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert!(!d.is_empty(), "{lines:?}");
    assert_eq!(d[0]["hook"], "INPUT");
    assert_eq!(d[0]["dst"], GATEWAY_V4);
    assert_eq!(d[0]["src"], CLIENT_V4);
    assert!(d[0]["ifname"].as_str().unwrap().starts_with("dtg"));
    // Received packets are dropped in softirq: no process of this host sent them. The
    // listener they were for (this test process) is named, marked as the receiver.
    assert_eq!(d[0]["context"], "softirq");
    assert_eq!(d[0]["pid"], std::process::id(), "{:?}", d[0]);
    assert_eq!(d[0]["receiver"], true);
    // Nothing listens on 8081: no receiver to name.
    t.gateway
        .exec(&[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "8081", "-j", "DROP",
        ])
        .unwrap();
    let w = Watcher::start(&["watch", "--netns", &t.gateway.name]).unwrap();
    assert!(!t.client.tcp_connect(t.gateway_addr(8081), SHORT).unwrap());
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert!(!d.is_empty(), "{lines:?}");
    assert_eq!(d[0]["comm"], "unknown");
    assert_eq!(d[0]["receiver"], false);
}

#[test]
fn legacy_iptables_drops_are_seen_too() {
    let t = Topology::new().unwrap();
    t.client
        .exec(&[
            "iptables-legacy",
            "-A",
            "OUTPUT",
            "-p",
            "udp",
            "--dport",
            "587",
            "-j",
            "DROP",
        ])
        .unwrap();
    let w = Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    t.client.udp_send(t.gateway_addr(587), 3).unwrap();
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert_eq!(packets(&d), 3);
    assert_eq!(d[0]["engine"], "xtables");
    assert_eq!(d[0]["hook"], "OUTPUT");
}

/// iptables-legacy rules beside iptables-nft's in one namespace (after a distribution
/// upgrade): `iptables -L` shows one backend only, so text names the backend of the rule
/// that dropped, and the summary says how to list it there.
#[test]
fn with_two_backends_text_names_the_rules_backend_and_how_to_list_it() {
    let t = Topology::new().unwrap();
    t.client
        .exec(&[
            "iptables-nft",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "--dport",
            "22",
            "-j",
            "ACCEPT",
        ])
        .unwrap();
    t.client
        .exec(&[
            "iptables-legacy",
            "-A",
            "OUTPUT",
            "-p",
            "udp",
            "--dport",
            "588",
            "-j",
            "DROP",
        ])
        .unwrap();
    let text = watch_text(
        &["watch", "--netns", &t.client.name, "--duration", "4s"],
        || {
            t.client.udp_send(t.gateway_addr(588), 2).unwrap();
        },
    );
    let label =
        "iptables-legacy filter/OUTPUT rule 1 `-A OUTPUT -p udp -m udp --dport 588 -j DROP`";
    assert!(text.contains(label), "{text}");
    assert!(
        text.contains("list it: iptables-legacy -t filter -L OUTPUT --line-numbers -v"),
        "{text}"
    );
}

/// SNAT to a one-port range: the second and third connections find no free port, and
/// conntrack drops them at insertion, in POSTROUTING, with no rule. droptrace names the
/// cause from the namespace's conntrack counters (oracle: their insert_failed growth).
#[test]
fn snat_out_of_ports_is_named_as_the_cause_not_a_rule() {
    let t = Topology::new().unwrap();
    let gateway = t.gateway_addr(53);
    t.client
        .exec(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-p",
            "udp",
            "-d",
            GATEWAY_V4,
            "-j",
            "SNAT",
            "--to-source",
            &format!("{CLIENT_V4}:1000-1000"),
        ])
        .unwrap();
    let failed_before = t.client.conntrack_stat("insert_failed").unwrap();
    let w = Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    let sent = t
        .client
        .run(move || {
            (0..3)
                .filter(|_| {
                    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                    sock.send_to(b"x", gateway).is_ok()
                })
                .count()
        })
        .unwrap();
    assert_eq!(
        sent, 1,
        "the one port of the range goes to the first connection"
    );
    let failed = t.client.conntrack_stat("insert_failed").unwrap() - failed_before;
    assert_eq!(
        failed, 2,
        "the kernel's count of connections it could not insert"
    );
    std::thread::sleep(SHORT);
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert_eq!(packets(&d), failed, "{d:?}");
    for l in &d {
        assert_eq!(l["hook"], "POSTROUTING", "{l}");
        assert_eq!(l["rule"], serde_json::Value::Null, "{l}");
        assert_eq!(l["cause"]["name"], "nat_no_free_port", "{l}");
        assert_eq!(l["cause"]["certain"], true, "{l}");
    }
    let rules = summary(&lines)["rules"].as_array().unwrap().clone();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0]["rule"], "(no rule: NAT found no free port)");
    assert_eq!(rules[0]["cause"], "nat_no_free_port");
    assert_eq!(rules[0]["count"], failed);
}

/// A rate limit and a later reject both drop packets of one flow: the flow's drops are
/// split between them as their counters say (the first 30 over the limit's burst to the
/// limit rule, the rest to the reject), not all put on one rule.
#[test]
fn one_flows_drops_split_between_a_limit_rule_and_the_reject_after_it() {
    let ns = Netns::new("split").unwrap();
    for rule in [
        "-A OUTPUT -p udp --dport 7300 -m limit --limit 1/hour --limit-burst 30 -j DROP",
        "-A OUTPUT -p udp --dport 7300 -j REJECT",
    ] {
        let mut args = vec!["iptables"];
        args.extend(rule.split_whitespace());
        ns.exec(&args).unwrap();
    }
    let to: std::net::SocketAddr = "127.0.0.1:7300".parse().unwrap();
    let w = Watcher::start(&["watch", "--netns", &ns.name]).unwrap();
    assert_eq!(ns.udp_send(to, 80).unwrap(), 0);
    std::thread::sleep(SHORT);
    // Another flow once the limit's burst is spent: the reject alone, and confirmed so.
    assert_eq!(ns.udp_send(to, 10).unwrap(), 0);
    std::thread::sleep(SHORT);
    let lines = w.stop().unwrap();
    let counters = ns.output_counters();
    assert_eq!(counters, [30, 60], "the kernel's split");
    let first = drops(&lines)[0]["sport"].clone();
    for d in drops(&lines).iter().filter(|d| d["sport"] != first) {
        assert_eq!(
            (d["rule_num"].as_u64(), d["attribution"].as_str()),
            (Some(2), Some("exact")),
            "{d}"
        );
    }
    let mut by_rule = [0u64; 2];
    for d in drops(&lines) {
        let n = d["rule_num"].as_u64().unwrap_or(0) as usize;
        assert!((1..=2).contains(&n), "{d}");
        by_rule[n - 1] += d["count"].as_u64().unwrap();
    }
    assert_eq!(by_rule.to_vec(), counters, "{lines:?}");
    let rules = summary(&lines)["rules"].as_array().unwrap().clone();
    let counted: Vec<(u64, u64)> = rules
        .iter()
        .map(|r| {
            (
                r["rule_num"].as_u64().unwrap(),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        counted.contains(&(1, 30)) && counted.contains(&(2, 60)),
        "{rules:?}"
    );
}

/// NFQUEUE with no program on the queue: the kernel drops what the rule queues (in
/// `nf_queue`); droptrace names the rule and why its verdict became a drop.
#[test]
fn a_queue_without_a_program_is_said_so_under_the_rule() {
    let ns = Netns::new("nfq").unwrap();
    ns.exec(&[
        "iptables",
        "-A",
        "OUTPUT",
        "-p",
        "udp",
        "--dport",
        "7100",
        "-j",
        "NFQUEUE",
        "--queue-num",
        "3",
    ])
    .unwrap();
    let to: std::net::SocketAddr = "127.0.0.1:7100".parse().unwrap();
    // The kernel frees them without the netfilter reason (kfree_skb in nf_queue).
    let w = Watcher::start(&["watch", "--netns", &ns.name, "--all-reasons"]).unwrap();
    // Queued is "sent" to the sender: the drop is the queue's, after the send returned.
    ns.udp_send(to, 2).unwrap();
    std::thread::sleep(SHORT);
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert_eq!(packets(&d), ns.output_counters()[0], "{d:?}");
    assert_eq!(packets(&d), 2);
    for l in &d {
        assert_eq!(l["location"], "nf_queue", "{l}");
        assert_eq!(l["rule_num"], 1, "{l}");
        assert_eq!(l["verdict"], "QUEUE", "{l}");
        assert_eq!(l["cause"]["name"], "nfqueue_no_listener", "{l}");
    }
    let text = watch_text(
        &[
            "watch",
            "--netns",
            &ns.name,
            "--all-reasons",
            "--duration",
            "3s",
        ],
        || {
            ns.udp_send(to, 1).unwrap();
        },
    );
    assert!(
        text.contains("[exact]: no program listens on NFQUEUE 3 (--queue-bypass"),
        "{text}"
    );
}

/// A drop in a filter chain at priority -110 with a nat chain at -100 after it: the why
/// names no rule of the nat chain (the packet never reached it), and text shows it on
/// one line. `meta cpu` is a match droptrace does not evaluate, so every rule here is
/// undecided.
#[test]
fn a_why_names_only_rules_that_ran_before_the_verdict() {
    let ns = Netns::new("why").unwrap();
    let mut nat_rules = String::new();
    for i in 1..=12 {
        nat_rules.push_str(&format!(
            "meta cpu 0-1023 ip daddr 192.0.2.{i} dnat to 198.51.100.{i}\n"
        ));
    }
    let ruleset = format!(
        "table ip t {{\n\
         chain f {{ type filter hook output priority -110; policy accept;\n\
         udp dport 7000 meta cpu 0-1023 counter drop\n}}\n\
         chain n {{ type nat hook output priority -100; policy accept;\n{nat_rules}}}\n}}\n"
    );
    let file = std::env::temp_dir().join(format!("droptrace-why-{}.nft", std::process::id()));
    std::fs::write(&file, ruleset).unwrap();
    let loaded = ns.exec(&["nft", "-f", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    loaded.unwrap();
    let to: std::net::SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let w = Watcher::start(&["watch", "--netns", &ns.name]).unwrap();
    assert_eq!(ns.udp_send(to, 1).unwrap(), 0);
    std::thread::sleep(SHORT);
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert_eq!(packets(&d), 1, "{d:?}");
    let why = d[0]["why"].as_str().unwrap();
    assert_eq!(d[0]["chain"], "f", "{}", d[0]);
    assert!(!why.contains("ip t/n"), "{why}");
    assert!(why.len() < 400, "{} characters: {why}", why.len());
}

#[test]
fn dport_and_dst_filters_select_drops_in_the_kernel() {
    let t = Topology::new().unwrap();
    t.client
        .exec(&["iptables", "-A", "OUTPUT", "-p", "udp", "-j", "DROP"])
        .unwrap();
    t.client
        .exec(&["ip6tables", "-A", "OUTPUT", "-p", "udp", "-j", "DROP"])
        .unwrap();
    let w = Watcher::start(&[
        "watch",
        "--netns",
        &t.client.name,
        "--dport",
        "9000-9100",
        "--dst",
        "203.0.113.0/24",
    ])
    .unwrap();
    t.client.udp_send(t.gateway_addr(9090), 5).unwrap();
    t.client.udp_send(t.gateway_addr(5044), 5).unwrap();
    t.client.udp_send(t.gateway_addr6(9090), 5).unwrap();
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert_eq!(packets(&d), 5, "{d:?}");
    assert!(
        d.iter()
            .all(|v| v["dport"] == 9090 && v["dst"] == GATEWAY_V4)
    );
    assert_eq!(
        summary(&lines)["matched_in_kernel"],
        5,
        "filtered in the kernel, not in userspace"
    );
}

/// With a port, protocol or family filter the kernel decides from the headers' first bytes
/// (drops.rs `ruled_out_early`), IPv4 and IPv6 alike, before copying the rest: what it
/// takes and what it refuses must be what the full parse would.
#[test]
fn port_and_protocol_filters_decide_early_on_both_families() {
    let t = Topology::new().unwrap();
    for (tool, proto) in [
        ("iptables", "udp"),
        ("ip6tables", "udp"),
        ("ip6tables", "tcp"),
    ] {
        t.client
            .exec(&[tool, "-A", "OUTPUT", "-p", proto, "-j", "DROP"])
            .unwrap();
    }
    let w = Watcher::start(&[
        "watch",
        "--netns",
        &t.client.name,
        "--proto",
        "udp",
        "--dport",
        "9090",
    ])
    .unwrap();
    t.client.udp_send(t.gateway_addr(9090), 3).unwrap();
    t.client.udp_send(t.gateway_addr(9091), 2).unwrap();
    t.client.udp_send(t.gateway_addr6(9090), 4).unwrap();
    t.client.udp_send(t.gateway_addr6(5044), 2).unwrap();
    // The right port, the wrong protocol.
    assert!(!t.client.tcp_connect(t.gateway_addr6(9090), SHORT).unwrap());
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert_eq!(packets(&d), 7, "{d:?}");
    assert!(
        d.iter().all(|v| v["dport"] == 9090 && v["proto"] == "udp"),
        "{d:?}"
    );
    assert!(d.iter().any(|v| v["family"] == "ipv4") && d.iter().any(|v| v["family"] == "ipv6"));
    assert_eq!(summary(&lines)["matched_in_kernel"], 7);
}

#[test]
fn all_reasons_shows_drops_that_are_not_netfilters() {
    let t = Topology::new().unwrap();
    // Nothing listens on 7: the gateway frees the datagram with reason NO_SOCKET.
    let w = Watcher::start(&[
        "watch",
        "--netns",
        &t.gateway.name,
        "--all-reasons",
        "--proto",
        "udp",
    ])
    .unwrap();
    t.client.udp_send(t.gateway_addr(7), 2).unwrap();
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert!(
        d.iter()
            .any(|v| v["reason"] == "NO_SOCKET" && v["dport"] == 7),
        "{d:?}"
    );

    let w = Watcher::start(&["watch", "--netns", &t.gateway.name, "--proto", "udp"]).unwrap();
    t.client.udp_send(t.gateway_addr(7), 2).unwrap();
    let lines = w.stop().unwrap();
    assert!(
        drops(&lines).is_empty(),
        "without --all-reasons only netfilter drops count"
    );
}

#[test]
fn count_and_duration_end_the_capture_by_themselves() {
    let t = Topology::new().unwrap();
    t.client
        .exec(&["iptables", "-A", "OUTPUT", "-p", "udp", "-j", "DROP"])
        .unwrap();
    let w = Watcher::start(&["watch", "--netns", &t.client.name, "--count", "3"]).unwrap();
    t.client.udp_send(t.gateway_addr(5044), 10).unwrap();
    let lines = w.finish().unwrap();
    assert_eq!(packets(&drops(&lines)), 3);
    assert_eq!(summary(&lines)["total"], 3);

    let w = Watcher::start(&["watch", "--netns", &t.client.name, "--duration", "1s"]).unwrap();
    let lines = w.finish().unwrap();
    assert_eq!(summary(&lines)["total"], 0);
}

#[test]
fn bad_input_gives_one_line_and_exit_status_2() {
    for args in [
        vec!["watch", "--dport", "70000"],
        vec!["watch", "--proto", "tcpp"],
        vec!["watch", "--dst", "gateway.example"],
        vec!["watch", "--netns", "dt-no-such-namespace"],
        vec!["watch", "--src", "10.0.0.1", "--dst", "2001:db8::1"],
        vec!["watch", "--no-such-flag"],
    ] {
        let (code, stdout, stderr) = droptrace_output(&args).unwrap();
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?} printed data: {stdout}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("droptrace: error:") || first.starts_with("error:"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn counts_stay_exact_when_userspace_stalls_and_records_are_lost() {
    let t = Topology::new().unwrap();
    t.client
        .exec(&["iptables", "-A", "OUTPUT", "-p", "udp", "-j", "DROP"])
        .unwrap();
    let w = Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    w.signal(nix::sys::signal::Signal::SIGSTOP).unwrap();
    // 30000 distinct flows while droptrace sleeps: more records than the ring buffer holds.
    let gw = GATEWAY_V4.parse().unwrap();
    let accepted = t.client.udp_spray(gw, 20000..=49999).unwrap();
    assert_eq!(accepted, 0);
    w.signal(nix::sys::signal::Signal::SIGCONT).unwrap();
    let lines = w.stop().unwrap();
    let s = summary(&lines);
    assert!(
        s["records_lost"].as_u64().unwrap() > 0,
        "the ring buffer should have overflowed: {}",
        brief(s)
    );
    assert_eq!(s["lost"], 0, "every packet is still counted: {}", brief(s));
    assert_eq!(s["total"], 30000);
    let d = drops(&lines);
    // Lines are made at a bounded pace; the kernel's aggregates report the rest.
    let beyond = s["beyond_flow_table"].as_u64().unwrap();
    assert_eq!(packets(&d) + beyond, 30000, "{}", brief(s));
    // Flows whose records were lost come from the flow table, without a stack and so
    // without a hook; OUTPUT is the only hook these packets can pass whose chains drop
    // them, so every line still names the rule: `inferred`, saying why.
    let unnamed: Vec<_> = d.iter().filter(|v| v["rule"].is_null()).collect();
    assert!(
        unnamed.is_empty(),
        "{} lines name no rule, e.g. {:?}",
        unnamed.len(),
        unnamed.first()
    );
    let inferred: Vec<_> = d
        .iter()
        .filter(|v| {
            v["why"]
                .as_str()
                .is_some_and(|w| w.contains("hook inferred"))
        })
        .collect();
    assert!(!inferred.is_empty(), "no flow came from the flow table");
    for v in &inferred {
        assert_eq!(v["attribution"], "inferred", "{v}");
        assert_eq!(v["hook"], "OUTPUT", "{v}");
        assert_eq!(v["rule"], "-A OUTPUT -p udp -j DROP", "{v}");
    }
}

/// More flows than a deliberately small flow table (`--flow-table-size`, hidden, for tests),
/// with droptrace stalled so most records are lost: the totals come from the kernel's
/// aggregates and still equal the rule's own counter, by rule and by destination port.
#[test]
fn totals_by_rule_and_port_stay_exact_beyond_the_flow_table() {
    let t = Topology::new().unwrap();
    t.client
        .exec(&["iptables", "-A", "OUTPUT", "-p", "udp", "-j", "DROP"])
        .unwrap();
    let w = Watcher::start(&[
        "watch",
        "--netns",
        &t.client.name,
        "--flow-table-size",
        "256",
    ])
    .unwrap();
    w.signal(nix::sys::signal::Signal::SIGSTOP).unwrap();
    let gw = GATEWAY_V4.parse().unwrap();
    // 6,000 flows of one datagram, then one flow of 200: 24 times the flow table.
    let ports = 20000..=25999u16;
    assert_eq!(t.client.udp_spray(gw, ports.clone()).unwrap(), 0);
    assert_eq!(t.client.udp_send(t.gateway_addr(5353), 200).unwrap(), 0);
    w.signal(nix::sys::signal::Signal::SIGCONT).unwrap();
    let lines = w.stop().unwrap();
    let s = summary(&lines);
    let counter = t.client.output_counters()[0];
    assert_eq!(counter, 6200);
    assert_eq!(s["total"], counter, "{}", brief(s));
    assert_eq!(s["lost"], 0, "{}", brief(s));
    assert!(
        s["beyond_flow_table"].as_u64().unwrap() > 0,
        "the flow table should have overflowed: {}",
        brief(s)
    );
    assert_eq!(
        packets(&drops(&lines)) + s["beyond_flow_table"].as_u64().unwrap(),
        counter
    );
    // One rule, named for every drop: no "(rule unknown)".
    let rules = s["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(
        rules[0]["rule"],
        "filter/OUTPUT rule 1 `-A OUTPUT -p udp -j DROP`"
    );
    assert_eq!(rules[0]["count"], counter);
    assert_eq!(s["hooks"]["OUTPUT"], counter);
    // By destination port: what was sent to each.
    let by_port: std::collections::HashMap<u64, u64> = s["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["proto"], "udp", "{p}");
            (
                p["port"].as_u64().expect("a port"),
                p["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(by_port.len(), 6001);
    assert_eq!(by_port[&5353], 200);
    assert!(ports.into_iter().all(|p| by_port[&u64::from(p)] == 1));
}

/// A burst of more new flows than `watch` makes lines in a second: the rest are read from
/// the flow table in the following seconds, not given up to the aggregates.
#[test]
fn flows_beyond_a_seconds_lines_get_theirs_later() {
    let t = Topology::new().unwrap();
    t.client
        .exec(&["iptables", "-A", "OUTPUT", "-p", "udp", "-j", "DROP"])
        .unwrap();
    let w = Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    let gw = GATEWAY_V4.parse().unwrap();
    // 12,000 flows, more than the first second's lines and the end's together, in chunks
    // the ring buffer holds (a record lost would also have the table read again, which is
    // the point: the flows are caught up before the end, whichever way).
    for chunk in 0..3u16 {
        let first = 30000 + chunk * 4000;
        assert_eq!(t.client.udp_spray(gw, first..=first + 3999).unwrap(), 0);
        std::thread::sleep(Duration::from_millis(300));
    }
    // Six seconds' worth of lines, and a whole-table read every 3 s.
    std::thread::sleep(Duration::from_secs(8));
    let lines = w.stop().unwrap();
    let s = summary(&lines);
    assert_eq!(s["total"], 12000, "{}", brief(s));
    assert_eq!(s["beyond_flow_table"], 0, "{}", brief(s));
    assert_eq!(packets(&drops(&lines)), 12000);
}

#[test]
fn a_syn_retransmitted_from_softirq_is_attributed_to_its_sender() {
    let t = Topology::new().unwrap();
    t.gateway.tcp_listen(t.gateway_addr(8443)).unwrap();
    t.client
        .exec(&[
            "iptables", "-A", "OUTPUT", "-p", "tcp", "--dport", "8443", "-j", "DROP",
        ])
        .unwrap();
    let w = Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    // The first SYN leaves from connect(); the retransmission ~1 s later from a timer.
    assert!(
        !t.client
            .tcp_connect(t.gateway_addr(8443), Duration::from_millis(2500))
            .unwrap()
    );
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert!(d.iter().any(|v| v["context"] == "process"), "{d:?}");
    assert!(
        d.iter().any(|v| v["context"] == "softirq"),
        "no retransmission seen: {d:?}"
    );
    for v in &d {
        // Both are this test process, never the idle task or whoever ran the timer.
        assert_eq!(v["pid"], std::process::id(), "{v}");
        assert_ne!(v["comm"], "swapper/0");
    }
}

/// A connect() already retrying when droptrace starts: its retransmitted SYNs leave from the
/// TCP timer, and the socket was never seen in process context. The owner is found the way
/// `ss -p` finds it, from the namespace's /proc/net/tcp and the processes' descriptors.
#[test]
fn a_connect_older_than_droptrace_is_attributed_to_its_process() {
    let t = Topology::new().unwrap();
    t.gateway.tcp_listen(t.gateway_addr(8443)).unwrap();
    t.client
        .exec(&[
            "iptables", "-A", "OUTPUT", "-p", "tcp", "--dport", "8443", "-j", "DROP",
        ])
        .unwrap();
    // SYN at 0 s, retransmissions at about 1 s and 3 s: droptrace starts in between.
    let netns = std::fs::File::open(t.client.path()).unwrap();
    let addr = t.gateway_addr(8443);
    let connecting = std::thread::spawn(move || {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(4000)).is_ok()
    });
    std::thread::sleep(Duration::from_millis(100));
    let w = Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    assert!(!connecting.join().unwrap());
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert!(!d.is_empty(), "no retransmission seen");
    for v in &d {
        assert_eq!(v["context"], "softirq", "{v}");
        assert_eq!(v["pid"], std::process::id(), "{v}");
        assert_ne!(v["comm"], "unknown", "{v}");
    }
}

/// A neighbour solicitation leaves on the stack of the process whose datagram needs the
/// neighbour (and again from the neighbour timer): the kernel's packet all the same, never
/// the process that happened to run.
#[test]
fn a_packet_the_kernel_sends_is_the_kernels_not_the_running_tasks() {
    let ns = Netns::new("ndisc").unwrap();
    for cmd in [
        &[
            "ip", "link", "add", "nd0", "type", "veth", "peer", "name", "nd1",
        ][..],
        &["ip", "link", "set", "nd0", "up"],
        &["ip", "link", "set", "nd1", "up"],
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "2001:db8:77::1/64",
            "dev",
            "nd0",
            "nodad",
        ],
        &["nft", "add table inet dt"],
        &[
            "nft",
            "add chain inet dt out { type filter hook output priority 0; }",
        ],
        &[
            "nft",
            "add rule inet dt out icmpv6 type nd-neighbor-solicit drop",
        ],
    ] {
        ns.exec(cmd).unwrap();
    }
    let w = Watcher::start(&["watch", "--netns", &ns.name]).unwrap();
    // No neighbour answers: the datagram waits, and the solicitations are dropped.
    ns.exec(&["bash", "-c", "echo x > /dev/udp/2001:db8:77::2/9"])
        .unwrap();
    std::thread::sleep(SHORT);
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert!(!d.is_empty(), "no solicitation dropped: {lines:?}");
    for v in d {
        assert_eq!(v["icmp_type"], 135, "{v}");
        assert_eq!(v["context"], "kernel", "{v}");
        assert_eq!(v["kernel_sender"], "ndisc", "{v}");
        assert_eq!(
            (&v["pid"], &v["comm"]),
            (&serde_json::Value::Null, &"kernel".into()),
            "{v}"
        );
    }
}
