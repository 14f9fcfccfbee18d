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

mod judge;
mod proposed;
mod report;

pub use judge::{Judgement, judge, packet_of};
pub use proposed::{Proposed, RulesetFormat, detect, load, load_all};
pub use report::{AuditReport, Blocked, BlockedService, PassingService, UnsureService, audit};

use std::{
    io::{self, Write as _},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    escape::terminal,
    inventory::{self},
    session::options::FilterArgs,
};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("flows").required(true).args(["from", "duration"])))]
pub struct AuditArgs {
    /// The proposed ruleset: iptables-save output, an nft script, or `nft -j list ruleset`
    /// JSON. Repeat for a set of files that load together (an iptables-save and an
    /// ip6tables-save file). It is never applied to the host.
    #[arg(long, value_name = "FILE", required = true)]
    pub ruleset: Vec<PathBuf>,
    /// Format of the ruleset file.
    #[arg(long, value_enum, default_value_t = RulesetFormat::Auto)]
    pub format: RulesetFormat,
    /// Check the flows of an inventory written by `droptrace inventory --write FILE`.
    #[arg(long, value_name = "INVENTORY.json")]
    pub from: Option<PathBuf>,
    /// Or watch the host's outbound flows for this long (Ctrl-C ends it sooner) and check
    /// those; the filter flags select which (at most 31d).
    #[arg(long, value_name = "DURATION", value_parser = crate::session::options::parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub filters: FilterArgs,
    /// Report as one JSON document.
    #[arg(long)]
    pub json: bool,
}

fn filters_given(f: &FilterArgs) -> bool {
    f.netns.selector != crate::enrich::netns::NetnsSelector::All
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
    let proposed = load_all(&args.ruleset, args.format)?;
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
        &args
            .ruleset
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + "),
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
    use crate::inventory::{self, Flow, Inventory, Service};
    use ruleset::{Backend, Family, Ruleset};

    const HARDENING: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
-A OUTPUT -o lo -j ACCEPT\n\
-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
-A OUTPUT -p tcp -m multiport --dports 80,443,22,3306 -j ACCEPT\n\
-A OUTPUT -p tcp --dport 1024:65535 -j DROP\nCOMMIT\n";

    fn proposed(text: &str) -> Proposed {
        Proposed {
            ruleset: ruleset::iptables_save::parse_ruleset(
                text,
                Backend::IptablesNft,
                Family::Ipv4,
            )
            .unwrap(),
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

    /// A proposed ruleset that untracks DNS in raw OUTPUT and accepts UNTRACKED: the
    /// flow passes, as it would (its first packet is not NEW to the filter rules).
    #[test]
    fn untracked_flows_are_judged_untracked() {
        let p = proposed(
            "*raw\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p udp --dport 53 -j CT --notrack\nCOMMIT\n\
             *filter\n:OUTPUT DROP [0:0]\n-A OUTPUT -m conntrack --ctstate UNTRACKED -j ACCEPT\nCOMMIT\n",
        );
        assert!(matches!(
            judge(&p.ruleset, &flow("udp", 53, "unbound")),
            Judgement::Pass { .. }
        ));
        assert!(matches!(
            judge(&p.ruleset, &flow("udp", 123, "chronyd")),
            Judgement::Blocked { .. }
        ));
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
                recent: None,
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
        // ip6tables-save of a ruleset without one IPv6 address: its signature, or what
        // only IPv6 has.
        assert_eq!(
            detect(
                "# Generated by ip6tables-save v1.8.9 (nf_tables) on Tue Dec  1\n*filter\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp --dport 8443 -j DROP\nCOMMIT\n"
            ),
            RulesetFormat::Ip6tablesSave
        );
        assert_eq!(
            detect(
                "*filter\n-A INPUT -p tcp -j REJECT --reject-with icmp6-port-unreachable\nCOMMIT\n"
            ),
            RulesetFormat::Ip6tablesSave
        );
        assert_eq!(
            detect("*filter\n-A INPUT -m rt --rt-type 0 -j DROP\nCOMMIT\n"),
            RulesetFormat::Ip6tablesSave
        );
        assert_eq!(
            detect("*filter\n-A INPUT -m comment --comment rt -j DROP\nCOMMIT\n"),
            RulesetFormat::IptablesSave
        );
    }

    /// `--ruleset rules.v4 --ruleset rules.v6`: both files load, each as its family.
    #[test]
    fn a_v4_and_v6_pair_load_together() {
        let dir = std::env::temp_dir().join(format!("dt-audit-pair-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let v4 = dir.join("rules.v4");
        let v6 = dir.join("rules.v6");
        std::fs::write(&v4, HARDENING).unwrap();
        std::fs::write(
            &v6,
            "# Generated by ip6tables-save v1.8.9 (nf_tables)\n*filter\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp --dport 8443 -j DROP\nCOMMIT\n",
        )
        .unwrap();
        let p = load_all(&[v4, v6], RulesetFormat::Auto).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(p.format.contains(" + ip6tables-save"), "{}", p.format);
        let mut f = flow("tcp", 8443, "java");
        f.dst = "2001:db8:2::10".parse().unwrap();
        f.src = Some("2001:db8:1::2".parse().unwrap());
        match judge(&p.ruleset, &f) {
            Judgement::Blocked { by, .. } => assert!(by.starts_with("ip6 filter/OUTPUT"), "{by}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            judge(&p.ruleset, &flow("tcp", 8443, "java")),
            Judgement::Blocked { .. }
        ));
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
