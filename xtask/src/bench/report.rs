//! The bench's table and its `bench: key=value` lines: medians of the interleaved runs,
//! ratios against the baseline of the same run.

use std::{fmt::Write as _, thread, time::Duration};

use anyhow::Context as _;

use super::{Check, DIAG_SECONDS, Diag, FLOOD_SECONDS, MANY_FLOWS, Round, Sample};
use crate::workspace_root;

/// Where `--write-docs` puts the figures: between these lines of docs/performance.md.
const DOCS_BEGIN: &str = "<!-- bench:figures begin (cargo xtask bench --write-docs) -->";
const DOCS_END: &str = "<!-- bench:figures end -->";

/// Replaces the figures in docs/performance.md with `figures` (markdown).
pub(super) fn write_docs(figures: &str) -> anyhow::Result<()> {
    let path = workspace_root().join("docs/performance.md");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let (Some(begin), Some(end)) = (text.find(DOCS_BEGIN), text.find(DOCS_END)) else {
        anyhow::bail!(
            "{} has no {DOCS_BEGIN} ... {DOCS_END} markers",
            path.display()
        );
    };
    let new = format!("{}{DOCS_BEGIN}\n{figures}{}", &text[..begin], &text[end..]);
    std::fs::write(&path, new).with_context(|| format!("{}", path.display()))
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub(super) fn report(
    samples: &[(Round, Sample)],
    runs: usize,
    many_base: &Sample,
    many_dt: &Sample,
    diag: &Diag,
    load: (&str, &str),
    took: Duration,
) -> String {
    let of = |r: Round| samples.iter().filter(move |(k, _)| *k == r).map(|(_, s)| s);
    let med = |r: Round, f: &dyn Fn(&Sample) -> Option<f64>| median(of(r).filter_map(f).collect());
    let rate = |r: Round| med(r, &|s| Some(s.drops_per_s));
    let base = rate(Round::Baseline);
    let cpu = |r: Round| med(r, &|s| s.tracer.as_ref().map(|t| t.cpu_s));
    let running = |r: Round| med(r, &|s| s.tracer.as_ref().and_then(|t| t.running_share));
    let startup_ms = |r: Round| {
        med(r, &|s| {
            s.tracer.as_ref().map(|t| t.startup.as_secs_f64() * 1e3)
        })
    };
    let rss = |r: Round| {
        of(r)
            .filter_map(|s| s.tracer.as_ref().map(|t| t.peak_rss_kib))
            .max()
    };
    let opt = |v: Option<f64>, prec: usize| {
        v.filter(|v| v.is_finite())
            .map_or("-".to_string(), |v| format!("{v:.prec$}"))
    };

    let mut t = String::new();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        t,
        "\ndroptrace bench: one flood thread, 64-byte UDP payloads to 127.0.0.1:9 dropped in OUTPUT \
         (iptables-nft), {FLOOD_SECONDS} s per run, median of {runs} interleaved runs; {cpus} CPUs; \
         load average {} before, {} after; measuring took {:.0} s",
        load.0,
        load.1,
        took.as_secs_f64()
    );
    let _ = writeln!(
        t,
        "\n{:<34} {:>10} {:>6} {:>9} {:>7} {:>7} {:>8} {:>8}   runs (drops/s)",
        "round", "drops/s", "ratio", "flood_cpu", "cpu_s", "running", "rss_kib", "start_ms"
    );
    for r in Round::ALL {
        let _ = writeln!(
            t,
            "{:<34} {:>10.0} {:>6.3} {:>9.2} {:>7} {:>7} {:>8} {:>8}   {}",
            r.label(),
            rate(r),
            rate(r) / rate(r.baseline()),
            med(r, &|s| Some(s.flood_cpu)),
            opt(Some(cpu(r)), 3),
            opt(Some(running(r)), 3),
            rss(r).map_or("-".into(), |v| v.to_string()),
            opt(Some(startup_ms(r)), 0),
            of(r)
                .map(|s| format!("{:.0}", s.drops_per_s))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let _ = writeln!(
        t,
        "(flood_cpu: the sender's CPU time / wall time, well below 1 when something else took its \
         CPU; cpu_s, rss_kib: the tracer process's user+sys time and peak RSS over its whole run, from \
         wait4; running: droptrace's CPU time, its ruleset tools' included, from its start line to \
         its exit, over that time (a share of one core); start_ms: spawn to droptrace's JSON start line, or to bpftrace's probe being attached)"
    );

    let _ = writeln!(
        t,
        "\n{:<34} {:>9} {:>9} {:>6} {:>9} {:>5} {:>12} {:>9} {:>6}",
        "droptrace run",
        "total",
        "counter",
        "equal",
        "flood",
        "lost",
        "records_lost",
        "matched",
        "lines"
    );
    let mut dt_runs: Vec<(String, &Check)> = Vec::new();
    for r in [
        Round::Droptrace,
        Round::DroptraceRules,
        Round::DroptraceRulesSendto,
    ] {
        for (i, s) in of(r).enumerate() {
            if let Some(c) = s.tracer.as_ref().and_then(|t| t.check.as_ref()) {
                dt_runs.push((format!("{} #{}", r.label(), i + 1), c));
            }
        }
    }
    let many_check = many_dt.tracer.as_ref().and_then(|t| t.check.as_ref());
    if let Some(c) = many_check {
        dt_runs.push((format!("--no-rules, {MANY_FLOWS} flows"), c));
    }
    for (name, c) in &dt_runs {
        let _ = writeln!(
            t,
            "{:<34} {:>9} {:>9} {:>6} {:>9} {:>5} {:>12} {:>9} {:>6}",
            name,
            c.total,
            c.counter,
            c.exact(),
            c.flood_dropped,
            c.lost,
            c.records_lost,
            c.matched_in_kernel,
            c.drop_lines
        );
    }
    let _ = writeln!(
        t,
        "(total: droptrace's summary; counter: the OUTPUT rules' packet counter delta over the flood; \
         flood: sends that failed with EPERM; lines: JSON drop lines)"
    );
    let many_rate = many_dt.drops_per_s / many_base.drops_per_s;
    let many_cpu = many_dt.tracer.as_ref().map(|t| t.cpu_s);
    let many_rss = many_dt.tracer.as_ref().map_or(0, |t| t.peak_rss_kib);
    let _ = writeln!(
        t,
        "\nmany flows ({MANY_FLOWS} flows: 127.0.0.1/127.0.0.2 x 4 source ports x dports from 1024, \
         cycled; iptables -A OUTPUT -p udp -j DROP; 1 run each): baseline {:.0} drops/s, with droptrace \
         --no-rules {:.0} drops/s (ratio {many_rate:.3}); droptrace cpu {} s, peak RSS {many_rss} KiB",
        many_base.drops_per_s,
        many_dt.drops_per_s,
        opt(many_cpu, 3),
    );

    let ns_per = |rate: f64| 1e9 / rate;
    let added = ns_per(rate(Round::Droptrace)) - ns_per(base);
    let _ = writeln!(
        t,
        "\nper drop: {:.0} ns without a tracer, {:.0} ns with droptrace --no-rules (+{added:.0} ns). \
         Time per program run from the kernel's BPF run-time statistics ({DIAG_SECONDS} s unscored \
         runs; the timing itself adds a little to each):",
        ns_per(base),
        ns_per(rate(Round::Droptrace)),
    );
    for (what, v) in [
        ("empty tp_btf prog (the floor)", diag.empty),
        ("droptrace, drop of another netns", diag.netns_filtered),
        ("droptrace, filtered out by --dport 10", diag.port_filtered),
        ("droptrace, counted in its flow (1 flow)", diag.counted),
        (
            &format!("droptrace, {MANY_FLOWS} flows") as &str,
            diag.many_flows,
        ),
    ] {
        let _ = writeln!(t, "  {what:<44} {:>6} ns", opt(v, 0));
    }
    let runs_with_others = samples.iter().filter(|(_, s)| s.others > 0).count();
    if runs_with_others > 0 {
        let _ = writeln!(
            t,
            "\nnote: in {runs_with_others} of {} runs other kfree_skb programs (another droptrace or \
             bpftrace on this host) were loaded: their cost is in those runs' figures",
            samples.len()
        );
    }

    let all_exact = dt_runs.iter().all(|(_, c)| c.exact());
    let _ = writeln!(t);
    let mut line = |k: &str, v: String| {
        let _ = writeln!(t, "bench: {k}={v}");
    };
    line("baseline_drops_per_s", format!("{base:.0}"));
    line(
        "droptrace_drops_per_s",
        format!("{:.0}", rate(Round::Droptrace)),
    );
    line(
        "droptrace_ratio",
        format!("{:.3}", rate(Round::Droptrace) / base),
    );
    line(
        "droptrace_rules_ratio",
        format!("{:.3}", rate(Round::DroptraceRules) / base),
    );
    line(
        "bpftrace_printf_ratio",
        format!("{:.3}", rate(Round::BpftracePrintf) / base),
    );
    line(
        "bpftrace_count_ratio",
        format!("{:.3}", rate(Round::BpftraceCount) / base),
    );
    line(
        "droptrace_rules_sendto_ratio",
        format!(
            "{:.3}",
            rate(Round::DroptraceRulesSendto) / rate(Round::BaselineSendto)
        ),
    );
    line(
        "droptrace_other_netns_ratio",
        format!("{:.3}", rate(Round::DroptraceOtherNetns) / base),
    );
    line(
        "empty_prog_ratio",
        format!("{:.3}", rate(Round::EmptyProg) / base),
    );
    line(
        "droptrace_rules_below_floor",
        format!(
            "{:.3}",
            (rate(Round::EmptyProg) - rate(Round::DroptraceRules)) / base
        ),
    );
    line(
        "droptrace_total_equals_counter",
        format!("{all_exact} runs={}", dt_runs.len()),
    );
    line("droptrace_cpu_s", format!("{:.3}", cpu(Round::Droptrace)));
    line(
        "droptrace_running_cpu_share",
        format!("{:.3}", running(Round::Droptrace)),
    );
    line(
        "droptrace_rules_running_cpu_share",
        format!("{:.3}", running(Round::DroptraceRules)),
    );
    line(
        "droptrace_rules_cpu_s",
        format!("{:.3}", cpu(Round::DroptraceRules)),
    );
    line(
        "droptrace_peak_rss_kib",
        rss(Round::Droptrace).unwrap_or(0).to_string(),
    );
    line(
        "droptrace_rules_peak_rss_kib",
        rss(Round::DroptraceRules).unwrap_or(0).to_string(),
    );
    line("startup_ms", format!("{:.0}", startup_ms(Round::Droptrace)));
    line(
        "startup_rules_ms",
        format!("{:.0}", startup_ms(Round::DroptraceRules)),
    );
    line(
        "bpftrace_startup_ms",
        format!("{:.0}", startup_ms(Round::BpftraceCount)),
    );
    if let Some(c) = many_check {
        line(
            "many_flows_total",
            format!(
                "{} counter={} equal={} lost={} ratio={many_rate:.3}",
                c.total,
                c.counter,
                c.exact(),
                c.lost
            ),
        );
    }
    // The target for 100 000 flows: peak RSS under 128 MB.
    line("many_flows_peak_rss_kib", many_rss.to_string());
    line("droptrace_added_ns_per_drop", format!("{added:.0}"));
    line("droptrace_prog_ns_per_drop", opt(diag.counted, 0));
    line(
        "droptrace_prog_ns_port_filtered",
        opt(diag.port_filtered, 0),
    );
    line(
        "droptrace_prog_ns_netns_filtered",
        opt(diag.netns_filtered, 0),
    );
    line("droptrace_prog_ns_many_flows", opt(diag.many_flows, 0));
    line("empty_prog_ns_per_run", opt(diag.empty, 0));
    let over_floor = |v: Option<f64>| opt(v.zip(diag.empty).map(|(v, e)| v - e), 0);
    line(
        "droptrace_netns_filtered_over_floor_ns",
        over_floor(diag.netns_filtered),
    );
    line(
        "droptrace_port_filtered_over_floor_ns",
        over_floor(diag.port_filtered),
    );
    line(
        "runs_with_other_kfree_skb_progs",
        format!("{runs_with_others}/{}", samples.len()),
    );
    print!("{t}");

    // The same figures as docs/performance.md shows them.
    let mut d = String::new();
    let _ = writeln!(
        d,
        "| round | drops/s | vs its baseline | running CPU share | peak RSS | start-up |\n\
         |---|---|---|---|---|---|"
    );
    let shown =
        |v: f64, f: &dyn Fn(f64) -> String| if v.is_finite() { f(v) } else { String::new() };
    for r in Round::ALL {
        let _ = writeln!(
            d,
            "| {} | {:.0} | {:.3} | {} | {} | {} |",
            r.label(),
            rate(r),
            rate(r) / rate(r.baseline()),
            shown(running(r), &|v| format!("{:.1}%", v * 100.0)),
            rss(r).map_or(String::new(), |v| format!("{v} KiB")),
            shown(startup_ms(r), &|v| format!("{v:.0} ms")),
        );
    }
    let _ = writeln!(
        d,
        "\n- **Exact totals**: droptrace's total equalled the rule's counter in {} of {} runs; \
         in the {MANY_FLOWS}-flow round {} (ratio {many_rate:.3} of its baseline, peak RSS \
         {many_rss} KiB).",
        dt_runs.iter().filter(|(_, c)| c.exact()).count(),
        dt_runs.len(),
        many_check.map_or("not measured".to_string(), |c| format!(
            "{} packets, counter {}, {} lost",
            c.total, c.counter, c.lost
        )),
    );
    let _ = writeln!(
        d,
        "- **ns per program run** (BPF statistics, {DIAG_SECONDS} s runs): the floor {}; a drop \
         of another namespace {}; a drop refused by `--dport` {}; a counted drop {}; a drop of \
         the {MANY_FLOWS}-flow flood {}.",
        opt(diag.empty, 0),
        opt(diag.netns_filtered, 0),
        opt(diag.port_filtered, 0),
        opt(diag.counted, 0),
        opt(diag.many_flows, 0),
    );
    d
}
