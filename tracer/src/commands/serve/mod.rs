//! `droptrace serve`: a long-running capture whose drops are Prometheus metrics
//! (`/metrics`), a recent-drops list (`/drops`) and, optionally, JSON lines on stdout.
//!
//! The capture runs on the main thread as for `watch`; the HTTP server on a thread of its
//! own, so a slow ruleset read never delays a scrape and a slow client never delays the
//! capture. Both meet in [`Shared`], behind one lock held for a record or a render.
//!
//! Meant to run for weeks on every node, so everything it keeps is capped (see the
//! constants here, [`crate::sinks::metrics`] and `docs/fleet.md`): under a port scan the
//! per-flow detail (lines, `/drops` entries, process labels) gives way first, and the
//! per-rule series keep adding up to the kernel's counters from its aggregates
//! ([`Session::count_beyond_flow_table_live`]).

mod http;

use std::{
    collections::VecDeque,
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

/// Distinct recent drops kept for `/drops`, at most: each is a whole line with its rule
/// (a few KB), and a person reads the list.
pub const MAX_RECENT: usize = 2_000;

/// Flows serve's kernel flow table holds (watch: 131,072). Per-flow detail is what a
/// capture of weeks gives up first; userspace keeps a few hundred bytes per flow of the
/// table, so a quarter of watch's keeps a scanned node's serve within its memory limit.
/// Drops beyond it are counted from the aggregates all the same.
pub const FLOW_TABLE: u32 = 32_768;

/// A `serve` whose series miss more drops than the kernel counted in this long says it is
/// behind (`/healthz`: degraded): lines take a second or two to get their rule, and drops
/// beyond the flow table are read every few seconds.
const LAG_ALLOWED: Duration = Duration::from_secs(5);

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
    /// Destination-port series (netns, proto, port) kept at most; further ports are
    /// counted in one port="other" series.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_ports: usize,
    /// Series of droptrace_drops_total kept at most; a further one loses its process and
    /// container labels, then all of them ("other").
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub max_series: usize,
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
    /// Drops the kernel counted that no series has yet, beyond [`LAG_ALLOWED`]'s worth.
    pub behind: u64,
    pub keep_drops: Duration,
    pub started: Instant,
}

/// What the kernel counted over the last [`LAG_ALLOWED`], to tell a capture that is
/// behind from one whose last seconds of drops are on their way.
#[derive(Debug, Default)]
struct Lag {
    matched: VecDeque<(Instant, u64)>,
}

impl Lag {
    /// Of the drops `h` says are unreported, those counted before the last
    /// [`LAG_ALLOWED`].
    fn behind(&mut self, h: &Health, now: Instant) -> u64 {
        let Some(m) = h.matched_in_kernel else {
            return 0;
        };
        self.matched.push_back((now, m));
        while self
            .matched
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > LAG_ALLOWED)
        {
            self.matched.pop_front();
        }
        let recent = m - self.matched.front().map_or(m, |(_, then)| *then);
        let unreported = m.saturating_sub(h.reported + h.filtered_out);
        unreported.saturating_sub(recent)
    }
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
    let mut capture = args.capture.clone();
    capture.flow_table_size.get_or_insert(FLOW_TABLE);
    let mut session = Session::start(&args.filters, &capture, false)?;
    session.count_beyond_flow_table_live(&capture);
    let info = session.start_info(&args.filters, &capture);
    let config = MetricsConfig {
        max_destinations: args.max_destinations,
        max_ports: args.max_ports,
        max_series: args.max_series,
        ttl: args.series_ttl,
        extra: args.labels.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        capture_mode: info.mode.clone(),
    };
    let shared: SharedState = Arc::new(Mutex::new(Shared {
        metrics: DropMetrics::new(config),
        recent: RecentDrops::new(MAX_RECENT, args.keep_drops),
        health: None,
        behind: 0,
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
    let mut lag = Lag::default();
    let result = session
        .run_with_tick(
            &capture,
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
                let beyond: Vec<_> = session
                    .take_beyond()
                    .into_iter()
                    .map(|b| {
                        let name = session.enricher.netns_name(b.netns);
                        (b, name)
                    })
                    .collect();
                let health = session.health();
                if let Some(e) = &health.error {
                    log::error!("{e}");
                }
                let now = Instant::now();
                let live = (now.duration_since(last_expiry) >= expire_every)
                    .then(crate::enrich::netns::LiveNamespaces::scan);
                let behind = lag.behind(&health, now);
                let mut s = lock(&shared);
                for (b, name) in beyond {
                    s.metrics.observe_beyond(&b, name, now);
                }
                s.metrics.set_health(&health);
                s.health = Some(health);
                s.behind = behind;
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
