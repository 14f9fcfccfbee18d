//! `droptrace serve`: a long-running capture whose drops are Prometheus metrics
//! (`/metrics`), a recent-drops list (`/drops`) and, optionally, JSON lines on stdout.
//!
//! The capture runs on the main thread as for `watch`; the HTTP server on a thread of its
//! own, so a slow ruleset read never delays a scrape and a slow client never delays the
//! capture. Both meet in [`Shared`], behind one lock held for a record or a render.

mod http;

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    session::{
        Health, Session,
        options::{CaptureArgs, FilterArgs, parse_duration},
    },
    sinks::{
        lines::{JsonSink, Sink},
        metrics::{DropMetrics, ExtraLabel, MetricsConfig},
        recent::RecentDrops,
    },
};

/// Where `serve` listens unless told: this host only (the endpoints name processes and
/// rules; exposing them is a decision).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9849";

/// Distinct recent drops kept for `/drops`, at most.
const MAX_RECENT: usize = 10_000;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Address and port to serve /metrics, /drops and /healthz on. 0.0.0.0:PORT exposes
    /// them to the network.
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Extra labels on droptrace_drops_total, comma-separated. Each multiplies the series
    /// by the processes (or containers) that drop; series idle for --series-ttl go.
    #[arg(long, value_name = "LABEL,...", value_enum, value_delimiter = ',')]
    pub labels: Vec<ExtraLabel>,
    /// Destination series (netns, proto, dst, port) kept at most; further destinations
    /// are counted in one dst="other" series.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_destinations: usize,
    /// How long the series of a namespace that is gone stay before they are removed (at
    /// most 31d).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub series_ttl: Duration,
    /// How far back /drops can look (its default `since`; at most 31d).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub keep_drops: Duration,
    /// Also print each drop as a JSON line on stdout (watch --json's fields), for Loki,
    /// Vector or Fluent Bit.
    #[arg(long)]
    pub log_drops: bool,
}

/// What the capture writes and the HTTP server reads.
pub struct Shared {
    pub metrics: DropMetrics,
    pub recent: RecentDrops,
    pub health: Option<Health>,
    pub keep_drops: Duration,
    pub started: Instant,
}

pub type SharedState = Arc<Mutex<Shared>>;

pub fn lock(s: &SharedState) -> std::sync::MutexGuard<'_, Shared> {
    // A panic elsewhere must not take the endpoints down with it.
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Before the capture: a taken port is a clear error, not a capture without endpoints.
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    listener.set_nonblocking(true)?;
    let mut session = Session::start(&args.filters, &args.capture, false)?;
    let info = session.start_info(&args.filters, &args.capture);
    let config = MetricsConfig {
        max_destinations: args.max_destinations,
        ttl: args.series_ttl,
        extra: args.labels.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        capture_mode: info.mode.clone(),
    };
    let shared: SharedState = Arc::new(Mutex::new(Shared {
        metrics: DropMetrics::new(config),
        recent: RecentDrops::new(MAX_RECENT, args.keep_drops),
        health: None,
        keep_drops: args.keep_drops,
        started: Instant::now(),
    }));
    let addr = listener.local_addr()?;
    http::spawn(listener, shared.clone())?;
    eprintln!("{}", info.line());
    eprintln!("droptrace: serving http://{addr}/metrics, /drops and /healthz");

    let mut log = args.log_drops.then(|| JsonSink::new(io::stdout()));
    // Namespaces are looked up at most every 10 s, and often enough for a short TTL.
    let expire_every = (args.series_ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let mut last_expiry = Instant::now();
    let result = session
        .run_with_tick(
            &args.capture,
            |r| {
                let now = Instant::now();
                {
                    let mut s = lock(&shared);
                    s.metrics.observe(r, now);
                    s.recent.observe(r, now);
                }
                match log.as_mut() {
                    Some(sink) => sink.drop_record(r),
                    None => Ok(()),
                }
            },
            |session| {
                let health = session.health();
                if let Some(e) = &health.error {
                    log::error!("{e}");
                }
                let now = Instant::now();
                let live = (now.duration_since(last_expiry) >= expire_every)
                    .then(crate::enrich::netns::LiveNamespaces::scan);
                let mut s = lock(&shared);
                s.metrics.set_health(&health);
                s.health = Some(health);
                if let Some(live) = live {
                    last_expiry = now;
                    s.metrics.expire(&live, now);
                    s.recent.expire(now);
                }
                Ok(())
            },
        )
        .await;
    let end = session.finish();
    result.context("the capture stopped")?;
    eprintln!(
        "droptrace: stopped after {:.0} s; {} drops served",
        end.duration_s, end.total
    );
    Ok(())
}
