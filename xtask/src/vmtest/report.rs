//! Reading the serial console: each droptrace run, doctor's and inventory's reports, what
//! counts as a failure on each kernel, and the tables printed at the end.

use super::*;

/// One droptrace run in a guest.
#[derive(Default)]
pub(super) struct Run {
    /// droptrace's exit code, or "rules" if the iptables rules could not be added.
    pub(super) exit: Option<String>,
    /// From droptrace's start to its exit, as the guest saw it.
    pub(super) took: Option<String>,
    pub(super) start: Option<Value>,
    pub(super) summary: Option<Value>,
    pub(super) drops: Vec<Value>,
    pub(super) stderr: Vec<String>,
}

impl Run {
    pub(super) fn mode(&self) -> String {
        self.start
            .as_ref()
            .and_then(|s| s["mode"].as_str())
            .unwrap_or("-")
            .to_string()
    }

    /// Which engine functions reported verdicts, from the start line (`off` and why not).
    pub(super) fn verdicts(&self) -> String {
        let v = self
            .start
            .as_ref()
            .and_then(|s| s["kernel_verdicts"].as_str())
            .unwrap_or("-");
        match v.strip_prefix("off") {
            Some(_) => "off".into(),
            None => v.replace(' ', ""),
        }
    }

    pub(super) fn field_set(&self, field: &str) -> String {
        let set: BTreeSet<String> = self
            .drops
            .iter()
            .map(|d| match &d[field] {
                Value::String(s) => s.clone(),
                Value::Null => "?".into(),
                v => v.to_string(),
            })
            .collect();
        if set.is_empty() {
            "-".into()
        } else {
            set.into_iter().collect::<Vec<_>>().join(",")
        }
    }

    /// Why this run does not count as working, if it does not. `kernel_verdicts`: the
    /// engines' verdicts must have confirmed every attribution.
    pub(super) fn problem(&self, backend: &str, kernel_verdicts: bool) -> Option<String> {
        let first_err = || self.stderr.iter().find(|l| !l.trim().is_empty()).cloned();
        match self.exit.as_deref() {
            None => return Some("no report from the guest".into()),
            Some("rules") => {
                return Some(first_err().unwrap_or_else(|| "iptables rules failed".into()));
            }
            Some("0") => {}
            Some(code) => {
                return Some(
                    first_err().unwrap_or_else(|| format!("droptrace exited with {code}")),
                );
            }
        }
        if self.start.is_none() {
            return Some("no start line".into());
        }
        if self.summary.is_none() {
            return Some("no summary line".into());
        }
        let missing: Vec<String> = EXPECTED_DPORTS
            .iter()
            .filter(|p| !self.drops.iter().any(|d| d["dport"].as_u64() == Some(**p)))
            .map(u64::to_string)
            .collect();
        if !missing.is_empty() {
            return Some(format!("no drop reported for dport {}", missing.join(", ")));
        }
        // tp_btf loads on every kernel of the matrix: a silent fallback to the classic
        // tracepoint (the verifier refusing the tp_btf program) is a failure. nft-perf forces
        // the tracepoint.
        let mode = self.mode();
        if backend != "nft-perf" && !mode.starts_with("tp_btf/") {
            return Some(format!("fell back to {mode}"));
        }
        // The incident's rule is named on every kernel: by the engine's own verdict where
        // it is watched, else by evaluation confirmed by the rule's counter.
        if let Some(d) = self.drops.iter().find(|d| d["attribution"] != "exact") {
            return Some(format!(
                "drop to dport {} attributed {} ({})",
                d["dport"], d["attribution"], d["why"]
            ));
        }
        // init.sh: native nft drops in user chain `hardening` of `inet fw`; iptables in
        // filter/OUTPUT.
        let (table, chain) = match backend {
            "nftables" => ("fw", "hardening"),
            _ => ("filter", "OUTPUT"),
        };
        if let Some(d) = self
            .drops
            .iter()
            .find(|d| d["table"] != table || d["chain"] != chain)
        {
            return Some(format!(
                "drop to dport {} attributed to {}/{}, not {table}/{chain}",
                d["dport"], d["table"], d["chain"]
            ));
        }
        // init.sh dials the payment gateway once: one attempt, dropped.
        if backend == "attempts" {
            let summary = self.summary.as_ref().expect("checked above");
            let services = summary["services"].as_array();
            let gateway = services
                .into_iter()
                .flatten()
                .find(|s| s["dst"] == "203.0.113.10:8443" && s["proto"] == "tcp");
            match gateway {
                Some(s)
                    if s["attempts"].as_u64() >= Some(1) && s["dropped"].as_u64() >= Some(1) => {}
                Some(s) => return Some(format!("attempts to 203.0.113.10:8443: {s}")),
                None => {
                    return Some(format!(
                        "no attempts to 203.0.113.10:8443 ({})",
                        summary["attempts_unavailable"]
                            .as_str()
                            .unwrap_or("no such service")
                    ));
                }
            }
        }
        if kernel_verdicts {
            if self.verdicts() == "off" {
                let why = self
                    .start
                    .as_ref()
                    .and_then(|s| s["kernel_verdicts"].as_str());
                return Some(format!(
                    "kernel verdicts not watched: {}",
                    why.unwrap_or("-")
                ));
            }
            let unconfirmed = self.drops.iter().find(|d| {
                d["attribution"] != "exact"
                    || !d["why"]
                        .as_str()
                        .is_some_and(|w| w.starts_with("the kernel confirmed it"))
            });
            if let Some(d) = unconfirmed {
                return Some(format!(
                    "drop to dport {} not confirmed by the kernel: {} ({})",
                    d["dport"], d["attribution"], d["why"]
                ));
            }
        }
        None
    }
}

pub(super) struct Report<'a> {
    pub(super) spec: &'a KernelSpec,
    /// What the guest's `uname -r` said (the package's release if it said nothing).
    pub(super) release: String,
    pub(super) runs: BTreeMap<String, Run>,
    pub(super) done: bool,
    /// droptrace's programs in the kernel while capturing, and after a `kill -9`.
    pub(super) kill9: Option<(u32, u32)>,
    /// `droptrace doctor --json`: its exit code and report.
    pub(super) doctor: Option<(String, Value)>,
    /// `droptrace inventory --json`: its exit code and report.
    pub(super) inventory: Option<(String, Value)>,
    /// `droptrace audit --duration --json` of live traffic: its exit code and report.
    pub(super) audit: Option<(String, Value)>,
    /// Why the guest gave no full report, with the end of its console.
    pub(super) infra: Option<String>,
    pub(super) took: Option<Duration>,
}

impl<'a> Report<'a> {
    pub(super) fn new(g: &Guest<'a>, outcome: Outcome) -> Report<'a> {
        let text = fs::read(&g.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let mut report = Report {
            spec: g.spec,
            release: g.kernel.release.clone(),
            runs: BTreeMap::new(),
            done: false,
            kill9: None,
            doctor: None,
            inventory: None,
            audit: None,
            infra: None,
            took: None,
        };
        for line in text.lines().map(|l| l.trim_end_matches('\r')) {
            let Some(rest) = line.find("VMTEST-").map(|i| &line[i + "VMTEST-".len()..]) else {
                continue;
            };
            let (tag, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            match tag {
                "KERNEL" => report.release = rest.trim().to_string(),
                "DONE" => report.done = true,
                "KILL9" => {
                    let mut n = rest.split_whitespace().map(|w| w.parse::<u32>().ok());
                    if let (Some(Some(during)), Some(Some(after))) = (n.next(), n.next()) {
                        report.kill9 = Some((during, after));
                    }
                }
                "DOCTOR" | "INVENTORY" | "AUDIT" => {
                    let (code, json) = rest.split_once(' ').unwrap_or((rest, ""));
                    let value = serde_json::from_str::<Value>(json).unwrap_or(Value::Null);
                    let slot = match tag {
                        "DOCTOR" => &mut report.doctor,
                        "INVENTORY" => &mut report.inventory,
                        _ => &mut report.audit,
                    };
                    *slot = Some((code.to_string(), value));
                }
                "JSON" | "STDERR" | "EXIT" => {
                    let (backend, payload) = rest.split_once(' ').unwrap_or((rest, ""));
                    let run = report.runs.entry(backend.to_string()).or_default();
                    match tag {
                        "EXIT" => {
                            let mut words = payload.split_whitespace().map(str::to_string);
                            run.exit = words.next();
                            run.took = words.next();
                        }
                        "STDERR" => run.stderr.push(payload.to_string()),
                        _ => match serde_json::from_str::<Value>(payload) {
                            Ok(v) => match v["type"].as_str() {
                                Some("start") => run.start = Some(v),
                                Some("summary") => run.summary = Some(v),
                                _ => run.drops.push(v),
                            },
                            Err(e) => run
                                .stderr
                                .push(format!("vm-test: unreadable JSON line ({e}): {payload}")),
                        },
                    }
                }
                _ => {}
            }
        }
        match outcome {
            Outcome::Exited { took, .. } if report.done => report.took = Some(took),
            outcome => {
                let why = match outcome {
                    Outcome::Exited { status, .. } => {
                        format!("qemu exited ({status}) before the guest finished")
                    }
                    Outcome::TimedOut => format!("no poweroff within {}s", GUEST_TIMEOUT.as_secs()),
                    Outcome::NoInit => format!(
                        "twice no /init within {}s: the guest is stuck before the kernel runs",
                        INIT_TIMEOUT.as_secs()
                    ),
                    Outcome::Failed(e) => e,
                };
                let tail: Vec<&str> = text
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                say(&format!(
                    "{}: {why}; end of its console:\n    {}",
                    g.spec.label,
                    tail.join("\n    ")
                ));
                report.infra = Some(why);
            }
        }
        report
    }

    pub(super) fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(why) = &self.infra {
            // Without a report the kernel's result is unknown, whatever is expected of it.
            out.push(format!("{} ({}): {why}", self.spec.label, self.release));
        }
        if self.spec.expect_pass {
            for backend in BACKENDS {
                let problem = self
                    .runs
                    .get(*backend)
                    .map_or(Some("no report from the guest".into()), |r| {
                        r.problem(backend, self.spec.kernel_verdicts)
                    });
                if problem.is_some() {
                    out.push(format!("{} ({}) {backend}", self.spec.label, self.release));
                }
            }
            if let Some(problem) = self.kill9_problem() {
                out.push(format!(
                    "{} ({}) kill -9: {problem}",
                    self.spec.label, self.release
                ));
            }
            for problem in self.doctor_problems() {
                out.push(format!(
                    "{} ({}) doctor: {problem}",
                    self.spec.label, self.release
                ));
            }
            if let Some(problem) = self.inventory_problem() {
                out.push(format!(
                    "{} ({}) inventory: {problem}",
                    self.spec.label, self.release
                ));
            }
            if let Some(problem) = self.audit_problem() {
                out.push(format!(
                    "{} ({}) audit: {problem}",
                    self.spec.label, self.release
                ));
            }
        }
        out
    }

    /// What `droptrace doctor` found that it must not: a program refused or unavailable
    /// that this kernel must run (all but `may_lack`), one over its margins, or no drop
    /// traceable at all.
    pub(super) fn doctor_problems(&self) -> Vec<String> {
        let Some((code, report)) = &self.doctor else {
            return vec!["no report from the guest".into()];
        };
        if report.is_null() {
            return vec![format!("exit {code}, no JSON report")];
        }
        let mut out = Vec::new();
        if report["health"] == "broken" {
            out.push(format!("broken: {}", report["problems"]));
        }
        out.extend(crate::doctor_report::program_problems(
            report,
            self.spec.insn_budget.map(|(n, _)| n),
            |p| {
                let program = p["program"].as_str().unwrap_or("?");
                p["status"] == "loaded"
                    || (p["status"] == "unavailable"
                        && self.spec.may_lack.iter().any(|(m, _)| *m == program))
            },
        ));
        out
    }

    /// Whether `droptrace audit` of live traffic found the dialled payment gateway among
    /// the flows the proposed ruleset would drop (exit 1: some would be).
    pub(super) fn audit_problem(&self) -> Option<String> {
        let Some((code, report)) = &self.audit else {
            return Some("no report from the guest".into());
        };
        if code != "1" {
            return Some(format!(
                "exit {code}, expected 1 (a flow the ruleset would drop)"
            ));
        }
        let found = report["would_drop"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["services"].as_array().cloned().unwrap_or_default())
            .any(|s| s["destination"] == "203.0.113.10:8443" && s["proto"] == "tcp");
        (!found).then(|| "203.0.113.10:8443 is not among the flows it would drop".into())
    }

    /// Whether `droptrace inventory` saw the payment gateway dialled and dropped.
    pub(super) fn inventory_problem(&self) -> Option<String> {
        let Some((code, report)) = &self.inventory else {
            return Some("no report from the guest".into());
        };
        if code != "0" {
            return Some(format!("exit {code}"));
        }
        let found = report["services"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| {
                s["proto"] == "tcp"
                    && s["dst"] == "203.0.113.10"
                    && s["dport"] == 8443
                    && s["dropped"] == true
            });
        (!found).then(|| "the dropped connection to 203.0.113.10:8443 is not listed".into())
    }

    /// Why the `kill -9` check failed, if it did: programs must have been loaded (else the
    /// check proves nothing) and none left after.
    pub(super) fn kill9_problem(&self) -> Option<String> {
        match self.kill9 {
            None => Some("no report from the guest".into()),
            Some((0, _)) => Some("no droptrace program was loaded during the capture".into()),
            Some((_, 0)) => None,
            Some((during, after)) => Some(format!("{after} of {during} programs left behind")),
        }
    }
}

pub(super) fn table(reports: &[Report]) -> String {
    let header = [
        "KERNEL",
        "RELEASE",
        "BACKEND",
        "EXIT",
        "TIME",
        "MODE",
        "DROPS",
        "LOST",
        "HOOKS",
        "DPORTS",
        "VERDICTS",
        "ATTRIBUTION",
        "RESULT",
        "ERROR",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut errors = Vec::new();
    let empty = Run::default();
    for r in reports {
        for backend in BACKENDS {
            let run = r.runs.get(*backend).unwrap_or(&empty);
            let problem = run.problem(backend, r.spec.kernel_verdicts);
            let result = match (&problem, r.spec.expect_pass) {
                (None, true) => "pass",
                (None, false) => "PASS (expected to fail: flip expect_pass)",
                (Some(_), true) => "FAIL",
                (Some(_), false) => "fail (expected)",
            };
            let summary = |f: &str| {
                run.summary
                    .as_ref()
                    .and_then(|s| s[f].as_u64())
                    .map_or("-".into(), |n| n.to_string())
            };
            let error = problem
                .filter(|_| run.exit.is_some() || r.infra.is_none())
                .unwrap_or_default();
            let mut short: String = error.chars().take(ERROR_WIDTH).collect();
            if short.len() < error.len() {
                short.push_str("...");
                errors.push(format!("{} {backend}: {error}", r.spec.label));
            }
            rows.push(vec![
                r.spec.label.into(),
                r.release.clone(),
                (*backend).into(),
                run.exit.clone().unwrap_or_else(|| "-".into()),
                run.took.clone().unwrap_or_else(|| "-".into()),
                run.mode(),
                summary("total"),
                summary("lost"),
                run.field_set("hook"),
                run.field_set("dport"),
                run.verdicts(),
                run.field_set("attribution"),
                result.into(),
                short,
            ]);
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    if !errors.is_empty() {
        out.push_str("errors in full:\n");
        for e in errors {
            let _ = writeln!(out, "  {e}");
        }
    }
    out.push_str(&programs_table(reports));
    for r in reports {
        if let Some((during, after)) = r.kill9 {
            let _ = writeln!(
                out,
                "{} ({}) kill -9 while capturing: {during} droptrace programs loaded, {after} left after",
                r.spec.label, r.release
            );
        }
        if !r.spec.expect_pass {
            let _ = writeln!(
                out,
                "{} is not expected to pass yet: {}",
                r.spec.label, r.spec.why_not
            );
        }
        if let Some(took) = r.took {
            let _ = writeln!(
                out,
                "{} ({}) ran to poweroff in {took:.0?}",
                r.spec.label, r.release
            );
        }
    }
    out
}

/// Each program on each kernel, from `droptrace doctor`: instructions the verifier
/// processed (or why not loaded), with its stack chain, and `inventory`'s result.
pub(super) fn programs_table(reports: &[Report]) -> String {
    let mut programs: Vec<String> = Vec::new();
    for r in reports {
        for p in r
            .doctor
            .iter()
            .flat_map(|(_, d)| d["programs"].as_array().cloned().unwrap_or_default())
        {
            let name = crate::doctor_report::program_name(&p);
            if !programs.contains(&name) {
                programs.push(name);
            }
        }
    }
    let mut out = String::from(
        "\nprograms by kernel (instructions verified; stack of the deepest call chain):\n",
    );
    let _ = write!(out, "  {:<34}", "PROGRAM");
    for r in reports {
        let _ = write!(out, " {:>12}", r.spec.label);
    }
    out.push_str("  STACK\n");
    for name in &programs {
        let _ = write!(out, "  {name:<34}");
        let mut stack = String::new();
        for r in reports {
            let p = r.doctor.as_ref().and_then(|(_, d)| {
                d["programs"]
                    .as_array()?
                    .iter()
                    .find(|p| crate::doctor_report::program_name(p) == *name)
                    .cloned()
            });
            let cell = match &p {
                None => "-".to_string(),
                Some(p) if p["status"] == "loaded" => p["verified_insns"]
                    .as_u64()
                    .map_or("loaded".into(), |n| n.to_string()),
                Some(p) => p["status"].as_str().unwrap_or("?").to_string(),
            };
            if let Some(p) = &p
                && stack.is_empty()
            {
                stack = format!(
                    "{} = {}",
                    crate::doctor_report::stack_chain(p),
                    p["stack"]["combined"]
                );
            }
            let _ = write!(out, " {cell:>12}");
        }
        let _ = writeln!(out, "  {stack}");
    }
    for label in [
        "inventory (dropped 8443 listed)",
        "audit of live traffic (8443)",
    ] {
        let _ = write!(out, "  {label:<34}");
        for r in reports {
            let problem = if label.starts_with("inventory") {
                r.inventory_problem()
            } else {
                r.audit_problem()
            };
            let cell = match problem {
                None => "pass".to_string(),
                Some(_) if !r.spec.expect_pass => "fail (exp.)".to_string(),
                Some(_) => "FAIL".to_string(),
            };
            let _ = write!(out, " {cell:>12}");
        }
        out.push('\n');
    }
    for r in reports {
        for (program, why) in r.spec.may_lack {
            let _ = writeln!(out, "  {} may lack {program}: {why}", r.spec.label);
        }
        if let Some((n, why)) = r.spec.insn_budget {
            let _ = writeln!(out, "  {} instruction budget {n}: {why}", r.spec.label);
        }
        for p in r.doctor_problems() {
            let _ = writeln!(out, "  {} doctor: {p}", r.spec.label);
        }
        if let Some(p) = r.inventory_problem() {
            let _ = writeln!(out, "  {} inventory: {p}", r.spec.label);
        }
        if let Some(p) = r.audit_problem() {
            let _ = writeln!(out, "  {} audit: {p}", r.spec.label);
        }
    }
    out
}
