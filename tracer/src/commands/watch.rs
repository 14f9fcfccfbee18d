//! `droptrace watch`: capture, enrich, print, summarise.

use std::{
    io::{self, IsTerminal as _},
    time::Instant,
};

use crate::{
    enrich::netns::NetnsSelector,
    session::Session,
    session::options::{CaptureArgs, FilterArgs},
    sinks::lines::{JsonSink, Sink, TextSink},
};

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// One JSON object per line on stdout (drops, then a summary); logs stay on stderr.
    #[arg(long)]
    pub json: bool,
    /// Also write the dropped packets' headers to a pcapng file (for Wireshark/tshark),
    /// each with a comment naming the rule and the process.
    #[arg(long, value_name = "FILE.pcapng")]
    pub write: Option<std::path::PathBuf>,
    #[arg(long, help = crate::session::options::ATTEMPTS_HELP)]
    pub attempts: bool,
}

pub async fn run(mut args: WatchArgs) -> anyhow::Result<()> {
    args.capture.attempts = args.attempts;
    let stdout = io::stdout().lock();
    let mut sink: Box<dyn Sink> = if args.json {
        Box::new(JsonSink::new(stdout))
    } else {
        Box::new(
            TextSink::new(stdout)
                .with_color(crate::sinks::lines::use_color(&io::stdout()))
                .one_namespace(args.filters.netns_selector() != NetnsSelector::All),
        )
    };
    let mut session = Session::start(&args.filters, &args.capture, args.write.is_some())?;
    session.count_beyond_flow_table(&args.capture);
    let mut pcap = args
        .write
        .as_deref()
        .map(crate::sinks::pcapng::PcapngFile::create)
        .transpose()?;
    let info = session.start_info(&args.filters, &args.capture);
    if args.json {
        ok_or_closed(sink.start(&info))?;
    } else {
        eprintln!("{}", info.line());
    }
    let mut pcap_error = None;
    // A capture session written to a file or pipe shows its progress on the terminal.
    let countdown = args
        .capture
        .duration
        .filter(|_| !io::stdout().is_terminal() && io::stderr().is_terminal());
    let started = Instant::now();
    let seen = std::cell::Cell::new(0u64);
    session
        .run_with_tick(
            &args.capture,
            |r| {
                seen.set(seen.get() + r.count);
                if let Some(p) = pcap.as_mut()
                    && let Err(e) = p.write(r)
                {
                    pcap_error.get_or_insert(e);
                }
                sink.drop_record(r)
            },
            |_| {
                if let Some(d) = countdown {
                    let left = d.saturating_sub(started.elapsed()).as_secs();
                    let n = seen.get();
                    let drops = if n == 1 { "drop" } else { "drops" };
                    eprint!("\rdroptrace: {left}s left, {n} {drops} so far\x1b[K");
                }
                Ok(())
            },
        )
        .await?;
    if countdown.is_some() {
        eprintln!();
    }
    let end = session.finish();
    ok_or_closed(sink.summary(&session.summary, &end))?;
    if let Some(e) = pcap_error {
        return Err(e.context("writing the pcapng file"));
    }
    if let (Some(p), Some(path)) = (pcap, &args.write) {
        let n = p.finish()?;
        eprintln!("droptrace: wrote {n} packet(s) to {}", path.display());
    }
    Ok(())
}

/// A stdout closed by the reader (`| head`) ends the output quietly.
fn ok_or_closed(r: io::Result<()>) -> anyhow::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
