//! `droptrace inventory` and `droptrace audit` on the incident, against the real kernel:
//! the inventory must find every service with its process, the audit must name the rule
//! that would break each one, and the kernel must agree once the ruleset is applied.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader},
    os::unix::fs::symlink,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use droptrace_tests::{
    CLIENT_V4, GATEWAY_V4, GATEWAY_V6, Topology, Watcher, drops, droptrace_bin, droptrace_output,
};
use serde_json::Value;

/// The incident's services: (client process, port).
const SERVICES: &[(&str, u16)] = &[
    ("java", 8443),
    ("prometheus", 9090),
    ("filebeat", 5044),
    ("webhook-worker", 8080),
    ("postfix", 587),
    ("curl", 443),
    ("apt", 80),
    ("ssh", 22),
    ("mysqld", 3306),
];

/// The weekend's hardening script, as `iptables-save` would print it.
const HARDENING: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A OUTPUT -o lo -j ACCEPT
-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A OUTPUT -p tcp -m multiport --dports 80,443,22,3306 -j ACCEPT
-A OUTPUT -p tcp --dport 1024:65535 -j DROP
COMMIT
";

/// The fix: the services the inventory found, allowed before the DROP.
const FIXED: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A OUTPUT -o lo -j ACCEPT
-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A OUTPUT -p tcp -m multiport --dports 80,443,22,3306 -j ACCEPT
-A OUTPUT -p tcp -m multiport --dports 8443,9090,5044,8080 -j ACCEPT
-A OUTPUT -p tcp --dport 1024:65535 -j DROP
COMMIT
";

/// The same hardening, written for nft.
const HARDENING_NFT: &str = "table inet hardening {
    chain output {
        type filter hook output priority filter; policy accept;
        oifname \"lo\" accept
        ct state established,related accept
        tcp dport { 22, 80, 443, 3306 } accept
        tcp dport 1024-65535 drop
    }
}
";

/// A scratch directory with the clients (symlinks to bash named like the real programs,
/// so the kernel's comm is `java`, `prometheus`, ...) and the files of one test.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dt-inv-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("bin")).unwrap();
        for (name, _) in SERVICES {
            symlink("/bin/bash", dir.join("bin").join(name)).unwrap();
        }
        Scratch { dir }
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    fn client(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Every client connects to its service once, as its own process in the client
/// namespace; returns the ports that connected.
fn connect_all(t: &Topology, s: &Scratch, services: &[(&str, u16)]) -> BTreeSet<u16> {
    let children: Vec<(u16, Child)> = services
        .iter()
        .map(|(name, port)| {
            let child = Command::new("ip")
                .args(["netns", "exec", &t.client.name, "timeout", "2"])
                .arg(s.client(name))
                .args(["-c", &format!("exec 3<>/dev/tcp/{GATEWAY_V4}/{port}")])
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            (*port, child)
        })
        .collect();
    children
        .into_iter()
        .filter_map(|(port, mut c)| c.wait().unwrap().success().then_some(port))
        .collect()
}

/// Starts droptrace with `args` and waits for the inventory's start line on stderr (the
/// programs are attached then); the rest of stderr is passed through.
fn spawn_attached(args: &[&str]) -> Child {
    let mut child = Command::new(droptrace_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.starts_with("droptrace: inventory of outbound flows") => {
                return child;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("droptrace did not start: {e}");
            }
        }
    }
}

/// Ctrl-C, then the exit code and stdout.
fn interrupt(child: Child) -> (Option<i32>, String) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A running `droptrace inventory` (60 s at most), attached when `start` returns.
struct Inventory {
    child: Child,
}

impl Inventory {
    fn start(args: &[&str]) -> Self {
        let mut full = vec!["inventory", "--duration", "60s"];
        full.extend_from_slice(args);
        Inventory {
            child: spawn_attached(&full),
        }
    }

    /// Ctrl-C, then the JSON on stdout (for runs with `--json`).
    fn stop(self) -> Value {
        let text = self.stop_text();
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("inventory printed no JSON ({e}): {text}"))
    }

    /// Ctrl-C, then stdout.
    fn stop_text(self) -> String {
        let (code, stdout) = interrupt(self.child);
        assert_eq!(code, Some(0), "inventory failed: {stdout}");
        stdout
    }
}

fn services(inv: &Value) -> &Vec<Value> {
    inv["services"].as_array().expect("services")
}

fn service<'a>(inv: &'a Value, proto: &str, dport: u16) -> &'a Value {
    services(inv)
        .iter()
        .find(|s| s["proto"] == proto && s["dport"] == dport)
        .unwrap_or_else(|| panic!("no {proto} service on port {dport}: {inv:#}"))
}

/// Runs `droptrace audit ... --json`: (exit code, report).
fn audit(args: &[&str]) -> (i32, Value) {
    let mut full = vec!["audit"];
    full.extend_from_slice(args);
    full.push("--json");
    let (code, stdout, stderr) = droptrace_output(&full).unwrap();
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("audit printed no JSON ({e}), exit {code}: {stderr}"));
    (code, report)
}

/// Ports the audit says would be dropped, with the rule of each.
fn would_drop(report: &Value) -> Vec<(u16, String)> {
    let mut v: Vec<(u16, String)> = report["would_drop"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| {
            b["services"].as_array().unwrap().iter().map(move |s| {
                (
                    s["dport"].as_u64().unwrap() as u16,
                    b["rule"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect();
    v.sort();
    v
}

/// What the kernel does once the ruleset is applied: the ports `watch` sees dropped while
/// every client connects, and the ports that connected.
fn kernel_verdict(t: &Topology, s: &Scratch) -> (BTreeSet<u16>, BTreeSet<u16>) {
    let w = Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    let connected = connect_all(t, s, SERVICES);
    let lines = w.stop().unwrap();
    let dropped = drops(&lines)
        .iter()
        .map(|d| d["dport"].as_u64().unwrap() as u16)
        .collect();
    (dropped, connected)
}

fn ports(v: &[(u16, String)]) -> BTreeSet<u16> {
    v.iter().map(|(p, _)| *p).collect()
}

#[test]
fn inventory_finds_the_nine_services_and_audit_predicts_what_the_kernel_then_drops() {
    let t = Topology::new().unwrap();
    for (_, port) in SERVICES {
        t.gateway.tcp_listen(t.gateway_addr(*port)).unwrap();
    }
    let s = Scratch::new("incident");
    let file = s.path("inventory.json");

    // 1. "This host has no inventory": watch what it does.
    let inv = Inventory::start(&["--netns", &t.client.name, "--json", "--write", &file]);
    let connected = connect_all(&t, &s, SERVICES);
    assert_eq!(connected.len(), 9, "no rules yet: every service connects");
    let inv = inv.stop();
    assert_eq!(services(&inv).len(), 9, "{inv:#}");
    for (name, port) in SERVICES {
        let svc = service(&inv, "tcp", *port);
        assert_eq!(svc["dst"], GATEWAY_V4);
        assert_eq!(svc["dropped"], false, "nothing is dropped yet: {svc}");
        let procs: Vec<&str> = svc["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert!(
            procs.iter().any(|p| p.starts_with(&format!("{name}["))),
            "{port}: {procs:?}"
        );
        let flow = &svc["flows"][0];
        assert_eq!(flow["seen_by"], "connect");
        assert_eq!(flow["src"], CLIENT_V4);
        assert_eq!(flow["netns_name"], t.client.name.as_str());
        assert!(flow["oif"].as_str().unwrap().starts_with("dtc"), "{flow}");
        assert!(flow["pid"].as_u64().unwrap() > 0);
    }
    let written: Value = serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(written, inv, "--write keeps what --json prints");

    // 2. Audit the hardening script against it, before applying anything.
    let hardening = s.file("hardening.rules", HARDENING);
    let (code, report) = audit(&["--ruleset", &hardening, "--from", &file]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["verdict"], "fail");
    let predicted = would_drop(&report);
    assert_eq!(ports(&predicted), BTreeSet::from([5044, 8080, 8443, 9090]));
    for (port, rule) in &predicted {
        assert_eq!(
            rule, "filter/OUTPUT rule 4 `-A OUTPUT -p tcp --dport 1024:65535 -j DROP`",
            "{port}"
        );
    }
    let java = &report["would_drop"][0]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["dport"] == 8443)
        .unwrap()["processes"][0];
    assert!(java.as_str().unwrap().starts_with("java["), "{java}");
    assert!(
        report["would_pass"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["dport"] == 587),
        "587 is below 1024: not dropped"
    );
    let fixed = s.file("fixed.rules", FIXED);
    let (code, report) = audit(&["--ruleset", &fixed, "--from", &file]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["verdict"], "pass");
    assert!(report["would_drop"].as_array().unwrap().is_empty());

    // 3. The kernel agrees: apply each ruleset in the client and watch the same traffic.
    t.client.exec(&["iptables-restore", &hardening]).unwrap();
    let (dropped, connected) = kernel_verdict(&t, &s);
    assert_eq!(dropped, ports(&predicted), "audit and kernel disagree");
    assert_eq!(
        connected,
        BTreeSet::from([22, 80, 443, 587, 3306]),
        "the rest still connects"
    );
    t.client.exec(&["iptables-restore", &fixed]).unwrap();
    let (dropped, connected) = kernel_verdict(&t, &s);
    assert!(dropped.is_empty(), "the fix drops {dropped:?}");
    assert_eq!(connected.len(), 9);

    // 4. And verify probes every service of the inventory from the client.
    let (code, stdout, stderr) = droptrace_output(&[
        "verify",
        "--netns",
        &t.client.name,
        "--duration",
        "2s",
        "--probe-timeout",
        "1s",
        "--probe-file",
        &file,
        "--json",
    ])
    .unwrap();
    let v: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    assert_eq!(code, 0, "{v:#} {stderr}");
    let probes = v["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 9, "{v:#}");
    assert!(probes.iter().all(|p| p["result"] == "reachable"), "{v:#}");
}

#[test]
fn inventory_says_which_flows_the_current_ruleset_drops_and_sees_udp() {
    let t = Topology::new().unwrap();
    for port in [8443, 443] {
        t.gateway.tcp_listen(t.gateway_addr(port)).unwrap();
    }
    let s = Scratch::new("current");
    let hardening = s.file("hardening.rules", HARDENING);
    t.client.exec(&["iptables-restore", &hardening]).unwrap();
    t.client
        .exec(&[
            "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "5044", "-j", "DROP",
        ])
        .unwrap();

    let inv = Inventory::start(&["--netns", &t.client.name, "--json"]);
    let connected = connect_all(&t, &s, &[("java", 8443), ("curl", 443)]);
    assert_eq!(connected, BTreeSet::from([443]));
    // A connected UDP socket (bash's /dev/udp), dropped: the send fails with EPERM.
    let udp = Command::new("ip")
        .args(["netns", "exec", &t.client.name])
        .arg(s.client("filebeat"))
        .args([
            "-c",
            &format!("exec 3<>/dev/udp/{GATEWAY_V4}/5044; echo log >&3; echo log >&3"),
        ])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!udp.success(), "the firewall refuses the datagram");
    // Unconnected UDP sends (sendto), IPv6, allowed: one flow, three datagrams.
    assert_eq!(t.client.udp_send(t.gateway_addr6(53), 3).unwrap(), 3);
    // A UDP socket connected but never used is not a flow (glibc does that to sort
    // addresses).
    t.client
        .run(move || {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.connect((GATEWAY_V4, 7000)).unwrap();
        })
        .unwrap();
    ping(&t);
    let inv = inv.stop();

    let java = service(&inv, "tcp", 8443);
    assert_eq!(java["dropped"], true, "{java:#}");
    assert!(java["drops"].as_u64().unwrap() >= 1);
    assert!(
        java["dropped_by"][0]
            .as_str()
            .unwrap()
            .contains("--dport 1024:65535 -j DROP"),
        "{java:#}"
    );
    assert!(java["processes"][0].as_str().unwrap().starts_with("java["));
    assert_eq!(service(&inv, "tcp", 443)["dropped"], false);

    let filebeat = service(&inv, "udp", 5044);
    assert_eq!(filebeat["dropped"], true, "{filebeat:#}");
    assert!(
        filebeat["processes"][0]
            .as_str()
            .unwrap()
            .starts_with("filebeat[")
    );
    assert_eq!(filebeat["flows"][0]["seen_by"], "send");

    let dns = service(&inv, "udp", 53);
    assert_eq!(dns["dst"], GATEWAY_V6);
    assert_eq!(dns["count"], 3, "{dns:#}");
    assert_eq!(dns["dropped"], false);
    assert!(
        !services(&inv).iter().any(|s| s["dport"] == 7000),
        "a connect() without a send is not a flow"
    );
    let echo = services(&inv)
        .iter()
        .find(|s| s["proto"] == "icmp")
        .unwrap_or_else(|| panic!("no ICMP echo flow: {inv:#}"));
    assert_eq!(echo["icmp_type"], 8);
    assert_eq!(echo["dst"], GATEWAY_V4);
}

/// Pings the gateway once with busybox's ping (installed by `cargo xtask setup`).
fn ping(t: &Topology) {
    let ok = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.client.name,
            "busybox",
            "ping",
            "-c",
            "1",
        ])
        .args(["-W", "1", GATEWAY_V4])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "busybox ping to the gateway failed (is busybox-static installed?)"
    );
}

#[test]
fn audit_loads_nft_scripts_in_a_throwaway_namespace_and_agrees_with_the_kernel() {
    let t = Topology::new().unwrap();
    let mine: &[(&str, u16)] = &[("java", 8443), ("curl", 443), ("postfix", 587)];
    for (_, port) in mine {
        t.gateway.tcp_listen(t.gateway_addr(*port)).unwrap();
    }
    let s = Scratch::new("nft");
    let script = s.file("hardening.nft", HARDENING_NFT);
    let host_before = droptrace_tests::sh(&["nft", "list", "ruleset"]).unwrap();

    // Live: the audit watches the client for a window instead of reading an inventory.
    let child = spawn_attached(&[
        "audit",
        "--ruleset",
        &script,
        "--netns",
        &t.client.name,
        "--duration",
        "60s",
        "--json",
    ]);
    assert_eq!(connect_all(&t, &s, mine).len(), 3);
    let (code, stdout) = interrupt(child);
    assert_eq!(code, Some(1), "8443 would be dropped: {stdout}");
    let live: Value = serde_json::from_str(&stdout).unwrap();
    let predicted = would_drop(&live);
    assert_eq!(ports(&predicted), BTreeSet::from([8443]), "{live:#}");
    assert!(
        predicted[0].1.starts_with("inet hardening/output handle ")
            && predicted[0].1.ends_with("`tcp dport 1024-65535 drop`"),
        "{predicted:?}"
    );
    assert!(
        live["format"].as_str().unwrap().contains("throw-away"),
        "{live:#}"
    );

    // The host never saw the script (the namespace it was loaded in had no name and died
    // with droptrace's thread).
    assert_eq!(
        droptrace_tests::sh(&["nft", "list", "ruleset"]).unwrap(),
        host_before
    );

    // The kernel agrees.
    t.client.exec(&["nft", "-f", &script]).unwrap();
    let w = Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    let connected = connect_all(&t, &s, mine);
    let lines = w.stop().unwrap();
    let dropped: BTreeSet<u16> = drops(&lines)
        .iter()
        .map(|d| d["dport"].as_u64().unwrap() as u16)
        .collect();
    assert_eq!(dropped, ports(&predicted));
    assert_eq!(connected, BTreeSet::from([443, 587]));

    // `nft -j` JSON of what was applied gives the same verdict, from an inventory file.
    let json = s.file(
        "applied.json",
        &t.client.exec(&["nft", "-j", "list", "ruleset"]).unwrap(),
    );
    let inv_file = s.path("inventory.json");
    t.client.exec(&["nft", "flush", "ruleset"]).unwrap();
    let inv = Inventory::start(&["--netns", &t.client.name, "--write", &inv_file]);
    connect_all(&t, &s, mine);
    inv.stop_text();
    let (code, report) = audit(&["--ruleset", &json, "--from", &inv_file]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(ports(&would_drop(&report)), BTreeSet::from([8443]));
    assert_eq!(report["format"], "nft -j JSON");
}

#[test]
fn the_table_groups_by_service_and_names_the_process() {
    let t = Topology::new().unwrap();
    t.gateway.tcp_listen(t.gateway_addr(8443)).unwrap();
    let s = Scratch::new("table");
    let inv = Inventory::start(&["--netns", &t.client.name]);
    connect_all(&t, &s, &[("java", 8443)]);
    connect_all(&t, &s, &[("java", 8443)]);
    let table = inv.stop_text();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("PROTO  DESTINATION"), "{table}");
    let row: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains("203.0.113.10:8443"))
        .copied()
        .collect();
    assert_eq!(row.len(), 1, "one line per service: {table}");
    assert!(row[0].starts_with("tcp "), "{table}");
    assert!(row[0].contains(" no "), "not dropped: {table}");
    assert_eq!(
        row[0].matches("java[").count(),
        2,
        "two processes, one service: {table}"
    );
    assert!(table.contains("1 service(s), 2 flow(s)"), "{table}");
}

#[test]
fn bad_input_is_one_line_and_exit_2_never_a_pass() {
    let s = Scratch::new("bad");
    let rules = s.file("hardening.rules", HARDENING);
    let garbage = s.file(
        "garbage.rules",
        "*filter\n-A OUTPUT -p tcp --dport 99999 -j DROP\nCOMMIT\n",
    );
    let bad_nft = s.file(
        "bad.nft",
        "table inet t {\n chain c {\n  tcp dport frobnicate drop\n }\n}\n",
    );
    let not_inventory = s.file("targets.txt", "tcp://203.0.113.10:443\n");
    let broken_inventory = s.file("broken.json", "{\"type\": \"inventory\", \"version\": 1}");
    let future = s.file("future.json", "{\"type\": \"inventory\", \"version\": 2}");
    let host_before = droptrace_tests::sh(&["nft", "list", "ruleset"]).unwrap();
    for args in [
        vec![
            "audit",
            "--ruleset",
            "/nonexistent/rules",
            "--from",
            &not_inventory,
        ],
        vec!["audit", "--ruleset", &garbage, "--from", &not_inventory],
        vec!["audit", "--ruleset", &bad_nft, "--from", &not_inventory],
        vec!["audit", "--ruleset", &rules, "--from", &not_inventory],
        vec!["audit", "--ruleset", &rules, "--from", &broken_inventory],
        vec!["audit", "--ruleset", &rules, "--from", &future],
        vec![
            "audit",
            "--ruleset",
            &rules,
            "--from",
            "/nonexistent/inventory.json",
        ],
        vec![
            "audit",
            "--ruleset",
            &rules,
            "--from",
            &future,
            "--dport",
            "443",
        ],
        vec![
            "audit",
            "--ruleset",
            &rules,
            "--duration",
            "1s",
            "--netns",
            "dt-no-such-ns",
        ],
        vec!["inventory", "--netns", "dt-no-such-ns", "--duration", "1s"],
        vec![
            "inventory",
            "--duration",
            "30s",
            "--write",
            "/nonexistent/dir/inv.json",
        ],
        vec![
            "verify",
            "--duration",
            "1s",
            "--probe-file",
            &broken_inventory,
        ],
    ] {
        let (code, stdout, stderr) = droptrace_output(&args).unwrap();
        assert_eq!(code, 2, "{args:?}: {stdout} {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("droptrace: error:"))
            .collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(
            stdout.is_empty(),
            "{args:?}: an error prints no report: {stdout}"
        );
    }
    // clap's own refusals: no flows given, or both ways at once.
    for args in [
        vec!["audit", "--ruleset", &rules],
        vec![
            "audit",
            "--ruleset",
            &rules,
            "--from",
            &future,
            "--duration",
            "1s",
        ],
    ] {
        let (code, _, stderr) = droptrace_output(&args).unwrap();
        assert_eq!(code, 2, "{args:?}: {stderr}");
    }
    assert_eq!(
        droptrace_tests::sh(&["nft", "list", "ruleset"]).unwrap(),
        host_before,
        "a rejected nft script never reaches the host"
    );
}
