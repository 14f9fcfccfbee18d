//! A namespace's ruleset at one moment: every backend read and parsed into one
//! [`ruleset::Ruleset`], plus what could not be read.
//!
//! iptables-nft tables are nf_tables tables too, so `nft -j` lists them as well; they are
//! taken from `iptables-nft-save` (which renders their rules in iptables syntax, with
//! counters) and left out of the native nftables set.

use std::{
    collections::HashSet,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use ruleset::{Backend, Family, Ruleset, TableFamily};

use super::reader::{self, Dump, Source, dump};

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
    /// nf_tables' generation id when the read began (see [`super::generation`]).
    pub generation: Option<u32>,
    /// The native nftables tables, as listed (family, name); `None` when they could not
    /// be listed one by one.
    native: Option<Vec<(String, String)>>,
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

    /// Reads the ruleset again, `generation` being nf_tables' generation id read just
    /// before: when `earlier` (a read of the same namespace) began at the same id, no
    /// nf_tables commit came between, so the native tables it listed are still the ones
    /// there (their rules and counters are read again).
    pub fn read_since(
        netns: Option<&Path>,
        generation: Option<u32>,
        earlier: Option<&Snapshot>,
    ) -> Snapshot {
        let known = earlier
            .filter(|e| generation.is_some() && e.generation == generation)
            .and_then(|e| e.native.as_deref());
        let mut snap = Snapshot::read_uncounted(netns, known);
        snap.generation = generation;
        READS.fetch_add(1, Ordering::Relaxed);
        if !snap.problems.is_empty() {
            READS_WITH_PROBLEMS.fetch_add(1, Ordering::Relaxed);
        }
        snap
    }

    /// A snapshot of `ruleset` as if read now, for tests.
    #[cfg(test)]
    pub(crate) fn of(ruleset: Ruleset) -> Snapshot {
        Snapshot {
            digest: digest_of(&ruleset.tables),
            ruleset,
            taken: Instant::now(),
            cost: Duration::ZERO,
            done_ns: monotonic_ns(),
            problems: Vec::new(),
            generation: None,
            native: None,
        }
    }

    fn read_uncounted(netns: Option<&Path>, known: Option<&[(String, String)]>) -> Snapshot {
        let taken = Instant::now();
        let mut problems = Vec::new();
        let mut text = |source: Source| text_or_problem(dump(source, netns), &mut problems);
        let iptables = [
            (Source::IptablesNft, Backend::IptablesNft, Family::Ipv4),
            (Source::Ip6tablesNft, Backend::IptablesNft, Family::Ipv6),
            (
                Source::IptablesLegacy,
                Backend::IptablesLegacy,
                Family::Ipv4,
            ),
            (
                Source::Ip6tablesLegacy,
                Backend::IptablesLegacy,
                Family::Ipv6,
            ),
        ]
        .map(|(source, backend, family)| {
            let absent = backend == Backend::IptablesLegacy && !legacy_loaded(family);
            (if absent { None } else { text(source) }, backend, family)
        });
        // ipset is optional: most hosts have none.
        let ipset = match dump(Source::Ipset, netns) {
            Dump::Text(t) => Some(t),
            _ => None,
        };

        let mut tables = Vec::new();
        for (dumped, backend, family) in iptables {
            let Some(t) = dumped else { continue };
            match ruleset::iptables_save::parse(&t, backend, family) {
                Ok(parsed) => tables.extend(parsed),
                Err(e) => problems.push(format!("{backend:?} {family:?} ruleset: {e}")),
            }
        }
        let iptables_nft: HashSet<(TableFamily, String)> = tables
            .iter()
            .filter(|t| t.backend == Backend::IptablesNft)
            .map(|t| (t.family, t.name.clone()))
            .collect();
        let (native_tables, native) = native_nft_tables(netns, &iptables_nft, known, &mut problems);
        tables.extend(native_tables);
        let ipsets = match ipset.map(|t| ruleset::ipset::parse_save(&t)) {
            Some(Ok(sets)) => sets,
            Some(Err(e)) => {
                problems.push(format!("ipset: {e}"));
                Default::default()
            }
            None => Default::default(),
        };
        let mut local = ruleset::addrtype::LocalTable::default();
        let mut routes_read = true;
        for source in [Source::LocalRoutes4, Source::LocalRoutes6] {
            let parsed = match dump(source, netns) {
                Dump::Text(t) => local.add_ip_json(&t),
                Dump::Missing(tool) => Err(format!("{tool} not installed")),
                // A namespace without an address of the family has no local table yet.
                Dump::Failed(e) if e.contains("FIB table does not exist") => Ok(()),
                Dump::Failed(e) => Err(e),
            };
            if let Err(e) = parsed {
                problems.push(format!("local routes: {e}"));
                routes_read = false;
            }
        }
        let digest = digest_of(&tables);
        Snapshot {
            digest,
            ruleset: Ruleset {
                tables,
                ipsets,
                local_routes: routes_read.then_some(local),
            },
            taken,
            cost: taken.elapsed(),
            done_ns: monotonic_ns(),
            problems,
            generation: None,
            native,
        }
    }
}

/// Whether the kernel has legacy xtables tables of `family` at all: their module makes
/// /proc/net/ip_tables_names (ip6_tables_names) in every namespace, ours included, and
/// without it `iptables-legacy-save` finds nothing (it loads no module to look). Saves two
/// tool runs per read on hosts that use nf_tables only.
fn legacy_loaded(family: Family) -> bool {
    let names = match family {
        Family::Ipv4 => "/proc/net/ip_tables_names",
        Family::Ipv6 => "/proc/net/ip6_tables_names",
    };
    Path::new(names).exists()
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
}
