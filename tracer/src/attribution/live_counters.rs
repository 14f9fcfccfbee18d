//! The counters of nf_tables rules and base chains, from the kernel's netlink dumps (see
//! [`super::nf_tables::NfTables::counters`]), put into a ruleset read earlier.
//!
//! A ruleset's rules change only with an nf_tables commit, its counters with every packet.
//! While the generation id stays the same, the rules parsed at the last full read are
//! still the kernel's, so a re-read takes the counters alone: iptables-nft tables and
//! native nftables tables alike are nf_tables chains of rules, each rule counted by its
//! `counter` expression (iptables-nft gives every rule one, and its base chains the
//! counters `iptables-save` prints as the policy's). Rules are paired with the kernel's by
//! their place in their chain, and by handle where the earlier read has one; any chain or
//! rule that does not pair up refuses the whole update, so the caller reads in full.
//! Legacy xtables tables are not nf_tables: they are never updated here.

use std::collections::HashMap;

use netlink_packet_core::{NlaBuffer, NlasIterator, parse_string, parse_u64_be};
use ruleset::{Backend, Counters, Table, TableFamily};

/// Attribute numbers (include/uapi/linux/netfilter/nf_tables.h).
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_COUNTERS: u16 = 8;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

/// Every chain's counters and rules, as the kernel dumped them.
#[derive(Debug, Default)]
pub struct LiveCounters {
    chains: HashMap<(TableFamily, String, String), LiveChain>,
}

#[derive(Debug, Default)]
struct LiveChain {
    /// A base chain's own counters, when it keeps them.
    counters: Option<Counters>,
    rules: Vec<LiveRule>,
}

#[derive(Debug)]
struct LiveRule {
    handle: u64,
    /// The rule's `counter` expressions, in order.
    counters: Vec<Counters>,
}

type Result<T> = std::io::Result<T>;

fn bad(why: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.into())
}

/// The attributes in `buf`, a nested attribute's value or a message's payload.
fn attributes(buf: &[u8]) -> impl Iterator<Item = Result<NlaBuffer<&[u8]>>> {
    NlasIterator::new(buf).map(|a| a.map_err(|e| bad(format!("netlink attribute: {e}"))))
}

fn string(value: &[u8]) -> Result<String> {
    parse_string(value).map_err(|e| bad(format!("netlink string: {e}")))
}

fn u64_be(value: &[u8]) -> Result<u64> {
    parse_u64_be(value).map_err(|e| bad(format!("netlink u64: {e}")))
}

/// `NFTA_COUNTER_*` attributes (the `counter` expression's data, a chain's counters).
fn counters(buf: &[u8]) -> Result<Counters> {
    let (mut packets, mut bytes) = (None, None);
    for a in attributes(buf) {
        let a = a?;
        match a.kind() {
            NFTA_COUNTER_PACKETS => packets = Some(u64_be(a.value())?),
            NFTA_COUNTER_BYTES => bytes = Some(u64_be(a.value())?),
            _ => {}
        }
    }
    match (packets, bytes) {
        (Some(packets), Some(bytes)) => Ok(Counters { packets, bytes }),
        _ => Err(bad("counters without packets or bytes")),
    }
}

impl LiveCounters {
    /// Takes one `NFT_MSG_NEWCHAIN` message of a chain dump.
    pub fn add_chain(&mut self, nfproto: u8, payload: &[u8]) -> Result<()> {
        let (mut table, mut name, mut count) = (None, None, None);
        for a in attributes(payload) {
            let a = a?;
            match a.kind() {
                NFTA_CHAIN_TABLE => table = Some(string(a.value())?),
                NFTA_CHAIN_NAME => name = Some(string(a.value())?),
                NFTA_CHAIN_COUNTERS => count = Some(counters(a.value())?),
                _ => {}
            }
        }
        let (Some(family), Some(table), Some(name)) =
            (TableFamily::from_nfproto(nfproto), table, name)
        else {
            // A family no ruleset of ours has (decnet), or a message without names.
            return Ok(());
        };
        self.chains
            .entry((family, table, name))
            .or_default()
            .counters = count;
        Ok(())
    }

    /// Takes one `NFT_MSG_NEWRULE` message of a rule dump. A chain's rules come in the
    /// chain's order (net/netfilter/nf_tables_api.c, `nf_tables_dump_rules`).
    pub fn add_rule(&mut self, nfproto: u8, payload: &[u8]) -> Result<()> {
        let (mut table, mut chain, mut handle) = (None, None, None);
        let mut counted = Vec::new();
        for a in attributes(payload) {
            let a = a?;
            match a.kind() {
                NFTA_RULE_TABLE => table = Some(string(a.value())?),
                NFTA_RULE_CHAIN => chain = Some(string(a.value())?),
                NFTA_RULE_HANDLE => handle = Some(u64_be(a.value())?),
                NFTA_RULE_EXPRESSIONS => counted = rule_counters(a.value())?,
                _ => {}
            }
        }
        let (Some(family), Some(table), Some(chain), Some(handle)) =
            (TableFamily::from_nfproto(nfproto), table, chain, handle)
        else {
            return Ok(());
        };
        self.chains
            .entry((family, table, chain))
            .or_default()
            .rules
            .push(LiveRule {
                handle,
                counters: counted,
            });
        Ok(())
    }

    /// Puts these counters into `tables` (a read of the same generation): every rule's
    /// that has counters, every base chain's policy counters that the read had. Legacy
    /// tables are left as they are. An error names what did not pair up; `tables` may
    /// then be partly updated and should be dropped.
    pub fn apply(&self, tables: &mut [Table]) -> std::result::Result<(), String> {
        for table in tables
            .iter_mut()
            .filter(|t| t.backend != Backend::IptablesLegacy)
        {
            for chain in &mut table.chains {
                let key = (table.family, table.name.clone(), chain.name.clone());
                let empty = LiveChain::default();
                // A chain without rules is in the chain dump only.
                let live = self.chains.get(&key).unwrap_or(&empty);
                let at = || format!("{} {} {}", table.family, table.name, chain.name);
                if live.rules.len() != chain.rules.len() {
                    return Err(format!(
                        "{}: {} rules read, {} in the kernel",
                        at(),
                        chain.rules.len(),
                        live.rules.len()
                    ));
                }
                for (rule, now) in chain.rules.iter_mut().zip(&live.rules) {
                    if rule.handle.is_some_and(|h| h != now.handle) {
                        return Err(format!("{}: rule handles differ", at()));
                    }
                    if rule.counters.is_none() {
                        continue;
                    }
                    match now.counters[..] {
                        [one] => rule.counters = Some(one),
                        _ => {
                            return Err(format!(
                                "{}: rule {} has {} counters",
                                at(),
                                rule.position,
                                now.counters.len()
                            ));
                        }
                    }
                }
                if let Some(c) = live.counters
                    && chain.base.is_some()
                    && chain.policy_counters.is_some()
                {
                    chain.policy_counters = Some(c);
                }
            }
        }
        Ok(())
    }
}

/// The `counter` expressions among a rule's `NFTA_RULE_EXPRESSIONS`.
fn rule_counters(list: &[u8]) -> Result<Vec<Counters>> {
    let mut found = Vec::new();
    for elem in attributes(list) {
        let elem = elem?;
        if elem.kind() != NFTA_LIST_ELEM {
            continue;
        }
        let expr = elem.value();
        let mut is_counter = false;
        for a in attributes(expr) {
            let a = a?;
            if a.kind() == NFTA_EXPR_NAME {
                is_counter = a.value() == b"counter\0";
            }
        }
        if !is_counter {
            continue;
        }
        let mut data = None;
        for a in attributes(expr) {
            let a = a?;
            if a.kind() == NFTA_EXPR_DATA {
                data = Some(counters(a.value())?);
            }
        }
        found.push(data.ok_or_else(|| bad("counter without data"))?);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{DefaultNla, Emitable, NLA_F_NESTED};

    /// Attributes serialised as the kernel sends them.
    fn nlas(list: &[DefaultNla]) -> Vec<u8> {
        let mut buf = vec![0; list.buffer_len()];
        list.emit(&mut buf);
        buf
    }

    fn attr(kind: u16, value: Vec<u8>) -> DefaultNla {
        DefaultNla::new(kind, value)
    }

    fn nested(kind: u16, inner: &[DefaultNla]) -> DefaultNla {
        DefaultNla::new(kind | NLA_F_NESTED, nlas(inner))
    }

    fn text(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    fn counter(packets: u64, bytes: u64) -> Vec<DefaultNla> {
        vec![
            attr(NFTA_COUNTER_BYTES, bytes.to_be_bytes().to_vec()),
            attr(NFTA_COUNTER_PACKETS, packets.to_be_bytes().to_vec()),
        ]
    }

    fn expr(name: &str, data: &[DefaultNla]) -> DefaultNla {
        nested(
            NFTA_LIST_ELEM,
            &[
                attr(NFTA_EXPR_NAME, text(name)),
                nested(NFTA_EXPR_DATA, data),
            ],
        )
    }

    fn rule(chain: &str, handle: u64, exprs: &[DefaultNla]) -> Vec<u8> {
        nlas(&[
            attr(NFTA_RULE_TABLE, text("filter")),
            attr(NFTA_RULE_CHAIN, text(chain)),
            attr(NFTA_RULE_HANDLE, handle.to_be_bytes().to_vec()),
            nested(NFTA_RULE_EXPRESSIONS, exprs),
        ])
    }

    fn chain(name: &str, count: Option<(u64, u64)>) -> Vec<u8> {
        let mut list = vec![
            attr(NFTA_CHAIN_TABLE, text("filter")),
            attr(NFTA_CHAIN_NAME, text(name)),
        ];
        if let Some((p, b)) = count {
            list.push(nested(NFTA_CHAIN_COUNTERS, &counter(p, b)));
        }
        nlas(&list)
    }

    fn read(save: &str) -> Vec<Table> {
        ruleset::iptables_save::parse(save, Backend::IptablesNft, ruleset::Family::Ipv4).unwrap()
    }

    const SAVE: &str = "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT DROP [1:60]\n:LOG_DROP - [0:0]\n\
        [3:180] -A OUTPUT -p tcp --dport 22 -j ACCEPT\n[0:0] -A OUTPUT -j LOG_DROP\n\
        [0:0] -A LOG_DROP -j DROP\nCOMMIT\n";

    fn live() -> LiveCounters {
        let mut live = LiveCounters::default();
        let payload = chain("INPUT", Some((0, 0)));
        live.add_chain(2, &payload).unwrap();
        live.add_chain(2, &chain("OUTPUT", Some((9, 540)))).unwrap();
        live.add_chain(2, &chain("LOG_DROP", None)).unwrap();
        let match_expr = expr("match", &[attr(1, text("tcp"))]);
        for (name, handle, exprs) in [
            (
                "OUTPUT",
                4,
                vec![match_expr, expr("counter", &counter(7, 420))],
            ),
            ("OUTPUT", 5, vec![expr("counter", &counter(2, 120))]),
            ("LOG_DROP", 6, vec![expr("counter", &counter(2, 120))]),
        ] {
            live.add_rule(2, &rule(name, handle, &exprs)).unwrap();
        }
        live
    }

    #[test]
    fn rule_and_policy_counters_are_taken_in_chain_order() {
        let mut tables = read(SAVE);
        live().apply(&mut tables).unwrap();
        let filter = &tables[0];
        let output = filter.chain("OUTPUT").unwrap();
        assert_eq!(
            output.policy_counters,
            Some(Counters {
                packets: 9,
                bytes: 540
            })
        );
        let got: Vec<_> = output
            .rules
            .iter()
            .map(|r| r.counters.unwrap().packets)
            .collect();
        assert_eq!(got, [7, 2]);
        assert_eq!(
            filter.chain("LOG_DROP").unwrap().rules[0]
                .counters
                .unwrap()
                .packets,
            2
        );
    }

    #[test]
    fn what_does_not_pair_up_refuses_the_update() {
        // A rule the earlier read has and the kernel does not.
        let more = SAVE.replace("COMMIT", "[0:0] -A LOG_DROP -j ACCEPT\nCOMMIT");
        let err = live().apply(&mut read(&more)).unwrap_err();
        assert!(
            err.contains("LOG_DROP: 2 rules read, 1 in the kernel"),
            "{err}"
        );
        // A counted rule with no counter expression, or two.
        let mut twice = LiveCounters::default();
        twice
            .add_rule(
                2,
                &rule(
                    "LOG_DROP",
                    6,
                    &[
                        expr("counter", &counter(1, 1)),
                        expr("counter", &counter(1, 1)),
                    ],
                ),
            )
            .unwrap();
        let one_chain = "*filter\n:LOG_DROP - [0:0]\n[0:0] -A LOG_DROP -j DROP\nCOMMIT\n";
        let err = twice.apply(&mut read(one_chain)).unwrap_err();
        assert!(err.contains("has 2 counters"), "{err}");
        // Handles, where the read has them.
        let mut tables = read(one_chain);
        tables[0].chains[0].rules[0].handle = Some(99);
        assert!(
            live()
                .apply(&mut tables)
                .unwrap_err()
                .contains("handles differ")
        );
    }

    #[test]
    fn legacy_tables_are_left_alone() {
        let mut tables =
            ruleset::iptables_save::parse(SAVE, Backend::IptablesLegacy, ruleset::Family::Ipv4)
                .unwrap();
        LiveCounters::default().apply(&mut tables).unwrap();
        let output = tables[0].chain("OUTPUT").unwrap();
        assert_eq!(output.rules[0].counters.unwrap().packets, 3);
    }

    #[test]
    fn malformed_messages_are_errors() {
        let mut live = LiveCounters::default();
        let payload = rule(
            "OUTPUT",
            1,
            &[expr("counter", &[attr(NFTA_COUNTER_BYTES, vec![0; 8])])],
        );
        assert!(live.add_rule(2, &payload).is_err());
        assert!(live.add_rule(2, &[0xff, 0xff, 0, 0, 1]).is_err());
    }
}
