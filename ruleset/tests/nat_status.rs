//! `ct status dnat` and `--ctstate DNAT/SNAT`, decided from what the ruleset can translate
//! (see ruleset::nat): firewalld puts `ct status dnat accept` before every zone, so a host
//! that forwards no port must not make every answer undecidable.

mod common;

use common::*;
use ruleset::{
    Backend, CtState, Engine, Family, Hook, Packet, Ruleset,
    eval::{NatBinding, Verdict, nat_binding},
};

/// An inet table "fw" with firewalld's INPUT shape, and `nat` rules (nft JSON statements)
/// in a nat prerouting chain when given.
fn firewalld_like(nat: Option<&str>) -> Ruleset {
    let mut items = vec![
        r#"{"table": {"family": "inet", "name": "fw", "handle": 1}}"#.to_string(),
        r#"{"chain": {"family": "inet", "table": "fw", "name": "filter_INPUT", "handle": 1, "type": "filter", "hook": "input", "prio": 10, "policy": "accept"}}"#.to_string(),
        r#"{"rule": {"family": "inet", "table": "fw", "chain": "filter_INPUT", "handle": 10, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}"#.to_string(),
        r#"{"rule": {"family": "inet", "table": "fw", "chain": "filter_INPUT", "handle": 11, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}, {"accept": null}]}}"#.to_string(),
        r#"{"rule": {"family": "inet", "table": "fw", "chain": "filter_INPUT", "handle": 12, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}]}}"#.to_string(),
        r#"{"rule": {"family": "inet", "table": "fw", "chain": "filter_INPUT", "handle": 13, "expr": [{"reject": {"type": "icmpx", "expr": "admin-prohibited"}}]}}"#.to_string(),
    ];
    if let Some(statement) = nat {
        items.push(r#"{"chain": {"family": "inet", "table": "fw", "name": "nat_PREROUTING", "handle": 2, "type": "nat", "hook": "prerouting", "prio": -90, "policy": "accept"}}"#.to_string());
        items.push(format!(
            r#"{{"rule": {{"family": "inet", "table": "fw", "chain": "nat_PREROUTING", "handle": 20, "expr": [{{"match": {{"op": "==", "left": {{"payload": {{"protocol": "tcp", "field": "dport"}}}}, "right": 8080}}}}, {statement}]}}}}"#
        ));
    }
    let json = format!(r#"{{"nftables": [{}]}}"#, items.join(","));
    ruleset(ruleset::nft_json::parse(&json).unwrap())
}

fn input(ruleset: &Ruleset, packet: &Packet) -> ruleset::eval::Evaluation {
    evaluate(ruleset, Engine::NfTables.backends(), Hook::Input, packet)
}

fn to_local(dport: u16) -> Packet {
    let mut packet = tcp("198.51.100.7", "192.0.2.1", dport);
    packet.iif = Some("eth0".into());
    packet.oif = None;
    packet.uid = None;
    packet.gid = None;
    packet
}

#[test]
fn without_nat_rules_ct_status_dnat_is_decided_false() {
    let rules = firewalld_like(None);
    let evaluation = input(&rules, &to_local(9090));
    assert!(matches!(evaluation.verdict, Verdict::Reject { .. }));
    assert_eq!(
        decided_at(&evaluation),
        ("fw".into(), "filter_INPUT".into(), 4)
    );
    assert!(evaluation.alternatives.is_empty(), "{evaluation:#?}");
    assert!(evaluation.undecided.is_empty(), "{evaluation:#?}");
    // Source translation alone (masquerade) cannot set the DNAT bit.
    let rules = firewalld_like(Some(r#"{"masquerade": null}"#));
    let evaluation = input(&rules, &to_local(9090));
    assert!(evaluation.alternatives.is_empty(), "{evaluation:#?}");
}

#[test]
fn a_rule_that_translates_destinations_leaves_ct_status_dnat_undecided() {
    for statement in [
        r#"{"dnat": {"family": "ip", "addr": "192.0.2.1", "port": 9090}}"#,
        r#"{"redirect": {"port": 9090}}"#,
    ] {
        let rules = firewalld_like(Some(statement));
        let evaluation = input(&rules, &to_local(9090));
        assert!(
            matches!(evaluation.verdict, Verdict::Reject { .. }),
            "{evaluation:#?}"
        );
        assert_eq!(evaluation.undecided.len(), 1, "{evaluation:#?}");
        assert!(
            evaluation.undecided[0].1.contains("ct status"),
            "{evaluation:#?}"
        );
        assert_eq!(evaluation.alternatives.len(), 1, "{evaluation:#?}");
        assert_eq!(evaluation.alternatives[0].verdict, Verdict::Accept);
    }
}

#[test]
fn ct_status_needs_a_connection_in_nft_but_not_in_iptables() {
    let mut untracked = to_local(9090);
    untracked.ct_state = Some(CtState::Untracked);
    // nft: `ct status & dnat == 0` does not match a packet without a connection.
    let json = r#"{"nftables": [{"table": {"family": "inet", "name": "t", "handle": 1}},
        {"chain": {"family": "inet", "table": "t", "name": "in", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "t", "chain": "in", "handle": 2, "expr": [{"match": {"op": "==", "left": {"&": [{"ct": {"key": "status"}}, "dnat"]}, "right": 0}}, {"drop": null}]}}]}"#;
    let nft = ruleset(ruleset::nft_json::parse(json).unwrap());
    assert_eq!(input(&nft, &untracked).verdict, Verdict::Accept);
    assert_eq!(input(&nft, &to_local(9090)).verdict, Verdict::Drop);
    // iptables: xt_conntrack gives such a packet no status bit, so `! --ctstate DNAT`
    // matches it.
    let text =
        "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m conntrack ! --ctstate DNAT -j DROP\nCOMMIT\n";
    let tables = ruleset::iptables_save::parse(text, Backend::IptablesNft, Family::Ipv4).unwrap();
    let xt = ruleset(tables);
    assert_eq!(input(&xt, &untracked).verdict, Verdict::Drop);
    assert_eq!(input(&xt, &to_local(9090)).verdict, Verdict::Drop);
}

#[test]
fn iptables_ctstate_dnat_follows_the_nat_table() {
    let filter =
        "*filter\n:INPUT DROP [0:0]\n-A INPUT -m conntrack --ctstate DNAT -j ACCEPT\nCOMMIT\n";
    let parse = |text: &str| {
        ruleset(ruleset::iptables_save::parse(text, Backend::IptablesNft, Family::Ipv4).unwrap())
    };
    let evaluation = input(&parse(filter), &to_local(9090));
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert!(evaluation.alternatives.is_empty(), "{evaluation:#?}");
    for nat in [
        "-A PREROUTING -p tcp --dport 8080 -j DNAT --to-destination 192.0.2.1:9090",
        // A helper's expected connections follow their master's translation.
        "-A POSTROUTING -j MASQUERADE\nCOMMIT\n*raw\n:PREROUTING ACCEPT [0:0]\n\
         -A PREROUTING -p tcp --dport 21 -j CT --helper ftp",
    ] {
        let text = format!(
            "{filter}*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n{nat}\nCOMMIT\n"
        );
        let evaluation = input(&parse(&text), &to_local(9090));
        assert_eq!(evaluation.alternatives.len(), 1, "{nat}: {evaluation:#?}");
    }
    // `--ctstate SNAT` is undecided as soon as a nat chain exists: a null binding remaps
    // a clashing source port without any SNAT rule.
    let snat = filter.replace("DNAT", "SNAT");
    let evaluation = input(&parse(&snat), &to_local(9090));
    assert!(evaluation.alternatives.is_empty(), "{evaluation:#?}");
    let with_nat = format!("{snat}*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n");
    let evaluation = input(&parse(&with_nat), &to_local(9090));
    assert_eq!(evaluation.alternatives.len(), 1, "{evaluation:#?}");
}

#[test]
fn the_nat_chains_tell_whether_a_new_connection_is_translated() {
    let rules = firewalld_like(Some(
        r#"{"dnat": {"family": "ip", "addr": "192.0.2.1", "port": 9090}}"#,
    ));
    let binding = |packet: &Packet| {
        nat_binding(
            &rules,
            Engine::NfTables.backends(),
            Family::Ipv4,
            Hook::Prerouting,
            packet,
        )
    };
    let NatBinding::By { rule, action } = binding(&to_local(8080)) else {
        panic!("{:?}", binding(&to_local(8080)));
    };
    assert_eq!(
        (rule.chain.as_str(), action.as_str()),
        ("nat_PREROUTING", "dnat")
    );
    assert_eq!(binding(&to_local(9090)), NatBinding::Untranslated);
    // What explain does with an untranslated connection: `ct status dnat` is decided.
    let mut untranslated = to_local(9090);
    untranslated.ct_status_clear = ruleset::nat::IPS_DST_NAT;
    let evaluation = input(&rules, &untranslated);
    assert!(matches!(evaluation.verdict, Verdict::Reject { .. }));
    assert!(evaluation.alternatives.is_empty(), "{evaluation:#?}");
    // A nat rule that cannot be decided leaves the binding unknown.
    let mut no_port = to_local(8080);
    no_port.dport = None;
    assert!(matches!(binding(&no_port), NatBinding::Undecided(_)));
}
