//! `droptrace inventory`: which external services does this host talk to, from which
//! process — the list nobody had before the hardening rules went live.
//!
//! For a window (`--duration`, or until Ctrl-C) the kernel programs of [`crate::kernel::inventory`] record
//! every distinct outbound flow the host starts: TCP connection attempts and UDP / ICMP
//! echo sends, seen before the firewall so flows it drops are listed too, each with its
//! process, cgroup, namespace, first and last sighting and a count.
//!
//! Whether the *current* ruleset dropped a flow is not guessed by evaluating rules: the
//! drop capture of `watch` ([`crate::session::Session`]) runs side by side, and a flow is `dropped` when
//! the kernel reported NETFILTER_DROP drops of its packets (a first packet in OUTPUT, or a
//! reply dropped on the way in), named by rule as `watch` names them. That is what
//! happened, not what a model predicts; predicting is `droptrace audit`'s job, for a
//! ruleset that is not applied yet.
//!
//! `--write FILE` keeps the inventory as JSON for `droptrace audit --from FILE` and
//! `droptrace verify --probe-file FILE` ([`crate::inventory::probe_targets_from_file`]).

use std::{
    io::{self, Write as _},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    escape::terminal,
    inventory::{Inventory, collect, write_file},
    session::options::FilterArgs,
};

#[derive(Debug, clap::Args)]
pub struct InventoryArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
    /// How long to watch (e.g. 10m, 1h; at most 31d); default: until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = crate::session::options::parse_duration)]
    pub duration: Option<Duration>,
    /// Print the inventory as one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write the inventory (JSON) to FILE, for `droptrace audit --from FILE` and
    /// `droptrace verify --probe-file FILE`.
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Do not watch drops alongside (the `dropped` column is then unknown).
    #[arg(long)]
    pub no_drops: bool,
}

pub async fn run(args: InventoryArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.write {
        // Before the window, not after it: a typo must not cost the capture.
        writable(path)?;
    }
    let inv = collect(&args.filters, args.duration, !args.no_drops).await?;
    if let Some(path) = &args.write {
        write_file(path, &inv)?;
        let flows: usize = inv.services.iter().map(|s| s.flows.len()).sum();
        eprintln!(
            "droptrace: wrote {} service(s), {flows} flow(s) to {} (for `droptrace audit --from` and `droptrace verify --probe-file`)",
            inv.services.len(),
            terminal(&path.display().to_string())
        );
    }
    let mut out = io::stdout().lock();
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &inv)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        write_table(&mut out, &inv)
    };
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `path` can be written (the file, or the directory it would be created in).
fn writable(path: &Path) -> anyhow::Result<()> {
    let target = if path.exists() {
        path.to_path_buf()
    } else {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    };
    nix::unistd::access(&target, nix::unistd::AccessFlags::W_OK)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `HH:MM:SS.mmm` of an RFC 3339 time (UTC), for the table.
fn clock_time(rfc3339: &str) -> String {
    rfc3339
        .parse::<jiff::Timestamp>()
        .map(|t| t.strftime("%H:%M:%S%.3f").to_string())
        .unwrap_or_else(|_| terminal(rfc3339).into_owned())
}

/// The readable table: one line per service, its processes, and what dropped it.
pub fn write_table(out: &mut impl io::Write, inv: &Inventory) -> io::Result<()> {
    writeln!(
        out,
        "{:<6} {:<28} {:>6}  {:<12}  {:<12}  {:<7}  PROCESSES",
        "PROTO", "DESTINATION", "COUNT", "FIRST(UTC)", "LAST(UTC)", "DROPPED"
    )?;
    for s in &inv.services {
        let dropped = match s.dropped {
            Some(true) => "YES",
            Some(false) => "no",
            None => "?",
        };
        const SHOWN: usize = 4;
        let mut procs = s
            .processes
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if s.processes.len() > SHOWN {
            procs.push_str(&format!(" +{} more", s.processes.len() - SHOWN));
        }
        writeln!(
            out,
            "{:<6} {:<28} {:>6}  {:<12}  {:<12}  {:<7}  {}",
            s.proto,
            s.destination(),
            s.count,
            clock_time(&s.first_seen),
            clock_time(&s.last_seen),
            dropped,
            procs
        )?;
        for by in &s.dropped_by {
            writeln!(out, "{:>8}dropped by {}", "", terminal(by))?;
        }
    }
    let flows: usize = inv.services.iter().map(|s| s.flows.len()).sum();
    let dropped = inv
        .services
        .iter()
        .filter(|s| s.dropped == Some(true))
        .count();
    write!(
        out,
        "{} service(s), {flows} flow(s) in {:.1}s",
        inv.services.len(),
        inv.duration_s
    )?;
    if inv.drops_from.is_some() {
        writeln!(out, "; {dropped} dropped by the current ruleset")?;
    } else {
        writeln!(out, "; drops not watched")?;
    }
    if inv.lost > 0 {
        writeln!(
            out,
            "note: {} first sighting(s) arrived late; their process details may be missing",
            inv.lost
        )?;
    }
    for b in &inv.blind_spots {
        writeln!(out, "note: {}", terminal(b))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::collect::tests::{flow, inventory};

    #[test]
    fn the_table_escapes_what_processes_chose() {
        let mut evil = flow(8443, 812, "\x1b[2Jjava");
        evil.container = Some("pay\u{202e}ments.service".into());
        evil.dropped = Some(true);
        evil.dropped_by = vec!["filter/OUTPUT rule 4 `-A OUTPUT -j DROP \x1b]0;x\x07`".into()];
        let mut buf = Vec::new();
        write_table(&mut buf, &inventory(vec![evil])).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(
            !text.contains('\x1b') && !text.contains('\u{202e}'),
            "{text}"
        );
        assert!(
            text.contains("\\x1b[2Jjava[812]@pay\\u{202e}ments.service"),
            "{text}"
        );
        assert!(text.contains("YES"), "{text}");
        assert!(text.contains("10:30:00.000"), "{text}");
        assert!(text.contains("1 service(s), 1 flow(s)"), "{text}");
    }
}
