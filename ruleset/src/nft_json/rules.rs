//! A rule's `expr` list lowered into [`Match`]es and a [`Target`]: matches, sets, maps
//! and verdicts, within the table's sets.

use super::*;

#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct SetId {
    pub(super) family: TableFamily,
    pub(super) table: String,
    pub(super) name: String,
}

/// What a rule's expressions may refer to: the sets and maps of its table.
pub(super) struct Context<'a> {
    pub(super) sets: &'a HashMap<SetId, Vec<Value>>,
    pub(super) family: TableFamily,
    pub(super) table: &'a str,
}

/// The left-hand side of a `match`, as far as we can evaluate it.
pub(super) enum Left {
    Value(Field),
    Address {
        direction: Direction,
        family: Family,
    },
    /// `iifname`/`oifname`: the name, `*` a wildcard suffix.
    Interface(Direction),
    /// `iif`/`oif`: the interface's index. nft lists the index as the name the interface
    /// has now (net/netfilter/nft_meta.c dumps the index; nft's datatype prints it as
    /// `if_indextoname` gives it), so the name it shows is exact, no wildcard; an index
    /// no interface has any more is listed as a number, which is left undecided.
    InterfaceIndex(Direction),
    /// `fib saddr|daddr [. iif|. oif] type`.
    AddrType {
        direction: Direction,
        limit_iface: Option<Direction>,
    },
    /// `fib saddr [. mark] . iif oif`: the reverse-path lookup.
    ReversePath,
}

impl Context<'_> {
    pub(super) fn rule(&self, exprs: &[Value]) -> Rule {
        let mut matches = Vec::new();
        let mut target: Option<Target> = None;
        let mut counters = None;
        let mut actions: Vec<String> = Vec::new();
        let mut sets_marks: Vec<MarkWrite> = Vec::new();
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
                "mangle" => {
                    sets_marks.extend(mark_write(body));
                    actions.push(kind.to_string());
                }
                "log" | "notrack" | "set" | "map" | "flow" | "dup" | "ct helper" | "ct timeout"
                | "ct expectation" | "secmark" => {
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
                            // nft's JSON omits the options: which mark is not told.
                            let writes: &[MarkOf] = match action.as_str() {
                                "MARK" => &[MarkOf::Packet],
                                // --restore-mark writes the packet's.
                                "CONNMARK" => &[MarkOf::Connection, MarkOf::Packet],
                                _ => &[],
                            };
                            sets_marks.extend(writes.iter().map(|&of| MarkWrite {
                                of,
                                to: MarkSet::Unknown,
                            }));
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
            sets_marks,
            target,
        }
    }

    pub(super) fn match_statement(&self, body: &Value) -> Match {
        let op = body.get("op").and_then(Value::as_str).unwrap_or("==");
        match (body.get("left"), body.get("right")) {
            (Some(left), Some(right)) => self.comparison(left, op, right),
            _ => Match::undecidable("match without left or right"),
        }
    }

    pub(super) fn comparison(&self, left: &Value, op: &str, right: &Value) -> Match {
        let rendered = || format!("{} {op} {}", render_expr(left), render_expr(right));
        match self.try_comparison(left, op, right) {
            Ok(one) => one,
            Err(reason) => Match::undecidable(format!("{}: {reason}", rendered())),
        }
    }

    pub(super) fn try_comparison(
        &self,
        left: &Value,
        op: &str,
        right: &Value,
    ) -> std::result::Result<Match, String> {
        if let Some(parts) = left.get("concat").and_then(Value::as_array) {
            return self.concat_comparison(parts, op, right);
        }
        let (left, mask) = parse_left(left)?;
        let negated = op == "!=";
        let (elements, is_set) = self.right_elements(right)?;
        let condition = match left {
            Left::ReversePath => {
                // `missing` (false) or 0: no route back by the input interface.
                let missing = match elements.as_slice() {
                    [Value::Bool(found)] => !found,
                    [zero] if zero.as_str() == Some("0") || zero.as_u64() == Some(0) => true,
                    _ => return Err("fib oif compared with an interface is not evaluated".into()),
                };
                if !matches!(op, "==" | "!=") {
                    return Err(format!("operator {op} on fib oif is not evaluated"));
                }
                return Ok(Match::negated_if(
                    missing != negated,
                    Condition::ReversePath,
                ));
            }
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
            Left::Interface(direction) | Left::InterfaceIndex(direction) => {
                if !matches!(op, "==" | "!=" | "in") {
                    return Err(format!("operator {op} on interface names is not evaluated"));
                }
                let by_index = matches!(left, Left::InterfaceIndex(_));
                let names = elements
                    .iter()
                    .map(|e| match by_index {
                        true => index_element(e),
                        false => interface_element(e),
                    })
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
                    "in" if !is_set
                        && matches!(
                            field,
                            Field::CtState | Field::CtStatus { .. } | Field::TcpFlags
                        ) =>
                    {
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
    /// `ip daddr . meta l4proto . th dport` against elements `172.30.0.44 . tcp . 80`
    /// (an element's parts may be prefixes, ranges or sets of their own): each part is
    /// compared as it would be alone, and an element matches when all its parts do.
    fn concat_comparison(
        &self,
        parts: &[Value],
        op: &str,
        right: &Value,
    ) -> std::result::Result<Match, String> {
        if !matches!(op, "==" | "!=" | "in") {
            return Err(format!("operator {op} on a concatenation is not evaluated"));
        }
        let (elements, _) = self.right_elements(right)?;
        let elements = elements
            .iter()
            .map(|element| {
                let values = element_value(element)
                    .get("concat")
                    .and_then(Value::as_array)
                    .filter(|values| values.len() == parts.len())
                    .ok_or_else(|| {
                        format!(
                            "{} is not an element of the concatenation",
                            render_expr(element)
                        )
                    })?;
                parts
                    .iter()
                    .zip(values)
                    .map(|(part, value)| self.try_comparison(part, "==", value))
                    .collect::<std::result::Result<Vec<Match>, String>>()
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        Ok(Match {
            negated: op == "!=",
            condition: Condition::Concat { elements },
        })
    }

    pub(super) fn right_elements(
        &self,
        right: &Value,
    ) -> std::result::Result<(Vec<Value>, bool), String> {
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

    pub(super) fn named_set(&self, name: &str) -> std::result::Result<&[Value], String> {
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
    pub(super) fn verdict_map(&self, body: &Value) -> Target {
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

pub(super) fn verdict(kind: &str, body: &Value) -> Target {
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
pub(super) fn reject_with(body: &Value) -> Option<String> {
    let kind = body.get("type").and_then(Value::as_str)?;
    Some(match body.get("expr").and_then(Value::as_str) {
        Some(code) => format!("{kind} {code}"),
        None => kind.to_string(),
    })
}

pub(super) enum Xt {
    Ignore,
    Match(Match),
    Target(Target),
}

/// iptables-nft compat expressions carry only the extension's name in JSON.
/// The mark an nft `mangle` statement writes, when it writes one: `meta mark set 0x10`,
/// `ct mark set meta mark | 0x10`, `meta mark set ct mark & 0xff` (the value a number, a
/// mark, or either under `&`, `|` and `^` with numbers); from anything else (a map, a
/// field) the mark is unknown. `None` for other keys (a payload field, `meta priority`).
fn mark_write(body: &Value) -> Option<MarkWrite> {
    let of = mark_of(body.get("key")?)?;
    let to = mark_value(body.get("value")?, of).unwrap_or(MarkSet::Unknown);
    Some(MarkWrite { of, to })
}

/// Which mark `expr` is: `meta mark` or `ct mark` (of the original direction's
/// connection; nft has no per-direction mark).
fn mark_of(expr: &Value) -> Option<MarkOf> {
    let key = |kind: &str| expr.get(kind).and_then(|k| k.get("key"));
    if key("meta") == Some(&"mark".into()) {
        Some(MarkOf::Packet)
    } else if key("ct") == Some(&"mark".into()) && expr["ct"].get("dir").is_none() {
        Some(MarkOf::Connection)
    } else {
        None
    }
}

/// The value `expr` gives mark `of`, as [`MarkSet`] bits.
fn mark_value(expr: &Value, of: MarkOf) -> Option<MarkSet> {
    if let Some(n) = expr.as_u64() {
        return Some(MarkSet::xmark(u32::try_from(n).ok()?, u32::MAX));
    }
    if let Some(source) = mark_of(expr) {
        return Some(if source == of {
            MarkSet::xmark(0, 0)
        } else {
            MarkSet::COPY
        });
    }
    let (op, args) = single_entry(expr)?;
    let [left, right] = args.as_array()?.as_slice() else {
        return None;
    };
    let n = u32::try_from(right.as_u64()?).ok()?;
    let left = mark_value(left, of)?;
    match op {
        "&" => Some(left.and(n)),
        "|" => Some(left.or(n)),
        "^" => Some(left.xor(n)),
        _ => None,
    }
}

pub(super) fn xt(body: &Value) -> Xt {
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
