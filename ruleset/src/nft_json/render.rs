//! Rule text rendered from the JSON, nft-like, for when `nft -a list ruleset` text is not at
//! hand.

use super::*;

/// Renders a rule's expressions in nft-like syntax, for when `nft -a list
/// ruleset` text is not at hand.
pub(super) fn render_rule(exprs: &[Value]) -> String {
    exprs
        .iter()
        .map(render_statement)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn render_statement(statement: &Value) -> String {
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

pub(super) fn render_quoted(value: &Value) -> String {
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

pub(super) fn render_expr(value: &Value) -> String {
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
