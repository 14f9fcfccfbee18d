//! `droptrace audit --ruleset FILE`: before a ruleset goes live, which of the host's real
//! flows would it drop, by which rule, breaking which process?
//!
//! The incident happened because a hardening ruleset was applied without knowing what the
//! host talked to. `audit` takes the flows of an inventory (`--from inventory.json`) or of
//! live traffic (`--duration`) and evaluates each one against the proposed ruleset with
//! the rule engine that names rules for `watch` ([`crate::attribution::attribution_of`]): as
//! the first packet of a new connection leaving the host — hook OUTPUT then POSTROUTING,
//! conntrack state NEW, a TCP SYN, the flow's own addresses, output interface, mark and
//! socket owner.
//!
//! The proposed ruleset is never applied to the host. `iptables-save` text and `nft -j`
//! JSON are parsed directly. `nft` syntax has no parser here, and writing one would be a
//! second opinion on what nft means; instead droptrace creates a throw-away network
//! namespace (a thread `unshare(CLONE_NEWNET)`s, so the namespace dies with the thread),
//! loads the file there with the real `nft -f` and reads it back with `nft -j list
//! ruleset`. What the kernel accepted is what gets evaluated, and a file nft rejects is
//! rejected with nft's own message.
//!
//! The proposed ruleset is evaluated on its own, as if it replaced the whole ruleset.
//! Rules the engine cannot decide (`-m recent`, `-m string`, ...) are not guessed: a flow
//! they could drop is reported as `unsure`, and `unsure` fails the audit like a drop —
//! "safe to apply" must not rest on a guess. Exit 0: nothing would be dropped; 1: some
//! flow would be dropped, rejected, or might be; 2: droptrace could not tell (bad input).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{self, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use ruleset::{Backend, Engine, Family, Hook, Ruleset, eval::Verdict};
use serde::Serialize;

use crate::{
    attribution,
    cli::FilterArgs,
    escape::terminal,
    filter::Proto,
    inventory::{self, Flow, Inventory, Service},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RulesetFormat {
    /// JSON: nft -j; `*table`/`-A` lines: iptables-save (ip6tables when it names IPv6
    /// addresses); anything else: an nft script.
    Auto,
    /// `iptables-save` output (IPv4), as `iptables-restore` would load it.
    IptablesSave,
    /// `ip6tables-save` output (IPv6).
    Ip6tablesSave,
    /// An `nft -f` script (loaded into a throw-away network namespace to be read).
    Nft,
    /// `nft -j list ruleset` output.
    NftJson,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("flows").required(true).args(["from", "duration"])))]
pub struct AuditArgs {
    /// The proposed ruleset: iptables-save output, an nft script, or `nft -j list ruleset`
    /// JSON. It is never applied to the host.
    #[arg(long, value_name = "FILE")]
    pub ruleset: PathBuf,
    /// Format of the ruleset file.
    #[arg(long, value_enum, default_value_t = RulesetFormat::Auto)]
    pub format: RulesetFormat,
    /// Check the flows of an inventory written by `droptrace inventory --write FILE`.
    #[arg(long, value_name = "INVENTORY.json")]
    pub from: Option<PathBuf>,
    /// Or watch the host's outbound flows for this long (Ctrl-C ends it sooner) and check
    /// those; the filter flags select which.
    #[arg(long, value_name = "DURATION", value_parser = crate::cli::parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub filters: FilterArgs,
    /// Report as one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// A proposed ruleset, read.
#[derive(Debug)]
pub struct Proposed {
    pub ruleset: Ruleset,
    /// What the file was read as, in words.
    pub format: String,
}

/// Which format a ruleset file is in, when not told.
pub fn detect(text: &str) -> RulesetFormat {
    let lines = || {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
    };
    match lines().next() {
        Some(l) if l.starts_with('{') || l.starts_with('[') => return RulesetFormat::NftJson,
        None => return RulesetFormat::Nft,
        _ => {}
    }
    let iptables = lines().any(|l| {
        (l.starts_with('*') && l.len() > 1 && l[1..].chars().all(|c| c.is_ascii_lowercase()))
            || l.starts_with("-A ")
            || l == "COMMIT"
    });
    if !iptables {
        return RulesetFormat::Nft;
    }
    // ip6tables-save looks the same: tell by the addresses and protocols it names.
    let v6 = lines().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.windows(2).any(|w| {
            matches!(w[0], "-s" | "-d" | "--source" | "--destination") && w[1].contains(':')
        }) || words
            .iter()
            .any(|w| matches!(*w, "ipv6-icmp" | "icmpv6" | "--icmpv6-type"))
    });
    if v6 {
        RulesetFormat::Ip6tablesSave
    } else {
        RulesetFormat::IptablesSave
    }
}

/// Reads the proposed ruleset at `path`.
pub fn load(path: &Path, format: RulesetFormat) -> anyhow::Result<Proposed> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let format = match format {
        RulesetFormat::Auto => detect(&text),
        f => f,
    };
    let name = path.display();
    let (tables, described) = match format {
        RulesetFormat::IptablesSave | RulesetFormat::Ip6tablesSave => {
            let family = if format == RulesetFormat::Ip6tablesSave {
                Family::Ipv6
            } else {
                Family::Ipv4
            };
            // iptables-restore on our hosts is iptables-nft: the nf_tables engine.
            let tables = ruleset::iptables_save::parse(&text, Backend::IptablesNft, family)
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            let v = if family == Family::Ipv6 { "6" } else { "" };
            (
                tables,
                format!("ip{v}tables-save, as ip{v}tables-restore (nf_tables) would load it"),
            )
        }
        RulesetFormat::NftJson => (
            ruleset::nft_json::parse(&text).map_err(|e| anyhow::anyhow!("{name}: {e}"))?,
            "nft -j JSON".to_string(),
        ),
        RulesetFormat::Nft | RulesetFormat::Auto => (
            nft_in_throwaway_netns(path)?,
            "nft script, loaded with nft -f in a throw-away network namespace".to_string(),
        ),
    };
    if tables.is_empty() {
        bail!("{name}: no table in the ruleset (wrong --format?)");
    }
    Ok(Proposed {
        ruleset: Ruleset {
            tables,
            ipsets: Default::default(),
            local_routes: None,
        },
        format: described,
    })
}

/// Loads an nft script into a network namespace that exists only for one thread, and
/// reads back what the kernel accepted. The host's ruleset is never touched.
fn nft_in_throwaway_netns(path: &Path) -> anyhow::Result<Vec<ruleset::Table>> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "reading an nft script needs root (it is loaded into a throw-away network namespace)"
        );
    }
    let nft = crate::tools::find_program("nft")
        .context("nft is not installed: it is needed to read nft syntax (or give `nft -j list ruleset` JSON)")?;
    let path = path
        .canonicalize()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let (json, listing) = std::thread::spawn(move || -> anyhow::Result<(String, String)> {
        // Only this thread moves; the namespace goes away when it and its children exit.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("cannot create a throw-away network namespace")?;
        let run = |args: &[&std::ffi::OsStr]| -> anyhow::Result<String> {
            let out = Command::new(&nft)
                .args(args)
                .stdin(Stdio::null())
                .env("LC_ALL", "C")
                .output()
                .context("cannot run nft")?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                let first = err
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or("failed");
                bail!("nft rejected {}: {first}", path.display());
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        run(&["-f".as_ref(), path.as_os_str()])?;
        let json = run(&["-j".as_ref(), "list".as_ref(), "ruleset".as_ref()])?;
        let listing =
            run(&["-a".as_ref(), "list".as_ref(), "ruleset".as_ref()]).unwrap_or_default();
        Ok((json, listing))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the nft loader thread panicked"))??;
    let mut tables =
        ruleset::nft_json::parse(&json).map_err(|e| anyhow::anyhow!("nft -j output: {e}"))?;
    ruleset::nft_text::apply(&mut tables, &ruleset::nft_text::handles(&listing));
    Ok(tables)
}

/// Source port assumed when the flow's own was not known yet (a TCP connect is seen
/// before the kernel picks it): the start of the IANA ephemeral range.
const EPHEMERAL_PORT: u16 = 49152;

/// The flow's first packet, as the proposed ruleset would see it leave the host.
pub fn packet_of(f: &Flow) -> Result<ruleset::Packet, String> {
    let proto = f.proto.parse::<Proto>().map_err(|e| e.to_string())?.0;
    let v6 = f.dst.is_ipv6();
    let ports = ruleset::names::has_ports(proto);
    if ports && f.dport.is_none() {
        return Err(format!("a {} flow without a port", f.proto));
    }
    let mut p = ruleset::Packet::first_of_flow(
        proto,
        f.src.filter(|s| s.is_ipv6() == v6),
        f.dst,
        f.sport.unwrap_or(EPHEMERAL_PORT),
        f.dport.filter(|_| ports),
        ruleset::CtState::New,
        Hook::Output,
    )
    .map_err(|e| e.to_string())?;
    if p.icmp_type.is_some() {
        p.icmp_type = f.icmp_type.or(p.icmp_type);
        p.icmp_code = f.icmp_code.or(p.icmp_code);
    }
    p.oif = f.oif.clone();
    p.mark = f.mark;
    p.uid = f.uid;
    Ok(p)
}

/// What the proposed ruleset would do to one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    Pass {
        /// The rule that accepts it, when one does (else the policies let it through).
        by: Option<String>,
    },
    /// Dropped or rejected, by this rule.
    Blocked {
        verdict: &'static str,
        by: String,
        hook: &'static str,
    },
    /// Depends on rules the engine cannot evaluate (or on a userspace queue).
    Unsure { why: String },
}

/// Evaluates `f`'s first packet on the egress hooks, in both engines, like the kernel.
pub fn judge(rs: &Ruleset, f: &Flow) -> Judgement {
    let pkt = match packet_of(f) {
        Ok(p) => p,
        Err(why) => return Judgement::Unsure { why },
    };
    let mut unsure = Vec::new();
    let mut accepted_by = None;
    for (hook, hook_name) in [(Hook::Output, "OUTPUT"), (Hook::Postrouting, "POSTROUTING")] {
        for engine in [Engine::NfTables, Engine::IptablesLegacy] {
            if !rs
                .tables
                .iter()
                .any(|t| engine.backends().contains(&t.backend))
            {
                continue;
            }
            let ev = ruleset::eval::evaluate(rs, engine.backends(), pkt.family, hook, &pkt);
            let label = attribution::attribution_of(&ev).label();
            let blocks = |v: &Verdict| matches!(v, Verdict::Drop | Verdict::Reject { .. });
            let outcomes: Vec<_> = ev.outcomes().collect();
            let dropping = outcomes.iter().filter(|o| blocks(&o.verdict)).count();
            let queued = outcomes.iter().any(|o| matches!(o.verdict, Verdict::Queue));
            // A verdict is definite only when every outcome the undecided rules allow
            // agrees; rules whose outcomes all accept (a `-m limit` LOG) change nothing.
            if dropping == outcomes.len() && !ev.alternatives_truncated && !queued {
                return Judgement::Blocked {
                    verdict: if matches!(ev.verdict, Verdict::Drop) {
                        "drop"
                    } else {
                        "reject"
                    },
                    by: label.unwrap_or_else(|| format!("{hook_name} (no rule named)")),
                    hook: hook_name,
                };
            }
            if dropping > 0 || queued || ev.alternatives_truncated {
                let undecided: Vec<String> = ev
                    .undecided
                    .iter()
                    .map(|(r, why)| format!("{} cannot be evaluated: {why}", r.place()))
                    .collect();
                let fate = if queued {
                    "a userspace queue (NFQUEUE) may decide it".to_string()
                } else {
                    format!(
                        "{dropping} of {} ways these rules can go drop it",
                        outcomes.len()
                    )
                };
                unsure.push(format!("{hook_name}: {fate}; {}", undecided.join("; ")));
                continue;
            }
            if let ruleset::DecidedBy::Rule(r) = &ev.by {
                accepted_by = Some(format!("{} `{}`", r.place(), r.text));
            }
        }
    }
    if unsure.is_empty() {
        Judgement::Pass { by: accepted_by }
    } else {
        Judgement::Unsure {
            why: unsure.join("; "),
        }
    }
}

/// A service the proposed ruleset would block, with the processes that would break.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BlockedService {
    pub destination: String,
    pub proto: String,
    pub dst: IpAddr,
    pub dport: Option<u16>,
    pub icmp_type: Option<u8>,
    pub processes: Vec<String>,
    /// Flows (process × namespace) and their attempts in the inventory.
    pub flows: usize,
    pub count: u64,
}

/// Everything one rule would block.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Blocked {
    pub rule: String,
    /// `drop` or `reject`.
    pub verdict: &'static str,
    pub hook: &'static str,
    pub services: Vec<BlockedService>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UnsureService {
    pub destination: String,
    pub proto: String,
    pub dst: IpAddr,
    pub dport: Option<u16>,
    pub processes: Vec<String>,
    pub why: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PassingService {
    pub destination: String,
    pub proto: String,
    pub dst: IpAddr,
    pub dport: Option<u16>,
    /// The accepting rule, when one does.
    pub by: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AuditReport {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `pass`: nothing would be dropped; `fail`: something would (or might) be.
    pub verdict: &'static str,
    pub ruleset: String,
    pub format: String,
    pub flows_from: String,
    pub services: usize,
    pub flows: usize,
    pub would_drop: Vec<Blocked>,
    pub unsure: Vec<UnsureService>,
    pub would_pass: Vec<PassingService>,
    pub notes: Vec<String>,
}

impl AuditReport {
    pub fn failed(&self) -> bool {
        !self.would_drop.is_empty() || !self.unsure.is_empty()
    }
}

fn processes(flows: &[&Flow]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in flows {
        let p = f.process();
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Judges every flow of `inv` and groups the result by rule and service.
pub fn audit(proposed: &Proposed, inv: &Inventory, ruleset: &str, flows_from: &str) -> AuditReport {
    let mut blocked: BTreeMap<(String, &'static str, &'static str), Vec<BlockedService>> =
        BTreeMap::new();
    let mut unsure = Vec::new();
    let mut would_pass = Vec::new();
    let mut notes = Vec::new();
    let mut flows = 0;
    for s in &inv.services {
        flows += s.flows.len();
        // Flows of one service can differ (process, namespace, mark, owner).
        let mut by_rule: BTreeMap<(String, &'static str, &'static str), Vec<&Flow>> =
            BTreeMap::new();
        let mut doubts: BTreeMap<String, Vec<&Flow>> = BTreeMap::new();
        let mut accepted: BTreeSet<Option<String>> = BTreeSet::new();
        for f in &s.flows {
            match judge(&proposed.ruleset, f) {
                Judgement::Blocked { verdict, by, hook } => {
                    by_rule.entry((by, verdict, hook)).or_default().push(f)
                }
                Judgement::Unsure { why } => doubts.entry(why).or_default().push(f),
                Judgement::Pass { by } => {
                    accepted.insert(by);
                }
            }
        }
        let blocked_any = !by_rule.is_empty();
        for (key, fs) in by_rule {
            blocked.entry(key).or_default().push(BlockedService {
                destination: s.destination(),
                proto: s.proto.clone(),
                dst: s.dst,
                dport: s.dport,
                icmp_type: s.icmp_type,
                processes: processes(&fs),
                flows: fs.len(),
                count: fs.iter().map(|f| f.count).sum(),
            });
        }
        for (why, fs) in &doubts {
            unsure.push(UnsureService {
                destination: s.destination(),
                proto: s.proto.clone(),
                dst: s.dst,
                dport: s.dport,
                processes: processes(fs),
                why: why.clone(),
            });
        }
        if !blocked_any && doubts.is_empty() {
            would_pass.push(PassingService {
                destination: s.destination(),
                proto: s.proto.clone(),
                dst: s.dst,
                dport: s.dport,
                by: accepted.into_iter().flatten().next(),
            });
        }
    }
    let families_seen = |ipv6: bool| {
        proposed.ruleset.tables.iter().any(|t| {
            t.family
                .sees(if ipv6 { Family::Ipv6 } else { Family::Ipv4 })
        })
    };
    for (v6, name) in [(false, "IPv4"), (true, "IPv6")] {
        if inv.services.iter().any(|s: &Service| s.dst.is_ipv6() == v6) && !families_seen(v6) {
            notes.push(format!(
                "the proposed ruleset has no {name} table: {name} flows pass untouched"
            ));
        }
    }
    if inv.services.is_empty() {
        notes.push("the inventory has no flows: nothing was checked".into());
    }
    let mut would_drop: Vec<Blocked> = blocked
        .into_iter()
        .map(|((rule, verdict, hook), services)| Blocked {
            rule,
            verdict,
            hook,
            services,
        })
        .collect();
    would_drop.sort_by_key(|b| std::cmp::Reverse(b.services.len()));
    let failed = !would_drop.is_empty() || !unsure.is_empty();
    AuditReport {
        kind: "audit",
        verdict: if failed { "fail" } else { "pass" },
        ruleset: ruleset.to_string(),
        format: proposed.format.clone(),
        flows_from: flows_from.to_string(),
        services: inv.services.len(),
        flows,
        would_drop,
        unsure,
        would_pass,
        notes,
    }
}

fn filters_given(f: &FilterArgs) -> bool {
    f.netns != "all"
        || f.proto.is_some()
        || f.src.is_some()
        || f.dst.is_some()
        || f.sport.is_some()
        || f.dport.is_some()
        || f.pid.is_some()
        || f.comm.is_some()
        || f.cgroup.is_some()
}

pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    // Read the ruleset first: a typo should not cost a capture window.
    let proposed = load(&args.ruleset, args.format)?;
    let (inv, flows_from) = match (&args.from, args.duration) {
        (Some(path), _) => {
            if filters_given(&args.filters) {
                bail!(
                    "--from reads a finished inventory; the filter flags (--netns, --proto, ...) select live traffic with --duration"
                );
            }
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let inv =
                inventory::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            (inv, path.display().to_string())
        }
        (None, Some(d)) => (
            inventory::collect(&args.filters, Some(d), false).await?,
            format!("live traffic ({})", humantime::format_duration(d)),
        ),
        (None, None) => bail!("give the flows to check: --from INVENTORY.json or --duration"),
    };
    let report = audit(
        &proposed,
        &inv,
        &args.ruleset.display().to_string(),
        &flows_from,
    );
    let mut out = io::stdout().lock();
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        write_text(&mut out, &report)
    };
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    Ok(ExitCode::from(u8::from(report.failed())))
}

/// The report for a terminal: the verdict, then each blocking rule with the services and
/// processes it would break.
pub fn write_text(out: &mut impl io::Write, r: &AuditReport) -> io::Result<()> {
    writeln!(
        out,
        "audit of {} ({}) against {} service(s), {} flow(s) from {}",
        terminal(&r.ruleset),
        r.format,
        r.services,
        r.flows,
        terminal(&r.flows_from)
    )?;
    let blocked: usize = r.would_drop.iter().map(|b| b.services.len()).sum();
    if r.failed() {
        write!(out, "FAIL: ")?;
        if blocked > 0 {
            write!(out, "{blocked} service(s) would be dropped or rejected")?;
        }
        if !r.unsure.is_empty() {
            if blocked > 0 {
                write!(out, ", ")?;
            }
            write!(out, "{} cannot be decided", r.unsure.len())?;
        }
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "PASS: the proposed ruleset lets all {} service(s) through",
            r.services
        )?;
    }
    for b in &r.would_drop {
        writeln!(
            out,
            "{} would {} in {}:",
            terminal(&b.rule),
            b.verdict.to_uppercase(),
            b.hook
        )?;
        for s in &b.services {
            writeln!(
                out,
                "  {:<6} {:<28} {}",
                terminal(&s.proto),
                s.destination,
                s.processes.join(", ")
            )?;
        }
    }
    for u in &r.unsure {
        writeln!(
            out,
            "UNSURE {:<6} {:<28} {}: {}",
            terminal(&u.proto),
            u.destination,
            u.processes.join(", "),
            terminal(&u.why)
        )?;
    }
    if !r.would_pass.is_empty() {
        let list: Vec<String> = r
            .would_pass
            .iter()
            .map(|p| format!("{} {}", terminal(&p.proto), p.destination))
            .collect();
        writeln!(out, "would pass: {}", list.join(", "))?;
    }
    for n in &r.notes {
        writeln!(out, "note: {}", terminal(n))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HARDENING: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
-A OUTPUT -o lo -j ACCEPT\n\
-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
-A OUTPUT -p tcp -m multiport --dports 80,443,22,3306 -j ACCEPT\n\
-A OUTPUT -p tcp --dport 1024:65535 -j DROP\nCOMMIT\n";

    fn proposed(text: &str) -> Proposed {
        let tables =
            ruleset::iptables_save::parse(text, Backend::IptablesNft, Family::Ipv4).unwrap();
        Proposed {
            ruleset: Ruleset {
                tables,
                ipsets: Default::default(),
                local_routes: None,
            },
            format: "iptables-save".into(),
        }
    }

    fn flow(proto: &str, port: u16, comm: &str) -> Flow {
        serde_json::from_value(serde_json::json!({
            "netns": 4026532300u32, "proto": proto, "dst": "203.0.113.10", "dport": port,
            "src": "198.51.100.2", "oif": "eth0", "pid": 100 + port as u32, "comm": comm,
            "count": 1, "first_seen": "t", "last_seen": "t", "seen_by": "connect"
        }))
        .unwrap()
    }

    fn incident() -> Inventory {
        let services = [
            (8443, "java"),
            (9090, "prometheus"),
            (5044, "filebeat"),
            (8080, "webhook-worker"),
            (587, "postfix"),
            (443, "curl"),
            (80, "apt"),
            (22, "ssh"),
            (3306, "mysqld"),
        ]
        .iter()
        .map(|(port, comm)| {
            let f = flow("tcp", *port, comm);
            Service {
                proto: "tcp".into(),
                dst: f.dst,
                dport: f.dport,
                icmp_type: None,
                processes: vec![f.process()],
                count: 1,
                first_seen: "t".into(),
                last_seen: "t".into(),
                dropped: None,
                drops: 0,
                dropped_by: vec![],
                flows: vec![f],
            }
        })
        .collect();
        Inventory {
            kind: "inventory".into(),
            version: inventory::FORMAT_VERSION,
            started: "t".into(),
            duration_s: 1.0,
            netns: "all".into(),
            filters: String::new(),
            sources: vec![],
            blind_spots: vec![],
            drops_from: None,
            lost: 0,
            services,
        }
    }

    #[test]
    fn the_hardening_script_breaks_the_four_non_standard_ports_and_not_587() {
        let r = audit(
            &proposed(HARDENING),
            &incident(),
            "hardening.rules",
            "inv.json",
        );
        assert_eq!(r.verdict, "fail");
        assert_eq!(r.would_drop.len(), 1);
        let b = &r.would_drop[0];
        assert_eq!(
            b.rule,
            "filter/OUTPUT rule 4 `-A OUTPUT -p tcp --dport 1024:65535 -j DROP`"
        );
        assert_eq!((b.verdict, b.hook), ("drop", "OUTPUT"));
        let mut ports: Vec<u16> = b.services.iter().filter_map(|s| s.dport).collect();
        ports.sort_unstable();
        assert_eq!(ports, [5044, 8080, 8443, 9090]);
        let java = b.services.iter().find(|s| s.dport == Some(8443)).unwrap();
        assert_eq!(java.processes, ["java[8543]"]);
        assert!(r.would_pass.iter().any(|p| p.dport == Some(587)));
        assert!(r.unsure.is_empty());
        let mut text = Vec::new();
        write_text(&mut text, &r).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("FAIL: 4 service(s) would be dropped"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("  tcp    203.0.113.10:8443 ") && l.ends_with(" java[8543]")),
            "{text}"
        );
    }

    #[test]
    fn the_fixed_ruleset_passes() {
        let fixed = HARDENING.replace(
            "-A OUTPUT -p tcp --dport 1024:65535 -j DROP",
            "-A OUTPUT -p tcp -m multiport --dports 8443,9090,5044,8080 -j ACCEPT\n\
             -A OUTPUT -p tcp --dport 1024:65535 -j DROP",
        );
        let r = audit(&proposed(&fixed), &incident(), "fixed.rules", "inv.json");
        assert_eq!(r.verdict, "pass", "{r:?}");
        assert_eq!(r.would_pass.len(), 9);
        let https = r.would_pass.iter().find(|p| p.dport == Some(443)).unwrap();
        assert_eq!(
            https.by.as_deref(),
            Some(
                "filter/OUTPUT rule 3 `-A OUTPUT -p tcp -m multiport --dports 80,443,22,3306 -j ACCEPT`"
            )
        );
    }

    #[test]
    fn loopback_and_interfaces_are_taken_from_the_flow() {
        let p = proposed(HARDENING);
        let mut local = flow("tcp", 9090, "grafana");
        local.dst = "127.0.0.1".parse().unwrap();
        local.oif = Some("lo".into());
        assert_eq!(
            judge(&p.ruleset, &local),
            Judgement::Pass {
                by: Some("filter/OUTPUT rule 1 `-A OUTPUT -o lo -j ACCEPT`".into())
            }
        );
    }

    #[test]
    fn rejects_and_undecidable_rules_fail_the_audit() {
        let reject = proposed(
            "*filter\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p udp --dport 53 -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n",
        );
        let dns = flow("udp", 53, "resolved");
        assert!(matches!(
            judge(&reject.ruleset, &dns),
            Judgement::Blocked {
                verdict: "reject",
                ..
            }
        ));
        let recent = proposed(
            "*filter\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp -m recent --rcheck --seconds 60 -j DROP\nCOMMIT\n",
        );
        let j = judge(&recent.ruleset, &flow("tcp", 443, "curl"));
        assert!(matches!(j, Judgement::Unsure { .. }), "{j:?}");
        let mut inv = incident();
        inv.services.truncate(1);
        let r = audit(&recent, &inv, "r", "i");
        assert!(r.failed() && r.would_drop.is_empty() && r.unsure.len() == 1);
    }

    /// `nft -j list ruleset` of the incident as iptables-nft loaded it: nft's JSON keeps
    /// only the names of xt matches (`multiport`, `conntrack`), so the ACCEPT for 3306 is
    /// unreadable and the DROP after it must not be taken as the answer.
    #[test]
    fn rules_after_an_unreadable_xt_match_leave_the_flow_unsure() {
        let json = r#"{"nftables": [
          {"table": {"family": "ip", "name": "filter", "handle": 1}},
          {"chain": {"family": "ip", "table": "filter", "name": "OUTPUT", "handle": 1,
            "type": "filter", "hook": "output", "prio": 0, "policy": "accept"}},
          {"rule": {"family": "ip", "table": "filter", "chain": "OUTPUT", "handle": 2, "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
            {"xt": {"type": "match", "name": "multiport"}},
            {"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]}},
          {"rule": {"family": "ip", "table": "filter", "chain": "OUTPUT", "handle": 3, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
              "right": {"range": [1024, 65535]}}},
            {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}]}"#;
        let p = Proposed {
            ruleset: Ruleset {
                tables: ruleset::nft_json::parse(json).unwrap(),
                ipsets: Default::default(),
                local_routes: None,
            },
            format: "nft -j JSON".into(),
        };
        match judge(&p.ruleset, &flow("tcp", 3306, "mysqld")) {
            Judgement::Unsure { why } => {
                assert!(why.contains("use iptables-save"), "{why}");
                assert!(why.contains("handle 2"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A rule whose outcomes all accept (a rate-limited LOG) changes nothing.
    #[test]
    fn undecided_rules_that_cannot_change_the_verdict_leave_it_definite() {
        let p = proposed(
            "*filter\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -m limit --limit 3/min -j LOG\n-A OUTPUT -p tcp --dport 443 -j ACCEPT\n-A OUTPUT -p tcp -j DROP\nCOMMIT\n",
        );
        assert!(matches!(
            judge(&p.ruleset, &flow("tcp", 443, "curl")),
            Judgement::Pass { by: Some(_) }
        ));
        assert!(matches!(
            judge(&p.ruleset, &flow("tcp", 8443, "java")),
            Judgement::Blocked {
                verdict: "drop",
                ..
            }
        ));
    }

    #[test]
    fn ipv6_flows_pass_an_ipv4_only_ruleset_and_say_so() {
        let mut inv = incident();
        let mut f = flow("tcp", 8443, "java");
        f.dst = "2001:db8:2::10".parse().unwrap();
        f.src = Some("2001:db8:1::2".parse().unwrap());
        inv.services.clear();
        inv.services.push(Service {
            proto: "tcp".into(),
            dst: f.dst,
            dport: f.dport,
            icmp_type: None,
            processes: vec![],
            count: 1,
            first_seen: "t".into(),
            last_seen: "t".into(),
            dropped: None,
            drops: 0,
            dropped_by: vec![],
            flows: vec![f],
        });
        let r = audit(&proposed(HARDENING), &inv, "r", "i");
        assert_eq!(r.verdict, "pass");
        assert!(r.notes[0].contains("no IPv6 table"), "{:?}", r.notes);
    }

    #[test]
    fn formats_are_detected() {
        assert_eq!(detect(HARDENING), RulesetFormat::IptablesSave);
        assert_eq!(
            detect("*filter\n-A OUTPUT -d 2001:db8::/32 -j DROP\nCOMMIT\n"),
            RulesetFormat::Ip6tablesSave
        );
        assert_eq!(
            detect("*filter\n-A OUTPUT -p ipv6-icmp -j ACCEPT\nCOMMIT\n"),
            RulesetFormat::Ip6tablesSave
        );
        assert_eq!(
            detect("{\"nftables\": [{\"metainfo\": {}}]}"),
            RulesetFormat::NftJson
        );
        assert_eq!(
            detect("#!/usr/sbin/nft -f\nflush ruleset\ntable inet filter {\n}\n"),
            RulesetFormat::Nft
        );
        assert_eq!(detect(""), RulesetFormat::Nft);
    }

    #[test]
    fn bad_rulesets_are_errors_not_passes() {
        let dir = std::env::temp_dir().join(format!("dt-audit-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.rules");
        std::fs::write(
            &bad,
            "*filter\n-A OUTPUT -p tcp --dport 99999 -j DROP\nCOMMIT\n",
        )
        .unwrap();
        let e = load(&bad, RulesetFormat::Auto).unwrap_err().to_string();
        assert!(e.contains("bad.rules"), "{e}");
        std::fs::write(&bad, "{\"nftables\": 3}").unwrap();
        assert!(load(&bad, RulesetFormat::Auto).is_err());
        std::fs::write(&bad, "{\"nftables\": [{\"metainfo\": {}}]}").unwrap();
        let e = load(&bad, RulesetFormat::Auto).unwrap_err().to_string();
        assert!(e.contains("no table"), "{e}");
        assert!(load(&dir.join("missing"), RulesetFormat::Auto).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn text_from_an_inventory_file_is_escaped() {
        let mut inv = incident();
        inv.services.truncate(1);
        inv.services[0].proto = "tcp\x1b[2J".into();
        inv.services[0].flows[0].proto = "tcp\x1b[2J".into();
        inv.services[0].flows[0].comm = "ja\u{202e}va".into();
        let r = audit(&proposed(HARDENING), &inv, "r\x07", "i");
        assert_eq!(r.unsure.len(), 1, "an unknown protocol cannot be judged");
        let mut text = Vec::new();
        write_text(&mut text, &r).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            !text.contains('\x1b') && !text.contains('\x07') && !text.contains('\u{202e}'),
            "{text}"
        );
        assert!(text.contains("tcp\\x1b[2J"), "{text}");
    }

    #[test]
    fn flows_without_what_a_packet_needs_are_unsure() {
        let mut f = flow("tcp", 443, "curl");
        f.dport = None;
        assert!(matches!(
            judge(&proposed(HARDENING).ruleset, &f),
            Judgement::Unsure { .. }
        ));
        f.proto = "bogus".into();
        assert!(packet_of(&f).is_err());
    }
}
