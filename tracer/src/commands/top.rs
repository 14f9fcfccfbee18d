//! `droptrace top`: the live view — drops grouped by rule and destination, refreshed
//! every second.
//!
//! The model ([`TopModel`]) only counts; [`render`] only draws a model into a ratatui
//! frame. Neither knows about the kernel, so both are tested with fabricated records and
//! ratatui's test backend. When stdout is not a terminal the same table is printed as
//! plain text every second instead.

use std::{
    collections::HashMap,
    io::{self, IsTerminal as _, Write as _},
    time::{Duration, Instant},
};

use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Cell, Paragraph, Row, Table},
};

use crate::{
    escape::terminal,
    record::DropRecord,
    session::Session,
    session::options::{CaptureArgs, FilterArgs},
    sinks::lines::process_label,
};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Initial sort order (`s` cycles through them).
    #[arg(long, value_enum, default_value_t = SortBy::Rate)]
    pub sort: SortBy,
    #[arg(long, help = crate::session::options::ATTEMPTS_HELP)]
    pub attempts: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// Drops per second now.
    Rate,
    /// Drops since the start.
    Total,
    /// Most recent first.
    Last,
    /// By destination.
    Destination,
}

impl SortBy {
    /// The column it sorts by, as the header names it.
    fn column(self) -> usize {
        match self {
            SortBy::Rate => 0,
            SortBy::Total => 1,
            SortBy::Last => 6,
            SortBy::Destination => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SortBy::Rate => "drops/s",
            SortBy::Total => "total",
            SortBy::Last => "last seen",
            SortBy::Destination => "destination",
        }
    }

    fn next(self) -> Self {
        match self {
            SortBy::Rate => SortBy::Total,
            SortBy::Total => SortBy::Last,
            SortBy::Last => SortBy::Destination,
            SortBy::Destination => SortBy::Rate,
        }
    }
}

/// One row: what dropped, to where, from which program. Processes are grouped by
/// command (and container), not pid, so a cron job or a retrying client that starts a new
/// process each time stays one row; the pids are counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    /// Destination address and port, for sorting by number (5044 < 8080 < 50000).
    pub dst_order: (std::net::IpAddr, u16),
    pub dropped_by: String,
    pub dst: String,
    pub proto: String,
    /// The program: its command and container or service (`unknown` without a sender).
    pub comm: String,
    pub container: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RowStats {
    pub total: u64,
    /// Drops in the current one-second window, and the rate of the last full one.
    pub window: u64,
    pub rate: u64,
    pub first: String,
    pub last: String,
    pub last_seq: u64,
    /// Distinct sender pids seen (a few are kept; the count goes on).
    pub pids: Vec<u32>,
    pub pid_count: usize,
}

#[derive(Debug)]
pub struct TopModel {
    pub rows: HashMap<RowKey, RowStats>,
    pub sort: SortBy,
    pub total: u64,
    seq: u64,
    /// With `--attempts`: attempts and attempts that got through, by destination.
    pub attempts: Option<HashMap<String, (u64, u64)>>,
}

impl TopModel {
    pub fn new(sort: SortBy) -> Self {
        TopModel {
            rows: HashMap::new(),
            sort,
            total: 0,
            seq: 0,
            attempts: None,
        }
    }

    pub fn add(&mut self, r: &DropRecord) {
        self.seq += 1;
        self.total += r.count;
        let key = RowKey {
            dst_order: (r.dst, r.dport.unwrap_or(0)),
            dropped_by: r.dropped_by(),
            dst: r.destination(),
            proto: r.proto.clone(),
            comm: if r.pid.is_some() {
                r.comm.clone()
            } else {
                "unknown".to_string()
            },
            container: r.container.clone().filter(|_| r.pid.is_some()),
        };
        let time = r.time.get(11..19).unwrap_or(&r.time).to_string();
        let row = self.rows.entry(key).or_insert_with(|| RowStats {
            total: 0,
            window: 0,
            rate: 0,
            first: time.clone(),
            last: time.clone(),
            last_seq: 0,
            pids: Vec::new(),
            pid_count: 0,
        });
        if let Some(pid) = r.pid
            && !row.pids.contains(&pid)
        {
            row.pid_count += 1;
            if row.pids.len() < 8 {
                row.pids.push(pid);
            }
        }
        row.total += r.count;
        row.window += r.count;
        row.last = time;
        row.last_seq = self.seq;
    }

    /// Closes a one-second window: its drops become the current rate.
    pub fn tick(&mut self) {
        for row in self.rows.values_mut() {
            row.rate = std::mem::take(&mut row.window);
        }
    }

    pub fn sorted(&self) -> Vec<(&RowKey, &RowStats)> {
        let mut v: Vec<_> = self.rows.iter().collect();
        match self.sort {
            SortBy::Rate => {
                v.sort_by(|a, b| b.1.rate.cmp(&a.1.rate).then(b.1.total.cmp(&a.1.total)))
            }
            SortBy::Total => v.sort_by_key(|e| std::cmp::Reverse(e.1.total)),
            SortBy::Last => v.sort_by_key(|e| std::cmp::Reverse(e.1.last_seq)),
            SortBy::Destination => v.sort_by(|a, b| a.0.cmp(b.0)),
        }
        v
    }
}

const COLUMNS: usize = 9;

const HEADERS: [&str; COLUMNS] = [
    "DROPS/S",
    "TOTAL",
    "PROTO",
    "DESTINATION",
    "PROCESS",
    "FIRST",
    "LAST",
    "DROPPED BY",
    "ATTEMPTS",
];

/// The rule column, which takes what the others leave.
const RULE: usize = 7;
const ATTEMPTS: usize = 8;

/// `java[812]`, or `curl (5 pids)` when short-lived processes come and go.
fn process_cell(k: &RowKey, s: &RowStats) -> String {
    let container = k.container.as_deref();
    match (s.pid_count, s.pids.first()) {
        (1, Some(pid)) => process_label(&k.comm, Some(*pid), container),
        (0, _) | (_, None) => process_label(&k.comm, None, container),
        (n, Some(_)) => format!("{} ({n} pids)", process_label(&k.comm, None, container)),
    }
}

/// Attempts to the row's destination: `10 (3 passed)`, marked `!` when some got through
/// while others were dropped (intermittent).
fn attempts_cell(k: &RowKey, attempts: Option<&HashMap<String, (u64, u64)>>) -> String {
    match attempts.and_then(|a| a.get(&k.dst)) {
        Some((n, 0)) => n.to_string(),
        Some((n, passed)) => format!("{n} ({passed} passed)!"),
        None => String::new(),
    }
}

fn cells(
    k: &RowKey,
    s: &RowStats,
    attempts: Option<&HashMap<String, (u64, u64)>>,
) -> [String; COLUMNS] {
    [
        s.rate.to_string(),
        s.total.to_string(),
        k.proto.clone(),
        k.dst.clone(),
        process_cell(k, s),
        s.first.clone(),
        s.last.clone(),
        terminal(&k.dropped_by).into_owned(),
        attempts_cell(k, attempts),
    ]
}

/// Columns in the order they give way on a narrow screen: the last listed goes first.
/// Destination (with its port) and the rule stay; attempts come next when asked for.
const PRIORITY: [usize; COLUMNS] = [3, 7, 8, 0, 1, 4, 2, 6, 5];

/// The header, with the sort column marked.
fn headers(sort: SortBy) -> [String; COLUMNS] {
    std::array::from_fn(|i| {
        if i == sort.column() {
            format!("{}▼", HEADERS[i])
        } else {
            HEADERS[i].to_string()
        }
    })
}

/// Draws the model: a title line, the table, a key help line.
pub fn render(frame: &mut Frame, model: &TopModel, title: &str) {
    let [head, body, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let drops = if model.total == 1 { "drop" } else { "drops" };
    frame.render_widget(
        Paragraph::new(Line::from(format!(
            "{title} — {} {drops}, {} rows, sorted by {}",
            model.total,
            model.rows.len(),
            model.sort.name()
        ))),
        head,
    );
    let sorted = model.sorted();
    let attempts = model.attempts.as_ref();
    let all: Vec<[String; COLUMNS]> = sorted.iter().map(|(k, s)| cells(k, s, attempts)).collect();
    let header = headers(model.sort);
    // Each column as wide as its widest cell; the rule takes what is left.
    let natural: [u16; COLUMNS] = std::array::from_fn(|i| {
        all.iter()
            .map(|c| c[i].chars().count())
            .chain(std::iter::once(header[i].chars().count()))
            .max()
            .unwrap_or(0)
            .min(64) as u16
    });
    let available = body.width.saturating_sub(2);
    let mut shown: Vec<usize> = Vec::new();
    let mut used = 0u16;
    for &i in PRIORITY
        .iter()
        .filter(|&&i| i != ATTEMPTS || attempts.is_some())
    {
        let need = if i == RULE { 20 } else { natural[i] + 1 };
        if used + need <= available || shown.len() < 2 {
            shown.push(i);
            used += need;
        }
    }
    shown.sort_unstable();
    let widths: Vec<Constraint> = shown
        .iter()
        .map(|&i| {
            if i == RULE {
                Constraint::Min(20)
            } else {
                Constraint::Length(natural[i])
            }
        })
        .collect();
    let rows = all
        .iter()
        .map(|c| Row::new(shown.iter().map(|&i| Cell::from(c[i].clone()))));
    let table = Table::new(rows, widths)
        .header(
            Row::new(shown.iter().map(|&i| Cell::from(header[i].clone())))
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::bordered());
    frame.render_widget(table, body);
    frame.render_widget(
        Paragraph::new("q quit   s sort (drops/s, total, last seen, destination)"),
        help,
    );
}

/// The same table as plain text, for a stdout that is not a terminal.
pub fn plain_table(model: &TopModel) -> String {
    let h = headers(model.sort);
    let attempts = model.attempts.as_ref();
    // With attempts, their column goes before the rule, which may be long.
    let line = |c: &[String; COLUMNS]| match attempts {
        Some(_) => format!(
            "{:>8} {:>9} {:<6} {:<24} {:<22} {:<9} {:<9} {:<16} {}\n",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[ATTEMPTS], c[RULE]
        ),
        None => format!(
            "{:>8} {:>9} {:<6} {:<24} {:<22} {:<9} {:<9} {}\n",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[RULE]
        ),
    };
    let mut out = line(&h);
    for (k, s) in model.sorted() {
        out.push_str(&line(&cells(k, s, attempts)));
    }
    out
}

pub async fn run(mut args: TopArgs) -> anyhow::Result<()> {
    args.capture.attempts = args.attempts;
    let mut session = Session::start(&args.filters, &args.capture, false)?;
    session.count_beyond_flow_table(&args.capture);
    let info = session.start_info(&args.filters, &args.capture);
    let title = format!(
        "droptrace top: {} drops in netns {}{}",
        info.reasons,
        terminal(&info.netns),
        if info.filters.is_empty() {
            String::new()
        } else {
            format!(" matching {}", terminal(&info.filters))
        }
    );
    let model = std::cell::RefCell::new(TopModel::new(args.sort));
    if !io::stdout().is_terminal() {
        eprintln!("{}", info.line());
        let mut out = io::stdout().lock();
        session
            .run_with_tick(
                &args.capture,
                |r| {
                    model.borrow_mut().add(r);
                    Ok(())
                },
                |session| {
                    let mut m = model.borrow_mut();
                    m.tick();
                    m.attempts = session.attempt_counts();
                    writeln!(out, "{}", plain_table(&m))?;
                    out.flush()
                },
            )
            .await?;
    } else {
        let mut terminal = ratatui::init();
        // Keys come from a blocking reader thread; `q` ends the capture like Ctrl-C.
        let (keys_tx, keys) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            while let Ok(ev) = ratatui::crossterm::event::read() {
                if let ratatui::crossterm::event::Event::Key(k) = ev
                    && keys_tx.send(k.code).is_err()
                {
                    break;
                }
            }
        });
        let mut last_draw = Instant::now();
        let result = session
            .run_with_tick(
                &args.capture,
                |r| {
                    model.borrow_mut().add(r);
                    Ok(())
                },
                |session| {
                    let mut m = model.borrow_mut();
                    while let Ok(code) = keys.try_recv() {
                        use ratatui::crossterm::event::KeyCode;
                        match code {
                            KeyCode::Char('q') | KeyCode::Esc => {
                                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGINT);
                            }
                            KeyCode::Char('s') => m.sort = m.sort.next(),
                            _ => {}
                        }
                    }
                    if last_draw.elapsed() >= Duration::from_millis(900) {
                        m.tick();
                        m.attempts = session.attempt_counts();
                        last_draw = Instant::now();
                    }
                    terminal.draw(|f| render(f, &m, &title)).map(|_| ())
                },
            )
            .await;
        ratatui::restore();
        result?;
    }
    let end = session.finish();
    let mut m = model.borrow_mut();
    if m.attempts.is_some() {
        m.attempts = session.attempt_counts();
    }
    let mut out = io::stdout().lock();
    writeln!(out, "{}", crate::sinks::lines::end_line(&end))?;
    write!(out, "{}", plain_table(&m))?;
    if let Some(services) = &end.services {
        crate::sinks::lines::TextSink::new(&mut out).services(services)?;
    }
    if let Some(why) = &end.attempts_unavailable {
        writeln!(out, "attempts: unavailable ({})", terminal(why))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;
    use ratatui::{Terminal, backend::TestBackend};

    fn model() -> TopModel {
        let mut m = TopModel::new(SortBy::Rate);
        for (port, comm, n) in [
            (8443, "java", 37),
            (9090, "prometheus", 5),
            (5044, "filebeat", 12),
        ] {
            let mut r = sample();
            r.dport = Some(port);
            r.comm = comm.into();
            r.count = n;
            m.add(&r);
        }
        m
    }

    #[test]
    fn rows_group_by_rule_and_destination_and_sort() {
        let mut m = model();
        m.tick();
        let mut r = sample();
        r.dport = Some(9090);
        r.comm = "prometheus".into();
        r.count = 100;
        m.add(&r);
        let order: Vec<&str> = m.sorted().iter().map(|(k, _)| k.dst.as_str()).collect();
        assert_eq!(
            order,
            [
                "203.0.113.10:8443",
                "203.0.113.10:5044",
                "203.0.113.10:9090"
            ],
            "rate of the last full second"
        );
        m.tick();
        assert_eq!(m.sorted()[0].0.dst, "203.0.113.10:9090");
        m.sort = SortBy::Total;
        assert_eq!(m.sorted()[0].1.total, 105);
        assert_eq!(m.total, 154);
    }

    /// The model drawn on a `width` x `height` test terminal, as one string.
    fn screen(m: &TopModel, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| render(f, m, "droptrace top")).unwrap();
        terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect()
    }

    #[test]
    fn renders_the_services_to_a_test_backend() {
        let mut m = model();
        m.tick();
        let screen = screen(&m, 140, 10);
        for s in [
            "DROPS/S",
            "203.0.113.10:8443",
            "java[812]",
            "203.0.113.10:5044",
            "OUTPUT (nftables/ip)",
            "54 drops",
        ] {
            assert!(screen.contains(s), "{s} not on screen");
        }
    }

    #[test]
    fn attempts_show_beside_drops_only_when_asked_for() {
        let mut m = model();
        m.tick();
        assert!(!screen(&m, 160, 10).contains("ATTEMPTS"));
        assert!(!plain_table(&m).contains("ATTEMPTS"));
        m.attempts = Some(
            [
                ("203.0.113.10:8443".to_string(), (10, 3)),
                ("203.0.113.10:5044".to_string(), (12, 0)),
            ]
            .into(),
        );
        let screen = screen(&m, 160, 10);
        assert!(screen.contains("ATTEMPTS"), "{screen}");
        assert!(screen.contains("10 (3 passed)!"), "{screen}");
        let table = plain_table(&m);
        let java = table.lines().find(|l| l.contains(":8443")).unwrap();
        assert!(java.contains("10 (3 passed)!"), "{table}");
        let filebeat = table.lines().find(|l| l.contains(":5044")).unwrap();
        assert!(filebeat.contains(" 12 "), "{table}");
    }

    #[test]
    fn destinations_sort_by_number_and_processes_by_program() {
        let mut m = TopModel::new(SortBy::Destination);
        for (port, pid) in [(8080, 1), (53, 2), (5044, 3), (5044, 4), (5044, 5)] {
            let mut r = sample();
            r.dport = Some(port);
            r.pid = Some(pid);
            r.comm = "curl".into();
            r.container = None;
            m.add(&r);
        }
        let order: Vec<&str> = m.sorted().iter().map(|(k, _)| k.dst.as_str()).collect();
        assert_eq!(
            order,
            ["203.0.113.10:53", "203.0.113.10:5044", "203.0.113.10:8080"]
        );
        let (k, s) = m.sorted()[1];
        assert_eq!(process_cell(k, s), "curl (3 pids)");
        let (k, s) = m.sorted()[0];
        assert_eq!(process_cell(k, s), "curl[2]");
    }

    /// At 60 columns the destination keeps its port and the rule stays; the sort column
    /// is marked.
    #[test]
    fn a_narrow_screen_drops_columns_not_ports() {
        let mut m = model();
        m.tick();
        let screen = screen(&m, 60, 8);
        assert!(screen.contains("203.0.113.10:8443"), "{screen}");
        assert!(screen.contains("DROPS/S▼"), "{screen}");
        assert!(screen.contains("sorted by drops/s"), "{screen}");
        assert!(!screen.contains("FIRST"), "{screen}");
    }

    #[test]
    fn plain_text_fallback_has_one_line_per_row() {
        let mut m = model();
        m.tick();
        let t = plain_table(&m);
        assert_eq!(t.lines().count(), 4);
        assert!(t.lines().nth(1).unwrap().contains("8443"));
    }
}
