//! Drops conntrack made, from its own counters in the namespace.
//!
//! conntrack drops packets without any rule: when its table is full
//! (`nf_conntrack_max`, checked in `__nf_conntrack_alloc`), when it cannot insert a new
//! connection whose reply tuple clashes with another's (`nf_ct_resolve_clash`: SNAT or
//! MASQUERADE found no free port), and some packets it judges invalid
//! (`nf_conntrack_in`). They are dropped by netfilter's core at a hook, so the drop's
//! stack names no rule, and the ruleset accepts the packet. The kernel counts each kind
//! per namespace in /proc/net/stat/nf_conntrack (one row per CPU, in hex; columns by
//! name, see `ct_cpu_seq_show` in net/netfilter/nf_conntrack_standalone.c): `drop` for
//! every packet conntrack dropped, with `insert_failed` for a clash and `invalid` for an
//! invalid one. Read with each ruleset, their growth between two reads names the cause of
//! the drops no rule made in between.

use std::path::Path;

use crate::{kernel::stack::Hook, record::rule::Cause};

/// A namespace's conntrack counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConntrackStats {
    /// Packets conntrack dropped.
    pub drop: u64,
    /// Connections it could not insert (a clash of tuples).
    pub insert_failed: u64,
    /// Packets it judged invalid (most pass on without a connection).
    pub invalid: u64,
    /// Connections in the table, and the table's limit.
    pub count: u64,
    pub max: u64,
}

impl ConntrackStats {
    /// The counters of the namespace at `netns` (None: ours); `None` without conntrack.
    pub fn read(netns: Option<&Path>) -> Option<ConntrackStats> {
        crate::tools::on_thread_in(netns, || {
            // /proc/thread-self/net and /proc/sys/net follow the thread's namespace.
            let stat = std::fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack")?;
            let sysctl = |name: &str| {
                std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
            };
            Ok(ConntrackStats::parse(
                &stat,
                sysctl("nf_conntrack_count"),
                sysctl("nf_conntrack_max"),
            ))
        })
        .ok()
        .flatten()
    }

    /// From /proc/net/stat/nf_conntrack's text and the two sysctls.
    fn parse(stat: &str, count: Option<u64>, max: Option<u64>) -> Option<ConntrackStats> {
        let mut lines = stat.lines();
        let header: Vec<&str> = lines.next()?.split_whitespace().collect();
        let column = |name: &str| header.iter().position(|h| *h == name);
        let (drop, insert_failed, invalid) = (
            column("drop")?,
            column("insert_failed")?,
            column("invalid")?,
        );
        let mut s = ConntrackStats {
            count: count.unwrap_or(0),
            max: max.unwrap_or(0),
            ..ConntrackStats::default()
        };
        for row in lines {
            let cells: Vec<u64> = row
                .split_whitespace()
                .map(|c| u64::from_str_radix(c, 16))
                .collect::<Result<_, _>>()
                .ok()?;
            let cell = |i: usize| cells.get(i).copied().unwrap_or(0);
            s.drop += cell(drop);
            s.insert_failed += cell(insert_failed);
            s.invalid += cell(invalid);
        }
        Some(s)
    }
}

/// What dropped `count` packets at `hook` that no rule dropped, given the namespace's
/// conntrack counters `before` and `after` them and `no_rule`, every drop no rule made
/// in the namespace between the two reads. `None` when conntrack dropped nothing then,
/// or not where it could have dropped these (new connections are looked up at
/// PREROUTING and OUTPUT and inserted at POSTROUTING and INPUT).
pub fn cause(
    before: &ConntrackStats,
    after: &ConntrackStats,
    hook: Option<Hook>,
    no_rule: u64,
    nat_rules: bool,
) -> Option<Cause> {
    let dropped = after.drop.checked_sub(before.drop)?;
    if dropped == 0 {
        return None;
    }
    let clashes = after.insert_failed.saturating_sub(before.insert_failed);
    let invalid = after.invalid.saturating_sub(before.invalid);
    let lookup = matches!(hook, Some(Hook::Prerouting | Hook::Output));
    let insert = matches!(hook, Some(Hook::Postrouting | Hook::Input));
    let full = before.max > 0 && before.count.max(after.count) >= before.max;
    let (name, what) = if clashes > 0 && insert {
        if nat_rules {
            (
                "nat_no_free_port",
                format!(
                    "NAT found no free port: conntrack could not insert the connection \
                     (insert_failed +{clashes}), its translated tuple taken"
                ),
            )
        } else {
            (
                "conntrack_clash",
                format!(
                    "conntrack could not insert the connection (insert_failed +{clashes}): \
                     another has its tuple"
                ),
            )
        }
    } else if full && lookup {
        (
            "conntrack_table_full",
            format!(
                "conntrack table full ({} of nf_conntrack_max {}, net.netfilter.nf_conntrack_max)",
                before.count.max(after.count),
                before.max
            ),
        )
    } else if invalid > 0 && lookup {
        (
            "conntrack_invalid",
            format!("conntrack judged it invalid and dropped it (invalid +{invalid})"),
        )
    } else if lookup || insert {
        ("conntrack_dropped", "conntrack dropped it".to_string())
    } else {
        return None;
    };
    let certain = dropped >= no_rule;
    let title = if certain {
        what
    } else {
        format!("{what}; conntrack dropped {dropped} of the {no_rule} packets no rule dropped")
    };
    Some(Cause {
        name,
        title,
        certain,
    })
}

/// Whether `ruleset` translates source addresses (SNAT, MASQUERADE): a clash at
/// insertion is then most likely its port range used up.
pub fn source_nat(ruleset: &ruleset::Ruleset) -> bool {
    ruleset
        .tables
        .iter()
        .flat_map(|t| &t.chains)
        .flat_map(|c| &c.rules)
        .any(|r| match &r.target {
            ruleset::Target::Nat { action } => {
                let a = action.to_ascii_lowercase();
                a.contains("snat") || a.contains("masquerade")
            }
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    // /proc/net/stat/nf_conntrack on Linux 6.18, two CPUs, after a SNAT to a one-port
    // range refused two connections.
    const STAT: &str = "\
entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00000001  00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000001 00000001 00000000 00000000  00000000 00000000 00000000 00000000
00000001  00000000 00000001 00000000 00000003 00000000 00000000 00000000 00000000 00000001 00000001 00000000 00000000  00000000 00000000 00000000 00000000
";

    #[test]
    fn columns_are_taken_by_name_and_summed_over_cpus() {
        let s = ConntrackStats::parse(STAT, Some(1), Some(262_144)).unwrap();
        assert_eq!(
            s,
            ConntrackStats {
                drop: 2,
                insert_failed: 2,
                invalid: 3,
                count: 1,
                max: 262_144
            }
        );
        assert_eq!(ConntrackStats::parse("", None, None), None);
        assert_eq!(
            ConntrackStats::parse("entries drop\nzz 1\n", None, None),
            None
        );
    }

    fn stats(drop: u64, insert_failed: u64, invalid: u64, count: u64) -> ConntrackStats {
        ConntrackStats {
            drop,
            insert_failed,
            invalid,
            count,
            max: 50,
        }
    }

    #[test]
    fn a_full_table_is_named_with_its_figures() {
        let c = cause(
            &stats(0, 0, 0, 50),
            &stats(148, 0, 0, 50),
            Some(Hook::Output),
            148,
            false,
        )
        .unwrap();
        assert_eq!(c.name, "conntrack_table_full");
        assert!(c.certain);
        assert_eq!(
            c.text(),
            "conntrack table full (50 of nf_conntrack_max 50, net.netfilter.nf_conntrack_max)"
        );
    }

    #[test]
    fn a_clash_at_insertion_is_nat_out_of_ports_where_nat_rules_are() {
        let (before, after) = (stats(0, 0, 0, 1), stats(2, 2, 0, 1));
        let nat = cause(&before, &after, Some(Hook::Postrouting), 2, true).unwrap();
        assert_eq!(nat.name, "nat_no_free_port");
        let plain = cause(&before, &after, Some(Hook::Postrouting), 2, false).unwrap();
        assert_eq!(plain.name, "conntrack_clash");
    }

    #[test]
    fn fewer_conntrack_drops_than_drops_make_it_unsure() {
        let c = cause(
            &stats(0, 0, 0, 50),
            &stats(10, 0, 0, 50),
            Some(Hook::Output),
            25,
            false,
        )
        .unwrap();
        assert!(!c.certain);
        assert!(
            c.text().starts_with("unsure: conntrack table full"),
            "{}",
            c.text()
        );
        assert!(
            c.text()
                .ends_with("dropped 10 of the 25 packets no rule dropped")
        );
    }

    #[test]
    fn no_conntrack_drop_or_another_hook_names_nothing() {
        let quiet = stats(5, 0, 0, 1);
        assert_eq!(cause(&quiet, &quiet, Some(Hook::Output), 1, false), None);
        // A counter that went back (another namespace on a reused inode): nothing.
        assert_eq!(
            cause(&quiet, &stats(0, 0, 0, 1), Some(Hook::Output), 1, false),
            None
        );
        assert_eq!(
            cause(&stats(0, 0, 0, 1), &quiet, Some(Hook::Forward), 1, false),
            None
        );
    }
}
