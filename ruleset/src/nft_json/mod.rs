//! Parser for `nft -j list ruleset` (nftables 1.0.6, JSON schema version 1).
//!
//! JSON is the only nft output meant for programs: it carries handles,
//! priorities as numbers, set elements and counters without the pretty
//! printer's ambiguities. Each rule's `expr` list is lowered into the shared
//! [`Match`]/[`Target`] model; named sets (`@name`) and verdict maps are
//! resolved against the same table's `set`/`map` objects at parse time.
//!
//! Tables created by iptables-nft show up here too, but their iptables
//! matches appear as opaque `xt` expressions without options; those are
//! undecidable, so for such tables prefer [`crate::iptables_save::parse`].
//!
//! The rule text is rendered from the JSON as a fallback; the exact text
//! `nft` prints can be put in with [`crate::nft_text`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::addrtype::{AddrTypes, Matcher};
use crate::error::{ParseError, Result};
use crate::iptables_save::{CONTINUING_TARGETS, NAT_TARGETS};
use crate::model::{
    AddrRange, Backend, BaseChain, Chain, ChainKind, Condition, Counters, Field, InterfaceName,
    MarkOf, MarkSet, MarkWrite, Match, Policy, Rule, Table, TableFamily, Target, ValueTest,
    VerdictArm,
};
use crate::names;
use crate::packet::{Direction, Family, Hook, ValueRange};

mod render;
mod rules;
mod values;

use self::{render::*, rules::*, values::*};

/// Parses `nft -j list ruleset` output into tables (backend
/// [`Backend::Nftables`]).
pub fn parse(json: &str) -> Result<Vec<Table>> {
    let root: Value = serde_json::from_str(json)?;
    let items = root
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| schema(0, "no top-level \"nftables\" array"))?;

    let mut tables: Vec<Table> = Vec::new();
    let mut sets: HashMap<SetId, Vec<Value>> = HashMap::new();
    for (index, item) in items.iter().enumerate() {
        let Some((kind, body)) = single_entry(item) else {
            return Err(schema(index, "expected an object with one key"));
        };
        match kind {
            "table" => {
                let family = family_of(body, index)?;
                let name = string_field(body, "name", index)?;
                if find_table(&tables, family, name).is_none() {
                    tables.push(Table {
                        backend: Backend::Nftables,
                        family,
                        name: name.to_string(),
                        chains: Vec::new(),
                    });
                }
            }
            "chain" => {
                let family = family_of(body, index)?;
                let table_name = string_field(body, "table", index)?;
                let chain = parse_chain(body, index)?;
                let table = find_table_mut(&mut tables, family, table_name).ok_or_else(|| {
                    schema(
                        index,
                        format!(
                            "chain {} of unknown table {family} {table_name}",
                            chain.name
                        ),
                    )
                })?;
                table.chains.push(chain);
            }
            "set" | "map" => {
                let id = SetId {
                    family: family_of(body, index)?,
                    table: string_field(body, "table", index)?.to_string(),
                    name: string_field(body, "name", index)?.to_string(),
                };
                let elements = match body.get("elem") {
                    Some(Value::Array(elements)) => elements.clone(),
                    Some(element) => vec![element.clone()],
                    None => Vec::new(),
                };
                sets.insert(id, elements);
            }
            _ => {}
        }
    }

    for (index, item) in items.iter().enumerate() {
        let Some(("rule", body)) = single_entry(item) else {
            continue;
        };
        let family = family_of(body, index)?;
        let table_name = string_field(body, "table", index)?;
        let chain_name = string_field(body, "chain", index)?;
        let exprs = body
            .get("expr")
            .and_then(Value::as_array)
            .ok_or_else(|| schema(index, "rule without an \"expr\" array"))?;
        let context = Context {
            sets: &sets,
            family,
            table: table_name,
        };
        let mut rule = context.rule(exprs);
        rule.handle = body.get("handle").and_then(Value::as_u64);
        rule.comment = body
            .get("comment")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(comment) = &rule.comment {
            rule.text = format!("{} comment {comment:?}", rule.text);
        }
        let table = find_table_mut(&mut tables, family, table_name).ok_or_else(|| {
            schema(
                index,
                format!("rule of unknown table {family} {table_name}"),
            )
        })?;
        let chain = table
            .chains
            .iter_mut()
            .find(|chain| chain.name == chain_name)
            .ok_or_else(|| schema(index, format!("rule of unknown chain {chain_name}")))?;
        rule.position = u32::try_from(chain.rules.len() + 1).unwrap_or(u32::MAX);
        chain.rules.push(rule);
    }
    Ok(tables)
}

/// Removes from `tables` (parsed here) those that iptables-nft also printed
/// in `iptables_tables` (same family and name), so each table is evaluated
/// once, from its iptables-save form, which keeps the xt matches' options.
/// Evaluating both copies would walk the same kernel chain twice.
pub fn retain_native(tables: &mut Vec<Table>, iptables_tables: &[Table]) {
    tables.retain(|table| {
        !iptables_tables.iter().any(|other| {
            other.backend == Backend::IptablesNft
                && other.family == table.family
                && other.name == table.name
        })
    });
}

fn schema(item: usize, message: impl Into<String>) -> ParseError {
    ParseError::NftSchema {
        item,
        message: message.into(),
    }
}

/// `{"kind": body}` → `("kind", body)`.
fn single_entry(value: &Value) -> Option<(&str, &Value)> {
    let object = value.as_object()?;
    if object.len() != 1 {
        return None;
    }
    object.iter().next().map(|(key, body)| (key.as_str(), body))
}

fn string_field<'a>(body: &'a Value, key: &str, item: usize) -> Result<&'a str> {
    body.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| schema(item, format!("missing string field \"{key}\"")))
}

fn family_of(body: &Value, item: usize) -> Result<TableFamily> {
    let family = string_field(body, "family", item)?;
    TableFamily::from_nft(family).ok_or_else(|| schema(item, format!("unknown family {family:?}")))
}

fn find_table(tables: &[Table], family: TableFamily, name: &str) -> Option<usize> {
    tables
        .iter()
        .position(|table| table.family == family && table.name == name)
}

fn find_table_mut<'a>(
    tables: &'a mut [Table],
    family: TableFamily,
    name: &str,
) -> Option<&'a mut Table> {
    let index = find_table(tables, family, name)?;
    tables.get_mut(index)
}

/// A chain; base chains on hooks other than the five routed ones (ingress,
/// egress) are kept as plain chains since this crate does not evaluate them.
fn parse_chain(body: &Value, item: usize) -> Result<Chain> {
    let name = string_field(body, "name", item)?.to_string();
    let hook = body
        .get("hook")
        .and_then(Value::as_str)
        .and_then(Hook::from_nft);
    let base = match hook {
        Some(hook) => {
            let priority = body
                .get("prio")
                .and_then(Value::as_i64)
                .and_then(|prio| i32::try_from(prio).ok())
                .ok_or_else(|| {
                    schema(item, format!("base chain {name} without numeric \"prio\""))
                })?;
            let policy = match body.get("policy").and_then(Value::as_str) {
                None | Some("accept") => Policy::Accept,
                Some("drop") => Policy::Drop,
                Some(other) => {
                    return Err(schema(
                        item,
                        format!("chain {name}: unknown policy {other:?}"),
                    ));
                }
            };
            let kind = match body.get("type").and_then(Value::as_str) {
                Some("nat") => ChainKind::Nat,
                Some("route") => ChainKind::Route,
                _ => ChainKind::Filter,
            };
            Some(BaseChain {
                hook,
                priority,
                policy,
                kind,
            })
        }
        None => None,
    };
    Ok(Chain {
        name,
        base,
        rules: Vec::new(),
        policy_counters: None,
    })
}
