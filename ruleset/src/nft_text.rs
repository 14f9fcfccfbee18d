//! Rule text from `nft -a list ruleset`, keyed by handle.
//!
//! The SRE should see the rule the way `nft list ruleset` shows it, not a
//! rendering of the JSON. The text output is not meant for parsing, so this
//! reader is deliberately forgiving: it follows `table`/`chain` blocks, skips
//! set, map and other object blocks (whose element lists may span lines),
//! and takes every line in a chain that ends in `# handle N` as a rule. Lines
//! it does not understand are ignored rather than failing.

use std::collections::HashMap;

use serde::Serialize;

use crate::model::{Table, TableFamily};

/// Identifies one nftables rule across `nft -j` and `nft -a` output.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct NftRuleId {
    pub family: TableFamily,
    pub table: String,
    pub chain: String,
    pub handle: u64,
}

enum Block {
    Table {
        family: TableFamily,
        name: String,
    },
    Chain {
        name: String,
    },
    /// A set, map, flowtable, named counter, ...: skipped, tracking the
    /// brace depth because element lists can span lines.
    Other {
        depth: i64,
    },
}

/// Maps every rule in `nft -a list ruleset` output to its statement text,
/// with the trailing `# handle N` removed.
/// The statement without the values of its `counter` (`counter packets 3 bytes 180` ->
/// `counter`): they change with every packet, and the text names a rule, not a reading.
fn without_counter_values(body: &str) -> String {
    let words: Vec<&str> = body.split(' ').collect();
    let mut out: Vec<&str> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        out.push(words[i]);
        let values = words.get(i + 1..i + 5);
        if words[i] == "counter"
            && let Some([p, n, b, m]) = values
            && *p == "packets"
            && *b == "bytes"
            && n.parse::<u64>().is_ok()
            && m.parse::<u64>().is_ok()
        {
            i += 5;
            continue;
        }
        i += 1;
    }
    out.join(" ")
}

pub fn handles(text: &str) -> HashMap<NftRuleId, String> {
    let mut rules = HashMap::new();
    let mut blocks: Vec<Block> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (body, handle) = split_handle(trimmed);
        if let Some(Block::Other { depth }) = blocks.last_mut() {
            *depth += brace_balance(body);
            if *depth <= 0 {
                blocks.pop();
            }
            continue;
        }
        if body == "}" {
            blocks.pop();
            continue;
        }
        if let Some(header) = body.strip_suffix('{') {
            let words: Vec<&str> = header.split_whitespace().collect();
            let block = match words.as_slice() {
                ["table", family, name] => {
                    TableFamily::from_nft(family).map(|family| Block::Table {
                        family,
                        name: unquote(name),
                    })
                }
                ["table", name] => Some(Block::Table {
                    family: TableFamily::Ip,
                    name: unquote(name),
                }),
                ["chain", name] => Some(Block::Chain {
                    name: unquote(name),
                }),
                _ => None,
            };
            blocks.push(block.unwrap_or(Block::Other { depth: 1 }));
            continue;
        }
        let (
            Some(handle),
            [
                ..,
                Block::Table {
                    family,
                    name: table,
                },
                Block::Chain { name: chain },
            ],
        ) = (handle, blocks.as_slice())
        else {
            continue;
        };
        rules.insert(
            NftRuleId {
                family: *family,
                table: table.clone(),
                chain: chain.clone(),
                handle,
            },
            without_counter_values(body),
        );
    }
    rules
}

/// Replaces the rendered text of nftables rules with `nft`'s own, where
/// `texts` (from [`handles`]) has the rule.
pub fn apply(tables: &mut [Table], texts: &HashMap<NftRuleId, String>) {
    for table in tables {
        for chain in &mut table.chains {
            for rule in &mut chain.rules {
                let Some(handle) = rule.handle else { continue };
                let id = NftRuleId {
                    family: table.family,
                    table: table.name.clone(),
                    chain: chain.name.clone(),
                    handle,
                };
                if let Some(text) = texts.get(&id) {
                    rule.text = text.clone();
                }
            }
        }
    }
}

/// `tcp dport 22 accept # handle 4` → (`tcp dport 22 accept`, Some(4)). The
/// last marker counts, since a comment may contain the same words.
fn split_handle(line: &str) -> (&str, Option<u64>) {
    const MARKER: &str = "# handle ";
    if let Some(index) = line.rfind(MARKER) {
        let (body, marker) = line.split_at(index);
        if let Some(Ok(handle)) = marker.strip_prefix(MARKER).map(|n| n.trim().parse::<u64>()) {
            return (body.trim_end(), Some(handle));
        }
    }
    (line, None)
}

fn unquote(name: &str) -> String {
    name.trim_matches('"').to_string()
}

/// `{` minus `}` outside double quotes.
fn brace_balance(text: &str) -> i64 {
    let mut balance = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for c in text.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => in_quotes = !in_quotes,
            '{' if !in_quotes => balance += 1,
            '}' if !in_quotes => balance -= 1,
            _ => {}
        }
    }
    balance
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = r#"# Warning: table ip filter is managed by iptables-nft, do not touch!
table inet fw { # handle 1
	set allowed_v4 { # handle 6
		type ipv4_addr
		flags interval
		elements = { 192.0.2.0/24, 198.51.100.1-198.51.100.9,
			     203.0.113.5 }
	}

	chain early { # handle 1
		type filter hook output priority filter - 10; policy accept;
		ip daddr 192.0.2.66 tcp dport 8443 counter packets 1 bytes 60 reject with tcp reset comment "payments # handle 3" # handle 9
		meta mark 0x0000002a counter packets 0 bytes 0 accept # handle 11
	}
}
table ip nat { # handle 2
	chain post { # handle 1
		type nat hook postrouting priority srcnat; policy accept;
		oifname "uplink0" ip saddr 172.17.0.0/16 masquerade # handle 2
	}
}
"#;

    fn id(family: TableFamily, table: &str, chain: &str, handle: u64) -> NftRuleId {
        NftRuleId {
            family,
            table: table.into(),
            chain: chain.into(),
            handle,
        }
    }

    #[test]
    fn maps_handles_to_statement_text() {
        let rules = handles(LISTING);
        assert_eq!(rules.len(), 3, "{rules:?}");
        assert_eq!(
            rules[&id(TableFamily::Inet, "fw", "early", 9)],
            r#"ip daddr 192.0.2.66 tcp dport 8443 counter reject with tcp reset comment "payments # handle 3""#
        );
        assert_eq!(
            rules[&id(TableFamily::Inet, "fw", "early", 11)],
            "meta mark 0x0000002a counter accept"
        );
        assert_eq!(
            rules[&id(TableFamily::Ip, "nat", "post", 2)],
            r#"oifname "uplink0" ip saddr 172.17.0.0/16 masquerade"#
        );
    }

    #[test]
    fn garbage_is_ignored_not_fatal() {
        let rules = handles(
            "}\n}\nchain x {\nfoo # handle 1\n{{{\n\u{0} # handle 99999999999999999999999\n",
        );
        assert!(rules.is_empty());
    }
}

#[cfg(test)]
mod counter_text_tests {
    use super::without_counter_values;

    #[test]
    fn counter_values_are_not_part_of_the_rule_text() {
        assert_eq!(
            without_counter_values("udp dport 53 counter packets 12 bytes 720 drop"),
            "udp dport 53 counter drop"
        );
        assert_eq!(
            without_counter_values("tcp dport 22 accept"),
            "tcp dport 22 accept"
        );
        assert_eq!(
            without_counter_values("counter packets x bytes 1 drop"),
            "counter packets x bytes 1 drop"
        );
        assert_eq!(without_counter_values("counter"), "counter");
    }
}
