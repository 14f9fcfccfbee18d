//! `droptrace verify`: prove that a fix removed the drops — an exit code a script can trust.
//!
//! A PASS needs evidence: 0 when the capture ran for the whole window, every packet was
//! accounted for, no drop matched, and every probe got through (or, with `--passive`, the
//! user accepted a quiet window). 1: drops were seen (listed by rule, destination and, across
//! namespaces, namespace) or a probe failed. 2: droptrace could not tell — bad input, an
//! attach failure, packets counted but not reported, or a window with neither drops nor
//! probes (INCONCLUSIVE): silence is not a pass. 130: a signal ended the window before its
//! end with nothing failed so far (INTERRUPTED). With probes, the window ends once every
//! probe has its answer and `--duration` has passed.

use std::{
    collections::BTreeMap,
    io::{self, Write as _},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    probe::{self, Attempt, Outcome, ProbeProto, Target},
    record::DropRecord,
    session::Session,
    session::options::{CaptureArgs, FilterArgs},
    sinks::lines::process_text,
};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
    /// How long to watch at least (the probes run at its start; at most 31d).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::session::options::parse_duration)]
    pub duration: Duration,
    /// Send traffic to this target during the window: tcp://HOST:PORT or udp://HOST:PORT
    /// (repeatable). Probes run from the namespace given by --netns.
    #[arg(long, value_name = "URL")]
    pub probe: Vec<Target>,
    /// Read probe targets from a file, one per line (`#` comments allowed), or from an
    /// inventory written by `droptrace inventory --write`.
    #[arg(long, value_name = "FILE")]
    pub probe_file: Option<PathBuf>,
    /// Try each probe target this many times, each from a fresh source port: a drop that
    /// happens one time in a few (an intermittent failure) is caught, not missed.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub attempts: u32,
    /// How long a TCP probe waits for its connection (at most 5m).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = crate::session::options::parse_probe_timeout)]
    pub probe_timeout: Duration,
    /// Report as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Report packets freed for any drop reason, not only netfilter drops.
    #[arg(long)]
    pub all_reasons: bool,
    /// Without probes: accept a quiet window as a pass. PASS then means only that nothing
    /// matching the filters was dropped while droptrace watched the whole window; no
    /// traffic proved a path. Without this flag (and without probes) a quiet window is
    /// INCONCLUSIVE, exit 2: silence is not evidence.
    #[arg(long, conflicts_with_all = ["probe", "probe_file"])]
    pub passive: bool,
}

/// Exit statuses of `verify`.
pub const PASS: u8 = 0;
pub const FAIL: u8 = 1;
/// Nothing proved a path and nothing was dropped (no probes, no `--passive`).
pub const INCONCLUSIVE: u8 = 2;
/// Ended by a signal before its window: whatever was seen, not a pass (128 + SIGINT).
pub const INTERRUPTED: u8 = 130;

/// What happened to one probe, drops matched.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProbeReport {
    pub target: String,
    /// `reachable` (TCP connected, or a UDP reply came), `sent` (UDP: left the host, not
    /// dropped locally, nothing came back), `dropped` (every attempt), `intermittent` (some
    /// attempts dropped, others not), `refused` (TCP reset or ICMP port unreachable),
    /// `timeout`, `blocked`, `error`.
    pub result: &'static str,
    pub detail: String,
    /// Drops of the probe's own packets.
    pub drops: u64,
    /// Where they were dropped (rule when attributed, else hook and engine).
    pub dropped_by: Option<String>,
    /// Attempts made (`--attempts`, each from a fresh source port), and how many had
    /// packets dropped here.
    pub attempts: u32,
    pub dropped_attempts: u32,
}

impl ProbeReport {
    /// Whether the probe shows the path open as far as this host can tell.
    pub fn ok(&self) -> bool {
        matches!(self.result, "reachable" | "sent")
    }
}

/// Drops grouped by rule (or hook) and destination.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DropGroup {
    /// The namespace of the drops, when drops from every namespace count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    pub dropped_by: String,
    pub dst: String,
    pub proto: String,
    pub process: String,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `pass`, `fail`, `inconclusive` (no evidence either way) or `interrupted`.
    pub verdict: &'static str,
    /// Why the verdict, in one sentence.
    pub reason: String,
    pub duration_s: f64,
    /// How long the window was meant to be, and why that long.
    pub window: String,
    pub total: u64,
    pub lost: u64,
    pub records_lost: u64,
    pub drops: Vec<DropGroup>,
    pub probes: Vec<ProbeReport>,
    /// The namespace the probes were sent from (null without probes).
    pub probes_from: Option<String>,
    /// Whose drops count: `all namespaces` or one namespace.
    pub drops_from: String,
}

/// Groups drops by rule, destination and process; `by_netns`: by namespace too (when drops
/// from every namespace count, each names its own).
pub fn group(records: &[DropRecord], by_netns: bool) -> Vec<DropGroup> {
    type Key = (Option<String>, String, String, String, String);
    let mut groups: BTreeMap<Key, u64> = BTreeMap::new();
    for r in records {
        let netns = by_netns.then(|| {
            r.netns_name
                .clone()
                .unwrap_or_else(|| format!("netns {}", r.netns))
        });
        *groups
            .entry((
                netns,
                r.dropped_by(),
                r.destination(),
                r.proto.clone(),
                process_text(r),
            ))
            .or_default() += r.count;
    }
    let mut v: Vec<DropGroup> = groups
        .into_iter()
        .map(
            |((netns, dropped_by, dst, proto, process), count)| DropGroup {
                netns,
                dropped_by,
                dst,
                proto,
                process,
                count,
            },
        )
        .collect();
    v.sort_by_key(|g| std::cmp::Reverse(g.count));
    v
}

/// `namespace NAME` (`host`: PID 1's).
fn describe_netns(netns: &str) -> String {
    if netns == "host" {
        "the host namespace (PID 1's)".to_string()
    } else {
        format!("namespace {netns}")
    }
}

/// Whether `d` is a drop of the probe's own flow.
fn is_probes(a: &Attempt, d: &DropRecord) -> bool {
    let proto = match a.target.proto {
        ProbeProto::Tcp => "tcp",
        ProbeProto::Udp => "udp",
    };
    match (a.local, a.remote) {
        (Some(l), Some(r)) => {
            d.proto == proto
                && d.dst == r.ip()
                && d.dport == Some(r.port())
                && d.sport == Some(l.port())
        }
        _ => false,
    }
}

/// One attempt, matched with the drops of its own flow: (result, detail, packets dropped,
/// what dropped them).
fn one_attempt(a: &Attempt, records: &[DropRecord]) -> (&'static str, String, u64, Option<String>) {
    let mine: Vec<&DropRecord> = records.iter().filter(|d| is_probes(a, d)).collect();
    let drops: u64 = mine.iter().map(|d| d.count).sum();
    let by = mine.first().map(|d| d.dropped_by());
    let (result, detail) = match (&a.outcome, drops) {
        (_, n) if n > 0 => (
            "dropped",
            format!("{n} packet(s) dropped by this host's firewall"),
        ),
        (Outcome::Connected, _) => ("reachable", "connected".to_string()),
        (Outcome::Replied, _) => ("reachable", "a reply came back".to_string()),
        (Outcome::Sent, _) => (
            "sent",
            "datagram sent and not dropped here; no reply or ICMP error came back, so \
             delivery is unknown"
                .to_string(),
        ),
        (Outcome::Refused, _) if a.target.proto == ProbeProto::Udp => (
            "refused",
            "ICMP port unreachable came back: host reached, nothing listening".to_string(),
        ),
        (Outcome::Refused, _) => (
            "refused",
            "connection refused: host reached, port closed".to_string(),
        ),
        (Outcome::TimedOut, _) => (
            "timeout",
            "timed out without a local drop: dropped further away or host down".to_string(),
        ),
        (Outcome::NotPermitted, _) => (
            "blocked",
            "the kernel refused the send (EPERM) but reported no netfilter drop".to_string(),
        ),
        (Outcome::Failed(e), _) => ("error", e.clone()),
    };
    (result, detail, drops, by)
}

/// Judges each target from its `per_target` attempts (grouped by target, in order): dropped
/// when every attempt was, intermittent when some were — the failure that one lucky probe
/// hides —, else what the attempts saw (the first that did not get through, if any).
pub fn judge(attempts: &[Attempt], per_target: usize, records: &[DropRecord]) -> Vec<ProbeReport> {
    attempts
        .chunks(per_target.max(1))
        .map(|tries| {
            let judged: Vec<_> = tries.iter().map(|a| one_attempt(a, records)).collect();
            let n = judged.len();
            let dropped = judged.iter().filter(|j| j.2 > 0).count();
            let drops: u64 = judged.iter().map(|j| j.2).sum();
            let by = judged.iter().find_map(|j| j.3.clone());
            let ok = |r: &str| matches!(r, "reachable" | "sent");
            let (result, detail) = if dropped == 0 {
                let shown = judged
                    .iter()
                    .find(|j| !ok(j.0))
                    .unwrap_or(&judged[0]);
                let same = judged.iter().filter(|j| j.0 == shown.0).count();
                let detail = if n > 1 {
                    format!("{same} of {n} attempts: {}", shown.1)
                } else {
                    shown.1.clone()
                };
                (shown.0, detail)
            } else if dropped == n {
                let detail = if n > 1 {
                    format!("all {n} attempts dropped by this host's firewall ({drops} packet(s))")
                } else {
                    judged[0].1.clone()
                };
                ("dropped", detail)
            } else {
                let other = judged.iter().find(|j| j.2 == 0).map_or("", |j| j.0);
                (
                    "intermittent",
                    format!(
                        "{dropped} of {n} attempts dropped by this host's firewall; the others: {other}"
                    ),
                )
            };
            ProbeReport {
                target: tries[0].target.to_string(),
                result,
                detail,
                drops,
                dropped_by: by,
                attempts: n as u32,
                dropped_attempts: dropped as u32,
            }
        })
        .collect()
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let mut targets = args.probe.clone();
    if let Some(file) = &args.probe_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        // An inventory (`droptrace inventory --write`) probes each TCP and UDP service.
        let parsed = crate::inventory::probe_targets_from_file(&text)
            .unwrap_or_else(|| probe::parse_probe_file(&text));
        let parsed = parsed.map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        if parsed.is_empty() {
            anyhow::bail!(
                "{}: no probe target in it (a probe file that names none proves nothing)",
                file.display()
            );
        }
        targets.extend(parsed);
    }
    if !targets.is_empty() {
        // Probes from droptrace's own namespace while drops count everywhere proved paths
        // the application never uses: where probes start must be said.
        if args.filters.netns_selector() == crate::enrich::netns::NetnsSelector::All {
            anyhow::bail!(
                "--probe needs --netns: the namespace the probes are sent from and whose drops count (--netns host for the host's)"
            );
        }
        probe::resolve_all(&targets).map_err(|e| anyhow::anyhow!(e))?;
    }
    // The window: at least --duration; with probes, until every probe has its answer,
    // which can take at most `needed`.
    let needed =
        (args.probe_timeout + Duration::from_millis(100)) * args.attempts + Duration::from_secs(1);
    let (duration, window) = if targets.is_empty() {
        (
            args.duration,
            format!("{} (--duration)", humantime::format_duration(args.duration)),
        )
    } else {
        let most = args.duration.max(needed);
        eprintln!(
            "droptrace: watching at least {} and until every probe has its answer (at most {})",
            humantime::format_duration(args.duration),
            humantime::format_duration(most),
        );
        (
            most,
            format!(
                "at least {} (--duration) and until every probe had its answer (at most {})",
                humantime::format_duration(args.duration),
                humantime::format_duration(most)
            ),
        )
    };
    let capture = CaptureArgs {
        duration: Some(duration),
        count: None,
        all_reasons: args.all_reasons,
        ..CaptureArgs::default()
    };
    // The probes' own packets are watched whatever the filters say: the kernel filters
    // only on the namespace, and the user's filters are applied here.
    let user_filters = args.filters.to_filters()?;
    let capture_filters = if targets.is_empty() {
        args.filters.clone()
    } else {
        FilterArgs {
            netns: args.filters.netns.clone(),
            ..Default::default()
        }
    };
    let mut session = Session::start(&capture_filters, &capture, false)?;
    eprintln!("{}", session.start_info(&args.filters, &capture).line());

    let netns = args.filters.netns_selector().path();
    let timeout = args.probe_timeout;
    let attempts = args.attempts;
    let probing_asked = !targets.is_empty();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let probes = std::thread::spawn(move || {
        let result = probe::run_all(&targets, netns.as_deref(), timeout, attempts);
        let _ = done_tx.send(());
        result
    });
    // With probes: once every probe has its answer and --duration has passed, a moment
    // for their last packets' records, then the end.
    let min_end = tokio::time::Instant::now() + args.duration;
    let answered = async move {
        if !probing_asked {
            return std::future::pending().await;
        }
        let _ = done_rx.await;
        let grace = tokio::time::Instant::now() + Duration::from_millis(500);
        tokio::time::sleep_until(min_end.max(grace)).await;
    };

    let mut records = Vec::new();
    session
        .run_until(
            &capture,
            |r| {
                records.push(r.clone());
                Ok(())
            },
            |_| Ok(()),
            answered,
        )
        .await?;
    let interrupted = session.interrupted();
    let end = session.finish();
    let attempts = probes
        .join()
        .map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
    let Some(lost) = end.lost else {
        anyhow::bail!(
            "cannot verify: {}",
            end.error
                .as_deref()
                .unwrap_or("the kernel's counters were not read")
        );
    };
    if lost > 0 {
        anyhow::bail!(
            "cannot verify: {lost} dropped packets were counted by the kernel but not reported (flow table overflow)"
        );
    }
    let probing = !attempts.is_empty();
    let captured: u64 = records.iter().map(|r| r.count).sum();
    if probing && captured != end.total {
        // The filters below work on records; a packet counted but never reported could
        // be one they keep.
        anyhow::bail!(
            "cannot verify: {} of {} dropped packets were counted by the kernel but not reported",
            end.total.saturating_sub(captured),
            end.total
        );
    }
    let wanted = |r: &DropRecord| {
        let proto = ruleset::names::protocol(&r.proto).unwrap_or(0);
        user_filters.admits(proto, r.src, r.dst, r.sport, r.dport) && args.filters.wants_process(r)
    };
    let records: Vec<DropRecord> = records
        .into_iter()
        .filter(|r| wanted(r) || attempts.iter().any(|a| is_probes(a, r)))
        .collect();
    // Without probes the kernel applied every packet filter and `end.total` is exact.
    let total: u64 = if probing {
        records.iter().map(|r| r.count).sum()
    } else {
        end.total
    };
    let probes = judge(&attempts, args.attempts as usize, &records);
    let failed_probes = probes.iter().filter(|p| !p.ok()).count();
    let selector = args.filters.netns_selector();
    let all_namespaces = selector == crate::enrich::netns::NetnsSelector::All;
    // Evidence decides: a drop or a failed probe fails whatever else happened; a pass needs
    // a whole window and something that passed (a probe through, or a quiet window the
    // user asked to accept).
    let (verdict, reason, code) = if total > 0 || failed_probes > 0 {
        let why = match (total, failed_probes) {
            (0, n) => format!("{n} probe(s) did not get through"),
            (t, 0) => format!("{t} packet(s) dropped"),
            (t, n) => format!("{t} packet(s) dropped and {n} probe(s) did not get through"),
        };
        ("fail", why, FAIL)
    } else if let Some(signal) = interrupted {
        (
            "interrupted",
            format!(
                "{signal} ended the window after {:.1}s of {}: an interrupted window is not a pass",
                end.duration_s,
                humantime::format_duration(duration)
            ),
            INTERRUPTED,
        )
    } else if !probes.is_empty() {
        (
            "pass",
            format!(
                "every probe got through and nothing was dropped ({} probe(s))",
                probes.len()
            ),
            PASS,
        )
    } else if args.passive {
        (
            "pass",
            "passive: nothing matching the filters was dropped in the whole window".to_string(),
            PASS,
        )
    } else {
        (
            "inconclusive",
            "nothing dropped, and nothing proved a path: add --probe, --probe-file or --passive"
                .to_string(),
            INCONCLUSIVE,
        )
    };
    let report = VerifyReport {
        kind: "verify",
        verdict,
        reason,
        duration_s: end.duration_s,
        window,
        total,
        lost,
        records_lost: end.records_lost,
        drops: group(&records, all_namespaces),
        probes_from: (!probes.is_empty()).then(|| describe_netns(&args.filters.netns.given)),
        drops_from: match selector {
            crate::enrich::netns::NetnsSelector::All => "all namespaces".to_string(),
            _ => describe_netns(&args.filters.netns.given),
        },
        probes,
    };
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_text(&mut out, &report)?;
    }
    Ok(ExitCode::from(code))
}

fn write_text(out: &mut impl io::Write, r: &VerifyReport) -> io::Result<()> {
    use crate::escape::terminal;
    let failed_probes = r.probes.iter().filter(|p| !p.ok()).count();
    let probes = if r.probes.is_empty() {
        String::new()
    } else {
        format!(", {} of {} probe(s) failed", failed_probes, r.probes.len())
    };
    match r.verdict {
        "pass" => writeln!(
            out,
            "PASS: no drops in {:.1}s{probes} ({})",
            r.duration_s, r.drops_from
        )?,
        "fail" => writeln!(
            out,
            "FAIL: {} drop(s) in {:.1}s{probes} ({})",
            r.total, r.duration_s, r.drops_from
        )?,
        "interrupted" => writeln!(out, "INTERRUPTED: no verdict{probes} ({})", r.drops_from)?,
        _ => writeln!(
            out,
            "INCONCLUSIVE: no drops in {:.1}s, no evidence either ({})",
            r.duration_s, r.drops_from
        )?,
    }
    writeln!(out, "  {}", r.reason)?;
    writeln!(out, "  watched {:.1}s: {}", r.duration_s, r.window)?;
    // The rule goes on a line of its own: rules are long, and the report should read
    // at 100 columns.
    if !r.drops.is_empty() {
        writeln!(out, "drops by rule and destination:")?;
        for g in &r.drops {
            let netns = g
                .netns
                .as_ref()
                .map(|n| format!(" in {}", terminal(n)))
                .unwrap_or_default();
            writeln!(
                out,
                "  {:>8}  {:<5} {:<28} from {}{netns}",
                g.count,
                g.proto,
                g.dst,
                terminal(&g.process)
            )?;
            writeln!(out, "            by {}", terminal(&g.dropped_by))?;
        }
    }
    if !r.probes.is_empty() {
        match &r.probes_from {
            Some(from) => writeln!(out, "probes, sent from {}:", terminal(from))?,
            None => writeln!(out, "probes:")?,
        }
        for p in &r.probes {
            writeln!(
                out,
                "  {:<30} {:<9} {}",
                terminal(&p.target),
                p.result.to_uppercase(),
                p.detail
            )?;
            if let Some(by) = &p.dropped_by {
                writeln!(out, "            by {}", terminal(by))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    fn attempt(target: &str, local_port: u16, outcome: Outcome) -> Attempt {
        let t: Target = target.parse().unwrap();
        let remote = format!("{}:{}", t.host, t.port).parse().ok();
        Attempt {
            target: t,
            local: Some(format!("198.51.100.2:{local_port}").parse().unwrap()),
            remote,
            outcome,
        }
    }

    #[test]
    fn probes_are_matched_to_their_own_drops_only() {
        let mut d = sample(); // tcp 198.51.100.2:40000 -> 203.0.113.10:8443
        d.count = 2;
        let records = vec![d];
        let reports = judge(
            &[
                attempt("tcp://203.0.113.10:8443", 40000, Outcome::TimedOut),
                attempt("tcp://203.0.113.10:8443", 40001, Outcome::TimedOut),
                attempt("tcp://203.0.113.10:443", 40002, Outcome::Connected),
                attempt("tcp://203.0.113.10:22", 40003, Outcome::Refused),
                attempt("udp://203.0.113.10:53", 40004, Outcome::Sent),
            ],
            1,
            &records,
        );
        assert_eq!(reports[0].result, "dropped");
        assert_eq!(reports[0].drops, 2);
        assert_eq!(
            reports[0].dropped_by.as_deref(),
            Some("OUTPUT (nftables/ip)")
        );
        assert_eq!(
            reports[1].result, "timeout",
            "another flow's drops are not this probe's"
        );
        assert_eq!(reports[2].result, "reachable");
        assert_eq!(reports[3].result, "refused");
        // A datagram nothing answered is "sent", not "reachable"; it proves no local drop.
        assert_eq!(reports[4].result, "sent");
        assert!(reports[4].detail.contains("delivery is unknown"));
        assert!(reports[2].ok() && !reports[3].ok() && reports[4].ok());
        let udp_refused = judge(
            &[attempt("udp://203.0.113.10:53", 40005, Outcome::Refused)],
            1,
            &records,
        );
        assert_eq!(udp_refused[0].result, "refused");
        assert!(udp_refused[0].detail.contains("ICMP port unreachable"));
    }

    /// Three attempts at one target, the second dropped: intermittent, not reachable.
    #[test]
    fn attempts_some_dropped_are_intermittent() {
        let mut d = sample(); // tcp 198.51.100.2:40000 -> 203.0.113.10:8443
        d.sport = Some(40001);
        let records = vec![d];
        let tries = [
            attempt("tcp://203.0.113.10:8443", 40000, Outcome::Connected),
            attempt("tcp://203.0.113.10:8443", 40001, Outcome::TimedOut),
            attempt("tcp://203.0.113.10:8443", 40002, Outcome::Connected),
        ];
        let r = &judge(&tries, 3, &records)[0];
        assert_eq!(r.result, "intermittent");
        assert_eq!((r.attempts, r.dropped_attempts), (3, 1));
        assert!(
            r.detail.starts_with("1 of 3 attempts dropped"),
            "{}",
            r.detail
        );
        assert!(!r.ok());
        let all = judge(&tries, 3, &[])[0].clone();
        assert_eq!(
            all.result, "timeout",
            "the attempt that did not get through is shown"
        );
        assert!(all.detail.starts_with("1 of 3 attempts:"), "{}", all.detail);
    }

    #[test]
    fn groups_by_what_dropped_and_destination() {
        let a = sample();
        let mut b = sample();
        b.count = 4;
        let mut c = sample();
        c.dport = Some(9090);
        let mut d = sample();
        d.netns_name = Some("other".into());
        let g = group(&[a.clone(), b.clone(), c.clone(), d.clone()], false);
        assert_eq!(g[0].count, 6);
        assert_eq!(g[0].dst, "203.0.113.10:8443");
        assert_eq!(g[0].process, "java[812]@payments.service");
        assert_eq!(g[0].netns, None);
        assert_eq!(g[1].count, 1);
        // Across namespaces, each group names its own.
        let g = group(&[a, b, c, d], true);
        assert_eq!(g[0].count, 5);
        assert_eq!(g[0].netns.as_deref(), Some("client"));
        assert!(
            g.iter()
                .any(|g| g.netns.as_deref() == Some("other") && g.count == 1)
        );
    }

    fn report(verdict: &'static str, reason: &str) -> VerifyReport {
        VerifyReport {
            kind: "verify",
            verdict,
            reason: reason.into(),
            duration_s: 2.9,
            window: "1h (--duration)".into(),
            total: 0,
            lost: 0,
            records_lost: 0,
            drops: vec![],
            probes: vec![],
            probes_from: None,
            drops_from: "namespace app".into(),
        }
    }

    #[test]
    fn no_verdict_reads_as_a_pass() {
        for (verdict, first) in [
            ("interrupted", "INTERRUPTED: no verdict"),
            (
                "inconclusive",
                "INCONCLUSIVE: no drops in 2.9s, no evidence either",
            ),
        ] {
            let mut out = Vec::new();
            write_text(&mut out, &report(verdict, "why")).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with(first), "{text}");
            assert!(!text.contains("PASS"), "{text}");
            assert!(text.contains("watched 2.9s: 1h (--duration)"), "{text}");
        }
    }
}
