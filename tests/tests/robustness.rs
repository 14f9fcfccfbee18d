//! Faults and hostile input: droptrace must not hurt the host or lie to the engineer.

use std::{
    os::unix::fs::symlink,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use droptrace_tests::{
    Netns, Topology, Watcher, drops, droptrace_bin, droptrace_output, lasting_orphans, packets,
    summary, watch_text,
};
use serde_json::Value;

#[test]
fn kill_9_at_any_moment_leaves_no_program_behind() {
    // From "still loading" to "capturing", with and without the attempt programs.
    for (delay_ms, attempts) in [0, 5, 20, 60, 150, 400, 1000]
        .into_iter()
        .flat_map(|d| [(d, false), (d, true)])
    {
        let mut child = Command::new(droptrace_bin())
            .args(["watch", "--json", "--dport", "1"])
            .args(attempts.then_some("--attempts"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    // Program teardown happens when the last fd closes, right after the exit.
    assert_eq!(
        lasting_orphans(Duration::from_secs(10)),
        Vec::<Value>::new()
    );
    assert!(
        std::fs::read_dir("/sys/fs/bpf").map_or(true, |d| d.count() == 0),
        "nothing pinned"
    );
}

#[test]
fn a_process_named_with_escape_sequences_cannot_touch_the_terminal() {
    let t = Topology::new().unwrap();
    t.client
        .exec(&[
            "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "5044", "-j", "DROP",
        ])
        .unwrap();
    // The kernel names a process after the file it executed: a symlink to bash whose name
    // clears the screen and sets the window title.
    let dir = std::env::temp_dir().join(format!("dt-evil-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let evil = dir.join("\x1b[2J\x1b]0;x\x07ev");
    symlink("/bin/bash", &evil).unwrap();
    let send = || {
        Command::new("ip")
            .args(["netns", "exec", &t.client.name])
            .arg(&evil)
            .args(["-c", "echo x > /dev/udp/203.0.113.10/5044"])
            .stderr(Stdio::null())
            .status()
            .unwrap();
    };

    // Text output: escaped.
    let text = watch_text(
        &["watch", "--netns", &t.client.name, "--duration", "3s"],
        send,
    );
    assert!(text.contains("\\x1b[2J\\x1b]0;x\\x07ev["), "{text}");
    assert!(
        !text.contains('\x1b') && !text.contains('\x07'),
        "raw control characters reached stdout"
    );

    // JSON output: the real name, validly encoded.
    let w = Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    send();
    let lines = w.stop().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(drops(&lines)[0]["comm"], "\x1b[2J\x1b]0;x\x07ev");
}

#[test]
fn two_instances_at_once_each_see_everything() {
    let t = Topology::new().unwrap();
    t.client
        .exec(&[
            "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "9090", "-j", "DROP",
        ])
        .unwrap();
    let a = Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    let b = Watcher::start(&["watch", "--netns", &t.client.name, "--no-rules"]).unwrap();
    t.client.udp_send(t.gateway_addr(9090), 50).unwrap();
    let (la, lb) = (a.stop().unwrap(), b.stop().unwrap());
    assert_eq!(summary(&la)["total"], 50);
    assert_eq!(summary(&lb)["total"], 50);
    assert_eq!(packets(&drops(&la)), 50);
}

#[test]
fn a_ruleset_change_mid_capture_is_followed_or_stated() {
    let t = Topology::new().unwrap();
    t.client
        .exec(&[
            "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "5044", "-j", "DROP",
        ])
        .unwrap();
    let w = Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    t.client.udp_send(t.gateway_addr(5044), 5).unwrap();
    thread::sleep(Duration::from_millis(2500));
    // A new rule now drops the same traffic, before the old one.
    t.client
        .exec(&[
            "iptables",
            "-I",
            "OUTPUT",
            "1",
            "-p",
            "udp",
            "--dport",
            "5044",
            "-m",
            "comment",
            "--comment",
            "new",
            "-j",
            "DROP",
        ])
        .unwrap();
    // A fresh flow (new source port) at once, before or after droptrace re-reads the
    // ruleset (whichever comes first on this machine), and one after it surely has.
    t.client.udp_send(t.gateway_addr(5044), 3).unwrap();
    thread::sleep(Duration::from_millis(2500));
    t.client.udp_send(t.gateway_addr(5044), 2).unwrap();
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert_eq!(packets(&d), 10);
    let first = d[0];
    assert_eq!(first["rule_num"], 1);
    assert_eq!(first["attribution"], "exact", "{first}");
    assert!(!first["rule"].as_str().unwrap().contains("new"), "{first}");
    // Every drop after the insertion is the new rule's, confirmed by its counter, which
    // started at 0 when it was inserted.
    let after: Vec<_> = d
        .iter()
        .skip_while(|v| v["sport"] == first["sport"])
        .collect();
    assert_eq!(
        after
            .iter()
            .map(|v| v["count"].as_u64().unwrap())
            .sum::<u64>(),
        5
    );
    for v in after {
        assert!(v["rule"].as_str().unwrap().contains("new"), "{v}");
        assert_eq!(v["attribution"], "exact", "{v}");
    }
    // An exact line says what confirmed it.
    for v in d.iter().filter(|v| v["attribution"] == "exact") {
        let why = v["why"].as_str().unwrap();
        assert!(
            why.contains("counter grew by") || why.contains("kernel confirmed"),
            "{v}"
        );
    }
}

/// In a capture of every namespace, a namespace's first drop is confirmed by its rule's
/// counter like the next ones: its ruleset was read before that drop, while the program
/// loaded for a namespace that was there, within seconds for one made during the capture.
#[test]
fn each_namespaces_first_drop_is_exact_when_watching_them_all() {
    let with_rule = |tag: &str| {
        let ns = Netns::new(tag).unwrap();
        ns.exec(&["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"])
            .unwrap();
        ns.exec(&[
            "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "6557", "-j", "DROP",
        ])
        .unwrap();
        ns
    };
    let there = with_rule("there");
    // Scoped to a port no other test uses; every namespace, as by default.
    let w = Watcher::start(&["watch", "--dport", "6557"]).unwrap();
    there
        .udp_send("192.0.2.1:6557".parse().unwrap(), 2)
        .unwrap();
    let made = with_rule("made");
    // New namespaces are looked for every 2 s.
    thread::sleep(Duration::from_secs(5));
    made.udp_send("192.0.2.1:6557".parse().unwrap(), 3).unwrap();
    thread::sleep(Duration::from_millis(1500));
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert_eq!(packets(&d), 5);
    for ns in [&there, &made] {
        let first = d
            .iter()
            .find(|v| v["netns_name"] == ns.name.as_str())
            .unwrap_or_else(|| panic!("no drop of {}: {d:?}", ns.name));
        assert_eq!(first["attribution"], "exact", "{first}");
    }
}

#[test]
fn a_namespace_that_vanishes_mid_capture_degrades_with_a_reason() {
    // Watch every namespace, scoped to a port no other test uses.
    let w = Watcher::start(&["watch", "--netns", "all", "--dport", "6553"]).unwrap();
    {
        let ns = Netns::new("gone").unwrap();
        ns.exec(&["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"])
            .unwrap();
        ns.exec(&[
            "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "6553", "-j", "DROP",
        ])
        .unwrap();
        ns.udp_send("192.0.2.1:6553".parse().unwrap(), 4).unwrap();
    } // deleted here, before droptrace reads its ruleset again
    thread::sleep(Duration::from_millis(1500));
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert_eq!(packets(&d), 4, "capture goes on and counts stay exact");
    for v in &d {
        let why = v["why"].as_str().unwrap();
        assert!(
            why.contains("gone") || why.contains("cannot"),
            "why must say the namespace could not be read: {v}"
        );
        assert_ne!(
            v["attribution"], "exact",
            "a rule that cannot be re-read cannot be confirmed: {v}"
        );
    }
}

/// Input that used to panic or pass silently: a duration past its documented maximum (every
/// subcommand that takes one), a regular file given as a namespace, and filters that no
/// packet can match. Each is one line on stderr and exit 2, never a panic.
#[test]
fn bad_input_is_one_line_and_exit_2_never_a_panic() {
    let huge = "18446744073709551615s";
    let cases: Vec<Vec<&str>> = vec![
        vec!["watch", "--duration", huge],
        vec!["top", "--duration", huge],
        vec!["verify", "--duration", huge],
        vec!["verify", "--probe-timeout", huge],
        vec!["verify", "--probe-timeout", "6m"],
        vec!["inventory", "--duration", huge],
        vec!["audit", "--duration", huge],
        vec!["serve", "--keep-drops", huge],
        vec!["watch", "--duration", "32d"],
        vec!["watch", "--netns", "/etc/passwd", "--duration", "1s"],
        vec![
            "verify",
            "--netns",
            "/etc/passwd",
            "--passive",
            "--duration",
            "1s",
        ],
        vec!["watch", "--netns", "/proc/self/ns/mnt", "--duration", "1s"],
        vec![
            "watch",
            "--proto",
            "icmp",
            "--dport",
            "80",
            "--duration",
            "1s",
        ],
        vec![
            "top",
            "--proto",
            "icmp",
            "--sport",
            "80",
            "--duration",
            "1s",
        ],
        vec![
            "verify",
            "--proto",
            "icmp",
            "--dport",
            "80",
            "--passive",
            "--duration",
            "1s",
        ],
    ];
    for args in cases {
        let (code, stdout, stderr) = droptrace_output(&args).unwrap();
        assert_eq!(code, 2, "{args:?}: {stdout} {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            stderr.lines().next().is_some_and(|l| l.contains("error")),
            "{args:?}: the first line says what is wrong: {stderr}"
        );
    }
    let (_, _, stderr) = droptrace_output(&["watch", "--netns", "/etc/passwd"]).unwrap();
    assert!(stderr.contains("is not a network namespace"), "{stderr}");
}

/// A namespace droptrace may not open is reported with the kernel's reason (permission
/// denied), not as missing.
#[test]
fn an_unreadable_namespace_says_why() {
    // As nobody, /proc/1/ns/net cannot be opened. A copy of the binary any user can run.
    let copy = std::env::temp_dir().join(format!("dt-{}-nobody", std::process::id()));
    std::fs::copy(droptrace_bin(), &copy).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&copy)
        .args(["watch", "--netns", "host", "--duration", "1s"])
        .output()
        .unwrap();
    std::fs::remove_file(&copy).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(!stderr.contains("does not exist"), "{stderr}");
}
