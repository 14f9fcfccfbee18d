//! Native nftables: an inet table with an early chain at priority -10, named
//! sets (prefix, range and plain elements), a verdict map, jump/goto/return,
//! and a tour of expression shapes as nft 1.0.6 prints them in JSON.

mod common;

use common::*;
use ruleset::{
    Backend, ChainKind, Condition, CtState, DecidedBy, Engine, Field, Hook, Policy, Ruleset,
    TableFamily, Target, eval::Verdict,
};

fn fw() -> Ruleset {
    ruleset(nft_fixture("fw"))
}

const ME: &str = "10.99.0.1";
const ME6: &str = "2001:db8:99::1";

fn handle(evaluation: &ruleset::eval::Evaluation) -> (String, u64) {
    let rule = rule(evaluation);
    (rule.chain.clone(), rule.handle.unwrap())
}

#[test]
fn tables_chains_and_priorities() {
    let ruleset = fw();
    assert_eq!(ruleset.tables.len(), 2);
    let inet = &ruleset.tables[0];
    assert_eq!((inet.family, inet.name.as_str()), (TableFamily::Inet, "fw"));
    assert_eq!(inet.backend, Backend::Nftables);
    let early = inet.chain("early").unwrap().base.unwrap();
    assert_eq!(
        (early.hook, early.priority, early.policy),
        (Hook::Output, -10, Policy::Accept)
    );
    let out = inet.chain("out").unwrap().base.unwrap();
    assert_eq!((out.priority, out.policy), (0, Policy::Drop));
    assert!(inet.chain("egress").unwrap().base.is_none());
    let nat = &ruleset.tables[1];
    assert_eq!(
        nat.chain("post").unwrap().base.unwrap().kind,
        ChainKind::Nat
    );
    let positions: Vec<(u32, Option<u64>)> = inet
        .chain("out")
        .unwrap()
        .rules
        .iter()
        .map(|rule| (rule.position, rule.handle))
        .take(3)
        .collect();
    assert_eq!(positions, [(1, Some(12)), (2, Some(13)), (3, Some(14))]);
}

#[test]
fn display_text_comes_from_nft_a() {
    let ruleset = fw();
    let early = ruleset.tables[0].chain("early").unwrap();
    assert_eq!(
        early.rules[0].text,
        r#"ip daddr 192.0.2.66 tcp dport 8443 counter reject with tcp reset comment "payments canary""#
    );
    assert_eq!(early.rules[0].comment.as_deref(), Some("payments canary"));
    // Without nft -a text, a rendering close to nft's own is used.
    let tables = ruleset::nft_json::parse(&fixture("fw.nft.json")).unwrap();
    let out = tables[0].chain("out").unwrap();
    assert_eq!(
        out.rules[1].text,
        "ct state established,related counter accept"
    );
    assert_eq!(
        out.rules[11].text,
        "tcp dport vmap { 22 : accept, 23 : drop, 8080 : jump egress }"
    );
}

#[test]
fn early_chain_at_priority_minus_10_rejects_the_canary_first() {
    let packet = tcp(ME, "192.0.2.66", 8443);
    let evaluation = evaluate(&fw(), Engine::NfTables.backends(), Hook::Output, &packet);
    assert_eq!(
        evaluation.verdict,
        Verdict::Reject {
            with: Some("tcp reset".into())
        }
    );
    assert_eq!(handle(&evaluation), ("early".into(), 9));
    assert_eq!(path(&evaluation), ["fw/early"]);
    assert_eq!(rule(&evaluation).counters.map(|c| c.packets), Some(1));
}

#[test]
fn high_port_syn_jumps_to_egress_and_is_dropped() {
    let packet = tcp(ME, "203.0.113.99", 8443);
    let evaluation = evaluate(&fw(), Engine::NfTables.backends(), Hook::Output, &packet);
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert_eq!(handle(&evaluation), ("egress".into(), 28));
    assert_eq!(path(&evaluation), ["fw/early", "fw/out", "fw/egress"]);
    assert!(
        evaluation.undecided.is_empty(),
        "{:?}",
        evaluation.undecided
    );
}

#[test]
fn accept_in_the_early_chain_does_not_skip_the_later_one() {
    let packet = tcp(ME, "203.0.113.99", 8443).mark(0x2a);
    let evaluation = evaluate(&fw(), Engine::NfTables.backends(), Hook::Output, &packet);
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert_eq!(handle(&evaluation), ("egress".into(), 28));
}

#[test]
fn internal_destinations_return_and_fall_to_the_drop_policy() {
    let packet = tcp(ME, "10.99.0.70", 8443);
    let evaluation = evaluate(&fw(), Engine::NfTables.backends(), Hook::Output, &packet);
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert_eq!(
        evaluation.by,
        DecidedBy::Policy(ruleset::ChainRef {
            backend: Backend::Nftables,
            family: TableFamily::Inet,
            table: "fw".into(),
            chain: "out".into(),
        })
    );
    assert_eq!(path(&evaluation), ["fw/early", "fw/out", "fw/egress"]);
}

#[test]
fn other_high_ports_are_accepted_at_the_end_of_egress() {
    let packet = tcp(ME, "203.0.113.99", 9000);
    let evaluation = evaluate(&fw(), Engine::NfTables.backends(), Hook::Output, &packet);
    assert_eq!(evaluation.verdict, Verdict::Accept);
    assert_eq!(handle(&evaluation), ("egress".into(), 30));
}

#[test]
fn named_sets_with_ports_prefixes_and_ranges() {
    let ruleset = fw();
    let web = tcp(ME, "203.0.113.99", 443);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &web);
    assert_eq!(handle(&evaluation), ("out".into(), 17));
    for allowed in ["192.0.2.7", "198.51.100.9", "203.0.113.5"] {
        let packet = tcp(ME, allowed, 5432).flags(ACK);
        let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &packet);
        assert_eq!(handle(&evaluation), ("out".into(), 18), "{allowed}");
    }
    let packet = tcp(ME, "198.51.100.10", 5432).flags(ACK);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &packet);
    assert_ne!(rule_handle(&evaluation), Some(18));
}

fn rule_handle(evaluation: &ruleset::eval::Evaluation) -> Option<u64> {
    match &evaluation.by {
        DecidedBy::Rule(rule) => rule.handle,
        _ => None,
    }
}

#[test]
fn ipv6_uses_the_inet_table_and_ip6_set() {
    let ruleset = fw();
    let blocked = tcp(ME6, "2001:db8:bad::1", 443);
    let evaluation = evaluate(
        &ruleset,
        Engine::NfTables.backends(),
        Hook::Output,
        &blocked,
    );
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert_eq!(handle(&evaluation), ("early".into(), 10));
    let fine = tcp(ME6, "2001:db8:99::5", 443);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &fine);
    assert_eq!(handle(&evaluation), ("out".into(), 17));
    // `ip daddr` tests never match IPv6, not even negated: the high-port
    // SYN leaves egress by its final accept, not the 8443 drop.
    let high = tcp(ME6, "2001:db8:99::5", 8443);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &high);
    assert_eq!(handle(&evaluation), ("egress".into(), 30));
    // The ip-family nat table is not seen by IPv6 packets.
    let evaluation = evaluate(
        &ruleset,
        Engine::NfTables.backends(),
        Hook::Postrouting,
        &high,
    );
    assert_eq!(evaluation.by, DecidedBy::NoBaseChain);
}

#[test]
fn conntrack_state_rules() {
    let ruleset = fw();
    let reply = tcp(ME, "203.0.113.99", 8443)
        .flags(ACK)
        .ct(Some(CtState::Established));
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &reply);
    assert_eq!(handle(&evaluation), ("out".into(), 13));
    let invalid = reply.ct(Some(CtState::Invalid));
    let evaluation = evaluate(
        &ruleset,
        Engine::NfTables.backends(),
        Hook::Output,
        &invalid,
    );
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert_eq!(handle(&evaluation), ("out".into(), 14));
}

#[test]
fn dns_via_l4proto_set_and_transport_header_port() {
    let ruleset = fw();
    for packet in [udp(ME, "203.0.113.53", 53), tcp(ME, "203.0.113.53", 53)] {
        let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &packet);
        assert_eq!(handle(&evaluation), ("out".into(), 16));
    }
}

#[test]
fn verdict_map_arms() {
    let ruleset = fw();
    // ACK-only so the SYN rule (handle 19) does not take them first.
    let ssh = tcp(ME, "10.1.1.1", 22).flags(ACK);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &ssh);
    assert_eq!(
        (evaluation.verdict.clone(), handle(&evaluation)),
        (Verdict::Accept, ("out".into(), 26))
    );
    let telnet = tcp(ME, "10.1.1.1", 23).flags(ACK);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &telnet);
    assert_eq!(
        (evaluation.verdict.clone(), handle(&evaluation)),
        (Verdict::Drop, ("out".into(), 26))
    );
    let proxy = tcp(ME, "203.0.113.99", 8080).flags(ACK);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &proxy);
    assert_eq!(handle(&evaluation), ("egress".into(), 30));
    assert_eq!(path(&evaluation), ["fw/early", "fw/out", "fw/egress"]);
}

#[test]
fn rate_limited_ping_is_undecided_before_the_policy_drop() {
    let ping = icmp(ME, "203.0.113.99", 8, 0);
    let evaluation = evaluate(&fw(), Engine::NfTables.backends(), Hook::Output, &ping);
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert!(matches!(evaluation.by, DecidedBy::Policy(_)));
    assert_eq!(undecided(&evaluation), ["out#20"]);
    assert!(evaluation.undecided[0].1.contains("limit"));
    assert_eq!(
        evaluation.undecided[0].0.text,
        "icmp type echo-request limit rate 10/second accept"
    );
}

#[test]
fn goto_containers_and_socket_owner() {
    let ruleset = fw();
    let container = tcp("172.17.0.5", "172.17.0.9", 5000)
        .flags(ACK)
        .oif("veth1");
    let evaluation = evaluate(
        &ruleset,
        Engine::NfTables.backends(),
        Hook::Output,
        &container,
    );
    assert_eq!(handle(&evaluation), ("containers".into(), 31));
    let stranger = tcp("10.5.5.5", "172.17.0.9", 5000).flags(ACK).oif("veth1");
    let evaluation = evaluate(
        &ruleset,
        Engine::NfTables.backends(),
        Hook::Output,
        &stranger,
    );
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert_eq!(handle(&evaluation), ("containers".into(), 32));
    assert_eq!(path(&evaluation), ["fw/early", "fw/out", "fw/containers"]);
    let root = tcp(ME, "10.1.1.1", 5000).flags(ACK).uid(Some(0));
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &root);
    assert_eq!(handle(&evaluation), ("out".into(), 23));
}

#[test]
fn input_hook_with_negated_anonymous_set() {
    let ruleset = fw();
    let outsider = tcp("203.0.113.7", ME, 22).inbound("uplink0");
    let evaluation = evaluate(
        &ruleset,
        Engine::NfTables.backends(),
        Hook::Input,
        &outsider,
    );
    assert_eq!(handle(&evaluation), ("in".into(), 34));
    let insider = tcp("192.168.1.1", ME, 22).inbound("uplink0");
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Input, &insider);
    assert_eq!(evaluation.verdict, Verdict::Accept);
    assert!(matches!(evaluation.by, DecidedBy::Policy(_)));
}

#[test]
fn masquerade_accepts_new_flows_in_postrouting() {
    let packet = tcp("172.17.0.5", "203.0.113.99", 443).forwarded("docker0", "uplink0");
    let evaluation = evaluate(
        &fw(),
        Engine::NfTables.backends(),
        Hook::Postrouting,
        &packet,
    );
    assert_eq!(evaluation.verdict, Verdict::Accept);
    assert_eq!(handle(&evaluation), ("post".into(), 2));
    let later = packet.ct(Some(CtState::Established));
    let evaluation = evaluate(
        &fw(),
        Engine::NfTables.backends(),
        Hook::Postrouting,
        &later,
    );
    assert_eq!(evaluation.by, DecidedBy::NoBaseChain);
}

#[test]
fn counter_deltas_by_handle() {
    let before = fw();
    let mut after = fw();
    let mut text_changed = fw();
    for ruleset in [&mut after, &mut text_changed] {
        let egress = ruleset.tables[0]
            .chains
            .iter_mut()
            .find(|chain| chain.name == "egress")
            .unwrap();
        egress.rules[0].counters.as_mut().unwrap().packets += 3;
    }
    // nft rules are matched by handle, so a changed display text is fine.
    text_changed.tables[0].chains[2].rules[0].text = "something else".into();
    for after in [&after, &text_changed] {
        let deltas = ruleset::counters::counter_deltas(&before, after);
        assert_eq!(deltas.len(), 1);
        assert_eq!(deltas[0].1, 3);
        let packet = tcp(ME, "203.0.113.99", 8443);
        let evaluation = evaluate(after, Engine::NfTables.backends(), Hook::Output, &packet);
        assert!(deltas[0].0.is_same(&evaluation.by));
    }
}

/// Every shape in the tour lowers to a real condition, except those that
/// need state we do not have; those say why.
#[test]
fn syntax_tour_lowers_what_it_can_and_explains_the_rest() {
    let tables = nft_fixture("syntax-tour");
    let chain = tables[0].chain("c").unwrap();
    let undecidable: Vec<(u64, String)> = chain
        .rules
        .iter()
        .filter_map(|rule| {
            let reasons: Vec<&str> = rule
                .matches
                .iter()
                .filter_map(|one| match &one.condition {
                    Condition::Undecidable { reason } => Some(reason.as_str()),
                    _ => None,
                })
                .collect();
            (!reasons.is_empty()).then(|| (rule.handle.unwrap(), reasons.join("; ")))
        })
        .collect();
    let handles: Vec<u64> = undecidable.iter().map(|(handle, _)| *handle).collect();
    assert_eq!(handles, [41, 50, 55, 56], "{undecidable:#?}");
    let reason = |handle: u64| {
        undecidable
            .iter()
            .find(|(h, _)| *h == handle)
            .map(|(_, reason)| reason.clone())
            .unwrap()
    };
    // `ct mark 1`: the connection's mark.
    let ct_mark = &chain
        .rules
        .iter()
        .find(|r| r.handle == Some(43))
        .unwrap()
        .matches[0];
    assert!(
        matches!(
            ct_mark.condition,
            Condition::Value {
                field: Field::CtMark,
                ..
            }
        ),
        "{ct_mark:?}"
    );
    // `ct status dnat`: decided from what the ruleset can translate (ruleset::nat).
    let ct_status = &chain
        .rules
        .iter()
        .find(|r| r.handle == Some(31))
        .unwrap()
        .matches[0];
    assert!(
        matches!(
            ct_status.condition,
            Condition::Value {
                field: Field::CtStatus {
                    needs_conntrack: true
                },
                ..
            }
        ),
        "{ct_status:?}"
    );
    // Concatenations against an anonymous and a named set are evaluated.
    for handle in [33, 34] {
        let rule = chain
            .rules
            .iter()
            .find(|r| r.handle == Some(handle))
            .unwrap();
        assert!(
            matches!(rule.matches[0].condition, Condition::Concat { .. }),
            "{rule:?}"
        );
    }
    assert!(reason(55).contains("limit"), "{}", reason(55));

    let by_handle = |handle: u64| {
        chain
            .rules
            .iter()
            .find(|r| r.handle == Some(handle))
            .unwrap()
    };
    // `oif "lo"` matches the interface's index, listed as its name now: whole, not a
    // prefix (the `*` of `oifname` is no wildcard here).
    assert_eq!(
        by_handle(52).matches[0].condition,
        Condition::Interface {
            direction: ruleset::Direction::Destination,
            names: vec![ruleset::InterfaceName {
                name: "lo".into(),
                wildcard: false,
            }],
        }
    );
    assert_eq!(
        by_handle(35).matches[0].condition,
        Condition::AddrType {
            direction: ruleset::Direction::Destination,
            types: ruleset::addrtype::AddrTypes::parse("local").unwrap(),
            limit_iface: None,
            matcher: ruleset::addrtype::Matcher::Fib,
        }
    );
    assert!(matches!(by_handle(36).target, Target::VerdictMap { ref arms } if arms.len() == 2));
    assert_eq!(
        by_handle(37).target,
        Target::Reject {
            with: Some("icmpx admin-prohibited".into())
        }
    );
    assert_eq!(
        by_handle(42).target,
        Target::Continue {
            action: Some("mangle".into())
        }
    );
    assert_eq!(by_handle(57).target, Target::Continue { action: None });
    assert_eq!(
        by_handle(53).counters,
        None,
        "named counters are not the rule's"
    );
    let nat = tables[0].chain("d").unwrap();
    assert!(
        nat.rules
            .iter()
            .all(|rule| matches!(rule.target, Target::Nat { .. }))
    );
}

#[test]
fn syntax_tour_evaluates_flag_mask_and_comparison_forms() {
    let tables = nft_fixture("syntax-tour");
    let tour = Ruleset {
        tables,
        ipsets: Default::default(),
        local_routes: None,
        recent: None,
    };
    let first_rule = |packet: &ruleset::Packet| {
        let evaluation = evaluate(&tour, &[Backend::Nftables], Hook::Output, packet);
        rule_handle(&evaluation)
    };
    // `tcp flags syn` (any bit): a SYN/ACK matches the first rule.
    assert_eq!(
        first_rule(&tcp(ME, "203.0.113.1", 80).flags(SYN | ACK)),
        Some(10)
    );
    // Pure ACK: `syn,ack / syn,ack` needs both; `!= syn / fin,syn,rst,ack` holds.
    assert_eq!(first_rule(&tcp(ME, "203.0.113.1", 80).flags(ACK)), Some(13));
    // UDP skips the TCP rules; mark & 0xff == 0x19 matches 0x119.
    assert_eq!(
        first_rule(&udp(ME, "203.0.113.1", 80).mark(0x119)),
        Some(14)
    );
    // ct state != established: a new UDP flow matches.
    assert_eq!(first_rule(&udp(ME, "203.0.113.1", 80)), Some(15));
    let established = udp(ME, "203.0.113.1", 80).ct(Some(CtState::Established));
    // Next: new,untracked (no), tcp rules (no), iifname set (no iif on output),
    // ip saddr range (10.99.0.1 not in .1-.9) ... ip protocol tcp (no) ...
    // meta nfproto ipv6 (no), icmp (no), meta protocol ip6 (no), skuid
    // 1000-2000 holds.
    assert_eq!(first_rule(&established), Some(29));
}

#[test]
fn schema_errors_name_the_item() {
    let cases = [
        ("not json", "nftables JSON:"),
        ("{}", "nftables JSON item 0: no top-level"),
        (
            r#"{"nftables": [{"metainfo": {}}, 3]}"#,
            "nftables JSON item 1:",
        ),
        (
            r#"{"nftables": [{"chain": {"family": "ip", "table": "t", "name": "c"}}]}"#,
            "nftables JSON item 0: chain c of unknown table ip t",
        ),
        (
            r#"{"nftables": [{"table": {"family": "ipx", "name": "t"}}]}"#,
            "nftables JSON item 0: unknown family",
        ),
        (
            r#"{"nftables": [{"table": {"family": "ip", "name": "t"}}, {"rule": {"family": "ip", "table": "t", "chain": "x", "expr": []}}]}"#,
            "nftables JSON item 1: rule of unknown chain x",
        ),
        (
            r#"{"nftables": [{"table": {"family": "ip", "name": "t"}}, {"chain": {"family": "ip", "table": "t", "name": "c", "hook": "input", "prio": "high"}}]}"#,
            "nftables JSON item 1: base chain c",
        ),
    ];
    for (json, expected) in cases {
        let error = ruleset::nft_json::parse(json).unwrap_err().to_string();
        assert!(error.starts_with(expected), "{json}: {error}");
    }
}

#[test]
fn odd_expressions_become_undecidable_not_errors() {
    let json = r#"{"nftables": [
        {"table": {"family": "inet", "name": "t"}},
        {"chain": {"family": "inet", "table": "t", "name": "c", "hook": "output", "prio": 0, "policy": "accept", "type": "filter"}},
        {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 2, "expr": [
            {"match": {"op": "==", "left": {"payload": {"base": "nh", "offset": 64, "len": 8}}, "right": 1}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": "@nope"}},
            {"match": {"op": "==", "left": {"meta": {"key": "skuid"}}, "right": "root"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 99999999999}},
            {"match": {"left": 1}},
            {"frobnicate": {}},
            {"a": 1, "b": 2},
            {"drop": null}
        ]}}
    ]}"#;
    let tables = ruleset::nft_json::parse(json).unwrap();
    let rule = &tables[0].chains[0].rules[0];
    assert_eq!(rule.target, Target::Drop);
    assert_eq!(rule.matches.len(), 7);
    assert!(
        rule.matches
            .iter()
            .all(|one| matches!(one.condition, Condition::Undecidable { .. }))
    );
    let Condition::Undecidable { reason } = &rule.matches[5].condition else {
        unreachable!()
    };
    assert!(reason.contains("frobnicate"), "{reason}");
}

/// firewalld's IPv6 reverse-path drop, `fib saddr . iif oif missing`, decided from the
/// route back to the source when the caller looked it up (explain), left undecided when not.
#[test]
fn reverse_path_drops_are_decided_from_the_route_back() {
    let json = r#"{"nftables": [{"table": {"family": "inet", "name": "t", "handle": 1}},
        {"chain": {"family": "inet", "table": "t", "name": "raw", "handle": 1, "type": "filter", "hook": "prerouting", "prio": -290, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "t", "chain": "raw", "handle": 2, "expr": [{"match": {"op": "==", "left": {"fib": {"result": "oif", "flags": ["saddr", "iif"]}}, "right": false}}, {"drop": null}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "raw", "handle": 3, "expr": [{"match": {"op": "==", "left": {"fib": {"result": "oif", "flags": ["saddr", "mark", "iif"]}}, "right": false}}, {"drop": null}]}}]}"#;
    let rules = ruleset(ruleset::nft_json::parse(json).unwrap());
    for rule in &rules.tables[0].chains[0].rules {
        assert_eq!(
            rule.matches[0],
            ruleset::Match {
                negated: true,
                condition: Condition::ReversePath
            }
        );
    }
    let mut packet = tcp("2001:db8:1::2", "2001:db8:2::10", 22);
    packet.iif = Some("eth0".into());
    let pre = |packet: &ruleset::Packet| {
        evaluate(
            &rules,
            Engine::NfTables.backends(),
            Hook::Prerouting,
            packet,
        )
    };
    packet.reverse_path = Some(true);
    assert_eq!(pre(&packet).verdict, Verdict::Accept);
    packet.reverse_path = Some(false);
    assert_eq!(pre(&packet).verdict, Verdict::Drop);
    packet.reverse_path = None;
    let evaluation = pre(&packet);
    assert_eq!(evaluation.verdict, Verdict::Accept);
    assert!(!evaluation.alternatives.is_empty(), "{evaluation:#?}");
    assert!(
        evaluation
            .alternatives
            .iter()
            .all(|a| a.verdict == Verdict::Drop),
        "{evaluation:#?}"
    );
}
