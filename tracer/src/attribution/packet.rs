//! The dropped packet as the rule engine sees it: a [`DropRecord`] turned into a
//! [`ruleset::Packet`], with what the record cannot tell marked unknown.

use crate::{kernel::stack, record::DropRecord};

/// The packet as the rule engine sees it.
pub fn packet_of(r: &DropRecord) -> ruleset::Packet {
    let family = if r.src.is_ipv6() {
        ruleset::Family::Ipv6
    } else {
        ruleset::Family::Ipv4
    };
    let name = |s: &String| (!s.is_empty()).then(|| s.clone());
    let (iif, oif) = match r.hook {
        Some(stack::Hook::Prerouting | stack::Hook::Input) => (name(&r.in_ifname), None),
        Some(stack::Hook::Forward) => (name(&r.in_ifname), name(&r.out_ifname)),
        _ => (None, name(&r.out_ifname)),
    };
    // The record names the protocol as the CLI does; the same parser reads it back.
    let proto = r
        .proto
        .parse::<crate::kernel::filter::Proto>()
        .map_or(0, |p| p.0);
    ruleset::Packet {
        family,
        proto,
        src: r.src,
        dst: r.dst,
        sport: r.sport,
        dport: r.dport,
        tcp_flags: r.tcp_flags_raw,
        icmp_type: r.icmp_type,
        icmp_code: r.icmp_code,
        iif,
        oif,
        mark: r.mark,
        ct_mark: r.ct_mark.unwrap_or(0),
        uid: r.uid,
        gid: r.gid,
        ct_state: Some(r.ct_state.rule_state()),
        // The NAT a connection went through is not read: only what the ruleset can do to
        // it decides `ct status` (ruleset::nat).
        ct_status_clear: 0,
        ct_status_set: 0,
        // Not looked up for captured drops: an rp_filter rule is left to the counters.
        reverse_path: None,
        len: r.len,
        recent_writes: Vec::new(),
        // A packet with a socket whose owner could not be read: owner matches cannot be
        // decided. Without a socket they are decided as the kernel does (no owner).
        unknown: ruleset::Unknown {
            uid: r.has_socket && r.uid.is_none(),
            gid: r.has_socket && r.gid.is_none(),
            // Read from the connection when it had one; without one, no rule tests it.
            ct_mark: r.ct_mark.is_none(),
            ..ruleset::Unknown::NONE
        },
    }
}

/// The hook the rule engine evaluates, when it is one (not the netdev hooks).
pub(super) fn rule_hook(h: stack::Hook) -> Option<ruleset::Hook> {
    h.is_routed().then_some(h)
}
