//! Walks the ruleset the way netfilter would and names what decided.
//!
//! The kernel runs every base chain registered on a hook, lowest priority
//! first; iptables tables are base chains too (raw -300, mangle -150, nat
//! -100/100, filter 0, security 50), so one walk covers iptables-nft, legacy
//! and native nftables alike. ACCEPT ends only the current base chain; DROP,
//! REJECT and QUEUE end the packet's trip through the hook.
//!
//! Packet fields are taken as reported at drop time; rules that rewrite them
//! on the way (MARK, NAT) are not replayed. A rule that cannot be decided
//! forks the walk: the main answer takes it as not matching and lists it in
//! [`Evaluation::undecided`]; [`Evaluation::alternatives`] holds where the
//! walk ends when such rules are taken as matching. The caller chooses among
//! them with evidence (the kernel's rule counters) instead of this crate
//! guessing.

use std::{borrow::Cow, fmt};

use serde::Serialize;

use crate::matching::{Outcome, match_outcome, rule_matches};
use crate::model::{
    Backend, BaseChain, Chain, ChainKind, ChainRef, Condition, DecidedBy, MarkOf, MarkWrite,
    Policy, Rule, RuleRef, Ruleset, Table, Target,
};
use crate::packet::{CtState, Direction, Family, Hook, Packet};
use crate::recent::RecentFinding;

/// The fate of the packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Accept,
    Drop,
    Reject {
        with: Option<String>,
    },
    /// Handed to userspace (NFQUEUE), which decides.
    Queue,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Reject { with: Some(with) } => write!(f, "reject ({with})"),
            Verdict::Reject { with: None } => f.write_str("reject"),
            Verdict::Queue => f.write_str("queue"),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    pub verdict: Verdict,
    /// For a drop, reject or queue: the rule or policy that decided. For an
    /// accept (every base chain let the packet through): the last rule that
    /// accepted it, or the last chain's policy if no rule did.
    pub by: DecidedBy,
    /// Every chain entered, in order: base chains and jump/goto targets.
    pub path: Vec<ChainRef>,
    /// Rules before the decision whose matches could not be decided, with
    /// why; they were taken as not matching. Rules with non-terminal targets
    /// (LOG, MARK, ...) are left out since they cannot change the verdict.
    pub undecided: Vec<(RuleRef, String)>,
    /// The other places the walk can end, one per combination of undecided
    /// rules taken as matching (those that lead somewhere else than the main
    /// answer, first found first); at most [`MAX_FORKED_WALKS`] combinations
    /// are walked.
    pub alternatives: Vec<Alternative>,
    /// More combinations existed than [`MAX_FORKED_WALKS`] walks could try:
    /// the list may miss an outcome.
    pub alternatives_truncated: bool,
    /// The packet's marks when the main walk ended: what the next hook's rules see.
    #[serde(skip)]
    pub marks_after: Marks,
}

/// A packet's two marks as a walk leaves them; `None`: not known (a rule set it from what
/// is not read, or the walk began without it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    pub mark: Option<u32>,
    pub ct_mark: Option<u32>,
}

impl Marks {
    /// The marks `packet` carries.
    pub fn of(packet: &Packet) -> Marks {
        Marks {
            mark: (!packet.unknown.mark).then_some(packet.mark),
            ct_mark: (!packet.unknown.ct_mark).then_some(packet.ct_mark),
        }
    }
}

/// Where the walk ends when some undecided rules match.
#[derive(Clone, Debug, Serialize)]
pub struct Alternative {
    pub verdict: Verdict,
    pub by: DecidedBy,
    pub path: Vec<ChainRef>,
    /// The undecided rules taken as matching on this path; every other
    /// undecided rule on it was taken as not matching.
    pub assuming: Vec<RuleRef>,
    /// Every undecided rule this walk met before it ended, with why (those in
    /// `assuming` among them): only these can change this outcome, not rules of
    /// chains the packet reaches only when the walk goes on.
    pub undecided: Vec<(RuleRef, String)>,
    /// The packet's marks when this walk ended (see [`Evaluation::marks_after`]).
    #[serde(skip)]
    pub marks_after: Marks,
}

impl Evaluation {
    /// Every outcome the undecided rules allow: the main answer first (as an
    /// [`Alternative`] assuming nothing), then the alternatives.
    pub fn outcomes(&self) -> impl Iterator<Item = Alternative> + '_ {
        std::iter::once(Alternative {
            verdict: self.verdict.clone(),
            by: self.by.clone(),
            path: self.path.clone(),
            assuming: Vec::new(),
            undecided: self.undecided.clone(),
            marks_after: self.marks_after,
        })
        .chain(self.alternatives.iter().cloned())
    }
}

/// How many other combinations are walked at most: every undecided rule
/// doubles them, and real rulesets put few of them on one packet's path.
pub const MAX_FORKED_WALKS: usize = 32;

/// Deeper than any real ruleset nests; nftables itself stops at 16.
const MAX_CALL_DEPTH: usize = 64;
/// Guards against a goto loop in hand-written input (the kernel would have
/// refused to load it).
const MAX_RULE_VISITS: usize = 100_000;

/// Evaluates `packet` on `hook` against the base chains of the tables whose
/// backend is in `backends` (see [`crate::model::Engine::backends`]) and whose
/// family sees `family` (`ip`/`ip6` tables, and nft `inet` for both).
/// `family` is normally `packet.family`.
pub fn evaluate(
    ruleset: &Ruleset,
    backends: &[Backend],
    family: Family,
    hook: Hook,
    packet: &Packet,
) -> Evaluation {
    let main = walk_once(ruleset, backends, family, hook, packet, &[]);
    // Every undecided rule met is a fork: take it as matching, with the ones
    // before it as on the path being extended. Depth first, main path's forks
    // first.
    let forks = |choices: &[bool], met: usize| {
        (choices.len()..met)
            .rev()
            .map(|i| {
                let mut next = choices.to_vec();
                next.resize(i, false);
                next.push(true);
                next
            })
            .collect::<Vec<_>>()
    };
    let mut todo = forks(&[], main.choices_met);
    let mut alternatives: Vec<Alternative> = Vec::new();
    let mut walks = 0;
    while let Some(choices) = todo.pop() {
        if walks == MAX_FORKED_WALKS {
            todo.push(choices);
            break;
        }
        walks += 1;
        let run = walk_once(ruleset, backends, family, hook, packet, &choices);
        todo.extend(forks(&choices, run.choices_met));
        let same_end =
            |verdict: &Verdict, by: &DecidedBy| *verdict == run.verdict && by.is_same(&run.by);
        if same_end(&main.verdict, &main.by)
            || alternatives.iter().any(|a| same_end(&a.verdict, &a.by))
        {
            continue;
        }
        alternatives.push(Alternative {
            verdict: run.verdict,
            by: run.by,
            path: run.path,
            assuming: run.assumed,
            undecided: run.undecided,
            marks_after: run.marks_after,
        });
    }
    Evaluation {
        verdict: main.verdict,
        by: main.by,
        path: main.path,
        undecided: main.undecided,
        alternatives,
        alternatives_truncated: !todo.is_empty(),
        marks_after: main.marks_after,
    }
}

/// One walk, with the undecided rules met taken as `choices` says in order
/// (true: matching), and as not matching past its end.
struct Run {
    verdict: Verdict,
    by: DecidedBy,
    path: Vec<ChainRef>,
    undecided: Vec<(RuleRef, String)>,
    assumed: Vec<RuleRef>,
    /// How many undecided rules the walk met (each one a fork).
    choices_met: usize,
    marks_after: Marks,
}

fn walk_once(
    ruleset: &Ruleset,
    backends: &[Backend],
    family: Family,
    hook: Hook,
    packet: &Packet,
    choices: &[bool],
) -> Run {
    // NAT chains see only a connection's first packet.
    let nat_runs = matches!(packet.ct_state, None | Some(CtState::New));
    let base_chains = base_chains(ruleset, backends, family, hook, |base| {
        base.kind != ChainKind::Nat || nat_runs
    });

    let mut walk = Walk::new(ruleset, packet, choices);
    let mut verdict = Verdict::Accept;
    let mut by = DecidedBy::NoBaseChain;
    let mut accepted_by_rule = None;
    for (table, chain, base) in base_chains {
        let (chain_verdict, chain_by) = walk.base_chain(table, chain, base);
        if chain_verdict != Verdict::Accept {
            verdict = chain_verdict;
            by = chain_by;
            break;
        }
        if matches!(chain_by, DecidedBy::Rule(_)) {
            accepted_by_rule = Some(chain_by.clone());
        }
        by = chain_by;
    }
    if verdict == Verdict::Accept
        && let Some(rule) = accepted_by_rule
    {
        by = rule;
    }
    Run {
        verdict,
        by,
        marks_after: Marks::of(&walk.packet),
        path: walk.path,
        undecided: walk.undecided,
        assumed: walk.assumed,
        choices_met: walk.choices_met,
    }
}

/// The base chains on `hook` of the tables in `backends` that see `family` and that
/// `runs` keeps, in the order the kernel runs them: by priority, equal priorities in the
/// order the tables were listed (a stable sort).
fn base_chains<'a>(
    ruleset: &'a Ruleset,
    backends: &[Backend],
    family: Family,
    hook: Hook,
    runs: impl Fn(&BaseChain) -> bool,
) -> Vec<(&'a Table, &'a Chain, BaseChain)> {
    let runs = &runs;
    let mut chains: Vec<(&Table, &Chain, BaseChain)> = ruleset
        .tables
        .iter()
        .filter(|table| backends.contains(&table.backend) && table.family.sees(family))
        .flat_map(|table| {
            table.chains.iter().filter_map(move |chain| {
                let base = chain.base?;
                (base.hook == hook && runs(&base)).then_some((table, chain, base))
            })
        })
        .collect();
    chains.sort_by_key(|(_, _, base)| base.priority);
    chains
}

/// What the nat chains on `hook` do to the first packet of a new connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NatBinding {
    /// No nat rule translates it.
    Untranslated,
    /// `rule` translates it, with `action` (DNAT, REDIRECT, masquerade, ...).
    By { rule: RuleRef, action: String },
    /// Rules that cannot be decided come first, with why.
    Undecided(Vec<(RuleRef, String)>),
}

/// Walks the nat base chains on `hook` of every table in `backends` the way the kernel
/// binds a new connection: in priority order, until one of them translates it
/// (`nf_nat_inet_fn`, net/netfilter/nf_nat_core.c, stops at the first binding).
/// `explain` uses it to know whether a connection it describes can carry `ct status dnat`.
pub fn nat_binding(
    ruleset: &Ruleset,
    backends: &[Backend],
    family: Family,
    hook: Hook,
    packet: &Packet,
) -> NatBinding {
    let chains = base_chains(ruleset, backends, family, hook, |base| {
        base.kind == ChainKind::Nat
    });
    let mut walk = Walk::new(ruleset, packet, &[]);
    for (table, chain, base) in chains {
        let (verdict, _) = walk.base_chain(table, chain, base);
        if !walk.undecided.is_empty() {
            return NatBinding::Undecided(walk.undecided);
        }
        if let Some((rule, action)) = walk.bound_by.take() {
            return NatBinding::By { rule, action };
        }
        if verdict != Verdict::Accept {
            // Dropped before any binding: nothing was translated.
            break;
        }
    }
    NatBinding::Untranslated
}

/// Whether conntrack sees a packet at all: a notrack rule in a chain that runs before it
/// keeps it away, and every later rule, of either engine, sees the packet UNTRACKED.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conntrack {
    /// No notrack rule takes the packet: conntrack tracks it.
    Tracks,
    /// `rule` keeps conntrack away from it.
    SkippedBy(RuleRef),
    /// `rule` does if it matches, which cannot be decided (why).
    MaybeSkippedBy(RuleRef, String),
}

/// The conntrack hook's priority (NF_IP_PRI_CONNTRACK, include/uapi/linux/netfilter_ipv4.h;
/// the same for IPv6): chains before it run on packets not yet tracked.
const CONNTRACK_PRIORITY: i32 = -200;

/// Walks the chains on `hook` (PREROUTING for a packet that arrives, OUTPUT for one the
/// host sends) that run before conntrack, of every table in both engines, in priority
/// order, as `nf_conntrack_in` would find the packet: a matching notrack rule there
/// (net/netfilter/xt_CT.c `notrack_tg`, nft_ct.c `nft_notrack_eval`) leaves it untracked.
pub fn conntrack_skipped(
    ruleset: &Ruleset,
    family: Family,
    hook: Hook,
    packet: &Packet,
) -> Conntrack {
    let chains = base_chains(ruleset, &Backend::ALL, family, hook, |base| {
        base.priority < CONNTRACK_PRIORITY
    });
    let mut walk = Walk::new(ruleset, packet, &[]);
    for (table, chain, base) in chains {
        let (verdict, _) = walk.base_chain(table, chain, base);
        match walk.untracked_by.take() {
            // An undecided rule before it could have ended the chain first.
            Some((rule, None)) if !walk.undecided.is_empty() => {
                let first: Vec<String> = walk
                    .undecided
                    .iter()
                    .map(|(r, why)| format!("{r} ({why})"))
                    .collect();
                return Conntrack::MaybeSkippedBy(
                    rule,
                    format!("unless one of these decides first: {}", first.join("; ")),
                );
            }
            Some((rule, None)) => return Conntrack::SkippedBy(rule),
            Some((rule, Some(why))) => return Conntrack::MaybeSkippedBy(rule, why),
            None => {}
        }
        if verdict != Verdict::Accept {
            break;
        }
    }
    Conntrack::Tracks
}

struct Walk<'a> {
    ruleset: &'a Ruleset,
    /// The packet as the next rule sees it: with the marks earlier rules set.
    packet: Cow<'a, Packet>,
    path: Vec<ChainRef>,
    undecided: Vec<(RuleRef, String)>,
    /// How to take the undecided rules met, in order (see [`walk_once`]).
    choices: &'a [bool],
    choices_met: usize,
    assumed: Vec<RuleRef>,
    /// The NAT rule that ended the last base chain walked, with its action.
    bound_by: Option<(RuleRef, String)>,
    /// The first rule met that keeps conntrack away from the packet (see
    /// [`conntrack_skipped`]), or one that may, undecided: `(rule, why undecided)`.
    untracked_by: Option<(RuleRef, Option<String>)>,
}

struct Frame<'a> {
    chain: &'a Chain,
    next_rule: usize,
}

impl<'a> Walk<'a> {
    /// A walk of `packet` that takes the undecided rules it meets as `choices` says.
    fn new(ruleset: &'a Ruleset, packet: &'a Packet, choices: &'a [bool]) -> Walk<'a> {
        Walk {
            ruleset,
            packet: Cow::Borrowed(packet),
            path: Vec::new(),
            undecided: Vec::new(),
            choices,
            choices_met: 0,
            assumed: Vec::new(),
            bound_by: None,
            untracked_by: None,
        }
    }

    fn base_chain(
        &mut self,
        table: &'a Table,
        base_chain: &'a Chain,
        base: BaseChain,
    ) -> (Verdict, DecidedBy) {
        let policy = || {
            let by = DecidedBy::Policy(ChainRef::of(table, base_chain));
            match base.policy {
                Policy::Accept => (Verdict::Accept, by),
                Policy::Drop => (Verdict::Drop, by),
            }
        };
        self.path.push(ChainRef::of(table, base_chain));
        let mut stack = vec![Frame {
            chain: base_chain,
            next_rule: 0,
        }];
        let mut visits = 0;
        loop {
            // Falling off the base chain, or RETURN from it: the policy.
            let Some(frame) = stack.last_mut() else {
                return policy();
            };
            let chain = frame.chain;
            let Some(rule) = chain.rules.get(frame.next_rule) else {
                stack.pop();
                continue;
            };
            frame.next_rule += 1;
            let rule_ref = || RuleRef::of(table, chain, rule);

            visits += 1;
            if visits > MAX_RULE_VISITS {
                self.undecided.push((
                    rule_ref(),
                    format!("gave up after {MAX_RULE_VISITS} rules; does the ruleset loop?"),
                ));
                return policy();
            }

            match rule_matches(rule, &self.packet, self.ruleset) {
                Outcome::Match => {
                    self.write_marks(&rule.sets_marks);
                    self.write_recent(rule);
                    if rule.untracks() && self.untracked_by.is_none() {
                        self.untracked_by = Some((rule_ref(), None));
                    }
                }
                Outcome::NoMatch => continue,
                Outcome::Undecidable(reason) => {
                    // A non-terminal target (LOG, MARK, ...) cannot change the verdict;
                    // the marks it may have set are not known any more.
                    if matches!(rule.target, Target::Continue { .. }) {
                        self.forget_marks(&rule.sets_marks);
                        if rule.untracks() && self.untracked_by.is_none() {
                            self.untracked_by = Some((rule_ref(), Some(reason)));
                        }
                        continue;
                    }
                    self.undecided.push((rule_ref(), reason));
                    if !self.take_as_matching(rule_ref) {
                        continue;
                    }
                    self.write_marks(&rule.sets_marks);
                    self.write_recent(rule);
                }
            }

            let target = match &rule.target {
                Target::VerdictMap { arms } => match self.verdict_map_arm(arms, rule_ref) {
                    Some(target) => target,
                    None => continue,
                },
                target => target,
            };
            match target {
                Target::Accept => return (Verdict::Accept, DecidedBy::Rule(rule_ref())),
                Target::Nat { action } => {
                    self.bound_by = Some((rule_ref(), action.clone()));
                    return (Verdict::Accept, DecidedBy::Rule(rule_ref()));
                }
                Target::Drop => return (Verdict::Drop, DecidedBy::Rule(rule_ref())),
                Target::Reject { with } => {
                    return (
                        Verdict::Reject { with: with.clone() },
                        DecidedBy::Rule(rule_ref()),
                    );
                }
                Target::Queue => return (Verdict::Queue, DecidedBy::Rule(rule_ref())),
                Target::Return => {
                    stack.pop();
                }
                Target::Jump { chain: name } | Target::Goto { chain: name } => {
                    let Some(callee) = table.chain(name) else {
                        self.undecided.push((
                            rule_ref(),
                            format!("jumps to chain {name}, which is missing"),
                        ));
                        continue;
                    };
                    if matches!(target, Target::Goto { .. }) {
                        stack.pop();
                    }
                    if stack.len() >= MAX_CALL_DEPTH {
                        self.undecided.push((
                            rule_ref(),
                            format!("chain calls nest deeper than {MAX_CALL_DEPTH}"),
                        ));
                        continue;
                    }
                    self.path.push(ChainRef::of(table, callee));
                    stack.push(Frame {
                        chain: callee,
                        next_rule: 0,
                    });
                }
                Target::Continue { .. } => {}
                Target::Unknown { action } => {
                    self.undecided.push((
                        rule_ref(),
                        format!("matches, but the effect of target {action} is unknown"),
                    ));
                }
                Target::VerdictMap { .. } => {
                    self.undecided
                        .push((rule_ref(), "verdict map inside a verdict map".to_string()));
                }
            }
        }
    }

    /// The target of the vmap arm whose key matches; `None` when no arm
    /// does (the rule has no effect) or the key cannot be decided.
    fn verdict_map_arm(
        &mut self,
        arms: &'a [crate::model::VerdictArm],
        rule_ref: impl Fn() -> RuleRef,
    ) -> Option<&'a Target> {
        for arm in arms {
            match match_outcome(&arm.key, &self.packet, self.ruleset) {
                Outcome::Match => return Some(&arm.target),
                Outcome::NoMatch => {}
                Outcome::Undecidable(reason) => {
                    self.undecided.push((rule_ref(), reason));
                    if self.take_as_matching(&rule_ref) {
                        return Some(&arm.target);
                    }
                }
            }
        }
        None
    }

    /// A matching rule's effect on the marks, in order, for the rules after it (see
    /// [`MarkWrite`]). Without a connection (INVALID, UNTRACKED) there is no connection
    /// mark to write or read: xt_CONNMARK and nft's `ct` expressions do nothing then.
    fn write_marks(&mut self, writes: &[MarkWrite]) {
        for write in writes {
            let packet = self.packet.to_mut();
            let connection =
                !matches!(packet.ct_state, Some(CtState::Invalid | CtState::Untracked));
            let marks = Marks::of(packet);
            match write.of {
                MarkOf::Packet if connection || !write.to.copies_other() => {
                    let mark = write.to.apply(marks.mark, marks.ct_mark);
                    packet.mark = mark.unwrap_or(0);
                    packet.unknown.mark = mark.is_none();
                }
                MarkOf::Connection if connection => {
                    let ct_mark = write.to.apply(marks.ct_mark, marks.mark);
                    packet.ct_mark = ct_mark.unwrap_or(0);
                    packet.unknown.ct_mark = ct_mark.is_none();
                }
                _ => {}
            }
        }
    }

    /// What a matching rule's `-m recent` tests write to their lists (a stamp, or an
    /// address taken off), for the tests after it (see [`crate::recent`]).
    fn write_recent(&mut self, rule: &Rule) {
        for one in &rule.matches {
            let Condition::Recent(test) = &one.condition else {
                continue;
            };
            let addr = match test.side {
                Direction::Source => self.packet.src,
                Direction::Destination => self.packet.dst,
            };
            let lists = self.ruleset.recent.as_ref();
            if let Ok(RecentFinding {
                write: Some(write), ..
            }) = test.decide(addr, one.negated, lists, &self.packet.recent_writes)
            {
                self.packet.to_mut().recent_writes.push(write);
            }
        }
    }

    /// The marks a rule that cannot be decided may have written are not known any more.
    fn forget_marks(&mut self, writes: &[MarkWrite]) {
        if writes.is_empty() {
            return;
        }
        let packet = self.packet.to_mut();
        for write in writes {
            match write.of {
                MarkOf::Packet => packet.unknown.mark = true,
                MarkOf::Connection => packet.unknown.ct_mark = true,
            }
        }
    }

    /// The fork at an undecided rule: whether this walk takes it as matching.
    fn take_as_matching(&mut self, rule_ref: impl Fn() -> RuleRef) -> bool {
        let matching = self.choices.get(self.choices_met).copied().unwrap_or(false);
        self.choices_met += 1;
        if matching {
            self.assumed.push(rule_ref());
        }
        matching
    }
}
