//! Decides whether a rule's matches hold for one packet.
//!
//! Three-valued: a match holds, does not hold, or cannot be decided. A rule
//! is decided "no" as soon as any of its matches is a definite "no" (the
//! conjunction cannot hold whatever the undecidable ones say); it is
//! undecidable only if nothing rules it out and something cannot be told.

use crate::addrtype;
use crate::model::{Condition, Field, Match, Rule, Ruleset, ValueTest};
use crate::names;
use crate::nat;
use crate::packet::{CtState, Direction, Family, Packet};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Match,
    NoMatch,
    Undecidable(String),
}

/// What a condition says about a packet before negation is applied.
enum Truth {
    Yes,
    No,
    /// The packet does not have the field (a port on ICMP, `ip saddr` on
    /// IPv6): no match, negated or not, as in the kernel.
    Absent,
    /// xt_owner on a packet without a socket: matches only when negated.
    NoSocket,
    Unknown(String),
}

impl From<bool> for Truth {
    fn from(value: bool) -> Truth {
        if value { Truth::Yes } else { Truth::No }
    }
}

pub(crate) fn rule_matches(rule: &Rule, packet: &Packet, ruleset: &Ruleset) -> Outcome {
    let mut reasons: Vec<String> = Vec::new();
    for one in &rule.matches {
        match match_outcome(one, packet, ruleset) {
            Outcome::Match => {}
            Outcome::NoMatch => return Outcome::NoMatch,
            Outcome::Undecidable(reason) => reasons.push(reason),
        }
    }
    if reasons.is_empty() {
        Outcome::Match
    } else {
        Outcome::Undecidable(reasons.join("; "))
    }
}

pub(crate) fn match_outcome(one: &Match, packet: &Packet, ruleset: &Ruleset) -> Outcome {
    let holds = |value: bool| {
        if value != one.negated {
            Outcome::Match
        } else {
            Outcome::NoMatch
        }
    };
    match condition_truth(&one.condition, packet, ruleset) {
        Truth::Yes => holds(true),
        Truth::No => holds(false),
        Truth::Absent => Outcome::NoMatch,
        Truth::NoSocket => holds(false),
        Truth::Unknown(reason) => Outcome::Undecidable(reason),
    }
}

/// Why a rule on addresses, mark or length cannot decide a packet that stands for drops
/// counted together ([`crate::packet::Unknown::per_flow`]).
const PER_FLOW: &str =
    "addresses, mark and length are not kept for drops counted beyond the flow table";

enum FieldValue {
    Known(u32),
    Absent,
    Unknown(String),
}

fn condition_truth(condition: &Condition, packet: &Packet, ruleset: &Ruleset) -> Truth {
    match condition {
        Condition::Value { field, mask, test } => match field_value(
            *field,
            packet,
            || {
                // The bits of the field the test can see.
                let mask = mask.unwrap_or(u32::MAX);
                match test {
                    ValueTest::AnyBitSet(bits) => bits & mask,
                    ValueTest::OneOf(_) => mask,
                }
            },
            ruleset,
        ) {
            FieldValue::Known(value) => {
                let value = value & mask.unwrap_or(u32::MAX);
                match test {
                    ValueTest::OneOf(ranges) => ranges.iter().any(|range| range.contains(value)),
                    ValueTest::AnyBitSet(bits) => value & bits != 0,
                }
                .into()
            }
            FieldValue::Absent => Truth::Absent,
            FieldValue::Unknown(reason) => Truth::Unknown(reason),
        },
        Condition::Address {
            direction,
            family,
            ranges,
        } => {
            if family.is_some_and(|family| family != packet.family) {
                return Truth::Absent;
            }
            if packet.unknown.per_flow {
                return Truth::Unknown(PER_FLOW.to_string());
            }
            let addr = match direction {
                Direction::Source => packet.src,
                Direction::Destination => packet.dst,
            };
            ranges.iter().any(|range| range.contains(addr)).into()
        }
        Condition::Interface { direction, names } => {
            let (interface, unknown) = match direction {
                Direction::Source => (&packet.iif, packet.unknown.iif),
                Direction::Destination => (&packet.oif, packet.unknown.oif),
            };
            if unknown && interface.is_none() {
                return Truth::Unknown(format!(
                    "{} interface not known",
                    match direction {
                        Direction::Source => "input",
                        Direction::Destination => "output",
                    }
                ));
            }
            match interface {
                Some(interface) => names.iter().any(|name| name.matches(interface)).into(),
                None => Truth::Absent,
            }
        }
        Condition::AnyPort { protocol, ranges } => {
            if protocol.is_some_and(|protocol| protocol != packet.proto)
                || !names::has_ports(packet.proto)
            {
                return Truth::Absent;
            }
            let in_ranges =
                |port: Option<u16>| port.map(|port| ranges.iter().any(|r| r.contains(port.into())));
            match (in_ranges(packet.sport), in_ranges(packet.dport)) {
                (Some(true), _) | (_, Some(true)) => Truth::Yes,
                (Some(false), Some(false)) => Truth::No,
                _ => Truth::Unknown("packet ports not reported".to_string()),
            }
        }
        Condition::Icmp {
            protocol,
            icmp_type,
            codes,
        } => {
            if *protocol != packet.proto {
                return Truth::Absent;
            }
            if *icmp_type == u8::MAX {
                return Truth::Yes;
            }
            match (packet.icmp_type, packet.icmp_code) {
                (Some(actual), _) if actual != *icmp_type => Truth::No,
                (Some(_), Some(code)) => codes.contains(code.into()).into(),
                (Some(_), None) if codes.first == 0 && codes.last >= 255 => Truth::Yes,
                _ => Truth::Unknown("ICMP type/code not reported".to_string()),
            }
        }
        Condition::SocketOwner { id, ranges } => {
            let (owner, unknown) = match id {
                crate::model::OwnerId::Uid => (packet.uid, packet.unknown.uid),
                crate::model::OwnerId::Gid => (packet.gid, packet.unknown.gid),
            };
            match owner {
                Some(owner) => ranges.iter().any(|range| range.contains(owner)).into(),
                None if unknown => Truth::Unknown(owner_unknown(*id)),
                None => Truth::NoSocket,
            }
        }
        Condition::IpSet { .. } if packet.unknown.per_flow => Truth::Unknown(PER_FLOW.to_string()),
        Condition::IpSet { name, directions } => match ruleset.ipsets.get(name) {
            Some(set) => match set.contains(packet, directions) {
                Ok(member) => member.into(),
                Err(reason) => Truth::Unknown(reason),
            },
            None => Truth::Unknown(format!("contents of ipset {name} were not provided")),
        },
        Condition::AddrType { .. } if packet.unknown.per_flow => {
            Truth::Unknown(PER_FLOW.to_string())
        }
        Condition::AddrType {
            direction,
            types,
            limit_iface,
            matcher,
        } => addr_type_truth(packet, ruleset, *direction, *types, *limit_iface, *matcher),
        Condition::Recent(_) if packet.unknown.per_flow => Truth::Unknown(PER_FLOW.to_string()),
        Condition::Recent(test) => {
            let addr = match test.side {
                Direction::Source => packet.src,
                Direction::Destination => packet.dst,
            };
            match test.decide(addr, false, ruleset.recent.as_ref(), &packet.recent_writes) {
                Ok(finding) => finding.found.into(),
                Err(reason) => Truth::Unknown(reason),
            }
        }
        Condition::Concat { elements } => concat_truth(elements, packet, ruleset),
        Condition::ReversePath => match packet.reverse_path {
            Some(by_input) => by_input.into(),
            None => Truth::Unknown(
                "the route back to the source (rp_filter) is looked up only by explain".to_string(),
            ),
        },
        Condition::Undecidable { reason } => Truth::Unknown(reason.clone()),
    }
}

/// Some element whose parts all match: yes; every element ruled out by a part: no.
fn concat_truth(elements: &[Vec<Match>], packet: &Packet, ruleset: &Ruleset) -> Truth {
    let mut unknown = None;
    for parts in elements {
        let mut element_unknown = None;
        let mut ruled_out = false;
        for part in parts {
            match match_outcome(part, packet, ruleset) {
                Outcome::Match => {}
                Outcome::NoMatch => {
                    ruled_out = true;
                    break;
                }
                Outcome::Undecidable(reason) => {
                    element_unknown.get_or_insert(reason);
                }
            }
        }
        if ruled_out {
            continue;
        }
        match element_unknown {
            None => return Truth::Yes,
            Some(reason) => {
                unknown.get_or_insert(reason);
            }
        }
    }
    match unknown {
        Some(reason) => Truth::Unknown(reason),
        None => Truth::No,
    }
}

fn addr_type_truth(
    packet: &Packet,
    ruleset: &Ruleset,
    direction: Direction,
    types: addrtype::AddrTypes,
    limit_iface: Option<Direction>,
    matcher: addrtype::Matcher,
) -> Truth {
    let what = || {
        format!(
            "{} address type {types}",
            match direction {
                Direction::Source => "source",
                Direction::Destination => "destination",
            }
        )
    };
    let Some(table) = &ruleset.local_routes else {
        return Truth::Unknown(format!(
            "{}: the namespace's local routes were not read",
            what()
        ));
    };
    let dev = match limit_iface {
        None => None,
        Some(side) => {
            let (name, unknown) = match side {
                Direction::Source => (&packet.iif, packet.unknown.iif),
                Direction::Destination => (&packet.oif, packet.unknown.oif),
            };
            match name {
                Some(name) => Some(name.as_str()),
                // No device on this hook: the kernel looks up without one.
                None if !unknown => None,
                None => return Truth::Unknown(format!("{}: interface not known", what())),
            }
        }
    };
    let addr = match direction {
        Direction::Source => packet.src,
        Direction::Destination => packet.dst,
    };
    let possible = table.possible_types(addr, dev, matcher);
    match addrtype::test(types, addr, possible, matcher) {
        Some(decided) => decided.into(),
        None => Truth::Unknown(format!(
            "{} of {addr}: only a route lookup beyond the local table could tell",
            what()
        )),
    }
}

/// The packet's value of `field`; `tested` gives the bits a test looks at, for fields
/// known only in part (a connection's status).
fn field_value(
    field: Field,
    packet: &Packet,
    tested: impl Fn() -> u32,
    ruleset: &Ruleset,
) -> FieldValue {
    let known_or = |value: Option<u32>, missing: &str| match value {
        Some(value) => FieldValue::Known(value),
        None => FieldValue::Unknown(missing.to_string()),
    };
    match field {
        Field::L4Proto { family } => {
            if family.is_some_and(|family| family != packet.family) {
                FieldValue::Absent
            } else {
                FieldValue::Known(packet.proto.into())
            }
        }
        Field::NfProto => FieldValue::Known(match packet.family {
            Family::Ipv4 => 2,
            Family::Ipv6 => 10,
        }),
        Field::EtherType => FieldValue::Known(match packet.family {
            Family::Ipv4 => 0x0800,
            Family::Ipv6 => 0x86dd,
        }),
        Field::SrcPort { protocol } => port_value(protocol, packet.sport, packet),
        Field::DstPort { protocol } => port_value(protocol, packet.dport, packet),
        Field::TcpFlags => {
            if packet.proto != 6 {
                FieldValue::Absent
            } else {
                known_or(packet.tcp_flags.map(u32::from), "TCP flags not reported")
            }
        }
        Field::IcmpType { protocol } => {
            if packet.proto != protocol {
                FieldValue::Absent
            } else {
                known_or(packet.icmp_type.map(u32::from), "ICMP type not reported")
            }
        }
        Field::IcmpCode { protocol } => {
            if packet.proto != protocol {
                FieldValue::Absent
            } else {
                known_or(packet.icmp_code.map(u32::from), "ICMP code not reported")
            }
        }
        Field::Mark | Field::Length if packet.unknown.per_flow => {
            FieldValue::Unknown(PER_FLOW.to_string())
        }
        Field::Mark if packet.unknown.mark => FieldValue::Unknown(
            "an earlier rule on the packet's way set its mark from what droptrace does not \
             read (the connection's mark, a map)"
                .to_string(),
        ),
        Field::Mark => FieldValue::Known(packet.mark),
        Field::CtMark => match packet.ct_state {
            // No connection: xt_connmark's match and nft's `ct mark` fail either way.
            Some(CtState::Invalid | CtState::Untracked) => FieldValue::Absent,
            _ if packet.unknown.ct_mark => FieldValue::Unknown(
                "the connection's mark is not known (not reported, or set from what \
                 droptrace does not read)"
                    .to_string(),
            ),
            _ => FieldValue::Known(packet.ct_mark),
        },
        Field::SocketUid => match packet.uid {
            Some(uid) => FieldValue::Known(uid),
            None if packet.unknown.uid => {
                FieldValue::Unknown(owner_unknown(crate::model::OwnerId::Uid))
            }
            None => FieldValue::Absent,
        },
        Field::SocketGid => match packet.gid {
            Some(gid) => FieldValue::Known(gid),
            None if packet.unknown.gid => {
                FieldValue::Unknown(owner_unknown(crate::model::OwnerId::Gid))
            }
            None => FieldValue::Absent,
        },
        Field::CtState => known_or(
            packet.ct_state.map(|state| state.bit()),
            "conntrack state not reported",
        ),
        Field::CtStatus { needs_conntrack } => match packet.ct_state {
            None => FieldValue::Unknown("conntrack state not reported".to_string()),
            // No connection: nft's `ct status` breaks; xt_conntrack sees no status bit.
            Some(CtState::Invalid | CtState::Untracked) if needs_conntrack => FieldValue::Absent,
            Some(CtState::Invalid | CtState::Untracked) => FieldValue::Known(0),
            Some(_)
                if tested()
                    & !(nat::never_set(ruleset)
                        | packet.ct_status_clear
                        | packet.ct_status_set)
                    == 0 =>
            {
                FieldValue::Known(packet.ct_status_set & tested())
            }
            Some(_) => FieldValue::Unknown(
                "ct status: the ruleset can translate this connection's addresses (NAT rules \
                 or a helper), and the status is not reported"
                    .to_string(),
            ),
        },
        Field::Length => FieldValue::Known(packet.len),
    }
}

fn owner_unknown(id: crate::model::OwnerId) -> String {
    match id {
        crate::model::OwnerId::Uid => "the socket owner's uid is not known".to_string(),
        crate::model::OwnerId::Gid => "the socket owner's gid is not known".to_string(),
    }
}

fn port_value(protocol: Option<u8>, port: Option<u16>, packet: &Packet) -> FieldValue {
    match protocol {
        Some(protocol) if protocol != packet.proto => return FieldValue::Absent,
        None if !names::has_ports(packet.proto) => {
            return FieldValue::Unknown(format!(
                "transport-header port on protocol {} which has no ports",
                packet.proto
            ));
        }
        _ => {}
    }
    match port {
        Some(port) => FieldValue::Known(port.into()),
        None => FieldValue::Unknown("packet port not reported".to_string()),
    }
}
