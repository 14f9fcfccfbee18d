//! Attribution on the rulesets real front-ends write, with the kernel's counters as the oracle.
//!
//! Each test loads a ruleset written by a front-end (ufw run from Debian's package, or rules
//! taken from kube-proxy's, Docker's and fail2ban's own repositories: see tests/corpus/),
//! sends traffic that hits its kinds of drops (rules in user chains, REJECTs, policies, a
//! rate limit) and compares, rule by rule, what droptrace named with what the kernel counted:
//! every rule whose counter grew by dropping packets is named, with the sum of `count` equal
//! to the counter's growth, and nothing else is named.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    thread,
    time::Duration,
};

use droptrace_tests::{
    CLIENT_V4, CLIENT_V6, GATEWAY_V4, GATEWAY_V6, Netns, Topology, Watcher, drops,
    droptrace_output, sh,
};
use serde_json::Value;

const SHORT: Duration = Duration::from_millis(400);

fn corpus(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Where a verdict was counted: a rule (by number in its chain) or a chain's policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    family: u8,
    table: String,
    chain: String,
    rule: Option<u64>,
}

/// The packet counters of one iptables backend in a namespace, both families, as
/// `iptables-save -c` prints them, with each rule's text.
#[derive(Debug, Default)]
struct Counters {
    counted: BTreeMap<Place, (u64, String)>,
}

fn counters(ns: &Netns, backend: &str) -> Counters {
    let mut c = Counters::default();
    for (family, tool) in [(4, "iptables"), (6, "ip6tables")] {
        let save = ns.exec(&[&format!("{tool}-{backend}-save"), "-c"]).unwrap();
        let (mut table, mut numbers) = (String::new(), BTreeMap::<String, u64>::new());
        for line in save.lines() {
            if let Some(name) = line.strip_prefix('*') {
                table = name.to_string();
                numbers.clear();
            } else if let Some(chain) = line.strip_prefix(':') {
                // `:INPUT DROP [3:180]`; user chains have `-` and no counter of their own.
                let words: Vec<&str> = chain.split_whitespace().collect();
                if let [name, policy, counts] = words.as_slice()
                    && *policy != "-"
                {
                    let place = Place {
                        family,
                        table: table.clone(),
                        chain: name.to_string(),
                        rule: None,
                    };
                    c.counted
                        .insert(place, (packets_of(counts), format!("policy {policy}")));
                }
            } else if let Some((counts, rule)) = line.split_once("] -A ") {
                let chain = rule.split_whitespace().next().unwrap().to_string();
                let number = numbers.entry(chain.clone()).or_default();
                *number += 1;
                let place = Place {
                    family,
                    table: table.clone(),
                    chain,
                    rule: Some(*number),
                };
                c.counted
                    .insert(place, (packets_of(counts), format!("-A {rule}")));
            }
        }
    }
    c
}

fn packets_of(counts: &str) -> u64 {
    counts
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(':')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("counter {counts:?}"))
}

/// What dropped packets between two reads: DROP and REJECT rules and DROP policies whose
/// counters grew, with the growth.
fn dropped_between(before: &Counters, after: &Counters) -> BTreeMap<Place, u64> {
    after
        .counted
        .iter()
        .filter(|(_, (_, text))| {
            text.ends_with("-j DROP") || text.contains("-j REJECT") || text == "policy DROP"
        })
        .filter_map(|(place, (n, text))| {
            let was = before
                .counted
                .get(place)
                .filter(|(_, t)| t == text)
                .map_or(0, |(b, _)| *b);
            (*n > was).then(|| (place.clone(), n - was))
        })
        .collect()
}

/// What droptrace named, per place, checking each line's rule text against the kernel's.
fn named(lines: &[Value], backend: &str, kernel: &Counters) -> BTreeMap<Place, u64> {
    let mut out = BTreeMap::new();
    for d in drops(lines) {
        let family = if d["dst"].as_str().unwrap_or("").contains(':') {
            6
        } else {
            4
        };
        let place = Place {
            family,
            table: d["table"].as_str().unwrap_or("?").to_string(),
            chain: d["chain"].as_str().unwrap_or("?").to_string(),
            rule: d["rule_num"].as_u64(),
        };
        assert_eq!(d["backend"], backend, "{d}");
        assert_eq!(d["attribution"], "exact", "{d}");
        if place.rule.is_some() {
            let (_, text) = kernel
                .counted
                .get(&place)
                .unwrap_or_else(|| panic!("no such rule in the kernel: {d}"));
            assert_eq!(d["rule"], text.as_str(), "{d}");
        } else {
            assert_eq!(d["verdict"], "policy", "{d}");
        }
        *out.entry(place).or_default() += d["count"].as_u64().unwrap();
    }
    out
}

/// Runs `traffic` under droptrace watching `ns`, and checks droptrace's account of the drops
/// against the kernel's counters; returns the drop lines and the rules that dropped.
fn check(ns: &Netns, backend: &str, traffic: impl FnOnce()) -> (Vec<Value>, Vec<Place>) {
    let w = Watcher::start(&["watch", "--netns", &ns.name]).unwrap();
    check_with(w, ns, backend, traffic)
}

/// [`check`] with a watcher already started.
fn check_with(
    w: Watcher,
    ns: &Netns,
    backend: &str,
    traffic: impl FnOnce(),
) -> (Vec<Value>, Vec<Place>) {
    let before = counters(ns, backend);
    traffic();
    // Late retransmissions and ICMP errors land before the counters are read.
    thread::sleep(SHORT);
    let after = counters(ns, backend);
    let lines = w.stop().unwrap();
    let want = dropped_between(&before, &after);
    let got = named(&lines, &format!("iptables-{backend}"), &after);
    assert_eq!(
        got,
        want,
        "droptrace (left) and the kernel's counters (right) disagree; lines: {:#?}",
        drops(&lines)
    );
    let places = want.into_keys().collect();
    (lines, places)
}

/// Every (front-end, object) the drop lines name as the rule's owner.
fn owners(lines: &[Value]) -> std::collections::BTreeSet<(String, String)> {
    drops(lines)
        .iter()
        .map(|d| {
            (
                d["owner"]["tool"].as_str().unwrap_or("none").to_string(),
                d["owner"]["object"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn owned(pairs: &[(&str, &str)]) -> std::collections::BTreeSet<(String, String)> {
    pairs
        .iter()
        .map(|(t, o)| (t.to_string(), o.to_string()))
        .collect()
}

fn rule(family: u8, chain: &str, number: u64) -> Place {
    Place {
        family,
        table: "filter".into(),
        chain: chain.into(),
        rule: Some(number),
    }
}

fn policy(family: u8, chain: &str) -> Place {
    Place {
        family,
        table: "filter".into(),
        chain: chain.into(),
        rule: None,
    }
}

fn connect(ns: &Netns, to: SocketAddr) -> bool {
    ns.tcp_connect(to, SHORT).unwrap()
}

/// The number of the one rule of `chain` (family 4 or 6) whose text contains `needle`.
fn number_of(ns: &Netns, backend: &str, family: u8, chain: &str, needle: &str) -> u64 {
    let c = counters(ns, backend);
    let found: Vec<u64> = c
        .counted
        .iter()
        .filter(|(p, (_, text))| p.family == family && p.chain == chain && text.contains(needle))
        .filter_map(|(p, _)| p.rule)
        .collect();
    assert_eq!(found.len(), 1, "{needle:?} in {chain}: {found:?}");
    found[0]
}

/// `droptrace explain` for a packet arriving at `ns` on `iif`: (exit code, JSON report).
fn explain_input(ns: &Netns, iif: &str, src: &str, dst: &str, dport: u16) -> (i32, Value) {
    let port = dport.to_string();
    let (code, out, err) = droptrace_output(&[
        "explain", "--netns", &ns.name, "--hook", "input", "--iif", iif, "--proto", "tcp", "--src",
        src, "--dst", dst, "--dport", &port, "--json",
    ])
    .unwrap();
    let report = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    (code, report)
}

/// The gateway's end of the topology's veth pair (`dtg<N>`).
fn gateway_if(t: &Topology) -> String {
    t.gateway
        .exec(&["ip", "-o", "link", "show"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .find(|n| n.starts_with("dtg"))
        .expect("gateway veth")
}

/// Runs each command (words split at spaces) inside `ns`.
fn exec_each(ns: &Netns, commands: &[&str]) {
    for c in commands {
        let args: Vec<&str> = c.split_whitespace().collect();
        ns.exec(&args).unwrap_or_else(|e| panic!("{c}: {e}"));
    }
}

/// The client's route to `net` (a container or VM network on the gateway) via the gateway.
fn routed_via_gateway(t: &Topology, net: &str) {
    t.client
        .exec(&["ip", "route", "add", net, "via", GATEWAY_V4])
        .unwrap();
}

/// Loads a corpus file with `tool` (an iptables-restore) inside `ns`.
fn restore(ns: &Netns, tool: &str, file: &str) {
    restore_text(ns, tool, corpus(file));
}

/// Loads `rules` with `tool` (an iptables-restore) inside `ns`.
fn restore_text(ns: &Netns, tool: &str, rules: String) {
    let tool = tool.to_string();
    ns.run(move || {
        use std::io::Write as _;
        let mut child = std::process::Command::new(&tool)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "{tool} failed");
    })
    .unwrap();
}

// ufw, Ubuntu's default firewall.

/// Runs `setup` (shell commands, with `file` as `$1`) inside `ns`, then droptrace watching
/// `ns`, both in a mount namespace of their own with tmpfs over /run and a private copy of
/// /etc/ufw: a front-end's state files (ufw's rules, libvirtd's network status) are
/// written there, and droptrace reads them, while the host's files stay as they were.
/// /run/netns is hidden there: droptrace is given the namespace by its shell's /proc entry.
fn watch_in_private_mounts(ns: &Netns, setup: &str, file: &std::path::Path) -> Watcher {
    let script = format!(
        "set -e; mount --make-rprivate /; mount -t tmpfs droptrace-test /run; \
         mkdir /run/etc-ufw; cp -a /etc/ufw/. /run/etc-ufw/; mount --bind /run/etc-ufw /etc/ufw; \
         {setup}; exec \"$0\" watch --netns /proc/$$/ns/net --json"
    );
    let mut command = std::process::Command::new("nsenter");
    command
        .arg(format!("--net={}", ns.path().display()))
        .args(["unshare", "-m", "sh", "-c", &script])
        .arg(droptrace_tests::droptrace_bin())
        .arg(file);
    Watcher::spawn(command, |_| {}).unwrap_or_else(|e| panic!("{setup}: {e}"))
}

/// A file for [`watch_in_private_mounts`]'s `$1`, unique to this test.
fn private_file(ns: &Netns, what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("dt-{what}-{}-{}", std::process::id(), ns.name))
}

/// Runs ufw from Debian's package inside `ns` (what ufw loads lives and dies with the
/// test's namespace), then droptrace watching `ns`, which reads the rules files this ufw
/// wrote. Returns the watcher and what `ufw status numbered` printed then, by number.
fn ufw_then_watch(ns: &Netns, commands: &[&str]) -> (Watcher, BTreeMap<u32, String>) {
    let status = private_file(ns, "ufw-status");
    let mut setup: Vec<String> = commands
        .iter()
        .map(|c| format!("ufw {c} >/dev/null"))
        .collect();
    setup.push("ufw status numbered > \"$1\"".into());
    let w = watch_in_private_mounts(ns, &setup.join("; "), &status);
    let text = std::fs::read_to_string(&status).unwrap();
    std::fs::remove_file(&status).unwrap();
    // `[ 2] 8081/tcp                   REJECT IN   Anywhere`
    let numbered = text
        .lines()
        .filter_map(|l| {
            let (n, rule) = l.trim().strip_prefix('[')?.split_once(']')?;
            let rule: Vec<&str> = rule.split_whitespace().collect();
            Some((n.trim().parse().ok()?, rule.join(" ")))
        })
        .collect();
    (w, numbered)
}

#[test]
fn ufw_input_policy_reject_limit_and_output_deny_name_the_rules_the_kernel_counted() {
    let t = Topology::new().unwrap();
    t.gateway.tcp_listen(t.gateway_addr(22)).unwrap();
    t.gateway.tcp_listen(t.gateway_addr(80)).unwrap();
    let (w, numbered) = ufw_then_watch(
        &t.gateway,
        &[
            "--force enable",
            "limit 22/tcp",
            "reject 8081/tcp",
            "allow 80/tcp",
            "deny out 9100/tcp",
        ],
    );
    let (lines, places) = check_with(w, &t.gateway, "nft", || {
        assert!(connect(&t.client, t.gateway_addr(80)));
        // Not allowed: INPUT's policy, past ufw-not-local's `--dst-type LOCAL -j RETURN`.
        assert!(!connect(&t.client, t.gateway_addr(8080)));
        assert!(!connect(&t.client, t.gateway_addr6(8080)));
        // `ufw reject`: a REJECT in ufw-user-input.
        assert!(!connect(&t.client, t.gateway_addr(8081)));
        // `ufw limit`: the 6th new connection within 30 s goes to ufw-user-limit's REJECT.
        let made = (0..8)
            .filter(|_| connect(&t.client, t.gateway_addr(22)))
            .count();
        assert_eq!(made, 5);
        // `ufw deny out`: the gateway's own connection dropped in ufw-user-output.
        let client = SocketAddr::new(CLIENT_V4.parse().unwrap(), 9100);
        assert!(!connect(&t.gateway, client));
    });
    let reject = number_of(&t.gateway, "nft", 4, "ufw-user-input", "--dport 8081");
    let limit = number_of(&t.gateway, "nft", 4, "ufw-user-limit", "-j REJECT");
    let out = number_of(&t.gateway, "nft", 4, "ufw-user-output", "--dport 9100");
    for want in [
        policy(4, "INPUT"),
        policy(6, "INPUT"),
        rule(4, "ufw-user-input", reject),
        rule(4, "ufw-user-limit", limit),
        rule(4, "ufw-user-output", out),
    ] {
        assert!(places.contains(&want), "{want:?} not in {places:?}");
    }
    let to_22: u64 = drops(&lines)
        .iter()
        .filter(|d| d["dport"] == 22)
        .map(|d| d["count"].as_u64().unwrap())
        .sum();
    assert!(to_22 >= 3, "{lines:?}");
    // Each rule as `ufw status numbered` shows it (the limit's REJECT as the one `ufw
    // limit` rule that jumps there), read from the rules files this ufw wrote; ufw's own
    // listing is the oracle.
    for (_, object) in owners(&lines) {
        if let Some((n, rule)) = object
            .strip_prefix("rule ")
            .and_then(|o| o.split_once(": "))
        {
            assert_eq!(
                numbered.get(&n.parse().unwrap()).map(String::as_str),
                Some(rule),
                "{numbered:#?}"
            );
        }
    }
    assert_eq!(
        owners(&lines),
        owned(&[
            ("ufw", "rule 1: 22/tcp LIMIT IN Anywhere"),
            ("ufw", "rule 2: 8081/tcp REJECT IN Anywhere"),
            ("ufw", "rule 4: 9100/tcp DENY OUT Anywhere (out)"),
            ("ufw", "default policy")
        ])
    );
    for d in drops(&lines) {
        assert_eq!(d["owner"]["show"], "ufw status numbered", "{d}");
    }
    // explain agrees with the kernel: INPUT's policy for a port ufw does not allow, with
    // ufw-not-local's addrtype RETURN decided from the gateway's own address.
    let (code, report) = explain_input(&t.gateway, &gateway_if(&t), CLIENT_V4, GATEWAY_V4, 8080);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["outcome"], "drop", "{report:#}");
    assert!(report.to_string().contains("policy"), "{report:#}");
}

/// ufw's `limit` is built on xt_recent lists: `--set` stamps each new connection's source,
/// `--update --seconds 30 --hitcount 6` sends the sixth within 30 s to ufw-user-limit's
/// REJECT. explain reads the lists with the kernel's clock: asked before each connection,
/// it answers what the kernel then does with it (five accepted, then rejected), never
/// unsure.
#[test]
fn explain_reads_ufws_limit_lists_as_the_kernel_does() {
    let t = Topology::new().unwrap();
    t.gateway.tcp_listen(t.gateway_addr(22)).unwrap();
    let (w, _) = ufw_then_watch(&t.gateway, &["--force enable", "limit 22/tcp"]);
    w.stop().unwrap();
    let dev = gateway_if(&t);
    let mut fates = Vec::new();
    for _ in 0..7 {
        let (code, report) = explain_input(&t.gateway, &dev, CLIENT_V4, GATEWAY_V4, 22);
        let kernel = fate(&t.client, t.gateway_addr(22));
        assert_eq!(report["outcome"], kernel, "{report:#}");
        assert_eq!(code, if kernel == "accept" { 0 } else { 1 }, "{report:#}");
        if kernel == "reject" {
            assert_eq!(report["chain"], "ufw-user-limit", "{report:#}");
        }
        fates.push(kernel);
    }
    assert_eq!(
        fates,
        [
            "accept", "accept", "accept", "accept", "accept", "reject", "reject"
        ]
    );
}

// kube-proxy, on both iptables backends.

fn kube_proxy(backend: &str) {
    let t = Topology::new().unwrap();
    restore(
        &t.gateway,
        &format!("iptables-{backend}-restore"),
        "kube-proxy.iptables",
    );
    // The gateway reaches the Service's cluster IP through the veth.
    let dev = gateway_if(&t);
    t.gateway
        .exec(&["ip", "route", "add", "172.30.0.46/32", "dev", &dev])
        .unwrap();
    let (lines, places) = check(&t.gateway, backend, || {
        // A NodePort whose Service has no endpoint on this node: KUBE-EXTERNAL-SERVICES'
        // `-m addrtype --dst-type LOCAL ... --dport 3001 -j DROP`.
        assert!(!connect(&t.client, t.gateway_addr(3001)));
        // A Service without endpoints, from the node itself: KUBE-SERVICES' REJECT.
        let cluster_ip = SocketAddr::new("172.30.0.46".parse::<IpAddr>().unwrap(), 80);
        assert!(!connect(&t.gateway, cluster_ip));
    });
    assert_eq!(
        places,
        [
            rule(4, "KUBE-EXTERNAL-SERVICES", 3),
            rule(4, "KUBE-SERVICES", 1),
        ]
    );
    assert_eq!(
        owners(&lines),
        owned(&[
            ("kube-proxy", "ns2/svc2:p80"),
            ("kube-proxy", "ns6/svc6:p80")
        ])
    );
    // Why kube-proxy wrote each rule, and where to look in Kubernetes.
    for d in drops(&lines) {
        let (reason, ns, svc) = match d["owner"]["object"].as_str().unwrap() {
            "ns2/svc2:p80" => ("has no local endpoints", "ns2", "svc2"),
            _ => ("has no endpoints", "ns6", "svc6"),
        };
        assert_eq!(d["owner"]["reason"], reason, "{d}");
        assert!(
            d["owner"]["show"]
                .as_str()
                .unwrap()
                .starts_with(&format!("kubectl -n {ns} get service {svc} -o wide")),
            "{d}"
        );
    }
    // `explain` decides the NodePort drop from the namespace's local addresses, as the
    // kernel did, instead of answering accept or unsure past the addrtype match.
    let (code, report) = explain_input(&t.gateway, &dev, CLIENT_V4, GATEWAY_V4, 3001);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["outcome"], "drop", "{report:#}");
    let text = report.to_string();
    assert!(
        text.contains("--dst-type LOCAL -m tcp --dport 3001 -j DROP"),
        "{report:#}"
    );
    // The same port on an address that is not the node's own is not a NodePort.
    let (code, report) = explain_input(&t.gateway, &dev, CLIENT_V4, "10.99.0.1", 3001);
    assert_eq!(code, 0, "{report:#}");
}

#[test]
fn kube_proxy_nodeport_without_endpoints_and_rejected_service_iptables_nft() {
    kube_proxy("nft");
}

#[test]
fn kube_proxy_nodeport_without_endpoints_and_rejected_service_iptables_legacy() {
    kube_proxy("legacy");
}

// Docker: routed traffic through a namespace acting as the Docker host.

#[test]
fn docker_internal_network_isolation_drops_in_forward_are_named() {
    let container = Netns::new("ctr").unwrap();
    let host = Netns::new("dockerhost").unwrap();
    let outside = Netns::new("outside").unwrap();
    let link = |a: &Netns, a_dev: &str, b: &Netns, b_dev: &str| {
        sh(&[
            "ip", "link", "add", a_dev, "netns", &a.name, "type", "veth", "peer", b_dev, "netns",
            &b.name,
        ])
        .unwrap();
    };
    link(&container, "eth0", &host, "bridge1");
    link(&host, "uplink0", &outside, "eth0");
    exec_each(
        &container,
        &[
            "ip addr add 192.0.2.2/24 dev eth0",
            "ip link set eth0 up",
            "ip route add default via 192.0.2.1",
        ],
    );
    exec_each(
        &host,
        &[
            "ip addr add 192.0.2.1/24 dev bridge1",
            "ip link set bridge1 up",
            "ip addr add 198.51.100.1/24 dev uplink0",
            "ip link set uplink0 up",
            "sysctl -qw net.ipv4.ip_forward=1",
            // The set Docker keeps of its bridges with external access (docker0's here).
            "ipset create docker-ext-bridges-v4 hash:net",
            "ipset add docker-ext-bridges-v4 172.17.0.0/16",
        ],
    );
    exec_each(
        &outside,
        &[
            "ip addr add 198.51.100.2/24 dev eth0",
            "ip link set eth0 up",
            "ip route add 192.0.2.0/24 via 198.51.100.1",
        ],
    );
    restore(&host, "iptables-nft-restore", "docker-internal.iptables");
    let (lines, places) = check(&host, "nft", || {
        // Out of the internal network, and into it from outside.
        let out = SocketAddr::new("198.51.100.2".parse().unwrap(), 443);
        assert_eq!(container.udp_send(out, 3).unwrap(), 3);
        let inward = SocketAddr::new("192.0.2.2".parse().unwrap(), 8080);
        assert_eq!(outside.udp_send(inward, 2).unwrap(), 2);
    });
    assert_eq!(
        places,
        [
            rule(4, "DOCKER-ISOLATION-STAGE-1", 1),
            rule(4, "DOCKER-ISOLATION-STAGE-1", 2),
        ]
    );
    // The network's bridge, and Docker's own view of its networks.
    assert_eq!(owners(&lines), owned(&[("docker", "bridge bridge1")]));
    for d in drops(&lines) {
        assert_eq!(d["owner"]["show"], "docker network ls", "{d}");
    }
}

// fail2ban's ipset action, IPv4 and IPv6.

/// fail2ban's sshd jail on the gateway, with the client's addresses banned.
fn ban_the_client(t: &Topology) {
    ban_the_client_with(t, "fail2ban-sshd.sh");
}

/// [`ban_the_client`] with the fail2ban action expanded in corpus file `action`.
fn ban_the_client_with(t: &Topology, action: &str) {
    let script = corpus(action)
        .replace("{BANNED4}", CLIENT_V4)
        .replace("{BANNED6}", CLIENT_V6);
    for line in script
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let args: Vec<&str> = line.split_whitespace().collect();
        t.gateway
            .exec(&args)
            .unwrap_or_else(|e| panic!("{line}: {e}"));
    }
}

#[test]
fn fail2ban_ipset_bans_are_named_by_family() {
    let t = Topology::new().unwrap();
    ban_the_client(&t);
    t.gateway.tcp_listen(t.gateway_addr(22)).unwrap();
    t.gateway.tcp_listen(t.gateway_addr6(22)).unwrap();
    let (lines, places) = check(&t.gateway, "nft", || {
        assert!(!connect(&t.client, t.gateway_addr(22)));
        assert!(!connect(&t.client, t.gateway_addr6(22)));
    });
    assert_eq!(places, [rule(4, "INPUT", 1), rule(6, "INPUT", 1)]);
    assert_eq!(owners(&lines), owned(&[("fail2ban", "sshd")]));
}

#[test]
fn fail2ban_iptables_multiport_bans_are_named_by_jail() {
    let t = Topology::new().unwrap();
    ban_the_client_with(&t, "fail2ban-sshd-multiport.sh");
    t.gateway.tcp_listen(t.gateway_addr(22)).unwrap();
    t.gateway.tcp_listen(t.gateway_addr6(22)).unwrap();
    let (lines, places) = check(&t.gateway, "nft", || {
        assert!(!connect(&t.client, t.gateway_addr(22)));
        assert!(!connect(&t.client, t.gateway_addr6(22)));
    });
    assert_eq!(places, [rule(4, "f2b-sshd", 1), rule(6, "f2b-sshd", 1)]);
    assert_eq!(owners(&lines), owned(&[("fail2ban", "sshd")]));
}

// fail2ban's nftables action: no counters, so the kernel's trace is the oracle.

#[test]
fn fail2ban_nftables_bans_are_named_by_jail() {
    let t = Topology::new().unwrap();
    let rules = private_file(&t.gateway, "f2b.nft");
    std::fs::write(
        &rules,
        corpus("fail2ban-sshd.nft")
            .replace("{BANNED4}", CLIENT_V4)
            .replace("{BANNED6}", CLIENT_V6),
    )
    .unwrap();
    nft_load(&t.gateway, &rules.display().to_string());
    std::fs::remove_file(&rules).unwrap();
    t.gateway.tcp_listen(t.gateway_addr(22)).unwrap();
    t.gateway.tcp_listen(t.gateway_addr6(22)).unwrap();
    let (lines, trace) = watched_and_traced(&t.gateway, || {
        assert!(!connect(&t.client, t.gateway_addr(22)));
        assert!(!connect(&t.client, t.gateway_addr6(22)));
    });
    let want = traced_drops_in(&trace, "inet f2b-table");
    assert_eq!(want.len(), 2, "one rule per family: {trace}");
    let got = named_by_rule(&lines, ("fail2ban", "sshd", "fail2ban-client status sshd"));
    assert_eq!(got, want, "droptrace (left) and the kernel's trace (right)");
}

// firewalld (nftables backend): no counters, so the kernel's own trace is the oracle.

/// Every packet the kernel's trace saw dropped or rejected in firewalld's table: (chain,
/// rule text) -> packets.
fn traced_drops(trace: &str) -> BTreeMap<(String, String), u64> {
    traced_drops_in(trace, "inet firewalld")
}

/// [`traced_drops`] in `table` ("inet netavark").
fn traced_drops_in(trace: &str, table: &str) -> BTreeMap<(String, String), u64> {
    let (family, name) = table.split_once(' ').unwrap();
    let mut out = BTreeMap::new();
    for line in trace.lines() {
        // trace id 57086619 inet firewalld filter_INPUT rule reject with ... (verdict drop)
        let Some(rest) = line.strip_suffix(" (verdict drop)") else {
            continue;
        };
        let words: Vec<&str> = rest.splitn(7, ' ').collect();
        if let ["trace", "id", _, f, t, chain, rule] = words.as_slice()
            && (*f, *t) == (family, name)
            && let Some(rule) = rule.strip_prefix("rule ")
        {
            let rule = without_counter_values(rule);
            *out.entry((chain.to_string(), rule.to_string()))
                .or_default() += 1;
        }
    }
    out
}

/// A traced rule's text without its counter's values at that moment (`counter packets 0
/// bytes 0 drop` -> `counter drop`), as droptrace names rules.
fn without_counter_values(rule: &str) -> String {
    let words: Vec<&str> = rule.split(' ').collect();
    let mut kept = Vec::new();
    let mut i = 0;
    while i < words.len() {
        kept.push(words[i]);
        if words[i] == "counter" && words.get(i + 1) == Some(&"packets") {
            i += 4;
        }
        i += 1;
    }
    kept.join(" ")
}

/// Loads an nft file inside `ns`.
fn nft_load(ns: &Netns, file: &str) {
    sh(&[
        "nsenter",
        &format!("--net={}", ns.path().display()),
        "nft",
        "-f",
        file,
    ])
    .unwrap_or_else(|e| panic!("{file}: {e}"));
}

/// Runs `traffic` with the kernel tracing every packet and frame `ns` receives or sends
/// (`nft monitor trace`, from the inet and bridge families' prerouting and inet's
/// output), and returns the trace. The trace switch lives in a table of its own: the
/// front-end's stays as it wrote it.
fn traced(ns: &Netns, traffic: impl FnOnce()) -> String {
    let trace_rules =
        std::env::temp_dir().join(format!("dt-trace-{}-{}.nft", std::process::id(), ns.name));
    std::fs::write(
        &trace_rules,
        "table inet droptrace_test_trace {\n\
         \tchain pre {\n\t\ttype filter hook prerouting priority -400; policy accept;\n\t\tmeta nftrace set 1\n\t}\n\
         \tchain out {\n\t\ttype filter hook output priority -400; policy accept;\n\t\tmeta nftrace set 1\n\t}\n}\n\
         table bridge droptrace_test_trace {\n\
         \tchain pre {\n\t\ttype filter hook prerouting priority -400; policy accept;\n\t\tmeta nftrace set 1\n\t}\n}\n",
    )
    .unwrap();
    nft_load(ns, &trace_rules.display().to_string());
    std::fs::remove_file(&trace_rules).unwrap();
    // Killed also when `traffic` panics: the monitor must not outlive the test.
    let mut monitor = Reaped(
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["nft", "monitor", "trace"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    thread::sleep(SHORT);
    traffic();
    thread::sleep(SHORT);
    monitor.0.kill().unwrap();
    let mut trace = String::new();
    {
        use std::io::Read as _;
        monitor
            .0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut trace)
            .unwrap();
    }
    drop(monitor);
    for family in ["inet", "bridge"] {
        sh(&[
            "nsenter",
            &format!("--net={}", ns.path().display()),
            "nft",
            "delete",
            "table",
            family,
            "droptrace_test_trace",
        ])
        .unwrap();
    }
    trace
}

/// Runs `traffic` with droptrace watching `ns`, inside the kernel's trace of `ns` (see
/// [`traced`]): (droptrace's lines, the trace).
fn watched_and_traced(ns: &Netns, traffic: impl FnOnce()) -> (Vec<Value>, String) {
    let mut lines = Vec::new();
    let trace = traced(ns, || {
        let w = Watcher::start(&["watch", "--netns", &ns.name]).unwrap();
        traffic();
        thread::sleep(SHORT);
        lines = w.stop().unwrap();
    });
    (lines, trace)
}

/// The drops `lines` name, as (chain, rule) -> packets, to compare with the trace's
/// ([`traced_drops_in`]); each line must be owned by `owner`: (tool, object, show).
fn named_by_rule(lines: &[Value], owner: (&str, &str, &str)) -> BTreeMap<(String, String), u64> {
    let mut got = BTreeMap::new();
    for d in drops(lines) {
        let (tool, object, show) = owner;
        assert_eq!(d["owner"]["tool"], tool, "{d}");
        assert_eq!(d["owner"]["object"], object, "{d}");
        assert_eq!(d["owner"]["show"], show, "{d}");
        let key = (
            d["chain"].as_str().unwrap().to_string(),
            d["rule"].as_str().unwrap().to_string(),
        );
        *got.entry(key).or_default() += d["count"].as_u64().unwrap();
    }
    got
}

/// A child process killed and reaped when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn corpus_path(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn firewalld_rejects_are_named_as_the_kernels_trace_shows_them() {
    let t = Topology::new().unwrap();
    nft_load(&t.gateway, &corpus_path("firewalld.nft"));
    t.gateway.tcp_listen(t.gateway_addr(9090)).unwrap();
    let (lines, trace) = watched_and_traced(&t.gateway, || {
        // cockpit (9090) is allowed by the public zone; 8080 is not: filter_INPUT's reject.
        assert!(connect(&t.client, t.gateway_addr(9090)));
        assert!(!connect(&t.client, t.gateway_addr(8080)));
        assert!(!connect(&t.client, t.gateway_addr6(8080)));
    });
    let want = traced_drops(&trace);
    assert!(!want.is_empty(), "the trace saw no drop: {trace}");
    for d in drops(&lines) {
        assert_eq!(d["backend"], "nftables", "{d}");
        assert_eq!(d["table"], "firewalld", "{d}");
        assert_eq!(d["table_family"], "inet", "{d}");
        // No counter can confirm it: named by evaluation, and said so.
        assert_eq!(d["attribution"], "inferred", "{d}");
    }
    // The zone the packet was dispatched to (the veth is in no zone: the default,
    // public), and firewall-cmd's view of it.
    let got = named_by_rule(
        &lines,
        (
            "firewalld",
            "zone public",
            "firewall-cmd --zone=public --list-all",
        ),
    );
    assert_eq!(
        got, want,
        "droptrace (left) and the kernel's trace (right); {trace}"
    );
    // explain agrees with the kernel on the same packet.
    let (code, report) = explain_input(&t.gateway, &gateway_if(&t), CLIENT_V4, GATEWAY_V4, 8080);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["outcome"], "reject", "{report:#}");
}

/// The rule the kernel's trace saw reject or drop the one packet it traced to the end.
fn traced_rule(trace: &str) -> (String, String) {
    let drops = traced_drops(trace);
    assert_eq!(drops.len(), 1, "{trace}");
    drops.into_keys().next().unwrap()
}

/// `firewall-cmd --add-forward-port=port=11:proto=tcp:toport=22`, in firewalld's words
/// (src/tests/cli/firewall-cmd.at): firewalld puts it in nat_PRE_public_allow, reached
/// through the dispatch chain.
fn forward_port_11(ns: &Netns) {
    sh(&[
        "nsenter",
        &format!("--net={}", ns.path().display()),
        "nft",
        "add",
        "rule",
        "inet",
        "firewalld",
        "nat_PREROUTING_dispatch",
        "meta nfproto ipv4 tcp dport 11 redirect to :22",
    ])
    .unwrap();
}

#[test]
fn firewalld_ct_status_dnat_is_decided_by_the_nat_rules_there_are() {
    let t = Topology::new().unwrap();
    nft_load(&t.gateway, &corpus_path("firewalld-2.nft"));
    t.gateway.tcp_listen(t.gateway_addr(22)).unwrap();
    let dev = gateway_if(&t);
    // No port is forwarded: no connection can have been translated, so filter_INPUT's
    // `ct status dnat accept` does not match, and explain is sure, as the kernel is.
    let trace = traced(&t.gateway, || {
        assert_eq!(fate(&t.client, t.gateway_addr(8080)), "reject");
    });
    let (chain, rule) = traced_rule(&trace);
    let (code, report) = explain_input(&t.gateway, &dev, CLIENT_V4, GATEWAY_V4, 8080);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["outcome"], "reject", "{report:#}");
    assert_eq!(report["chain"], chain, "{report:#}");
    assert_eq!(report["rule"], rule, "{report:#}");
    assert_eq!(report["owner"]["object"], "zone public", "{report:#}");
    assert_eq!(fate(&t.client, t.gateway_addr(22)), "accept");
    let (code, report) = explain_input(&t.gateway, &dev, CLIENT_V4, GATEWAY_V4, 22);
    assert_eq!(code, 0, "{report:#}");
    // A forwarded port: the kernel accepts port 11 by `ct status dnat`; explain follows
    // the redirect to port 22 and accepts it there, as the kernel does. Port 8080 is
    // still not translated: explain still names the reject.
    forward_port_11(&t.gateway);
    assert_eq!(fate(&t.client, t.gateway_addr(11)), "accept");
    let (code, report) = explain_input(&t.gateway, &dev, CLIENT_V4, GATEWAY_V4, 11);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["outcome"], "accept", "{report:#}");
    assert!(
        report["assumed"]
            .to_string()
            .contains("redirects the connection to port 22"),
        "{report:#}"
    );
    let (code, report) = explain_input(&t.gateway, &dev, CLIENT_V4, GATEWAY_V4, 8080);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["rule"], rule, "{report:#}");
}

// libvirt (nftables backend): its default NAT network, in the words of its own test data.

/// libvirtd's status file for its default network (/run/libvirt/network/default.xml, as
/// `virNetworkObjFormat` writes it: the network's definition, with the bridge libvirt's
/// rules name, inside `<networkstatus>`).
const LIBVIRT_DEFAULT_STATUS: &str = "<networkstatus>
  <class_id bitmap='0-2'/>
  <floor sum='0'/>
  <network>
    <name>default</name>
    <uuid>81ff0d90-c91e-6742-64da-4a736edb9a9b</uuid>
    <forward mode='nat'/>
    <bridge name='virbr0' stp='on' delay='0'/>
    <ip address='192.168.122.1' netmask='255.255.255.0'/>
  </network>
</networkstatus>
";

/// The packets counter of the rule of `table`/`chain` (nft) whose text contains `rule`.
fn nft_counter(ns: &Netns, family_table: &str, chain: &str, rule: &str) -> u64 {
    let (family, table) = family_table.split_once(' ').unwrap();
    let listing = ns
        .exec(&["nft", "list", "chain", family, table, chain])
        .unwrap();
    let line = listing
        .lines()
        .find(|l| l.contains(rule))
        .unwrap_or_else(|| panic!("{rule} in {listing}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "packets").unwrap();
    words[at + 1].parse().unwrap()
}

#[test]
fn libvirt_rejects_name_the_network_of_their_bridge() {
    let t = Topology::new().unwrap();
    let gw = &t.gateway;
    // The host: a bridge for the guests, routed to from the client.
    exec_each(
        gw,
        &[
            "ip link add virbr0 type bridge",
            "ip addr add 192.168.122.1/24 dev virbr0",
            "ip link set virbr0 up",
            "sysctl -qw net.ipv4.ip_forward=1",
        ],
    );
    routed_via_gateway(&t, "192.168.122.0/24");
    nft_load(gw, &corpus_path("libvirt.nft"));
    let status = private_file(gw, "libvirt-status");
    std::fs::write(&status, LIBVIRT_DEFAULT_STATUS).unwrap();
    let w = watch_in_private_mounts(
        gw,
        "mkdir -p /run/libvirt/network; cp \"$1\" /run/libvirt/network/default.xml",
        &status,
    );
    std::fs::remove_file(&status).unwrap();
    let reject = r#"oif "virbr0" counter"#;
    let before = nft_counter(gw, "ip libvirt_network", "guest_input", reject);
    // A connection from outside to a guest: not one the guest started, so guest_input's
    // reject for the bridge answers it.
    let guest: SocketAddr = "192.168.122.5:80".parse().unwrap();
    assert_eq!(fate(&t.client, guest), "reject");
    thread::sleep(SHORT);
    let after = nft_counter(gw, "ip libvirt_network", "guest_input", reject);
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert!(!d.is_empty(), "{lines:?}");
    for l in &d {
        assert_eq!(l["chain"], "guest_input", "{l}");
        assert_eq!(l["attribution"], "exact", "{l}");
        assert_eq!(l["owner"]["tool"], "libvirt", "{l}");
        assert_eq!(
            l["owner"]["object"], "network default (bridge virbr0)",
            "{l}"
        );
        assert_eq!(l["owner"]["show"], "virsh net-dumpxml default", "{l}");
    }
    assert_eq!(droptrace_tests::packets(&d), after - before);
}

// explain and a DNAT to another address: routed anew, the packet is forwarded or
// delivered whatever hook the question named.

const DNAT_ELSEWHERE_NFT: &str = "table ip elsewhere {
\tchain pre {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\ttcp dport 8080 dnat to 10.77.0.2:80
\t\ttcp dport 8081 dnat to 10.77.0.3:81
\t\ttcp dport 8082 dnat to 10.77.0.1:82
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy drop;
\t\toifname \"dnatbr0\" tcp dport 80 counter drop
\t\toifname \"dnatbr0\" counter accept
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\ttcp dport 82 counter reject with tcp reset
\t}
}
";

/// Connections to three ports of the gateway, each translated to another address: two
/// on a bridge behind it (forwarded: one dropped, one accepted by FORWARD's rules), one
/// the bridge's own address (delivered: INPUT's reject). explain, asked as if the
/// packets were for the host (`--hook input`), follows each where the kernel sends it;
/// the counters of the rules it names grew, and the client's fate agrees where it tells.
#[test]
fn explain_follows_a_dnat_to_another_address_as_the_kernel_does() {
    let t = Topology::new().unwrap();
    let gw = &t.gateway;
    exec_each(
        gw,
        &[
            "ip link add dnatbr0 type bridge",
            "ip addr add 10.77.0.1/24 dev dnatbr0",
            "ip link set dnatbr0 up",
            "sysctl -qw net.ipv4.ip_forward=1",
        ],
    );
    nft_load_text(gw, "elsewhere.nft", DNAT_ELSEWHERE_NFT);
    let dev = gateway_if(&t);
    for (port, outcome, chain, counted, translated) in [
        (
            8080,
            "drop",
            "forward",
            r#"tcp dport 80 counter"#,
            "forwarded out of dnatbr0",
        ),
        (
            8081,
            "accept",
            "forward",
            r#"oifname "dnatbr0" counter"#,
            "forwarded",
        ),
        (8082, "reject", "input", "tcp dport 82 counter", "delivered"),
    ] {
        let (code, report) = explain_input(gw, &dev, CLIENT_V4, GATEWAY_V4, port);
        assert_eq!(report["outcome"], outcome, "{report:#}");
        assert_eq!(code, if outcome == "accept" { 0 } else { 1 }, "{report:#}");
        let said = report["assumed"].to_string();
        assert!(said.contains(translated), "{report:#}");
        let before = nft_counter(gw, "ip elsewhere", chain, counted);
        let fate = fate(&t.client, t.gateway_addr(port));
        thread::sleep(Duration::from_millis(100));
        assert!(
            nft_counter(gw, "ip elsewhere", chain, counted) > before,
            "{port}"
        );
        if outcome != "accept" {
            assert_eq!(fate, outcome, "{port}");
            assert_eq!(report["chain"], chain, "{report:#}");
        }
    }
}

// explain against the kernel: many questions, each asked of both.

/// How long [`fate_within`] waits for an answer over IPv6.
const V6_ANSWER: Duration = Duration::from_millis(2500);

/// Asks explain, and the kernel (a real connection), about new TCP connections from the
/// client to `ports` of the gateway, IPv4 and (with `v6`) IPv6: explain must never give
/// a definite answer the kernel contradicts. Returns (questions, agreed, unsure).
fn ask_both(t: &Topology, ports: &[u16], v6: bool) -> (usize, usize, usize) {
    let dev = gateway_if(t);
    let (mut asked, mut agreed, mut unsure) = (0, 0, 0);
    let families: &[(&str, &str)] = if v6 {
        &[(CLIENT_V4, GATEWAY_V4), (CLIENT_V6, GATEWAY_V6)]
    } else {
        &[(CLIENT_V4, GATEWAY_V4)]
    };
    for &port in ports {
        for &(src, dst) in families {
            let to = SocketAddr::new(dst.parse().unwrap(), port);
            let wait = if to.is_ipv6() { V6_ANSWER } else { SHORT };
            let kernel = fate_within(&t.client, to, wait);
            let (_, report) = explain_input(&t.gateway, &dev, src, dst, port);
            let said = report["outcome"].as_str().unwrap().to_string();
            asked += 1;
            match said.as_str() {
                "unsure" => unsure += 1,
                s if s == kernel => agreed += 1,
                _ => panic!(
                    "explain said {said}, the kernel's fate was {kernel}, for {to}: {report:#}"
                ),
            }
        }
    }
    (asked, agreed, unsure)
}

#[test]
fn explain_agrees_with_the_kernel_on_every_question_it_answers() {
    // Every port asked is listened on: an accepted connection connects, a refused one was
    // rejected by a rule, one that times out was dropped.
    const PORTS: [u16; 7] = [11, 22, 80, 443, 3001, 8080, 9090];
    let listening = |t: &Topology, v6: bool| {
        for port in PORTS {
            t.gateway.tcp_listen(t.gateway_addr(port)).unwrap();
            if v6 {
                t.gateway.tcp_listen(t.gateway_addr6(port)).unwrap();
            }
        }
    };
    let mut report = Vec::new();
    let mut total = (0, 0, 0);
    let mut tally = |name: &str, (asked, agreed, unsure): (usize, usize, usize)| {
        report.push(format!(
            "{name}: {agreed} of {asked} agreed, {unsure} unsure"
        ));
        total = (total.0 + asked, total.1 + agreed, total.2 + unsure);
    };
    for (name, file) in [
        ("firewalld 0.8 (RHEL 8)", "firewalld.nft"),
        ("firewalld 2", "firewalld-2.nft"),
    ] {
        let t = Topology::new().unwrap();
        nft_load(&t.gateway, &corpus_path(file));
        listening(&t, true);
        tally(name, ask_both(&t, &PORTS, true));
        if file == "firewalld-2.nft" {
            forward_port_11(&t.gateway);
            tally("firewalld 2, port 11 forwarded", ask_both(&t, &PORTS, true));
        }
    }
    let t = Topology::new().unwrap();
    ban_the_client(&t);
    listening(&t, true);
    tally("fail2ban, client banned", ask_both(&t, &PORTS, true));
    let t = Topology::new().unwrap();
    restore(&t.gateway, "iptables-nft-restore", "kube-proxy.iptables");
    listening(&t, false);
    tally("kube-proxy (iptables-nft)", ask_both(&t, &PORTS, false));
    let (asked, agreed, unsure) = total;
    eprintln!(
        "explain against the kernel: {agreed} of {asked} agreed, {unsure} unsure, 0 wrong\n  {}",
        report.join("\n  ")
    );
    assert!(asked >= 50, "{asked} questions");
}

// kube-proxy's nftables mode, from its own test (tests/corpus/kube-proxy.nft says where).

/// The kernel's fate of a new TCP connection from `ns` to `to`: refused (a reject sent
/// something back) or timed out (dropped).
fn fate(ns: &Netns, to: SocketAddr) -> &'static str {
    fate_within(ns, to, SHORT)
}

/// [`fate`], waiting `timeout` for the answer. Over IPv6 the client gives up only on the
/// reject of its first retransmission, a second after the SYN (seen here on 6.18): a
/// shorter wait takes a reject for a drop.
fn fate_within(ns: &Netns, to: SocketAddr, timeout: Duration) -> &'static str {
    ns.run(
        move || match std::net::TcpStream::connect_timeout(&to, timeout) {
            Ok(_) => "accept",
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => "drop",
            Err(_) => "reject",
        },
    )
    .unwrap()
}

#[test]
fn kube_proxy_nftables_mode_is_followed_through_its_maps() {
    let t = Topology::new().unwrap();
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus/kube-proxy.nft");
    sh(&[
        "nsenter",
        &format!("--net={}", t.gateway.path().display()),
        "nft",
        "-f",
        &file.display().to_string(),
    ])
    .unwrap();
    // The node reaches its Services' cluster IPs through the veth.
    let dev = gateway_if(&t);
    t.gateway
        .exec(&["ip", "route", "add", "172.30.0.0/16", "dev", &dev])
        .unwrap();
    // ns6/svc6:p80 has no endpoints: `ip daddr . meta l4proto . th dport vmap
    // @no-endpoint-services` sends it to reject-chain. 172.30.0.99 is in no Service: the
    // cluster-ips-check drop for unallocated cluster IPs.
    let no_endpoints: SocketAddr = "172.30.0.46:80".parse().unwrap();
    let unallocated: SocketAddr = "172.30.0.99:80".parse().unwrap();
    let w = Watcher::start(&["watch", "--netns", &t.gateway.name]).unwrap();
    assert_eq!(fate(&t.gateway, no_endpoints), "reject");
    assert_eq!(fate(&t.gateway, unallocated), "drop");
    thread::sleep(SHORT);
    let lines = w.stop().unwrap();
    let place = |dst: &str| {
        let d: Vec<&Value> = drops(&lines)
            .into_iter()
            .filter(|d| d["dst"] == dst)
            .collect();
        assert!(!d.is_empty(), "no drop to {dst}: {lines:?}");
        for l in &d {
            assert_eq!(l["owner"]["tool"], "kube-proxy", "{l}");
            // No rule of the path has a counter: named by evaluation, and said so.
            assert_eq!(l["attribution"], "inferred", "{l}");
        }
        (
            d[0]["chain"].as_str().unwrap().to_string(),
            d[0]["verdict"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(
        place("172.30.0.46"),
        ("reject-chain".into(), "REJECT".into())
    );
    assert_eq!(
        place("172.30.0.99"),
        ("cluster-ips-check".into(), "DROP".into())
    );
    // explain agrees with the kernel on both.
    for (dst, outcome, chain) in [
        ("172.30.0.46", "reject", "reject-chain"),
        ("172.30.0.99", "drop", "cluster-ips-check"),
    ] {
        let (_, out, err) = droptrace_output(&[
            "explain",
            "--netns",
            &t.gateway.name,
            "--hook",
            "output",
            "--proto",
            "tcp",
            "--dst",
            dst,
            "--dport",
            "80",
            "--json",
        ])
        .unwrap();
        let report: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
        assert_eq!(report["outcome"], outcome, "{report:#}");
        assert!(report.to_string().contains(chain), "{report:#}");
    }
}

// Look-alikes: hand-written rules named like a front-end's are nobody's.

/// Chains and tables an administrator wrote, each named or commented like a front-end's
/// but not as any front-end names its own: each drops one UDP port in OUTPUT (and one
/// address in raw PREROUTING, with the shape of Docker's direct-access drop).
const LOOK_ALIKE_IPTABLES: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-BLOCK - [0:0]
:KUBE-LOCAL-DROP - [0:0]
:cilium-deny - [0:0]
:LOCAL_ZONES - [0:0]
:audit_direct - [0:0]
-A OUTPUT -p udp --dport 7001 -j DOCKER-BLOCK
-A OUTPUT -p udp --dport 7002 -j KUBE-LOCAL-DROP
-A OUTPUT -p udp --dport 7003 -j cilium-deny
-A OUTPUT -p udp --dport 7004 -j LOCAL_ZONES
-A OUTPUT -p udp --dport 7005 -j audit_direct
-A DOCKER-BLOCK -j DROP
-A KUBE-LOCAL-DROP -m comment --comment \"shop/payments:https has no endpoints\" -j REJECT
-A cilium-deny -m comment --comment \"cilium: deny\" -j DROP
-A LOCAL_ZONES -j DROP
-A audit_direct -j DROP
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -d 127.0.0.5/32 ! -i br-1a2b3c4d5e6f -j DROP
COMMIT
";

const LOOK_ALIKE_NFT: &str = "table inet docker {
\tchain filter-forward-in__br0 {
\t\ttype filter hook output priority 0; policy accept;
\t\tudp dport 7101 counter drop
\t}
}
table inet firewall {
\tchain filter_IN_public_deny {
\t\ttype filter hook output priority 0; policy accept;
\t\tudp dport 7102 counter reject
\t}
}
table inet fw4-lab {
\tchain input_lan {
\t\ttype filter hook output priority 0; policy accept;
\t\tudp dport 7103 counter drop
\t}
}
";

#[test]
fn rules_only_named_like_a_front_ends_have_no_owner() {
    let ns = Netns::new("lookalike").unwrap();
    let send = |ports: std::ops::RangeInclusive<u16>| {
        for port in ports {
            let to = SocketAddr::new("127.0.0.1".parse().unwrap(), port);
            assert_eq!(ns.udp_send(to, 2).unwrap(), 0);
        }
    };
    // iptables: every chain dropped, as its counters say (check), and no line names an owner.
    restore_text(&ns, "iptables-nft-restore", LOOK_ALIKE_IPTABLES.to_string());
    let (lines, places) = check(&ns, "nft", || {
        send(7001..=7005);
        // Docker's direct-access drop has this shape, but no Docker chain is here.
        let to = SocketAddr::new("127.0.0.5".parse().unwrap(), 7006);
        assert_eq!(ns.udp_send(to, 2).unwrap(), 2);
    });
    assert_eq!(places.len(), 6, "{places:?}");
    assert_eq!(owners(&lines), owned(&[("none", "")]));
    // nft: the tables' drops named exactly, by their counters, and nobody's either.
    let nft = private_file(&ns, "lookalike.nft");
    std::fs::write(&nft, LOOK_ALIKE_NFT).unwrap();
    nft_load(&ns, &nft.display().to_string());
    std::fs::remove_file(&nft).unwrap();
    let nft_places = [
        ("inet docker", "filter-forward-in__br0", "udp dport 7101"),
        ("inet firewall", "filter_IN_public_deny", "udp dport 7102"),
        ("inet fw4-lab", "input_lan", "udp dport 7103"),
    ];
    let w = Watcher::start(&["watch", "--netns", &ns.name]).unwrap();
    send(7101..=7103);
    thread::sleep(SHORT);
    let lines = w.stop().unwrap();
    assert_eq!(owners(&lines), owned(&[("none", "")]));
    for (table, chain, rule) in nft_places {
        let counted = nft_counter(&ns, table, chain, rule);
        let table_name = table.split_once(' ').unwrap().1;
        let named: u64 = drops(&lines)
            .iter()
            .filter(|d| d["table"] == table_name && d["chain"] == chain)
            .inspect(|d| assert_eq!(d["attribution"], "exact", "{d}"))
            .map(|d| d["count"].as_u64().unwrap())
            .sum();
        assert_eq!((named, counted), (2, 2), "{table} {chain}: {lines:#?}");
    }
}

// podman's netavark (nftables driver): no counters, so the kernel's trace is the oracle.

#[test]
fn netavark_isolation_drops_name_the_network_kept_out() {
    let ctr = Netns::new("podctr").unwrap();
    let host = Netns::new("podhost").unwrap();
    sh(&[
        "ip", "link", "add", "eth0", "netns", &ctr.name, "type", "veth", "peer", "podman1",
        "netns", &host.name,
    ])
    .unwrap();
    exec_each(
        &host,
        &[
            "ip addr add 10.89.0.1/24 dev podman1",
            "ip link set podman1 up",
            // The other network's bridge, with no container on it yet.
            "ip link add podman2 type bridge",
            "ip addr add 10.89.1.1/24 dev podman2",
            "ip link set podman2 up",
            "sysctl -qw net.ipv4.ip_forward=1",
        ],
    );
    exec_each(
        &ctr,
        &[
            "ip addr add 10.89.0.2/24 dev eth0",
            "ip link set eth0 up",
            "ip route add default via 10.89.0.1",
        ],
    );
    nft_load(&host, &corpus_path("netavark.nft"));
    let (lines, trace) = watched_and_traced(&host, || {
        // From a container of podnet to one of legacy: strict isolation keeps it out.
        let other_network: SocketAddr = "10.89.1.5:80".parse().unwrap();
        assert_eq!(ctr.udp_send(other_network, 3).unwrap(), 3);
    });
    let want = traced_drops_in(&trace, "inet netavark");
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        [&(
            "NETAVARK-ISOLATION-3".to_string(),
            "oifname \"podman2\" drop".to_string()
        )],
        "{trace}"
    );
    for d in drops(&lines) {
        assert_eq!(
            (&d["table"], &d["table_family"]),
            (&"netavark".into(), &"inet".into()),
            "{d}"
        );
    }
    let got = named_by_rule(
        &lines,
        (
            "netavark",
            "bridge podman2",
            "podman network ls --format '{{.Name}} {{.NetworkInterface}}'",
        ),
    );
    assert_eq!(got, want, "droptrace (left) and the kernel's trace (right)");
}

// Incus: a network's ACL in the inet table, an instance's NIC filter in the bridge table
// (whose rules droptrace does not evaluate: the instance is named by unit tests only).

#[test]
fn incus_drops_name_the_network_acl_and_the_instance_nic() {
    let ctr = Netns::new("incusctr").unwrap();
    let host = Netns::new("incushost").unwrap();
    sh(&[
        "ip",
        "link",
        "add",
        "eth0",
        "netns",
        &ctr.name,
        "type",
        "veth",
        "peer",
        "veth1a2b3c4d",
        "netns",
        &host.name,
    ])
    .unwrap();
    exec_each(
        &host,
        &[
            "ip link add incusbr0 address 02:00:00:00:00:01 type bridge",
            "ip addr add 10.0.0.1/24 dev incusbr0",
            "ip link set incusbr0 up",
            "ip link set veth1a2b3c4d master incusbr0",
            "ip link set veth1a2b3c4d up",
            // The host's way out.
            "ip link add uplink0 type bridge",
            "ip addr add 198.51.100.1/24 dev uplink0",
            "ip link set uplink0 up",
            "sysctl -qw net.ipv4.ip_forward=1",
        ],
    );
    exec_each(
        &ctr,
        &[
            "ip link set eth0 address 00:16:3e:11:22:33",
            "ip addr add 10.0.0.10/24 dev eth0",
            "ip link set eth0 up",
            "ip route add default via 10.0.0.1",
            "ip neigh replace 10.0.0.1 lladdr 02:00:00:00:00:01 dev eth0 nud permanent",
        ],
    );
    nft_load(&host, &corpus_path("incus.nft"));
    let (lines, trace) = watched_and_traced(&host, || {
        // Out of the network: the ACL allows only TCP 80 in, so its default rejects it.
        let outside: SocketAddr = "198.51.100.2:80".parse().unwrap();
        assert_eq!(ctr.udp_send(outside, 2).unwrap(), 2);
        // From an address the instance was not given: its NIC's IPv4 filter drops it.
        // (The new address first, promoted when the old goes: taking a device's last
        // address flushes its neighbours.)
        for c in [
            "sysctl -qw net.ipv4.conf.eth0.promote_secondaries=1",
            "ip addr add 10.0.0.99/24 dev eth0",
            "ip addr del 10.0.0.10/24 dev eth0",
        ] {
            let args: Vec<&str> = c.split_whitespace().collect();
            ctr.exec(&args).unwrap();
        }
        let dns: SocketAddr = "10.0.0.1:53".parse().unwrap();
        assert_eq!(ctr.udp_send(dns, 3).unwrap(), 3);
    });
    // What the traffic met (the host's own packets onto the bridge may meet the ACL's
    // other default reject too: the trace sees those, and so must droptrace).
    let want = traced_drops_in(&trace, "inet incus");
    let egress_reject = (
        "acl.incusbr0".to_string(),
        "iifname \"incusbr0\" reject".to_string(),
    );
    assert_eq!(want.get(&egress_reject), Some(&2), "{trace}");
    let bridge = traced_drops_in(&trace, "bridge incus");
    assert_eq!(
        bridge
            .iter()
            .map(|((chain, _), n)| (chain.as_str(), *n))
            .collect::<Vec<_>>(),
        [("in.c1.eth0", 3)],
        "{trace}"
    );
    // The NIC filter's drops: the bridge family is not evaluated, and the lines say so
    // rather than name a routed hook or any rule.
    let (bridged, routed): (Vec<Value>, Vec<Value>) = lines
        .into_iter()
        .partition(|d| d["engine"] == "nftables/bridge");
    let mut unevaluated = 0;
    for d in drops(&bridged) {
        assert_eq!(d["attribution"], "none", "{d}");
        assert_eq!(d["hook"], Value::Null, "{d}");
        assert!(d["why"].as_str().unwrap().contains("bridge-family"), "{d}");
        unevaluated += d["count"].as_u64().unwrap();
    }
    for d in drops(&routed) {
        assert_eq!(
            (&d["table"], &d["table_family"]),
            (&"incus".into(), &"inet".into()),
            "{d}"
        );
    }
    let got = named_by_rule(
        &routed,
        ("incus", "network incusbr0", "incus network show incusbr0"),
    );
    assert_eq!(unevaluated, 3, "{bridged:#?}");
    // The traffic's drops as the kernel counted them. The host's own multicast reports
    // onto the bridge meet the ACL's other default reject too, at moments of their own
    // (the trace runs a little longer than droptrace): named, they must be that rule.
    assert_eq!(got.get(&egress_reject), Some(&2), "{routed:#?}");
    for place in got.keys() {
        assert!(
            want.contains_key(place),
            "{place:?} was not traced: {trace}"
        );
    }
}

// Calico (Felix, iptables): the workload a tier's default drop protects, and the policy a
// hashed chain stands for.

#[test]
fn calico_drops_name_the_workload_and_the_policy() {
    let t = Topology::new().unwrap();
    let gw = &t.gateway;
    // The node: a pod's interface with its /32 route, as Calico's CNI plugin makes them.
    exec_each(
        gw,
        &[
            "ip link add cali1234abcd5 type bridge",
            "ip link set cali1234abcd5 up",
            "ip route add 10.244.1.5/32 dev cali1234abcd5",
            "sysctl -qw net.ipv4.ip_forward=1",
        ],
    );
    routed_via_gateway(&t, "10.244.1.0/24");
    restore(gw, "iptables-nft-restore", "calico.iptables");
    let pod = |port| SocketAddr::new("10.244.1.5".parse().unwrap(), port);
    let (lines, places) = check(gw, "nft", || {
        // No policy passes DNS to the pod: the tier's default drop.
        assert_eq!(t.client.udp_send(pod(53), 2).unwrap(), 2);
        // The long-named policy denies the database port.
        assert!(!connect(&t.client, pod(5432)));
    });
    assert_eq!(
        places,
        [
            rule(4, "cali-pi-_PymyFHQQg3808jiz1OJ", 2),
            rule(4, "cali-tw-cali1234abcd5", 9),
        ]
    );
    assert_eq!(
        owners(&lines),
        owned(&[
            (
                "calico",
                "KubernetesNetworkPolicy shop/deny-db-from-anywhere-but-backend"
            ),
            ("calico", "workload cali1234abcd5"),
        ])
    );
    for d in drops(&lines) {
        let (show, reason) = if d["chain"] == "cali-tw-cali1234abcd5" {
            (
                "calicoctl get workloadendpoints -A -o wide",
                Value::from("no policy of tier default allowed it"),
            )
        } else {
            (
                "kubectl -n shop get networkpolicy deny-db-from-anywhere-but-backend -o yaml",
                Value::Null,
            )
        };
        assert_eq!(d["owner"]["show"], show, "{d}");
        assert_eq!(d["owner"]["reason"], reason, "{d}");
    }
}

// kube-router: the pod whose firewall rejected, not kube-proxy (a `KUBE-` prefix guess).

#[test]
fn kube_router_rejects_name_the_pod_whose_firewall_refused() {
    let t = Topology::new().unwrap();
    let gw = &t.gateway;
    exec_each(
        gw,
        &[
            "ip link add kube-bridge type bridge",
            "ip link set kube-bridge up",
            "ip route add 10.244.1.0/24 dev kube-bridge",
            "sysctl -qw net.ipv4.ip_forward=1",
        ],
    );
    routed_via_gateway(&t, "10.244.1.0/24");
    restore(gw, "iptables-nft-restore", "kube-router.iptables");
    let pod = SocketAddr::new("10.244.1.7".parse().unwrap(), 53);
    let (lines, places) = check(gw, "nft", || {
        // No policy of the pod lets DNS in.
        assert_eq!(t.client.udp_send(pod, 2).unwrap(), 2);
    });
    assert_eq!(places, [rule(4, "KUBE-POD-FW-4DPYQH7V4XQLKZ2C", 4)]);
    assert_eq!(owners(&lines), owned(&[("kube-router", "pod nsA/web-0")]));
    for d in drops(&lines) {
        assert_eq!(
            d["owner"]["show"],
            "kubectl -n nsA get networkpolicies; kubectl -n nsA get pod web-0 --show-labels",
            "{d}"
        );
    }
}

// OpenWrt's firewall4: the zone a packet was rejected for, through the shared reject chain.

#[test]
fn fw4_rejects_from_wan_name_the_wan_zone() {
    let router = Netns::new("fw4router").unwrap();
    let peer = Netns::new("fw4peer").unwrap();
    sh(&[
        "ip",
        "link",
        "add",
        "pppoe-wan",
        "netns",
        &router.name,
        "type",
        "veth",
        "peer",
        "eth0",
        "netns",
        &peer.name,
    ])
    .unwrap();
    exec_each(
        &router,
        &[
            "ip addr add 10.11.12.1/24 dev pppoe-wan",
            "ip link set pppoe-wan up",
        ],
    );
    exec_each(
        &peer,
        &["ip addr add 10.11.12.2/24 dev eth0", "ip link set eth0 up"],
    );
    nft_load(&router, &corpus_path("fw4.nft"));
    let (lines, trace) = watched_and_traced(&router, || {
        // From the internet to the router: input_wan has no rule for it.
        let router_dns: SocketAddr = "10.11.12.1:53".parse().unwrap();
        assert_eq!(peer.udp_send(router_dns, 2).unwrap(), 2);
    });
    let want = traced_drops_in(&trace, "inet fw4");
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        [&(
            "handle_reject".to_string(),
            // (`with icmpx port-unreachable` is nft's default, which its listing leaves out)
            "reject comment \"!fw4: Reject any other traffic\"".to_string()
        )],
        "{trace}"
    );
    // The shared reject chain acts for the zone that jumped to it.
    let got = named_by_rule(&lines, ("fw4", "zone wan", "uci show firewall"));
    assert_eq!(got, want, "droptrace (left) and the kernel's trace (right)");
}

// Docker's nftables backend: the network of raw-PREROUTING's direct-access drop and of
// its forward chain's unpublished-port drop.

/// The network of moby's bridge driver tests (bridge br-dummy, 192.168.0.0/24, container
/// 192.168.0.2) on the gateway, routed to from the client.
fn moby_test_network() -> Topology {
    let t = Topology::new().unwrap();
    exec_each(
        &t.gateway,
        &[
            "ip link add br-dummy type bridge",
            "ip addr add 192.168.0.1/24 dev br-dummy",
            "ip link set br-dummy up",
            "sysctl -qw net.ipv4.ip_forward=1",
        ],
    );
    routed_via_gateway(&t, "192.168.0.0/24");
    t
}

/// Two datagrams straight at the container's address from outside its network, and three
/// at another address of the network on a port nobody published.
fn at_the_container_and_its_network(t: &Topology) {
    let container: SocketAddr = "192.168.0.2:22".parse().unwrap();
    assert_eq!(t.client.udp_send(container, 2).unwrap(), 2);
    let unpublished: SocketAddr = "192.168.0.3:22".parse().unwrap();
    assert_eq!(t.client.udp_send(unpublished, 3).unwrap(), 3);
}

#[test]
fn docker_nftables_drops_name_the_network_bridge() {
    let t = moby_test_network();
    let gw = &t.gateway;
    nft_load(gw, &corpus_path("docker-bridges.nft"));
    let (lines, trace) = watched_and_traced(gw, || at_the_container_and_its_network(&t));
    let want = traced_drops_in(&trace, "ip docker-bridges");
    assert_eq!(
        want.iter()
            .map(|((chain, _), n)| (chain.as_str(), *n))
            .collect::<Vec<_>>(),
        [("filter-forward-in__br-dummy", 3), ("raw-PREROUTING", 2)],
        "{trace}"
    );
    // Not a bridge Docker named after a network ID: its networks are listed.
    let got = named_by_rule(&lines, ("docker", "bridge br-dummy", "docker network ls"));
    assert_eq!(got, want, "droptrace (left) and the kernel's trace (right)");
}

// Docker's iptables backend: raw PREROUTING's direct-access drop has no chain of Docker's.

#[test]
fn docker_iptables_direct_access_drop_in_raw_is_dockers() {
    let t = moby_test_network();
    let gw = &t.gateway;
    restore(gw, "iptables-nft-restore", "docker-direct-access.iptables");
    let (lines, places) = check(gw, "nft", || at_the_container_and_its_network(&t));
    let raw = Place {
        family: 4,
        table: "raw".into(),
        chain: "PREROUTING".into(),
        rule: Some(1),
    };
    assert_eq!(places, [rule(4, "DOCKER", 2), raw]);
    assert_eq!(owners(&lines), owned(&[("docker", "bridge br-dummy")]));
}

// kube-proxy's IPVS mode: its access filter, which names no Service.

#[test]
fn kube_proxy_ipvs_access_filter_rejects_are_kube_proxys() {
    let t = Topology::new().unwrap();
    for line in corpus("kube-proxy-ipvs.sh")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        t.gateway
            .exec(&["sh", "-c", line])
            .unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    routed_via_gateway(&t, "10.96.0.0/12");
    let (lines, places) = check(&t.gateway, "nft", || {
        // The Service's address, on a port that is no Service's.
        let vip = SocketAddr::new("10.96.0.10".parse().unwrap(), 22);
        assert!(!connect(&t.client, vip));
    });
    assert_eq!(places, [rule(4, "KUBE-IPVS-FILTER", 6)]);
    // Its rules carry no Service: kube-proxy's Services are what to look at.
    assert_eq!(owners(&lines), owned(&[("kube-proxy", "")]));
    for d in drops(&lines) {
        assert_eq!(d["owner"]["show"], "kubectl get services -A -o wide", "{d}");
    }
}

// LXD: the network whose DNS is kept to its own bridge.

#[test]
fn lxd_drops_name_the_network() {
    let t = Topology::new().unwrap();
    let gw = &t.gateway;
    exec_each(
        gw,
        &[
            "ip link add lxdbr0 type bridge",
            "ip addr add 10.0.0.1/24 dev lxdbr0",
            "ip link set lxdbr0 up",
        ],
    );
    routed_via_gateway(&t, "10.0.0.0/24");
    nft_load(gw, &corpus_path("lxd.nft"));
    let (lines, trace) = watched_and_traced(gw, || {
        // The network's DNS, asked from outside the network.
        let dns: SocketAddr = "10.0.0.1:53".parse().unwrap();
        assert_eq!(t.client.udp_send(dns, 2).unwrap(), 2);
    });
    let want = traced_drops_in(&trace, "inet lxd");
    assert_eq!(
        want.iter()
            .map(|((chain, rule), n)| (chain.as_str(), rule.as_str(), *n))
            .collect::<Vec<_>>(),
        [("in.lxdbr0", "ip daddr 10.0.0.1 udp dport 53 drop", 2)],
        "{trace}"
    );
    let got = named_by_rule(&lines, ("lxd", "network lxdbr0", "lxc network show lxdbr0"));
    assert_eq!(got, want, "droptrace (left) and the kernel's trace (right)");
}

// explain and notrack: the rules after a notrack rule see the packet UNTRACKED.

/// A DNS-server style ruleset: raw PREROUTING untracks one port, INPUT drops by policy
/// what is neither established nor untracked; iptables and native nft.
const NOTRACK_IPTABLES: &str = "*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 5555 -j CT --notrack
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate UNTRACKED -j ACCEPT
COMMIT
";

const NOTRACK_NFT: &str = "table inet dns {
\tchain raw {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\ttcp dport 5565 notrack
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tct state established,related accept
\t\tct state untracked accept
\t}
}
";

/// Asks explain and the kernel about new TCP connections from the client to `ports` of the
/// gateway: they must agree, and explain's `assumed` must start one line with `said` exactly
/// for the ports the kernel accepts.
fn explain_agrees_at(t: &Topology, ports: &[u16], said: &str) {
    let dev = gateway_if(t);
    for &port in ports {
        t.gateway.tcp_listen(t.gateway_addr(port)).unwrap();
        let (code, report) = explain_input(&t.gateway, &dev, CLIENT_V4, GATEWAY_V4, port);
        let kernel = fate(&t.client, t.gateway_addr(port));
        assert_eq!(report["outcome"], kernel, "port {port}: {report:#}");
        assert_eq!(code, if kernel == "accept" { 0 } else { 1 }, "{report:#}");
        let says = report["assumed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().starts_with(said));
        assert_eq!(says, kernel == "accept", "{report:#}");
    }
}

/// Loads `text` with nft inside the gateway.
fn nft_load_text(ns: &Netns, name: &str, text: &str) {
    let file = private_file(ns, name);
    std::fs::write(&file, text).unwrap();
    nft_load(ns, &file.display().to_string());
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn explain_follows_notrack_as_the_kernel_does() {
    let t = Topology::new().unwrap();
    restore_text(
        &t.gateway,
        "iptables-nft-restore",
        NOTRACK_IPTABLES.to_string(),
    );
    explain_agrees_at(&t, &[5555, 5556], "untracked: ");
    let t = Topology::new().unwrap();
    nft_load_text(&t.gateway, "notrack.nft", NOTRACK_NFT);
    explain_agrees_at(&t, &[5565, 5566], "untracked: ");
}

// explain and marks: a mark set in PREROUTING is what INPUT's rules see.

const PREROUTING_MARK_IPTABLES: &str = "*mangle
:PREROUTING ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 7777 -j MARK --set-xmark 0x10/0xffffffff
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m mark --mark 0x10 -j ACCEPT
COMMIT
";

const PREROUTING_MARK_NFT: &str = "table inet pbr {
\tchain premark {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\ttcp dport 7787 meta mark set 0x10
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tct state established,related accept
\t\tmeta mark 0x10 accept
\t}
}
";

#[test]
fn explain_carries_a_prerouting_mark_as_the_kernel_does() {
    let t = Topology::new().unwrap();
    restore_text(
        &t.gateway,
        "iptables-nft-restore",
        PREROUTING_MARK_IPTABLES.to_string(),
    );
    explain_agrees_at(&t, &[7777, 7778], "mark 0x10 after PREROUTING");
    let t = Topology::new().unwrap();
    nft_load_text(&t.gateway, "mark.nft", PREROUTING_MARK_NFT);
    explain_agrees_at(&t, &[7787, 7788], "mark 0x10 after PREROUTING");
}

// The connection's mark, set in PREROUTING and tested in INPUT: a new connection's starts
// at 0, so explain follows it as it does the packet's.

const PREROUTING_CONNMARK_IPTABLES: &str = "*mangle
:PREROUTING ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 7797 -j CONNMARK --set-xmark 0x20/0xffffffff
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m connmark --mark 0x20 -j ACCEPT
COMMIT
";

const PREROUTING_CONNMARK_NFT: &str = "table inet pbr {
\tchain premark {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\ttcp dport 7807 ct mark set meta mark | 0x20
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tct mark & 0x20 == 0x20 accept
\t}
}
";

#[test]
fn explain_carries_a_connection_mark_as_the_kernel_does() {
    let t = Topology::new().unwrap();
    restore_text(
        &t.gateway,
        "iptables-nft-restore",
        PREROUTING_CONNMARK_IPTABLES.to_string(),
    );
    explain_agrees_at(&t, &[7797, 7798], "connection mark 0x20 after PREROUTING");
    let t = Topology::new().unwrap();
    nft_load_text(&t.gateway, "connmark.nft", PREROUTING_CONNMARK_NFT);
    explain_agrees_at(&t, &[7807, 7808], "connection mark 0x20 after PREROUTING");
}
