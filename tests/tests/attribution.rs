//! Rule attribution with the kernel as the oracle.
//!
//! Each test applies real rules in a throw-away namespace, sends real traffic and checks
//! that droptrace names the rule the kernel actually used: the one whose packet counter
//! grew (`iptables -L -v -x -n --line-numbers`, `nft -a list ruleset`), with the text and
//! number `iptables -S` shows for it, and the backend (iptables-nft, iptables-legacy,
//! nftables) whose engine really dropped the packet. `attribution` must be `exact`
//! wherever the rule has a counter.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use droptrace_tests::{GATEWAY_V4, GATEWAY_V6, Netns, Topology, Watcher, drops, packets, summary};
use serde_json::{Value, json};

const SHORT: Duration = Duration::from_millis(1500);

/// Runs one command line in `ns`, split on whitespace (none of these rules need quoting).
fn run(ns: &Netns, line: &str) -> String {
    let args: Vec<&str> = line.split_whitespace().collect();
    ns.exec(&args).unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn run_all(ns: &Netns, lines: &[&str]) {
    for line in lines {
        run(ns, line);
    }
}

fn watch(ns: &Netns) -> Watcher {
    Watcher::start(&["watch", "--netns", &ns.name]).unwrap()
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Sends one UDP datagram; `true` when the kernel let it out (a drop in OUTPUT is EPERM).
fn udp(ns: &Netns, to: SocketAddr) -> bool {
    ns.udp_send(to, 1).unwrap() == 1
}

/// The client's end of the veth pair (`dtc<N>`).
fn client_if(t: &Topology) -> String {
    run(&t.client, "ip -o link show")
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name))
        .find(|name| name.starts_with("dtc"))
        .expect("client veth")
        .to_string()
}

/// Routes more destinations out of the client's veth, so datagrams to them leave the
/// host (or are dropped in OUTPUT) rather than failing with "no route".
fn route_via_veth(t: &Topology, nets: &[&str]) {
    let dev = client_if(t);
    for net in nets {
        let ip = if net.contains(':') { "ip -6" } else { "ip" };
        run(&t.client, &format!("{ip} route add {net} dev {dev}"));
    }
}

/// The drop lines for one destination.
fn lines_to(lines: &[Value], to: SocketAddr) -> Vec<&Value> {
    drops(lines)
        .into_iter()
        .filter(|d| d["dst"] == to.ip().to_string() && d["dport"] == to.port())
        .collect()
}

/// Asserts that there is a line, and that every field of `want` holds on every line.
fn assert_named(lines: &[&Value], want: Value) {
    assert!(!lines.is_empty(), "no drop reported; expected {want}");
    for d in lines {
        for (key, value) in want.as_object().unwrap() {
            assert_eq!(&d[key], value, "field {key:?} of {d}");
        }
    }
}

/// The kernel's view of an iptables filter table: rule text (`-S`) and packet counters
/// (`-L -v -x -n --line-numbers`) by chain.
#[derive(Debug, Clone)]
struct Kernel {
    /// Chain → its `-A CHAIN ...` lines in order (rule n is index n - 1).
    rules: BTreeMap<String, Vec<String>>,
    /// Built-in chain → its policy (`ACCEPT`/`DROP`).
    policies: BTreeMap<String, String>,
    /// (chain, rule number) → packets.
    counts: BTreeMap<(String, u32), u64>,
    /// Built-in chain → packets that fell through to the policy.
    policy_counts: BTreeMap<String, u64>,
}

fn kernel(ns: &Netns, tool: &str) -> Kernel {
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut policies = BTreeMap::new();
    for line in run(ns, &format!("{tool} -S")).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["-A", chain, ..] => rules
                .entry(chain.to_string())
                .or_default()
                .push(line.to_string()),
            ["-P", chain, policy] => {
                policies.insert(chain.to_string(), policy.to_string());
            }
            _ => {}
        }
    }
    let mut counts = BTreeMap::new();
    let mut policy_counts = BTreeMap::new();
    let mut chain = String::new();
    for line in run(ns, &format!("{tool} -L -v -x -n --line-numbers")).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Chain", name, rest @ ..] => {
                chain = name.to_string();
                if let ["(policy", _, n, ..] = rest {
                    policy_counts.insert(chain.clone(), n.parse().unwrap());
                }
            }
            [num, pkts, ..] if num.parse::<u32>().is_ok() => {
                counts.insert((chain.clone(), num.parse().unwrap()), pkts.parse().unwrap());
            }
            _ => {}
        }
    }
    Kernel {
        rules,
        policies,
        counts,
        policy_counts,
    }
}

impl Kernel {
    fn count(&self, chain: &str, num: u32) -> u64 {
        self.counts[&(chain.to_string(), num)]
    }

    fn text(&self, chain: &str, num: u32) -> &str {
        &self.rules[chain][num as usize - 1]
    }

    /// What dropped a packet sent between `before` and `self`: the DROP/REJECT rule whose
    /// counter grew, else a DROP policy whose counter grew; `None` when nothing did (the
    /// packet was accepted).
    fn decision_since(&self, before: &Kernel) -> Option<(String, Option<u32>)> {
        let grown: Vec<(String, Option<u32>)> = self
            .counts
            .iter()
            .filter(|(key, n)| before.counts.get(*key).is_some_and(|b| *n > b))
            .filter(|((chain, num), _)| {
                let text = self.text(chain, *num);
                text.ends_with("-j DROP") || text.contains("-j REJECT")
            })
            .map(|((chain, num), _)| (chain.clone(), Some(*num)))
            .chain(
                self.policy_counts
                    .iter()
                    .filter(|(chain, n)| {
                        before.policy_counts.get(*chain).is_some_and(|b| *n > b)
                            && self.policies[*chain] == "DROP"
                    })
                    .map(|(chain, _)| (chain.clone(), None)),
            )
            .collect();
        assert!(grown.len() <= 1, "one packet, several verdicts: {grown:?}");
        grown.into_iter().next()
    }
}

/// Checks drop lines naming iptables rules against the kernel: the rule at `rule_num` has
/// the text droptrace printed, and its counter covers the packets droptrace reported.
fn agrees_with_kernel(lines: &[&Value], k: &Kernel) {
    for d in lines {
        let chain = d["chain"].as_str().expect("chain");
        match d["rule_num"].as_u64() {
            Some(num) => {
                let num = num as u32;
                assert_eq!(d["rule"], k.text(chain, num), "{d}");
                assert!(k.count(chain, num) >= d["count"].as_u64().unwrap(), "{d}");
            }
            None => {
                assert_eq!(d["verdict"], "policy", "{d}");
                assert!(
                    k.policy_counts[chain] >= d["count"].as_u64().unwrap(),
                    "{d}"
                );
            }
        }
    }
}

/// The handle and packet counter (if any) `nft -a list table TABLE` shows for the one
/// rule whose line contains `needle`.
fn nft_rule(ns: &Netns, table: &str, needle: &str) -> (u64, Option<u64>) {
    let listing = run(ns, &format!("nft -a list table {table}"));
    let mut found = listing.lines().filter(|l| l.contains(needle));
    let line = found
        .next()
        .unwrap_or_else(|| panic!("{needle:?} in {listing}"));
    assert!(found.next().is_none(), "{needle:?} twice in {listing}");
    let handle = line
        .rsplit_once("# handle ")
        .and_then(|(_, h)| h.trim().parse().ok())
        .expect("handle");
    let packets = line
        .split_once("counter packets ")
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok());
    (handle, packets)
}

// 1. The incident.

const INCIDENT: &[&str] = &[
    "iptables -A OUTPUT -o lo -j ACCEPT",
    "iptables -A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
    "iptables -A OUTPUT -p tcp -m multiport --dports 80,443,22,3306 -j ACCEPT",
    "iptables -A OUTPUT -p tcp --dport 1024:65535 -j DROP",
];
const PORT_RANGE_DROP: &str = "-A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP";

/// Applies `rules`, connects to 443 (allowed) and 8443 (dropped), and checks that every
/// 8443 SYN is attributed exactly to rule `num`.
fn incident_case(rules: &[&str], num: u32) {
    let t = Topology::new().unwrap();
    for port in [443, 8443] {
        t.gateway.tcp_listen(t.gateway_addr(port)).unwrap();
    }
    run_all(&t.client, rules);
    let w = watch(&t.client);
    assert!(t.client.tcp_connect(t.gateway_addr(443), SHORT).unwrap());
    assert!(!t.client.tcp_connect(t.gateway_addr(8443), SHORT).unwrap());
    let lines = w.stop().unwrap();
    let k = kernel(&t.client, "iptables");
    let d = lines_to(&lines, t.gateway_addr(8443));
    assert_named(
        &d,
        json!({
            "hook": "OUTPUT", "engine": "nftables/ip", "backend": "iptables-nft",
            "table": "filter", "chain": "OUTPUT", "rule_num": num, "rule": PORT_RANGE_DROP,
            "rule_handle": null, "verdict": "DROP", "attribution": "exact",
        }),
    );
    agrees_with_kernel(&d, &k);
    assert_eq!(
        packets(&d),
        k.count("OUTPUT", num),
        "every dropped SYN is reported, as many as the rule counted"
    );
    assert_eq!(
        drops(&lines).len(),
        d.len(),
        "only 8443 is dropped: {lines:?}"
    );
    let rules = &summary(&lines)["rules"];
    assert_eq!(
        rules[0]["rule"],
        format!("filter/OUTPUT rule {num} `{PORT_RANGE_DROP}`")
    );
    assert_eq!(rules[0]["count"], packets(&d));
}

#[test]
fn incident_8443_is_dropped_by_rule_4_exactly() {
    incident_case(INCIDENT, 4);
}

#[test]
fn incident_without_the_conntrack_rule_names_rule_3() {
    let rules: Vec<&str> = INCIDENT
        .iter()
        .copied()
        .filter(|r| !r.contains("conntrack"))
        .collect();
    incident_case(&rules, 3);
}

const WHITELIST_FIX: &str =
    "iptables -I OUTPUT 3 -p tcp -m multiport --dports 8443,9090,5044,8080 -j ACCEPT";

#[test]
fn incident_with_the_whitelist_fix_drops_nothing_on_those_ports() {
    let t = Topology::new().unwrap();
    let fixed = [8443, 9090, 5044, 8080];
    for port in fixed {
        t.gateway.tcp_listen(t.gateway_addr(port)).unwrap();
    }
    run_all(&t.client, INCIDENT);
    run(&t.client, WHITELIST_FIX);
    let w = watch(&t.client);
    for port in fixed {
        assert!(
            t.client.tcp_connect(t.gateway_addr(port), SHORT).unwrap(),
            "{port} is whitelisted"
        );
    }
    // A port the fix does not cover is still dropped, by the range rule, now rule 5.
    assert!(!t.client.tcp_connect(t.gateway_addr(7000), SHORT).unwrap());
    let lines = w.stop().unwrap();
    let k = kernel(&t.client, "iptables");
    let d = drops(&lines);
    assert!(
        d.iter().all(|v| v["dport"] == 7000),
        "only 7000 may be dropped: {d:?}"
    );
    assert_named(
        &d,
        json!({"chain": "OUTPUT", "rule_num": 5, "rule": PORT_RANGE_DROP,
               "verdict": "DROP", "attribution": "exact"}),
    );
    agrees_with_kernel(&d, &k);
    assert_eq!(packets(&d), k.count("OUTPUT", 5));
}

/// The SRE applies the fix while droptrace runs: rule 4 becomes rule 5. Drops after the
/// change must carry the new number (what `iptables -L --line-numbers` shows now) and
/// still be confirmed by the counter, even though droptrace's last ruleset read predates
/// the change.
#[test]
fn incident_fix_applied_while_watching_renumbers_the_rule() {
    let t = Topology::new().unwrap();
    t.gateway.tcp_listen(t.gateway_addr(8443)).unwrap();
    run_all(&t.client, INCIDENT);
    let w = watch(&t.client);
    assert!(!t.client.tcp_connect(t.gateway_addr(8443), SHORT).unwrap());
    // Let droptrace print those lines (it re-reads the ruleset once a second).
    thread::sleep(Duration::from_millis(1500));
    run(&t.client, WHITELIST_FIX);
    assert!(t.client.tcp_connect(t.gateway_addr(8443), SHORT).unwrap());
    assert!(!t.client.tcp_connect(t.gateway_addr(7000), SHORT).unwrap());
    let lines = w.stop().unwrap();
    let k = kernel(&t.client, "iptables");
    let before = lines_to(&lines, t.gateway_addr(8443));
    assert_named(
        &before,
        json!({"rule_num": 4, "rule": PORT_RANGE_DROP, "attribution": "exact"}),
    );
    let after = lines_to(&lines, t.gateway_addr(7000));
    assert_named(
        &after,
        json!({"chain": "OUTPUT", "rule_num": 5, "rule": PORT_RANGE_DROP,
               "verdict": "DROP", "attribution": "exact"}),
    );
    agrees_with_kernel(&after, &k);
    assert_eq!(
        packets(&before) + packets(&after),
        k.count("OUTPUT", 5),
        "the rule's counter saw both"
    );
}

/// droptrace re-reads the ruleset once a second while drops keep coming. A drop that
/// happens during such a read is already in the counters read, though its record is
/// handled after: it must still be confirmed, not left at "its counter grew by 0".
#[test]
fn drops_during_ruleset_reads_are_still_confirmed_by_the_counter() {
    let t = Topology::new().unwrap();
    run(
        &t.client,
        "iptables -A OUTPUT -p udp --dport 20000:29999 -j DROP",
    );
    let w = watch(&t.client);
    let until = Instant::now() + Duration::from_millis(3500);
    let mut port = 20000;
    while Instant::now() < until {
        // One flow per datagram: each gets its own record, dated when it was dropped.
        assert!(!udp(&t.client, t.gateway_addr(port)));
        port += 1;
        thread::sleep(Duration::from_millis(5));
    }
    let lines = w.stop().unwrap();
    let k = kernel(&t.client, "iptables");
    let d = drops(&lines);
    assert_eq!(packets(&d), u64::from(port - 20000));
    assert_eq!(packets(&d), k.count("OUTPUT", 1));
    let unconfirmed: Vec<&&Value> = d.iter().filter(|v| v["attribution"] != "exact").collect();
    assert!(
        unconfirmed.is_empty(),
        "{} of {} lines unconfirmed, e.g. {}",
        unconfirmed.len(),
        d.len(),
        unconfirmed[0]
    );
    assert_named(
        &d,
        json!({"chain": "OUTPUT", "rule_num": 1, "verdict": "DROP"}),
    );
}

// 2. User chains: jump, RETURN, goto.

#[test]
fn drops_in_user_chains_name_the_user_chain_and_follow_return_and_goto() {
    let t = Topology::new().unwrap();
    run_all(
        &t.client,
        &[
            "iptables -N EGRESS",
            "iptables -N BLOCKED",
            "iptables -A OUTPUT -p udp -j EGRESS",
            // Reached after EGRESS returns, and after a RETURN from a chain EGRESS went to.
            "iptables -A OUTPUT -p udp --dport 5000:5999 -j DROP",
            "iptables -A OUTPUT -p udp --dport 7001 -j DROP",
            "iptables -A EGRESS -p udp --dport 5001 -j RETURN",
            "iptables -A EGRESS -p udp --dport 6000:6999 -j BLOCKED",
            "iptables -A EGRESS -p udp --dport 7000:7999 -g BLOCKED",
            "iptables -A EGRESS -p udp --dport 5000:5999 -j DROP",
            "iptables -A EGRESS -p udp --dport 6001 -j DROP",
            // Only reached if the goto were taken as a jump.
            "iptables -A EGRESS -p udp --dport 7001 -j DROP",
            "iptables -A BLOCKED -p udp --dport 6001 -j RETURN",
            "iptables -A BLOCKED -p udp --dport 7001 -j RETURN",
            "iptables -A BLOCKED -p udp -j DROP",
        ],
    );
    let gw = |port| t.gateway_addr(port);
    let w = watch(&t.client);
    let expected = [
        (5001, "OUTPUT", 2), // RETURN from EGRESS, then OUTPUT's range rule
        (5002, "EGRESS", 4), // in the user chain itself
        (6000, "BLOCKED", 3),
        (6001, "EGRESS", 5), // RETURN from a jump resumes EGRESS
        (7000, "BLOCKED", 3),
        (7001, "OUTPUT", 3), // RETURN after a goto resumes OUTPUT, not EGRESS
    ];
    for (port, ..) in expected {
        assert!(!udp(&t.client, gw(port)), "{port} must be dropped");
    }
    assert!(udp(&t.client, gw(9000)), "9000 matches nothing");
    let lines = w.stop().unwrap();
    let k = kernel(&t.client, "iptables");
    for (port, chain, num) in expected {
        let d = lines_to(&lines, gw(port));
        assert_named(
            &d,
            json!({"backend": "iptables-nft", "table": "filter", "chain": chain,
                   "rule_num": num, "verdict": "DROP", "attribution": "exact"}),
        );
        agrees_with_kernel(&d, &k);
        assert_eq!(packets(&d), 1, "{port}");
    }
    assert!(lines_to(&lines, gw(9000)).is_empty());
    assert_eq!(k.count("EGRESS", 6), 0, "the goto trap never ran");
}

// 3. Policy.

#[test]
fn a_drop_policy_with_no_matching_rule_is_named_as_the_policy_exactly() {
    let t = Topology::new().unwrap();
    run_all(
        &t.client,
        &[
            "iptables -A OUTPUT -o lo -j ACCEPT",
            "iptables -A OUTPUT -p udp --dport 53 -j ACCEPT",
            "iptables -A OUTPUT -p tcp -m multiport --dports 80,443 -j ACCEPT",
            "iptables -P OUTPUT DROP",
        ],
    );
    let w = watch(&t.client);
    assert_eq!(t.client.udp_send(t.gateway_addr(5044), 3).unwrap(), 0);
    assert!(udp(&t.client, t.gateway_addr(53)));
    let lines = w.stop().unwrap();
    let k = kernel(&t.client, "iptables");
    let d = lines_to(&lines, t.gateway_addr(5044));
    assert_named(
        &d,
        json!({"backend": "iptables-nft", "table": "filter", "chain": "OUTPUT",
               "rule": null, "rule_num": null, "verdict": "policy", "attribution": "exact"}),
    );
    agrees_with_kernel(&d, &k);
    assert_eq!(packets(&d), 3);
    assert_eq!(k.policy_counts["OUTPUT"], 3);
    assert_eq!(drops(&lines).len(), d.len(), "{lines:?}");
    assert_eq!(
        summary(&lines)["rules"][0]["rule"],
        "filter/OUTPUT policy DROP"
    );
}

// 4. REJECT.

/// On this kernel (6.x), the REJECT target sends its RST or ICMP error and then returns
/// NF_DROP for the original packet, which nf_tables frees with reason NETFILTER_DROP:
/// rejected packets are reported like dropped ones, with verdict REJECT. The RST reaches
/// the local socket at once, so the connection is refused rather than timing out.
#[test]
fn reject_is_reported_with_verdict_reject_and_the_connection_is_refused() {
    let t = Topology::new().unwrap();
    t.gateway.tcp_listen(t.gateway_addr(8443)).unwrap();
    run_all(
        &t.client,
        &[
            "iptables -A OUTPUT -p tcp --dport 8443 -j REJECT --reject-with tcp-reset",
            "iptables -A OUTPUT -p udp --dport 5044 -j REJECT",
        ],
    );
    let w = watch(&t.client);
    assert!(
        !t.client
            .tcp_connect(t.gateway_addr(8443), Duration::from_secs(5))
            .unwrap()
    );
    assert!(!udp(&t.client, t.gateway_addr(5044)), "EPERM");
    let lines = w.stop().unwrap();
    let k = kernel(&t.client, "iptables");
    // Refused at once, not timed out: a dropped SYN would be retransmitted within the
    // 5 s the connect waited, and the packet count below would be above 1.
    let tcp = lines_to(&lines, t.gateway_addr(8443));
    assert_named(
        &tcp,
        json!({"reason": "NETFILTER_DROP", "hook": "OUTPUT", "tcp_flags": "S",
               "chain": "OUTPUT", "rule_num": 1, "verdict": "REJECT", "attribution": "exact",
               "rule": "-A OUTPUT -p tcp -m tcp --dport 8443 -j REJECT --reject-with tcp-reset"}),
    );
    assert_eq!(packets(&tcp), 1, "one SYN, refused: no retransmission");
    let udp_lines = lines_to(&lines, t.gateway_addr(5044));
    assert_named(
        &udp_lines,
        json!({"reason": "NETFILTER_DROP", "hook": "OUTPUT", "chain": "OUTPUT",
               "rule_num": 2, "verdict": "REJECT", "attribution": "exact"}),
    );
    agrees_with_kernel(&tcp, &k);
    agrees_with_kernel(&udp_lines, &k);
    // The RST and the ICMP error REJECT sends are accepted: they are not drops.
    assert_eq!(
        drops(&lines).len(),
        tcp.len() + udp_lines.len(),
        "{lines:?}"
    );
}

// 5. Negated CIDR, multiport lists, interface wildcards.

#[test]
fn negated_cidrs_multiport_lists_and_interface_wildcards() {
    let t = Topology::new().unwrap();
    route_via_veth(&t, &["10.0.0.0/8"]);
    let dev = client_if(&t);
    run_all(
        &t.client,
        &[
            "iptables -A OUTPUT -o lo -j ACCEPT",
            "iptables -A OUTPUT -p udp -m multiport --dports 53,123,5000:5010 -j ACCEPT",
            "iptables -A OUTPUT ! -d 10.0.0.0/8 -p udp --dport 4000 -j DROP",
            "iptables -A OUTPUT -o dtc+ -p udp --dport 4000 -j REJECT",
            "iptables -A OUTPUT -p udp -o dtc+ -m multiport ! --dports 6000,6001,7000:7010 -j DROP",
            &format!("iptables -A OUTPUT -o {dev} -p udp --dport 7005 -j DROP"),
            "iptables -A OUTPUT ! -o dtc+ -j DROP",
        ],
    );
    let gw = |port| t.gateway_addr(port);
    let ten = |port| addr("10.1.2.3", port);
    let w = watch(&t.client);
    for accepted in [gw(5005), gw(6001), ten(6000), gw(7000)] {
        assert!(udp(&t.client, accepted), "{accepted} is allowed");
    }
    let expected = [
        (gw(4000), 3, "DROP"),    // not in 10/8
        (ten(4000), 4, "REJECT"), // in 10/8: passes rule 3, caught by the dtc+ wildcard
        (gw(8000), 5, "DROP"),    // outside the negated multiport list
        (ten(5011), 5, "DROP"),   // just outside the accepted range
        (gw(7005), 6, "DROP"),    // the exact interface name
    ];
    for (to, ..) in expected {
        assert!(!udp(&t.client, to), "{to} must be dropped");
    }
    let lines = w.stop().unwrap();
    let k = kernel(&t.client, "iptables");
    for (to, num, verdict) in expected {
        let d = lines_to(&lines, to);
        assert_named(
            &d,
            json!({"chain": "OUTPUT", "rule_num": num, "verdict": verdict,
                   "attribution": "exact", "ifname": dev}),
        );
        agrees_with_kernel(&d, &k);
        assert_eq!(packets(&d), 1, "{to}");
    }
    assert_eq!(drops(&lines).len(), expected.len(), "{lines:?}");
    assert_eq!(k.count("OUTPUT", 7), 0);
}

// 6. Sets: ipset and nftables named sets.

#[test]
fn ipset_matches_are_decided_from_the_sets_contents() {
    // ipset is installed by `cargo xtask setup`: a missing one fails here.
    let t = Topology::new().unwrap();
    route_via_veth(&t, &["10.0.0.0/8", "192.0.2.0/24"]);
    // ipsets belong to the namespace: these vanish with it.
    run_all(
        &t.client,
        &[
            "ipset create allowed hash:ip",
            &format!("ipset add allowed {GATEWAY_V4}"),
            "ipset create blocked hash:net",
            "ipset add blocked 10.0.0.0/8",
            "ipset add blocked 10.9.0.0/16 nomatch",
            "ipset create svc hash:ip,port",
            "ipset add svc 192.0.2.7,udp:53",
            "iptables -A OUTPUT -p udp -m set --match-set allowed dst -j ACCEPT",
            "iptables -A OUTPUT -p udp -m set --match-set svc dst,dst -j ACCEPT",
            "iptables -A OUTPUT -p udp -m set --match-set blocked dst -j DROP",
            "iptables -A OUTPUT -p udp -m set ! --match-set allowed dst -j REJECT",
        ],
    );
    let w = watch(&t.client);
    for accepted in [t.gateway_addr(5044), addr("192.0.2.7", 53)] {
        assert!(udp(&t.client, accepted), "{accepted} is allowed");
    }
    let expected = [
        (addr("10.1.2.3", 5044), 3, "DROP"),
        (addr("10.9.1.1", 5044), 4, "REJECT"), // the nomatch hole in blocked
        (addr("192.0.2.7", 54), 4, "REJECT"),
    ];
    for (to, ..) in expected {
        assert!(!udp(&t.client, to), "{to} must be dropped");
    }
    let lines = w.stop().unwrap();
    let k = kernel(&t.client, "iptables");
    for (to, num, verdict) in expected {
        let d = lines_to(&lines, to);
        assert_named(
            &d,
            json!({"chain": "OUTPUT", "rule_num": num, "verdict": verdict,
                   "attribution": "exact"}),
        );
        agrees_with_kernel(&d, &k);
    }
    assert_eq!(drops(&lines).len(), expected.len(), "{lines:?}");
}

#[test]
fn nft_named_sets_are_decided_from_their_elements() {
    const TABLE: &str = "inet dtsets";
    let t = Topology::new().unwrap();
    route_via_veth(&t, &["10.0.0.0/8", "192.0.2.0/24"]);
    run_all(
        &t.client,
        &[
            "nft add table inet dtsets",
            "nft add set inet dtsets bad { type ipv4_addr ; flags interval ; }",
            "nft add element inet dtsets bad { 10.0.0.0/8, 192.0.2.0/25 }",
            "nft add set inet dtsets okports { type inet_service ; }",
            "nft add element inet dtsets okports { 53, 5044 }",
            "nft add chain inet dtsets out { type filter hook output priority 0 ; policy accept ; }",
            "nft add rule inet dtsets out ip daddr @bad udp dport @okports counter accept",
            "nft add rule inet dtsets out ip daddr @bad counter drop",
            "nft add rule inet dtsets out udp dport != @okports counter drop",
        ],
    );
    let (bad, _) = nft_rule(&t.client, TABLE, "ip daddr @bad counter");
    let (not_ok, _) = nft_rule(&t.client, TABLE, "udp dport != @okports");
    let w = watch(&t.client);
    for accepted in [
        addr("10.1.2.3", 53),
        t.gateway_addr(5044),
        addr("192.0.2.200", 5044),
    ] {
        assert!(udp(&t.client, accepted), "{accepted} is allowed");
    }
    let expected = [
        (addr("10.1.2.3", 9090), bad),
        (addr("192.0.2.7", 80), bad),
        (t.gateway_addr(9090), not_ok),
        (addr("192.0.2.200", 80), not_ok),
    ];
    for (to, _) in expected {
        assert!(!udp(&t.client, to), "{to} must be dropped");
    }
    let lines = w.stop().unwrap();
    for (to, handle) in expected {
        let d = lines_to(&lines, to);
        assert_named(
            &d,
            json!({"backend": "nftables", "table": "dtsets", "chain": "out",
                   "rule_num": null, "rule_handle": handle, "verdict": "DROP",
                   "attribution": "exact"}),
        );
    }
    let (_, bad_packets) = nft_rule(&t.client, TABLE, "ip daddr @bad counter");
    let (_, not_ok_packets) = nft_rule(&t.client, TABLE, "udp dport != @okports");
    assert_eq!((bad_packets, not_ok_packets), (Some(2), Some(2)));
    assert_eq!(drops(&lines).len(), expected.len(), "{lines:?}");
}

// 7. IPv6.

#[test]
fn ip6tables_drops_name_the_ip6_rule() {
    let t = Topology::new().unwrap();
    route_via_veth(&t, &["2001:db8:99::/64"]);
    t.gateway.tcp_listen(t.gateway_addr6(9090)).unwrap();
    run_all(
        &t.client,
        &[
            "ip6tables -A OUTPUT -p ipv6-icmp -j ACCEPT",
            "ip6tables -A OUTPUT -d 2001:db8:2::/64 -p udp -m multiport --dports 5044,5045 -j DROP",
            "ip6tables -A OUTPUT ! -d 2001:db8:2::/64 -p udp -j REJECT",
            "ip6tables -A OUTPUT -p tcp --dport 9090 -j DROP",
        ],
    );
    let w = watch(&t.client);
    assert!(udp(&t.client, t.gateway_addr6(5046)));
    assert!(udp(&t.client, t.gateway_addr(5044)), "IPv4 has no rules");
    let far = SocketAddr::new("2001:db8:99::1".parse::<IpAddr>().unwrap(), 5044);
    assert!(!udp(&t.client, t.gateway_addr6(5044)));
    assert!(!udp(&t.client, far));
    assert!(!t.client.tcp_connect(t.gateway_addr6(9090), SHORT).unwrap());
    let lines = w.stop().unwrap();
    let k = kernel(&t.client, "ip6tables");
    for (to, num, verdict) in [
        (t.gateway_addr6(5044), 2, "DROP"),
        (far, 3, "REJECT"),
        (t.gateway_addr6(9090), 4, "DROP"),
    ] {
        let d = lines_to(&lines, to);
        assert_named(
            &d,
            json!({"family": "ipv6", "engine": "nftables/ip6", "backend": "iptables-nft",
                   "table": "filter", "chain": "OUTPUT", "rule_num": num,
                   "verdict": verdict, "attribution": "exact"}),
        );
        agrees_with_kernel(&d, &k);
    }
    assert_eq!(
        packets(&lines_to(&lines, t.gateway_addr6(9090))),
        k.count("OUTPUT", 4)
    );
    // Only the three IPv6 destinations: the IPv4 datagram to 5044 went through.
    assert!(
        drops(&lines)
            .iter()
            .all(|d| d["dst"] == GATEWAY_V6 || d["dst"] == "2001:db8:99::1"),
        "{lines:?}"
    );
}

// 8. iptables-legacy and iptables-nft side by side.

#[test]
fn legacy_and_nft_iptables_in_one_namespace_each_name_their_backend() {
    let t = Topology::new().unwrap();
    run_all(
        &t.client,
        &[
            "iptables-legacy -A OUTPUT -p udp --dport 5001 -j DROP",
            // An ACCEPT in one engine does not stop the other from dropping.
            "iptables-legacy -A OUTPUT -p udp --dport 5002 -j ACCEPT",
            "iptables-nft -A OUTPUT -p udp --dport 5002 -j DROP",
            "iptables-nft -A OUTPUT -p udp --dport 5001 -j ACCEPT",
            // Both would drop 5003: the base chain the kernel runs first does.
            "iptables-legacy -A OUTPUT -p udp --dport 5003 -j DROP",
            "iptables-nft -A OUTPUT -p udp --dport 5003 -j DROP",
        ],
    );
    let w = watch(&t.client);
    for port in [5001, 5002, 5003] {
        assert!(!udp(&t.client, t.gateway_addr(port)), "{port}");
    }
    let lines = w.stop().unwrap();
    let legacy = kernel(&t.client, "iptables-legacy");
    let nft = kernel(&t.client, "iptables-nft");
    let d = lines_to(&lines, t.gateway_addr(5001));
    assert_named(
        &d,
        json!({"engine": "xtables", "backend": "iptables-legacy", "table": "filter",
               "chain": "OUTPUT", "rule_num": 1, "verdict": "DROP", "attribution": "exact"}),
    );
    agrees_with_kernel(&d, &legacy);
    let d = lines_to(&lines, t.gateway_addr(5002));
    assert_named(
        &d,
        json!({"engine": "nftables/ip", "backend": "iptables-nft", "table": "filter",
               "chain": "OUTPUT", "rule_num": 1, "verdict": "DROP", "attribution": "exact"}),
    );
    agrees_with_kernel(&d, &nft);
    // 5003: the kernel's counters say which engine dropped it; droptrace must agree.
    let (by_legacy, by_nft) = (legacy.count("OUTPUT", 3), nft.count("OUTPUT", 3));
    assert_eq!(by_legacy + by_nft, 1, "exactly one engine dropped 5003");
    let (engine, backend, k) = if by_legacy == 1 {
        ("xtables", "iptables-legacy", &legacy)
    } else {
        ("nftables/ip", "iptables-nft", &nft)
    };
    let d = lines_to(&lines, t.gateway_addr(5003));
    assert_named(
        &d,
        json!({"engine": engine, "backend": backend, "rule_num": 3, "verdict": "DROP",
               "attribution": "exact"}),
    );
    agrees_with_kernel(&d, k);
}

// 9. Native nftables.

#[test]
fn native_nftables_inet_chain_at_priority_minus_10_comes_first() {
    const TABLE: &str = "inet dtfw";
    let t = Topology::new().unwrap();
    run_all(
        &t.client,
        &[
            // iptables-nft's filter OUTPUT runs at priority 0, after the inet chain below.
            "iptables -A OUTPUT -p udp --dport 5044 -j DROP",
            "iptables -A OUTPUT -p udp --dport 5047 -j DROP",
            "nft add table inet dtfw",
            "nft -- add chain inet dtfw early { type filter hook output priority -10 ; policy accept ; }",
            "nft add rule inet dtfw early udp dport 5044 counter drop",
            "nft add rule inet dtfw early udp dport 5045 drop",
            "nft add rule inet dtfw early meta nfproto ipv6 udp dport 5046 counter reject",
            // A base chain whose policy drops: nftables keeps no counter for policies.
            "nft add chain inet dtfw late { type filter hook output priority 10 ; policy drop ; }",
            "nft add rule inet dtfw late meta l4proto != udp accept",
            "nft add rule inet dtfw late udp dport != 6000 accept",
        ],
    );
    let (h5044, _) = nft_rule(&t.client, TABLE, "udp dport 5044 counter");
    let (h5045, _) = nft_rule(&t.client, TABLE, "udp dport 5045 drop");
    let (h5046, _) = nft_rule(&t.client, TABLE, "udp dport 5046 counter");
    let w = watch(&t.client);
    assert_eq!(t.client.udp_send(t.gateway_addr(5044), 2).unwrap(), 0);
    assert!(!udp(&t.client, t.gateway_addr(5045)));
    assert!(
        udp(&t.client, t.gateway_addr(5046)),
        "the reject is for IPv6 only"
    );
    assert!(!udp(&t.client, t.gateway_addr6(5046)));
    assert!(!udp(&t.client, t.gateway_addr(5047)));
    assert!(!udp(&t.client, t.gateway_addr(6000)));
    let lines = w.stop().unwrap();
    let k = kernel(&t.client, "iptables");

    let d = lines_to(&lines, t.gateway_addr(5044));
    assert_named(
        &d,
        json!({"engine": "nftables/inet", "backend": "nftables", "table": "dtfw",
               "chain": "early", "rule_num": null, "rule_handle": h5044,
               "verdict": "DROP", "attribution": "exact"}),
    );
    assert!(
        d[0]["rule"]
            .as_str()
            .unwrap()
            .starts_with("udp dport 5044 counter")
    );
    assert_eq!(packets(&d), 2);
    assert_eq!(
        nft_rule(&t.client, TABLE, "udp dport 5044 counter").1,
        Some(2)
    );
    assert_eq!(k.count("OUTPUT", 1), 0, "the iptables rule never saw 5044");

    // No counter: the evaluation is all droptrace has.
    let d = lines_to(&lines, t.gateway_addr(5045));
    assert_named(
        &d,
        json!({"backend": "nftables", "chain": "early", "rule_handle": h5045,
               "verdict": "DROP", "attribution": "inferred"}),
    );
    assert!(
        d[0]["why"].as_str().unwrap().contains("no counter"),
        "{}",
        d[0]
    );

    let d = lines_to(&lines, t.gateway_addr6(5046));
    assert_named(
        &d,
        json!({"family": "ipv6", "backend": "nftables", "chain": "early",
               "rule_handle": h5046, "verdict": "REJECT", "attribution": "exact"}),
    );

    let d = lines_to(&lines, t.gateway_addr(5047));
    assert_named(
        &d,
        json!({"engine": "nftables/ip", "backend": "iptables-nft", "table": "filter",
               "chain": "OUTPUT", "rule_num": 2, "verdict": "DROP", "attribution": "exact"}),
    );
    agrees_with_kernel(&d, &k);

    let d = lines_to(&lines, t.gateway_addr(6000));
    assert_named(
        &d,
        json!({"engine": "nftables/inet", "backend": "nftables", "table": "dtfw",
               "chain": "late", "rule": null, "verdict": "policy",
               "attribution": "inferred"}),
    );
    assert!(
        d[0]["why"].as_str().unwrap().contains("no counter"),
        "{}",
        d[0]
    );
}

// 10. INPUT on the gateway.

#[test]
fn input_drops_in_the_gateway_name_the_input_rule() {
    let t = Topology::new().unwrap();
    t.gateway.tcp_listen(t.gateway_addr(22)).unwrap();
    t.gateway.tcp_listen(t.gateway_addr(8080)).unwrap();
    run_all(
        &t.gateway,
        &[
            "iptables -A INPUT -i lo -j ACCEPT",
            "iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "iptables -A INPUT -p tcp --dport 22 -j ACCEPT",
            "iptables -A INPUT -i dtg+ -p tcp -m multiport --dports 8080,8443 -j DROP",
            "iptables -A INPUT -s 198.51.100.0/24 -p udp -j REJECT",
            "iptables -A INPUT -p ipv6-icmp -j ACCEPT",
            "iptables -P INPUT DROP",
        ],
    );
    let w = watch(&t.gateway);
    assert!(t.client.tcp_connect(t.gateway_addr(22), SHORT).unwrap());
    assert!(!t.client.tcp_connect(t.gateway_addr(8080), SHORT).unwrap());
    assert!(!t.client.tcp_connect(t.gateway_addr(9000), SHORT).unwrap());
    // The REJECT happens on the gateway: the client's send itself succeeds.
    assert!(udp(&t.client, t.gateway_addr(5044)));
    thread::sleep(Duration::from_millis(100));
    let lines = w.stop().unwrap();
    let k = kernel(&t.gateway, "iptables");
    for (port, num, verdict) in [
        (8080, Some(4), "DROP"),
        (5044, Some(5), "REJECT"),
        (9000, None, "policy"),
    ] {
        let d = lines_to(&lines, t.gateway_addr(port));
        assert_named(
            &d,
            json!({"hook": "INPUT", "backend": "iptables-nft", "table": "filter",
                   "chain": "INPUT", "rule_num": num, "verdict": verdict,
                   "attribution": "exact"}),
        );
        agrees_with_kernel(&d, &k);
        assert!(
            d[0]["ifname"].as_str().unwrap().starts_with("dtg"),
            "{}",
            d[0]
        );
    }
    assert_eq!(
        packets(&lines_to(&lines, t.gateway_addr(8080))),
        k.count("INPUT", 4)
    );
    assert!(lines_to(&lines, t.gateway_addr(22)).is_empty());
}

/// The connection's mark, read from the kernel at the drop: mangle PREROUTING marks
/// connections to one port "quarantined" (CONNMARK, nft `ct mark set`); INPUT drops marked
/// connections first and both ports after. Datagrams to both ports go out interleaved, so
/// both drop rules' counters grow in one window and cannot say which rule dropped which
/// flow: only the mark can, and each line names its rule exactly, with the mark it read.
/// Datagrams from the client to the gateway's ports `a` and `b`, in turn, back to back.
fn interleave(t: &Topology, a: u16, b: u16) {
    for _ in 0..5 {
        for port in [a, b] {
            assert!(udp(&t.client, t.gateway_addr(port)));
        }
    }
}

#[test]
fn a_connection_mark_read_at_the_drop_names_the_rule() {
    let t = Topology::new().unwrap();
    run_all(
        &t.gateway,
        &[
            "iptables -t mangle -A PREROUTING -p udp --dport 7901 -j CONNMARK --set-xmark 0x2/0xff",
            "iptables -A INPUT -m connmark --mark 0x2/0xff -j DROP",
            "iptables -A INPUT -p udp -m multiport --dports 7901,7902 -j DROP",
        ],
    );
    let w = watch(&t.gateway);
    interleave(&t, 7901, 7902);
    thread::sleep(Duration::from_millis(100));
    let lines = w.stop().unwrap();
    let k = kernel(&t.gateway, "iptables");
    for (port, num, ct_mark) in [(7901, 1, 2), (7902, 2, 0)] {
        let d = lines_to(&lines, t.gateway_addr(port));
        assert_named(
            &d,
            json!({"chain": "INPUT", "rule_num": num, "verdict": "DROP",
                   "attribution": "exact", "ct_mark": ct_mark}),
        );
        agrees_with_kernel(&d, &k);
    }

    let t = Topology::new().unwrap();
    run_all(
        &t.gateway,
        &[
            "nft add table inet q",
            "nft add chain inet q pre { type filter hook prerouting priority -150 ; }",
            "nft add chain inet q input { type filter hook input priority 0 ; }",
            "nft add rule inet q pre udp dport 7911 ct mark set 0x2",
            "nft add rule inet q input ct mark 0x2 counter drop",
            "nft add rule inet q input udp dport { 7911, 7912 } counter drop",
        ],
    );
    let w = watch(&t.gateway);
    interleave(&t, 7911, 7912);
    thread::sleep(Duration::from_millis(100));
    let lines = w.stop().unwrap();
    for (port, needle, ct_mark) in [(7911, "ct mark 0x00000002", 2), (7912, "udp dport {", 0)] {
        let (handle, counted) = nft_rule(&t.gateway, "inet q", needle);
        let d = lines_to(&lines, t.gateway_addr(port));
        assert_named(
            &d,
            json!({"chain": "input", "rule_handle": handle, "verdict": "DROP",
                   "attribution": "exact", "ct_mark": ct_mark}),
        );
        assert_eq!(Some(packets(&d)), counted, "{d:?}");
    }
}

// 11. Randomised differential test.

/// xorshift64*: small, deterministic, good enough to pick rules.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const PORTS: &[u16] = &[53, 80, 443, 1000, 2000, 5044, 8080, 9090];
const DESTINATIONS: &[&str] = &[GATEWAY_V4, "10.1.2.3", "10.200.0.1", "192.0.2.7"];
const NETS: &[&str] = &[
    "203.0.113.0/24",
    "203.0.113.10",
    "10.0.0.0/8",
    "10.1.0.0/16",
    "192.0.2.0/24",
    "0.0.0.0/0",
];

fn random_ports(rng: &mut Rng, n: usize) -> String {
    let mut ports: Vec<u16> = (0..n).map(|_| *rng.pick(PORTS)).collect();
    ports.sort_unstable();
    ports.dedup();
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// One rule for `chain`, which may jump or go to the chains in `callees`.
fn random_rule(rng: &mut Rng, chain: &str, callees: &[&str], dev: &str) -> String {
    let mut rule = format!("iptables -A {chain}");
    let udp = match rng.below(10) {
        0..=4 => {
            rule += " -p udp";
            true
        }
        5 => {
            rule += " -p tcp";
            false
        }
        6 => {
            rule += " ! -p tcp";
            false
        }
        _ => false,
    };
    if udp && rng.chance(60) {
        rule += &match rng.below(6) {
            0 => format!(" --dport {}", rng.pick(PORTS)),
            1 => format!(" ! --dport {}", rng.pick(PORTS)),
            2 => {
                let (a, b) = (*rng.pick(PORTS), *rng.pick(PORTS));
                format!(" --dport {}:{}", a.min(b), a.max(b))
            }
            3 => format!(" -m multiport --dports {}", random_ports(rng, 3)),
            4 => format!(" -m multiport ! --dports {}", random_ports(rng, 2)),
            _ => format!(" -m multiport --ports {}", random_ports(rng, 2)),
        };
    }
    if rng.chance(35) {
        let net = *rng.pick(NETS);
        // iptables-nft refuses `! -d 0.0.0.0/0`.
        let not = if rng.chance(40) && net != "0.0.0.0/0" {
            "! "
        } else {
            ""
        };
        rule += &format!(" {not}-d {net}");
    }
    if rng.chance(15) {
        rule += match rng.below(3) {
            0 => " -o dtc+".to_string(),
            1 => " ! -o dtc+".to_string(),
            _ => format!(" -o {dev}"),
        }
        .as_str();
    }
    if rng.chance(10) {
        rule += *rng.pick(&[
            " -m conntrack --ctstate NEW",
            " -m conntrack --ctstate ESTABLISHED,RELATED",
            " -m conntrack ! --ctstate INVALID",
        ]);
    }
    if rng.chance(8) {
        rule += *rng.pick(&[
            " -m owner --uid-owner 0",
            " -m owner ! --uid-owner 0",
            " -m owner --uid-owner 1000-2000",
        ]);
    }
    let roll = rng.below(100);
    rule += &match roll {
        0..=19 => " -j ACCEPT".to_string(),
        20..=44 => " -j DROP".to_string(),
        45..=56 => " -j REJECT".to_string(),
        57..=64 => " -j RETURN".to_string(),
        65..=86 if !callees.is_empty() => format!(" -j {}", rng.pick(callees)),
        87..=94 if !callees.is_empty() => format!(" -g {}", rng.pick(callees)),
        _ => String::new(), // no target: a counter only
    };
    rule
}

/// A ruleset of a few rules in OUTPUT and up to two user chains. `shape` (the ruleset's
/// index) guarantees every kind of decision turns up: a third of the rulesets have no
/// user chain, a third one, a third two, with a jump to the first that most datagrams
/// take; every fourth has a DROP policy.
fn random_ruleset(rng: &mut Rng, dev: &str, shape: u64) -> Vec<String> {
    let user: &[&str] = match shape % 3 {
        0 => &[],
        1 => &["U1"],
        _ => &["U1", "U2"],
    };
    let mut rules: Vec<String> = user.iter().map(|c| format!("iptables -N {c}")).collect();
    // The ICMP errors REJECT sends to ourselves go out on lo: keep them out of the picture.
    rules.push("iptables -A OUTPUT -o lo -j ACCEPT".into());
    let mut output: Vec<String> = (0..2 + rng.below(4))
        .map(|_| random_rule(rng, "OUTPUT", user, dev))
        .collect();
    if !user.is_empty() {
        let at = rng.below(output.len() + 1);
        output.insert(at, "iptables -A OUTPUT -p udp -j U1".into());
    }
    rules.extend(output);
    for (i, chain) in user.iter().enumerate() {
        for _ in 0..1 + rng.below(3) {
            rules.push(random_rule(rng, chain, &user[i + 1..], dev));
        }
    }
    if shape % 4 == 3 {
        rules.push("iptables -P OUTPUT DROP".into());
    }
    rules
}

/// What the kernel decided for the probes of one or more rulesets.
#[derive(Debug, Default)]
struct Coverage {
    accepted: usize,
    by_output_rule: usize,
    by_user_chain_rule: usize,
    by_policy: usize,
    rejected: usize,
}

impl Coverage {
    fn add(&mut self, other: &Coverage) {
        self.accepted += other.accepted;
        self.by_output_rule += other.by_output_rule;
        self.by_user_chain_rule += other.by_user_chain_rule;
        self.by_policy += other.by_policy;
        self.rejected += other.rejected;
    }
}

/// Applies ruleset `seed` in a fresh topology, sends datagrams one at a time, and returns
/// every disagreement between droptrace and the kernel's counters.
fn differential_case(seed: u64, shape: u64) -> (Vec<String>, Coverage) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let t = Topology::new().unwrap();
    route_via_veth(&t, &["10.0.0.0/8", "192.0.2.0/24"]);
    let dev = client_if(&t);
    let rules = random_ruleset(&mut rng, &dev, shape);
    for rule in &rules {
        run(&t.client, rule);
    }
    let mut probes: Vec<SocketAddr> = Vec::new();
    while probes.len() < 8 {
        let to = addr(rng.pick(DESTINATIONS), *rng.pick(PORTS));
        if !probes.contains(&to) {
            probes.push(to);
        }
    }

    let w = watch(&t.client);
    let mut verdicts = Vec::new();
    let mut before = kernel(&t.client, "iptables");
    for &to in &probes {
        let sent = udp(&t.client, to);
        let after = kernel(&t.client, "iptables");
        let decided = after.decision_since(&before);
        verdicts.push((to, sent, decided));
        before = after;
    }
    let lines = w.stop().unwrap();
    let k = before;

    let mut coverage = Coverage::default();
    for (_, _, decided) in &verdicts {
        match decided {
            None => coverage.accepted += 1,
            Some((_, None)) => coverage.by_policy += 1,
            Some((chain, Some(num))) => {
                if chain == "OUTPUT" {
                    coverage.by_output_rule += 1;
                } else {
                    coverage.by_user_chain_rule += 1;
                }
                if k.text(chain, *num).contains("-j REJECT") {
                    coverage.rejected += 1;
                }
            }
        }
    }
    let context = || format!("seed {seed}, rules:\n  {}", rules.join("\n  "));
    let mut failures = Vec::new();
    let mut fail = |what: String| failures.push(format!("{what}\n{}", context()));
    for (to, sent, decided) in verdicts {
        let d = lines_to(&lines, to);
        match (sent, decided) {
            (true, None) => {
                if !d.is_empty() {
                    fail(format!("{to} was let through but reported: {d:?}"));
                }
            }
            (false, Some((chain, num))) => {
                if packets(&d) != 1 {
                    fail(format!(
                        "{to} dropped once, reported {}: {d:?}",
                        packets(&d)
                    ));
                }
                for line in &d {
                    let verdict = match num {
                        Some(num) if k.text(&chain, num).contains("-j REJECT") => "REJECT",
                        Some(_) => "DROP",
                        None => "policy",
                    };
                    let want = json!({
                        "backend": "iptables-nft", "table": "filter", "chain": chain,
                        "rule_num": num, "rule": num.map(|n| k.text(&chain, n)),
                        "verdict": verdict, "attribution": "exact",
                    });
                    let wrong: Vec<String> = want
                        .as_object()
                        .unwrap()
                        .iter()
                        .filter(|(key, value)| &line[key.as_str()] != *value)
                        .map(|(key, value)| format!("{key} {} (kernel: {value})", line[key]))
                        .collect();
                    if !wrong.is_empty() {
                        fail(format!("{to}: {}; line: {line}", wrong.join(", ")));
                    }
                }
            }
            (sent, decided) => fail(format!(
                "oracle inconsistent for {to}: sent={sent}, counters say {decided:?}"
            )),
        }
    }
    let unexpected: Vec<&Value> = drops(&lines)
        .into_iter()
        .filter(|d| !probes.iter().any(|p| lines_to(&lines, *p).contains(d)))
        .collect();
    if !unexpected.is_empty() {
        fail(format!("drops nobody sent: {unexpected:?}"));
    }
    (failures, coverage)
}

#[test]
fn randomised_rulesets_droptrace_names_the_rule_whose_counter_grew() {
    const RULESETS: u64 = 20;
    const WORKERS: u64 = 4;
    const SEED: u64 = 20_260_620;
    // Another seed explores other rulesets: DROPTRACE_DIFF_SEED=n cargo test ...
    let seed0: u64 = std::env::var("DROPTRACE_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            thread::spawn(move || {
                (w..RULESETS)
                    .step_by(WORKERS as usize)
                    .map(|i| differential_case(seed0 + i, i))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut failures = Vec::new();
    let mut coverage = Coverage::default();
    for worker in workers {
        for (failed, covered) in worker.join().expect("worker panicked") {
            failures.extend(failed);
            coverage.add(&covered);
        }
    }
    eprintln!("probes decided by the kernel: {coverage:?}");
    // The generator must keep exercising every kind of decision, or this test proves less
    // than it claims. (Other seeds may miss one by chance.)
    assert!(
        seed0 != SEED
            || (coverage.accepted > 0
                && coverage.by_output_rule > 0
                && coverage.by_user_chain_rule > 0
                && coverage.by_policy > 0
                && coverage.rejected > 0),
        "{coverage:?}"
    );
    assert!(
        failures.is_empty(),
        "{} disagreement(s) with the kernel:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
