//! The values options take: addresses, port and id ranges, value/mask pairs, TCP flags,
//! ICMP types, interface names.

use super::*;

pub(super) fn tcp_flags(mask: u32, compare: u32) -> Condition {
    Condition::Value {
        field: Field::TcpFlags,
        mask: Some(mask),
        test: ValueTest::OneOf(vec![ValueRange::single(compare & mask)]),
    }
}

pub(super) fn tcp_flag_list(list: &str) -> Option<u32> {
    list.split(',')
        .try_fold(0, |all, name| Some(all | names::tcp_flag_bits(name)?))
}

/// `eth0`, `veth+` (prefix), `+` (any).
pub(super) fn interface(direction: Direction, value: &str) -> Condition {
    let (name, wildcard) = match value.strip_suffix('+') {
        Some(prefix) => (prefix, true),
        None => (value, false),
    };
    Condition::Interface {
        direction,
        names: vec![InterfaceName {
            name: name.to_string(),
            wildcard,
        }],
    }
}

/// `10.0.0.0/8`, `10.0.0.0/255.0.0.0`, `192.0.2.1`, `2001:db8::/32`.
pub(super) fn parse_address(text: &str, family: Family) -> std::result::Result<AddrRange, String> {
    let net = if let Ok(net) = IpNet::from_str(text) {
        net.trunc()
    } else if let Ok(addr) = IpAddr::from_str(text) {
        IpNet::from(addr)
    } else if let Some((addr, mask)) = text.split_once('/') {
        let (Ok(addr), Ok(mask)) = (IpAddr::from_str(addr), IpAddr::from_str(mask)) else {
            return Err(format!("{text:?} is not an address (host names need DNS)"));
        };
        match IpNet::with_netmask(addr, mask) {
            Ok(net) => net.trunc(),
            Err(_) => return Err(format!("{text:?} has a non-contiguous mask")),
        }
    } else {
        return Err(format!("{text:?} is not an address (host names need DNS)"));
    };
    let family_matches = matches!(
        (family, net),
        (Family::Ipv4, IpNet::V4(_)) | (Family::Ipv6, IpNet::V6(_))
    );
    if family_matches {
        Ok(AddrRange::Net(net))
    } else {
        Err(format!("{text:?} is not an {family:?} address"))
    }
}

/// `22`, `1024:65535`, `:1023`, `1024:`.
pub(super) fn parse_port_range(text: &str) -> Option<ValueRange> {
    parse_port_style_range(text, u32::from(u16::MAX))
}

pub(super) fn parse_port_style_range(text: &str, max: u32) -> Option<ValueRange> {
    let parse = |part: &str| -> Option<u32> {
        let value: u32 = part.parse().ok()?;
        (value <= max).then_some(value)
    };
    match text.split_once(':') {
        Some((first, last)) => {
            let first = if first.is_empty() { 0 } else { parse(first)? };
            let last = if last.is_empty() { max } else { parse(last)? };
            (first <= last).then_some(ValueRange { first, last })
        }
        None => parse(text).map(ValueRange::single),
    }
}

/// `1000` or `0-99` (owner ids).
pub(super) fn parse_id_range(text: &str) -> Option<ValueRange> {
    match text.split_once('-') {
        Some((first, last)) => {
            let (first, last) = (first.parse().ok()?, last.parse().ok()?);
            (first <= last).then_some(ValueRange { first, last })
        }
        None => text.parse().ok().map(ValueRange::single),
    }
}

/// `0x19/0xff` or `25`.
pub(super) fn parse_value_mask(text: &str) -> Option<(u32, u32)> {
    match text.split_once('/') {
        Some((value, mask)) => {
            let mask = names::number(mask)?;
            Some((names::number(value)? & mask, mask))
        }
        None => Some((names::number(text)?, u32::MAX)),
    }
}

/// `8`, `3/4`, `echo-request`, `any`.
pub(super) fn parse_icmp_type(protocol: u8, text: &str) -> Option<Condition> {
    let all_codes = ValueRange {
        first: 0,
        last: 255,
    };
    let (icmp_type, codes) = if let Some((icmp_type, code)) = text.split_once('/') {
        let code: u8 = code.parse().ok()?;
        (icmp_type.parse().ok()?, ValueRange::single(code.into()))
    } else if let Ok(icmp_type) = text.parse::<u8>() {
        (icmp_type, all_codes)
    } else {
        let named = if protocol == 1 {
            names::iptables_icmp(text)
        } else {
            names::iptables_icmpv6(text)
        };
        let (icmp_type, code) = named?;
        (
            icmp_type,
            code.map_or(all_codes, |code| ValueRange::single(code.into())),
        )
    };
    Some(Condition::Icmp {
        protocol,
        icmp_type,
        codes,
    })
}
