//! A full conntrack table, named as the cause of the drops it makes, in every output.
//!
//! A test binary of its own: `nf_conntrack_max` is one value for every namespace (only
//! the initial one may write it; each namespace counts its own connections against it),
//! so the test lowers it while no other test runs (cargo runs test binaries one after
//! another), leaves the host's namespace room for its own connections, and puts the limit
//! back when it ends, passed or failed.

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use droptrace_tests::{Netns, Watcher, drops, droptrace_bin, packets, summary, watch_text};

const MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
const COUNT: &str = "/proc/sys/net/netfilter/nf_conntrack_count";

/// Sets nf_conntrack_max; the old value comes back on drop.
struct Limit(String);

impl Limit {
    fn set(max: u64) -> Limit {
        let old = std::fs::read_to_string(MAX).expect("nf_conntrack_max");
        std::fs::write(MAX, max.to_string()).expect("write nf_conntrack_max");
        Limit(old.trim().to_string())
    }
}

impl Drop for Limit {
    fn drop(&mut self) {
        let _ = std::fs::write(MAX, &self.0);
    }
}

fn read_u64(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A server that keeps every connection it accepts open. One that closed them would
/// move their conntrack entries to CLOSE_WAIT, which conntrack's garbage collector evicts
/// early once the table is above 95% full (`gc_worker_can_early_drop`,
/// net/netfilter/nf_conntrack_core.c), making room the test says there is not.
fn hold_connections(ns: &Netns, addr: SocketAddr) {
    let listener = ns.run(move || TcpListener::bind(addr)).unwrap().unwrap();
    thread::spawn(move || {
        let held: Vec<TcpStream> = listener.incoming().map_while(Result::ok).collect();
        drop(held);
    });
}

/// Sends `n` datagrams from `ns` to `to`, a new UDP flow that the full table has no
/// room for; returns how many were refused (EPERM: dropped in OUTPUT).
fn refused(ns: &Netns, to: SocketAddr, n: usize) -> usize {
    n - ns.udp_send(to, n).unwrap()
}

#[test]
fn a_full_conntrack_table_is_the_cause_in_watch_top_and_serve() {
    let ns = Netns::new("ctfull");
    let ns = ns.unwrap();
    // A conntrack match turns conntrack on in the namespace. Hardened rulesets drop
    // `INVALID`, which a packet conntrack dropped matches too (it has no connection): its
    // counter, which did not grow, tells that the rule did not drop it.
    ns.exec(&[
        "iptables",
        "-A",
        "OUTPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "INVALID",
        "-j",
        "DROP",
    ])
    .unwrap();
    ns.exec(&[
        "iptables",
        "-A",
        "OUTPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "ACCEPT",
    ])
    .unwrap();
    let server: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    hold_connections(&ns, server);
    let datagrams: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    // Room for the host's own connections while the limit is low.
    let max = read_u64(COUNT) + 100;
    let _limit = Limit::set(max);
    // Fill the namespace's table with connections through their handshake: conntrack's
    // early drop makes room only by evicting connections that are not (assured).
    let held = ns
        .run(move || {
            (0..max)
                .map_while(|_| TcpStream::connect(server).ok())
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert_eq!(held.len() as u64, max, "the table holds nf_conntrack_max");
    let count = ns.exec(&["cat", COUNT]).unwrap();
    assert_eq!(count.trim(), max.to_string());

    // watch, JSON: each refused datagram is a drop no rule made, caused by the table.
    let before = ns.conntrack_stat("drop").unwrap();
    let w = Watcher::start(&["watch", "--netns", &ns.name]).unwrap();
    assert_eq!(refused(&ns, datagrams, 3), 3);
    thread::sleep(Duration::from_millis(1500));
    let lines = w.stop().unwrap();
    let dropped = ns.conntrack_stat("drop").unwrap() - before;
    assert_eq!(
        dropped, 3,
        "the kernel's count of packets conntrack dropped"
    );
    let d = drops(&lines);
    assert_eq!(packets(&d), dropped, "{d:?}");
    for l in &d {
        assert_eq!(l["hook"], "OUTPUT", "{l}");
        assert_eq!(l["rule"], serde_json::Value::Null, "{l}");
        assert_eq!(l["cause"]["name"], "conntrack_table_full", "{l}");
        assert_eq!(l["cause"]["certain"], true, "{l}");
        let title = l["cause"]["title"].as_str().unwrap();
        assert!(
            title.contains(&format!("{max} of nf_conntrack_max {max}")),
            "{title}"
        );
    }
    let rules = summary(&lines)["rules"].as_array().unwrap().clone();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0]["rule"], "(no rule: conntrack table full)");
    assert_eq!(rules[0]["cause"], "conntrack_table_full");

    // watch, text: the line and the summary say it.
    let text = watch_text(&["watch", "--netns", &ns.name, "--duration", "4s"], || {
        assert_eq!(refused(&ns, datagrams, 2), 2, "the table is still full");
    });
    assert!(
        text.contains(&format!(
            "[no rule: conntrack table full ({max} of nf_conntrack_max {max}"
        )),
        "{text}"
    );
    assert!(text.contains("(no rule: conntrack table full)"), "{text}");

    // top: the rule column.
    let text = watch_text(&["top", "--netns", &ns.name, "--duration", "4s"], || {
        assert_eq!(refused(&ns, datagrams, 2), 2, "the table is still full");
    });
    let last_table = text.rsplit("DROPS/S").next().unwrap();
    assert!(
        last_table.contains("(no rule: conntrack table full)"),
        "{text}"
    );

    // serve: a `cause` label on the drops' series.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut serve = Command::new(droptrace_bin())
        .args(["serve", "--listen", &listen, "--netns", &ns.name])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(serve.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 && !line.contains("serving http") {
        line.clear();
    }
    assert_eq!(refused(&ns, datagrams, 2), 2, "the table is still full");
    let deadline = Instant::now() + Duration::from_secs(20);
    let series = loop {
        let body = ureq::get(&format!("http://{listen}/metrics"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        let series: Vec<String> = body
            .lines()
            .filter(|l| l.starts_with("droptrace_drops_total{") && l.contains(&ns.name))
            .map(str::to_string)
            .collect();
        if series.iter().any(|s| s.ends_with(" 2")) || Instant::now() > deadline {
            break series;
        }
        thread::sleep(Duration::from_millis(250));
    };
    let _ = serve.kill();
    let _ = serve.wait();
    assert_eq!(series.len(), 1, "{series:?}");
    assert!(
        series[0].contains(r#"cause="conntrack_table_full""#) && series[0].ends_with(" 2"),
        "{series:?}"
    );
    drop(held);
}
