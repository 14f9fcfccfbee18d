//! A namespace's ruleset at one moment: every backend read and parsed into one
//! [`ruleset::Ruleset`], plus what could not be read.
//!
//! iptables-nft tables are nf_tables tables too, so `nft -j` lists them as well; they are
//! taken from `iptables-nft-save` (which renders their rules in iptables syntax, with
//! counters) and left out of the native nftables set.
//!
//! A read in full runs every tool and parses its output. While nf_tables' generation id
//! stays the same, a re-read takes only the counters of the nf_tables rules over netlink
//! and keeps the rules parsed before (see [`super::live_counters`]); what no generation id
//! covers (legacy xtables, ipset members, local addresses) is read as in full.

use std::{
    collections::HashSet,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use ruleset::{Backend, Family, Ruleset, TableFamily};

use super::{
    conntrack::ConntrackStats,
    nf_tables::NfTables,
    nfqueue::Listeners,
    reader::{self, Dump, Source, dump},
};

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub ruleset: Ruleset,
    pub taken: Instant,
    /// How long the read took (its tools' wall time and the parse).
    pub cost: Duration,
    /// CLOCK_MONOTONIC (the kernel's drop timestamps' clock) when the read was done: a
    /// drop stamped later is not in these counters.
    pub done_ns: u64,
    /// Sources that could not be read or parsed, in words.
    pub problems: Vec<String>,
    /// What the ruleset says, without its counters: two reads with the same digest hold
    /// the same rules, so a drop between them was not made by a rule added or removed.
    pub digest: u64,
    /// nf_tables' generation id when the read began (see [`super::nf_tables`]).
    pub generation: Option<u32>,
    /// Only the nf_tables counters were read: the rules are an earlier read's, of the
    /// same generation (see [`Snapshot::read_since`]).
    pub counters_only: bool,
    /// The namespace's conntrack counters, read with the ruleset (see
    /// [`super::conntrack`]); `None` without conntrack.
    pub conntrack: Option<ConntrackStats>,
    /// The queues a program is bound to, read when a rule queues packets (see
    /// [`super::nfqueue`]).
    pub queues: Option<Listeners>,
    /// The native nftables tables, as listed (family, name); `None` when they could not
    /// be listed one by one.
    native: Option<Vec<(String, String)>>,
    /// The digests of the legacy tables' dumps, IPv4 and IPv6, where they were read (see
    /// [`legacy_tables`]).
    legacy_digests: [Option<u64>; 2],
}

/// Ruleset reads since start, and those that left a source unread or unparsed: the
/// capture's health for `serve`'s metrics. Process-wide, as the reads are.
pub static READS: AtomicU64 = AtomicU64::new(0);
pub static READS_WITH_PROBLEMS: AtomicU64 = AtomicU64::new(0);

impl Snapshot {
    /// Reads the ruleset of the namespace at `netns` (None: our own).
    pub fn read(netns: Option<&Path>) -> Snapshot {
        Snapshot::read_since(netns, None, None)
    }

    /// Reads the ruleset again. `nf_tables` (sockets in the namespace) gives the
    /// generation id; when `earlier` (a read of the same namespace, with nothing left
    /// unread) began at the same id, no nf_tables commit came between: its rules are
    /// still the kernel's, and only their counters are read, over netlink. Should the
    /// counters not pair up with its rules, or a commit come meanwhile, the read is made
    /// in full, without listing the native tables again when the id is still the same.
    pub fn read_since(
        netns: Option<&Path>,
        nf_tables: Option<&NfTables>,
        earlier: Option<&Snapshot>,
    ) -> Snapshot {
        let generation = nf_tables.and_then(|n| {
            n.generation()
                .inspect_err(|e| log::debug!("nf_tables generation id unavailable: {e}"))
                .ok()
        });
        let same = earlier.filter(|e| generation.is_some() && e.generation == generation);
        let counted = same
            .filter(|e| e.problems.is_empty() && e.native.is_some())
            .zip(nf_tables)
            .and_then(|(e, n)| Snapshot::read_counters(netns, n, e));
        let mut snap = counted.unwrap_or_else(|| {
            Snapshot::read_uncounted(netns, same.and_then(|e| e.native.as_deref()), earlier)
        });
        snap.generation = generation;
        snap.conntrack = ConntrackStats::read(netns);
        if queues_packets(&snap.ruleset) {
            snap.queues = Listeners::read(netns);
        }
        READS.fetch_add(1, Ordering::Relaxed);
        if !snap.problems.is_empty() {
            READS_WITH_PROBLEMS.fetch_add(1, Ordering::Relaxed);
        }
        snap
    }

    /// `earlier`'s rules with the nf_tables counters read now, and what no generation
    /// id covers read afresh; `None` when the counters do not pair up with its rules or a
    /// commit came during the dump.
    fn read_counters(
        netns: Option<&Path>,
        nf_tables: &NfTables,
        earlier: &Snapshot,
    ) -> Option<Snapshot> {
        let taken = Instant::now();
        let live = nf_tables
            .counters()
            .inspect_err(|e| log::debug!("nf_tables counters unavailable: {e}"))
            .ok()?;
        if nf_tables.generation().ok() != earlier.generation {
            log::debug!("nf_tables commit during the counters' dump: reading in full");
            return None;
        }
        let mut tables: Vec<ruleset::Table> = earlier
            .ruleset
            .tables
            .iter()
            .filter(|t| t.backend != Backend::IptablesLegacy)
            .cloned()
            .collect();
        if let Err(why) = live.apply(&mut tables) {
            log::debug!(
                "nf_tables counters do not pair up with the rules read ({why}): reading in full"
            );
            return None;
        }
        let mut problems = Vec::new();
        let legacy_there = legacy_names(netns);
        // In the place a full read gives them: after the iptables-nft tables.
        let legacy = legacy_tables(netns, legacy_there, Some(earlier), &mut problems);
        let at = tables
            .iter()
            .take_while(|t| t.backend == Backend::IptablesNft)
            .count();
        tables.splice(at..at, legacy.tables);
        // A set that no rule could use needs no reading: nf_tables rules that use one were
        // committed before `earlier` (it read the set then), and legacy rules are read
        // above, with no generation id.
        let sets_in_use = !earlier.ruleset.ipsets.is_empty() || legacy_there != [false, false];
        let ipsets = if sets_in_use {
            ipsets(netns, &mut problems)
        } else {
            Default::default()
        };
        let ruleset = Ruleset {
            tables,
            ipsets,
            local_routes: local_routes(netns, &mut problems),
            recent: None,
        };
        let mut snap = Snapshot::done(ruleset, taken, problems, earlier.native.clone());
        snap.counters_only = true;
        snap.legacy_digests = legacy.digests;
        Some(snap)
    }

    /// Reads the namespace's xt_recent lists into the ruleset when a rule tests one
    /// (`-m recent`): `explain` decides such rules for a packet sent now. Watching does
    /// not: by the time the lists are read, later packets have changed what a captured
    /// drop met, and the counters decide.
    pub fn read_recent_lists(&mut self, netns: Option<&Path>) {
        if !self.ruleset.tests_recent_lists() {
            return;
        }
        match super::recent_lists::read(netns) {
            Ok(lists) => self.ruleset.recent = Some(lists),
            Err(e) => self.problems.push(format!("xt_recent lists: {e}")),
        }
    }

    /// A read begun at `taken`, done now.
    fn done(
        ruleset: Ruleset,
        taken: Instant,
        problems: Vec<String>,
        native: Option<Vec<(String, String)>>,
    ) -> Snapshot {
        Snapshot {
            digest: digest_of(&ruleset.tables),
            ruleset,
            taken,
            cost: taken.elapsed(),
            done_ns: monotonic_ns(),
            problems,
            generation: None,
            counters_only: false,
            conntrack: None,
            queues: None,
            native,
            legacy_digests: [None; 2],
        }
    }

    /// A snapshot of `ruleset` as if read now, for tests.
    #[cfg(test)]
    pub(crate) fn of(ruleset: Ruleset) -> Snapshot {
        Snapshot::done(ruleset, Instant::now(), Vec::new(), None)
    }

    /// A full read, but for the native tables' names when `known`, and legacy tables
    /// parsed by `earlier` when their dump did not change.
    fn read_uncounted(
        netns: Option<&Path>,
        known: Option<&[(String, String)]>,
        earlier: Option<&Snapshot>,
    ) -> Snapshot {
        let taken = Instant::now();
        let mut problems = Vec::new();
        let mut tables = Vec::new();
        for (source, family) in [
            (Source::IptablesNft, Family::Ipv4),
            (Source::Ip6tablesNft, Family::Ipv6),
        ] {
            let dumped = text_or_problem(dump(source, netns), &mut problems);
            tables.extend(parse_save(
                dumped,
                Backend::IptablesNft,
                family,
                &mut problems,
            ));
        }
        let legacy = legacy_tables(netns, legacy_names(netns), earlier, &mut problems);
        tables.extend(legacy.tables);
        let iptables_nft: HashSet<(TableFamily, String)> = tables
            .iter()
            .filter(|t| t.backend == Backend::IptablesNft)
            .map(|t| (t.family, t.name.clone()))
            .collect();
        let (native_tables, native) = native_nft_tables(netns, &iptables_nft, known, &mut problems);
        tables.extend(native_tables);
        let ruleset = Ruleset {
            tables,
            ipsets: ipsets(netns, &mut problems),
            local_routes: local_routes(netns, &mut problems),
            recent: None,
        };
        let mut snap = Snapshot::done(ruleset, taken, problems, native);
        snap.legacy_digests = legacy.digests;
        snap
    }
}

/// The legacy xtables tables of a read, and their dumps' digests.
struct Legacy {
    tables: Vec<ruleset::Table>,
    digests: [Option<u64>; 2],
}

/// The legacy xtables tables of both families, where `there` (see [`legacy_names`]).
/// Legacy tables have no generation id: each read runs `iptables-legacy-save`, but a dump
/// whose digest `earlier` parsed already (its rules unchanged) is only read for its
/// counters (see [`ruleset::iptables_save::counters`]), not parsed again.
fn legacy_tables(
    netns: Option<&Path>,
    there: [bool; 2],
    earlier: Option<&Snapshot>,
    problems: &mut Vec<String>,
) -> Legacy {
    let mut legacy = Legacy {
        tables: Vec::new(),
        digests: [None; 2],
    };
    for (i, (source, family)) in [
        (Source::IptablesLegacy, Family::Ipv4),
        (Source::Ip6tablesLegacy, Family::Ipv6),
    ]
    .into_iter()
    .enumerate()
    {
        if !there[i] {
            continue;
        }
        let Some(text) = text_or_problem(dump(source, netns), problems) else {
            continue;
        };
        let Ok(counted) = ruleset::iptables_save::counters(&text) else {
            // The parse below says what is wrong.
            legacy.tables.extend(parse_save(
                Some(text),
                Backend::IptablesLegacy,
                family,
                problems,
            ));
            continue;
        };
        let reused = earlier
            .filter(|e| e.legacy_digests[i] == Some(counted.digest))
            .and_then(|e| {
                let mut tables: Vec<_> = e
                    .ruleset
                    .tables
                    .iter()
                    .filter(|t| {
                        t.backend == Backend::IptablesLegacy && t.family == TableFamily::of(family)
                    })
                    .cloned()
                    .collect();
                counted.apply(&mut tables).ok().map(|()| tables)
            });
        let tables = match reused {
            Some(tables) => tables,
            None => {
                let failed = problems.len();
                let parsed = parse_save(Some(text), Backend::IptablesLegacy, family, problems);
                if problems.len() > failed {
                    continue;
                }
                parsed
            }
        };
        legacy.digests[i] = Some(counted.digest);
        legacy.tables.extend(tables);
    }
    legacy
}

/// The tables of an `iptables-save` dump, if there is one and it parses.
fn parse_save(
    dumped: Option<String>,
    backend: Backend,
    family: Family,
    problems: &mut Vec<String>,
) -> Vec<ruleset::Table> {
    let Some(text) = dumped else {
        return Vec::new();
    };
    ruleset::iptables_save::parse(&text, backend, family).unwrap_or_else(|e| {
        problems.push(format!("{backend:?} {family:?} ruleset: {e}"));
        Vec::new()
    })
}

/// The ipsets and their members; none when ipset is not installed (most hosts have none).
fn ipsets(
    netns: Option<&Path>,
    problems: &mut Vec<String>,
) -> std::collections::BTreeMap<String, ruleset::ipset::Ipset> {
    let Dump::Text(text) = dump(Source::Ipset, netns) else {
        return Default::default();
    };
    ruleset::ipset::parse_save(&text).unwrap_or_else(|e| {
        problems.push(format!("ipset: {e}"));
        Default::default()
    })
}

/// The `local` routing tables of both families, for address type tests.
fn local_routes(
    netns: Option<&Path>,
    problems: &mut Vec<String>,
) -> Option<ruleset::addrtype::LocalTable> {
    super::local_routes::read(netns)
        .inspect_err(|e| problems.push(format!("local routes: {e}")))
        .ok()
}

/// Whether the namespace has legacy xtables tables, IPv4 and IPv6: the names of those it
/// has are in its /proc/net/ip_tables_names (ip6_tables_names), which exist once the
/// kernel has the module (net/ipv4/netfilter/ip_tables.c, `xt_proto_init`).
/// `iptables-legacy-save` lists the tables from there, so where it is empty or missing
/// the tool would find nothing: two tool runs saved per read on hosts that use nf_tables.
/// Read from a thread in the namespace (`/proc/thread-self/net` is the thread's
/// namespace's); when that fails, the tools run and say what is wrong.
fn legacy_names(netns: Option<&Path>) -> [bool; 2] {
    let has_names = |file: &str| -> bool {
        match std::fs::read(format!("/proc/thread-self/net/{file}")) {
            Ok(names) => !names.is_empty(),
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        }
    };
    crate::tools::on_thread_in(netns, move || {
        Ok([has_names("ip_tables_names"), has_names("ip6_tables_names")])
    })
    .unwrap_or([true, true])
}

/// A dump's text, or `None` with what went wrong noted in `problems`.
fn text_or_problem(d: Dump, problems: &mut Vec<String>) -> Option<String> {
    match d {
        Dump::Text(t) => Some(t),
        Dump::Missing(tool) => {
            problems.push(format!("{tool} not installed"));
            None
        }
        Dump::Failed(e) => {
            problems.push(e);
            None
        }
    }
}

/// The native nftables tables (those iptables-nft does not manage), with their handles,
/// and their names when they were listed one by one.
///
/// Listed table by table: `nft -j list ruleset` would also render every iptables-nft
/// table, translating each xt match, only for it to be thrown away (50 ms of nft for
/// 2,000 iptables rules, paid at every read). When a table cannot be listed on its own
/// (a name nft would not parse), the whole ruleset is read as before. `known`: the names,
/// known unchanged (see [`Snapshot::read_since`]), so not listed again.
fn native_nft_tables(
    netns: Option<&Path>,
    managed: &HashSet<(TableFamily, String)>,
    known: Option<&[(String, String)]>,
    problems: &mut Vec<String>,
) -> (Vec<ruleset::Table>, Option<Vec<(String, String)>>) {
    let native = match known {
        Some(names) => names.to_vec(),
        None => {
            let Some(listing) = text_or_problem(dump(Source::NftTables, netns), problems) else {
                return (Vec::new(), None);
            };
            match ruleset::nft_json::parse(&listing) {
                Ok(all) => all
                    .into_iter()
                    .filter(|t| !managed.contains(&(t.family, t.name.clone())))
                    .map(|t| (t.family.to_string(), t.name))
                    .collect(),
                Err(e) => {
                    problems.push(format!("nft tables: {e}"));
                    return (Vec::new(), None);
                }
            }
        }
    };
    let mut one_by_one = Vec::new();
    for (family, name) in &native {
        let json = reader::dump_nft_table(true, family, name, netns);
        let text = reader::dump_nft_table(false, family, name, netns);
        match (json, text) {
            (Some(json), Some(text)) => one_by_one.push((json, text)),
            _ => return (whole_ruleset(netns, managed, problems), None),
        }
    }
    let mut tables = Vec::new();
    for (json, text) in one_by_one {
        tables.extend(parse_native(json, text, managed, problems));
    }
    (tables, Some(native))
}

/// The native tables from `nft -j list ruleset` and `nft -a list ruleset`.
fn whole_ruleset(
    netns: Option<&Path>,
    managed: &HashSet<(TableFamily, String)>,
    problems: &mut Vec<String>,
) -> Vec<ruleset::Table> {
    parse_native(
        dump(Source::NftJson, netns),
        dump(Source::NftText, netns),
        managed,
        problems,
    )
}

/// Parses an nft JSON listing, keeps the tables iptables-nft does not manage and gives
/// them the handles of the text listing.
fn parse_native(
    json: Dump,
    text: Dump,
    managed: &HashSet<(TableFamily, String)>,
    problems: &mut Vec<String>,
) -> Vec<ruleset::Table> {
    let Some(json) = text_or_problem(json, problems) else {
        return Vec::new();
    };
    match ruleset::nft_json::parse(&json) {
        Ok(mut native) => {
            native.retain(|t| !managed.contains(&(t.family, t.name.clone())));
            if let Some(listing) = text.text() {
                ruleset::nft_text::apply(&mut native, &ruleset::nft_text::handles(listing));
            }
            native
        }
        Err(e) => {
            problems.push(format!("nft ruleset: {e}"));
            Vec::new()
        }
    }
}

/// Hashes every table's chains (with hooks, priorities and policies) and rules (text and
/// handle), leaving out counters, which change with every packet.
fn digest_of(tables: &[ruleset::Table]) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for t in tables {
        (t.backend, t.family, &t.name).hash(&mut h);
        for c in &t.chains {
            (&c.name, c.base).hash(&mut h);
            for r in &c.rules {
                (&r.text, r.handle).hash(&mut h);
            }
        }
    }
    h.finish()
}

/// Now on CLOCK_MONOTONIC, as `bpf_ktime_get_ns` stamps drops.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

/// Whether a rule of `ruleset` hands packets to a userspace queue.
fn queues_packets(ruleset: &Ruleset) -> bool {
    ruleset
        .tables
        .iter()
        .flat_map(|t| &t.chains)
        .flat_map(|c| &c.rules)
        .any(|r| r.target == ruleset::Target::Queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(save: &str) -> Vec<ruleset::Table> {
        ruleset::iptables_save::parse(save, Backend::IptablesNft, Family::Ipv4).unwrap()
    }

    #[test]
    fn the_digest_ignores_counters_and_sees_rules() {
        let a = "*filter\n:OUTPUT ACCEPT [1:60]\n[3:180] -A OUTPUT -p tcp -j DROP\nCOMMIT\n";
        let counted = "*filter\n:OUTPUT ACCEPT [9:540]\n[7:420] -A OUTPUT -p tcp -j DROP\nCOMMIT\n";
        let other = "*filter\n:OUTPUT ACCEPT [1:60]\n[3:180] -A OUTPUT -p udp -j DROP\nCOMMIT\n";
        let policy = "*filter\n:OUTPUT DROP [1:60]\n[3:180] -A OUTPUT -p tcp -j DROP\nCOMMIT\n";
        assert_eq!(digest_of(&tables(a)), digest_of(&tables(counted)));
        assert_ne!(digest_of(&tables(a)), digest_of(&tables(other)));
        assert_ne!(digest_of(&tables(a)), digest_of(&tables(policy)));
    }
    /// A chain's counters: (table, chain, policy, rules).
    type ChainCounters = (
        String,
        String,
        Option<ruleset::Counters>,
        Vec<Option<ruleset::Counters>>,
    );

    /// Every counter of the whole ruleset.
    fn all_counters(r: &Ruleset) -> Vec<ChainCounters> {
        r.tables
            .iter()
            .flat_map(|t| {
                t.chains.iter().map(|c| {
                    (
                        format!("{:?} {} {}", t.backend, t.family, t.name),
                        c.name.clone(),
                        c.policy_counters,
                        c.rules.iter().map(|r| r.counters).collect(),
                    )
                })
            })
            .collect()
    }

    /// The real kernel, in a namespace of the test thread's own (gone with the thread):
    /// a re-read of the same generation takes only the counters, and they are those a
    /// full read gives — rules, iptables-nft policies, a native table's counted rule, a
    /// legacy table's rule. Needs root, iptables (both) and nft, as CI has.
    #[test]
    fn a_counters_only_read_is_a_full_read() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare a network namespace (root needed)");
            let run = |argv: &[&str], input: &str| {
                use std::io::Write as _;
                let mut child = std::process::Command::new(argv[0])
                    .args(&argv[1..])
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .expect("run a ruleset tool");
                child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
                assert!(child.wait().unwrap().success(), "{argv:?}");
            };
            run(&["ip", "link", "set", "lo", "up"], "");
            run(
                &["iptables-nft-restore"],
                "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT DROP [0:0]\n:LOGDROP - [0:0]\n\
                 -A OUTPUT -p udp --dport 9 -j LOGDROP\n-A OUTPUT -p udp --dport 10 -j DROP\n\
                 -A LOGDROP -j DROP\nCOMMIT\n",
            );
            run(
                &["nft", "-f", "-"],
                "table inet droptrace_test {\n chain out {\n type filter hook output priority -10;\n \
                 udp dport 12 counter\n }\n}\n",
            );
            // A legacy table too, seeing every packet before the filter hooks.
            run(
                &["iptables-legacy", "-t", "mangle", "-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "ACCEPT"],
                "",
            );
            let send = |ports: &[u16]| {
                let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                for port in ports {
                    // Dropped: EPERM.
                    let _ = socket.send_to(b"x", ("127.0.0.1", *port));
                }
            };
            let nf_tables = NfTables::open(None).unwrap();
            let first = Snapshot::read_since(None, Some(&nf_tables), None);
            assert!(!first.counters_only && first.problems.is_empty(), "{:?}", first.problems);
            send(&[9, 9, 10, 11, 12, 12, 12]);
            let counted = Snapshot::read_since(None, Some(&nf_tables), Some(&first));
            assert!(counted.counters_only, "the same generation: counters only");
            let full = Snapshot::read(None);
            assert_eq!(all_counters(&counted.ruleset), all_counters(&full.ruleset));
            assert_eq!(counted.digest, full.digest);
            assert_ne!(
                all_counters(&counted.ruleset),
                all_counters(&first.ruleset),
                "the counters grew"
            );
            // The legacy dump's rules did not change: its tables were taken from the first
            // read, with the counters of this one.
            assert!(first.legacy_digests[0].is_some());
            assert_eq!(counted.legacy_digests, first.legacy_digests);
            let mangle = |s: &Snapshot| {
                s.ruleset
                    .tables
                    .iter()
                    .find(|t| t.backend == Backend::IptablesLegacy && t.name == "mangle")
                    .and_then(|t| t.chain("OUTPUT")?.rules.first()?.counters)
                    .map(|c| c.packets)
            };
            assert_eq!((mangle(&first), mangle(&counted)), (Some(0), Some(2)));
            // A commit: read in full.
            run(&["nft", "add", "table", "ip", "droptrace_other"], "");
            let after = Snapshot::read_since(None, Some(&nf_tables), Some(&counted));
            assert!(!after.counters_only);
            assert!(after.ruleset.tables.iter().any(|t| t.name == "droptrace_other"));
        })
        .join()
        .unwrap();
    }
}
