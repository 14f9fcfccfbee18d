//! Man pages: droptrace(1) and one page per subcommand (droptrace-watch(1), ...).
//!
//! The synopsis and options come from the clap definition, so they cannot drift from the
//! binary; what clap does not know — exit statuses, examples, the JSON fields a script
//! reads — is written here, next to nothing else, and rendered with the same roff writer.

use std::path::Path;

use clap::CommandFactory as _;
use roff::{Roff, bold, roman};

use crate::cli::Cli;

/// What a subcommand's page says beyond its options.
struct Extra {
    exit: &'static [(&'static str, &'static str)],
    examples: &'static [(&'static str, &'static str)],
    /// JSON output, in words: (field, meaning).
    json: &'static [(&'static str, &'static str)],
}

const ERROR: (&str, &str) = (
    "2",
    "an error: bad input, missing privileges, a kernel droptrace cannot attach to; one line on stderr",
);

const DROP_FIELDS: &[(&str, &str)] = &[
    (
        "type",
        "\"drop\" for a drop line, \"start\" and \"summary\" for the first and last",
    ),
    (
        "time",
        "wall-clock time of the flow's first drop in this line, RFC 3339",
    ),
    (
        "netns, netns_name",
        "namespace inode and its name (ip netns) when it has one",
    ),
    ("family, proto, src, sport, dst, dport", "the flow"),
    ("tcp_flags, icmp_type, icmp_code, len, mark", "the packet"),
    (
        "ct_state",
        "new, established, related, established_reply, related_reply or none",
    ),
    (
        "reason, hook, engine, location",
        "why and where the kernel freed it",
    ),
    (
        "pid, comm, cmdline, cgroup, container, uid, gid",
        "the sending process",
    ),
    ("count", "packets this line stands for"),
    (
        "bytes",
        "their bytes, from the network header on (as a rule's byte counter counts them)",
    ),
    (
        "backend, table_family, table, chain",
        "where the rule lives",
    ),
    (
        "rule, rule_num, rule_handle, verdict",
        "the rule that dropped it, as its tool prints it",
    ),
    (
        "attribution",
        "exact, inferred, chain or none: how sure droptrace is",
    ),
    (
        "why, alternatives",
        "what confirmed it, or what was missing; other possible rules",
    ),
    (
        "owner",
        "the front-end that manages the rule ({tool, object}) or null",
    ),
    (
        "ports, beyond_flow_table (summary)",
        "drops per protocol and destination port; drops on no line (flows beyond the kernel's \
         flow table, counted by rule, hook and port from its aggregates)",
    ),
    (
        "services (summary, with --attempts)",
        "per destination service: attempts, dropped, passed, intermittent, complete, processes, and \
         accepted_by [{count, ct_state, label, rule fields}]: the rule that let the others through",
    ),
];

fn extra(name: &str) -> Option<Extra> {
    Some(match name {
        "watch" => Extra {
            exit: &[
                ("0", "the capture ended: --duration, --count, Ctrl-C"),
                ERROR,
            ],
            examples: &[
                (
                    "droptrace watch --netns app",
                    "every drop in namespace app, live",
                ),
                (
                    "droptrace watch --dport 8443 --duration 5m --json > drops.jsonl",
                    "a capture session for an incident ticket",
                ),
                (
                    "droptrace watch --duration 1m --write drops.pcapng",
                    "the dropped packets for Wireshark, each with a comment naming the rule",
                ),
            ],
            json: DROP_FIELDS,
        },
        "verify" => Extra {
            exit: &[
                (
                    "0",
                    "PASS: the whole window was watched, nothing was dropped, and every probe got through (or --passive accepted a quiet window)",
                ),
                ("1", "FAIL: drops were seen, or a probe failed"),
                (
                    "2",
                    "droptrace could not tell: an error, packets counted but not reported, or INCONCLUSIVE (no drop, no probe, no --passive)",
                ),
                (
                    "130",
                    "INTERRUPTED: a signal ended the window before its end, nothing failed so far",
                ),
            ],
            examples: &[
                (
                    "droptrace verify --netns app --duration 30s --probe tcp://203.0.113.10:8443",
                    "prove that a fix removed the drops",
                ),
                (
                    "droptrace verify --netns app --probe-file inventory.json",
                    "probe every service an inventory found",
                ),
            ],
            json: &[
                (
                    "verdict, reason",
                    "pass, fail, inconclusive or interrupted, and why in one sentence",
                ),
                ("window", "how long the window was meant to be, and why"),
                (
                    "total, lost, records_lost",
                    "drops counted; lost is always 0 in a report",
                ),
                (
                    "drops",
                    "[{netns (when every namespace counts), dropped_by, dst, proto, process, count}]",
                ),
                (
                    "probes",
                    "[{target, result, detail, drops, dropped_by, attempts, dropped_attempts}]; result is reachable, sent, dropped, intermittent, refused, timeout, blocked or error",
                ),
                (
                    "probes_from, drops_from",
                    "where probes were sent from, whose drops count",
                ),
            ],
        },
        "doctor" => Extra {
            exit: &[
                ("0", "everything droptrace needs works on this host"),
                (
                    "1",
                    "degraded: drops are traced, but something is lost (a program refused, a capability or tool missing); each is listed",
                ),
                (
                    "2",
                    "no drop can be traced here (no drop program loads, no BTF, lockdown)",
                ),
            ],
            examples: &[
                ("droptrace doctor", "what works on this host and why not"),
                (
                    "droptrace doctor --netns app --json",
                    "the same as JSON, with namespace app's firewall backends",
                ),
            ],
            json: &[
                (
                    "health, problems",
                    "ok, degraded or broken, and what is lost",
                ),
                (
                    "programs",
                    "[{object, program, feature, status, why, verified_insns, stack: {chain, combined}}]; status is loaded, refused, unavailable or not_tried",
                ),
                ("limits", "the verifier's limits and droptrace's budgets"),
                (
                    "kernel, capabilities, attach_path, tools, namespaces, ebpf_toolchain",
                    "what the text shows",
                ),
            ],
        },
        "top" => Extra {
            exit: &[("0", "q, Ctrl-C or --duration ended it"), ERROR],
            examples: &[(
                "droptrace top --netns app",
                "drops by rule and destination, live",
            )],
            json: &[],
        },
        "explain" => Extra {
            exit: &[
                ("0", "the packet would pass"),
                ("1", "it would be dropped, rejected or queued"),
                ERROR,
                (
                    "3",
                    "unsure: rules droptrace cannot decide lead to different fates",
                ),
            ],
            examples: &[(
                "droptrace explain --netns app --proto tcp --dst 203.0.113.10 --dport 8443",
                "which rule would drop the payment gateway's SYN",
            )],
            json: &[
                ("outcome", "drop, reject, queue, accept or unsure"),
                ("assumed", "what droptrace filled in (route, unknown owner)"),
                (
                    "engines",
                    "per engine: the rule fields of watch, and possible fates",
                ),
            ],
        },
        "rules" => Extra {
            exit: &[("0", "the ruleset was read"), ERROR],
            examples: &[(
                "droptrace rules --netns app",
                "the ruleset as droptrace reads it",
            )],
            json: &[],
        },
        "inventory" => Extra {
            exit: &[("0", "the inventory was taken"), ERROR],
            examples: &[(
                "droptrace inventory --duration 10m --write inventory.json",
                "every outbound service the host uses, for audit and verify",
            )],
            json: &[
                (
                    "services",
                    "[{proto, dst, dport, processes, count, dropped, dropped_by, flows}]",
                ),
                ("blind_spots", "what the window could not see"),
            ],
        },
        "audit" => Extra {
            exit: &[
                ("0", "no flow would be dropped"),
                ("1", "some flow would be dropped, or might be (unsure)"),
                ERROR,
            ],
            examples: &[
                (
                    "droptrace audit --ruleset new.rules --from inventory.json",
                    "what a proposed ruleset would break, before applying it",
                ),
                (
                    "droptrace audit --ruleset rules.v4 --ruleset rules.v6 --duration 5m",
                    "a v4/v6 pair against live traffic",
                ),
            ],
            json: &[
                (
                    "verdict, reason",
                    "pass, fail, inconclusive or interrupted, and why in one sentence",
                ),
                ("window", "how long the window was meant to be, and why"),
                ("would_drop", "[{rule, services}] per blocking rule"),
                (
                    "unsure",
                    "flows that depend on rules droptrace cannot evaluate",
                ),
            ],
        },
        "serve" => Extra {
            exit: &[
                ("0", "SIGTERM or SIGINT ended it (or --duration, --count)"),
                (
                    "2",
                    "bad input, a taken port, missing privileges, or the capture failed; one line on stderr",
                ),
            ],
            examples: &[
                (
                    "droptrace serve",
                    "metrics on http://127.0.0.1:9849/metrics for a local Prometheus or agent",
                ),
                (
                    "droptrace serve --listen 0.0.0.0:9849 --labels process,container",
                    "on every address, with the dropping process and container as labels",
                ),
                (
                    "curl -s 'http://127.0.0.1:9849/drops?since=5m'",
                    "the distinct drops of the last five minutes, as JSON",
                ),
            ],
            json: &[
                (
                    "GET /metrics",
                    "droptrace_drops_total{backend, family, table, chain, rule, verdict, \
                     rule_text, attribution, owner, owner_object, hook, netns}, \
                     droptrace_destination_drops_total{netns, proto, dst, port}, capture health",
                ),
                (
                    "GET /drops?since=DURATION",
                    "{since_s, drops: [watch --json's drop fields, count since first seen, \
                     last_time, first_seen_s_ago, last_seen_s_ago]}",
                ),
                (
                    "GET /healthz",
                    "{status: ok|failing, uptime_s, ...}; 503 when failing",
                ),
            ],
        },
        "completions" | "man" => Extra {
            exit: &[("0", "printed"), ERROR],
            examples: &[],
            json: &[],
        },
        _ => return None,
    })
}

/// The pages there are: `droptrace` and each subcommand.
pub fn names() -> Vec<String> {
    let cli = Cli::command();
    std::iter::once("droptrace".to_string())
        .chain(
            cli.get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(|s| format!("droptrace-{}", s.get_name())),
        )
        .collect()
}

/// The page of `droptrace` (None) or of one subcommand, as roff.
pub fn page(subcommand: Option<&str>) -> anyhow::Result<String> {
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let (cmd, title) = match subcommand {
        None => (cli.clone(), "droptrace".to_string()),
        Some(name) => {
            let sub = cli
                .find_subcommand(name)
                .ok_or_else(|| {
                    anyhow::anyhow!("no page for {name:?}: pages are {}", names().join(", "))
                })?
                .clone();
            let title = format!("droptrace-{name}");
            (
                sub.display_name(title.clone())
                    .bin_name(format!("droptrace {name}")),
                title,
            )
        }
    };
    let man = clap_mangen::Man::new(cmd.clone()).title(title.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    if subcommand.is_none() {
        man.render_subcommands_section(&mut out)?;
    }
    let mut roff = Roff::new();
    if let Some(x) = subcommand.and_then(extra) {
        section(&mut roff, "EXIT STATUS", x.exit);
        if !x.examples.is_empty() {
            roff.control("SH", ["EXAMPLES"]);
            for (cmd, what) in x.examples {
                roff.control("TP", []);
                roff.text([bold(*cmd)]);
                roff.text([roman(*what)]);
            }
        }
        if !x.json.is_empty() {
            section(&mut roff, "JSON OUTPUT", x.json);
        }
    }
    roff.control("SH", ["SEE ALSO"]);
    let others: Vec<String> = names()
        .into_iter()
        .filter(|n| *n != title)
        .map(|n| format!("{n}(1)"))
        .collect();
    roff.text([roman(others.join(", "))]);
    roff.to_writer(&mut out)?;
    Ok(String::from_utf8(out)?)
}

fn section(roff: &mut Roff, name: &str, items: &[(&str, &str)]) {
    roff.control("SH", [name]);
    for (term, text) in items {
        roff.control("TP", []);
        roff.text([bold(*term)]);
        roff.text([roman(*text)]);
    }
}

/// Writes every page into `dir` as NAME.1; returns the files written.
pub fn write_all(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for name in names() {
        let sub = name.strip_prefix("droptrace-");
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, page(sub)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_has_a_page_with_exit_status() {
        for name in names().iter().filter_map(|n| n.strip_prefix("droptrace-")) {
            assert!(extra(name).is_some(), "{name} has no EXIT STATUS written");
            let p = page(Some(name)).unwrap();
            assert!(p.contains(&format!(".TH droptrace-{name}")), "{name}");
            assert!(p.contains(".SH \"EXIT STATUS\""), "{name}");
            assert!(p.contains("SEE ALSO"), "{name}");
        }
        let top = page(None).unwrap();
        assert!(top.contains("droptrace\\-watch(1)"), "{top}");
        assert!(page(Some("nope")).is_err());
    }

    #[test]
    fn the_watch_page_lists_the_json_fields() {
        let p = page(Some("watch")).unwrap();
        for field in ["table_family", "owner", "ct_state", "attribution"] {
            assert!(p.contains(field), "{field}");
        }
        assert!(p.contains("droptrace watch"), "synopsis names the command");
    }
}
