//! xt_recent's address lists (`-m recent`), as /proc/net/xt_recent/NAME shows them, and
//! the test a rule makes of one (net/netfilter/xt_recent.c, `recent_mt`).
//!
//! ufw's `limit` is built on them: `--set` stamps the source address of every new
//! connection, `--update --seconds 30 --hitcount 6` matches once six stamps fall within the
//! last 30 seconds. Whether a packet sent now matches is decided from the list's stamps and
//! the kernel's clock (jiffies) read with it; a stamp within [`EDGE_SECONDS`] of the
//! window's edge can be in or out by the time the packet goes, and leaves it undecided.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::packet::Direction;

/// Every list of a namespace, read with the kernel's clock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RecentLists {
    /// The kernel's `jiffies` when the lists were read.
    pub now: u64,
    /// Its ticks per second (CONFIG_HZ).
    pub hz: u32,
    /// Entries by list name.
    pub lists: BTreeMap<String, Vec<RecentEntry>>,
}

/// One address of a list: its stamps (jiffies), oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecentEntry {
    /// The address as the list keeps it: masked with the rule's `--mask`.
    pub addr: IpAddr,
    pub ttl: u8,
    pub stamps: Vec<u64>,
}

/// What a `-m recent` match does (xt_recent's `check_set`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecentMode {
    /// `--set`: stamps the address; always matches.
    Set,
    /// `--rcheck`: matches when the address is listed (within the window, with the hits).
    Check,
    /// `--update`: as `--rcheck`, and stamps it when it matches.
    Update,
    /// `--remove`: matches when listed, and takes it off.
    Remove,
}

/// One `-m recent` match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecentTest {
    pub name: String,
    /// Whose address is looked up: the source's (`--rsource`, the default) or the
    /// destination's (`--rdest`).
    pub side: Direction,
    pub mode: RecentMode,
    /// `--seconds`: only stamps this recent count (0: any).
    pub seconds: u32,
    /// `--hitcount`: at least this many stamps (0: one).
    pub hit_count: u32,
    /// `--rttl`: the entry must have the packet's TTL, which droptrace does not know.
    pub ttl: bool,
    /// `--mask`, applied to the address before the lookup (`None`: all bits).
    pub mask: Option<IpAddr>,
}

/// What rules earlier on a packet's way did to a list: stamped an address, or took it off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecentWrite {
    pub name: String,
    pub addr: IpAddr,
    pub removed: bool,
}

/// A stamp this close to the window's edge may be in or out when the packet goes.
pub const EDGE_SECONDS: u64 = 1;

/// The entries of one list, from the text of /proc/net/xt_recent/NAME (`recent_seq_show`:
/// `src=ADDR ttl: T last_seen: J oldest_pkt: I J1, J2, ...`).
pub fn parse_list(text: &str) -> Result<Vec<RecentEntry>, String> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let bad = || format!("xt_recent line not understood: {line:?}");
            let rest = line.strip_prefix("src=").ok_or_else(bad)?;
            let (addr, rest) = rest.split_once(' ').ok_or_else(bad)?;
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            let rest = rest.strip_prefix("ttl: ").ok_or_else(bad)?;
            let (ttl, rest) = rest.split_once(' ').ok_or_else(bad)?;
            let ttl: u8 = ttl.parse().map_err(|_| bad())?;
            // The stamps follow `oldest_pkt: I`.
            let (_, rest) = rest.split_once("oldest_pkt: ").ok_or_else(bad)?;
            let mut words = rest.split_whitespace();
            words.next().ok_or_else(bad)?;
            let mut stamps: Vec<u64> = words
                .map(|w| w.trim_end_matches(',').parse().map_err(|_| bad()))
                .collect::<Result<_, _>>()?;
            // The kernel prints its ring from slot 0; the window test needs no order, but
            // readers do.
            stamps.sort_unstable();
            Ok(RecentEntry { addr, ttl, stamps })
        })
        .collect()
}

/// `addr` under `mask` (a mask of the other family leaves it as is).
fn masked(addr: IpAddr, mask: Option<IpAddr>) -> IpAddr {
    match (addr, mask) {
        (IpAddr::V4(a), Some(IpAddr::V4(m))) => {
            IpAddr::from(std::net::Ipv4Addr::from_bits(a.to_bits() & m.to_bits()))
        }
        (IpAddr::V6(a), Some(IpAddr::V6(m))) => {
            IpAddr::from(std::net::Ipv6Addr::from_bits(a.to_bits() & m.to_bits()))
        }
        _ => addr,
    }
}

/// What a test finds for a packet whose address on its `side` is `addr`, sent now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentFinding {
    /// Whether the match holds (before `!`).
    pub found: bool,
    /// What it does to the list when evaluated (xt_recent stamps on `--set`, and on an
    /// `--update` that holds; `--remove` takes the entry off).
    pub write: Option<RecentWrite>,
}

impl RecentTest {
    /// Decides the test for a packet with `addr` on its side, sent now, against `lists`
    /// and what earlier rules on its way wrote (`earlier`). `negated`: the rule's `!`,
    /// which `--update` looks at to decide whether to stamp. Why not, when it cannot.
    pub fn decide(
        &self,
        addr: IpAddr,
        negated: bool,
        lists: Option<&RecentLists>,
        earlier: &[RecentWrite],
    ) -> Result<RecentFinding, String> {
        if self.ttl {
            return Err("-m recent --rttl: the packet's TTL is not known".to_string());
        }
        let Some(lists) = lists else {
            return Err("-m recent: the lists were not read".to_string());
        };
        let Some(list) = lists.lists.get(&self.name) else {
            return Err(format!("-m recent: list {} was not found", self.name));
        };
        let addr = masked(addr, self.mask);
        let written: Vec<&RecentWrite> = earlier
            .iter()
            .filter(|w| w.name == self.name && w.addr == addr)
            .collect();
        // Taken off by an earlier rule: only what was stamped since counts.
        let removed = written.iter().rposition(|w| w.removed);
        let stamped_here = written[removed.map_or(0, |i| i + 1)..].len() as u64;
        let entry = list
            .iter()
            .find(|e| e.addr == addr)
            .filter(|_| removed.is_none());
        let listed = entry.is_some() || stamped_here > 0;
        let write = |removed| {
            Some(RecentWrite {
                name: self.name.clone(),
                addr,
                removed,
            })
        };
        let (found, write) = match self.mode {
            RecentMode::Set => (true, write(false)),
            _ if !listed => (false, None),
            RecentMode::Remove => (true, write(true)),
            RecentMode::Check | RecentMode::Update => {
                let found = self.hits_enough(entry, stamped_here, lists)?;
                let stamps = self.mode == RecentMode::Update && found != negated;
                (found, if stamps { write(false) } else { None })
            }
        };
        Ok(RecentFinding { found, write })
    }

    /// Whether the stamps within the window reach the hit count: the entry's, and
    /// `stamped_here` more at now.
    fn hits_enough(
        &self,
        entry: Option<&RecentEntry>,
        stamped_here: u64,
        lists: &RecentLists,
    ) -> Result<bool, String> {
        let need = u64::from(self.hit_count.max(1));
        let stamps = entry.map_or(&[][..], |e| e.stamps.as_slice());
        if self.seconds == 0 {
            return Ok((stamps.len() as u64).saturating_add(stamped_here) >= need);
        }
        let hz = u64::from(lists.hz);
        // Saturating: the stamps are text the kernel printed, not trusted to be sane.
        let start = lists
            .now
            .saturating_sub(u64::from(self.seconds).saturating_mul(hz));
        let edge = EDGE_SECONDS.saturating_mul(hz);
        // Surely in (well after the window's start), and possibly in.
        let surely = stamps
            .iter()
            .filter(|&&s| s >= start.saturating_add(edge))
            .count() as u64;
        let maybe = stamps
            .iter()
            .filter(|&&s| s.saturating_add(edge) >= start)
            .count() as u64;
        if surely.saturating_add(stamped_here) >= need {
            Ok(true)
        } else if maybe.saturating_add(stamped_here) < need {
            Ok(false)
        } else {
            Err(format!(
                "-m recent: a stamp of list {} is within {EDGE_SECONDS} s of the {}-second \
                 window's edge",
                self.name, self.seconds
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As /proc/net/xt_recent/DEFAULT printed it on 6.18 after three connections.
    const LISTED: &str = "src=198.51.100.2 ttl: 64 last_seen: 4295024622 oldest_pkt: 3 4295024122, 4295024372, 4295024622\n\
                          src=2001:db8::2 ttl: 63 last_seen: 4295000000 oldest_pkt: 1 4295000000\n";

    fn lists(now: u64) -> RecentLists {
        RecentLists {
            now,
            hz: 250,
            lists: BTreeMap::from([("DEFAULT".to_string(), parse_list(LISTED).unwrap())]),
        }
    }

    fn ufw_update() -> RecentTest {
        RecentTest {
            name: "DEFAULT".into(),
            side: Direction::Source,
            mode: RecentMode::Update,
            seconds: 30,
            hit_count: 6,
            ttl: false,
            mask: Some("255.255.255.255".parse().unwrap()),
        }
    }

    #[test]
    fn the_proc_listing_is_parsed() {
        let entries = parse_list(LISTED).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].addr, "198.51.100.2".parse::<IpAddr>().unwrap());
        assert_eq!(entries[0].ttl, 64);
        assert_eq!(entries[0].stamps, [4295024122, 4295024372, 4295024622]);
        assert_eq!(entries[1].stamps, [4295000000]);
        assert!(parse_list("garbage\n").is_err());
        assert_eq!(parse_list("").unwrap(), []);
    }

    /// ufw's limit: the packet's own `--set` stamp counts with the list's.
    #[test]
    fn hits_within_the_window_decide_and_the_edge_is_unsure() {
        let src: IpAddr = "198.51.100.2".parse().unwrap();
        let set = RecentWrite {
            name: "DEFAULT".into(),
            addr: src,
            removed: false,
        };
        let now = 4295024622 + 250;
        let test = ufw_update();
        // Three listed + one stamped here: four of six.
        let found = test
            .decide(src, false, Some(&lists(now)), std::slice::from_ref(&set))
            .unwrap();
        assert!(!found.found);
        assert_eq!(found.write, None);
        // Three more stamped on the way reach six, and the update stamps again.
        let three = vec![set.clone(), set.clone(), set.clone()];
        let found = test.decide(src, false, Some(&lists(now)), &three).unwrap();
        assert!(found.found);
        assert!(found.write.is_some());
        // Thirty seconds on, the oldest stamp is at the window's edge: unsure.
        let later = 4295024122 + 30 * 250;
        assert!(
            test.decide(src, false, Some(&lists(later)), &three)
                .is_err()
        );
        // A minute on, none is in the window.
        let found = test
            .decide(src, false, Some(&lists(4295024622 + 60 * 250)), &three)
            .unwrap();
        assert!(!found.found);
    }

    /// Listings are text from the kernel: absurd numbers give an answer, not a panic.
    #[test]
    fn absurd_stamps_and_clocks_do_not_panic() {
        let text = format!(
            "src=198.51.100.2 ttl: 64 last_seen: 1 oldest_pkt: 1 {}\n",
            u64::MAX
        );
        let lists = RecentLists {
            now: u64::MAX,
            hz: u32::MAX,
            lists: BTreeMap::from([("DEFAULT".to_string(), parse_list(&text).unwrap())]),
        };
        let test = RecentTest {
            seconds: u32::MAX,
            hit_count: u32::MAX,
            ..ufw_update()
        };
        let src: IpAddr = "198.51.100.2".parse().unwrap();
        let _ = test.decide(src, false, Some(&lists), &[]);
    }

    #[test]
    fn unlisted_removed_unread_and_ttl_tests() {
        let other: IpAddr = "198.51.100.9".parse().unwrap();
        let check = RecentTest {
            mode: RecentMode::Check,
            seconds: 0,
            hit_count: 0,
            ..ufw_update()
        };
        let now = 4295024622;
        assert!(
            !check
                .decide(other, false, Some(&lists(now)), &[])
                .unwrap()
                .found
        );
        // A /24 mask finds the listed address's entry only if listed under the mask.
        let masked = RecentTest {
            mask: Some("255.255.255.0".parse().unwrap()),
            ..check.clone()
        };
        assert!(
            !masked
                .decide(other, false, Some(&lists(now)), &[])
                .unwrap()
                .found
        );
        let src: IpAddr = "198.51.100.2".parse().unwrap();
        assert!(
            check
                .decide(src, false, Some(&lists(now)), &[])
                .unwrap()
                .found
        );
        let removed = RecentWrite {
            name: "DEFAULT".into(),
            addr: src,
            removed: true,
        };
        assert!(
            !check
                .decide(src, false, Some(&lists(now)), &[removed])
                .unwrap()
                .found
        );
        assert!(check.decide(src, false, None, &[]).is_err());
        let ttl = RecentTest {
            ttl: true,
            ..check.clone()
        };
        assert!(ttl.decide(src, false, Some(&lists(now)), &[]).is_err());
        let set = RecentTest {
            mode: RecentMode::Set,
            ..check
        };
        let found = set.decide(other, false, Some(&lists(now)), &[]).unwrap();
        assert!(found.found);
        assert_eq!(found.write.unwrap().addr, other);
    }
}
