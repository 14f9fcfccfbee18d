//! `ipset save` parsing and set membership for `-m set --match-set`.
//!
//! iptables rules often delegate the interesting part ("is this destination
//! allowed?") to an ipset, so naming the rule that dropped a packet needs the
//! set's contents. Only the set types that firewalls use for allow/deny lists
//! are modelled (`hash:ip`, `hash:net`, `hash:ip,port`, `hash:net,port`);
//! any other set, or an element we cannot read, makes the set unsupported and
//! every test against it undecidable rather than wrong.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Serialize;

use crate::error::{ParseError, Result};
use crate::names;
use crate::packet::{Direction, Family, Packet, ValueRange};
use crate::shell;

/// One set from `ipset save`.
#[derive(Clone, Debug, Serialize)]
pub struct Ipset {
    pub name: String,
    /// The type as ipset names it, e.g. `hash:net,port`.
    pub kind: String,
    pub family: Family,
    pub entries: Vec<IpsetEntry>,
    /// Why membership in this set cannot be decided, if it cannot.
    pub unsupported: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IpsetEntry {
    pub addr: IpNet,
    /// For `,port` set types: protocol and port range. ICMP entries store
    /// `type << 8 | code` as the port, as the kernel does.
    pub port: Option<(u8, ValueRange)>,
    /// A `nomatch` entry carves an exception out of a wider network.
    pub nomatch: bool,
}

/// Dimensions of the set types we evaluate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Addr,
    AddrPort,
}

fn shape(kind: &str) -> Option<Shape> {
    match kind {
        "hash:ip" | "hash:net" => Some(Shape::Addr),
        "hash:ip,port" | "hash:net,port" => Some(Shape::AddrPort),
        _ => None,
    }
}

/// Options of `add` lines that take a value (skipped when looking for the
/// `nomatch` flag).
const VALUED_ADD_OPTIONS: &[&str] = &[
    "timeout", "packets", "bytes", "comment", "skbmark", "skbprio", "skbqueue",
];

/// Parses `ipset save` (or `ipset list -o save`) output into sets by name.
pub fn parse_save(text: &str) -> Result<BTreeMap<String, Ipset>> {
    let mut sets: BTreeMap<String, Ipset> = BTreeMap::new();
    for (index, raw_line) in text.lines().enumerate() {
        let line_number = index + 1;
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words = shell::split(line).map_err(|message| ParseError::line(line_number, message))?;
        match words.as_slice() {
            [command, name, kind, options @ ..] if command == "create" || command == "-N" => {
                let family = match option_value(options, "family") {
                    None | Some("inet") => Family::Ipv4,
                    Some("inet6") => Family::Ipv6,
                    Some(other) => {
                        return Err(ParseError::line(
                            line_number,
                            format!("set {name}: unknown family {other:?}"),
                        ));
                    }
                };
                let unsupported = shape(kind)
                    .is_none()
                    .then(|| format!("ipset type {kind} is not evaluated"));
                sets.insert(
                    name.clone(),
                    Ipset {
                        name: name.clone(),
                        kind: kind.clone(),
                        family,
                        entries: Vec::new(),
                        unsupported,
                    },
                );
            }
            [command, name, element, options @ ..] if command == "add" || command == "-A" => {
                let set = sets.get_mut(name).ok_or_else(|| {
                    ParseError::line(
                        line_number,
                        format!("add to set {name} before its create line"),
                    )
                })?;
                if set.unsupported.is_some() {
                    continue;
                }
                match parse_element(set, element, options) {
                    Ok(entry) => set.entries.push(entry),
                    Err(reason) => {
                        set.unsupported = Some(format!(
                            "set {name}: element {element:?} not understood ({reason})"
                        ));
                    }
                }
            }
            [command, ..] => {
                return Err(ParseError::line(
                    line_number,
                    format!("unexpected ipset command {command:?}"),
                ));
            }
            [] => {}
        }
    }
    Ok(sets)
}

fn option_value<'a>(options: &'a [String], key: &str) -> Option<&'a str> {
    options
        .iter()
        .position(|option| option == key)
        .and_then(|index| options.get(index + 1))
        .map(String::as_str)
}

fn has_flag(options: &[String], flag: &str) -> bool {
    let mut index = 0;
    while let Some(option) = options.get(index) {
        if option == flag {
            return true;
        }
        index += if VALUED_ADD_OPTIONS.contains(&option.as_str()) {
            2
        } else {
            1
        };
    }
    false
}

fn parse_element(
    set: &Ipset,
    element: &str,
    options: &[String],
) -> std::result::Result<IpsetEntry, String> {
    let (addr_text, port_text) = match shape(&set.kind) {
        Some(Shape::AddrPort) => match element.split_once(',') {
            Some((addr, port)) => (addr, Some(port)),
            None => return Err("missing ,port".to_string()),
        },
        _ => (element, None),
    };
    let addr = parse_net(addr_text)?;
    let family_matches = matches!(
        (set.family, addr),
        (Family::Ipv4, IpNet::V4(_)) | (Family::Ipv6, IpNet::V6(_))
    );
    if !family_matches {
        return Err("address of the wrong family".to_string());
    }
    let port = port_text.map(parse_port).transpose()?;
    Ok(IpsetEntry {
        addr,
        port,
        nomatch: has_flag(options, "nomatch"),
    })
}

fn parse_net(text: &str) -> std::result::Result<IpNet, String> {
    if let Ok(net) = IpNet::from_str(text) {
        return Ok(net.trunc());
    }
    IpAddr::from_str(text)
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is not an address or network"))
}

/// `tcp:443`, `udp:53`, `8080` (TCP), `tcp:8080-8081`, `icmp:8/0`,
/// `icmp:echo-request`, `gre:0`.
fn parse_port(text: &str) -> std::result::Result<(u8, ValueRange), String> {
    let (protocol_name, port) = text.split_once(':').unwrap_or(("tcp", text));
    let protocol = names::protocol(protocol_name)
        .ok_or_else(|| format!("unknown protocol {protocol_name:?}"))?;
    if tracer_common::netfilter::ipproto::is_icmp(protocol) {
        let (icmp_type, code) = match port.split_once('/') {
            Some((icmp_type, code)) => (
                icmp_type.parse::<u8>().map_err(|e| e.to_string())?,
                code.parse::<u8>().map_err(|e| e.to_string())?,
            ),
            None => {
                let named = if protocol == 1 {
                    names::iptables_icmp(port)
                } else {
                    names::iptables_icmpv6(port)
                };
                match named {
                    Some((icmp_type, Some(code))) => (icmp_type, code),
                    Some((_, None)) | None => {
                        return Err(format!("ICMP element {port:?} without a code"));
                    }
                }
            }
        };
        let value = (u32::from(icmp_type) << 8) | u32::from(code);
        return Ok((protocol, ValueRange::single(value)));
    }
    let range = match port.split_once('-') {
        Some((first, last)) => ValueRange {
            first: first.parse::<u16>().map_err(|e| e.to_string())?.into(),
            last: last.parse::<u16>().map_err(|e| e.to_string())?.into(),
        },
        None => ValueRange::single(port.parse::<u16>().map_err(|e| e.to_string())?.into()),
    };
    Ok((protocol, range))
}

impl Ipset {
    /// Whether `packet` is in the set, with `directions` choosing source or
    /// destination per dimension as in `--match-set NAME src,dst`. `Err`
    /// gives the reason it cannot be decided.
    pub fn contains(
        &self,
        packet: &Packet,
        directions: &[Direction],
    ) -> std::result::Result<bool, String> {
        if let Some(reason) = &self.unsupported {
            return Err(reason.clone());
        }
        let Some(shape) = shape(&self.kind) else {
            return Err(format!("ipset type {} is not evaluated", self.kind));
        };
        if self.family != packet.family {
            return Ok(false);
        }
        let Some(&addr_direction) = directions.first() else {
            return Err(format!("--match-set {} names no direction", self.name));
        };
        let addr = match addr_direction {
            Direction::Source => packet.src,
            Direction::Destination => packet.dst,
        };
        let port = match shape {
            Shape::Addr => None,
            Shape::AddrPort => {
                let Some(&port_direction) = directions.get(1) else {
                    return Err(format!(
                        "--match-set {} gives one direction for a two-dimension set",
                        self.name
                    ));
                };
                Some(packet_port_key(packet, port_direction)?)
            }
        };
        // The most specific matching entry decides, so that a `nomatch`
        // entry can punch a hole in a wider network.
        let best = self
            .entries
            .iter()
            .filter(|entry| entry.addr.contains(&addr))
            .filter(|entry| match (entry.port, port) {
                (Some((protocol, range)), Some((packet_protocol, value))) => {
                    protocol == packet_protocol && range.contains(value)
                }
                (None, None) => true,
                _ => false,
            })
            .max_by_key(|entry| entry.addr.prefix_len());
        Ok(best.is_some_and(|entry| !entry.nomatch))
    }
}

/// The (protocol, port) key the kernel uses for the port dimension.
fn packet_port_key(
    packet: &Packet,
    direction: Direction,
) -> std::result::Result<(u8, u32), String> {
    let protocol = packet.proto;
    if names::has_ports(protocol) {
        let port = match direction {
            Direction::Source => packet.sport,
            Direction::Destination => packet.dport,
        };
        return port
            .map(|port| (protocol, u32::from(port)))
            .ok_or_else(|| "packet port not reported".to_string());
    }
    if tracer_common::netfilter::ipproto::is_icmp(protocol) {
        return match (packet.icmp_type, packet.icmp_code) {
            (Some(icmp_type), Some(code)) => {
                Ok((protocol, (u32::from(icmp_type) << 8) | u32::from(code)))
            }
            _ => Err("ICMP type/code not reported".to_string()),
        };
    }
    Ok((protocol, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Unknown;

    const SAVE: &str = "\
create allowed_dst hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0xa0679088
add allowed_dst 198.51.100.7
add allowed_dst 192.0.2.0/24
add allowed_dst 192.0.2.128/25 nomatch
create svc hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0xc27efd9d
add svc 203.0.113.6,udp:53
add svc 203.0.113.5,tcp:443 timeout 300 comment \"nomatch is just a word here\"
add svc 203.0.113.5,icmp:8/0
create v6 hash:net family inet6 hashsize 1024 maxelem 65536
add v6 2001:db8::/32
create members list:set size 8
add members v6
";

    fn packet(dst: &str, proto: u8, dport: Option<u16>) -> Packet {
        let dst: IpAddr = dst.parse().unwrap();
        let family = if dst.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        };
        Packet {
            proto,
            src: if dst.is_ipv4() {
                "10.0.0.1".parse().unwrap()
            } else {
                "2001:db8:99::1".parse().unwrap()
            },
            dst,
            sport: dport.map(|_| 40000),
            dport,
            len: 60,
            unknown: Unknown::NONE,
            ..Packet::unknown(family)
        }
    }

    #[test]
    fn parses_types_families_and_flags() {
        let sets = parse_save(SAVE).unwrap();
        assert_eq!(sets.len(), 4);
        let allowed = &sets["allowed_dst"];
        assert_eq!(allowed.kind, "hash:net");
        assert_eq!(allowed.entries.len(), 3);
        assert!(allowed.entries[2].nomatch);
        let svc = &sets["svc"];
        assert!(svc.entries.iter().all(|entry| !entry.nomatch));
        assert_eq!(svc.entries[1].port, Some((6, ValueRange::single(443))));
        assert_eq!(svc.entries[2].port, Some((1, ValueRange::single(8 << 8))));
        assert_eq!(sets["v6"].family, Family::Ipv6);
        assert!(sets["members"].unsupported.is_some());
    }

    #[test]
    fn net_membership_honours_nomatch_holes() {
        let sets = parse_save(SAVE).unwrap();
        let allowed = &sets["allowed_dst"];
        let dst = [Direction::Destination];
        assert_eq!(
            allowed.contains(&packet("192.0.2.10", 6, Some(443)), &dst),
            Ok(true)
        );
        assert_eq!(
            allowed.contains(&packet("192.0.2.200", 6, Some(443)), &dst),
            Ok(false)
        );
        assert_eq!(
            allowed.contains(&packet("198.51.100.7", 6, Some(1)), &dst),
            Ok(true)
        );
        assert_eq!(
            allowed.contains(&packet("198.51.100.8", 6, Some(1)), &dst),
            Ok(false)
        );
        // Source direction looks at 10.0.0.1.
        assert_eq!(
            allowed.contains(&packet("192.0.2.10", 6, Some(443)), &[Direction::Source]),
            Ok(false)
        );
        // An IPv6 packet is never in an inet set.
        assert_eq!(
            allowed.contains(&packet("2001:db8::1", 6, Some(443)), &dst),
            Ok(false)
        );
    }

    #[test]
    fn ip_port_membership_needs_protocol_and_port() {
        let sets = parse_save(SAVE).unwrap();
        let svc = &sets["svc"];
        let dst_dst = [Direction::Destination, Direction::Destination];
        assert_eq!(
            svc.contains(&packet("203.0.113.5", 6, Some(443)), &dst_dst),
            Ok(true)
        );
        assert_eq!(
            svc.contains(&packet("203.0.113.5", 17, Some(443)), &dst_dst),
            Ok(false)
        );
        assert_eq!(
            svc.contains(&packet("203.0.113.6", 17, Some(53)), &dst_dst),
            Ok(true)
        );
        let mut ping = packet("203.0.113.5", 1, None);
        ping.icmp_type = Some(8);
        ping.icmp_code = Some(0);
        assert_eq!(svc.contains(&ping, &dst_dst), Ok(true));
        assert!(
            svc.contains(&packet("203.0.113.5", 6, Some(443)), &dst_dst[..1])
                .is_err()
        );
    }

    #[test]
    fn unsupported_sets_are_undecidable() {
        let sets = parse_save(SAVE).unwrap();
        let error = sets["members"]
            .contains(&packet("192.0.2.1", 6, Some(1)), &[Direction::Destination])
            .unwrap_err();
        assert!(error.contains("list:set"), "{error}");
    }

    #[test]
    fn bad_lines_report_their_number() {
        let error = parse_save("create a hash:ip\nadd b 1.2.3.4\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "line 2: add to set b before its create line"
        );
        let error = parse_save("create a hash:ip\nfrobnicate\n").unwrap_err();
        assert!(error.to_string().starts_with("line 2:"), "{error}");
        let error = parse_save("create a hash:ip family inet7\n").unwrap_err();
        assert!(error.to_string().starts_with("line 1:"), "{error}");
    }

    #[test]
    fn odd_elements_make_the_set_undecidable_not_the_file_unreadable() {
        let sets = parse_save("create a hash:ip,port\nadd a 1.2.3.4,frob:99\n").unwrap();
        assert!(sets["a"].unsupported.as_deref().unwrap().contains("frob"));
    }
}
