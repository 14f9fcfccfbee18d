//! `droptrace explain` and `droptrace rules`: the rule engine without traffic.
//!
//! `explain` asks "what would the current ruleset do to this packet?" — the way to check a
//! fix before applying it — with the same evaluation and fields as live attribution.
//! `rules` shows the ruleset as droptrace understands it, counters included and the matches
//! it cannot evaluate marked, so a wrong attribution can be diagnosed.

use std::{
    io::{self, Write as _},
    net::IpAddr,
    path::Path,
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use clap::builder::TypedValueParser as _;
use serde::Serialize;

use ruleset::{CtState, DecidedBy, Hook, eval::Marks};

use crate::{
    attribution::{Attribution, attribution_of, snapshot::Snapshot},
    enrich::netns::NetnsArg,
    escape::terminal,
    kernel::filter::Proto,
};

/// `--hook`: a routed hook, as nft names it.
fn hook_parser() -> impl clap::builder::TypedValueParser<Value = Hook> {
    clap::builder::PossibleValuesParser::new([
        "prerouting",
        "input",
        "forward",
        "output",
        "postrouting",
    ])
    .map(|s| Hook::from_nft(&s).expect("one of the possible values"))
}

/// `--state`: a conntrack state a first packet can have.
fn state_parser() -> impl clap::builder::TypedValueParser<Value = CtState> {
    clap::builder::PossibleValuesParser::new(["new", "established", "related", "invalid"]).map(
        |s| match s.as_str() {
            "established" => CtState::Established,
            "related" => CtState::Related,
            "invalid" => CtState::Invalid,
            _ => CtState::New,
        },
    )
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// Namespace whose ruleset to use: a name, a path, or `host` (PID 1's namespace; default:
    /// droptrace's own).
    #[arg(long, value_name = "NAME|PATH", value_parser = crate::session::options::NetnsParser,
          hide_possible_values = true)]
    pub netns: Option<NetnsArg>,
    /// Protocol: tcp, udp, icmp, icmpv6, sctp or a number.
    #[arg(long, value_name = "PROTO", value_parser = crate::session::options::ProtoParser,
          hide_possible_values = true)]
    pub proto: Proto,
    /// Destination address.
    #[arg(long, value_name = "ADDR")]
    pub dst: IpAddr,
    /// Destination port (TCP, UDP, SCTP).
    #[arg(long, value_name = "PORT")]
    pub dport: Option<u16>,
    /// Source address (default: for output, the one the namespace's route to --dst picks).
    #[arg(long, value_name = "ADDR")]
    pub src: Option<IpAddr>,
    /// Source port (default 49152, an ephemeral port).
    #[arg(long, value_name = "PORT", default_value_t = 49152)]
    pub sport: u16,
    /// Hook the packet traverses (default output: egress from this host).
    #[arg(long, value_parser = hook_parser(), default_value = "output")]
    pub hook: Hook,
    /// Input interface (for prerouting, input, forward).
    #[arg(long, value_name = "IFNAME")]
    pub iif: Option<String>,
    /// Output interface (for output, forward, postrouting; default for output: the one the
    /// namespace's route to --dst picks).
    #[arg(long, value_name = "IFNAME")]
    pub oif: Option<String>,
    /// Conntrack state of the packet (default new: a first SYN or datagram).
    #[arg(long, value_parser = state_parser(), default_value = "new")]
    pub state: CtState,
    /// Socket owner uid (for `-m owner` / `meta skuid`); unknown when not given, so such
    /// rules make the answer unsure.
    #[arg(long, value_name = "UID")]
    pub uid: Option<u32>,
    /// Socket owner gid (for `-m owner --gid-owner` / `meta skgid`).
    #[arg(long, value_name = "GID")]
    pub gid: Option<u32>,
    /// Packet mark (decimal or 0x hex) as the packet arrives or leaves its socket.
    #[arg(long, value_name = "MARK", default_value = "0", value_parser = mark_value)]
    pub mark: u32,
    /// The connection's mark (decimal or 0x hex). A new connection's is 0; for another
    /// --state it is unknown when not given, so `ct mark` and `-m connmark` rules make the
    /// answer unsure.
    #[arg(long, value_name = "MARK", value_parser = mark_value)]
    pub ct_mark: Option<u32>,
    /// Report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RulesArgs {
    /// Namespace whose ruleset to show: a name, a path, or `host` (PID 1's; default:
    /// droptrace's own).
    #[arg(long, value_name = "NAME|PATH", value_parser = crate::session::options::NetnsParser,
          hide_possible_values = true)]
    pub netns: Option<NetnsArg>,
    /// Print the parsed ruleset as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What the ruleset would do, per engine, and overall.
#[derive(Debug, Serialize)]
pub struct Explanation {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `drop`, `reject`, `queue`, `accept`, or `unsure` when rules droptrace cannot decide
    /// lead to different fates (the rule's own `verdict` is among the rule fields).
    pub outcome: &'static str,
    /// What droptrace filled in that was not given (route lookup), or left unknown.
    pub assumed: Vec<String>,
    /// The engine whose verdict decides, with the rule.
    #[serde(flatten)]
    pub by: Option<Attribution>,
    /// nf_tables (iptables-nft + nft) and legacy xtables, each evaluated.
    pub engines: Vec<EngineResult>,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct EngineResult {
    pub engine: &'static str,
    /// The backends of this engine the ruleset has tables of (`iptables-nft`,
    /// `nftables`; `iptables-legacy`).
    pub backends: Vec<&'static str>,
    pub outcome: &'static str,
    #[serde(flatten)]
    pub by: Attribution,
    /// Where each choice of the rules droptrace cannot decide leads (when there are any).
    pub possible: Vec<String>,
}

/// The namespace's path (`None`: droptrace's own), checked to exist.
fn netns_path(netns: Option<&NetnsArg>) -> anyhow::Result<Option<std::path::PathBuf>> {
    let Some(n) = netns else {
        return Ok(None);
    };
    let p = n
        .selector
        .path()
        .context("--netns all is not one namespace")?;
    let n = &n.given;
    if !p.exists() {
        bail!(
            "no network namespace {n:?}: {} does not exist (see `ip netns list`)",
            p.display()
        );
    }
    Ok(Some(p))
}

fn read_snapshot(netns: Option<&Path>) -> anyhow::Result<Snapshot> {
    if !nix::unistd::geteuid().is_root() {
        bail!("reading the ruleset needs root (CAP_NET_ADMIN)");
    }
    let mut snap = Snapshot::read(netns);
    snap.read_recent_lists(netns);
    Ok(snap)
}

/// The packet as given on the command line; what the kernel would fill in (interfaces,
/// owner) stays unknown here (see [`fill_in_route`]).
pub fn packet(args: &ExplainArgs) -> anyhow::Result<ruleset::Packet> {
    let mut p = ruleset::Packet::first_of_flow(
        args.proto.0,
        args.src,
        args.dst,
        args.sport,
        args.dport,
        args.state,
        args.hook,
    )
    .map_err(|e| match e {
        ruleset::FlowError::NoPort => anyhow::anyhow!(
            "--dport is required for {}",
            crate::kernel::filter::proto_name(args.proto.0)
        ),
        ruleset::FlowError::PortlessProtocol => {
            anyhow::anyhow!("--dport needs a protocol with ports (tcp, udp, sctp)")
        }
        ruleset::FlowError::MixedFamilies => {
            anyhow::anyhow!("--src and --dst are of different families")
        }
    })?;
    p.iif = args.iif.clone();
    p.oif = args.oif.clone();
    p.uid = args.uid;
    p.gid = args.gid;
    p.mark = args.mark;
    if let Some(ct_mark) = args.ct_mark {
        p.ct_mark = ct_mark;
        p.unknown.ct_mark = false;
    }
    Ok(p)
}

/// A mark as `--mark` and `--ct-mark` take it: decimal or 0x hex, 32 bits.
fn mark_value(text: &str) -> Result<u32, String> {
    ruleset::names::number(text)
        .ok_or_else(|| format!("{text:?} is not a 32-bit mark (decimal or 0x hex)"))
}

/// For a locally sent packet, fills in the output interface and source address the
/// namespace's route to the destination gives (what the kernel would use), and says what
/// was assumed or is still unknown.
fn fill_in_route(
    pkt: &mut ruleset::Packet,
    args: &ExplainArgs,
    netns: Option<&Path>,
) -> Vec<String> {
    let mut assumed = Vec::new();
    let local = matches!(args.hook, Hook::Output | Hook::Postrouting);
    if local && (args.oif.is_none() || args.src.is_none()) {
        match crate::enrich::routes::lookup(netns, args.dst, args.mark) {
            Some(r) => {
                if args.oif.is_none()
                    && let Some(dev) = r.dev
                {
                    assumed.push(format!(
                        "output interface {dev} (the route to {})",
                        args.dst
                    ));
                    pkt.oif = Some(dev);
                }
                if args.src.is_none()
                    && let Some(src) = r.src.filter(|s| s.is_ipv6() == args.dst.is_ipv6())
                {
                    assumed.push(format!("source {src} (the route to {})", args.dst));
                    pkt.src = src;
                }
            }
            None => assumed.push(format!(
                "no route to {} in the namespace: output interface and source unknown",
                args.dst
            )),
        }
    }
    if pkt.unknown.iif && pkt.iif.is_none() {
        assumed.push("input interface unknown (--iif)".into());
    }
    if pkt.unknown.oif && pkt.oif.is_none() && !local {
        assumed.push("output interface unknown (--oif)".into());
    }
    if pkt.unknown.uid && pkt.uid.is_none() {
        assumed.push("socket owner uid unknown (--uid)".into());
    }
    if pkt.unknown.gid && pkt.gid.is_none() {
        assumed.push("socket owner gid unknown (--gid)".into());
    }
    if pkt.unknown.ct_mark && !matches!(pkt.ct_state, Some(CtState::Invalid | CtState::Untracked)) {
        assumed.push("connection mark unknown (--ct-mark)".into());
    }
    assumed
}

/// For a packet that arrives: its marks when it reaches INPUT or FORWARD, as the mangle
/// (and any) PREROUTING chains of both engines leave them (`-j MARK`, `-j CONNMARK`,
/// `meta mark set`, `ct mark set`): the packet as the hook's rules see it, and what
/// `assumed` says of each mark that changed. Where the ways undecided rules can go leave
/// different marks, or a rule sets one from what is not read, it is unknown to the hook's
/// rules.
fn marks_after_prerouting(
    rs: &ruleset::Ruleset,
    hook: Hook,
    pkt: &ruleset::Packet,
) -> (ruleset::Packet, Vec<String>) {
    let mut at_hook = pkt.clone();
    if !matches!(hook, Hook::Input | Hook::Forward) {
        return (at_hook, Vec::new());
    }
    let ev = ruleset::eval::evaluate(
        rs,
        &ruleset::Backend::ALL,
        pkt.family,
        Hook::Prerouting,
        pkt,
    );
    let after: Vec<Marks> = ev
        .outcomes()
        .filter(|o| o.verdict == ruleset::eval::Verdict::Accept)
        .map(|o| o.marks_after)
        .collect();
    if after.is_empty() {
        return (at_hook, Vec::new());
    }
    let before = Marks::of(pkt);
    let mut notes = Vec::new();
    let mark = carried(
        "mark",
        "it arrived with",
        before.mark,
        after.iter().map(|m| m.mark),
    );
    let ct_mark = carried(
        "connection mark",
        "it was",
        before.ct_mark,
        after.iter().map(|m| m.ct_mark),
    );
    if let Some((value, note)) = mark {
        at_hook.mark = value.unwrap_or(0);
        at_hook.unknown.mark = value.is_none();
        notes.push(note);
    }
    if let Some((value, note)) = ct_mark {
        at_hook.ct_mark = value.unwrap_or(0);
        at_hook.unknown.ct_mark = value.is_none();
        notes.push(note);
    }
    (at_hook, notes)
}

/// One mark as the accepting ways through PREROUTING leave it (`after`, one per way),
/// when that differs from `before`: its value there (`None`: unknown) and what to say.
fn carried(
    name: &str,
    was: &str,
    before: Option<u32>,
    mut after: impl Iterator<Item = Option<u32>>,
) -> Option<(Option<u32>, String)> {
    let first = after.next()?;
    if after.any(|m| m != first) {
        let note =
            format!("{name} unknown after PREROUTING: rules there that cannot be decided set it");
        return Some((None, note));
    }
    match (first, before) {
        (Some(value), Some(before)) if value == before => None,
        (Some(value), Some(before)) => Some((
            Some(value),
            format!("{name} {value:#x} after PREROUTING ({was} {before:#x})"),
        )),
        (Some(value), None) => Some((Some(value), format!("{name} {value:#x} after PREROUTING"))),
        (None, Some(_)) => Some((
            None,
            format!(
                "{name} unknown after PREROUTING: a rule there sets it from what is not read, \
                 or may set it and cannot be decided"
            ),
        )),
        (None, None) => None,
    }
}

/// For a new connection, whether a notrack rule keeps conntrack away from it before
/// `hook` (raw PREROUTING for a packet that arrives, raw OUTPUT for one sent here, in
/// either engine): the rules after it see it UNTRACKED, not NEW (and no NAT binds it).
/// Undecided, its state is unknown to the rules after.
fn follow_notrack(pkt: &mut ruleset::Packet, rs: &ruleset::Ruleset, hook: Hook) -> Option<String> {
    let conntrack_hook = match hook {
        Hook::Prerouting | Hook::Input | Hook::Forward => Hook::Prerouting,
        Hook::Output | Hook::Postrouting => Hook::Output,
        _ => return None,
    };
    if pkt.ct_state != Some(CtState::New) {
        return None;
    }
    match ruleset::eval::conntrack_skipped(rs, pkt.family, conntrack_hook, pkt) {
        ruleset::eval::Conntrack::Tracks => None,
        ruleset::eval::Conntrack::SkippedBy(rule) => {
            pkt.ct_state = Some(CtState::Untracked);
            Some(format!(
                "untracked: {rule} keeps conntrack away from it, so the rules after it see \
                 state UNTRACKED"
            ))
        }
        ruleset::eval::Conntrack::MaybeSkippedBy(rule, why) => {
            pkt.ct_state = None;
            Some(format!(
                "conntrack state unknown: {rule} leaves it untracked if it matches ({why})"
            ))
        }
    }
}

/// For a new connection, what the nat chains it meets before `hook` do to it (PREROUTING
/// for a packet that arrives, nat OUTPUT for one sent here): when none translates it, its
/// `ct status dnat` is known clear (firewalld accepts translated connections ahead of its
/// zones); when a DNAT or REDIRECT does, the rules after it see the new destination and
/// `ct status dnat`. A new address is routed anew (`ip_route_me_harder` after nat OUTPUT,
/// the input route lookup after PREROUTING): an arriving packet for an address that is
/// not the host's own is forwarded, one for the host's own delivered, whatever `hook` was
/// asked. Returns the hook the packet then meets, and what `assumed` says of it.
fn follow_nat(
    pkt: &mut ruleset::Packet,
    rs: &ruleset::Ruleset,
    hook: Hook,
    netns: Option<&Path>,
    oif_given: bool,
) -> (Hook, Option<String>) {
    let nat_hook = match hook {
        Hook::Input | Hook::Forward => Hook::Prerouting,
        Hook::Output => Hook::Output,
        _ => return (hook, None),
    };
    if pkt.ct_state != Some(CtState::New) {
        return (hook, None);
    }
    let (rule, action) =
        match ruleset::eval::nat_binding(rs, &ruleset::Backend::ALL, pkt.family, nat_hook, pkt) {
            ruleset::eval::NatBinding::Untranslated => {
                pkt.ct_status_clear |= ruleset::nat::IPS_DST_NAT;
                return (hook, None);
            }
            ruleset::eval::NatBinding::By { rule, action } => (rule, action),
            ruleset::eval::NatBinding::Undecided(_) => return (hook, None),
        };
    let Some(to) = ruleset::nat::dnat_target(&rule.text) else {
        let note = format!(
            "{rule} translates the connection ({action}); the rules after it see the \
             translated packet, which explain does not follow"
        );
        return (hook, Some(note));
    };
    let new_addr = to.addr.filter(|addr| *addr != pkt.dst);
    // Routed anew, before the packet is changed: no route, nothing followed.
    let route = match new_addr {
        Some(addr) => match crate::enrich::routes::lookup(netns, addr, pkt.mark) {
            Some(route) => Some(route),
            None => {
                let note = format!(
                    "{rule} translates the connection to {addr}, to which the namespace has \
                     no route: the rules after it are not followed"
                );
                return (hook, Some(note));
            }
        },
        None => None,
    };
    if let Some(port) = to.port.filter(|_| pkt.dport.is_some()) {
        pkt.dport = Some(port);
    }
    pkt.ct_status_set |= ruleset::nat::IPS_DST_NAT;
    let port = pkt.dport.map_or(String::new(), |p| format!(" port {p}"));
    let (Some(addr), Some(route)) = (new_addr, route) else {
        let note = match to.addr {
            Some(_) => format!(
                "{rule} translates the connection to{port}: the rules after it see that, and \
                 ct status dnat"
            ),
            None => format!(
                "{rule} redirects the connection to{port} of the receiving interface's address \
                 (taken to be {}): the rules after it see that, and ct status dnat",
                pkt.dst
            ),
        };
        return (hook, Some(note));
    };
    pkt.dst = addr;
    let dev = route.dev.clone().unwrap_or_default();
    let (next, way) = match hook {
        Hook::Output => {
            if !oif_given {
                pkt.oif = route.dev;
            }
            (Hook::Output, format!("routed anew, out of {dev}"))
        }
        _ if route.local => {
            pkt.oif = None;
            pkt.unknown.oif = false;
            (
                Hook::Input,
                "the host's own: delivered, INPUT's rules decide".into(),
            )
        }
        _ => {
            if !oif_given || hook != Hook::Forward {
                pkt.oif = route.dev;
                pkt.unknown.oif = pkt.oif.is_none();
            }
            (
                Hook::Forward,
                format!("not the host's: forwarded out of {dev}, FORWARD's rules decide"),
            )
        }
    };
    let note = format!(
        "{rule} translates the connection to {addr}{port} ({way}); the rules after it see \
         that, and ct status dnat"
    );
    (next, Some(note))
}

/// For a packet that arrives: whether the route back to its source leaves by the
/// interface it came in on (rp_filter's strict test, nft's `fib saddr . iif oif`), from the
/// namespace's routes. Only a route back by that interface is taken as an answer: `ip route
/// get` names one path of a multipath route, and the kernel scopes its lookup for a
/// link-local source, so any other route leaves the test undecided.
fn reverse_path(pkt: &ruleset::Packet, hook: Hook, netns: Option<&Path>) -> Option<bool> {
    if !matches!(hook, Hook::Prerouting | Hook::Input | Hook::Forward) {
        return None;
    }
    let iif = pkt.iif.as_deref()?;
    let back = crate::enrich::routes::lookup(netns, pkt.src, pkt.mark)?;
    (back.dev.as_deref() == Some(iif)).then_some(true)
}

fn outcome_of(v: &ruleset::eval::Verdict) -> &'static str {
    match v {
        ruleset::eval::Verdict::Accept => "accept",
        ruleset::eval::Verdict::Drop => "drop",
        ruleset::eval::Verdict::Reject { .. } => "reject",
        ruleset::eval::Verdict::Queue => "queue",
    }
}

/// Evaluates the packet in both engines; the first that surely drops decides (the kernel
/// runs both on the hook and a drop in either is final). An engine whose undecidable
/// rules lead to different fates is `unsure`, and so is the whole answer unless the
/// other engine surely drops.
pub fn explain(
    rs: &ruleset::Ruleset,
    hook: Hook,
    pkt: &ruleset::Packet,
) -> (Vec<EngineResult>, &'static str, Option<Attribution>) {
    explain_arriving(rs, hook, pkt, pkt)
}

/// [`explain`], where the packet reaches `hook` as `at_hook` (with the mark PREROUTING
/// set: see [`marks_after_prerouting`]) and meets PREROUTING as `pkt`.
pub fn explain_arriving(
    rs: &ruleset::Ruleset,
    hook: Hook,
    pkt: &ruleset::Packet,
    at_hook: &ruleset::Packet,
) -> (Vec<EngineResult>, &'static str, Option<Attribution>) {
    let mut engines = Vec::new();
    for (engine, name) in [
        (ruleset::Engine::NfTables, "nftables"),
        (ruleset::Engine::Xtables, "xtables"),
    ] {
        let backends: Vec<&'static str> = engine
            .backends()
            .iter()
            .filter(|b| rs.tables.iter().any(|t| t.backend == **b))
            .map(|b| b.as_str())
            .collect();
        if backends.is_empty() {
            continue;
        }
        let walk = |hook, pkt: &ruleset::Packet| {
            ruleset::eval::evaluate(rs, engine.backends(), pkt.family, hook, pkt)
        };
        // A packet that arrives went through PREROUTING first: a drop there is its fate
        // (Docker's raw "DROP DIRECT ACCESS", an rpfilter), whatever `hook` would do.
        let prerouting =
            matches!(hook, Hook::Input | Hook::Forward).then(|| walk(Hook::Prerouting, pkt));
        let stopped_before: Vec<ruleset::eval::Alternative> = prerouting
            .iter()
            .flat_map(|ev| ev.outcomes())
            .filter(|o| o.verdict != ruleset::eval::Verdict::Accept)
            .collect();
        let reaches_hook = prerouting.as_ref().is_none_or(|ev| {
            ev.outcomes()
                .any(|o| o.verdict == ruleset::eval::Verdict::Accept)
        });
        let ev = match prerouting {
            Some(ev) if !reaches_hook => ev,
            _ => walk(hook, at_hook),
        };
        let mut fates: Vec<&'static str> = ev.outcomes().map(|o| outcome_of(&o.verdict)).collect();
        if reaches_hook {
            fates.extend(stopped_before.iter().map(|o| outcome_of(&o.verdict)));
        }
        let outcome = if fates.iter().all(|f| *f == fates[0]) {
            fates[0]
        } else {
            "unsure"
        };
        let mut by = attribution_of(&ev);
        by.backends_mixed = crate::attribution::backends_mixed(rs);
        if outcome == "accept" {
            by = Attribution::none("no rule or policy drops it");
            if let DecidedBy::Rule(r) = &ev.by {
                by.why = format!("accepted by {}", r);
            }
        }
        let mut possible = Vec::new();
        if !ev.alternatives.is_empty() {
            let undecided: Vec<String> = ev
                .undecided
                .iter()
                .map(|(r, why)| format!("{r} ({why})"))
                .collect();
            possible.push(format!(
                "{} by {} if none of these matches: {}",
                outcome_of(&ev.verdict),
                ev.by,
                undecided.join("; ")
            ));
            for alt in &ev.alternatives {
                let assuming: Vec<String> = alt.assuming.iter().map(|r| r.to_string()).collect();
                possible.push(format!(
                    "{} by {} if {} matches",
                    outcome_of(&alt.verdict),
                    alt.by,
                    assuming.join(" and ")
                ));
            }
            if ev.alternatives_truncated {
                possible.push("(more combinations not followed)".into());
            }
        }
        if reaches_hook && !stopped_before.is_empty() {
            if ev.alternatives.is_empty() {
                possible.push(format!(
                    "{} by {} if nothing in PREROUTING stops it",
                    outcome_of(&ev.verdict),
                    ev.by
                ));
            }
            for o in &stopped_before {
                let assuming: Vec<String> = o.assuming.iter().map(|r| r.to_string()).collect();
                possible.push(format!(
                    "{} in PREROUTING by {} if {} matches",
                    outcome_of(&o.verdict),
                    o.by,
                    assuming.join(" and ")
                ));
            }
        }
        engines.push(EngineResult {
            engine: name,
            backends,
            outcome,
            by,
            possible,
        });
    }
    let sure_drop = engines
        .iter()
        .find(|e| !matches!(e.outcome, "accept" | "unsure"));
    let unsure = engines.iter().find(|e| e.outcome == "unsure");
    let (verdict, by) = match (sure_drop, unsure) {
        (Some(e), _) => (e.outcome, Some(e.by.clone())),
        (None, Some(e)) => ("unsure", Some(e.by.clone())),
        (None, None) => ("accept", None),
    };
    (engines, verdict, by)
}

/// `explain`'s exit status: 0 the packet would pass, 1 it would be dropped, rejected or
/// queued, 3 droptrace cannot tell (2 is an error, as for every command).
pub const EXIT_UNSURE: u8 = 3;

pub fn run_explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let mut pkt = packet(&args)?;
    let netns = netns_path(args.netns.as_ref())?;
    let snap = read_snapshot(netns.as_deref())?;
    let mut assumed = fill_in_route(&mut pkt, &args, netns.as_deref());
    assumed.extend(follow_notrack(&mut pkt, &snap.ruleset, args.hook));
    let (hook, translated) = follow_nat(
        &mut pkt,
        &snap.ruleset,
        args.hook,
        netns.as_deref(),
        args.oif.is_some(),
    );
    assumed.extend(translated);
    pkt.reverse_path = reverse_path(&pkt, hook, netns.as_deref());
    let (at_hook, marked) = marks_after_prerouting(&snap.ruleset, hook, &pkt);
    assumed.extend(marked);
    let (engines, verdict, by) = explain_arriving(&snap.ruleset, hook, &pkt, &at_hook);
    let report = Explanation {
        kind: "explain",
        outcome: verdict,
        assumed,
        by,
        engines,
        problems: snap.problems,
    };
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        let what = format!(
            "{} {} -> {}",
            crate::kernel::filter::proto_name(pkt.proto),
            crate::record::endpoint(pkt.src, pkt.sport),
            crate::record::endpoint(pkt.dst, pkt.dport)
        );
        match (&report.by, verdict) {
            (_, "unsure") => writeln!(
                out,
                "{what}: UNSURE: it depends on rules droptrace cannot decide"
            )?,
            (Some(a), _) => writeln!(
                out,
                "{what}: would {} by {} ({})",
                verdict.to_uppercase(),
                terminal(&a.label().unwrap_or_default()),
                a.backend.as_deref().unwrap_or("?")
            )?,
            (None, _) => writeln!(out, "{what}: would ACCEPT")?,
        }
        for a in &report.assumed {
            writeln!(out, "  assumed: {}", terminal(a))?;
        }
        for e in &report.engines {
            let label = e.by.label().unwrap_or_else(|| e.by.why.clone());
            // The backend an engineer lists rules with, not the kernel's engine: the
            // deciding rule's, else those the engine has tables of.
            let backend = e.by.backend.clone().unwrap_or_else(|| e.backends.join("+"));
            writeln!(
                out,
                "  {:<15} {:<7} {}",
                terminal(&backend),
                e.outcome,
                terminal(&label)
            )?;
            for p in &e.possible {
                writeln!(out, "      {}", terminal(p))?;
            }
        }
        for p in &report.problems {
            writeln!(out, "  note: {}", terminal(p))?;
        }
    }
    // Like verify: 0 when the packet would pass, 1 when it would be dropped.
    Ok(ExitCode::from(match verdict {
        "accept" => 0,
        "unsure" => EXIT_UNSURE,
        _ => 1,
    }))
}

pub fn run_rules(args: RulesArgs) -> anyhow::Result<ExitCode> {
    let netns = netns_path(args.netns.as_ref())?;
    let snap = read_snapshot(netns.as_deref())?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &snap.ruleset)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    write_rules(&mut out, &snap.ruleset)?;
    for p in &snap.problems {
        writeln!(out, "note: {}", terminal(p))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The ruleset, one chain after another, with counters and undecidable matches marked `?`.
pub fn write_rules(out: &mut impl io::Write, rs: &ruleset::Ruleset) -> io::Result<()> {
    if rs.tables.iter().all(|t| t.chains.is_empty()) {
        writeln!(
            out,
            "no rules: this namespace has no iptables (nft or legacy) or nftables chains"
        )?;
        return Ok(());
    }
    // What the columns are: a rule's place (or nft handle), the packets its counter has
    // seen, `?` where a match cannot be evaluated, and the rule.
    writeln!(
        out,
        "  {:<3} {:>8}   RULE (? = cannot be evaluated)",
        "#", "PACKETS"
    )?;
    for t in &rs.tables {
        let backend = t.backend.as_str();
        for c in &t.chains {
            let base = c.base.map(|b| {
                format!(
                    " (hook {:?}, priority {}, policy {:?})",
                    b.hook, b.priority, b.policy
                )
                .to_lowercase()
            });
            writeln!(
                out,
                "{backend} {} {}/{}{}",
                t.family,
                terminal(&t.name),
                terminal(&c.name),
                base.unwrap_or_default()
            )?;
            for r in &c.rules {
                let counters = r
                    .counters
                    .map_or("       -".to_string(), |k| format!("{:>8}", k.packets));
                let unsure: Vec<&str> = r
                    .matches
                    .iter()
                    .filter_map(|m| match &m.condition {
                        ruleset::Condition::Undecidable { reason } => Some(reason.as_str()),
                        _ => None,
                    })
                    .collect();
                let id = match r.handle {
                    Some(h) => format!("handle {h}"),
                    None => format!("{:>3}", r.position),
                };
                let mark = if unsure.is_empty() {
                    " ".to_string()
                } else {
                    "?".to_string()
                };
                write!(out, "  {id} {counters} {mark} {}", terminal(&r.text))?;
                if !unsure.is_empty() {
                    write!(
                        out,
                        "    # cannot evaluate: {}",
                        terminal(&unsure.join("; "))
                    )?;
                }
                writeln!(out)?;
            }
            if let Some(p) = c.policy_counters {
                writeln!(out, "  pol {:>8}   (policy)", p.packets)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INCIDENT: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
[0:0] -A OUTPUT -o lo -j ACCEPT\n\
[0:0] -A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
[0:0] -A OUTPUT -p tcp -m multiport --dports 80,443,22,3306 -j ACCEPT\n\
[0:0] -A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP\n\
[0:0] -A OUTPUT -m limit --limit 5/min -j LOG\nCOMMIT\n";

    fn ruleset() -> ruleset::Ruleset {
        ruleset::iptables_save::parse_ruleset(
            INCIDENT,
            ruleset::Backend::IptablesNft,
            ruleset::Family::Ipv4,
        )
        .unwrap()
    }

    fn args(dport: u16) -> ExplainArgs {
        ExplainArgs {
            netns: None,
            proto: Proto(6),
            dst: "203.0.113.10".parse().unwrap(),
            dport: Some(dport),
            src: None,
            sport: 49152,
            hook: Hook::Output,
            iif: None,
            oif: Some("eth0".into()),
            state: CtState::New,
            uid: None,
            gid: None,
            mark: 0,
            ct_mark: None,
            json: false,
        }
    }

    #[test]
    fn explains_the_incident() {
        let rs = ruleset();
        let (_, verdict, by) = explain(&rs, Hook::Output, &packet(&args(8443)).unwrap());
        assert_eq!(verdict, "drop");
        let by = by.unwrap();
        assert_eq!(by.rule_num, Some(4));
        assert_eq!(
            by.label().unwrap(),
            "filter/OUTPUT rule 4 `-A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP`"
        );
        let (_, verdict, _) = explain(&rs, Hook::Output, &packet(&args(443)).unwrap());
        assert_eq!(verdict, "accept");
        let mut est = args(8443);
        est.state = CtState::Established;
        let (_, verdict, _) = explain(&rs, Hook::Output, &packet(&est).unwrap());
        assert_eq!(
            verdict, "accept",
            "the ESTABLISHED,RELATED rule lets replies out"
        );
    }

    /// A packet from 198.51.100.7 arriving on eth0 for 203.0.113.10:`dport`.
    fn arriving(dport: u16) -> ruleset::Packet {
        let mut a = args(dport);
        a.hook = Hook::Input;
        a.iif = Some("eth0".into());
        a.oif = None;
        a.src = Some("198.51.100.7".parse().unwrap());
        packet(&a).unwrap()
    }

    /// An iptables-save text of whole tables, as iptables-nft's.
    fn ruleset_of_tables(text: &str) -> ruleset::Ruleset {
        ruleset::iptables_save::parse_ruleset(
            text,
            ruleset::Backend::IptablesNft,
            ruleset::Family::Ipv4,
        )
        .unwrap()
    }

    fn ruleset_of(save: &str) -> ruleset::Ruleset {
        let text = format!(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{save}\nCOMMIT\n"
        );
        ruleset::iptables_save::parse_ruleset(
            &text,
            ruleset::Backend::IptablesNft,
            ruleset::Family::Ipv4,
        )
        .unwrap()
    }

    /// A packet that arrives meets PREROUTING first: a drop there is its fate, and a rule
    /// there that cannot be decided makes the answer unsure, never a plain accept.
    #[test]
    fn a_drop_in_prerouting_comes_before_the_hook() {
        let rs = |raw: &str| {
            let text = format!(
                "*raw\n:PREROUTING ACCEPT [0:0]\n{raw}\nCOMMIT\n\
                 *filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 22 -j REJECT\nCOMMIT\n"
            );
            ruleset_of_tables(&text)
        };
        // Docker's "DROP DIRECT ACCESS" shape: raw PREROUTING drops what INPUT would take.
        let direct = rs("-A PREROUTING -d 203.0.113.10/32 ! -i br0 -j DROP");
        let (_, verdict, by) = explain(&direct, Hook::Input, &arriving(8080));
        assert_eq!(verdict, "drop");
        assert_eq!(by.unwrap().chain.as_deref(), Some("PREROUTING"));
        // Nothing in PREROUTING for it: INPUT decides.
        let (_, verdict, _) = explain(&rs(""), Hook::Input, &arriving(22));
        assert_eq!(verdict, "reject");
        // A rule there that cannot be decided: the fates differ, so unsure, with both said.
        let limit = rs("-A PREROUTING -m limit --limit 1/s -j DROP");
        let (engines, verdict, _) = explain(&limit, Hook::Input, &arriving(8080));
        assert_eq!(verdict, "unsure");
        assert!(
            engines[0]
                .possible
                .iter()
                .any(|p| p.contains("in PREROUTING")),
            "{:?}",
            engines[0].possible
        );
    }

    /// A notrack rule in raw PREROUTING (a DNS server's usual one) keeps conntrack away:
    /// INPUT's rules see the packet UNTRACKED, not NEW.
    #[test]
    fn a_notrack_rule_before_conntrack_makes_it_untracked() {
        let text = "*raw\n:PREROUTING ACCEPT [0:0]\n\
             -A PREROUTING -p tcp -m tcp --dport 5555 -j CT --notrack\n\
             -A PREROUTING -p tcp -m tcp --dport 5557 -m limit --limit 1/s -j CT --notrack\n\
             COMMIT\n\
             *filter\n:INPUT DROP [0:0]\n\
             -A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             -A INPUT -m conntrack --ctstate UNTRACKED -j ACCEPT\n\
             COMMIT\n";
        let rs = ruleset_of_tables(text);
        let question = |dport| {
            let mut pkt = arriving(dport);
            let said = follow_notrack(&mut pkt, &rs, Hook::Input);
            let (_, verdict, _) = explain(&rs, Hook::Input, &pkt);
            (verdict, said)
        };
        let (verdict, said) = question(5555);
        assert_eq!(verdict, "accept");
        let said = said.unwrap();
        assert!(
            said.starts_with("untracked: ip raw/PREROUTING rule 1"),
            "{said}"
        );
        // Not notracked: NEW, and the policy drops it.
        assert_eq!(question(5556), ("drop", None));
        // Notracked only if a rate limit says so: the state is not known.
        let (verdict, said) = question(5557);
        assert_eq!(verdict, "unsure");
        assert!(said.unwrap().starts_with("conntrack state unknown"));
    }

    /// A mark set in mangle PREROUTING is what INPUT's rules see (a policy-routing or
    /// network-plugin pattern): without it, explain answered drop, certain, for a packet
    /// the kernel accepts.
    #[test]
    fn a_mark_set_in_prerouting_reaches_the_hook() {
        let text = "*mangle\n:PREROUTING ACCEPT [0:0]\n\
             -A PREROUTING -p tcp -m tcp --dport 7777 -j MARK --set-xmark 0x10/0xffffffff\n\
             -A PREROUTING -p tcp -m tcp --dport 7779 -m limit --limit 1/s -j MARK --set-xmark 0x10/0xffffffff\n\
             COMMIT\n\
             *filter\n:INPUT DROP [0:0]\n\
             -A INPUT -m mark --mark 0x10 -j ACCEPT\n\
             COMMIT\n";
        let rs = ruleset_of_tables(text);
        let question = |dport| {
            let pkt = arriving(dport);
            let (at_hook, said) = marks_after_prerouting(&rs, Hook::Input, &pkt);
            let (_, verdict, _) = explain_arriving(&rs, Hook::Input, &pkt, &at_hook);
            (verdict, said.into_iter().next())
        };
        assert_eq!(
            question(7777),
            (
                "accept",
                Some("mark 0x10 after PREROUTING (it arrived with 0x0)".into())
            )
        );
        assert_eq!(question(7778), ("drop", None));
        let (verdict, said) = question(7779);
        assert_eq!(verdict, "unsure");
        assert!(said.unwrap().starts_with("mark unknown after PREROUTING"));
    }

    /// What was not given is unknown, not absent: `! -o lo -j DROP` without --oif, an
    /// owner rule without --uid, kube-proxy's `-m addrtype` drop. Never a plain accept.
    #[test]
    fn what_it_was_not_told_makes_it_unsure() {
        let mut a = args(22);
        a.oif = None;
        let p = packet(&a).unwrap();
        let (engines, verdict, by) =
            explain(&ruleset_of("-A OUTPUT ! -o lo -j DROP"), Hook::Output, &p);
        assert_eq!(verdict, "unsure");
        assert!(by.is_some());
        assert_eq!(engines[0].possible.len(), 2, "{:?}", engines[0].possible);

        let (_, verdict, _) = explain(
            &ruleset_of("-A OUTPUT -m owner --uid-owner 0 -j DROP"),
            Hook::Output,
            &packet(&args(22)).unwrap(),
        );
        assert_eq!(verdict, "unsure");
        let mut root = args(22);
        root.uid = Some(0);
        let (_, verdict, _) = explain(
            &ruleset_of("-A OUTPUT -m owner --uid-owner 0 -j DROP"),
            Hook::Output,
            &packet(&root).unwrap(),
        );
        assert_eq!(verdict, "drop");
        let mut gid = args(22);
        gid.gid = Some(50);
        let (_, verdict, _) = explain(
            &ruleset_of("-A OUTPUT -m owner --gid-owner 50 -j DROP"),
            Hook::Output,
            &packet(&gid).unwrap(),
        );
        assert_eq!(verdict, "drop", "the socket's group is matched");

        // kube-proxy, KUBE-EXTERNAL-SERVICES (from an iptables-save of a node, cut).
        let kube = ruleset_of(
            ":KUBE-EXTERNAL-SERVICES - [0:0]\n\
             -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
             -A KUBE-EXTERNAL-SERVICES -m comment --comment \"default/web has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j DROP",
        );
        let mut input = args(30080);
        input.hook = Hook::Input;
        input.oif = None;
        input.iif = Some("eth0".into());
        let (_, verdict, _) = explain(&kube, Hook::Input, &packet(&input).unwrap());
        assert_eq!(verdict, "unsure");
    }

    #[test]
    fn bad_packets_are_refused() {
        let mut a = args(8443);
        a.dport = None;
        assert!(packet(&a).is_err());
        let mut a = args(8443);
        a.src = Some("2001:db8::1".parse().unwrap());
        assert!(packet(&a).is_err());
    }

    #[test]
    fn an_empty_ruleset_says_so() {
        let mut buf = Vec::new();
        write_rules(&mut buf, &ruleset::Ruleset::default()).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.starts_with("no rules:"), "{text}");
    }

    #[test]
    fn rules_listing_marks_what_cannot_be_evaluated() {
        let mut buf = Vec::new();
        write_rules(&mut buf, &ruleset()).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.starts_with("  #    PACKETS   RULE"), "{text}");
        assert!(
            text.contains("iptables-nft ip filter/OUTPUT (hook output, priority 0, policy accept)"),
            "{text}"
        );
        let limit = text.lines().find(|l| l.contains("-m limit")).unwrap();
        assert!(
            limit.contains(" ? ") && limit.contains("cannot evaluate"),
            "{limit}"
        );
        assert!(
            !text
                .lines()
                .find(|l| l.contains("1024:65535"))
                .unwrap()
                .contains("cannot evaluate")
        );
    }
}
