//! Naming the rule that dropped a packet: backend, table, chain, rule, and how sure we are.
//!
//! The kernel tells us the hook and the engine (from the drop's stack); the rule is found
//! by evaluating the dropped packet against the ruleset of its own namespace, read with the
//! standard tools ([`reader`]) and re-read, while no commit changes it, as counters over
//! netlink ([`snapshot`]), and confirmed by the rule's packet counter growing. Where
//! kprobes exist the engine itself also reports the table and chain that returned the drop
//! ([`crate::kernel::verdicts`]): an evaluation that agrees with it is `exact`, and one that does
//! not gives way to it.

mod accepted;
pub mod beyond;
mod candidates;
mod conntrack;
mod evidence;
mod flush;
pub mod live_counters;
mod local_routes;
mod netlink;
pub mod nf_tables;
mod nfqueue;
pub mod owner;
pub mod packet;
pub mod reader;
mod recent_lists;
pub mod snapshot;

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    time::{Duration, Instant},
};

use ruleset::DecidedBy;

pub use crate::record::rule::{Attribution, Level};
use crate::{
    kernel::stack,
    record::{DropRecord, rule::Cause},
};
use snapshot::Snapshot;

use candidates::*;
pub use candidates::{attribution_of, backends_mixed};
use evidence::*;
pub use packet::packet_of;
use packet::*;

/// A record waiting for its rule's counter to be checked.
struct Pending {
    record: DropRecord,
    /// The rules that may have dropped it (see [`Evaluated::candidates`]); empty when
    /// there is nothing to confirm.
    candidates: Vec<Candidate>,
    /// What was evaluated, to evaluate again against a newer ruleset.
    query: Option<(ruleset::Engine, ruleset::Hook, ruleset::Packet)>,
    /// The hook was inferred (see [`infer_hook`]): the counters cannot make it `exact`.
    hook_inferred: bool,
}

#[derive(Default)]
struct Namespace {
    /// How to enter it; `None` when it could not be found.
    path: Option<Option<PathBuf>>,
    current: Option<Snapshot>,
    /// Reads before `current`, oldest first, back to the newest one at least
    /// [`WIDE_WINDOW`] older than it: the first is the baseline for drops that may predate
    /// the end of `current`'s read (see [`Attributor::flush`]).
    earlier: VecDeque<Snapshot>,
    pending: Vec<Pending>,
    /// When this namespace last had drops to attribute.
    last_drop: Option<Instant>,
    /// When `path` was last checked (see [`Namespace::relocate`]).
    located: Option<Instant>,
    /// The name its records carried last: another name means another namespace.
    name: Option<String>,
    /// The first read, kept when attempts are counted: the accepting rules' counters grow
    /// from it (see [`accepted`]).
    baseline: Option<Snapshot>,
    /// Asks the namespace for nf_tables' generation id and counters (see
    /// [`Namespace::read`]); opened at the first read through `path`.
    nf_tables: Option<nf_tables::NfTables>,
    /// Up to which value of each rule's packet counter split lines have taken its drops
    /// (see `flush::split_by_counters`).
    split_upto: Vec<(DecidedBy, u64)>,
}

/// How often the way into a namespace is checked: it is one `stat`, paid on the records'
/// path.
const RELOCATE_EVERY: Duration = Duration::from_secs(1);

/// Namespaces whose rulesets [`Attributor::prime_new`] reads ahead, at most: beyond, a
/// namespace is first read at its first drop, and that drop's line is `inferred`.
pub const PRIMED_MAX: usize = 1_024;

/// Records a namespace's queue keeps room for once flushed; a burst's larger queue is
/// given back.
const PENDING_KEPT: usize = 1_024;

impl Namespace {
    /// Checks, at most once a second, that `path` still enters the namespace `inode`, and
    /// looks for another way in when not. A name deleted or a process gone, and the kernel
    /// gives the inode to the next namespace made (see [`crate::enrich::netns::NsIdentity`]):
    /// an old path then leads nowhere, or elsewhere. `true` when the way in changed, so
    /// the snapshots read through the old one may be another namespace's.
    fn relocate(&mut self, inode: u32) -> bool {
        if self.located.is_some_and(|t| t.elapsed() < RELOCATE_EVERY) {
            return false;
        }
        self.located = Some(Instant::now());
        let leads_there = match &self.path {
            // Our own namespace, entered as is: it cannot go while we run.
            Some(None) => true,
            Some(Some(p)) => crate::enrich::netns::inode_of(p) == Some(inode),
            None => false,
        };
        if leads_there {
            return false;
        }
        let found = crate::enrich::netns::path_of(inode);
        let changed = found != self.path;
        self.path = found;
        changed
    }

    /// Reads the ruleset afresh, forgetting the snapshots read before (through another
    /// way in, maybe of another namespace).
    fn read_afresh(&mut self) {
        self.earlier.clear();
        self.baseline = None;
        self.current = None;
        self.nf_tables = None;
        self.current = self.read();
    }

    /// The first read of a namespace (or of the one its inode now leads to), kept as the
    /// baseline of the accepting rules' counters when `keep_baseline`.
    fn read_first(&mut self, keep_baseline: bool) {
        self.read_afresh();
        if keep_baseline {
            self.baseline.clone_from(&self.current);
        }
    }

    /// Reads the ruleset through `path`; when no nf_tables commit came since the current
    /// read, only the counters (see [`Snapshot::read_since`]).
    fn read(&mut self) -> Option<Snapshot> {
        let path = self.path.as_ref()?;
        if self.nf_tables.is_none() {
            self.nf_tables = nf_tables::NfTables::open(path.as_deref())
                .inspect_err(|e| log::debug!("nf_tables netlink unavailable: {e}"))
                .ok();
        }
        let snap = Snapshot::read_since(
            path.as_deref(),
            self.nf_tables.as_ref(),
            self.current.as_ref(),
        );
        log::debug!(
            "ruleset read in {:?} (nf_tables generation {:?}{})",
            snap.cost,
            snap.generation,
            if snap.counters_only {
                ", counters only"
            } else {
                ""
            }
        );
        Some(snap)
    }

    /// The baseline of the wide window (see [`Attributor::flush`]).
    fn previous(&self) -> Option<&Snapshot> {
        self.earlier.front()
    }

    /// Makes `now` the current read, keeping the earlier ones the wide window needs.
    fn advance(&mut self, now: Snapshot) {
        let newest = now.taken;
        if let Some(old) = self.current.replace(now) {
            self.earlier.push_back(old);
        }
        while self
            .earlier
            .get(1)
            .is_some_and(|next| newest.duration_since(next.taken) >= WIDE_WINDOW)
        {
            self.earlier.pop_front();
        }
    }

    /// Whether its pending records may be confirmed now: the ruleset was last read long
    /// enough ago (see [`read_gap`]).
    fn due(&self) -> bool {
        !self.pending.is_empty()
            && self
                .current
                .as_ref()
                .is_none_or(|c| c.taken.elapsed() >= read_gap(c.cost))
    }
}

/// How much older than the current read the wide window's baseline is at least: a line
/// that sums up packets (a flow's update, a sweep of the flow table) carries drops up to
/// [`tracer_common::FLOW_UPDATE_NS`] older than its record.
const WIDE_WINDOW: Duration = Duration::from_secs(1);

/// The least time between two reads of a namespace's ruleset while drops wait for one:
/// a drop's line waits for the read after it (its rule's counter confirms it), so reads
/// are as frequent as their cost allows — reading takes at most a twelfth of the time,
/// between a quarter of a second and a second apart.
fn read_gap(cost: Duration) -> Duration {
    (cost * 12).clamp(Duration::from_millis(250), Duration::from_secs(1))
}

/// How long after its last drop a namespace's ruleset keeps being re-read every second.
const IDLE_REFRESH: Duration = Duration::from_secs(60);

/// How old a read must be for [`Attributor::refresh_idle`] to read again (a little under
/// its one-second call, so a read made for pending records meanwhile counts).
const IDLE_READ_GAP: Duration = Duration::from_millis(900);

/// Attributes drops namespace by namespace, confirming with counters.
///
/// A record is evaluated against the latest snapshot of its namespace's ruleset (read
/// before the drop) and held until the next [`Attributor::flush`], which reads the ruleset
/// again: when the named rule's packet counter grew by at least the drops attributed to
/// it, the attribution is `exact`. The newer snapshot becomes the reference, so a ruleset
/// change is picked up within one flush.
///
/// The caller drains the kernel's records before each flush, so a packet dropped while
/// the reference was being read is already in its counters though its record arrives
/// after. Such records, and lines that sum up several packets (some may be older), are
/// checked against the growth since the read before the reference, which was done before
/// that drain; a single drop stamped after the reference was read, against the growth
/// since the reference.
#[derive(Default)]
pub struct Attributor {
    namespaces: HashMap<u32, Namespace>,
    /// Keep each namespace's first read (see [`Namespace::baseline`]).
    keep_baselines: bool,
}

impl Attributor {
    /// Reads a namespace's ruleset ahead of its first drop, so that drop can be confirmed.
    pub fn prime(&mut self, netns: u32) {
        let ns = self.namespaces.entry(netns).or_default();
        ns.relocate(netns);
        ns.read_first(self.keep_baselines);
    }

    /// In a capture of every namespace, reads ahead the rulesets of the live namespaces not
    /// known yet, for as long as `budget` allows and up to [`PRIMED_MAX`] namespaces known:
    /// a namespace first read after its first drop has no read to compare that drop's
    /// counter from, and its first line could only be `inferred`. Returns how many it read.
    pub fn prime_new(
        &mut self,
        live: &crate::enrich::netns::LiveNamespaces,
        budget: Duration,
    ) -> usize {
        let started = Instant::now();
        let mut read = 0;
        for inode in live.inodes() {
            if self.namespaces.len() >= PRIMED_MAX || started.elapsed() >= budget {
                break;
            }
            if !self.namespaces.contains_key(&inode) {
                let ns = self.namespaces.entry(inode).or_default();
                ns.path = live.path(inode);
                ns.located = Some(Instant::now());
                ns.read_first(self.keep_baselines);
                read += 1;
            }
        }
        read
    }

    /// Keeps each namespace's first read from now on, for [`Attributor::accepted`].
    pub fn keep_baselines(&mut self) {
        self.keep_baselines = true;
    }
}

impl Attributor {
    /// Forgets the namespaces not in `live` (gone: deleted, their last process exited)
    /// that have nothing pending: a long capture keeps no ruleset of namespaces long gone.
    pub fn forget_gone(&mut self, live: &crate::enrich::netns::LiveNamespaces) {
        self.namespaces
            .retain(|netns, ns| live.has_inode(*netns) || !ns.pending.is_empty());
    }
}

/// Why a namespace's packets are judged against no ruleset.
const GONE: &str = "the namespace is gone or cannot be entered";

impl Attributor {
    /// The namespace's ruleset as read now (found again if its path moved), for judging
    /// packets beside the drop lines; `None` when the namespace is gone ([`GONE`]).
    fn read_now(&mut self, netns: u32) -> Option<Snapshot> {
        let ns = self.namespaces.entry(netns).or_default();
        if ns.relocate(netns) {
            ns.read_afresh();
        }
        ns.read()
    }
}

/// An `exact` answer that rests on an inferred hook is `inferred`, saying why.
fn cap_inferred(a: &mut Attribution, note: &str) {
    if a.attribution == Level::Exact {
        a.attribution = Level::Inferred;
    }
    if !a.why.contains(note) {
        a.why = format!("{note}; {}", a.why);
    }
}

/// The hook of a drop whose stack is unknown (its records were lost, and its line comes
/// from the kernel's flow table), when the ruleset leaves one: of the hooks the packet can
/// pass — from its addresses, by the namespace's `local` routing table: a packet from a
/// local address to another host leaves through OUTPUT and POSTROUTING, one to a local
/// address arrives through PREROUTING and INPUT, one between two other hosts is forwarded
/// — exactly one must have chains that drop it. Never a guess between two.
fn infer_hook(
    rs: &ruleset::Ruleset,
    engine: ruleset::Engine,
    rec: &DropRecord,
) -> Option<(ruleset::Hook, String)> {
    use ruleset::Hook::*;
    let local = rs.local_routes.as_ref()?;
    let hooks: &[ruleset::Hook] = match (local.is_local(rec.src), local.is_local(rec.dst)) {
        (true, true) => &[Output, Postrouting, Prerouting, Input],
        (true, false) => &[Output, Postrouting],
        (false, true) => &[Prerouting, Input],
        (false, false) => &[Prerouting, Forward, Postrouting],
    };
    let packet = packet_of(rec);
    let mut dropping = hooks.iter().filter(|h| {
        !evaluate_candidates(rs, engine, **h, &packet)
            .candidates
            .is_empty()
    });
    let hook = *dropping.next()?;
    if dropping.next().is_some() {
        return None;
    }
    let names: Vec<String> = hooks
        .iter()
        .map(|h| format!("{h:?}").to_uppercase())
        .collect();
    Some((
        hook,
        format!(
            "hook inferred: this flow's records were lost, and of the hooks it can pass ({}) \
             only {} drops it",
            names.join(", "),
            format!("{hook:?}").to_uppercase()
        ),
    ))
}

/// The engine a drop without an engine frame in its stack went through, when the
/// namespace's tables leave one: nf_tables tables only (nft, iptables-nft) or legacy
/// xtables tables only. With both or neither, the guess from the location stays.
fn engine_of_tables(rs: &ruleset::Ruleset, rec: &DropRecord) -> Option<stack::DropEngine> {
    let legacy = rs
        .tables
        .iter()
        .any(|t| t.backend == ruleset::Backend::IptablesLegacy);
    let nf = rs
        .tables
        .iter()
        .any(|t| t.backend != ruleset::Backend::IptablesLegacy);
    match (nf, legacy) {
        (true, false) => Some(stack::DropEngine::nftables(if rec.src.is_ipv6() {
            stack::TableFamily::Ip6
        } else {
            stack::TableFamily::Ip
        })),
        (false, true) => Some(stack::DropEngine::XTABLES),
        _ => None,
    }
}

impl Attributor {
    /// Attributes `rec` (to be confirmed at the next flush).
    pub fn submit(&mut self, mut rec: DropRecord) {
        let ns = self.namespaces.entry(rec.netns).or_default();
        // The record's name was checked against /run/netns as it was made: a new name is a
        // new namespace on a reused inode, to be looked at now rather than within a second.
        if ns.name != rec.netns_name {
            ns.name.clone_from(&rec.netns_name);
            ns.located = None;
        }
        // A namespace seen for the first time, or whose inode went to another namespace.
        if ns.relocate(rec.netns) {
            ns.read_first(self.keep_baselines);
        }
        if rec.engine_guessed
            && let Some(snap) = &ns.current
            && let Some(engine) = engine_of_tables(&snap.ruleset, &rec)
        {
            rec.engine = Some(engine);
            rec.engine_guessed = false;
        }
        // A bridge or arp family chain (nft_do_chain_bridge/_arp on the stack) runs at that
        // family's own hooks, which the routed hook names would mislabel, and the rule
        // engine evaluates neither family: say so rather than name a routed hook or rule.
        let layer2 = rec
            .engine
            .and_then(|e| e.family)
            .filter(|f| matches!(f, stack::TableFamily::Bridge | stack::TableFamily::Arp));
        if layer2.is_some() {
            rec.hook = None;
        }
        let mut query = None;
        // A line read from the flow table after its flow's records were lost has no stack,
        // so no hook: the ruleset may still tell it (see `infer_hook`).
        let mut hook_note = None;
        if rec.hook.is_none()
            && let (Some(snap), Some(engine)) = (&ns.current, rec.engine)
            && let Some((hook, note)) = infer_hook(&snap.ruleset, engine.engine, &rec)
        {
            rec.hook = Some(hook);
            hook_note = Some(note);
        }
        let (attr, candidates) = match (&ns.current, rec.hook.and_then(rule_hook), rec.engine) {
            _ if let Some(family) = layer2 => (
                Attribution::none(format!(
                    "a {family}-family nftables chain dropped it; droptrace does not evaluate \
                     {family}-family rules"
                )),
                Vec::new(),
            ),
            (None, ..) => (
                Attribution::none("the namespace is gone or cannot be entered"),
                Vec::new(),
            ),
            (_, None, _) => (
                Attribution::none("not a netfilter hook droptrace can evaluate"),
                Vec::new(),
            ),
            (_, _, None) => (
                Attribution::none("engine unknown (no nf_tables or xtables frame)"),
                Vec::new(),
            ),
            (Some(snap), Some(hook), Some(engine)) => {
                let engine = engine.engine;
                let packet = packet_of(&rec);
                let mut e = evaluate_candidates(&snap.ruleset, engine, hook, &packet);
                let mut engine = engine;
                if e.candidates.is_empty() && rec.engine_guessed {
                    // The location named no engine for sure (see stack::engine_from_location).
                    let other = match engine {
                        ruleset::Engine::NfTables => ruleset::Engine::Xtables,
                        ruleset::Engine::Xtables => ruleset::Engine::NfTables,
                    };
                    let mut e2 = evaluate_candidates(&snap.ruleset, other, hook, &packet);
                    if !e2.candidates.is_empty() {
                        e2.attribution.why = format!(
                            "{}; the engine is not in the drop's stack and only {}'s rules drop it",
                            e2.attribution.why,
                            if other == ruleset::Engine::NfTables {
                                "nf_tables"
                            } else {
                                "xtables"
                            }
                        );
                        (e, engine) = (e2, other);
                    }
                }
                if let Some(k) = &rec.kernel {
                    weigh_kernel_candidates(&mut e, k, &snap.ruleset);
                }
                query = Some((engine, hook, packet));
                let mut a = e.attribution;
                if a.attribution == Level::None && !snap.problems.is_empty() {
                    a.why = format!("{}; could not read: {}", a.why, snap.problems.join("; "));
                }
                (a, e.candidates)
            }
        };
        let mut attr = attr;
        if let Some(note) = &hook_note {
            cap_inferred(&mut attr, note);
        }
        attr.backends_mixed = ns
            .current
            .as_ref()
            .is_some_and(|s| backends_mixed(&s.ruleset));
        rec.rule = Some(attr);
        ns.last_drop = Some(Instant::now());
        ns.pending.push(Pending {
            record: rec,
            candidates,
            query,
            hook_inferred: hook_note.is_some(),
        });
    }

    pub fn has_pending(&self) -> bool {
        self.namespaces.values().any(|n| !n.pending.is_empty())
    }

    /// Re-reads the ruleset of namespaces that dropped recently but have nothing pending,
    /// so the references stay one second old: a rule inserted meanwhile is known before the
    /// next drop, and the counter window of that drop holds no earlier, already attributed
    /// packets.
    pub fn refresh_idle(&mut self) {
        for (inode, ns) in &mut self.namespaces {
            let recent = ns.last_drop.is_some_and(|t| t.elapsed() < IDLE_REFRESH);
            if !ns.pending.is_empty() || !recent {
                continue;
            }
            let fresh = ns
                .current
                .as_ref()
                .is_some_and(|c| c.taken.elapsed() < IDLE_READ_GAP);
            if ns.relocate(*inode) {
                ns.read_afresh();
            } else if !fresh && let Some(now) = ns.read() {
                ns.advance(now);
            }
        }
    }
}

/// When the counters do not confirm an attribution made against the older ruleset, the
/// ruleset may have changed since (a rule inserted before, a chain flushed): evaluate the
/// packet against the newer one, and take that answer when its rule's counter grew by at
/// least this record's packets (`deltas`, from the older read: a rule inserted since
/// counts from zero). `now` is the first decision as found again in the newer ruleset.
fn reconsider(
    p: &mut Pending,
    now: Option<&DecidedBy>,
    after: &ruleset::Ruleset,
    deltas: &[(DecidedBy, u64)],
) {
    let Some((engine, hook, packet)) = &p.query else {
        return;
    };
    let mut e = evaluate_candidates(after, *engine, *hook, packet);
    if let Some(k) = &p.record.kernel {
        weigh_kernel_candidates(&mut e, k, after);
        if e.attribution.kernel_confirmed
            && let Some(c) = e.candidates.first()
            && now.is_none_or(|d| !d.is_same(&c.decided))
        {
            e.attribution.why = format!(
                "the ruleset changed during the capture; against the new one, {}",
                e.attribution.why
            );
            p.record.rule = Some(e.attribution);
            p.candidates = e.candidates;
        }
        return;
    }
    // Only an answer that does not depend on undecided rules may replace the old one.
    let [c] = e.candidates.as_slice() else {
        return;
    };
    if now.is_some_and(|d| d.is_same(&c.decided)) {
        return;
    }
    // A rule inserted since the older read is in the deltas with its whole counter.
    let grew = deltas
        .iter()
        .find(|(d, _)| d.is_same(&c.decided))
        .map_or(0, |(_, n)| *n);
    if has_counter(&c.decided) && grew >= p.record.count {
        let mut attr = e.attribution;
        attr.attribution = Level::Exact;
        attr.why = format!(
            "the ruleset changed during the capture; evaluated against the new one, whose rule's counter grew by {grew}"
        );
        p.record.rule = Some(attr);
        p.candidates = e.candidates;
    }
}

/// A drop that no rule of the ruleset could have made, whatever the undecided rules say.
/// When the ruleset did not change between the reads around the drop, netfilter's core
/// dropped it (conntrack on a packet it judged invalid, NAT that found no free tuple, a
/// hook outside the rules); said plainly, with what the kernel showed. When it did change,
/// the rule may be gone: said so, and only then.
fn no_rule_dropped(rec: &mut DropRecord, unchanged: bool, cause: Option<Cause>) {
    let ct = rec.ct_state.as_str();
    let location = rec.location.clone();
    let Some(a) = rec.rule.as_mut() else {
        return;
    };
    let accepts = match a.why.strip_prefix("the ruleset as read ") {
        Some(rest) => rest.to_string(),
        None => format!("has no rule that drops it ({})", a.why),
    };
    if let Some(mut cause) = cause {
        // A rule removed meanwhile may have dropped it instead.
        cause.certain &= unchanged;
        a.why = format!(
            "{}; no rule dropped it: the ruleset {}{accepts}; netfilter's core dropped it in \
             {location}",
            cause.text(),
            if unchanged {
                "unchanged since before the drop, "
            } else {
                "changed during the capture, and as read now "
            },
        );
        a.cause = Some(cause);
        return;
    }
    a.why = if unchanged {
        let hint = if ct == "none" {
            "; the packet has no conntrack entry: conntrack may have judged it invalid \
             (nf_conntrack_in drops, for one, ICMP errors and redirects it cannot match)"
        } else {
            ""
        };
        format!(
            "no rule dropped it: the ruleset, unchanged since before the drop, {accepts}; \
             netfilter's core dropped it in {location} (conntrack state {ct}){hint}"
        )
    } else {
        format!(
            "the ruleset changed during the capture and as read now {accepts}: the rule that \
             dropped it may have been removed"
        )
    };
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernel::verdicts::KernelSaw;

    fn unattributed(why: &str) -> DropRecord {
        let mut r = crate::record::tests::sample();
        r.rule = Some(Attribution::none(why));
        r.ct_state = crate::kernel::drop::CtInfo::NONE;
        r.location = "nf_hook_slow".into();
        r
    }

    /// No dropping rule and an unchanged ruleset: netfilter's core, said plainly; a changed
    /// ruleset is mentioned only when it changed.
    #[test]
    fn drops_no_rule_made_say_so_and_blame_a_change_only_when_there_was_one() {
        let mut r = unattributed("the ruleset as read accepts this packet");
        no_rule_dropped(&mut r, true, None);
        let why = &r.rule.as_ref().unwrap().why;
        assert!(
            why.starts_with("no rule dropped it: the ruleset, unchanged"),
            "{why}"
        );
        assert!(
            why.contains("netfilter's core dropped it in nf_hook_slow"),
            "{why}"
        );
        assert!(why.contains("conntrack state none"), "{why}");
        assert!(!why.contains("changed during"), "{why}");
        let mut r = unattributed("the ruleset as read accepts this packet");
        no_rule_dropped(&mut r, false, None);
        let why = &r.rule.as_ref().unwrap().why;
        assert!(
            why.starts_with("the ruleset changed during the capture"),
            "{why}"
        );
    }

    #[test]
    fn the_engine_of_a_drop_without_engine_frames_follows_the_tables_present() {
        let (rs, _) = incident();
        let r = crate::record::tests::sample();
        assert_eq!(
            engine_of_tables(&rs, &r),
            Some(stack::DropEngine::nftables(stack::TableFamily::Ip))
        );
        let none = ruleset::Ruleset::default();
        assert_eq!(engine_of_tables(&none, &r), None);
    }

    /// The brief's rule, confirmed: filter/OUTPUT rule 4, exact.
    pub(crate) fn brief_rule() -> Attribution {
        Attribution {
            backend: Some("iptables-nft".into()),
            table_family: Some("ip".into()),
            table: Some("filter".into()),
            chain: Some("OUTPUT".into()),
            rule: Some("-A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP".into()),
            rule_num: Some(4),
            rule_handle: None,
            verdict: Some("DROP".into()),
            attribution: Level::Exact,
            why: "counter grew".into(),
            alternatives: Vec::new(),
            owner: None,
            kernel_confirmed: false,
            backends_mixed: false,
            cause: None,
        }
    }

    /// iptables-legacy rules beside iptables-nft's: the label names the backend (so the
    /// summary counts each apart) and says how to list the rule there.
    #[test]
    fn two_backends_name_the_rules_backend_and_how_to_list_it() {
        let mut a = brief_rule();
        assert_eq!(
            a.list_command().unwrap(),
            "iptables-nft -t filter -L OUTPUT --line-numbers -v"
        );
        a.backend = Some("iptables-legacy".into());
        a.backends_mixed = true;
        assert_eq!(
            a.label().unwrap(),
            "iptables-legacy filter/OUTPUT rule 4 `-A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP`"
        );
        assert_eq!(
            a.list_command().unwrap(),
            "iptables-legacy -t filter -L OUTPUT --line-numbers -v"
        );
        let mut rs = ipt_nft_v4("*filter\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n");
        assert!(!backends_mixed(&rs));
        let mut legacy = rs.tables[0].clone();
        legacy.backend = ruleset::Backend::IptablesLegacy;
        rs.tables.push(legacy);
        assert!(backends_mixed(&rs));
    }

    #[test]
    fn labels_read_like_the_brief() {
        let a = brief_rule();
        assert_eq!(
            a.label().unwrap(),
            "filter/OUTPUT rule 4 `-A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP`"
        );
        let p = Attribution {
            rule: None,
            rule_num: None,
            verdict: Some("policy".into()),
            ..a
        };
        assert_eq!(p.label().unwrap(), "filter/OUTPUT policy DROP");
        assert_eq!(Attribution::none("no ruleset").label(), None);
        // ip6tables' tables and nftables' are named with their family: `inet filter` and
        // `ip filter` are different tables.
        let v6 = Attribution {
            table_family: Some("ip6".into()),
            ..p.clone()
        };
        assert_eq!(v6.label().unwrap(), "ip6 filter/OUTPUT policy DROP");
        let nft = Attribution {
            backend: Some("nftables".into()),
            table_family: Some("inet".into()),
            chain: Some("input".into()),
            rule: Some("tcp dport 8443 drop".into()),
            rule_num: None,
            rule_handle: Some(7),
            verdict: Some("DROP".into()),
            ..p
        };
        assert_eq!(
            nft.label().unwrap(),
            "inet filter/input handle 7 `tcp dport 8443 drop`"
        );
    }

    pub(super) fn incident_for_candidates() -> (ruleset::Ruleset, ruleset::Packet) {
        incident()
    }

    /// The incident ruleset as iptables-nft shows it, and the packet of the brief.
    /// An iptables-save text as iptables-nft would load it (IPv4).
    pub(super) fn ipt_nft_v4(save: &str) -> ruleset::Ruleset {
        ruleset::iptables_save::parse_ruleset(
            save,
            ruleset::Backend::IptablesNft,
            ruleset::Family::Ipv4,
        )
        .unwrap()
    }

    fn incident() -> (ruleset::Ruleset, ruleset::Packet) {
        let save = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
            -A OUTPUT -o lo -j ACCEPT\n-A OUTPUT -p udp -m udp --dport 53 -j ACCEPT\n\
            -A OUTPUT -p tcp -m tcp --dport 443 -j ACCEPT\n\
            -A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP\nCOMMIT\n";
        let rs = ipt_nft_v4(save);
        let packet = packet_of(&crate::record::tests::sample());
        (rs, packet)
    }

    /// The incident packet evaluated in nf_tables' OUTPUT.
    fn evaluated(
        rs: &ruleset::Ruleset,
        packet: &ruleset::Packet,
    ) -> (Attribution, Option<DecidedBy>, Vec<ruleset::ChainRef>) {
        let e = evaluate_candidates(rs, ruleset::Engine::NfTables, ruleset::Hook::Output, packet);
        let first = e.candidates.into_iter().next();
        (
            e.attribution,
            first.as_ref().map(|c| c.decided.clone()),
            first.map(|c| c.path).unwrap_or_default(),
        )
    }

    fn saw(engine: u8, table: &str, chain: Option<&str>) -> KernelSaw {
        KernelSaw {
            function: if engine == tracer_common::engine::NFTABLES {
                "nft_do_chain"
            } else {
                "ipt_do_table"
            },
            engine,
            family: Some(stack::TableFamily::Ip),
            hook: Some(stack::Hook::Output),
            table: table.into(),
            chain: chain.map(str::to_string),
        }
    }

    #[test]
    fn kernel_agreement_makes_the_evaluated_rule_exact() {
        let (rs, packet) = incident();
        let (mut a, d, path) = evaluated(&rs, &packet);
        assert_eq!(a.rule_num, Some(4));
        let k = saw(tracer_common::engine::NFTABLES, "filter", Some("OUTPUT"));
        weigh_kernel(&mut a, d.as_ref(), &path, &k, &rs);
        assert_eq!(a.attribution, Level::Exact);
        assert!(a.kernel_confirmed);
        assert_eq!(a.rule_num, Some(4));
        assert!(
            a.why.starts_with(
                "the kernel confirmed it: nft_do_chain returned DROP in ip filter OUTPUT"
            ),
            "{}",
            a.why
        );
    }

    #[test]
    fn kernel_disagreement_keeps_the_kernels_chain() {
        let (rs, packet) = incident();
        let (mut a, d, path) = evaluated(&rs, &packet);
        // A table the ruleset as read does not have (added after the read).
        let k = saw(tracer_common::engine::NFTABLES, "hardening", Some("out"));
        weigh_kernel(&mut a, d.as_ref(), &path, &k, &rs);
        assert_eq!(a.attribution, Level::Chain);
        assert!(!a.kernel_confirmed);
        assert_eq!(a.backend.as_deref(), Some("nftables"));
        assert_eq!(
            (a.table.as_deref(), a.chain.as_deref()),
            (Some("hardening"), Some("out"))
        );
        assert_eq!(a.rule, None);
        assert!(
            a.why.contains("evaluation named filter/OUTPUT rule 4"),
            "{}",
            a.why
        );

        // The legacy engine dropped it, but evaluation found an iptables-nft rule.
        let (mut a, d, path) = evaluated(&rs, &packet);
        let k = saw(tracer_common::engine::XTABLES, "filter", None);
        weigh_kernel(&mut a, d.as_ref(), &path, &k, &rs);
        assert_eq!(a.attribution, Level::Chain);
        assert_eq!(a.backend.as_deref(), Some("iptables-legacy"));
        assert_eq!(a.chain.as_deref(), Some("OUTPUT"));
    }
}

#[cfg(test)]
mod candidate_tests {
    use super::*;

    /// ufw's INPUT path (from ufw's own before.rules/user.rules as `iptables-save -c` shows
    /// them, cut to the rules this packet meets): `ufw-not-local` returns for local
    /// destinations (`-m addrtype`, undecidable here) and drops the rest; the INPUT policy
    /// drops what no rule accepted.
    fn ufw() -> ruleset::Ruleset {
        let save = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
            :ufw-before-input - [0:0]\n:ufw-not-local - [0:0]\n\
            [0:0] -A INPUT -j ufw-before-input\n\
            [0:0] -A ufw-before-input -i lo -j ACCEPT\n\
            [0:0] -A ufw-before-input -j ufw-not-local\n\
            [0:0] -A ufw-not-local -m addrtype --dst-type LOCAL -j RETURN\n\
            [0:0] -A ufw-not-local -m limit --limit 3/min --limit-burst 10 -j LOG\n\
            [0:0] -A ufw-not-local -j DROP\nCOMMIT\n";
        tests::ipt_nft_v4(save)
    }

    /// With the namespace's local routes read, ufw-not-local's RETURN is decided: one
    /// candidate, the INPUT policy, and nothing for the counters to choose between.
    #[test]
    fn local_routes_decide_ufw_not_local() {
        let mut rs = ufw();
        rs.local_routes = Some(
            ruleset::addrtype::LocalTable::from_ip_json(
                r#"[{"type":"local","dst":"203.0.113.10","dev":"eth0"}]"#,
            )
            .unwrap(),
        );
        let e = evaluate_candidates(
            &rs,
            ruleset::Engine::NfTables,
            ruleset::Hook::Input,
            &packet(),
        );
        assert_eq!(e.candidates.len(), 1);
        assert_eq!(e.attribution.label().unwrap(), "filter/INPUT policy DROP");
        assert!(e.attribution.alternatives.is_empty());
    }

    /// A candidate's why lists only the undecided rules met before its verdict: not those
    /// of a chain that runs after it (here nat at -100, after mangle's drop at -150), which
    /// the packet reaches only if the dropping rule does not match.
    #[test]
    fn a_candidates_why_leaves_out_rules_after_its_verdict() {
        let save = "*mangle\n:OUTPUT ACCEPT [0:0]\n\
            [0:0] -A OUTPUT -m addrtype --dst-type LOCAL -j DROP\nCOMMIT\n\
            *nat\n:OUTPUT ACCEPT [0:0]\n\
            [0:0] -A OUTPUT -m addrtype --dst-type LOCAL -p tcp -j DNAT --to-destination 192.0.2.1\n\
            [0:0] -A OUTPUT -m addrtype --dst-type LOCAL -p udp -j DNAT --to-destination 192.0.2.2\n\
            COMMIT\n";
        let rs = tests::ipt_nft_v4(save);
        let mut p = packet();
        p.ct_state = Some(ruleset::CtState::New);
        let e = evaluate_candidates(&rs, ruleset::Engine::NfTables, ruleset::Hook::Output, &p);
        let a = &e.attribution;
        assert_eq!(
            a.label().unwrap(),
            "mangle/OUTPUT rule 1 `-A OUTPUT -m addrtype --dst-type LOCAL -j DROP`"
        );
        assert!(!a.why.contains("nat/OUTPUT"), "{}", a.why);
        assert!(
            a.why
                .contains("taken as matching: mangle/OUTPUT rule 1 (destination address type"),
            "{}",
            a.why
        );
    }

    /// A flow read from the flow table without a stack: its hook comes from the only
    /// plausible hook whose chains drop it, and never from a choice between two.
    #[test]
    fn a_lost_flows_hook_is_inferred_only_when_one_hook_drops_it() {
        let local = ruleset::addrtype::LocalTable::from_ip_json(
            r#"[{"type":"local","dst":"198.51.100.2","dev":"veth-c"}]"#,
        )
        .unwrap();
        let mut rec = crate::record::tests::sample();
        rec.hook = None;
        // From the local 198.51.100.2 to another host: OUTPUT or POSTROUTING.
        rec.src = "198.51.100.2".parse().unwrap();
        rec.dst = "203.0.113.10".parse().unwrap();
        let ruleset = |save: &str| {
            let mut rs = tests::ipt_nft_v4(save);
            rs.local_routes = Some(local.clone());
            rs
        };
        let output_only = ruleset(
            "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             [0:0] -A OUTPUT -p tcp --dport 8443 -j DROP\nCOMMIT\n",
        );
        let (hook, why) = infer_hook(&output_only, ruleset::Engine::NfTables, &rec).unwrap();
        assert_eq!(hook, ruleset::Hook::Output);
        assert!(why.contains("only OUTPUT drops it"), "{why}");
        // INPUT's policy would drop it too, but it cannot pass INPUT.
        let both = ruleset(
            "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n\
             :OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
             [0:0] -A POSTROUTING -p tcp -j DROP\nCOMMIT\n\
             *filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             [0:0] -A OUTPUT -p tcp -j DROP\nCOMMIT\n",
        );
        assert_eq!(
            infer_hook(&both, ruleset::Engine::NfTables, &rec),
            None,
            "OUTPUT and POSTROUTING both drop it: no hook named"
        );
        // Without the local routes, nothing is inferred.
        let mut unknown = output_only.clone();
        unknown.local_routes = None;
        assert_eq!(infer_hook(&unknown, ruleset::Engine::NfTables, &rec), None);
    }

    fn packet() -> ruleset::Packet {
        let mut p = packet_of(&crate::record::tests::sample());
        p.iif = Some("eth0".into());
        p.oif = None;
        p.uid = None;
        p
    }

    fn candidates() -> (Attribution, Vec<Candidate>) {
        let e = evaluate_candidates(
            &ufw(),
            ruleset::Engine::NfTables,
            ruleset::Hook::Input,
            &packet(),
        );
        (e.attribution, e.candidates)
    }

    fn evidence(grew: &[Option<u64>], want: u64) -> Vec<Evidence> {
        grew.iter()
            .map(|&g| Evidence {
                counted: true,
                grew: g,
                want,
            })
            .collect()
    }

    #[test]
    fn both_outcomes_are_candidates_and_listed() {
        let (a, c) = candidates();
        assert_eq!(c.len(), 2);
        assert_eq!(a.rule_num, Some(3), "main path: the chain's DROP");
        assert_eq!(a.attribution, Level::Inferred);
        assert_eq!(a.alternatives.len(), 1);
        assert!(
            a.alternatives[0].contains("filter/INPUT policy DROP"),
            "{a:?}"
        );
        assert!(a.alternatives[0].contains("if filter/ufw-not-local rule 1 matched"));
    }

    #[test]
    fn the_counters_choose_the_candidate_that_grew() {
        let (mut a, c) = candidates();
        // The chain's DROP did not grow; the policy did, by the drop seen.
        let chosen = confirm(&mut a, &c, &evidence(&[Some(0), Some(1)], 1));
        assert_eq!(chosen, 1);
        assert_eq!(a.label().unwrap(), "filter/INPUT policy DROP");
        assert_eq!(a.attribution, Level::Exact, "{}", a.why);
        assert!(a.alternatives.is_empty());
    }

    #[test]
    fn counters_that_cannot_tell_leave_it_inferred_with_every_alternative() {
        // Both grew: other traffic may have hit one of them.
        let (mut a, c) = candidates();
        let chosen = confirm(&mut a, &c, &evidence(&[Some(2), Some(1)], 1));
        assert_eq!(chosen, 0);
        assert_eq!(a.attribution, Level::Inferred);
        assert_eq!(a.alternatives.len(), 1);
        // Neither grew: never exact, first named, alternatives listed.
        let (mut a, c) = candidates();
        confirm(&mut a, &c, &evidence(&[Some(0), Some(0)], 1));
        assert_eq!(a.attribution, Level::Inferred);
        assert!(a.why.contains("do not single one out"), "{}", a.why);
        // One grew but another has no counter to rule it out.
        let (mut a, c) = candidates();
        let mut ev = evidence(&[Some(0), Some(1)], 1);
        ev[0].counted = false;
        let chosen = confirm(&mut a, &c, &ev);
        assert_eq!(chosen, 1, "the one whose counter grew is named");
        assert_eq!(a.attribution, Level::Inferred);
        // Grew by less than the drops seen: not exact either.
        let (mut a, c) = candidates();
        confirm(&mut a, &c, &evidence(&[Some(0), Some(1)], 3));
        assert_eq!(a.attribution, Level::Inferred);
    }

    #[test]
    fn a_kernel_confirmed_rule_whose_counter_lags_is_not_exact() {
        let (rs, packet) = tests::incident_for_candidates();
        let e = evaluate_candidates(
            &rs,
            ruleset::Engine::NfTables,
            ruleset::Hook::Output,
            &packet,
        );
        let mut a = e.attribution.clone();
        a.attribution = Level::Exact;
        a.kernel_confirmed = true;
        confirm(&mut a, &e.candidates, &evidence(&[Some(1)], 3));
        assert_eq!(a.attribution, Level::Inferred, "{}", a.why);
        assert!(a.why.contains("fewer than the 3 drop(s)"));
    }
}
