//! Parser for `iptables-save -c` / `ip6tables-save -c` output (nft or legacy).
//!
//! iptables-save is the one format every iptables variant prints the same
//! way, with counters, in the order the kernel evaluates rules. The parser
//! keeps each rule's original text (minus the `[packets:bytes]` prefix) for
//! display, and lowers the options it understands into [`Match`]es.
//!
//! Options that depend on state we cannot see (rate limits, `recent` lists,
//! user names, unknown modules, ...) become [`Condition::Undecidable`]: the
//! evaluator then reports lower confidence instead of guessing. Only
//! structural damage (no table, undeclared chain, unbalanced quote) is a
//! [`ParseError`].

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::addrtype::{AddrTypes, Matcher};
use crate::error::{ParseError, Result};
use crate::model::{
    AddrRange, Backend, BaseChain, Chain, ChainKind, Condition, Counters, Field, InterfaceName,
    MarkOf, MarkSet, MarkWrite, Match, OwnerId, Policy, Rule, Table, TableFamily, Target,
    ValueTest,
};
use crate::names;
use crate::packet::{Direction, Family, Hook, ValueRange};
use crate::recent::{RecentMode, RecentTest};
use crate::shell;

mod counters;
mod options;
mod values;

pub use self::counters::{SaveCounters, counters};
pub(crate) use self::options::{CONTINUING_TARGETS, NAT_TARGETS};
use self::{options::*, values::*};

/// [`parse`], as a whole [`Ruleset`](crate::Ruleset) of its own (no ipsets, no routes): a
/// proposed ruleset, a test's.
pub fn parse_ruleset(text: &str, backend: Backend, family: Family) -> Result<crate::Ruleset> {
    Ok(crate::Ruleset {
        tables: parse(text, backend, family)?,
        ..Default::default()
    })
}

/// Parses the tables in `text`. `backend` says which iptables printed it and
/// `family` whether it was `iptables-save` (IPv4) or `ip6tables-save`.
pub fn parse(text: &str, backend: Backend, family: Family) -> Result<Vec<Table>> {
    let mut tables = Vec::new();
    let mut open: Option<OpenTable> = None;
    for (line, trimmed) in lines(text) {
        if let Some(name) = trimmed.strip_prefix('*') {
            if let Some(table) = &open {
                return Err(ParseError::line(
                    line,
                    format!(
                        "table {} (line {}) has no COMMIT before *{name}",
                        table.name, table.line
                    ),
                ));
            }
            if !KNOWN_TABLES.contains(&name) {
                return Err(ParseError::line(line, format!("unknown table *{name}")));
            }
            open = Some(OpenTable {
                name: name.to_string(),
                line,
                chains: Vec::new(),
            });
            continue;
        }
        let Some(table) = open.as_mut() else {
            return Err(ParseError::line(
                line,
                format!("{trimmed:?} appears outside a *table ... COMMIT block"),
            ));
        };
        if trimmed == "COMMIT" {
            if let Some(table) = open.take() {
                tables.push(table.finish(backend, family));
            }
        } else if let Some(declaration) = trimmed.strip_prefix(':') {
            let chain = parse_chain_line(declaration, &table.name, line)?;
            if table.chains.iter().any(|known| known.name == chain.name) {
                return Err(ParseError::line(
                    line,
                    format!("chain {} declared twice", chain.name),
                ));
            }
            table.chains.push(chain);
        } else if trimmed.starts_with('[') || trimmed.starts_with('-') {
            table.add_rule(trimmed, line, family)?;
        } else {
            return Err(ParseError::line(
                line,
                format!("unexpected line {trimmed:?}"),
            ));
        }
    }
    if let Some(table) = open {
        return Err(ParseError::line(
            table.line,
            format!("table {} is never COMMITted", table.name),
        ));
    }
    Ok(tables)
}

/// The lines of a dump that say something (not blank, not comments), trimmed, with their
/// 1-based numbers.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(index, raw)| (index + 1, raw.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}

const KNOWN_TABLES: &[&str] = &["filter", "nat", "mangle", "raw", "security"];

/// Priority and chain type of a built-in chain, as the kernel registers
/// them (NF_IP_PRI_*; identical for IPv6).
fn builtin_priority(table: &str, hook: Hook) -> Option<(i32, ChainKind)> {
    use Hook::*;
    match (table, hook) {
        ("raw", Prerouting | Output) => Some((-300, ChainKind::Filter)),
        ("mangle", Output) => Some((-150, ChainKind::Route)),
        ("mangle", Prerouting | Input | Forward | Postrouting) => Some((-150, ChainKind::Filter)),
        ("nat", Prerouting | Output) => Some((-100, ChainKind::Nat)),
        ("nat", Input | Postrouting) => Some((100, ChainKind::Nat)),
        ("filter", Input | Forward | Output) => Some((0, ChainKind::Filter)),
        ("security", Input | Forward | Output) => Some((50, ChainKind::Filter)),
        _ => None,
    }
}

struct OpenTable {
    name: String,
    line: usize,
    chains: Vec<Chain>,
}

impl OpenTable {
    fn add_rule(&mut self, text: &str, line: usize, family: Family) -> Result<()> {
        let (counters, rule_text) = split_counters(text, line)?;
        let words = shell::split(rule_text).map_err(|message| ParseError::line(line, message))?;
        let (chain_name, options) = match words.as_slice() {
            [append, chain, options @ ..] if append == "-A" || append == "--append" => {
                (chain.as_str(), options)
            }
            _ => {
                return Err(ParseError::line(
                    line,
                    "rule does not start with -A CHAIN".to_string(),
                ));
            }
        };
        let chain_names: Vec<&str> = self.chains.iter().map(|c| c.name.as_str()).collect();
        let mut builder = RuleBuilder {
            words: options,
            next: 0,
            line,
            family,
            chain_names: &chain_names,
            protocol: None,
            modules: Vec::new(),
            matches: Vec::new(),
            comment: None,
            target: None,
            sets_marks: Vec::new(),
            counters,
        };
        builder.run()?;
        let RuleBuilder {
            matches,
            comment,
            target,
            sets_marks,
            counters,
            ..
        } = builder;
        let Some(chain) = self.chains.iter_mut().find(|c| c.name == chain_name) else {
            return Err(ParseError::line(
                line,
                format!("rule for chain {chain_name} which has no :{chain_name} line"),
            ));
        };
        let position = u32::try_from(chain.rules.len() + 1).unwrap_or(u32::MAX);
        chain.rules.push(Rule {
            position,
            handle: None,
            text: rule_text.to_string(),
            comment,
            counters,
            matches,
            sets_marks,
            target: target.unwrap_or(Target::Continue { action: None }),
        });
        Ok(())
    }

    /// Jumps to names that turned out not to be chains of this table are
    /// targets we do not know.
    fn finish(mut self, backend: Backend, family: Family) -> Table {
        let chain_names: Vec<String> = self.chains.iter().map(|c| c.name.clone()).collect();
        for chain in &mut self.chains {
            for rule in &mut chain.rules {
                if let Target::Jump { chain: target } = &rule.target
                    && !chain_names.contains(target)
                {
                    rule.target = Target::Unknown {
                        action: target.clone(),
                    };
                }
            }
        }
        Table {
            backend,
            family: TableFamily::of(family),
            name: self.name,
            chains: self.chains,
        }
    }
}

/// `:INPUT ACCEPT [12:3456]` (built-in) or `:MYCHAIN - [0:0]` (user chain).
fn parse_chain_line(declaration: &str, table: &str, line: usize) -> Result<Chain> {
    let mut parts = declaration.split_whitespace();
    let (Some(name), Some(policy)) = (parts.next(), parts.next()) else {
        return Err(ParseError::line(
            line,
            "chain line needs a name and a policy",
        ));
    };
    let policy_counters = match parts.next() {
        Some(counters) => Some(parse_counters(counters, line)?),
        None => None,
    };
    let base = match policy {
        "-" => None,
        "ACCEPT" | "DROP" => {
            let hook = Hook::from_iptables_chain(name).ok_or_else(|| {
                ParseError::line(
                    line,
                    format!("chain {name} has a policy but is not built-in"),
                )
            })?;
            let (priority, kind) = builtin_priority(table, hook).ok_or_else(|| {
                ParseError::line(line, format!("table {table} has no built-in chain {name}"))
            })?;
            Some(BaseChain {
                hook,
                priority,
                policy: if policy == "ACCEPT" {
                    Policy::Accept
                } else {
                    Policy::Drop
                },
                kind,
            })
        }
        other => {
            return Err(ParseError::line(
                line,
                format!("chain {name}: unknown policy {other:?}"),
            ));
        }
    };
    Ok(Chain {
        name: name.to_string(),
        base,
        rules: Vec::new(),
        policy_counters,
    })
}

/// Splits an optional `[packets:bytes]` prefix from the rule.
fn split_counters(text: &str, line: usize) -> Result<(Option<Counters>, &str)> {
    if !text.starts_with('[') {
        return Ok((None, text));
    }
    let Some(end) = text.find(']') else {
        return Err(ParseError::line(line, "counter prefix has no closing ]"));
    };
    let (counters, rest) = text.split_at(end + 1);
    Ok((Some(parse_counters(counters, line)?), rest.trim()))
}

fn parse_counters(text: &str, line: usize) -> Result<Counters> {
    let inner = text
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.split_once(':'));
    let parsed =
        inner.and_then(|(packets, bytes)| Some((packets.parse().ok()?, bytes.parse().ok()?)));
    match parsed {
        Some((packets, bytes)) => Ok(Counters { packets, bytes }),
        None => Err(ParseError::line(
            line,
            format!("bad counters {text:?}, expected [packets:bytes]"),
        )),
    }
}

#[cfg(test)]
mod tests;
