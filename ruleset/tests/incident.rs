//! The incident that motivated droptrace: an egress firewall whose last rule
//! drops every TCP connection to a high port, including the payment gateway
//! on 8443. Captured with iptables-nft in a network namespace (see
//! fixtures/generate.sh); one SYN to 10.99.0.50:8443 was sent between the
//! two snapshots.

mod common;

use common::*;
use ruleset::{Backend, CtState, DecidedBy, Engine, Family, Hook, Policy, Target, eval::Verdict};

fn incident(name: &str) -> ruleset::Ruleset {
    ruleset(iptables_fixture(name, Backend::IptablesNft, Family::Ipv4))
}

#[test]
fn fixture_parses_as_printed() {
    let tables = iptables_fixture(
        "incident-after.iptables-save",
        Backend::IptablesNft,
        Family::Ipv4,
    );
    assert_eq!(tables.len(), 1);
    let output = tables[0].chain("OUTPUT").unwrap();
    assert_eq!(output.base.unwrap().policy, Policy::Accept);
    let texts: Vec<&str> = output.rules.iter().map(|rule| rule.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "-A OUTPUT -o lo -j ACCEPT",
            "-A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-A OUTPUT -p tcp -m multiport --dports 80,443,22,3306 -j ACCEPT",
            "-A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP",
        ]
    );
    assert_eq!(output.rules[3].to_string(), texts[3]);
    assert_eq!(output.rules[3].target, Target::Drop);
    assert!(output.rules.iter().all(|rule| {
        rule.matches
            .iter()
            .all(|one| !matches!(one.condition, ruleset::Condition::Undecidable { .. }))
    }));
}

#[test]
fn payment_gateway_on_8443_is_dropped_by_rule_4() {
    let ruleset = incident("incident-after.iptables-save");
    let packet = tcp("10.99.0.1", "10.99.0.50", 8443);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &packet);
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "OUTPUT".into(), 4)
    );
    let rule = rule(&evaluation);
    assert_eq!(
        rule.text,
        "-A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP"
    );
    assert_eq!(rule.counters.map(|c| c.packets), Some(1));
    assert_eq!(path(&evaluation), ["filter/OUTPUT"]);
    assert!(evaluation.undecided.is_empty());
    assert_eq!(
        evaluation.by.to_string(),
        "ip filter/OUTPUT rule 4: -A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP"
    );
}

#[test]
fn https_is_accepted_by_the_multiport_rule() {
    let ruleset = incident("incident-after.iptables-save");
    let packet = tcp("10.99.0.1", "10.99.0.50", 443);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &packet);
    assert_eq!(evaluation.verdict, Verdict::Accept);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "OUTPUT".into(), 3)
    );
}

#[test]
fn established_traffic_is_accepted_by_the_conntrack_rule() {
    let ruleset = incident("incident-after.iptables-save");
    let packet = tcp("10.99.0.1", "10.99.0.50", 8443)
        .flags(ACK)
        .ct(Some(CtState::Established));
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &packet);
    assert_eq!(evaluation.verdict, Verdict::Accept);
    assert_eq!(
        decided_at(&evaluation),
        ("filter".into(), "OUTPUT".into(), 2)
    );
}

#[test]
fn loopback_and_low_ports_pass() {
    let ruleset = incident("incident-after.iptables-save");
    let local = tcp("127.0.0.1", "127.0.0.1", 8443).oif("lo");
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &local);
    assert_eq!(decided_at(&evaluation).2, 1);
    // Not in the multiport list, below 1024: falls through to the policy.
    let smtp = tcp("10.99.0.1", "10.99.0.50", 25);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &smtp);
    assert_eq!(evaluation.verdict, Verdict::Accept);
    assert_eq!(policy_of(&evaluation), ("filter".into(), "OUTPUT".into()));
}

#[test]
fn unknown_conntrack_state_makes_the_drop_less_certain() {
    let ruleset = incident("incident-after.iptables-save");
    let packet = tcp("10.99.0.1", "10.99.0.50", 8443).ct(None);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &packet);
    assert_eq!(evaluation.verdict, Verdict::Drop);
    assert_eq!(decided_at(&evaluation).2, 4);
    assert_eq!(undecided(&evaluation), ["OUTPUT:2"]);
    assert!(evaluation.undecided[0].1.contains("conntrack state"));
}

#[test]
fn the_legacy_engine_sees_none_of_these_tables() {
    let ruleset = incident("incident-after.iptables-save");
    let packet = tcp("10.99.0.1", "10.99.0.50", 8443);
    let evaluation = evaluate(&ruleset, Engine::Xtables.backends(), Hook::Output, &packet);
    assert_eq!(evaluation.verdict, Verdict::Accept);
    assert_eq!(evaluation.by, DecidedBy::NoBaseChain);
    assert!(evaluation.path.is_empty());
}

#[test]
fn counters_confirm_rule_4() {
    let before = incident("incident-before.iptables-save");
    let after = incident("incident-after.iptables-save");
    let deltas = ruleset::counters::counter_deltas(&before, &after);
    assert_eq!(deltas.len(), 1, "{deltas:#?}");
    let (grown, packets) = &deltas[0];
    assert_eq!(*packets, 1);
    let packet = tcp("10.99.0.1", "10.99.0.50", 8443);
    let evaluation = evaluate(&after, Engine::NfTables.backends(), Hook::Output, &packet);
    assert!(grown.is_same(&evaluation.by));
    // Counters of the same rule in the earlier snapshot differ, identity does not.
    let earlier = evaluate(&before, Engine::NfTables.backends(), Hook::Output, &packet);
    assert_ne!(earlier.by, evaluation.by);
    assert!(earlier.by.is_same(&evaluation.by));
}

#[test]
fn the_same_table_seen_through_nft_json_is_less_certain() {
    // iptables-nft keeps conntrack and multiport as xt matches whose options
    // nft's JSON does not show: the drop is still found, with both earlier
    // rules listed as undecided.
    let ruleset = ruleset(nft_fixture("incident"));
    let packet = tcp("10.99.0.1", "10.99.0.50", 8443);
    let evaluation = evaluate(&ruleset, &[Backend::Nftables], Hook::Output, &packet);
    assert_eq!(evaluation.verdict, Verdict::Drop);
    let rule = rule(&evaluation);
    assert_eq!(rule.handle, Some(5));
    assert_eq!(rule.position, 4);
    assert_eq!(rule.text, "tcp dport 1024-65535 counter drop");
    assert_eq!(undecided(&evaluation), ["OUTPUT#3", "OUTPUT#4"]);
    assert!(evaluation.undecided[1].1.contains("multiport"));
}

#[test]
fn iptables_nft_tables_are_evaluated_once_when_both_dumps_are_loaded() {
    let iptables = iptables_fixture(
        "incident-after.iptables-save",
        Backend::IptablesNft,
        Family::Ipv4,
    );
    let mut native = nft_fixture("incident");
    let mut fw = nft_fixture("fw");
    ruleset::nft_json::retain_native(&mut native, &iptables);
    ruleset::nft_json::retain_native(&mut fw, &iptables);
    assert!(native.is_empty());
    assert_eq!(fw.len(), 2, "unrelated native tables stay");
    let mut tables = iptables;
    tables.extend(native);
    let ruleset = ruleset(tables);
    let packet = tcp("10.99.0.1", "10.99.0.50", 8443);
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, &packet);
    assert_eq!(path(&evaluation), ["filter/OUTPUT"]);
    assert!(evaluation.undecided.is_empty());
}
