//! `droptrace watch`: capture, enrich, print, summarise.

use std::{
    io::{self, Write},
    time::Instant,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    btf::KernelBtf,
    capture::{Capture, CaptureOptions},
    cli::{CaptureArgs, FilterArgs, WatchArgs},
    drop::Drop,
    kallsyms::Kallsyms,
    netns::NetnsSelector,
    output::{JsonSink, Sink, StartInfo, TextSink},
    record::Enricher,
    summary::Summary,
};

pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    let stdout = io::stdout().lock();
    let mut sink: Box<dyn Sink> = if args.json {
        Box::new(JsonSink::new(stdout))
    } else {
        Box::new(TextSink::new(stdout))
    };
    let mut session = Session::start(&args.filters, &args.capture, false)?;
    let info = session.start_info(&args.filters, &args.capture);
    if args.json {
        ok_or_closed(sink.start(&info))?;
    } else {
        eprintln!("{}", info.line());
    }
    session.run(&args.capture, |r| sink.drop_record(r)).await?;
    let end = session.finish();
    ok_or_closed(sink.summary(&session.summary, &end))?;
    Ok(())
}

/// A stdout closed by the reader (`| head`) ends the output quietly.
fn ok_or_closed(r: io::Result<()>) -> anyhow::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// A running capture with its enrichment state and running totals. Shared by the
/// commands that watch drops.
pub struct Session {
    pub capture: Capture,
    pub enricher: Enricher,
    pub summary: Summary,
    started: Instant,
    // Registered before the start line is printed, so a Ctrl-C right after it is caught.
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
    netns_label: String,
    mode: String,
    all_reasons: bool,
}

impl Session {
    pub fn start(
        filters: &FilterArgs,
        capture: &CaptureArgs,
        capture_headers: bool,
    ) -> anyhow::Result<Self> {
        let f = filters.to_filters()?;
        let kernel = KernelBtf::load()?;
        let kallsyms = Kallsyms::load().context("cannot read /proc/kallsyms")?;
        if kallsyms.is_empty() {
            log::warn!("/proc/kallsyms shows no addresses (kptr_restrict): hooks will be unknown");
        }
        let opts = CaptureOptions {
            filters: f,
            all_reasons: capture.all_reasons,
            capture_headers,
        };
        let cap = Capture::start(&kernel, &opts)?;
        let mut enricher = Enricher::new(kernel, kallsyms);
        let netns_label = match (filters.netns_selector(), opts.filters.netns) {
            (NetnsSelector::All, _) => "all".to_string(),
            (_, Some(ino)) => match enricher.netns_name(ino) {
                Some(name) => format!("{name} ({ino})"),
                None => format!("{} ({ino})", filters.netns),
            },
            (_, None) => filters.netns.clone(),
        };
        Ok(Session {
            capture: cap,
            enricher,
            summary: Summary::default(),
            started: Instant::now(),
            sigint: signal(SignalKind::interrupt())?,
            sigterm: signal(SignalKind::terminate())?,
            netns_label,
            mode: "tp_btf/kfree_skb".into(),
            all_reasons: capture.all_reasons,
        })
    }

    pub fn start_info(&self, filters: &FilterArgs, c: &CaptureArgs) -> StartInfo {
        let until = match (c.duration, c.count) {
            (Some(d), Some(n)) => format!(
                "for {} or {n} drops; Ctrl-C ends it",
                humantime::format_duration(d)
            ),
            (Some(d), None) => format!(
                "for {}; Ctrl-C ends it sooner",
                humantime::format_duration(d)
            ),
            (None, Some(n)) => format!("until {n} drops; Ctrl-C ends it sooner"),
            (None, None) => "until Ctrl-C".into(),
        };
        StartInfo {
            kind: "start",
            mode: self.mode.clone(),
            reasons: if self.all_reasons { "all" } else { "netfilter" },
            netns: self.netns_label.clone(),
            filters: filters.describe(),
            until,
        }
    }

    /// Captures until the duration, the count or a signal ends it, handing each record
    /// to `emit`. A closed stdout also ends it.
    pub async fn run(
        &mut self,
        c: &CaptureArgs,
        mut emit: impl FnMut(&crate::record::DropRecord) -> io::Result<()>,
    ) -> anyhow::Result<()> {
        let deadline = c
            .duration
            .map(|d| tokio::time::Instant::from_std(self.started + d));
        let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now));
        tokio::pin!(sleep);
        let mut batch: Vec<Drop> = Vec::new();
        loop {
            let stop = tokio::select! {
                r = self.capture.readable() => { r?; false }
                _ = self.sigint.recv() => true,
                _ = self.sigterm.recv() => true,
                _ = &mut sleep, if deadline.is_some() => true,
            };
            // Drain also after a stop: records already in the ring buffer count.
            self.capture.drain(&mut batch);
            for d in batch.drain(..) {
                if c.count.is_some_and(|n| self.summary.total >= n) {
                    break;
                }
                let stack = d
                    .stack_id
                    .and_then(|id| self.capture.stack(id).map(<[u64]>::to_vec));
                let rec = self.enricher.record(d, stack.as_deref());
                self.summary.add(&rec);
                if let Err(e) = emit(&rec) {
                    if e.kind() == io::ErrorKind::BrokenPipe {
                        return Ok(());
                    }
                    return Err(e.into());
                }
            }
            if stop || c.count.is_some_and(|n| self.summary.total >= n) {
                return Ok(());
            }
        }
    }

    /// The closing totals, with the kernel's own count of lost records.
    pub fn finish(&mut self) -> crate::summary::SummaryRecord {
        let _ = io::stdout().flush();
        let stats = self.capture.stats();
        self.summary.record(
            stats.lost,
            stats.matched,
            self.started.elapsed().as_secs_f64(),
        )
    }
}
