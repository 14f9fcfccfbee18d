//! `iptables-save -c` output, parsed as every backend and family, then evaluated.
#![no_main]
#[path = "common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|text: &str| {
    for backend in [ruleset::Backend::IptablesNft, ruleset::Backend::IptablesLegacy] {
        for family in [ruleset::Family::Ipv4, ruleset::Family::Ipv6] {
            if let Ok(tables) = ruleset::iptables_save::parse(text, backend, family) {
                common::evaluate_all(&ruleset::Ruleset { tables, ipsets: Default::default(), local_routes: None, recent: None });
            }
        }
    }
});
