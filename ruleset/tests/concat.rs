//! Concatenations: kube-proxy's nftables mode sends every packet to a Service through
//! `ip daddr . meta l4proto . th dport vmap @...`; sets of concatenations hold prefixes
//! and ranges per part. Fixture: `concat` in fixtures/generate.sh (nft 1.0.6's JSON).

mod common;

use common::*;
use ruleset::{Engine, Hook, eval::Verdict};

const ME: &str = "10.99.0.1";

fn outcome(packet: &ruleset::Packet) -> (Verdict, String) {
    let ruleset = ruleset(nft_fixture("concat"));
    let evaluation = evaluate(&ruleset, Engine::NfTables.backends(), Hook::Output, packet);
    let at = match &evaluation.by {
        ruleset::DecidedBy::Rule(r) => format!("{} {}", r.chain, r.handle.unwrap()),
        other => format!("{other:?}"),
    };
    assert!(
        evaluation.undecided.is_empty(),
        "{:?}",
        evaluation.undecided
    );
    (evaluation.verdict, at)
}

#[test]
fn a_service_without_endpoints_goes_to_the_reject_chain_through_the_map() {
    // 172.30.0.44 . tcp . 80 : goto reject-chain
    let (verdict, at) = outcome(&tcp(ME, "172.30.0.44", 80));
    assert!(matches!(verdict, Verdict::Reject { .. }), "{verdict:?}");
    assert_eq!(at, "reject-chain 5");
    // 172.30.0.45 . udp . 53 : drop, decided in the map's own rule.
    assert_eq!(
        outcome(&udp(ME, "172.30.0.45", 53)),
        (Verdict::Drop, "filter-output 6".to_string())
    );
}

#[test]
fn every_part_must_match_an_element() {
    // Right address, wrong protocol or port: no arm, on to the next rule.
    for packet in [
        udp(ME, "172.30.0.44", 80),
        tcp(ME, "172.30.0.44", 81),
        tcp(ME, "172.30.0.45", 53),
    ] {
        assert_eq!(outcome(&packet).0, Verdict::Accept, "{packet:?}");
    }
}

#[test]
fn interval_sets_of_concatenations_take_prefixes_and_ranges() {
    assert_eq!(
        outcome(&tcp(ME, "10.1.2.3", 8443)),
        (Verdict::Drop, "filter-output 7".to_string())
    );
    assert_eq!(outcome(&tcp(ME, "10.1.2.3", 9001)).0, Verdict::Accept);
    assert_eq!(outcome(&tcp(ME, "11.1.2.3", 8443)).0, Verdict::Accept);
    // A port the concatenation's protocol does not have: no match, as in the kernel.
    assert_eq!(outcome(&udp(ME, "10.1.2.3", 8443)).0, Verdict::Accept);
}
