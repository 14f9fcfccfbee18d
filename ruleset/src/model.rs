//! The data model shared by the parsers and the evaluator.
//!
//! iptables (nft or legacy) and nftables are two front ends to the same
//! kernel machinery: base chains hooked into netfilter at a priority, rules
//! that test packet fields and end in a verdict, user chains reached by jump
//! or goto. Both parsers therefore lower into this one model, and the
//! evaluator walks it without knowing which tool printed the rules.
//!
//! The matching vocabulary ([`Condition`], [`Field`]) is deliberately small:
//! it covers what an SRE's firewall usually tests (addresses, ports,
//! protocols, interfaces, conntrack state, marks, owners, sets). Anything
//! outside it is kept as [`Condition::Undecidable`] with a human-readable
//! reason, so the evaluator can say "I could not tell" instead of guessing.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::addrtype::{AddrTypes, LocalTable, Matcher};
use crate::ipset::Ipset;
use crate::packet::{Direction, Family, Hook, ValueRange};
use crate::recent::{RecentLists, RecentTest};

pub use tracer_common::netfilter::{Backend, Engine, TableFamily};

/// How reports name a table: nftables tables with their family (`inet filter` and
/// `ip filter` are two tables, both with an `input` chain in Debian's examples), iptables
/// tables by name (`filter`), marked `ip6` when they are ip6tables'.
pub fn table_label(backend: Backend, family: TableFamily, table: &str) -> String {
    match (backend, family) {
        (Backend::Nftables, family) => format!("{family} {table}"),
        (_, TableFamily::Ip6) => format!("ip6 {table}"),
        _ => table.to_string(),
    }
}

/// Everything the evaluator needs: the tables of every backend the caller
/// loaded, plus the contents of ipsets referenced by `-m set`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Ruleset {
    pub tables: Vec<Table>,
    /// Sets by name, from [`crate::ipset::parse_save`]. A `--match-set` on a
    /// set missing here is undecidable.
    pub ipsets: BTreeMap<String, Ipset>,
    /// The namespace's `local` routing table, for address type tests; `None`
    /// (not read) leaves them undecidable.
    pub local_routes: Option<LocalTable>,
    /// The namespace's xt_recent lists with the kernel's clock, for `-m recent`; `None`
    /// (not read) leaves those tests undecidable.
    pub recent: Option<RecentLists>,
}

impl Ruleset {
    /// Whether a rule tests an xt_recent list (`-m recent`), which [`Ruleset::recent`]
    /// must hold to decide.
    pub fn tests_recent_lists(&self) -> bool {
        self.tables
            .iter()
            .flat_map(|t| &t.chains)
            .flat_map(|c| &c.rules)
            .flat_map(|r| &r.matches)
            .any(|m| matches!(m.condition, Condition::Recent(_)))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Table {
    pub backend: Backend,
    pub family: TableFamily,
    pub name: String,
    pub chains: Vec<Chain>,
}

impl Table {
    /// The chain called `name`, if the table has one.
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|chain| chain.name == name)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Chain {
    pub name: String,
    /// Present for chains attached to a hook (iptables built-in chains,
    /// nftables base chains); `None` for user chains.
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
    /// Packets that fell through to the policy (iptables-save prints these
    /// on the chain line; nftables keeps none).
    pub policy_counters: Option<Counters>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct BaseChain {
    pub hook: Hook,
    /// Netfilter priority; lower runs first (raw -300 ... nat source 100).
    pub priority: i32,
    pub policy: Policy,
    pub kind: ChainKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Accept,
    Drop,
}

/// The type of a base chain. `Nat` chains only see the first packet of a
/// connection, which the evaluator honours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainKind {
    Filter,
    Nat,
    Route,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Rule {
    /// 1-based position in its chain, as `iptables -L --line-numbers` counts.
    pub position: u32,
    /// nftables rule handle (`nft -a`); `None` for iptables-save input.
    pub handle: Option<u64>,
    /// What to show a human: the iptables-save line without counters, or the
    /// nft statement without `# handle N`.
    pub text: String,
    pub comment: Option<String>,
    pub counters: Option<Counters>,
    /// All must hold for the rule to match.
    pub matches: Vec<Match>,
    /// What the rule does to the packet's mark and its connection's, in order, when it
    /// matches, before its verdict.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sets_marks: Vec<MarkWrite>,
    pub target: Target,
}

/// Which of a packet's two marks a rule writes or reads: its own (`skb->mark`: `-j MARK`,
/// `-m mark`, nft `meta mark`) or its connection's (`ct->mark`: `-j CONNMARK`,
/// `-m connmark`, nft `ct mark`), which every later packet of the connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkOf {
    Packet,
    Connection,
}

/// One mark a matching rule writes: the rules after it, in its chain and in the hook's
/// later chains (and, for the connection's, in later hooks), see the new value. A policy
/// that marks a packet "accepted" in one chain and accepts the mark in another is common
/// (network plugins do it); so is saving a mark to the connection and restoring it on the
/// connection's later packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MarkWrite {
    pub of: MarkOf,
    pub to: MarkSet,
}

/// A mark's new value, from its old value and the other mark's (the connection's when the
/// packet's is written, the packet's when the connection's is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkSet {
    /// The mark becomes `(mark & keep) ^ (other & take) ^ xor`. xt_MARK's `--set-xmark V/M`
    /// is `keep: !M, xor: V` (net/netfilter/xt_mark.c `mark_tg`); xt_CONNMARK's
    /// `--save-mark` and `--restore-mark` copy the other mark under masks
    /// (net/netfilter/xt_connmark.c `connmark_tg_shift`); nft's `meta mark set ct mark & 0xff`
    /// and `ct mark set meta mark | 0x10` reduce to it (see [`MarkSet::and`]).
    Bits { keep: u32, take: u32, xor: u32 },
    /// Set from what droptrace does not read (a map, a shifted copy): unknown.
    Unknown,
}

impl MarkSet {
    /// xt_MARK's `--set-xmark value/mask`: zero `mask`'s bits, then XOR `value` in.
    pub const fn xmark(value: u32, mask: u32) -> MarkSet {
        MarkSet::Bits {
            keep: !mask,
            take: 0,
            xor: value,
        }
    }

    /// A copy of the other mark: `meta mark set ct mark`, `ct mark set meta mark`.
    pub const COPY: MarkSet = MarkSet::Bits {
        keep: 0,
        take: u32::MAX,
        xor: 0,
    };

    /// The mark after this write, from the mark before and the other mark (`None`:
    /// unknown); `None` when it cannot be told. An unknown input matters only where the
    /// write keeps or takes some of its bits.
    pub fn apply(self, mark: Option<u32>, other: Option<u32>) -> Option<u32> {
        match self {
            MarkSet::Bits { keep, take, xor } => {
                let mark = if keep == 0 { 0 } else { mark? };
                let other = if take == 0 { 0 } else { other? };
                Some((mark & keep) ^ (other & take) ^ xor)
            }
            MarkSet::Unknown => None,
        }
    }

    /// Whether the write copies bits of the other mark (an unknown write may or may not).
    pub fn copies_other(self) -> bool {
        matches!(self, MarkSet::Bits { take, .. } if take != 0)
    }

    /// This value, then `& n`.
    pub fn and(self, n: u32) -> MarkSet {
        match self {
            MarkSet::Bits { keep, take, xor } => MarkSet::Bits {
                keep: keep & n,
                take: take & n,
                xor: xor & n,
            },
            MarkSet::Unknown => MarkSet::Unknown,
        }
    }

    /// This value, then `| n`.
    pub fn or(self, n: u32) -> MarkSet {
        match self {
            MarkSet::Bits { keep, take, xor } => MarkSet::Bits {
                keep: keep & !n,
                take: take & !n,
                xor: xor | n,
            },
            MarkSet::Unknown => MarkSet::Unknown,
        }
    }

    /// This value, then `^ n`.
    pub fn xor(self, n: u32) -> MarkSet {
        match self {
            MarkSet::Bits { keep, take, xor } => MarkSet::Bits {
                keep,
                take,
                xor: xor ^ n,
            },
            MarkSet::Unknown => MarkSet::Unknown,
        }
    }
}

impl Rule {
    /// Whether the rule, when it matches, keeps conntrack away from the packet: iptables'
    /// `-j CT --notrack` and `-j NOTRACK`, nft's `notrack`. Later rules see it UNTRACKED,
    /// provided the rule runs before conntrack does (see [`crate::eval::conntrack_skipped`]).
    pub fn untracks(&self) -> bool {
        let Target::Continue {
            action: Some(action),
        } = &self.target
        else {
            return false;
        };
        action.split(',').any(|a| match a {
            "notrack" | "NOTRACK" => true,
            "CT" => self.text.split_whitespace().any(|w| w == "--notrack"),
            _ => false,
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One test of a rule, possibly negated (`! -s 10.0.0.0/8`, `!=`).
///
/// Negation only flips a test that could be made: a packet that lacks the
/// field altogether (a port match on ICMP, an `ip saddr` test on IPv6 in an
/// inet table) does not match either way, as in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Match {
    pub negated: bool,
    pub condition: Condition,
}

impl Match {
    pub(crate) fn new(condition: Condition) -> Match {
        Match {
            negated: false,
            condition,
        }
    }

    pub(crate) fn negated_if(negated: bool, condition: Condition) -> Match {
        Match { negated, condition }
    }

    pub(crate) fn undecidable(reason: impl Into<String>) -> Match {
        Match::new(Condition::Undecidable {
            reason: reason.into(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// `(field & mask)` passes `test`.
    Value {
        field: Field,
        mask: Option<u32>,
        test: ValueTest,
    },
    /// Source or destination address in one of `ranges`. `family` restricts
    /// the test to one family (nft `ip saddr` vs `ip6 saddr` in inet tables).
    Address {
        direction: Direction,
        family: Option<Family>,
        ranges: Vec<AddrRange>,
    },
    /// Input or output interface name matches one of `names`.
    Interface {
        direction: Direction,
        names: Vec<InterfaceName>,
    },
    /// Either port in `ranges` (`-m multiport --ports`).
    AnyPort {
        protocol: Option<u8>,
        ranges: Vec<ValueRange>,
    },
    /// iptables `--icmp-type` / `--icmpv6-type`: type equal (255 = any type)
    /// and code within `codes`.
    Icmp {
        protocol: u8,
        icmp_type: u8,
        codes: ValueRange,
    },
    /// iptables `-m owner`. Unlike nft `meta skuid`, a packet without socket
    /// matches the negated form, as xt_owner does.
    SocketOwner {
        id: OwnerId,
        ranges: Vec<ValueRange>,
    },
    /// iptables `-m set --match-set NAME src,dst`, decided against
    /// [`Ruleset::ipsets`].
    IpSet {
        name: String,
        directions: Vec<Direction>,
    },
    /// `-m recent`, decided against [`Ruleset::recent`].
    Recent(RecentTest),
    /// `-m addrtype --src-type/--dst-type` or nft `fib saddr/daddr type`:
    /// the address's route type in the namespace's local table, seen through
    /// the input or output device when `limit_iface` says so.
    AddrType {
        direction: Direction,
        types: AddrTypes,
        limit_iface: Option<Direction>,
        matcher: Matcher,
    },
    /// nft concatenations (`ip daddr . meta l4proto . th dport`), compared
    /// with a set's or a map's elements: the packet matches when every part
    /// of one element does. kube-proxy's nftables mode dispatches every
    /// Service this way. Also any list of tests where one is enough: xt_conntrack's
    /// `--ctstate` mixing states with the SNAT/DNAT pseudo-states.
    Concat { elements: Vec<Vec<Match>> },
    /// rp_filter's strict test, nft `fib saddr . iif oif` (with or without `. mark`): the
    /// route back to the packet's source leaves by the interface it came in on. Negated,
    /// `fib saddr . iif oif missing`, firewalld's IPv6 reverse-path drop.
    ReversePath,
    /// A test this crate cannot decide from the packet alone (rate limits,
    /// unknown modules, names that need a lookup, ...).
    Undecidable { reason: String },
}

/// A packet field that [`Condition::Value`] can test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// Layer-4 protocol; `family` set for `ip protocol` / `ip6 nexthdr`.
    L4Proto {
        family: Option<Family>,
    },
    /// nft `meta nfproto`: 2 for IPv4, 10 for IPv6.
    NfProto,
    /// nft `meta protocol`: the ethertype.
    EtherType,
    /// `protocol: None` is nft `th sport`: any protocol with ports.
    SrcPort {
        protocol: Option<u8>,
    },
    DstPort {
        protocol: Option<u8>,
    },
    TcpFlags,
    IcmpType {
        protocol: u8,
    },
    IcmpCode {
        protocol: u8,
    },
    Mark,
    /// The connection's mark (`ct->mark`). A packet without a connection (INVALID,
    /// UNTRACKED) does not match a test of it, negated or not: xt_connmark and nft's `ct`
    /// expression both need a connection.
    CtMark,
    /// nft `meta skuid`: no socket means no match, negated or not.
    SocketUid,
    SocketGid,
    /// Bitmask of [`crate::CtState::bit`].
    CtState,
    /// The connection's status bits (`IPS_*`; only the NAT bits are decided, see
    /// [`crate::nat`]). nft's `ct status` does not match a packet without a connection,
    /// negated or not (`needs_conntrack`); iptables' `--ctstate DNAT` sees status 0.
    CtStatus {
        needs_conntrack: bool,
    },
    Length,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueTest {
    /// The (masked) value lies in one of the ranges.
    OneOf(Vec<ValueRange>),
    /// The (masked) value shares a bit with this mask (nft `ct state
    /// established,related`, iptables `--ctstate`).
    AnyBitSet(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AddrRange {
    Net(IpNet),
    Range { first: IpAddr, last: IpAddr },
}

impl AddrRange {
    pub fn contains(&self, addr: IpAddr) -> bool {
        match self {
            AddrRange::Net(net) => net.contains(&addr),
            AddrRange::Range { first, last } => match (first, last, addr) {
                (IpAddr::V4(first), IpAddr::V4(last), IpAddr::V4(addr)) => {
                    *first <= addr && addr <= *last
                }
                (IpAddr::V6(first), IpAddr::V6(last), IpAddr::V6(addr)) => {
                    *first <= addr && addr <= *last
                }
                _ => false,
            },
        }
    }
}

/// An interface name, or a prefix when `wildcard` (iptables `veth+`, nft
/// `"veth*"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InterfaceName {
    pub name: String,
    pub wildcard: bool,
}

impl InterfaceName {
    pub fn matches(&self, interface: &str) -> bool {
        if self.wildcard {
            interface.starts_with(&self.name)
        } else {
            interface == self.name
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerId {
    Uid,
    Gid,
}

/// What a rule does when it matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Accept,
    Drop,
    Reject {
        with: Option<String>,
    },
    /// Back to the calling chain; in a base chain, the policy applies.
    Return,
    Jump {
        chain: String,
    },
    Goto {
        chain: String,
    },
    /// Handed to a userspace queue (NFQUEUE); the verdict is made there.
    Queue,
    /// MASQUERADE/SNAT/DNAT/REDIRECT: ends the chain like ACCEPT.
    Nat {
        action: String,
    },
    /// Does not end evaluation: LOG, MARK, CT, counter-only rules, ...
    Continue {
        action: Option<String>,
    },
    /// nft `vmap`: the first arm whose key matches gives the verdict; no arm
    /// matching means the rule has no effect.
    VerdictMap {
        arms: Vec<VerdictArm>,
    },
    /// A target we do not know the effect of; a matching rule with it makes
    /// the evaluation undecided.
    Unknown {
        action: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerdictArm {
    pub key: Match,
    pub target: Target,
}

/// Names one chain of one table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ChainRef {
    pub backend: Backend,
    pub family: TableFamily,
    pub table: String,
    pub chain: String,
}

impl ChainRef {
    pub(crate) fn of(table: &Table, chain: &Chain) -> ChainRef {
        ChainRef {
            backend: table.backend,
            family: table.family,
            table: table.name.clone(),
            chain: chain.name.clone(),
        }
    }
}

impl fmt::Display for ChainRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.family, self.table, self.chain)
    }
}

/// Names one rule, with what a report needs to show about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub backend: Backend,
    pub family: TableFamily,
    pub table: String,
    pub chain: String,
    pub position: u32,
    pub handle: Option<u64>,
    pub text: String,
    pub counters: Option<Counters>,
}

impl RuleRef {
    pub(crate) fn of(table: &Table, chain: &Chain, rule: &Rule) -> RuleRef {
        RuleRef {
            backend: table.backend,
            family: table.family,
            table: table.name.clone(),
            chain: chain.name.clone(),
            position: rule.position,
            handle: rule.handle,
            text: rule.text.clone(),
            counters: rule.counters,
        }
    }

    /// Where the rule is, as reports name it: `filter/OUTPUT rule 4` (iptables, as
    /// `iptables -L --line-numbers` counts), `inet fw/output handle 7` (nftables).
    pub fn place(&self) -> String {
        let table = table_label(self.backend, self.family, &self.table);
        match (self.backend, self.handle) {
            (Backend::Nftables, Some(h)) => format!("{table}/{} handle {h}", self.chain),
            _ => format!("{table}/{} rule {}", self.chain, self.position),
        }
    }

    /// Whether both name the same rule, ignoring counters: by handle for
    /// nftables, by position and text for iptables (positions shift when
    /// rules are inserted, so the text guards against a different rule now
    /// sitting at the same place).
    pub fn is_same_rule(&self, other: &RuleRef) -> bool {
        let same_chain = self.backend == other.backend
            && self.family == other.family
            && self.table == other.table
            && self.chain == other.chain;
        if !same_chain {
            return false;
        }
        match (self.handle, other.handle) {
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => self.position == other.position && self.text == other.text,
        }
    }
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{} rule {}",
            self.family, self.table, self.chain, self.position
        )?;
        if let Some(handle) = self.handle {
            write!(f, " (handle {handle})")?;
        }
        write!(f, ": {}", self.text)
    }
}

/// What decided a packet's fate: a rule, or a base chain's policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecidedBy {
    Rule(RuleRef),
    Policy(ChainRef),
    /// No base chain of the requested backends sits on the hook: netfilter
    /// accepts.
    NoBaseChain,
}

impl DecidedBy {
    /// Same rule (see [`RuleRef::is_same_rule`]) or same chain's policy.
    pub fn is_same(&self, other: &DecidedBy) -> bool {
        match (self, other) {
            (DecidedBy::Rule(mine), DecidedBy::Rule(theirs)) => mine.is_same_rule(theirs),
            (DecidedBy::Policy(mine), DecidedBy::Policy(theirs)) => mine == theirs,
            (DecidedBy::NoBaseChain, DecidedBy::NoBaseChain) => true,
            _ => false,
        }
    }
}

impl fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecidedBy::Rule(rule) => rule.fmt(f),
            DecidedBy::Policy(chain) => write!(f, "{chain} policy"),
            DecidedBy::NoBaseChain => f.write_str("no base chain on this hook"),
        }
    }
}
