//! `droptrace explain` and `droptrace rules`: the rule engine without traffic.
//!
//! `explain` asks "what would the current ruleset do to this packet?" — the way to check a
//! fix before applying it — with the same evaluation and fields as live attribution.
//! `rules` shows the ruleset as droptrace understands it, counters included and the matches
//! it cannot evaluate marked, so a wrong attribution can be diagnosed.

use std::{
    io::{self, Write as _},
    net::IpAddr,
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{
    attribution::{Attribution, evaluate, snapshot::Snapshot},
    escape::terminal,
    filter::Proto,
    netns::NetnsSelector,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HookArg {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateArg {
    New,
    Established,
    Related,
    Invalid,
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// Namespace whose ruleset to use: a name, a path, or `host` (default: droptrace's own).
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// Protocol: tcp, udp, icmp, icmpv6, sctp or a number.
    #[arg(long, value_name = "PROTO")]
    pub proto: Proto,
    /// Destination address.
    #[arg(long, value_name = "ADDR")]
    pub dst: IpAddr,
    /// Destination port (TCP, UDP, SCTP).
    #[arg(long, value_name = "PORT")]
    pub dport: Option<u16>,
    /// Source address (default: unspecified, which matches no `-s` rule).
    #[arg(long, value_name = "ADDR")]
    pub src: Option<IpAddr>,
    /// Source port (default 49152, an ephemeral port).
    #[arg(long, value_name = "PORT", default_value_t = 49152)]
    pub sport: u16,
    /// Hook the packet traverses (default output: egress from this host).
    #[arg(long, value_enum, default_value_t = HookArg::Output)]
    pub hook: HookArg,
    /// Input interface (for prerouting, input, forward).
    #[arg(long, value_name = "IFNAME")]
    pub iif: Option<String>,
    /// Output interface (for output, forward, postrouting).
    #[arg(long, value_name = "IFNAME")]
    pub oif: Option<String>,
    /// Conntrack state of the packet (default new: a first SYN or datagram).
    #[arg(long, value_enum, default_value_t = StateArg::New)]
    pub state: StateArg,
    /// Socket owner uid (for `-m owner` / `meta skuid`).
    #[arg(long, value_name = "UID")]
    pub uid: Option<u32>,
    /// Packet mark.
    #[arg(long, value_name = "MARK", default_value_t = 0)]
    pub mark: u32,
    /// Report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RulesArgs {
    /// Namespace whose ruleset to show: a name, a path (default: droptrace's own).
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// Print the parsed ruleset as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What the ruleset would do, per engine, and overall.
#[derive(Debug, Serialize)]
pub struct Explanation {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `drop`, `reject` or `accept` (the rule's own `verdict` is among the rule fields).
    pub outcome: &'static str,
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
    pub outcome: &'static str,
    #[serde(flatten)]
    pub by: Attribution,
}

fn read_snapshot(netns: Option<&str>) -> anyhow::Result<Snapshot> {
    let path = match netns {
        None => None,
        Some(n) => {
            let sel = NetnsSelector::parse(n);
            let p = sel.path().context("--netns all is not one namespace")?;
            if !p.exists() {
                bail!(
                    "no network namespace {n:?}: {} does not exist (see `ip netns list`)",
                    p.display()
                );
            }
            Some(p)
        }
    };
    if !nix::unistd::geteuid().is_root() {
        bail!("reading the ruleset needs root (CAP_NET_ADMIN)");
    }
    Ok(Snapshot::read(path.as_deref()))
}

pub fn packet(args: &ExplainArgs) -> anyhow::Result<ruleset::Packet> {
    let family = if args.dst.is_ipv6() {
        ruleset::Family::Ipv6
    } else {
        ruleset::Family::Ipv4
    };
    let src = match args.src {
        Some(s) if s.is_ipv6() != args.dst.is_ipv6() => {
            bail!("--src and --dst are of different families")
        }
        Some(s) => s,
        None if args.dst.is_ipv6() => IpAddr::from([0u16; 8]),
        None => IpAddr::from([0u8; 4]),
    };
    let ports = matches!(args.proto.0, 6 | 17 | 132);
    if !ports && args.dport.is_some() {
        bail!("--dport needs a protocol with ports (tcp, udp, sctp)");
    }
    if ports && args.dport.is_none() {
        bail!(
            "--dport is required for {}",
            crate::filter::proto_name(args.proto.0)
        );
    }
    let icmp = matches!(args.proto.0, 1 | 58);
    Ok(ruleset::Packet {
        family,
        proto: args.proto.0,
        src,
        dst: args.dst,
        sport: ports.then_some(args.sport),
        dport: args.dport,
        // A new TCP connection starts with a SYN; established traffic carries ACK.
        tcp_flags: (args.proto.0 == 6).then_some(if args.state == StateArg::New {
            0x02
        } else {
            0x10
        }),
        // Echo request: what `ping` sends.
        icmp_type: icmp.then_some(if args.proto.0 == 1 { 8 } else { 128 }),
        icmp_code: icmp.then_some(0),
        iif: args.iif.clone(),
        oif: args.oif.clone(),
        mark: args.mark,
        uid: args.uid,
        gid: None,
        ct_state: Some(match args.state {
            StateArg::New => ruleset::CtState::New,
            StateArg::Established => ruleset::CtState::Established,
            StateArg::Related => ruleset::CtState::Related,
            StateArg::Invalid => ruleset::CtState::Invalid,
        }),
        len: 60,
    })
}

fn hook(h: HookArg) -> ruleset::Hook {
    match h {
        HookArg::Prerouting => ruleset::Hook::Prerouting,
        HookArg::Input => ruleset::Hook::Input,
        HookArg::Forward => ruleset::Hook::Forward,
        HookArg::Output => ruleset::Hook::Output,
        HookArg::Postrouting => ruleset::Hook::Postrouting,
    }
}

/// Evaluates the packet in both engines; the first that drops decides (the kernel runs
/// both on the hook and a drop in either is final).
pub fn explain(
    rs: &ruleset::Ruleset,
    hook: ruleset::Hook,
    pkt: &ruleset::Packet,
) -> (Vec<EngineResult>, &'static str, Option<Attribution>) {
    let mut engines = Vec::new();
    for (engine, name) in [
        (ruleset::Engine::NfTables, "nftables"),
        (ruleset::Engine::IptablesLegacy, "xtables"),
    ] {
        let has_chain = rs
            .tables
            .iter()
            .any(|t| engine.backends().contains(&t.backend));
        if !has_chain {
            continue;
        }
        let (mut by, decided) = evaluate(rs, engine, hook, pkt);
        let verdict = match by.verdict.as_deref() {
            Some("REJECT") => "reject",
            Some("QUEUE") => "queue",
            Some("DROP" | "policy") if decided.is_some() => "drop",
            _ => "accept",
        };
        if verdict == "accept" && decided.is_none() && by.table.is_none() {
            by.why = "no rule or policy drops it".into();
        }
        engines.push(EngineResult {
            engine: name,
            outcome: verdict,
            by,
        });
    }
    let decisive = engines.iter().find(|e| e.outcome != "accept");
    let verdict = decisive.map_or("accept", |e| e.outcome);
    let by = decisive.map(|e| e.by.clone());
    (engines, verdict, by)
}

pub fn run_explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let pkt = packet(&args)?;
    let snap = read_snapshot(args.netns.as_deref())?;
    let (engines, verdict, by) = explain(&snap.ruleset, hook(args.hook), &pkt);
    let report = Explanation {
        kind: "explain",
        outcome: verdict,
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
            crate::filter::proto_name(pkt.proto),
            crate::record::endpoint(pkt.src, pkt.sport),
            crate::record::endpoint(pkt.dst, pkt.dport)
        );
        match &report.by {
            Some(a) => writeln!(
                out,
                "{what}: would {} by {} ({})",
                verdict.to_uppercase(),
                terminal(&a.label().unwrap_or_default()),
                a.backend.as_deref().unwrap_or("?")
            )?,
            None => writeln!(out, "{what}: would ACCEPT")?,
        }
        for e in &report.engines {
            let label = e.by.label().unwrap_or_else(|| e.by.why.clone());
            writeln!(
                out,
                "  {:<9} {:<7} {}",
                e.engine,
                e.outcome,
                terminal(&label)
            )?;
        }
        for p in &report.problems {
            writeln!(out, "  note: {}", terminal(p))?;
        }
    }
    // Like verify: 0 when the packet would pass, 1 when it would be dropped.
    Ok(ExitCode::from(if verdict == "accept" { 0 } else { 1 }))
}

pub fn run_rules(args: RulesArgs) -> anyhow::Result<ExitCode> {
    let snap = read_snapshot(args.netns.as_deref())?;
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
    for t in &rs.tables {
        let backend = crate::attribution::backend_name(t.backend);
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
        let tables = ruleset::iptables_save::parse(
            INCIDENT,
            ruleset::Backend::IptablesNft,
            ruleset::Family::Ipv4,
        )
        .unwrap();
        ruleset::Ruleset {
            tables,
            ipsets: Default::default(),
        }
    }

    fn args(dport: u16) -> ExplainArgs {
        ExplainArgs {
            netns: None,
            proto: Proto(6),
            dst: "203.0.113.10".parse().unwrap(),
            dport: Some(dport),
            src: None,
            sport: 49152,
            hook: HookArg::Output,
            iif: None,
            oif: Some("eth0".into()),
            state: StateArg::New,
            uid: None,
            mark: 0,
            json: false,
        }
    }

    #[test]
    fn explains_the_incident() {
        let rs = ruleset();
        let (_, verdict, by) = explain(&rs, ruleset::Hook::Output, &packet(&args(8443)).unwrap());
        assert_eq!(verdict, "drop");
        let by = by.unwrap();
        assert_eq!(by.rule_num, Some(4));
        assert_eq!(
            by.label().unwrap(),
            "filter/OUTPUT rule 4 `-A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP`"
        );
        let (_, verdict, _) = explain(&rs, ruleset::Hook::Output, &packet(&args(443)).unwrap());
        assert_eq!(verdict, "accept");
        let mut est = args(8443);
        est.state = StateArg::Established;
        let (_, verdict, _) = explain(&rs, ruleset::Hook::Output, &packet(&est).unwrap());
        assert_eq!(
            verdict, "accept",
            "the ESTABLISHED,RELATED rule lets replies out"
        );
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
    fn rules_listing_marks_what_cannot_be_evaluated() {
        let mut buf = Vec::new();
        write_rules(&mut buf, &ruleset()).unwrap();
        let text = String::from_utf8(buf).unwrap();
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
