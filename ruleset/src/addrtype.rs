//! Address types (`-m addrtype`, nft `fib ... type`), decided from the namespace's `local`
//! routing table.
//!
//! ufw returns local destinations early with `-m addrtype --dst-type LOCAL`, kube-proxy
//! matches NodePorts with it, firewalld and Debian's examples use `fib daddr type local`.
//! Left undecided, these send attribution down the wrong branch, so they are decided from
//! the same table the kernel asks:
//!
//! - IPv4 (xt_addrtype and nft_fib4 both call `inet_dev_addr_type()`,
//!   net/ipv4/fib_frontend.c): 0.0.0.0 and 255.255.255.255 are `BROADCAST`, 224.0.0.0/4
//!   `MULTICAST`, otherwise the longest match in the `local` table gives the type and an
//!   address it has no route for is `UNICAST`. With an interface (`--limit-iface-in`,
//!   `fib daddr . iif`), a route through another device also counts as `UNICAST`.
//! - IPv6 (xt_addrtype.c `addrtype_mt6`, nft_fib_ipv6.c): the kernel does a full route
//!   lookup. The `local` table settles local and anycast addresses; for any other address
//!   only "not local" is known, so tests of `UNREACHABLE`, `BLACKHOLE`, ... stay undecided.
//!
//! The table is read with `ip -j route show table local` (one call per family) at the same
//! time as the ruleset. VRFs (l3mdev tables) are not followed.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

/// The kernel's route types (`RTN_*`, include/uapi/linux/rtnetlink.h), in their order: an
/// address type test is a bit mask of `1 << type` (include/uapi/linux/netfilter/xt_addrtype.h).
const NAMES: [&str; 12] = [
    "unspec",
    "unicast",
    "local",
    "broadcast",
    "anycast",
    "multicast",
    "blackhole",
    "unreachable",
    "prohibit",
    "throw",
    "nat",
    "xresolve",
];

const UNSPEC: u16 = 1 << 0;
const UNICAST: u16 = 1 << 1;
const LOCAL: u16 = 1 << 2;
const BROADCAST: u16 = 1 << 3;
const ANYCAST: u16 = 1 << 4;
const MULTICAST: u16 = 1 << 5;
const UNREACHABLE: u16 = 1 << 7;
/// The types an IPv6 address outside the local table may have after a route lookup.
const V6_ROUTED: u16 = UNICAST | (1 << 6) | UNREACHABLE | (1 << 8) | (1 << 9);

/// A set of address types, as a mask of `1 << RTN_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AddrTypes(pub u16);

impl AddrTypes {
    /// `LOCAL,BROADCAST` (iptables) or `local` (nft): names are case-insensitive.
    pub fn parse_list(text: &str) -> Result<AddrTypes, String> {
        let mut mask = 0;
        for name in text.split(',') {
            mask |= AddrTypes::parse(name.trim())?.0;
        }
        Ok(AddrTypes(mask))
    }

    pub fn parse(name: &str) -> Result<AddrTypes, String> {
        let lower = name.to_ascii_lowercase();
        NAMES
            .iter()
            .position(|n| *n == lower)
            .map(|i| AddrTypes(1 << i))
            .ok_or_else(|| format!("unknown address type {name:?}"))
    }
}

impl std::fmt::Display for AddrTypes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect();
        f.write_str(&names.join(","))
    }
}

/// Whose semantics an address type test has: they differ for IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Matcher {
    /// `-m addrtype`.
    Xt,
    /// nft `fib ... type`.
    Fib,
}

/// One route of the `local` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalRoute {
    pub dst: IpNet,
    /// Index into the type names (`RTN_*`).
    pub kind: u8,
    pub dev: Option<String>,
}

/// A namespace's `local` routing table, both families.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LocalTable {
    pub routes: Vec<LocalRoute>,
}

impl LocalTable {
    /// The table of one `ip -j route show table local` listing.
    pub fn from_ip_json(text: &str) -> Result<LocalTable, String> {
        let mut table = LocalTable::default();
        table.add_ip_json(text)?;
        Ok(table)
    }

    /// Adds the routes of one `ip -j route show table local` listing.
    pub fn add_ip_json(&mut self, text: &str) -> Result<(), String> {
        let listed: Vec<serde_json::Value> = serde_json::from_str(text.trim_start())
            .map_err(|e| format!("ip -j route: not JSON ({e})"))?;
        for route in listed {
            let Some(dst) = route.get("dst").and_then(|d| d.as_str()) else {
                continue;
            };
            let dst = match dst.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match dst.parse::<IpAddr>() {
                    Ok(addr) => IpNet::from(addr),
                    // "default" and the like do not occur in the local table.
                    Err(_) => continue,
                },
            };
            let kind = route
                .get("type")
                .and_then(|t| t.as_str())
                .unwrap_or("unicast");
            let kind = AddrTypes::parse(kind)?.0.trailing_zeros() as u8;
            let dev = route.get("dev").and_then(|d| d.as_str()).map(String::from);
            self.routes.push(LocalRoute { dst, kind, dev });
        }
        Ok(())
    }

    /// The longest-prefix route covering `addr`.
    fn lookup(&self, addr: IpAddr) -> Option<&LocalRoute> {
        self.routes
            .iter()
            .filter(|r| r.dst.contains(&addr))
            .max_by_key(|r| r.dst.prefix_len())
    }

    /// Whether the table says `addr` is one of the namespace's own addresses.
    pub fn is_local(&self, addr: IpAddr) -> bool {
        self.possible_types(addr, None, Matcher::Fib) == LOCAL
    }

    /// The types `addr` may have as seen through `dev` (None: any device). One bit when the
    /// table decides it; several when only a route lookup beyond the table could tell.
    pub fn possible_types(&self, addr: IpAddr, dev: Option<&str>, matcher: Matcher) -> u16 {
        let through = |r: &LocalRoute| dev.is_none() || r.dev.as_deref() == dev;
        match addr {
            IpAddr::V4(v4) => {
                if v4.is_unspecified() || v4.is_broadcast() {
                    BROADCAST
                } else if v4.is_multicast() {
                    MULTICAST
                } else {
                    match self.lookup(addr) {
                        Some(r) if through(r) => 1 << r.kind,
                        _ => UNICAST,
                    }
                }
            }
            IpAddr::V6(v6) => {
                if v6.is_multicast() && matcher == Matcher::Xt {
                    return MULTICAST;
                }
                match self.lookup(addr) {
                    Some(r) if r.kind == 2 && through(r) => LOCAL,
                    Some(r) if r.kind == 4 => ANYCAST,
                    _ if v6.is_unspecified() => UNSPEC | V6_ROUTED,
                    _ => V6_ROUTED | if v6.is_multicast() { MULTICAST } else { 0 },
                }
            }
        }
    }
}

/// Whether an address of `possible` types passes a test for `wanted`: `Some` when decided.
pub fn test(wanted: AddrTypes, addr: IpAddr, possible: u16, matcher: Matcher) -> Option<bool> {
    let wanted = wanted.0;
    if let (IpAddr::V6(v6), Matcher::Xt) = (addr, matcher) {
        // addrtype_mt6: multicast, unicast and unspec are told from the address itself;
        // only local, anycast and unreachable need the route.
        if wanted & MULTICAST != 0 && v6.is_multicast() {
            return Some(true);
        }
        if wanted & UNICAST != 0 && (v6.is_multicast() || v6.is_unspecified()) {
            return Some(false);
        }
        if wanted & UNSPEC != 0 && !v6.is_unspecified() {
            return Some(false);
        }
        let routed = LOCAL | ANYCAST | UNREACHABLE;
        if wanted & routed == 0 {
            return Some(true);
        }
        let possible = possible & routed;
        let hits = wanted & possible;
        // A route lookup that found no local or anycast route may still fail.
        let maybe_unreachable = possible & (LOCAL | ANYCAST) == 0;
        return match (hits != 0, maybe_unreachable && wanted & UNREACHABLE != 0) {
            (_, true) => None,
            (hit, false) => Some(hit),
        };
    }
    if possible & wanted == 0 {
        Some(false)
    } else if possible & !wanted == 0 {
        Some(true)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> LocalTable {
        let mut t = LocalTable::default();
        t.add_ip_json(
            r#"[{"type":"local","dst":"127.0.0.0/8","dev":"lo"},
                {"type":"local","dst":"10.0.0.1","dev":"eth0"},
                {"type":"broadcast","dst":"10.0.0.255","dev":"eth0"}]"#,
        )
        .unwrap();
        t.add_ip_json(
            r#"[{"type":"local","dst":"::1","dev":"lo"},
                {"type":"local","dst":"fd00::1","dev":"eth0"},
                {"type":"anycast","dst":"fd00::","dev":"eth0"},
                {"type":"multicast","dst":"ff00::/8","dev":"eth0"}]"#,
        )
        .unwrap();
        t
    }

    fn decide(wanted: &str, addr: &str, dev: Option<&str>, matcher: Matcher) -> Option<bool> {
        let addr: IpAddr = addr.parse().unwrap();
        let possible = table().possible_types(addr, dev, matcher);
        test(
            AddrTypes::parse_list(wanted).unwrap(),
            addr,
            possible,
            matcher,
        )
    }

    #[test]
    fn ipv4_types_come_from_the_local_table() {
        for m in [Matcher::Xt, Matcher::Fib] {
            assert_eq!(decide("LOCAL", "10.0.0.1", None, m), Some(true));
            assert_eq!(decide("LOCAL", "127.0.0.53", None, m), Some(true));
            assert_eq!(decide("LOCAL", "10.0.0.2", None, m), Some(false));
            assert_eq!(decide("UNICAST", "10.0.0.2", None, m), Some(true));
            assert_eq!(decide("BROADCAST", "10.0.0.255", None, m), Some(true));
            assert_eq!(decide("BROADCAST", "255.255.255.255", None, m), Some(true));
            assert_eq!(decide("MULTICAST", "224.0.0.1", None, m), Some(true));
            assert_eq!(decide("LOCAL,BROADCAST", "10.0.0.255", None, m), Some(true));
        }
    }

    #[test]
    fn an_ipv4_route_through_another_device_is_unicast() {
        assert_eq!(
            decide("LOCAL", "10.0.0.1", Some("eth0"), Matcher::Xt),
            Some(true)
        );
        assert_eq!(
            decide("LOCAL", "10.0.0.1", Some("eth1"), Matcher::Xt),
            Some(false)
        );
        assert_eq!(
            decide("UNICAST", "10.0.0.1", Some("eth1"), Matcher::Fib),
            Some(true)
        );
    }

    #[test]
    fn ipv6_decides_local_and_leaves_route_failures_undecided() {
        assert_eq!(decide("LOCAL", "fd00::1", None, Matcher::Xt), Some(true));
        assert_eq!(decide("LOCAL", "fd00::9", None, Matcher::Xt), Some(false));
        assert_eq!(decide("local", "fd00::9", None, Matcher::Fib), Some(false));
        assert_eq!(decide("local", "fd00::1", None, Matcher::Fib), Some(true));
        assert_eq!(decide("UNREACHABLE", "fd00::9", None, Matcher::Xt), None);
        assert_eq!(decide("unicast", "fd00::9", None, Matcher::Fib), None);
        // addrtype_mt6 tells unicast and multicast from the address alone.
        assert_eq!(decide("UNICAST", "fd00::1", None, Matcher::Xt), Some(true));
        assert_eq!(
            decide("MULTICAST", "ff02::1", None, Matcher::Xt),
            Some(true)
        );
        assert_eq!(decide("ANYCAST", "fd00::", None, Matcher::Xt), Some(true));
    }

    #[test]
    fn names_round_trip_and_bad_names_are_errors() {
        assert_eq!(
            AddrTypes::parse_list("LOCAL,BROADCAST")
                .unwrap()
                .to_string(),
            "local,broadcast"
        );
        assert!(AddrTypes::parse_list("LOCALE").is_err());
        assert!(LocalTable::default().add_ip_json("not json").is_err());
    }
}
