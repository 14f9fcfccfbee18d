//! The netfilter and packet vocabulary, defined once: the eBPF programs, the rule engine
//! (`ruleset`) and the CLI all name hooks, families, engines, conntrack states and
//! protocols with these, so a new term is added in one place and means one thing.
//!
//! `no_std` like the rest of the crate; `serde` (feature `serde`) gives the names JSON
//! uses, which are part of droptrace's output schema (docs/output.md).

use core::fmt;

/// Layer-4 protocol numbers (include/uapi/linux/in.h, in6.h).
pub mod ipproto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const DCCP: u8 = 33;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
    pub const UDPLITE: u8 = 136;

    /// ICMP or ICMPv6: the "port" of their flows is the type and code
    /// ([`super::icmp_port`]).
    #[inline(always)]
    pub const fn is_icmp(proto: u8) -> bool {
        matches!(proto, ICMP | ICMPV6)
    }

    /// Protocols whose header starts with 16-bit source and destination ports: TCP, UDP,
    /// DCCP, SCTP and UDP-Lite. The one list the eBPF parser, the record decoder and the
    /// rule engine share.
    #[inline(always)]
    pub const fn has_ports(proto: u8) -> bool {
        matches!(proto, TCP | UDP | DCCP | SCTP | UDPLITE)
    }
}

/// An ICMP type and code kept where a flow keeps a port: `type << 8 | code`. Flows,
/// aggregates and inventories key ICMP this way, so an echo request and a destination
/// unreachable are different flows.
#[inline(always)]
pub const fn icmp_port(icmp_type: u8, code: u8) -> u16 {
    (icmp_type as u16) << 8 | code as u16
}

/// The ICMP type and code a port made by [`icmp_port`] holds.
#[inline(always)]
pub const fn icmp_of_port(port: u16) -> (u8, u8) {
    ((port >> 8) as u8, port as u8)
}

/// An address as the programs record it (16 bytes; IPv4 in the first 4), read for its
/// family.
pub fn ip_addr(family: u8, a: &[u8; 16]) -> core::net::IpAddr {
    if family == crate::AF_INET6 {
        core::net::IpAddr::V6(core::net::Ipv6Addr::from(*a))
    } else {
        core::net::IpAddr::V4(core::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    }
}

/// Layer-3 family of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// The family of an address family number ([`crate::AF_INET`], [`crate::AF_INET6`]).
    pub const fn of_af(af: u8) -> Family {
        if af == crate::AF_INET6 {
            Family::Ipv6
        } else {
            Family::Ipv4
        }
    }
}

/// A netfilter hook, named as iptables names its built-in chains. The five routed hooks
/// are what the rule engine evaluates; `Ingress` and `Egress` (netdev) only the kernel
/// reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "UPPERCASE"))]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
    Ingress,
    Egress,
}

impl Hook {
    /// The five hooks a routed packet can traverse, in no particular order.
    pub const ROUTED: [Hook; 5] = [
        Hook::Prerouting,
        Hook::Input,
        Hook::Forward,
        Hook::Output,
        Hook::Postrouting,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Hook::Prerouting => "PREROUTING",
            Hook::Input => "INPUT",
            Hook::Forward => "FORWARD",
            Hook::Output => "OUTPUT",
            Hook::Postrouting => "POSTROUTING",
            Hook::Ingress => "INGRESS",
            Hook::Egress => "EGRESS",
        }
    }

    /// Whether a routed packet traverses it (not the netdev hooks).
    pub const fn is_routed(self) -> bool {
        !matches!(self, Hook::Ingress | Hook::Egress)
    }

    /// The hook of an iptables built-in chain (`PREROUTING`, `INPUT`, ...).
    pub fn from_iptables_chain(name: &str) -> Option<Hook> {
        Hook::ROUTED.into_iter().find(|h| h.as_str() == name)
    }

    /// The routed hook an nftables base chain names (`prerouting`, `input`, ...).
    pub fn from_nft(name: &str) -> Option<Hook> {
        Hook::ROUTED
            .into_iter()
            .find(|h| h.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The family of a table. iptables tables are `ip` or `ip6`; nftables adds `inet`
/// (both), and `bridge`, `arp`, `netdev`, which never see the routed hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum TableFamily {
    Ip,
    Ip6,
    Inet,
    Bridge,
    Arp,
    Netdev,
}

impl TableFamily {
    const ALL: [TableFamily; 6] = [
        TableFamily::Ip,
        TableFamily::Ip6,
        TableFamily::Inet,
        TableFamily::Bridge,
        TableFamily::Arp,
        TableFamily::Netdev,
    ];

    /// The table family that iptables (`ip`) or ip6tables (`ip6`) uses.
    pub const fn of(family: Family) -> TableFamily {
        match family {
            Family::Ipv4 => TableFamily::Ip,
            Family::Ipv6 => TableFamily::Ip6,
        }
    }

    /// As `nft` writes it: `ip`, `ip6`, `inet`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            TableFamily::Ip => "ip",
            TableFamily::Ip6 => "ip6",
            TableFamily::Inet => "inet",
            TableFamily::Bridge => "bridge",
            TableFamily::Arp => "arp",
            TableFamily::Netdev => "netdev",
        }
    }

    /// Parses the nftables spelling (`ip`, `ip6`, `inet`, ...).
    pub fn from_nft(name: &str) -> Option<TableFamily> {
        TableFamily::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// The family of an `NFPROTO_*` number (include/uapi/linux/netfilter.h).
    pub const fn from_nfproto(nfproto: u8) -> Option<TableFamily> {
        Some(match nfproto {
            1 => TableFamily::Inet,
            2 => TableFamily::Ip,
            3 => TableFamily::Arp,
            5 => TableFamily::Netdev,
            7 => TableFamily::Bridge,
            10 => TableFamily::Ip6,
            _ => return None,
        })
    }

    /// Whether packets of `family` traverse this table's base chains.
    pub const fn sees(self, family: Family) -> bool {
        matches!(
            (self, family),
            (TableFamily::Ip, Family::Ipv4)
                | (TableFamily::Ip6, Family::Ipv6)
                | (TableFamily::Inet, _)
        )
    }
}

impl fmt::Display for TableFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kernel engine whose verdict dropped a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Engine {
    /// nf_tables: native nft and iptables-nft.
    NfTables,
    /// Legacy x_tables: iptables-legacy, ip6tables-legacy.
    Xtables,
}

impl Engine {
    pub const fn as_str(self) -> &'static str {
        match self {
            Engine::NfTables => "nftables",
            Engine::Xtables => "xtables",
        }
    }

    /// The tools whose tables run in this engine.
    pub const fn backends(self) -> &'static [Backend] {
        match self {
            Engine::NfTables => &[Backend::IptablesNft, Backend::Nftables],
            Engine::Xtables => &[Backend::IptablesLegacy],
        }
    }
}

/// Which tool manages a table. It decides how rules are identified across snapshots
/// (position for iptables, handle for nftables).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum Backend {
    /// `iptables` 1.8+ in nf_tables mode: iptables syntax, nf_tables engine.
    IptablesNft,
    /// `iptables-legacy`: the x_tables engine.
    IptablesLegacy,
    /// Native nftables (`nft`).
    Nftables,
}

impl Backend {
    /// Every backend: what a packet meets when it goes through a hook, both engines'
    /// base chains in priority order.
    pub const ALL: [Backend; 3] = [
        Backend::IptablesNft,
        Backend::IptablesLegacy,
        Backend::Nftables,
    ];

    /// As droptrace's output names it: `iptables-nft`, `iptables-legacy`, `nftables`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Backend::IptablesNft => "iptables-nft",
            Backend::IptablesLegacy => "iptables-legacy",
            Backend::Nftables => "nftables",
        }
    }

    /// The engine its tables run in.
    pub const fn engine(self) -> Engine {
        match self {
            Backend::IptablesLegacy => Engine::Xtables,
            Backend::IptablesNft | Backend::Nftables => Engine::NfTables,
        }
    }
}

/// Connection-tracking state as rules match it (`-m conntrack --ctstate`, `ct state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum CtState {
    New,
    Established,
    Related,
    Invalid,
    Untracked,
}

impl CtState {
    /// As rules and droptrace's output write it: `new`, `established`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            CtState::New => "new",
            CtState::Established => "established",
            CtState::Related => "related",
            CtState::Invalid => "invalid",
            CtState::Untracked => "untracked",
        }
    }

    /// The state's bit in nftables' `ct state` bitmask (iptables state lists are
    /// evaluated the same way).
    pub const fn bit(self) -> u32 {
        match self {
            CtState::Invalid => 1,
            CtState::Established => 2,
            CtState::Related => 4,
            CtState::New => 8,
            CtState::Untracked => 64,
        }
    }
}

/// A packet's conntrack entry as the kernel attached it: `enum ip_conntrack_info`
/// (include/uapi/linux/netfilter/nf_conntrack_common.h) as the programs record it, or
/// [`crate::CT_NONE`] when the packet had none. Decoded here only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtInfo(pub u8);

impl CtInfo {
    pub const ESTABLISHED: CtInfo = CtInfo(0);
    pub const RELATED: CtInfo = CtInfo(1);
    pub const NEW: CtInfo = CtInfo(2);
    pub const ESTABLISHED_REPLY: CtInfo = CtInfo(3);
    pub const RELATED_REPLY: CtInfo = CtInfo(4);
    /// No conntrack entry (conntrack not in use, or the packet untracked or invalid).
    pub const NONE: CtInfo = CtInfo(crate::CT_NONE);

    /// The state, `None` without an entry. `IP_CT_ESTABLISHED` 0, `IP_CT_RELATED` 1,
    /// `IP_CT_NEW` 2, and their replies (`+ IP_CT_IS_REPLY`, 3) 3 and 4.
    pub const fn state(self) -> Option<CtState> {
        match self.0 {
            0 | 3 => Some(CtState::Established),
            1 | 4 => Some(CtState::Related),
            2 => Some(CtState::New),
            _ => None,
        }
    }

    /// In the reply direction of its connection.
    pub const fn is_reply(self) -> bool {
        matches!(self.0, 3 | 4)
    }

    /// The state a rule matches: a packet without an entry is what `--ctstate INVALID`
    /// and `ct state invalid` match.
    pub const fn rule_state(self) -> CtState {
        match self.state() {
            Some(s) => s,
            None => CtState::Invalid,
        }
    }

    /// The name droptrace's output uses: `new`, `established`, `related`,
    /// `established_reply`, `related_reply`, or `none`.
    pub const fn as_str(self) -> &'static str {
        match (self.state(), self.is_reply()) {
            (Some(CtState::New), _) => "new",
            (Some(CtState::Established), false) => "established",
            (Some(CtState::Established), true) => "established_reply",
            (Some(CtState::Related), false) => "related",
            (Some(CtState::Related), true) => "related_reply",
            _ => "none",
        }
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for CtInfo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for h in Hook::ROUTED {
            assert_eq!(Hook::from_iptables_chain(h.as_str()), Some(h));
        }
        assert_eq!(Hook::from_nft("output"), Some(Hook::Output));
        assert_eq!(Hook::from_nft("ingress"), None, "not a routed hook");
        for f in TableFamily::ALL {
            assert_eq!(TableFamily::from_nft(f.as_str()), Some(f));
        }
        assert_eq!(icmp_of_port(icmp_port(3, 13)), (3, 13));
    }

    #[test]
    fn ct_info_decodes_state_and_direction() {
        let names = [0, 1, 2, 3, 4, 7, crate::CT_NONE].map(|i| CtInfo(i).as_str());
        assert_eq!(
            names,
            [
                "established",
                "related",
                "new",
                "established_reply",
                "related_reply",
                "none",
                "none"
            ]
        );
        assert_eq!(CtInfo::NONE.rule_state(), CtState::Invalid);
        assert_eq!(CtInfo(3).rule_state(), CtState::Established);
    }
}
