//! `cargo xtask scan --serve`: the port-scan bursts of [`crate::scan`] against
//! `droptrace serve` (release build), as the issue "serve survives a port scan" measured
//! it: the namespace drops all UDP with one rule; after each burst /metrics is read until
//! the rule's series add up to its counter. Prints that time (catch-up), whether they
//! did, the port series' sum, peak RSS, the slowest scrape and /healthz while behind.
//! Figures, not a test.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use crate::{
    netns::Netns,
    scan::{Args, PeakRss, burst_of, rule_counter},
    serve_process::{Serve, sum},
};

/// How long after a burst the series may take to catch up before the round gives up.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);

fn say(msg: &str) {
    eprintln!("xtask scan --serve: {msg}");
}

pub fn run(droptrace: &Path, args: &Args) -> anyhow::Result<()> {
    let flood = crate::bench::build_flood()?;
    let ns = Netns::create("dt-sscan")?;
    ns.exec(&["iptables", "-A", "OUTPUT", "-p", "udp", "-j", "DROP"])?;
    let before = rule_counter(&ns)?;
    let serve = Serve::start(droptrace, &["--netns", &ns.name])?;
    let pid = serve.child.id();
    let label = format!("netns=\"{}\"", ns.name);

    let peak = PeakRss::sample(pid);

    let flows = args.flows.to_string();
    let mut slowest_scrape = Duration::ZERO;
    let mut catch_up_max = Duration::ZERO;
    let mut caught_up_every_time = true;
    let mut degraded_seen = false;
    let (mut series_sum, mut ports_sum, mut counted) = (0.0, 0.0, 0);
    for burst in 1..=args.bursts {
        burst_of(&ns, &flood, &flows)?;
        let burst_end = Instant::now();
        counted = rule_counter(&ns)? - before;
        let caught_up = loop {
            let (body, took) = serve.scrape()?;
            slowest_scrape = slowest_scrape.max(took);
            series_sum = sum(&body, "droptrace_drops_total", &label).0;
            ports_sum = sum(&body, "droptrace_port_drops_total", &label).0;
            degraded_seen |= serve.health()?.contains("\"degraded\"");
            if series_sum == counted as f64 {
                break Some(burst_end.elapsed());
            }
            if burst_end.elapsed() > CATCH_UP_LIMIT {
                break None;
            }
            thread::sleep(Duration::from_millis(500));
        };
        let (rss, cpu) = crate::procstat::usage(pid)?;
        match caught_up {
            Some(t) => {
                catch_up_max = catch_up_max.max(t);
                say(&format!(
                    "burst {burst}/{}: series = counter ({counted}) {:.1} s after the burst; \
                     RSS {rss:.0} MB, CPU {cpu:.1} s so far",
                    args.bursts,
                    t.as_secs_f64()
                ));
            }
            None => {
                caught_up_every_time = false;
                say(&format!(
                    "burst {burst}/{}: series {series_sum} != counter {counted} after {} s",
                    args.bursts,
                    CATCH_UP_LIMIT.as_secs()
                ));
            }
        }
        if let Some(rest) = Duration::from_secs(args.gap).checked_sub(burst_end.elapsed()) {
            thread::sleep(rest);
        }
    }
    let (rss_end, cpu_end) = crate::procstat::usage(pid)?;
    let peak = peak.stop()?;
    serve.stop()?;
    println!(
        "bench: serve_scan_bursts={} serve_scan_flows_per_burst={}",
        args.bursts, args.flows
    );
    println!("bench: serve_scan_rule_counter={counted}");
    println!("bench: serve_scan_series_sum={series_sum}");
    println!("bench: serve_scan_series_exact={caught_up_every_time}");
    println!("bench: serve_scan_port_series_sum={ports_sum}");
    println!(
        "bench: serve_scan_catch_up_s_max={:.1}",
        catch_up_max.as_secs_f64()
    );
    println!("bench: serve_scan_degraded_seen={degraded_seen}");
    println!(
        "bench: serve_scan_scrape_ms_max={}",
        slowest_scrape.as_millis()
    );
    println!("bench: serve_scan_rss_peak_mb={peak:.0}");
    println!("bench: serve_scan_rss_end_mb={rss_end:.0}");
    println!("bench: serve_scan_cpu_s={cpu_end:.1}");
    Ok(())
}
