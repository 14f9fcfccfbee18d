//! `nft -j list ruleset` JSON and `nft -a list ruleset` text, parsed and evaluated.
#![no_main]
#[path = "common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|text: &str| {
    let handles = ruleset::nft_text::handles(text);
    if let Ok(mut tables) = ruleset::nft_json::parse(text) {
        ruleset::nft_text::apply(&mut tables, &handles);
        common::evaluate_all(&ruleset::Ruleset { tables, ipsets: Default::default(), local_routes: None, recent: None });
    }
});
