//! The user's filters, parsed from the command line and applied in the kernel.
//!
//! Everything here becomes part of the program's [`Config`], so that drops the user did
//! not ask for never reach the ring buffer. Parsing is strict: a filter that does not
//! parse is an error, never a silently wider capture.

use std::{net::IpAddr, str::FromStr};

use ipnet::IpNet;
use tracer_common::{AF_INET, AF_INET6, Config, PortRange, Prefix};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("invalid protocol {0:?}: expected tcp, udp, icmp, icmpv6, sctp or a number 1-255")]
    Proto(String),
    #[error("invalid address {0:?}: expected an IP address or CIDR such as 203.0.113.0/24")]
    Address(String),
    #[error("invalid port {0:?}: expected a port (8443) or an inclusive range (1024-65535)")]
    Port(String),
    #[error("--src is IPv{0} but --dst is IPv{1}: no packet can match both")]
    FamilyConflict(u8, u8),
    #[error(
        "--{0} needs a protocol with ports (tcp, udp, sctp, dccp, udplite), not {1}: no packet can match both"
    )]
    PortWithoutPorts(&'static str, String),
}

/// An IP protocol given by name or number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proto(pub u8);

impl FromStr for Proto {
    type Err = FilterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The rule engine's table: the names iptables and nft accept.
        match ruleset::names::protocol(s) {
            Some(n) if n > 0 => Ok(Proto(n)),
            _ => Err(FilterError::Proto(s.to_string())),
        }
    }
}

/// Name of an IP protocol number, as used in output.
pub fn proto_name(n: u8) -> String {
    ruleset::names::protocol_name(n).map_or_else(|| n.to_string(), str::to_string)
}

/// An address or CIDR prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub IpNet);

impl FromStr for Cidr {
    type Err = FilterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || FilterError::Address(s.to_string());
        if s.contains('/') {
            let net: IpNet = s.parse().map_err(|_| err())?;
            Ok(Cidr(net.trunc()))
        } else {
            let addr: IpAddr = s.parse().map_err(|_| err())?;
            Ok(Cidr(IpNet::from(addr)))
        }
    }
}

impl Cidr {
    pub fn family(&self) -> u8 {
        match self.0 {
            IpNet::V4(_) => AF_INET,
            IpNet::V6(_) => AF_INET6,
        }
    }

    pub fn contains(&self, addr: &IpAddr) -> bool {
        self.0.contains(addr)
    }

    fn to_prefix(self) -> Prefix {
        let mut addr = [0u8; 16];
        match self.0 {
            IpNet::V4(n) => addr[..4].copy_from_slice(&n.network().octets()),
            IpNet::V6(n) => addr.copy_from_slice(&n.network().octets()),
        }
        let mut mask = [0u8; 16];
        match self.0 {
            IpNet::V4(n) => mask[..4].copy_from_slice(&n.netmask().octets()),
            IpNet::V6(n) => mask.copy_from_slice(&n.netmask().octets()),
        }
        Prefix {
            family: self.family(),
            len: self.0.prefix_len(),
            negate: 0,
            _pad: [0; 5],
            addr: Prefix::words(&addr),
            mask: Prefix::words(&mask),
        }
    }
}

/// A port or an inclusive range: `8443`, `1024-65535` or `1024:65535` (iptables style).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub lo: u16,
    pub hi: u16,
}

impl FromStr for Ports {
    type Err = FilterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || FilterError::Port(s.to_string());
        let port = |p: &str| p.trim().parse::<u16>().map_err(|_| err());
        let (lo, hi) = match s.split_once(['-', ':']) {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(err());
        }
        Ok(Ports { lo, hi })
    }
}

impl Ports {
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

/// Filters applied to every drop, in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// Network namespace inode; `None` for all namespaces.
    pub netns: Option<u32>,
    pub proto: Option<Proto>,
    pub src: Option<Cidr>,
    pub dst: Option<Cidr>,
    pub sport: Option<Ports>,
    pub dport: Option<Ports>,
}

impl Filters {
    /// Checks that the filters can match anything at all.
    pub fn validate(&self) -> Result<(), FilterError> {
        if let (Some(s), Some(d)) = (self.src, self.dst)
            && s.family() != d.family()
        {
            let v = |f| if f == AF_INET { 4 } else { 6 };
            return Err(FilterError::FamilyConflict(v(s.family()), v(d.family())));
        }
        if let Some(p) = self.proto
            && !tracer_common::has_ports(p.0)
        {
            for (flag, set) in [
                ("sport", self.sport.is_some()),
                ("dport", self.dport.is_some()),
            ] {
                if set {
                    return Err(FilterError::PortWithoutPorts(flag, proto_name(p.0)));
                }
            }
        }
        Ok(())
    }

    /// Whether a packet passes the packet filters (not the namespace), as the kernel
    /// applies them: for captures that must see more than the filters let through (verify
    /// watches its probes' own packets whatever the filters say). A port filter does not
    /// pass a packet without ports.
    pub fn admits(
        &self,
        proto: u8,
        src: IpAddr,
        dst: IpAddr,
        sport: Option<u16>,
        dport: Option<u16>,
    ) -> bool {
        let port =
            |f: Option<Ports>, p: Option<u16>| f.is_none_or(|f| p.is_some_and(|p| f.contains(p)));
        self.proto.is_none_or(|p| p.0 == proto)
            && self.src.is_none_or(|c| c.contains(&src))
            && self.dst.is_none_or(|c| c.contains(&dst))
            && port(self.sport, sport)
            && port(self.dport, dport)
    }

    /// Writes the filters into the program configuration.
    pub fn apply(&self, cfg: &mut Config) {
        cfg.netns = self.netns.unwrap_or(0);
        cfg.proto = self.proto.map_or(0, |p| p.0);
        cfg.family = self.src.or(self.dst).map_or(0, |c| c.family());
        cfg.src = self.src.map_or(Prefix::ANY, Cidr::to_prefix);
        cfg.dst = self.dst.map_or(Prefix::ANY, Cidr::to_prefix);
        let range =
            |p: Option<Ports>| p.map_or(PortRange::ANY, |p| PortRange { lo: p.lo, hi: p.hi });
        cfg.sport = range(self.sport);
        cfg.dport = range(self.dport);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_applies_every_packet_filter() {
        let f = Filters {
            proto: Some(Proto(6)),
            dst: Some("203.0.113.0/24".parse().unwrap()),
            dport: Some("22".parse().unwrap()),
            ..Filters::default()
        };
        let (src, dst) = (
            "198.51.100.2".parse().unwrap(),
            "203.0.113.10".parse().unwrap(),
        );
        assert!(f.admits(6, src, dst, Some(40000), Some(22)));
        assert!(!f.admits(6, src, dst, Some(40000), Some(7000)));
        assert!(!f.admits(17, src, dst, Some(40000), Some(22)));
        assert!(!f.admits(6, src, src, Some(40000), Some(22)));
        assert!(!f.admits(1, src, dst, None, None));
        assert!(Filters::default().admits(1, src, dst, None, None));
    }

    #[test]
    fn protocols_by_name_and_number() {
        assert_eq!("tcp".parse(), Ok(Proto(6)));
        assert_eq!("UDP".parse(), Ok(Proto(17)));
        assert_eq!("icmpv6".parse(), Ok(Proto(58)));
        assert_eq!("47".parse(), Ok(Proto(47)));
        assert!("0".parse::<Proto>().is_err());
        assert!("tcpp".parse::<Proto>().is_err());
        assert!("256".parse::<Proto>().is_err());
    }

    #[test]
    fn ports_and_ranges() {
        assert_eq!("8443".parse(), Ok(Ports { lo: 8443, hi: 8443 }));
        assert_eq!(
            "1024-65535".parse(),
            Ok(Ports {
                lo: 1024,
                hi: 65535
            })
        );
        assert_eq!(
            "1024:65535".parse(),
            Ok(Ports {
                lo: 1024,
                hi: 65535
            })
        );
        assert!("65536".parse::<Ports>().is_err());
        assert!("9-1".parse::<Ports>().is_err());
        assert!("".parse::<Ports>().is_err());
        assert!("a-b".parse::<Ports>().is_err());
    }

    #[test]
    fn addresses_and_prefixes() {
        let c: Cidr = "203.0.113.10".parse().unwrap();
        assert_eq!(c.0.prefix_len(), 32);
        let c: Cidr = "203.0.113.77/24".parse().unwrap();
        assert_eq!(c.0.to_string(), "203.0.113.0/24");
        assert!(c.contains(&"203.0.113.10".parse().unwrap()));
        let c: Cidr = "2001:db8::/32".parse().unwrap();
        assert_eq!(c.family(), AF_INET6);
        assert!("203.0.113.0/33".parse::<Cidr>().is_err());
        assert!("gateway".parse::<Cidr>().is_err());
    }

    #[test]
    fn filters_fill_the_kernel_config() {
        let f = Filters {
            netns: Some(4026532000),
            proto: Some(Proto(6)),
            dst: Some("203.0.113.0/24".parse().unwrap()),
            dport: Some("8443".parse().unwrap()),
            ..Default::default()
        };
        let mut cfg = Config::EMPTY;
        f.apply(&mut cfg);
        assert_eq!(cfg.netns, 4026532000);
        assert_eq!(cfg.proto, 6);
        assert_eq!(cfg.family, AF_INET);
        assert_eq!(cfg.dst.len, 24);
        assert_eq!(
            cfg.dst.addr,
            Prefix::words(&[203, 0, 113, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        );
        assert_eq!(
            cfg.dst.mask,
            Prefix::words(&[255, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        );
        assert_eq!(cfg.dport, PortRange { lo: 8443, hi: 8443 });
        assert_eq!(cfg.sport, PortRange::ANY);
        assert_eq!(cfg.src, Prefix::ANY);
    }

    #[test]
    fn conflicting_families_are_refused() {
        let f = Filters {
            src: Some("10.0.0.1".parse().unwrap()),
            dst: Some("2001:db8::1".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(f.validate(), Err(FilterError::FamilyConflict(4, 6)));
    }
}
