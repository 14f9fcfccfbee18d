//! Hostile or damaged input must give errors or undecidable matches, never
//! a panic: the parsers read other programs' output on hosts we do not
//! control. These tests mutate the real fixtures systematically and
//! evaluate whatever still parses.

mod common;

use common::*;
use ruleset::{Backend, Engine, Family, Hook, Ruleset, Table};
use serde_json::Value;

fn evaluate_all(tables: Vec<Table>) {
    let ruleset = Ruleset {
        tables,
        ipsets: Default::default(),
        local_routes: None,
        recent: None,
    };
    let packets = [
        tcp("10.99.0.1", "203.0.113.99", 8443),
        udp("10.99.0.1", "192.0.2.1", 53),
        icmp("10.99.0.1", "192.0.2.1", 8, 0),
        tcp("2001:db8::1", "2001:db8::2", 443).ct(None),
    ];
    for packet in &packets {
        for hook in [Hook::Output] {
            for engine in [Engine::NfTables, Engine::Xtables] {
                let _ = evaluate(&ruleset, engine.backends(), hook, packet);
            }
        }
    }
}

/// Tiny deterministic generator, so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn mutated_iptables_save_never_panics() {
    let pieces = [
        "!", "-j", "-m", "--dport", "\"", "\\", ":", "[", "]", "/", ",", "-", "*", "\u{e9}", " ",
    ];
    for name in ["host-nft.iptables-save", "incident-after.iptables-save"] {
        let original = fixture(name);
        let mut rng = Lcg(7);
        for _ in 0..400 {
            let mut text: Vec<char> = original.chars().collect();
            for _ in 0..3 {
                let at = (rng.next() as usize) % text.len().max(1);
                match rng.next() % 3 {
                    0 if !text.is_empty() => {
                        text.remove(at.min(text.len() - 1));
                    }
                    1 => {
                        let piece = pieces[(rng.next() as usize) % pieces.len()];
                        for (offset, c) in piece.chars().enumerate() {
                            text.insert((at + offset).min(text.len()), c);
                        }
                    }
                    _ => text.truncate(at),
                }
            }
            let text: String = text.into_iter().collect();
            if let Ok(tables) =
                ruleset::iptables_save::parse(&text, Backend::IptablesNft, Family::Ipv4)
            {
                evaluate_all(tables);
            }
            let _ = ruleset::ipset::parse_save(&text);
            let _ = ruleset::nft_text::handles(&text);
        }
    }
}

/// Leaves of the JSON replaced, one at a time, by values of other types.
#[test]
fn every_json_leaf_replaced_never_panics() {
    let replacements = [
        Value::Null,
        Value::from(-1),
        Value::from("@missing"),
        serde_json::json!({"set": [{"range": [1]}]}),
    ];
    // Every leaf of the small fixture, every third of the large one (the
    // tour repeats the same shapes; this keeps the debug-build run short).
    for (name, stride) in [("fw.nft.json", 1), ("syntax-tour.nft.json", 3)] {
        let original: Value = serde_json::from_str(&fixture(name)).unwrap();
        let leaves = count_leaves(&original);
        for leaf in (0..leaves).step_by(stride) {
            for replacement in &replacements {
                let mut mutated = original.clone();
                let mut counter = 0;
                replace_leaf(&mut mutated, leaf, &mut counter, replacement);
                if let Ok(tables) = ruleset::nft_json::parse(&mutated.to_string()) {
                    evaluate_all(tables);
                }
            }
        }
    }
}

fn count_leaves(value: &Value) -> usize {
    match value {
        Value::Array(items) => items.iter().map(count_leaves).sum(),
        Value::Object(map) => map.values().map(count_leaves).sum(),
        _ => 1,
    }
}

fn replace_leaf(value: &mut Value, target: usize, counter: &mut usize, replacement: &Value) {
    match value {
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| replace_leaf(item, target, counter, replacement)),
        Value::Object(map) => map
            .values_mut()
            .for_each(|item| replace_leaf(item, target, counter, replacement)),
        leaf => {
            if *counter == target {
                *leaf = replacement.clone();
            }
            *counter += 1;
        }
    }
}
