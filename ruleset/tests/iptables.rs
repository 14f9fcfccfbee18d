//! A host firewall with user chains, goto, ipsets, NAT and undecidable
//! matches, captured from iptables-nft and iptables-legacy (identical rules
//! loaded into both), plus an ip6tables ruleset.

mod common;

use common::*;
use ruleset::{Backend, CtState, Engine, Family, Hook, Ruleset, Table, TableFamily, eval::Verdict};

fn host(with_ipsets: bool) -> Ruleset {
    let mut tables: Vec<Table> =
        iptables_fixture("host-nft.iptables-save", Backend::IptablesNft, Family::Ipv4);
    tables.extend(iptables_fixture(
        "host-legacy.iptables-save",
        Backend::IptablesLegacy,
        Family::Ipv4,
    ));
    let ipsets = if with_ipsets {
        ruleset::ipset::parse_save(&fixture("host.ipset")).unwrap()
    } else {
        Default::default()
    };
    Ruleset {
        tables,
        ipsets,
        local_routes: None,
        recent: None,
    }
}

const BOTH_ENGINES: [Engine; 2] = [Engine::NfTables, Engine::Xtables];

#[test]
fn both_dumps_parse_to_the_same_rules() {
    let ruleset = host(true);
    let (nft, legacy): (Vec<&Table>, Vec<&Table>) = ruleset
        .tables
        .iter()
        .partition(|table| table.backend == Backend::IptablesNft);
    assert_eq!(nft.len(), 4);
    assert_eq!(legacy.len(), 4);
    for table in &nft {
        let twin = legacy
            .iter()
            .find(|other| other.name == table.name)
            .unwrap();
        for chain in &table.chains {
            let twin_chain = twin.chain(&chain.name).unwrap();
            assert_eq!(chain.base, twin_chain.base, "{}", chain.name);
            let texts = |chain: &ruleset::Chain| {
                chain
                    .rules
                    .iter()
                    .map(|r| r.text.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(texts(chain), texts(twin_chain));
        }
    }
    let filter = nft.iter().find(|table| table.name == "filter").unwrap();
    assert_eq!(filter.family, TableFamily::Ip);
    let input = filter.chain("INPUT").unwrap();
    assert_eq!(input.rules.len(), 9);
    assert_eq!(
        input.rules[6].comment.as_deref(),
        Some(r#"web "front" door"#)
    );
}

#[test]
fn ssh_from_outside_returns_from_the_user_chain_and_is_rejected_with_reset() {
    let ruleset = host(true);
    let packet = tcp("203.0.113.9", "10.99.0.1", 22).inbound("uplink0");
    for engine in BOTH_ENGINES {
        let evaluation = evaluate(&ruleset, engine.backends(), Hook::Input, &packet);
        assert_eq!(
            evaluation.verdict,
            Verdict::Reject {
                with: Some("tcp-reset".into())
            },
            "{engine:?}"
        );
        assert_eq!(
            decided_at(&evaluation),
            ("filter".into(), "INPUT".into(), 8)
        );
        // Rejected in filter (priority 0): nat's INPUT (100) never runs.
        assert_eq!(
            path(&evaluation),
            ["mangle/INPUT", "filter/INPUT", "filter/SSH_IN"]
        );
        // The recent list could have dropped it first: lower confidence.
        assert_eq!(undecided(&evaluation), ["SSH_IN:3"]);
        assert!(evaluation.undecided[0].1.contains("recent"));
        assert!(
            evaluation
                .path
                .iter()
                .all(|chain| chain.backend == engine.backends()[0])
        );
    }
}

#[test]
fn ssh_from_the_lan_is_accepted_in_the_user_chain() {
    let ruleset = host(true);
    let packet = tcp("192.168.7.7", "10.99.0.1", 22).inbound("uplink0");
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Input, &packet);
    assert_eq!(evaluation.verdict, Verdict::Accept);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "SSH_IN".into(), 2)
    );
    assert!(evaluation.undecided.is_empty());
    // Accepted in filter, the packet goes on to nat's INPUT (source NAT,
    // priority 100), whose policy accepts; the rule stays the answer.
    assert_eq!(
        path(&evaluation),
        ["mangle/INPUT", "filter/INPUT", "filter/SSH_IN", "nat/INPUT"]
    );
}

#[test]
fn nat_chains_only_see_new_connections() {
    let ruleset = host(true);
    let packet = tcp("198.51.100.4", "10.99.0.1", 443)
        .inbound("uplink0")
        .flags(ACK)
        .ct(Some(CtState::Established));
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Input, &packet);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "INPUT".into(), 3)
    );
    assert_eq!(path(&evaluation), ["mangle/INPUT", "filter/INPUT"]);
    // Unknown state: nat runs, as it would for a new flow, and the state
    // rules before the accepting one are undecided.
    let packet = packet.flags(SYN).ct(None);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Input, &packet);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "INPUT".into(), 7)
    );
    assert_eq!(undecided(&evaluation), ["INPUT:2", "INPUT:3"]);
    assert_eq!(
        path(&evaluation).last().map(String::as_str),
        Some("nat/INPUT")
    );
}

#[test]
fn web_syn_is_accepted_by_flags_plus_multiport_range() {
    let ruleset = host(true);
    let packet = tcp("198.51.100.4", "10.99.0.1", 8080).inbound("uplink0");
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Input, &packet);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "INPUT".into(), 7)
    );
    // Not a SYN: rule 7 does not hold, rule 8 rejects.
    let packet = packet.flags(SYN | ACK);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Input, &packet);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "INPUT".into(), 8)
    );
}

#[test]
fn udp_falls_through_to_the_logging_drop_chain() {
    let ruleset = host(true);
    let packet = udp("198.51.100.4", "10.99.0.1", 5353).inbound("uplink0");
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Input, &packet);
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "LOG_DROP".into(), 2)
    );
    assert_eq!(rule(&evaluation).text, "-A LOG_DROP -j DROP");
    // The -m limit rule is for ICMP only: ruled out, not undecided.
    assert!(
        evaluation.undecided.is_empty(),
        "{:?}",
        evaluation.undecided
    );
}

#[test]
fn rate_limited_ping_is_undecidable_before_the_drop() {
    let ruleset = host(true);
    let packet = icmp("198.51.100.4", "10.99.0.1", 8, 0).inbound("uplink0");
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Input, &packet);
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "LOG_DROP".into(), 2)
    );
    assert_eq!(undecided(&evaluation), ["INPUT:4"]);
    assert!(evaluation.undecided[0].1.contains("-m limit"));
    // Fragmentation-needed is accepted by the exact type/code rule.
    let packet = icmp("198.51.100.4", "10.99.0.1", 3, 4).inbound("uplink0");
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Input, &packet);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "INPUT".into(), 5)
    );
    let packet = icmp("198.51.100.4", "10.99.0.1", 3, 1).inbound("uplink0");
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Input, &packet);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "LOG_DROP".into(), 2)
    );
}

#[test]
fn invalid_state_is_dropped_early() {
    let ruleset = host(true);
    let packet = tcp("198.51.100.4", "10.99.0.1", 443)
        .inbound("uplink0")
        .ct(Some(CtState::Invalid));
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Input, &packet);
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "INPUT".into(), 2)
    );
    // Not new: the nat table's INPUT chain is skipped.
    assert_eq!(path(&evaluation), ["mangle/INPUT", "filter/INPUT"]);
}

#[test]
fn allowed_destinations_come_from_the_ipset() {
    let ruleset = host(true);
    let packet = tcp("10.99.0.1", "192.0.2.50", 8443);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &packet);
    assert_eq!(evaluation.verdict, Verdict::Accept);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "OUTPUT".into(), 4)
    );
    // hash:ip,port: 203.0.113.5 is allowed on tcp/443 only.
    let packet = tcp("10.99.0.1", "203.0.113.5", 443);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &packet);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "OUTPUT".into(), 5)
    );
}

#[test]
fn without_ipset_contents_the_set_rules_are_undecided() {
    let ruleset = host(false);
    let packet = tcp("10.99.0.1", "192.0.2.50", 443);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &packet);
    // Taken as not matching; the goto to EGRESS then accepts 443.
    assert_eq!(evaluation.verdict, Verdict::Accept);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "EGRESS".into(), 1)
    );
    assert_eq!(undecided(&evaluation), ["OUTPUT:4", "OUTPUT:5"]);
    assert!(evaluation.undecided[0].1.contains("allowed_dst"));
}

#[test]
fn egress_drop_after_goto_with_undecidable_rules_on_the_way() {
    let ruleset = host(true);
    let packet = tcp("10.99.0.1", "203.0.113.99", 8443).len(200);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &packet);
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "EGRESS".into(), 6)
    );
    assert_eq!(
        path(&evaluation),
        [
            "raw/OUTPUT",
            "mangle/OUTPUT",
            "nat/OUTPUT",
            "filter/OUTPUT",
            "filter/EGRESS"
        ]
    );
    assert_eq!(undecided(&evaluation), ["EGRESS:2", "EGRESS:5"]);
    assert!(
        evaluation.undecided[0]
            .1
            .contains("local routes were not read")
    );
    assert!(evaluation.undecided[1].1.contains("hashlimit"));
    // With the namespace's local table read, the addrtype rule is decided: 203.0.113.99 is
    // not local, so only the hashlimit rule is left undecided.
    let mut with_routes = ruleset.clone();
    with_routes.local_routes = Some(
        ruleset::addrtype::LocalTable::from_ip_json(
            r#"[{"type":"local","dst":"10.99.0.1","dev":"uplink0"}]"#,
        )
        .unwrap(),
    );
    let evaluation = evaluate(
        &with_routes,
        Engine::NfTables.backends(),
        Hook::Output,
        &packet,
    );
    assert_eq!(undecided(&evaluation), ["EGRESS:5"]);
    let to_self = tcp("10.99.0.1", "10.99.0.1", 8443).len(200);
    let evaluation = evaluate(
        &with_routes,
        Engine::NfTables.backends(),
        Hook::Output,
        &to_self,
    );
    assert_eq!(evaluation.verdict, Verdict::Accept);
    // A short packet is accepted by the length rule, an iprange one by iprange.
    let short = tcp("10.99.0.1", "203.0.113.99", 8443);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &short);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "EGRESS".into(), 3)
    );
    let ranged = tcp("10.99.0.1", "203.0.113.15", 8443).len(200);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &ranged);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "EGRESS".into(), 4)
    );
}

#[test]
fn negated_cidr_keeps_internal_traffic_out_of_the_goto() {
    let ruleset = host(true);
    let packet = tcp("10.99.0.1", "10.1.2.3", 8443).len(200);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &packet);
    assert_eq!(evaluation.verdict, Verdict::Accept);
    assert_eq!(policy_of(&evaluation), ("filter".into(), "OUTPUT".into()));
    assert_eq!(
        path(&evaluation),
        ["raw/OUTPUT", "mangle/OUTPUT", "nat/OUTPUT", "filter/OUTPUT"]
    );
}

#[test]
fn owner_mark_and_syn_rules_in_output() {
    let ruleset = host(true);
    let root = tcp("10.99.0.1", "203.0.113.99", 8443).uid(Some(0));
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &root);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "OUTPUT".into(), 1)
    );
    let marked = tcp("10.99.0.1", "203.0.113.99", 8443).mark(0x119);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &marked);
    assert_eq!(
        evaluation.verdict,
        Verdict::Reject {
            with: Some("icmp-admin-prohibited".into())
        }
    );
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "OUTPUT".into(), 2)
    );
    let reply = tcp("10.99.0.1", "203.0.113.99", 8443).flags(ACK);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &reply);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "OUTPUT".into(), 3)
    );
    // A kernel-generated packet has no socket: the owner rule cannot match.
    let kernel = tcp("10.99.0.1", "203.0.113.99", 8443).uid(None).len(200);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &kernel);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "EGRESS".into(), 6)
    );
}

#[test]
fn forward_rules_with_negated_and_wildcard_interfaces() {
    let ruleset = host(true);
    let from_docker = tcp("172.17.0.2", "203.0.113.99", 443).forwarded("docker0", "uplink0");
    let evaluation = evaluate(
        &ruleset,
        Engine::NfTables.backends(),
        Hook::Forward,
        &from_docker,
    );
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "FORWARD".into(), 1)
    );
    let to_veth = tcp("203.0.113.99", "172.17.0.2", 80).forwarded("uplink0", "veth9f3a");
    let evaluation = evaluate(
        &ruleset,
        Engine::NfTables.backends(),
        Hook::Forward,
        &to_veth,
    );
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "FORWARD".into(), 2)
    );
    let established = to_veth.clone().ct(Some(CtState::Established));
    let evaluation = evaluate(
        &ruleset,
        Engine::NfTables.backends(),
        Hook::Forward,
        &established,
    );
    assert_eq!(policy_of(&evaluation), ("filter".into(), "FORWARD".into()));
    let within_docker = tcp("172.17.0.2", "172.17.0.3", 80).forwarded("docker0", "docker0");
    let evaluation = evaluate(
        &ruleset,
        Engine::NfTables.backends(),
        Hook::Forward,
        &within_docker,
    );
    assert_eq!(policy_of(&evaluation), ("filter".into(), "FORWARD".into()));
}

#[test]
fn nat_and_raw_chains_run_in_priority_order_and_accept() {
    let ruleset = host(true);
    let packet = tcp("172.17.0.2", "203.0.113.99", 443).forwarded("docker0", "uplink0");
    let evaluation = evaluate(
        &ruleset,
        Engine::NfTables.backends(),
        Hook::Postrouting,
        &packet,
    );
    assert_eq!(evaluation.verdict, Verdict::Accept);
    assert_eq!(
        decided_at(&evaluation),
        ("nat".into(), "POSTROUTING".into(), 1)
    );
    assert_eq!(path(&evaluation), ["mangle/POSTROUTING", "nat/POSTROUTING"]);
    let dns = udp("198.51.100.53", "10.99.0.1", 53).inbound("uplink0");
    let evaluation = evaluate(
        &ruleset,
        Engine::NfTables.backends(),
        Hook::Prerouting,
        &dns,
    );
    assert_eq!(
        path(&evaluation),
        ["raw/PREROUTING", "mangle/PREROUTING", "nat/PREROUTING"]
    );
    assert_eq!(evaluation.verdict, Verdict::Accept);
}

#[test]
fn policy_counters_are_read_from_chain_lines() {
    let tables = iptables_fixture(
        "host-legacy.iptables-save",
        Backend::IptablesLegacy,
        Family::Ipv4,
    );
    let nat = tables.iter().find(|table| table.name == "nat").unwrap();
    let output = nat.chain("OUTPUT").unwrap();
    assert_eq!(output.policy_counters.map(|c| c.packets), Some(2));
}

mod ipv6 {
    use super::*;

    fn v6() -> Ruleset {
        ruleset(iptables_fixture(
            "v6.ip6tables-save",
            Backend::IptablesNft,
            Family::Ipv6,
        ))
    }

    const SRC: &str = "2001:db8:99::1";

    #[test]
    fn parses_as_ip6_table() {
        let ruleset = v6();
        assert_eq!(ruleset.tables[0].family, TableFamily::Ip6);
        let output = ruleset.tables[0].chain("OUTPUT").unwrap();
        assert_eq!(output.rules.len(), 6);
        assert!(output.rules.iter().all(|rule| {
            rule.matches
                .iter()
                .all(|one| !matches!(one.condition, ruleset::Condition::Undecidable { .. }))
        }));
    }

    #[test]
    fn https_to_the_local_prefix_is_accepted() {
        let packet = tcp(SRC, "2001:db8:99::50", 443);
        let evaluation = evaluate(&v6(), Engine::NfTables.backends(), Hook::Output, &packet);
        assert_eq!(
            decided_at(&evaluation),
            ("filter".into(), "OUTPUT".into(), 4)
        );
    }

    #[test]
    fn smtp_is_rejected_with_adm_prohibited() {
        let packet = tcp(SRC, "2001:db8:99::50", 25);
        let evaluation = evaluate(&v6(), Engine::NfTables.backends(), Hook::Output, &packet);
        assert_eq!(
            evaluation.verdict,
            Verdict::Reject {
                with: Some("icmp6-adm-prohibited".into())
            }
        );
    }

    #[test]
    fn anything_else_hits_the_drop_policy_with_no_rule_matching() {
        let packet = tcp(SRC, "2001:db8:99::50", 8443);
        let evaluation = evaluate(&v6(), Engine::NfTables.backends(), Hook::Output, &packet);
        assert_eq!(evaluation.verdict, Verdict::Drop);
        assert_eq!(policy_of(&evaluation), ("filter".into(), "OUTPUT".into()));
        assert!(evaluation.undecided.is_empty());
        assert_eq!(evaluation.by.to_string(), "ip6 filter/OUTPUT policy");
    }

    #[test]
    fn dns_outside_the_documentation_prefix_only() {
        let outside = udp(SRC, "2001:4860:4860::8888", 53);
        let evaluation = evaluate(&v6(), Engine::NfTables.backends(), Hook::Output, &outside);
        assert_eq!(
            decided_at(&evaluation),
            ("filter".into(), "OUTPUT".into(), 5)
        );
        let inside = udp(SRC, "2001:db8:1::53", 53);
        let evaluation = evaluate(&v6(), Engine::NfTables.backends(), Hook::Output, &inside);
        assert_eq!(evaluation.verdict, Verdict::Drop);
        assert_eq!(policy_of(&evaluation), ("filter".into(), "OUTPUT".into()));
    }

    #[test]
    fn icmpv6_by_name_and_by_type_code() {
        let solicit = icmp(SRC, "ff02::1:ff00:50", 135, 0);
        let evaluation = evaluate(&v6(), Engine::NfTables.backends(), Hook::Output, &solicit);
        assert_eq!(decided_at(&evaluation).2, 2);
        let ping = icmp(SRC, "2001:db8:99::50", 128, 0);
        let evaluation = evaluate(&v6(), Engine::NfTables.backends(), Hook::Output, &ping);
        assert_eq!(decided_at(&evaluation).2, 3);
        let odd_ping = icmp(SRC, "2001:db8:99::50", 128, 1);
        let evaluation = evaluate(&v6(), Engine::NfTables.backends(), Hook::Output, &odd_ping);
        assert_eq!(evaluation.verdict, Verdict::Drop);
    }

    #[test]
    fn ipv4_packets_do_not_see_ip6_tables() {
        let packet = tcp("10.99.0.1", "10.99.0.50", 8443);
        let evaluation = evaluate(&v6(), Engine::NfTables.backends(), Hook::Output, &packet);
        assert_eq!(evaluation.by, ruleset::DecidedBy::NoBaseChain);
    }
}
