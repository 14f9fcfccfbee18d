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
    Match, Policy, Rule, Table, TableFamily, Target, ValueTest, VerdictArm,
};
use crate::names;
use crate::packet::{Direction, Family, Hook, ValueRange};

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

#[derive(Clone, PartialEq, Eq, Hash)]
struct SetId {
    family: TableFamily,
    table: String,
    name: String,
}

/// What a rule's expressions may refer to: the sets and maps of its table.
struct Context<'a> {
    sets: &'a HashMap<SetId, Vec<Value>>,
    family: TableFamily,
    table: &'a str,
}

/// The left-hand side of a `match`, as far as we can evaluate it.
enum Left {
    Value(Field),
    Address {
        direction: Direction,
        family: Family,
    },
    Interface(Direction),
    /// `fib saddr|daddr [. iif|. oif] type`.
    AddrType {
        direction: Direction,
        limit_iface: Option<Direction>,
    },
}

impl Context<'_> {
    fn rule(&self, exprs: &[Value]) -> Rule {
        let mut matches = Vec::new();
        let mut target: Option<Target> = None;
        let mut counters = None;
        let mut actions: Vec<String> = Vec::new();
        for expr in exprs {
            if target.is_some() {
                // Nothing after a verdict runs.
                break;
            }
            let Some((kind, body)) = single_entry(expr) else {
                matches.push(Match::undecidable("malformed nft expression"));
                continue;
            };
            match kind {
                "match" => matches.push(self.match_statement(body)),
                "counter" => {
                    if let (Some(packets), Some(bytes)) = (
                        body.get("packets").and_then(Value::as_u64),
                        body.get("bytes").and_then(Value::as_u64),
                    ) {
                        counters = Some(Counters { packets, bytes });
                    }
                }
                "accept" | "drop" | "return" | "jump" | "goto" | "queue" | "reject" => {
                    target = Some(verdict(kind, body));
                }
                "continue" => {}
                "masquerade" | "snat" | "dnat" | "redirect" => {
                    target = Some(Target::Nat {
                        action: kind.to_string(),
                    });
                }
                "log" | "mangle" | "notrack" | "set" | "map" | "flow" | "dup" | "ct helper"
                | "ct timeout" | "ct expectation" | "secmark" => {
                    actions.push(kind.to_string());
                }
                "limit" => matches.push(Match::undecidable(
                    "limit: whether the rate was exceeded depends on recent traffic",
                )),
                "quota" => matches.push(Match::undecidable(
                    "quota: depends on bytes already counted",
                )),
                "xt" => match xt(body) {
                    Xt::Ignore => {}
                    Xt::Match(undecidable) => matches.push(undecidable),
                    Xt::Target(xt_target) => {
                        if let Target::Continue {
                            action: Some(action),
                        } = &xt_target
                        {
                            actions.push(action.clone());
                        } else {
                            target = Some(xt_target);
                        }
                    }
                },
                "vmap" => target = Some(self.verdict_map(body)),
                other => matches.push(Match::undecidable(format!(
                    "nft expression {other:?} is not evaluated"
                ))),
            }
        }
        let target = target.unwrap_or_else(|| Target::Continue {
            action: (!actions.is_empty()).then(|| actions.join(",")),
        });
        Rule {
            position: 0,
            handle: None,
            text: render_rule(exprs),
            comment: None,
            counters,
            matches,
            target,
        }
    }

    fn match_statement(&self, body: &Value) -> Match {
        let op = body.get("op").and_then(Value::as_str).unwrap_or("==");
        match (body.get("left"), body.get("right")) {
            (Some(left), Some(right)) => self.comparison(left, op, right),
            _ => Match::undecidable("match without left or right"),
        }
    }

    fn comparison(&self, left: &Value, op: &str, right: &Value) -> Match {
        let rendered = || format!("{} {op} {}", render_expr(left), render_expr(right));
        match self.try_comparison(left, op, right) {
            Ok(one) => one,
            Err(reason) => Match::undecidable(format!("{}: {reason}", rendered())),
        }
    }

    fn try_comparison(
        &self,
        left: &Value,
        op: &str,
        right: &Value,
    ) -> std::result::Result<Match, String> {
        let (left, mask) = parse_left(left)?;
        let negated = op == "!=";
        let (elements, is_set) = self.right_elements(right)?;
        let condition = match left {
            Left::Address { direction, family } => {
                if !matches!(op, "==" | "!=" | "in") {
                    return Err(format!("operator {op} on addresses is not evaluated"));
                }
                let ranges = elements
                    .iter()
                    .map(address_element)
                    .collect::<std::result::Result<Vec<_>, String>>()?;
                Condition::Address {
                    direction,
                    family: Some(family),
                    ranges,
                }
            }
            Left::Interface(direction) => {
                if !matches!(op, "==" | "!=" | "in") {
                    return Err(format!("operator {op} on interface names is not evaluated"));
                }
                let names = elements
                    .iter()
                    .map(interface_element)
                    .collect::<std::result::Result<Vec<_>, String>>()?;
                Condition::Interface { direction, names }
            }
            Left::AddrType {
                direction,
                limit_iface,
            } => {
                if !matches!(op, "==" | "!=" | "in") {
                    return Err(format!("operator {op} on address types is not evaluated"));
                }
                let mut types = AddrTypes(0);
                for element in &elements {
                    let name = element.as_str().ok_or_else(|| {
                        format!("{} is not an address type", render_expr(element))
                    })?;
                    types.0 |= AddrTypes::parse(name)?.0;
                }
                Condition::AddrType {
                    direction,
                    types,
                    limit_iface,
                    matcher: Matcher::Fib,
                }
            }
            Left::Value(field) => {
                let test = match op {
                    "<" | ">" | "<=" | ">=" => {
                        let [element] = elements.as_slice() else {
                            return Err(format!("operator {op} needs one value"));
                        };
                        let value = value_of(field, element)?;
                        let range = match op {
                            "<" => value
                                .checked_sub(1)
                                .map(|last| ValueRange { first: 0, last }),
                            "<=" => Some(ValueRange {
                                first: 0,
                                last: value,
                            }),
                            ">" => value.checked_add(1).map(|first| ValueRange {
                                first,
                                last: u32::MAX,
                            }),
                            _ => Some(ValueRange {
                                first: value,
                                last: u32::MAX,
                            }),
                        };
                        ValueTest::OneOf(range.into_iter().collect())
                    }
                    "in" if !is_set && matches!(field, Field::CtState | Field::TcpFlags) => {
                        let [element] = elements.as_slice() else {
                            return Err("flag test needs one value".to_string());
                        };
                        ValueTest::AnyBitSet(value_of(field, element)?)
                    }
                    "==" | "!=" | "in" => ValueTest::OneOf(
                        elements
                            .iter()
                            .map(|element| range_element(field, element))
                            .collect::<std::result::Result<Vec<_>, String>>()?,
                    ),
                    other => return Err(format!("operator {other} is not evaluated")),
                };
                Condition::Value { field, mask, test }
            }
        };
        Ok(Match::negated_if(negated, condition))
    }

    /// The values a right-hand side stands for, and whether it was a set
    /// (anonymous `{...}` or named `@name`) rather than a single value.
    fn right_elements(&self, right: &Value) -> std::result::Result<(Vec<Value>, bool), String> {
        if let Some(name) = right.as_str().and_then(|text| text.strip_prefix('@')) {
            return Ok((self.named_set(name)?.to_vec(), true));
        }
        if let Some(elements) = right.get("set") {
            let elements = match elements {
                Value::Array(elements) => elements.clone(),
                element => vec![element.clone()],
            };
            return Ok((elements, true));
        }
        Ok((vec![right.clone()], false))
    }

    fn named_set(&self, name: &str) -> std::result::Result<&[Value], String> {
        let id = SetId {
            family: self.family,
            table: self.table.to_string(),
            name: name.to_string(),
        };
        self.sets
            .get(&id)
            .map(Vec::as_slice)
            .ok_or_else(|| format!("set @{name} is not in table {} {}", self.family, self.table))
    }

    /// `tcp dport vmap { 22 : accept, 8080 : jump egress }` or `vmap @map`.
    fn verdict_map(&self, body: &Value) -> Target {
        let (Some(key), Some(data)) = (body.get("key"), body.get("data")) else {
            return Target::Unknown {
                action: "vmap without key or data".to_string(),
            };
        };
        let pairs = match self.right_elements(data) {
            Ok((pairs, _)) => pairs,
            Err(reason) => {
                return Target::Unknown {
                    action: format!("vmap: {reason}"),
                };
            }
        };
        let arms = pairs
            .iter()
            .map(|pair| {
                let pair = pair
                    .get("elem")
                    .and_then(|elem| elem.get("val"))
                    .unwrap_or(pair);
                match pair.as_array().map(Vec::as_slice) {
                    Some([element, verdict_value]) => VerdictArm {
                        key: self.comparison(key, "==", element),
                        target: match single_entry(verdict_value) {
                            Some((kind, body)) => verdict(kind, body),
                            None => Target::Unknown {
                                action: render_expr(verdict_value),
                            },
                        },
                    },
                    _ => VerdictArm {
                        key: Match::undecidable(format!(
                            "vmap element {} is not a key : verdict pair",
                            render_expr(pair)
                        )),
                        target: Target::Continue { action: None },
                    },
                }
            })
            .collect();
        Target::VerdictMap { arms }
    }
}

fn verdict(kind: &str, body: &Value) -> Target {
    let chain = || {
        body.get("target")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match kind {
        "accept" => Target::Accept,
        "drop" => Target::Drop,
        "return" => Target::Return,
        "queue" => Target::Queue,
        "continue" => Target::Continue { action: None },
        "reject" => Target::Reject {
            with: reject_with(body),
        },
        "jump" | "goto" => match chain() {
            Some(chain) if kind == "jump" => Target::Jump { chain },
            Some(chain) => Target::Goto { chain },
            None => Target::Unknown {
                action: format!("{kind} without target"),
            },
        },
        other => Target::Unknown {
            action: other.to_string(),
        },
    }
}

/// `{"type": "tcp reset"}` → `tcp reset`; `{"type": "icmpx", "expr":
/// "admin-prohibited"}` → `icmpx admin-prohibited`.
fn reject_with(body: &Value) -> Option<String> {
    let kind = body.get("type").and_then(Value::as_str)?;
    Some(match body.get("expr").and_then(Value::as_str) {
        Some(code) => format!("{kind} {code}"),
        None => kind.to_string(),
    })
}

enum Xt {
    Ignore,
    Match(Match),
    Target(Target),
}

/// iptables-nft compat expressions carry only the extension's name in JSON.
fn xt(body: &Value) -> Xt {
    let kind = body.get("type").and_then(Value::as_str).unwrap_or("");
    let name = body.get("name").and_then(Value::as_str).unwrap_or("?");
    match kind {
        "match" if name == "comment" => Xt::Ignore,
        "match" => Xt::Match(Match::undecidable(format!(
            "iptables-nft match {name:?}: nft's JSON omits its options (use iptables-save for this table)"
        ))),
        "target" => Xt::Target(match name {
            "REJECT" => Target::Reject { with: None },
            "NFQUEUE" | "QUEUE" => Target::Queue,
            nat if NAT_TARGETS.contains(&nat) => Target::Nat {
                action: nat.to_string(),
            },
            action if CONTINUING_TARGETS.contains(&action) => Target::Continue {
                action: Some(action.to_string()),
            },
            other => Target::Unknown {
                action: other.to_string(),
            },
        }),
        _ => Xt::Ignore,
    }
}

/// Parses a `match` left-hand side into what it tests, plus a bit mask.
fn parse_left(left: &Value) -> std::result::Result<(Left, Option<u32>), String> {
    let Some((kind, body)) = single_entry(left) else {
        return Err(format!(
            "left-hand side {} is not evaluated",
            render_expr(left)
        ));
    };
    match kind {
        "&" => {
            let Some([inner, mask]) = body.as_array().map(Vec::as_slice) else {
                return Err("malformed & expression".to_string());
            };
            let (Left::Value(field), None) = parse_left(inner)? else {
                return Err("bit mask on a non-numeric field".to_string());
            };
            Ok((Left::Value(field), Some(value_of(field, mask)?)))
        }
        "payload" => {
            if body.get("base").is_some() {
                return Err("raw payload offsets are not evaluated".to_string());
            }
            let protocol = body.get("protocol").and_then(Value::as_str).unwrap_or("");
            let field = body.get("field").and_then(Value::as_str).unwrap_or("");
            payload(protocol, field)
                .ok_or_else(|| format!("payload {protocol} {field} is not evaluated"))
        }
        "meta" => {
            let key = body.get("key").and_then(Value::as_str).unwrap_or("");
            let left = match key {
                "l4proto" => Left::Value(Field::L4Proto { family: None }),
                "nfproto" => Left::Value(Field::NfProto),
                "protocol" => Left::Value(Field::EtherType),
                "iifname" => Left::Interface(Direction::Source),
                "oifname" => Left::Interface(Direction::Destination),
                "mark" => Left::Value(Field::Mark),
                "skuid" => Left::Value(Field::SocketUid),
                "skgid" => Left::Value(Field::SocketGid),
                "length" => Left::Value(Field::Length),
                other => return Err(format!("meta {other} is not reported")),
            };
            Ok((left, None))
        }
        "fib" => {
            let result = body.get("result").and_then(Value::as_str).unwrap_or("");
            if result != "type" {
                return Err(format!(
                    "fib {result} needs a route lookup droptrace does not make"
                ));
            }
            let flags: Vec<&str> = match body.get("flags") {
                Some(Value::Array(flags)) => flags.iter().filter_map(Value::as_str).collect(),
                Some(Value::String(flag)) => vec![flag.as_str()],
                _ => Vec::new(),
            };
            let direction = if flags.contains(&"saddr") {
                Direction::Source
            } else if flags.contains(&"daddr") {
                Direction::Destination
            } else {
                return Err("fib type without saddr or daddr".to_string());
            };
            let limit_iface = if flags.contains(&"iif") {
                Some(Direction::Source)
            } else if flags.contains(&"oif") {
                Some(Direction::Destination)
            } else {
                None
            };
            Ok((
                Left::AddrType {
                    direction,
                    limit_iface,
                },
                None,
            ))
        }
        "ct" => match body.get("key").and_then(Value::as_str) {
            Some("state") if body.get("dir").is_none() => Ok((Left::Value(Field::CtState), None)),
            Some(other) => Err(format!("ct {other} is not reported")),
            None => Err("ct without key".to_string()),
        },
        other => Err(format!("{other} expressions are not evaluated")),
    }
}

fn payload(protocol: &str, field: &str) -> Option<(Left, Option<u32>)> {
    let port_protocol = match protocol {
        "th" => Some(None),
        other => match names::protocol(other) {
            Some(number) if names::has_ports(number) => Some(Some(number)),
            _ => None,
        },
    };
    let left = match (protocol, field) {
        ("ip", "saddr") | ("ip6", "saddr") | ("ip", "daddr") | ("ip6", "daddr") => Left::Address {
            direction: if field == "saddr" {
                Direction::Source
            } else {
                Direction::Destination
            },
            family: if protocol == "ip" {
                Family::Ipv4
            } else {
                Family::Ipv6
            },
        },
        ("ip", "protocol") => Left::Value(Field::L4Proto {
            family: Some(Family::Ipv4),
        }),
        ("ip6", "nexthdr") => Left::Value(Field::L4Proto {
            family: Some(Family::Ipv6),
        }),
        ("tcp", "flags") => Left::Value(Field::TcpFlags),
        ("icmp", "type") => Left::Value(Field::IcmpType { protocol: 1 }),
        ("icmp", "code") => Left::Value(Field::IcmpCode { protocol: 1 }),
        ("icmpv6", "type") => Left::Value(Field::IcmpType { protocol: 58 }),
        ("icmpv6", "code") => Left::Value(Field::IcmpCode { protocol: 58 }),
        (_, "sport") => Left::Value(Field::SrcPort {
            protocol: port_protocol?,
        }),
        (_, "dport") => Left::Value(Field::DstPort {
            protocol: port_protocol?,
        }),
        _ => return None,
    };
    Some((left, None))
}

/// Unwraps `{"elem": {"val": X, "timeout": ...}}` set elements.
fn element_value(element: &Value) -> &Value {
    element
        .get("elem")
        .and_then(|elem| elem.get("val"))
        .unwrap_or(element)
}

fn address_element(element: &Value) -> std::result::Result<AddrRange, String> {
    let element = element_value(element);
    if let Some(text) = element.as_str() {
        return IpAddr::from_str(text)
            .map(|addr| AddrRange::Net(IpNet::from(addr)))
            .map_err(|_| format!("{text:?} is not an address"));
    }
    if let Some(prefix) = element.get("prefix") {
        let addr = prefix
            .get("addr")
            .and_then(Value::as_str)
            .and_then(|a| IpAddr::from_str(a).ok());
        let len = prefix
            .get("len")
            .and_then(Value::as_u64)
            .and_then(|len| u8::try_from(len).ok());
        return match (addr, len) {
            (Some(addr), Some(len)) => IpNet::new(addr, len)
                .map(|net| AddrRange::Net(net.trunc()))
                .map_err(|_| format!("bad prefix length {len}")),
            _ => Err(format!("bad prefix {}", render_expr(element))),
        };
    }
    if let Some([first, last]) = element
        .get("range")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        let parse = |value: &Value| value.as_str().and_then(|text| IpAddr::from_str(text).ok());
        return match (parse(first), parse(last)) {
            (Some(first), Some(last)) => Ok(AddrRange::Range { first, last }),
            _ => Err(format!("bad address range {}", render_expr(element))),
        };
    }
    Err(format!(
        "address element {} is not evaluated",
        render_expr(element)
    ))
}

/// `"eth0"`, `"veth*"` (prefix), `"eth\*"` (a literal star).
fn interface_element(element: &Value) -> std::result::Result<InterfaceName, String> {
    let element = element_value(element);
    let text = element
        .as_str()
        .ok_or_else(|| format!("interface element {} is not a name", render_expr(element)))?;
    let (name, wildcard) = match text.strip_suffix('*') {
        Some(prefix) if !prefix.ends_with('\\') => (prefix.to_string(), true),
        _ => (text.replace("\\*", "*"), false),
    };
    Ok(InterfaceName { name, wildcard })
}

fn range_element(field: Field, element: &Value) -> std::result::Result<ValueRange, String> {
    let element = element_value(element);
    if let Some([first, last]) = element
        .get("range")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        return Ok(ValueRange {
            first: value_of(field, first)?,
            last: value_of(field, last)?,
        });
    }
    value_of(field, element).map(ValueRange::single)
}

/// A literal for `field`: a number, a symbolic name, or a list / `|` of
/// flags (OR-ed together).
fn value_of(field: Field, value: &Value) -> std::result::Result<u32, String> {
    match value {
        Value::Number(number) => number
            .as_u64()
            .and_then(|number| u32::try_from(number).ok())
            .ok_or_else(|| format!("{number} is out of range")),
        Value::String(text) => names::number(text)
            .or_else(|| symbol(field, text))
            .ok_or_else(|| format!("{text:?} is not a known value for this field")),
        Value::Array(flags) => flags
            .iter()
            .try_fold(0, |all, flag| Ok(all | value_of(field, flag)?)),
        Value::Object(object) => match object_entry(object, "|") {
            Some(Value::Array(flags)) => flags
                .iter()
                .try_fold(0, |all, flag| Ok(all | value_of(field, flag)?)),
            _ => Err(format!("{} is not a literal", render_expr(value))),
        },
        _ => Err(format!("{} is not a literal", render_expr(value))),
    }
}

fn object_entry<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    (object.len() == 1).then(|| object.get(key)).flatten()
}

fn symbol(field: Field, name: &str) -> Option<u32> {
    match field {
        Field::L4Proto { .. } => names::protocol(name).map(u32::from),
        Field::NfProto => match name {
            "ipv4" => Some(2),
            "ipv6" => Some(10),
            _ => None,
        },
        Field::EtherType => match name {
            "ip" => Some(0x0800),
            "ip6" => Some(0x86dd),
            "arp" => Some(0x0806),
            "vlan" => Some(0x8100),
            "8021ad" => Some(0x88a8),
            _ => None,
        },
        Field::IcmpType { protocol: 1 } => names::nft_icmp_type(name),
        Field::IcmpType { .. } => names::nft_icmpv6_type(name),
        Field::IcmpCode { protocol: 1 } => names::nft_icmp_code(name),
        Field::IcmpCode { .. } => names::nft_icmpv6_code(name),
        Field::CtState => names::ct_state_bit(name),
        Field::TcpFlags => names::tcp_flag_bits(name),
        Field::SrcPort { .. }
        | Field::DstPort { .. }
        | Field::Mark
        | Field::SocketUid
        | Field::SocketGid
        | Field::Length => None,
    }
}

/// Renders a rule's expressions in nft-like syntax, for when `nft -a list
/// ruleset` text is not at hand.
fn render_rule(exprs: &[Value]) -> String {
    exprs
        .iter()
        .map(render_statement)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn render_statement(statement: &Value) -> String {
    let Some((kind, body)) = single_entry(statement) else {
        return render_expr(statement);
    };
    match kind {
        "match" => {
            let left = body.get("left").unwrap_or(&Value::Null);
            let right = body.get("right").unwrap_or(&Value::Null);
            let quote = matches!(
                single_entry(left),
                Some(("meta", meta)) if matches!(
                    meta.get("key").and_then(Value::as_str),
                    Some("iifname" | "oifname" | "iif" | "oif")
                )
            );
            let right = if quote {
                render_quoted(right)
            } else {
                render_expr(right)
            };
            // nft leaves `==` and `in` implicit, except after a bit mask.
            let masked = single_entry(left).is_some_and(|(kind, _)| kind == "&");
            match body.get("op").and_then(Value::as_str) {
                None | Some("==") if masked => format!("{} == {right}", render_expr(left)),
                None | Some("==") | Some("in") => format!("{} {right}", render_expr(left)),
                Some(op) => format!("{} {op} {right}", render_expr(left)),
            }
        }
        // The values change with every packet; the text names the rule, not a reading.
        "counter" => match body.as_str() {
            Some(name) => format!("counter name {name:?}"),
            None => "counter".to_string(),
        },
        "jump" | "goto" => format!(
            "{kind} {}",
            body.get("target").and_then(Value::as_str).unwrap_or("?")
        ),
        "reject" => match reject_with(body) {
            Some(with) => format!("reject with {with}"),
            None => "reject".to_string(),
        },
        "log" => match body.get("prefix").and_then(Value::as_str) {
            Some(prefix) => format!("log prefix {prefix:?}"),
            None => "log".to_string(),
        },
        "limit" => {
            let over = if body.get("inv").and_then(Value::as_bool) == Some(true) {
                "over "
            } else {
                ""
            };
            format!(
                "limit rate {over}{}/{}",
                body.get("rate").map(render_expr).unwrap_or_default(),
                body.get("per").and_then(Value::as_str).unwrap_or("second")
            )
        }
        "mangle" => format!(
            "{} set {}",
            body.get("key").map(render_expr).unwrap_or_default(),
            body.get("value").map(render_expr).unwrap_or_default()
        ),
        "xt" => format!(
            "xt {} {:?}",
            body.get("type").and_then(Value::as_str).unwrap_or("?"),
            body.get("name").and_then(Value::as_str).unwrap_or("?")
        ),
        "vmap" => format!(
            "{} vmap {}",
            body.get("key").map(render_expr).unwrap_or_default(),
            body.get("data").map(render_expr).unwrap_or_default()
        ),
        other => other.to_string(),
    }
}

fn render_quoted(value: &Value) -> String {
    match value {
        Value::String(text) if !text.starts_with('@') => format!("\"{text}\""),
        Value::Object(object) => match object_entry(object, "set") {
            Some(Value::Array(elements)) => format!(
                "{{ {} }}",
                elements
                    .iter()
                    .map(render_quoted)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => render_expr(value),
        },
        other => render_expr(other),
    }
}

fn render_expr(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        Value::String(text) => text.clone(),
        Value::Array(items) => match items.as_slice() {
            // A vmap `key : verdict` pair; otherwise a list of flags.
            [key, verdict @ Value::Object(_)] => {
                format!("{} : {}", render_expr(key), render_expr(verdict))
            }
            _ => items.iter().map(render_expr).collect::<Vec<_>>().join(","),
        },
        Value::Object(_) => {
            let Some((kind, body)) = single_entry(value) else {
                return "?".to_string();
            };
            match kind {
                "payload" => format!(
                    "{} {}",
                    body.get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("payload"),
                    body.get("field").and_then(Value::as_str).unwrap_or("?")
                ),
                "meta" => {
                    let key = body.get("key").and_then(Value::as_str).unwrap_or("?");
                    if matches!(key, "iifname" | "oifname" | "iif" | "oif") {
                        key.to_string()
                    } else {
                        format!("meta {key}")
                    }
                }
                "ct" => format!(
                    "ct {}",
                    body.get("key").and_then(Value::as_str).unwrap_or("?")
                ),
                "set" => match body {
                    Value::Array(elements) => format!(
                        "{{ {} }}",
                        elements
                            .iter()
                            .map(render_expr)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    other => format!("{{ {} }}", render_expr(other)),
                },
                "range" => match body.as_array().map(Vec::as_slice) {
                    Some([first, last]) => format!("{}-{}", render_expr(first), render_expr(last)),
                    _ => "?".to_string(),
                },
                "prefix" => format!(
                    "{}/{}",
                    body.get("addr").map(render_expr).unwrap_or_default(),
                    body.get("len").map(render_expr).unwrap_or_default()
                ),
                "&" | "|" | "^" | "<<" | ">>" => match body.as_array().map(Vec::as_slice) {
                    Some([left, right]) => {
                        format!("{} {kind} {}", render_expr(left), render_expr(right))
                    }
                    _ => "?".to_string(),
                },
                "concat" => match body {
                    Value::Array(parts) => parts
                        .iter()
                        .map(render_expr)
                        .collect::<Vec<_>>()
                        .join(" . "),
                    other => render_expr(other),
                },
                "elem" => body.get("val").map(render_expr).unwrap_or_default(),
                "jump" | "goto" => format!(
                    "{kind} {}",
                    body.get("target").and_then(Value::as_str).unwrap_or("?")
                ),
                other => other.to_string(),
            }
        }
    }
}
