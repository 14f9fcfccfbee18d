//! `ipset save` output, then a `-m set` rule evaluated against the parsed sets.
#![no_main]
#[path = "common.rs"]
mod common;

const RULES: &str = "*filter\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -m set --match-set allowed dst,dst -j ACCEPT\n-A OUTPUT -j DROP\nCOMMIT\n";

libfuzzer_sys::fuzz_target!(|text: &str| {
    if let Ok(ipsets) = ruleset::ipset::parse_save(text) {
        let tables = ruleset::iptables_save::parse(RULES, ruleset::Backend::IptablesNft, ruleset::Family::Ipv4).unwrap();
        common::evaluate_all(&ruleset::Ruleset { tables, ipsets, local_routes: None, recent: None });
    }
});
