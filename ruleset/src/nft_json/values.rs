//! What an expression's left-hand side tests (payload, meta, ct fields) and the values on
//! its right: addresses, interfaces, ranges, symbols.

use super::*;

/// Parses a `match` left-hand side into what it tests, plus a bit mask.
pub(super) fn parse_left(left: &Value) -> std::result::Result<(Left, Option<u32>), String> {
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
                "iif" => Left::InterfaceIndex(Direction::Source),
                "oif" => Left::InterfaceIndex(Direction::Destination),
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
            let flags: Vec<&str> = match body.get("flags") {
                Some(Value::Array(flags)) => flags.iter().filter_map(Value::as_str).collect(),
                Some(Value::String(flag)) => vec![flag.as_str()],
                _ => Vec::new(),
            };
            let mut lookup = flags.clone();
            lookup.sort_unstable();
            if result == "oif"
                && matches!(
                    lookup.as_slice(),
                    ["iif", "saddr"] | ["iif", "mark", "saddr"]
                )
            {
                return Ok((Left::ReversePath, None));
            }
            if result != "type" {
                return Err(format!(
                    "fib {result} needs a route lookup droptrace does not make"
                ));
            }
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
            Some("mark") if body.get("dir").is_none() => Ok((Left::Value(Field::CtMark), None)),
            Some("status") if body.get("dir").is_none() => Ok((
                Left::Value(Field::CtStatus {
                    needs_conntrack: true,
                }),
                None,
            )),
            Some(other) => Err(format!("ct {other} is not reported")),
            None => Err("ct without key".to_string()),
        },
        other => Err(format!("{other} expressions are not evaluated")),
    }
}

pub(super) fn payload(protocol: &str, field: &str) -> Option<(Left, Option<u32>)> {
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
pub(super) fn element_value(element: &Value) -> &Value {
    element
        .get("elem")
        .and_then(|elem| elem.get("val"))
        .unwrap_or(element)
}

pub(super) fn address_element(element: &Value) -> std::result::Result<AddrRange, String> {
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
pub(super) fn interface_element(element: &Value) -> std::result::Result<InterfaceName, String> {
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

/// An `iif`/`oif` element as nft lists it: the interface's name now, to be matched whole.
pub(super) fn index_element(element: &Value) -> std::result::Result<InterfaceName, String> {
    let element = element_value(element);
    match element.as_str() {
        Some(name) => Ok(InterfaceName {
            name: name.to_string(),
            wildcard: false,
        }),
        None => Err(format!(
            "interface index {} belongs to no interface now",
            render_expr(element)
        )),
    }
}

pub(super) fn range_element(
    field: Field,
    element: &Value,
) -> std::result::Result<ValueRange, String> {
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
pub(super) fn value_of(field: Field, value: &Value) -> std::result::Result<u32, String> {
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

pub(super) fn object_entry<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    (object.len() == 1).then(|| object.get(key)).flatten()
}

pub(super) fn symbol(field: Field, name: &str) -> Option<u32> {
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
        Field::CtStatus { .. } => names::ct_status_bit(name),
        Field::TcpFlags => names::tcp_flag_bits(name),
        Field::SrcPort { .. }
        | Field::DstPort { .. }
        | Field::Mark
        | Field::CtMark
        | Field::SocketUid
        | Field::SocketGid
        | Field::Length => None,
    }
}
