//! The packet the evaluator reasons about: its family, hook, fields, conntrack state, and
//! which of them are unknown. Kept apart from the rules ([`crate::model`]) so that what
//! tests packets (ipsets, address types) does not depend on the rule model.

use std::net::IpAddr;

use serde::Serialize;

pub use tracer_common::netfilter::{CtState, Family, Hook};

/// A dropped (or to-be-judged) packet, as the kernel side reports it.
///
/// Optional fields follow netfilter's own view: `iif`/`oif` are `None` when
/// the packet has no such device at that hook, `uid`/`gid` are `None` when
/// it has no local full socket (forwarded or kernel-generated packets), ports
/// are `None` for protocols without ports. `ct_state: None` means the state
/// was not reported; rules that test it are then undecidable. A field the
/// caller does not know at all is flagged in `unknown`, so that rules on it
/// are undecidable instead of decided as if the field were absent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Packet {
    pub family: Family,
    /// Layer-4 protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// Raw TCP flag byte: FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32 ECE=64 CWR=128.
    pub tcp_flags: Option<u8>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    pub iif: Option<String>,
    pub oif: Option<String>,
    pub mark: u32,
    /// The connection's mark, as the packet's first rule sees it; see [`Unknown::ct_mark`].
    pub ct_mark: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub ct_state: Option<CtState>,
    /// Status bits (`IPS_*`) the packet's connection is known not to have, beyond what the
    /// ruleset alone tells (see [`crate::nat`]): for a new connection `explain` describes,
    /// that no nat rule translates it ([`crate::eval::nat_binding`]).
    pub ct_status_clear: u32,
    /// Status bits the packet's connection is known to have: for a new connection
    /// `explain` follows through a DNAT, `IPS_DST_NAT`.
    pub ct_status_set: u32,
    /// Whether the route back to `src` leaves by `iif` ([`crate::Condition::ReversePath`]),
    /// as `explain` looked it up in the namespace; `None`: not known.
    pub reverse_path: Option<bool>,
    /// Length of the IP packet (header included).
    pub len: u32,
    /// What rules earlier on the packet's way wrote to xt_recent lists (`--set`,
    /// `--update`, `--remove`), which later `-m recent` tests see.
    pub recent_writes: Vec<crate::recent::RecentWrite>,
    /// Fields whose `None` means "not known" rather than "absent".
    pub unknown: Unknown,
}

impl Packet {
    /// A packet of which only the family is known: unspecified addresses, no ports, no
    /// flags, no state, and every field that can be unknown marked so. The builders (a
    /// captured drop, an aggregate beyond the flow table, a connection attempt, a flow
    /// described by hand) start here and set what they know: a new match field is added
    /// here once, unknown, and filled where it is known.
    pub fn unknown(family: Family) -> Packet {
        let unspecified = match family {
            Family::Ipv4 => IpAddr::from([0u8; 4]),
            Family::Ipv6 => IpAddr::from([0u16; 8]),
        };
        Packet {
            family,
            proto: 0,
            src: unspecified,
            dst: unspecified,
            sport: None,
            dport: None,
            tcp_flags: None,
            icmp_type: None,
            icmp_code: None,
            iif: None,
            oif: None,
            mark: 0,
            ct_mark: 0,
            uid: None,
            gid: None,
            ct_state: None,
            ct_status_clear: 0,
            ct_status_set: 0,
            reverse_path: None,
            len: 0,
            recent_writes: Vec::new(),
            unknown: Unknown::ALL,
        }
    }

    /// The first packet of a flow as someone describes it rather than as captured
    /// (`droptrace explain`, a proposed ruleset audited against an inventory): a SYN for a
    /// new TCP connection (an ACK otherwise), an echo request for ICMP, 60 bytes, no mark.
    /// The interfaces and the socket owner that the `hook` would see are marked unknown
    /// until the caller fills them in; an unspecified source is `0.0.0.0` / `::`.
    pub fn first_of_flow(
        proto: u8,
        src: Option<IpAddr>,
        dst: IpAddr,
        sport: u16,
        dport: Option<u16>,
        ct_state: CtState,
        hook: Hook,
    ) -> Result<Packet, FlowError> {
        let v6 = dst.is_ipv6();
        let family = if v6 { Family::Ipv6 } else { Family::Ipv4 };
        let src = match src {
            Some(s) if s.is_ipv6() != v6 => return Err(FlowError::MixedFamilies),
            Some(s) => s,
            None => Packet::unknown(family).src,
        };
        let ports = crate::names::has_ports(proto);
        match (ports, dport) {
            (true, None) => return Err(FlowError::NoPort),
            (false, Some(_)) => return Err(FlowError::PortlessProtocol),
            _ => {}
        }
        let icmp = tracer_common::netfilter::ipproto::is_icmp(proto);
        let (has_iif, has_oif, has_socket) = match hook {
            Hook::Prerouting | Hook::Input => (true, false, false),
            Hook::Forward => (true, true, false),
            Hook::Output | Hook::Postrouting => (false, true, true),
            // netdev hooks: a device, never a socket.
            Hook::Ingress => (true, false, false),
            Hook::Egress => (false, true, false),
        };
        Ok(Packet {
            proto,
            src,
            dst,
            sport: ports.then_some(sport),
            dport,
            tcp_flags: (proto == 6).then_some(if ct_state == CtState::New { 0x02 } else { 0x10 }),
            icmp_type: icmp.then_some(if v6 { 128 } else { 8 }),
            icmp_code: icmp.then_some(0),
            ct_state: Some(ct_state),
            len: 60,
            unknown: Unknown {
                iif: has_iif,
                oif: has_oif,
                uid: has_socket,
                gid: has_socket,
                ct_mark: ct_state != CtState::New,
                ..Unknown::NONE
            },
            ..Packet::unknown(family)
        })
    }
}

/// Why a described flow is not a packet ([`Packet::first_of_flow`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("the source and destination are of different families")]
    MixedFamilies,
    #[error("the protocol needs a destination port")]
    NoPort,
    #[error("the protocol has no ports")]
    PortlessProtocol,
}

/// Which of a [`Packet`]'s optional fields are not known to the caller: a
/// packet described by hand (`droptrace explain`) or a socket whose owner
/// could not be read. Rules on them are undecidable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Unknown {
    pub iif: bool,
    pub oif: bool,
    pub uid: bool,
    pub gid: bool,
    /// The packet stands for drops counted together (droptrace's aggregates, beyond its
    /// flow table): its addresses, source port, mark and length are not known, only its
    /// protocol, destination port, TCP flags and conntrack state.
    pub per_flow: bool,
    /// A rule on the packet's way set its mark from what droptrace does not read (see
    /// [`crate::model::MarkSet::Unknown`]).
    pub mark: bool,
    /// The connection's mark is not known: not reported, or set by a rule from what
    /// droptrace does not read. A new connection's starts at 0 (`init_conntrack`,
    /// net/netfilter/nf_conntrack_core.c, copies a mark only from an expectation's
    /// master, and such a connection is RELATED).
    pub ct_mark: bool,
}

impl Unknown {
    /// Nothing known: rules on any of these fields are undecidable.
    pub const ALL: Unknown = Unknown {
        iif: true,
        oif: true,
        uid: true,
        gid: true,
        per_flow: true,
        mark: true,
        ct_mark: true,
    };
    /// Everything known: a `None` field is absent, as netfilter sees it.
    pub const NONE: Unknown = Unknown {
        iif: false,
        oif: false,
        uid: false,
        gid: false,
        per_flow: false,
        mark: false,
        ct_mark: false,
    };
}

/// An inclusive range of numbers; a single value has `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ValueRange {
    pub first: u32,
    pub last: u32,
}

impl ValueRange {
    pub fn single(value: u32) -> ValueRange {
        ValueRange {
            first: value,
            last: value,
        }
    }

    pub fn contains(self, value: u32) -> bool {
        self.first <= value && value <= self.last
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Source,
    Destination,
}
