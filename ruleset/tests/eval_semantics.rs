//! Traversal semantics on small hand-written rulesets: what the kernel does
//! with jumps, gotos, RETURN, policies, priorities and engines.

mod common;

use common::*;
use ruleset::{
    Backend, CtState, DecidedBy, Engine, Family, Hook, Packet, Ruleset, Table, eval::Verdict,
};

fn filter(rules: &str) -> Vec<Table> {
    let text = format!("*filter\n{rules}\nCOMMIT\n");
    ruleset::iptables_save::parse(&text, Backend::IptablesNft, Family::Ipv4).unwrap()
}

fn out(ruleset: &Ruleset, packet: &Packet) -> ruleset::eval::Evaluation {
    evaluate(ruleset, Engine::NfTables.backends(), Hook::Output, packet)
}

fn syn(dport: u16) -> Packet {
    tcp("10.99.0.1", "203.0.113.99", dport)
}

#[test]
fn jump_then_return_resumes_after_the_jump() {
    let ruleset = ruleset(filter(
        ":OUTPUT DROP [0:0]\n:A - [0:0]\n:B - [0:0]\n\
         -A OUTPUT -j A\n-A OUTPUT -p tcp --dport 22 -j ACCEPT\n\
         -A A -p tcp --dport 80 -j ACCEPT\n-A A -j B\n-A A -p tcp --dport 22 -j DROP\n\
         -A B -p tcp --dport 22 -j RETURN\n-A B -p tcp --dport 443 -j ACCEPT",
    ));
    // 22: B returns to A, whose next rule drops.
    let evaluation = out(&ruleset, &syn(22));
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert_eq!(decided_at(&evaluation), ("filter".into(), "A".into(), 3));
    assert_eq!(path(&evaluation), ["filter/OUTPUT", "filter/A", "filter/B"]);
    // 443: accepted two levels down.
    assert_eq!(
        decided_at(&out(&ruleset, &syn(443))),
        ("filter".into(), "B".into(), 2)
    );
    // 25: B and A end, OUTPUT's next rule does not match, the policy drops.
    let evaluation = out(&ruleset, &syn(25));
    assert_eq!(policy_of(&evaluation), ("filter".into(), "OUTPUT".into()));
    assert_eq!(evaluation.verdict, Verdict::Drop);
}

#[test]
fn goto_does_not_come_back() {
    let calling = ruleset(filter(
        ":OUTPUT ACCEPT [0:0]\n:A - [0:0]\n:G - [0:0]\n\
         -A OUTPUT -j A\n-A OUTPUT -j DROP\n\
         -A A -g G\n-A A -j ACCEPT\n\
         -A G -p udp -j ACCEPT",
    ));
    // G ends: back to OUTPUT (A's caller), not to A; OUTPUT's DROP applies.
    let evaluation = out(&calling, &syn(443));
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "OUTPUT".into(), 2)
    );
    let goto_from_base = ruleset(filter(
        ":OUTPUT DROP [0:0]\n:G - [0:0]\n-A OUTPUT -g G\n-A OUTPUT -j ACCEPT\n-A G -j RETURN",
    ));
    // Goto from the base chain, then RETURN: the base chain's policy.
    let evaluation = out(&goto_from_base, &syn(443));
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert_eq!(policy_of(&evaluation), ("filter".into(), "OUTPUT".into()));
}

#[test]
fn return_in_a_base_chain_applies_the_policy() {
    let ruleset = ruleset(filter(
        ":OUTPUT DROP [0:0]\n-A OUTPUT -j RETURN\n-A OUTPUT -j ACCEPT",
    ));
    let evaluation = out(&ruleset, &syn(1));
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert_eq!(policy_of(&evaluation), ("filter".into(), "OUTPUT".into()));
}

#[test]
fn undecidable_jumps_and_unknown_targets_are_listed() {
    let ruleset = ruleset(filter(
        ":OUTPUT ACCEPT [0:0]\n:A - [0:0]\n\
         -A OUTPUT -m limit --limit 1/s -j A\n\
         -A OUTPUT -m limit --limit 1/s -j LOG\n\
         -A OUTPUT -j TARPIT\n\
         -A OUTPUT -p tcp -j NFQUEUE --queue-num 1",
    ));
    let evaluation = out(&ruleset, &syn(1));
    assert_eq!(evaluation.verdict, Verdict::Queue);
    assert_eq!(decided_at(&evaluation).2, 4);
    // The LOG rule cannot change the verdict, so it is not listed.
    assert_eq!(undecided(&evaluation), ["OUTPUT:1", "OUTPUT:3"]);
    assert!(evaluation.undecided[1].1.contains("TARPIT"));
}

#[test]
fn goto_to_a_missing_chain_and_loops_do_not_hang() {
    // Hand-written: goto into a chain the table does not have.
    let missing = ruleset(filter(
        ":OUTPUT ACCEPT [0:0]\n-A OUTPUT -g NOWHERE\n-A OUTPUT -j DROP",
    ));
    let evaluation = out(&missing, &syn(1));
    assert_eq!(decided_at(&evaluation).2, 2);
    assert!(evaluation.undecided[0].1.contains("NOWHERE"));
    // A goto cycle (the kernel would refuse it) is cut off.
    let looping = ruleset(filter(
        ":OUTPUT DROP [0:0]\n:A - [0:0]\n:B - [0:0]\n-A OUTPUT -j A\n-A A -g B\n-A B -g A",
    ));
    let evaluation = out(&looping, &syn(1));
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert!(
        evaluation
            .undecided
            .last()
            .is_some_and(|(_, reason)| reason.contains("loop"))
    );
    // So is a jump cycle, by depth.
    let recursing = ruleset(filter(
        ":OUTPUT ACCEPT [0:0]\n:A - [0:0]\n-A OUTPUT -j A\n-A A -j A",
    ));
    let evaluation = out(&recursing, &syn(1));
    assert_eq!(evaluation.verdict, Verdict::Accept);
    assert!(
        evaluation
            .undecided
            .iter()
            .any(|(_, reason)| reason.contains("nest"))
    );
}

fn nft_json(chains: &[(&str, &str, i32, &str)], rules: &[(&str, &str)]) -> String {
    // (family, chain, prio, policy) base chains in table "t"; rules are
    // (chain, verdict) with one `tcp dport 8443` match each.
    let mut items = vec![r#"{"table": {"family": "inet", "name": "t", "handle": 1}}"#.to_string()];
    for (handle, (family, name, prio, policy)) in chains.iter().enumerate() {
        assert_eq!(*family, "inet");
        items.push(format!(
            r#"{{"chain": {{"family": "inet", "table": "t", "name": "{name}", "handle": {handle}, "type": "filter", "hook": "output", "prio": {prio}, "policy": "{policy}"}}}}"#
        ));
    }
    for (handle, (chain, verdict)) in rules.iter().enumerate() {
        items.push(format!(
            r#"{{"rule": {{"family": "inet", "table": "t", "chain": "{chain}", "handle": {}, "expr": [{{"match": {{"op": "==", "left": {{"payload": {{"protocol": "tcp", "field": "dport"}}}}, "right": 8443}}}}, {{"{verdict}": null}}]}}}}"#,
            handle + 100
        ));
    }
    format!(r#"{{"nftables": [{}]}}"#, items.join(","))
}

#[test]
fn base_chains_run_by_priority_not_by_listing_order() {
    let json = nft_json(
        &[
            ("inet", "late", 10, "accept"),
            ("inet", "early", -10, "accept"),
        ],
        &[("late", "drop"), ("early", "accept")],
    );
    let tables = ruleset::nft_json::parse(&json).unwrap();
    let ruleset = ruleset(tables);
    let evaluation = out(&ruleset, &syn(8443));
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert_eq!(path(&evaluation), ["t/early", "t/late"]);
    assert_eq!(rule(&evaluation).chain, "late");
}

#[test]
fn iptables_nft_and_native_nft_interleave_on_the_nf_tables_engine() {
    let json = nft_json(
        &[
            ("inet", "before", -10, "accept"),
            ("inet", "after", 10, "accept"),
        ],
        &[("before", "accept"), ("after", "drop")],
    );
    let mut tables = ruleset::nft_json::parse(&json).unwrap();
    tables.extend(filter(
        ":OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp --dport 8443 -j ACCEPT",
    ));
    let ruleset = ruleset(tables);
    let evaluation = out(&ruleset, &syn(8443));
    assert_eq!(path(&evaluation), ["t/before", "filter/OUTPUT", "t/after"]);
    assert_eq!(evaluation.verdict, Verdict::Drop);
    // Only the native tables:
    let evaluation = evaluate(&ruleset, &[Backend::Nftables], Hook::Output, &syn(8443));
    assert_eq!(path(&evaluation), ["t/before", "t/after"]);
    // The legacy engine has none of them.
    let evaluation = evaluate(
        &ruleset,
        Engine::Xtables.backends(),
        Hook::Output,
        &syn(8443),
    );
    assert_eq!(evaluation.by, DecidedBy::NoBaseChain);
    // inet tables see IPv6 too; the ip table does not.
    let v6 = tcp("2001:db8::1", "2001:db8::2", 8443);
    let evaluation = out(&ruleset, &v6);
    assert_eq!(path(&evaluation), ["t/before", "t/after"]);
}

#[test]
fn equal_priorities_keep_listing_order() {
    let json = nft_json(
        &[
            ("inet", "first", 0, "accept"),
            ("inet", "second", 0, "drop"),
        ],
        &[("first", "accept")],
    );
    let ruleset = ruleset(ruleset::nft_json::parse(&json).unwrap());
    let evaluation = out(&ruleset, &syn(8443));
    assert_eq!(path(&evaluation), ["t/first", "t/second"]);
    assert_eq!(policy_of(&evaluation), ("t".into(), "second".into()));
}

#[test]
fn evaluation_serializes_for_the_json_output() {
    let ruleset = ruleset(filter(
        ":OUTPUT ACCEPT [0:0]\n[3:180] -A OUTPUT -p tcp --dport 8443 -j DROP",
    ));
    let evaluation = out(&ruleset, &syn(8443));
    let json = serde_json::to_value(&evaluation).unwrap();
    assert_eq!(json["verdict"], "drop");
    assert_eq!(json["by"]["rule"]["position"], 1);
    assert_eq!(json["by"]["rule"]["backend"], "iptables-nft");
    assert_eq!(json["by"]["rule"]["counters"]["packets"], 3);
    assert_eq!(json["path"][0]["chain"], "OUTPUT");
    let model = serde_json::to_value(&ruleset).unwrap();
    assert_eq!(
        model["tables"][0]["chains"][0]["rules"][0]["target"],
        serde_json::json!("drop")
    );
}

/// ufw's shape: `ufw-not-local` returns for local destinations (`-m addrtype`, which the
/// packet alone cannot decide) and drops the rest. The main answer takes the RETURN as not
/// matching; the alternative, where it matches, ends at the policy. The caller needs both
/// to let the kernel's counters choose.
#[test]
fn an_undecidable_rule_forks_the_walk() {
    let ruleset = ruleset(filter(
        ":INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:ufw-not-local - [0:0]\n\
         -A INPUT -j ufw-not-local\n\
         -A ufw-not-local -m addrtype --dst-type LOCAL -j RETURN\n\
         -A ufw-not-local -m limit --limit 3/min -j LOG\n\
         -A ufw-not-local -j DROP",
    ));
    let packet = syn(22).inbound("eth0");
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Input, &packet);
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "ufw-not-local".into(), 3)
    );
    // The LOG rule is undecidable too, but cannot change the verdict: no fork.
    assert_eq!(evaluation.undecided.len(), 1, "{:?}", evaluation.undecided);
    assert_eq!(evaluation.alternatives.len(), 1);
    let alt = &evaluation.alternatives[0];
    assert_eq!(alt.verdict, Verdict::Drop);
    assert!(
        matches!(&alt.by, DecidedBy::Policy(c) if c.chain == "INPUT"),
        "{:?}",
        alt.by
    );
    assert_eq!(alt.assuming.len(), 1);
    assert_eq!(alt.assuming[0].position, 1);
    assert!(!evaluation.alternatives_truncated);
    assert_eq!(evaluation.outcomes().count(), 2);

    // Decidable rules fork nothing.
    let plain = ruleset_with_drop_only();
    let evaluation = evaluate(&plain, Engine::NfTables.backends(), Hook::Output, &syn(22));
    assert!(evaluation.alternatives.is_empty());
}

fn ruleset_with_drop_only() -> Ruleset {
    ruleset(filter(
        ":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp --dport 22 -j DROP",
    ))
}

/// Many undecidable rules in a row: the combinations are capped, and the cap is said.
#[test]
fn forks_are_capped_and_the_cap_is_said() {
    let mut rules =
        String::from(":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for i in 0..40 {
        rules.push_str(&format!(
            ":C{i} - [0:0]\n-A OUTPUT -m limit --limit {}/min -j C{i}\n-A C{i} -p tcp --dport {} -j DROP\n",
            i + 1,
            1000 + i
        ));
    }
    let ruleset = ruleset(filter(rules.trim_end()));
    let evaluation = out(&ruleset, &syn(1039));
    assert_eq!(evaluation.verdict, Verdict::Accept);
    assert!(evaluation.alternatives.len() <= ruleset::eval::MAX_FORKED_WALKS);
    assert!(evaluation.alternatives_truncated);
}

/// `oif "lo" accept` first, as most hand-written output chains start: the index match is
/// decided by the interface's name (nft lists the index as the name it has), so a packet
/// leaving elsewhere falls to the policy with nothing left undecided.
#[test]
fn an_oif_match_is_decided_by_the_interface_it_names() {
    let json = r#"{"nftables": [
        {"table": {"family": "inet", "name": "t", "handle": 1}},
        {"chain": {"family": "inet", "table": "t", "name": "out", "handle": 1, "type": "filter",
                   "hook": "output", "prio": 0, "policy": "drop"}},
        {"rule": {"family": "inet", "table": "t", "chain": "out", "handle": 2, "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "oif"}}, "right": "lo"}},
            {"accept": null}]}}
    ]}"#;
    let ruleset = ruleset(ruleset::nft_json::parse(json).unwrap());
    let away = out(&ruleset, &syn(8443));
    assert_eq!(away.verdict, Verdict::Drop);
    assert!(away.undecided.is_empty(), "{:?}", away.undecided);
    assert_eq!(policy_of(&away), ("t".into(), "out".into()));
    let local = out(&ruleset, &syn(8443).oif("lo"));
    assert_eq!(local.verdict, Verdict::Accept);
}

/// A network plugin's shape: one chain marks the packet "accepted by policy", the next
/// accepts on that mark, the rest is dropped. The mark a rule sets is the mark the rules
/// after it see (the kernel accepts this packet; answering DROP was the one confidently
/// wrong answer droptrace gave).
#[test]
fn a_mark_set_by_one_rule_is_seen_by_the_next() {
    let marking = ruleset(filter(
        ":OUTPUT ACCEPT [0:0]\n:POLICY - [0:0]\n\
         -A OUTPUT -j POLICY\n\
         -A OUTPUT -m mark --mark 0x10000/0x10000 -j ACCEPT\n\
         -A OUTPUT -p tcp -j DROP\n\
         -A POLICY -p tcp -m tcp --dport 8443 -j MARK --set-xmark 0x10000/0x10000",
    ));
    let allowed = out(&marking, &syn(8443));
    assert_eq!(allowed.verdict, Verdict::Accept, "{allowed:?}");
    assert!(allowed.undecided.is_empty());
    assert_eq!(decided_at(&allowed), ("filter".into(), "OUTPUT".into(), 2));
    // Other ports are not marked: dropped, and the rule says so.
    let dropped = out(&marking, &syn(25));
    assert_eq!(decided_at(&dropped), ("filter".into(), "OUTPUT".into(), 3));
    // A mark restored from the connection's: a new connection's mark is 0, so nothing is
    // restored and the drop is decided; a later packet's connection mark is not known, so
    // the accept on it is undecided.
    let restored = ruleset(filter(
        ":OUTPUT ACCEPT [0:0]\n\
         -A OUTPUT -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff\n\
         -A OUTPUT -m mark --mark 0x10000/0x10000 -j ACCEPT\n\
         -A OUTPUT -p tcp -j DROP",
    ));
    let new = out(&restored, &syn(8443));
    assert!(new.undecided.is_empty(), "{new:?}");
    assert_eq!(decided_at(&new), ("filter".into(), "OUTPUT".into(), 3));
    let mut later = syn(8443);
    later.ct_state = Some(CtState::Established);
    later.unknown.ct_mark = true;
    let unsure = out(&restored, &later);
    assert_eq!(unsure.undecided.len(), 1, "{unsure:?}");
    assert!(unsure.undecided[0].1.contains("set its mark"), "{unsure:?}");
}

/// The connection's mark, set and saved in one hook's chains and tested or restored in
/// later ones, as xt_CONNMARK and nft's `ct mark set` do; a packet without a connection
/// has no connection mark to test, negated or not.
#[test]
fn a_connection_mark_is_written_and_read_like_the_kernel_does() {
    // Saved from the packet's mark, then tested: accepted.
    let saving = ruleset(filter(
        ":OUTPUT ACCEPT [0:0]\n\
         -A OUTPUT -p tcp --dport 8443 -j MARK --set-xmark 0x20/0xff\n\
         -A OUTPUT -j CONNMARK --save-mark --nfmask 0xf0 --ctmask 0xf0\n\
         -A OUTPUT -m connmark --mark 0x20/0xf0 -j ACCEPT\n\
         -A OUTPUT -m connmark ! --mark 0x0 -j ACCEPT\n\
         -A OUTPUT -p tcp -j DROP",
    ));
    let marked = out(&saving, &syn(8443));
    assert_eq!(decided_at(&marked), ("filter".into(), "OUTPUT".into(), 3));
    assert_eq!(marked.marks_after.ct_mark, Some(0x20));
    // Not marked: the new connection's mark stays 0.
    let plain = out(&saving, &syn(25));
    assert_eq!(decided_at(&plain), ("filter".into(), "OUTPUT".into(), 5));
    assert!(plain.undecided.is_empty(), "{plain:?}");
    // Untracked: no connection mark, so neither connmark test matches, nor is one saved.
    let mut untracked = syn(8443);
    untracked.ct_state = Some(CtState::Untracked);
    let none = out(&saving, &untracked);
    assert_eq!(decided_at(&none), ("filter".into(), "OUTPUT".into(), 5));
    // An established connection's mark is not known: the tests on it are undecided.
    let mut later = syn(25);
    later.ct_state = Some(CtState::Established);
    later.unknown.ct_mark = true;
    let unsure = out(&saving, &later);
    assert_eq!(unsure.undecided.len(), 2, "{unsure:?}");
    assert!(
        unsure.undecided[0].1.contains("connection's mark"),
        "{unsure:?}"
    );
    // nft: `ct mark set meta mark | 0x1000` (netavark's form), then a test of it, and the
    // packet's mark restored from it with a mask.
    let json = r#"{"nftables": [
        {"table": {"family": "inet", "name": "t", "handle": 1}},
        {"chain": {"family": "inet", "table": "t", "name": "out", "handle": 1, "type": "filter",
                   "hook": "output", "prio": 0, "policy": "drop"}},
        {"rule": {"family": "inet", "table": "t", "chain": "out", "handle": 2, "expr": [
            {"mangle": {"key": {"ct": {"key": "mark"}},
                        "value": {"|": [{"meta": {"key": "mark"}}, 4096]}}}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "out", "handle": 3, "expr": [
            {"mangle": {"key": {"meta": {"key": "mark"}},
                        "value": {"&": [{"ct": {"key": "mark"}}, 61440]}}}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "out", "handle": 4, "expr": [
            {"match": {"op": "==", "left": {"ct": {"key": "mark"}}, "right": 4097}},
            {"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": 4096}},
            {"accept": null}]}}
    ]}"#;
    let nft = ruleset(ruleset::nft_json::parse(json).unwrap());
    let mut marked = syn(8443);
    marked.mark = 1;
    let accepted = out(&nft, &marked);
    assert_eq!(accepted.verdict, Verdict::Accept, "{accepted:?}");
    assert_eq!(
        accepted.marks_after,
        ruleset::eval::Marks {
            mark: Some(0x1000),
            ct_mark: Some(0x1001)
        }
    );
    // Mark 2: ct mark 0x1002, the accept does not match, the policy drops.
    marked.mark = 2;
    assert_eq!(out(&nft, &marked).verdict, Verdict::Drop);
}

/// nft's forms of the same: `meta mark set meta mark | 0x10000` in a chain of an earlier
/// priority, `meta mark & 0x10000 == 0x10000 accept` in the next.
#[test]
fn an_nft_mark_set_carries_to_later_chains_of_the_hook() {
    let json = r#"{"nftables": [
        {"table": {"family": "inet", "name": "t", "handle": 1}},
        {"chain": {"family": "inet", "table": "t", "name": "mark", "handle": 1, "type": "filter",
                   "hook": "output", "prio": -150, "policy": "accept"}},
        {"chain": {"family": "inet", "table": "t", "name": "out", "handle": 2, "type": "filter",
                   "hook": "output", "prio": 0, "policy": "drop"}},
        {"rule": {"family": "inet", "table": "t", "chain": "mark", "handle": 3, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                       "right": 8443}},
            {"mangle": {"key": {"meta": {"key": "mark"}},
                        "value": {"|": [{"meta": {"key": "mark"}}, 65536]}}}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "out", "handle": 4, "expr": [
            {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 65536]},
                       "right": 65536}},
            {"accept": null}]}}
    ]}"#;
    let ruleset = ruleset(ruleset::nft_json::parse(json).unwrap());
    let allowed = out(&ruleset, &syn(8443));
    assert_eq!(allowed.verdict, Verdict::Accept, "{allowed:?}");
    assert!(allowed.undecided.is_empty());
    assert_eq!(out(&ruleset, &syn(25)).verdict, Verdict::Drop);
}
