//! The command line: subcommands and their flags, designed as one piece.
//!
//! Every subcommand that watches drops takes the same filter flags ([`crate::session::options::FilterArgs`]), so
//! what an engineer learns for `watch` works for the rest.

pub mod completions;
pub mod manual;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "droptrace",
    version,
    long_version = env!("DROPTRACE_LONG_VERSION"),
    about = "Show which packets the firewall drops, which rule dropped them, to where, from which process",
    long_about = "droptrace watches the kernel's netfilter drop path (kfree_skb with reason \
NETFILTER_DROP) with an eBPF program and reports every dropped packet with its flow, hook, \
network namespace and sending process. It never changes the ruleset. Needs root \
(CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN).",
    propagate_version = true,
    after_help = "Start here:\n  \
droptrace watch                  every netfilter drop here, live, with its rule and sender\n  \
droptrace watch --netns NAME     the drops of one network namespace (`ip netns list`)\n  \
droptrace doctor                 what works on this host, when something does not\n\n\
Examples:\n  \
droptrace watch --dport 8443 --duration 5m --json > drops.jsonl\n  \
droptrace verify --netns app --probe tcp://203.0.113.10:8443 && deploy"
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print each dropped packet as it happens, and a summary at the end.
    Watch(crate::commands::watch::WatchArgs),
    /// Prove a fix: exit 0 only with evidence (every probe got through, nothing dropped),
    /// 1 if something was dropped or a probe failed, 2 if it cannot tell.
    Verify(crate::commands::verify::VerifyArgs),
    /// Live full-screen view: drops grouped by rule and destination, refreshed every
    /// second (plain tables when stdout is not a terminal). `q` quits.
    Top(crate::commands::top::TopArgs),
    /// Run for weeks: drops as Prometheus metrics by rule (/metrics), the recent drops as
    /// JSON (/drops), health (/healthz); for systemd and Kubernetes.
    Serve(crate::commands::serve::ServeArgs),
    /// Without traffic: which rule of the current ruleset would drop (or accept) a packet.
    /// Exit 0 if it would pass, 1 if it would be dropped, 3 if droptrace cannot be sure.
    Explain(crate::commands::explain::ExplainArgs),
    /// What works on this host and why not: kernel, BTF, every program loaded with the
    /// verifier's figures, capabilities, tools, firewall backends. Exit 0 all good, 1
    /// degraded, 2 no drop can be traced.
    Doctor(crate::commands::doctor::DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff): droptrace(1), or a subcommand's (`droptrace man watch`);
    /// `--dir DIR` writes them all.
    Man {
        /// The subcommand whose page to print.
        #[arg(value_name = "SUBCOMMAND")]
        page: Option<String>,
        /// Write every page into this directory (droptrace.1, droptrace-watch.1, ...).
        #[arg(long, value_name = "DIR", conflicts_with = "page")]
        dir: Option<std::path::PathBuf>,
    },
    /// Show the ruleset as droptrace understands it: counters, and matches it cannot
    /// evaluate marked `?`.
    Rules(crate::commands::explain::RulesArgs),
    /// Before you block: list every outbound flow the host starts during a window
    /// (destination, process, first/last seen) and whether the current ruleset drops it.
    Inventory(crate::commands::inventory::InventoryArgs),
    /// Before you block: which flows (an inventory, or live traffic) a proposed ruleset
    /// would drop, by rule. Never applies it. Exit 0 if none, 1 if some, 2 on error.
    Audit(crate::commands::audit::AuditArgs),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_filters_are_rejected_by_the_parser() {
        for bad in [
            vec!["droptrace", "watch", "--dport", "99999"],
            vec!["droptrace", "watch", "--proto", "tcpx"],
            vec!["droptrace", "watch", "--dst", "not-an-ip"],
            vec!["droptrace", "watch", "--duration", "0s"],
            vec!["droptrace", "watch", "--duration", "soon"],
            vec!["droptrace", "serve", "--listen", "localhost"],
            vec!["droptrace", "serve", "--listen", "1.2.3.4:99999"],
            vec!["droptrace", "serve", "--labels", "process,pod"],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn watch_flags_parse() {
        let cli = Cli::try_parse_from([
            "droptrace",
            "watch",
            "--netns",
            "client",
            "--proto",
            "tcp",
            "--dport",
            "1024-65535",
            "--dst",
            "203.0.113.0/24",
            "--duration",
            "30s",
            "--json",
        ])
        .unwrap();
        let Command::Watch(w) = cli.command else {
            panic!("not watch")
        };
        assert!(w.json);
        assert_eq!(w.capture.duration, Some(std::time::Duration::from_secs(30)));
        assert_eq!(
            w.filters.describe(),
            "proto tcp, dst 203.0.113.0/24, dport 1024-65535"
        );
    }
}
