//! Rendering records: one JSON object per line, or aligned text for people.
//!
//! Data goes to stdout, logs to stderr. Renderers take records and write bytes; they know
//! nothing of the kernel, so they are tested with fabricated records.

use std::io::{self, Write};

use serde::Serialize;

use crate::{
    escape::terminal,
    record::DropRecord,
    session::StartInfo,
    session::attempts::ServiceAttempts,
    session::summary::{Summary, SummaryRecord},
};

pub trait Sink {
    fn start(&mut self, _info: &StartInfo) -> io::Result<()> {
        Ok(())
    }
    fn drop_record(&mut self, r: &DropRecord) -> io::Result<()>;
    fn summary(&mut self, s: &Summary, end: &SummaryRecord) -> io::Result<()>;
}

pub struct JsonSink<W: Write> {
    out: W,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W) -> Self {
        JsonSink { out }
    }

    fn line<T: Serialize>(&mut self, v: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, v)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn start(&mut self, info: &StartInfo) -> io::Result<()> {
        self.line(info)
    }
    fn drop_record(&mut self, r: &DropRecord) -> io::Result<()> {
        self.line(r)
    }
    fn summary(&mut self, _s: &Summary, end: &SummaryRecord) -> io::Result<()> {
        self.line(end)
    }
}

pub struct TextSink<W: Write> {
    out: W,
    header_done: bool,
    color: bool,
    /// Name each line's namespace (the capture spans several).
    netns_column: bool,
}

impl<W: Write> TextSink<W> {
    pub fn new(out: W) -> Self {
        TextSink {
            out,
            header_done: false,
            color: false,
            netns_column: true,
        }
    }

    /// Leaves the namespace out of each line: the capture watches one, named at the start.
    pub fn one_namespace(mut self, one: bool) -> Self {
        self.netns_column = !one;
        self
    }

    pub fn with_color(mut self, color: bool) -> Self {
        self.color = color;
        self
    }

    fn paint(&self, style: anstyle::Style, text: &str) -> String {
        if self.color {
            format!("{style}{text}{style:#}")
        } else {
            text.to_string()
        }
    }
}

/// Colour for a terminal, unless NO_COLOR is set (https://no-color.org).
/// The closing line: what was counted, and whether the counts are complete.
pub fn end_line(end: &SummaryRecord) -> String {
    let drops = if end.total == 1 { "drop" } else { "drops" };
    let mut line = format!("{} {drops} in {:.1}s, ", end.total, end.duration_s);
    match (end.lost, &end.error) {
        (None, why) => line.push_str(&format!(
            "completeness unknown: {}",
            terminal(why.as_deref().unwrap_or("the kernel's counters were not read"))
        )),
        (Some(0), _) => line.push_str("0 lost"),
        (Some(n), _) => line.push_str(&format!(
            "{n} lost (flows evicted from the kernel's full flow table: counts above are incomplete)"
        )),
    }
    if end.beyond_flow_table > 0 {
        line.push_str(&format!(
            "; {} of them beyond per-flow detail (too many flows at once: counted by rule, hook \
             and port, without addresses or processes)",
            end.beyond_flow_table
        ));
    }
    if end.beyond_count > 0 {
        line.push_str(&format!(
            "; {} more counted after --count was reached (not printed)",
            end.beyond_count
        ));
    }
    if end.records_lost > 0 {
        line.push_str(&format!(
            "; {} records did not fit the ring buffer (their packets are in the counts)",
            end.records_lost
        ));
    }
    line
}

pub fn use_color(stream: &impl io::IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn level_style(l: crate::record::rule::Level) -> anstyle::Style {
    use crate::record::rule::Level;
    use anstyle::AnsiColor;
    let color = match l {
        Level::Exact => AnsiColor::Green,
        Level::Inferred => AnsiColor::Yellow,
        Level::Chain | Level::None => AnsiColor::Magenta,
    };
    anstyle::Style::new().fg_color(Some(color.into()))
}

/// `HH:MM:SS.mmm` of an RFC 3339 timestamp.
fn clock(time: &str) -> &str {
    time.get(11..23).unwrap_or(time)
}

pub fn process_text(r: &DropRecord) -> String {
    let Some(pid) = r.pid else {
        return match (r.sent_by_kernel(), r.kernel_sender) {
            (true, Some(what)) => format!("kernel ({what})"),
            (true, None) => "kernel".to_string(),
            (false, _) => "unknown".to_string(),
        };
    };
    let process = process_label(&r.comm, Some(pid), r.container.as_deref());
    if r.receiver {
        format!("{process} (receiver)")
    } else {
        process
    }
}

/// `java[812]@payments.service`: the command, its pid when given, and the container or
/// service it runs in. Containers and services are worth the width; login sessions are not.
pub fn process_label(comm: &str, pid: Option<u32>, container: Option<&str>) -> String {
    let pid = pid.map(|p| format!("[{p}]")).unwrap_or_default();
    match container {
        Some(c) if !c.ends_with(".scope") => format!("{}{pid}@{}", terminal(comm), terminal(c)),
        _ => format!("{}{pid}", terminal(comm)),
    }
}

pub fn netns_text(r: &DropRecord) -> String {
    match (&r.netns_name, r.netns_pid) {
        (Some(n), _) => terminal(n).into_owned(),
        (None, Some(pid)) => format!("{}(pid {pid})", r.netns),
        (None, None) => r.netns.to_string(),
    }
}

/// The flow line's columns, most important first so that a narrow terminal cuts the
/// least useful; the rule goes on a second, indented line. The brief's drop reads at 100
/// columns: rules alone are often longer than a line can share.
const TIME_W: usize = 12;
/// Ports the text summary lists; a scan has thousands.
const PORTS_SHOWN: usize = 20;

/// Destinations the text summary lists (the largest); the rest are one line, and all are
/// in the JSON summary. A scan's thousand destinations would bury the rules below them.
pub const DESTINATIONS_SHOWN: usize = 20;
const PROTO_W: usize = 5;
const ADDR_W: usize = 21;
const FLAGS_W: usize = 3;

impl<W: Write> Sink for TextSink<W> {
    fn drop_record(&mut self, r: &DropRecord) -> io::Result<()> {
        if !self.header_done {
            self.header_done = true;
            writeln!(
                self.out,
                "{:<TIME_W$} {:<PROTO_W$} {:>ADDR_W$}    {:<ADDR_W$} {:<FLAGS_W$} PROCESS{}",
                "TIME(UTC)",
                "PROTO",
                "SOURCE",
                "DESTINATION",
                "FLG",
                if self.netns_column { "  NETNS" } else { "" }
            )?;
        }
        let flags = match (&r.tcp_flags, r.icmp_type) {
            (Some(f), _) => f.clone(),
            (None, Some(t)) => format!("t{t}"),
            _ => "-".into(),
        };
        let count = if r.count > 1 {
            format!(" x{}", r.count)
        } else {
            String::new()
        };
        let netns = if self.netns_column {
            format!("  {}", netns_text(r))
        } else {
            String::new()
        };
        writeln!(
            self.out,
            "{:<TIME_W$} {:<PROTO_W$} {:>ADDR_W$} -> {:<ADDR_W$} {:<FLAGS_W$} {}{}{}",
            clock(&r.time),
            r.proto,
            r.source(),
            r.destination(),
            flags,
            process_text(r),
            count,
            netns,
        )?;
        // Second line: the hook and what dropped it.
        let mut place = r.hook.map_or("?", |h| h.as_str()).to_string();
        if let Some(name) = &r.dst_name {
            place.push_str(&format!(" to {}", terminal(name)));
        }
        if r.reason != "NETFILTER_DROP" {
            place.push_str(&format!(" ({})", r.reason));
        }
        let rule = match &r.rule {
            Some(a) => match a.label() {
                Some(l) => format!(
                    " {}{} {}{}",
                    self.paint(anstyle::Style::new().bold(), &terminal(&l)),
                    a.owner
                        .as_ref()
                        .map(|o| format!(" (managed by {})", terminal(&o.text())))
                        .unwrap_or_default(),
                    self.paint(
                        level_style(a.attribution),
                        &format!("[{}]", a.attribution.as_str())
                    ),
                    // Why the rule's verdict was a drop (a queue with no program).
                    a.cause
                        .as_ref()
                        .map(|c| format!(": {}", terminal(&c.text())))
                        .unwrap_or_default()
                ),
                None => format!(
                    " {}",
                    self.paint(
                        level_style(a.attribution),
                        &match &a.cause {
                            // The cause's figures; the JSON's why has the rest.
                            Some(c) => format!("[no rule: {}]", terminal(&c.text())),
                            None => format!("[rule unknown: {}]", terminal(&a.short_why())),
                        }
                    )
                ),
            },
            None => String::new(),
        };
        writeln!(self.out, "    {place}{rule}")?;
        self.out.flush()
    }

    fn summary(&mut self, s: &Summary, end: &SummaryRecord) -> io::Result<()> {
        writeln!(self.out)?;
        writeln!(self.out, "{}", end_line(end))?;
        let dests = s.destinations();
        if !dests.is_empty() {
            writeln!(self.out, "by destination:")?;
            for d in dests.iter().take(DESTINATIONS_SHOWN) {
                writeln!(self.out, "  {:>8}  {:<5} {}", d.count, d.proto, d.dst)?;
            }
            if dests.len() > DESTINATIONS_SHOWN {
                let rest: u64 = dests[DESTINATIONS_SHOWN..].iter().map(|d| d.count).sum();
                writeln!(
                    self.out,
                    "  {rest:>8}  ... and {} more destinations ({} distinct; all in --json)",
                    dests.len() - DESTINATIONS_SHOWN,
                    dests.len()
                )?;
            }
            writeln!(self.out, "by hook:")?;
            for (hook, n) in s.hooks() {
                writeln!(self.out, "  {n:>8}  {hook}")?;
            }
            if end.beyond_flow_table > 0 {
                // Addresses were not kept for all drops: ports are the table that adds up.
                writeln!(self.out, "by port:")?;
                let ports = s.ports();
                for p in ports.iter().take(PORTS_SHOWN) {
                    let port = p.port.map_or_else(|| "*".to_string(), |p| p.to_string());
                    writeln!(self.out, "  {:>8}  {:<5} {port}", p.count, p.proto)?;
                }
                if ports.len() > PORTS_SHOWN {
                    let rest: u64 = ports[PORTS_SHOWN..].iter().map(|p| p.count).sum();
                    writeln!(
                        self.out,
                        "  {rest:>8}  in {} more ports (all in --json)",
                        ports.len() - PORTS_SHOWN
                    )?;
                }
            }
            writeln!(self.out, "by rule:")?;
            for r in s.rules() {
                match &r.owner {
                    Some(owner) => writeln!(
                        self.out,
                        "  {:>8}  {} (managed by {})",
                        r.count,
                        terminal(&r.rule),
                        terminal(&owner.text())
                    )?,
                    None => writeln!(self.out, "  {:>8}  {}", r.count, terminal(&r.rule))?,
                }
                // Two backends: say where to look, or `iptables -L` shows the other's rules.
                if let (true, Some(list)) = (r.backends_mixed, &r.list) {
                    writeln!(self.out, "            list it: {}", terminal(list))?;
                }
                // The front-end's own view of it: where the fix is made.
                if let Some(show) = r.owner.as_ref().and_then(|o| o.show.as_ref()) {
                    writeln!(self.out, "            see it: {}", terminal(show))?;
                }
            }
        }
        if let Some(services) = &end.services {
            self.services(services)?;
        }
        if let Some(why) = &end.attempts_unavailable {
            writeln!(self.out, "attempts: unavailable ({})", terminal(why))?;
        }
        self.out.flush()
    }
}

impl<W: Write> TextSink<W> {
    /// `--attempts`: per service, attempts beside drops, and who let the others through.
    pub fn services(&mut self, services: &[ServiceAttempts]) -> io::Result<()> {
        writeln!(self.out, "attempts by service:")?;
        if services.is_empty() {
            writeln!(self.out, "  none seen")?;
        }
        for s in services {
            let mark = if s.intermittent {
                self.paint(anstyle::Style::new().bold(), "  INTERMITTENT")
            } else {
                String::new()
            };
            let attempts = if s.attempts == 1 {
                "attempt "
            } else {
                "attempts"
            };
            writeln!(
                self.out,
                "  {:<5} {:<28} {:>6} {attempts} {:>6} dropped {:>6} through{mark}",
                s.proto,
                terminal(&s.dst),
                s.attempts,
                s.dropped,
                s.passed,
            )?;
            if !s.processes.is_empty() {
                writeln!(
                    self.out,
                    "        from {}",
                    terminal(&s.processes.join(", "))
                )?;
            }
            for a in &s.accepted_by {
                // The rule on a line of its own: rules are long, lines read at 100 columns.
                let who = match &a.label {
                    Some(label) => format!(
                        "accepted (state {}, {}) by\n          {}",
                        a.ct_state,
                        a.rule.attribution.as_str(),
                        terminal(label),
                    ),
                    None => format!(
                        "got through (state {}): {}",
                        a.ct_state,
                        terminal(&a.rule.short_why())
                    ),
                };
                writeln!(self.out, "        {} {who}", a.count)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    #[test]
    fn json_lines_parse_and_sum() {
        let mut buf = Vec::new();
        let mut s = Summary::default();
        {
            let mut sink = JsonSink::new(&mut buf);
            let r = sample();
            s.add(&r);
            sink.drop_record(&r).unwrap();
            sink.summary(&s, &s.record(0, 1, 0.5)).unwrap();
        }
        let lines: Vec<serde_json::Value> = String::from_utf8(buf)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["count"], 1);
        assert_eq!(lines[1]["total"], 1);
        assert_eq!(lines[1]["destinations"][0]["dst"], "203.0.113.10:8443");
    }

    /// A scan's thousand destinations: the text lists the largest, says how many more
    /// (with their drops), and the JSON summary keeps them all.
    #[test]
    fn a_long_destination_table_is_capped_in_text_not_in_json() {
        let mut s = Summary::default();
        for port in 0..1007u16 {
            let mut r = sample();
            r.dport = Some(1000 + port);
            s.add(&r);
        }
        let end = s.record(0, 1007, 1.0);
        let mut text = Vec::new();
        TextSink::new(&mut text).summary(&s, &end).unwrap();
        let text = String::from_utf8(text).unwrap();
        let listed = text
            .lines()
            .skip_while(|l| *l != "by destination:")
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .count();
        assert_eq!(listed, DESTINATIONS_SHOWN + 1, "{text}");
        assert!(
            text.contains("987  ... and 987 more destinations (1007 distinct; all in --json)"),
            "{text}"
        );
        let mut json = Vec::new();
        JsonSink::new(&mut json).summary(&s, &end).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["destinations"].as_array().unwrap().len(), 1007);
    }

    #[test]
    fn text_line_names_the_flow_hook_and_process() {
        let mut buf = Vec::new();
        TextSink::new(&mut buf).drop_record(&sample()).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let line = text.lines().nth(1).unwrap();
        assert!(line.starts_with("10:30:00.123"));
        for part in [
            "198.51.100.2:40000 -> 203.0.113.10:8443",
            "java[812]@payments.service  client",
        ] {
            assert!(line.contains(part), "{part} missing in {line}");
        }
        let place = text.lines().nth(2).unwrap();
        assert_eq!(place, "    OUTPUT");
    }

    /// The brief's drop, with its rule, reads at 100 columns: the flow on one line, where
    /// and which rule on the next.
    #[test]
    fn a_drop_reads_at_100_columns() {
        let mut r = sample();
        r.count = 37;
        r.rule = Some(crate::attribution::tests::brief_rule());
        let mut buf = Vec::new();
        TextSink::new(&mut buf)
            .one_namespace(true)
            .drop_record(&r)
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        for line in text.lines() {
            assert!(
                line.chars().count() <= 100,
                "{} columns: {line}",
                line.len()
            );
        }
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .ends_with("java[812]@payments.service x37")
        );
        assert_eq!(
            text.lines().nth(2).unwrap(),
            "    OUTPUT filter/OUTPUT rule 4 `-A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP` [exact]"
        );
    }

    #[test]
    fn hostile_names_are_escaped_in_text_and_valid_in_json() {
        let mut r = sample();
        r.comm = "\x1b[31mevil\x07".into();
        r.ifname = "eth\n0".into();
        let mut buf = Vec::new();
        TextSink::new(&mut buf).drop_record(&r).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(!text.contains('\x1b') && !text.contains('\x07'));
        assert!(
            text.contains("\\x1b[31mevil\\x07[812]@payments.service"),
            "{text}"
        );
        assert_eq!(
            text.lines().count(),
            3,
            "an embedded newline must not split a line"
        );
        let mut buf = Vec::new();
        JsonSink::new(&mut buf).drop_record(&r).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["comm"], "\x1b[31mevil\x07");
    }

    #[test]
    fn colour_only_when_asked_and_never_inside_escaped_names() {
        let mut r = sample();
        r.rule = Some(crate::record::rule::Attribution::none("no ruleset"));
        let mut plain = Vec::new();
        TextSink::new(&mut plain).drop_record(&r).unwrap();
        assert!(!String::from_utf8(plain).unwrap().contains('\x1b'));
        let mut colored = Vec::new();
        TextSink::new(&mut colored)
            .with_color(true)
            .drop_record(&r)
            .unwrap();
        let text = String::from_utf8(colored).unwrap();
        assert!(
            text.contains("\x1b[35m[rule unknown: no ruleset]"),
            "{text:?}"
        );
    }

    #[test]
    fn a_drop_no_rule_made_shows_its_cause_and_whether_it_is_sure() {
        let mut r = sample();
        let mut a = crate::record::rule::Attribution::none("long why");
        a.cause = Some(crate::record::rule::Cause {
            name: "conntrack_table_full",
            title: "conntrack table full (50 of nf_conntrack_max 50)".into(),
            certain: true,
        });
        r.rule = Some(a.clone());
        let mut out = Vec::new();
        TextSink::new(&mut out).drop_record(&r).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("[no rule: conntrack table full (50 of nf_conntrack_max 50)]"),
            "{text}"
        );
        assert!(!text.contains("long why"), "{text}");
        a.cause.as_mut().unwrap().certain = false;
        r.rule = Some(a);
        let mut out = Vec::new();
        TextSink::new(&mut out).drop_record(&r).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("[no rule: unsure: conntrack table full"),
        );
        assert_eq!(r.dropped_by(), "(no rule: conntrack table full)");
    }

    #[test]
    fn softirq_drop_without_known_owner_says_unknown() {
        let mut r = sample();
        r.pid = None;
        r.comm = "unknown".into();
        assert_eq!(process_text(&r), "unknown");
    }

    /// A router solicitation from the kernel's timer names no process, least of all the
    /// one the timer interrupted.
    #[test]
    fn a_packet_the_kernel_sent_says_kernel_and_what_it_is() {
        let mut r = sample();
        r.pid = None;
        r.comm = "kernel".into();
        r.context = crate::kernel::stack::Context::Kernel;
        r.kernel_sender = Some("ndisc");
        assert_eq!(process_text(&r), "kernel (ndisc)");
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(
            (v["context"].as_str(), v["kernel_sender"].as_str()),
            (Some("kernel"), Some("ndisc"))
        );
        r.kernel_sender = None;
        assert_eq!(process_text(&r), "kernel");
    }

    #[test]
    fn an_intermittent_service_says_who_let_the_others_through() {
        use crate::session::attempts::AcceptedBy;
        let mut rule = crate::attribution::tests::brief_rule();
        rule.rule = Some("-A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".into());
        rule.rule_num = Some(2);
        rule.verdict = Some("ACCEPT".into());
        let mut end = Summary::default().record(0, 0, 1.0);
        end.services = Some(vec![ServiceAttempts {
            netns: 1,
            dst: "203.0.113.10:8443".into(),
            proto: "tcp".into(),
            attempts: 10,
            dropped: 7,
            passed: 3,
            intermittent: true,
            complete: true,
            processes: vec!["java".into()],
            accepted_by: vec![AcceptedBy {
                count: 3,
                ct_state: "established",
                label: rule.label(),
                rule,
            }],
        }]);
        let mut buf = Vec::new();
        TextSink::new(&mut buf)
            .summary(&Summary::default(), &end)
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(
            text.contains("tcp   203.0.113.10:8443                10 attempts      7 dropped      3 through  INTERMITTENT"),
            "{text}"
        );
        assert!(text.contains("        from java"), "{text}");
        assert!(
            text.contains(
                "        3 accepted (state established, exact) by\n          filter/OUTPUT rule 2 \
                 `-A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`\n"
            ),
            "{text}"
        );
        assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");
    }
}
