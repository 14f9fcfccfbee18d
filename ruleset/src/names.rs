//! Symbolic names the tools print instead of numbers.
//!
//! iptables-save prints protocols and ICMP types mostly as numbers, but
//! hand-written rules and `nft -j` use names (`tcp`, `echo-request`,
//! `established`). These tables translate them; an unknown name is reported
//! to the caller, which turns it into an undecidable match, never a guess.

/// Layer-4 protocol number for an iptables `-p` or nft `l4proto` name
/// (a subset of /etc/protocols: what firewalls actually use).
pub fn protocol(name: &str) -> Option<u8> {
    let number = match name.to_ascii_lowercase().as_str() {
        "icmp" => 1,
        "igmp" => 2,
        "ipencap" | "ipip" | "ip-encap" => 4,
        "tcp" => 6,
        "egp" => 8,
        "udp" => 17,
        "ipv6" => 41,
        "ipv6-route" => 43,
        "ipv6-frag" => 44,
        "rsvp" => 46,
        "gre" => 47,
        "esp" | "ipsec-esp" => 50,
        "ah" | "ipsec-ah" => 51,
        "icmpv6" | "ipv6-icmp" | "icmp6" => 58,
        "ipv6-nonxt" => 59,
        "ipv6-opts" => 60,
        "ospf" | "ospfigp" => 89,
        "pim" => 103,
        "vrrp" => 112,
        "l2tp" => 115,
        "sctp" => 132,
        "udplite" => 136,
        "dccp" => 33,
        "mpls-in-ip" => 137,
        _ => return name.parse().ok(),
    };
    Some(number)
}

/// The usual name of a protocol number, the one [`protocol`] reads back
/// (`icmpv6`, not `ipv6-icmp`).
pub fn protocol_name(number: u8) -> Option<&'static str> {
    Some(match number {
        1 => "icmp",
        2 => "igmp",
        4 => "ipip",
        6 => "tcp",
        8 => "egp",
        17 => "udp",
        33 => "dccp",
        41 => "ipv6",
        43 => "ipv6-route",
        44 => "ipv6-frag",
        46 => "rsvp",
        47 => "gre",
        50 => "esp",
        51 => "ah",
        58 => "icmpv6",
        59 => "ipv6-nonxt",
        60 => "ipv6-opts",
        89 => "ospf",
        103 => "pim",
        112 => "vrrp",
        115 => "l2tp",
        132 => "sctp",
        136 => "udplite",
        137 => "mpls-in-ip",
        _ => return None,
    })
}

pub use tracer_common::has_ports;

#[cfg(test)]
mod protocol_tests {
    #[test]
    fn every_protocol_name_reads_back() {
        for n in 0..=u8::MAX {
            if let Some(name) = super::protocol_name(n) {
                assert_eq!(super::protocol(name), Some(n), "{name}");
            }
        }
    }
}

/// ICMP type and optional code for an iptables `--icmp-type` name.
pub(crate) fn iptables_icmp(name: &str) -> Option<(u8, Option<u8>)> {
    let (icmp_type, code) = match name {
        "any" => (255, None),
        "echo-reply" | "pong" => (0, None),
        "destination-unreachable" => (3, None),
        "network-unreachable" => (3, Some(0)),
        "host-unreachable" => (3, Some(1)),
        "protocol-unreachable" => (3, Some(2)),
        "port-unreachable" => (3, Some(3)),
        "fragmentation-needed" => (3, Some(4)),
        "source-route-failed" => (3, Some(5)),
        "network-unknown" => (3, Some(6)),
        "host-unknown" => (3, Some(7)),
        "network-prohibited" => (3, Some(9)),
        "host-prohibited" => (3, Some(10)),
        "TOS-network-unreachable" => (3, Some(11)),
        "TOS-host-unreachable" => (3, Some(12)),
        "communication-prohibited" => (3, Some(13)),
        "host-precedence-violation" => (3, Some(14)),
        "precedence-cutoff" => (3, Some(15)),
        "source-quench" => (4, None),
        "redirect" => (5, None),
        "network-redirect" => (5, Some(0)),
        "host-redirect" => (5, Some(1)),
        "TOS-network-redirect" => (5, Some(2)),
        "TOS-host-redirect" => (5, Some(3)),
        "echo-request" | "ping" => (8, None),
        "router-advertisement" => (9, None),
        "router-solicitation" => (10, None),
        "time-exceeded" | "ttl-exceeded" => (11, None),
        "ttl-zero-during-transit" => (11, Some(0)),
        "ttl-zero-during-reassembly" => (11, Some(1)),
        "parameter-problem" => (12, None),
        "ip-header-bad" => (12, Some(0)),
        "required-option-missing" => (12, Some(1)),
        "timestamp-request" => (13, None),
        "timestamp-reply" => (14, None),
        "address-mask-request" => (17, None),
        "address-mask-reply" => (18, None),
        _ => return None,
    };
    Some((icmp_type, code))
}

/// ICMPv6 type and optional code for an ip6tables `--icmpv6-type` name.
pub(crate) fn iptables_icmpv6(name: &str) -> Option<(u8, Option<u8>)> {
    let (icmp_type, code) = match name {
        "destination-unreachable" => (1, None),
        "no-route" => (1, Some(0)),
        "communication-prohibited" => (1, Some(1)),
        "beyond-scope" => (1, Some(2)),
        "address-unreachable" => (1, Some(3)),
        "port-unreachable" => (1, Some(4)),
        "failed-policy" => (1, Some(5)),
        "reject-route" => (1, Some(6)),
        "packet-too-big" => (2, None),
        "time-exceeded" | "ttl-exceeded" => (3, None),
        "ttl-zero-during-transit" => (3, Some(0)),
        "ttl-zero-during-reassembly" => (3, Some(1)),
        "parameter-problem" => (4, None),
        "bad-header" => (4, Some(0)),
        "unknown-header-type" => (4, Some(1)),
        "unknown-option" => (4, Some(2)),
        "echo-request" | "ping" => (128, None),
        "echo-reply" | "pong" => (129, None),
        "group-membership-query" | "mld-listener-query" => (130, None),
        "group-membership-report" | "mld-listener-report" => (131, None),
        "group-membership-reduction" | "mld-listener-done" => (132, None),
        "router-solicitation" => (133, None),
        "router-advertisement" => (134, None),
        "neighbour-solicitation" | "neighbor-solicitation" => (135, None),
        "neighbour-advertisement" | "neighbor-advertisement" => (136, None),
        "redirect" => (137, None),
        _ => return None,
    };
    Some((icmp_type, code))
}

/// nftables `icmp type` names.
pub(crate) fn nft_icmp_type(name: &str) -> Option<u32> {
    Some(match name {
        "echo-reply" => 0,
        "destination-unreachable" => 3,
        "source-quench" => 4,
        "redirect" => 5,
        "echo-request" => 8,
        "router-advertisement" => 9,
        "router-solicitation" => 10,
        "time-exceeded" => 11,
        "parameter-problem" => 12,
        "timestamp-request" => 13,
        "timestamp-reply" => 14,
        "info-request" => 15,
        "info-reply" => 16,
        "address-mask-request" => 17,
        "address-mask-reply" => 18,
        _ => return None,
    })
}

/// nftables `icmpv6 type` names.
pub(crate) fn nft_icmpv6_type(name: &str) -> Option<u32> {
    Some(match name {
        "destination-unreachable" => 1,
        "packet-too-big" => 2,
        "time-exceeded" => 3,
        "parameter-problem" => 4,
        "echo-request" => 128,
        "echo-reply" => 129,
        "mld-listener-query" => 130,
        "mld-listener-report" => 131,
        "mld-listener-done" | "mld-listener-reduction" => 132,
        "nd-router-solicit" => 133,
        "nd-router-advert" => 134,
        "nd-neighbor-solicit" => 135,
        "nd-neighbor-advert" => 136,
        "nd-redirect" => 137,
        "router-renumbering" => 138,
        "ind-neighbor-solicit" => 141,
        "ind-neighbor-advert" => 142,
        "mld2-listener-report" => 143,
        _ => return None,
    })
}

/// nftables `icmp code` names.
pub(crate) fn nft_icmp_code(name: &str) -> Option<u32> {
    Some(match name {
        "net-unreachable" => 0,
        "host-unreachable" => 1,
        "prot-unreachable" => 2,
        "port-unreachable" => 3,
        "frag-needed" => 4,
        "net-prohibited" => 9,
        "host-prohibited" => 10,
        "admin-prohibited" => 13,
        _ => return None,
    })
}

/// nftables `icmpv6 code` names.
pub(crate) fn nft_icmpv6_code(name: &str) -> Option<u32> {
    Some(match name {
        "no-route" => 0,
        "admin-prohibited" => 1,
        "addr-unreachable" => 3,
        "port-unreachable" => 4,
        "policy-fail" => 5,
        "reject-route" => 6,
        _ => return None,
    })
}

/// Bit of a conntrack status name as nft writes it (`ct status dnat`), or of the
/// status pseudo-states iptables' `--ctstate` accepts (`SNAT`, `DNAT`).
pub(crate) fn ct_status_bit(name: &str) -> Option<u32> {
    Some(match name.to_ascii_lowercase().as_str() {
        "expected" => 1,
        "seen-reply" => 1 << 1,
        "assured" => 1 << 2,
        "confirmed" => 1 << 3,
        "snat" => crate::nat::IPS_SRC_NAT,
        "dnat" => crate::nat::IPS_DST_NAT,
        "dying" => 1 << 9,
        _ => return None,
    })
}

/// Bit of a conntrack state name, iptables (upper case) or nft (lower case).
pub(crate) fn ct_state_bit(name: &str) -> Option<u32> {
    use crate::packet::CtState;
    let state = match name.to_ascii_lowercase().as_str() {
        "new" => CtState::New,
        "established" => CtState::Established,
        "related" => CtState::Related,
        "invalid" => CtState::Invalid,
        "untracked" => CtState::Untracked,
        _ => return None,
    };
    Some(state.bit())
}

/// Bit of a TCP flag name, iptables (`SYN`, `ALL`, `NONE`) or nft (`syn`).
pub(crate) fn tcp_flag_bits(name: &str) -> Option<u32> {
    Some(match name.to_ascii_lowercase().as_str() {
        "fin" => 0x01,
        "syn" => 0x02,
        "rst" => 0x04,
        "psh" => 0x08,
        "ack" => 0x10,
        "urg" => 0x20,
        "ecn" | "ece" => 0x40,
        "cwr" => 0x80,
        "all" => 0xff,
        "none" => 0,
        _ => return None,
    })
}

/// Parses a decimal or `0x` hexadecimal number, as iptables and nft print them.
pub fn number(text: &str) -> Option<u32> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_and_numbers() {
        assert_eq!(protocol("tcp"), Some(6));
        assert_eq!(protocol("TCP"), Some(6));
        assert_eq!(protocol("ipv6-icmp"), Some(58));
        assert_eq!(protocol("icmpv6"), Some(58));
        assert_eq!(protocol("47"), Some(47));
        assert_eq!(protocol("999"), None);
        assert_eq!(protocol("nonsense"), None);
    }

    #[test]
    fn numbers_in_both_bases() {
        assert_eq!(number("25"), Some(25));
        assert_eq!(number("0x19"), Some(25));
        assert_eq!(number("0xffffffff"), Some(u32::MAX));
        assert_eq!(number("0x1ffffffff"), None);
        assert_eq!(number("x"), None);
    }

    #[test]
    fn icmp_names_carry_codes() {
        assert_eq!(iptables_icmp("echo-request"), Some((8, None)));
        assert_eq!(iptables_icmp("fragmentation-needed"), Some((3, Some(4))));
        assert_eq!(iptables_icmpv6("neighbour-solicitation"), Some((135, None)));
        assert_eq!(nft_icmpv6_type("nd-neighbor-solicit"), Some(135));
    }
}
