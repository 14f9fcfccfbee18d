//! `droptrace doctor`: what works on this host, and why not.
//!
//! The first thing to run on a host droptrace has never seen: the kernel and its BTF, the
//! path drops are attached through, every program loaded on this kernel with the verifier's
//! figures (a program refused is named with the verifier's reason), the capabilities held
//! and what each missing one costs, the tools attribution runs, the firewall backends in
//! the namespaces asked about, and the toolchain that built the programs. Exit 0 when
//! everything works, 1 when something is degraded (it says what is lost), 2 when no drop
//! can be traced. It loads and unloads each program and leaves nothing behind.
//!
//! Collection and display are apart: [`render`] takes a [`Report`] and is tested with
//! fabricated ones.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use caps::{CapSet, Capability};
use clap::Args;
use serde::Serialize;

use crate::{
    enrich::netns::NetnsSelector,
    escape::terminal,
    kernel::{
        btf::{KernelBtf, VMLINUX_BTF},
        kallsyms,
        program_check::{self, ProgramCheck, ProgramsReport, Status},
        stack_depth::{INSN_BUDGET, STACK_BUDGET, VERIFIER_INSN_LIMIT, VERIFIER_STACK_LIMIT},
    },
    tools::{InNetns, find_program, on_thread_in},
};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also report the firewall backends in this network namespace (a name under
    /// /run/netns, `host`, or a path); repeatable. Default: droptrace's own.
    #[arg(long, value_name = "NAME")]
    pub netns: Vec<String>,
    /// One JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Ok,
    /// Something is lost (a feature, rule names, process names); drops are still traced.
    Degraded,
    /// No drop can be traced.
    Broken,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub health: Health,
    /// What is lost, most serious first: one line each.
    pub problems: Vec<String>,
    pub droptrace: String,
    /// What built the eBPF programs (rustc, its LLVM, bpf-linker and its LLVM).
    pub ebpf_toolchain: String,
    pub kernel: KernelReport,
    pub capabilities: Vec<CapabilityReport>,
    /// What `watch` attaches through here (`None`: nothing).
    pub attach_path: Option<String>,
    /// Why a better path was not taken.
    pub attach_why: Vec<String>,
    pub programs: Vec<ProgramCheck>,
    pub limits: Limits,
    pub tools: Vec<ToolReport>,
    pub namespaces: Vec<NamespaceReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelReport {
    pub release: String,
    /// `/sys/kernel/btf/vmlinux` parsed (offsets of the kernel's structs), or why not.
    pub btf: Result<(), String>,
    /// Netfilter modules with BTF of their own (their structs, for the verdict probes).
    pub module_btf: Vec<String>,
    /// Whether the kfree_skb tracepoint carries a drop reason (5.17+).
    pub drop_reasons: bool,
    /// `SKB_DROP_REASON_NETFILTER_DROP` on this kernel.
    pub netfilter_drop_reason: Option<u32>,
    /// /proc/kallsyms shows addresses: hooks are named from the drop's stack.
    pub kallsyms_addresses: bool,
    /// `/sys/kernel/security/lockdown`, when it forbids what the programs do.
    pub lockdown: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CapabilityReport {
    pub name: String,
    pub present: bool,
    /// What droptrace does with it.
    pub used_for: &'static str,
    /// What its absence costs here (`None` when present or not needed on this host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_costs: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub stack_limit: u32,
    pub stack_budget: u32,
    pub insn_limit: u32,
    pub insn_budget: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolReport {
    pub name: &'static str,
    pub used_for: &'static str,
    pub path: Option<PathBuf>,
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NamespaceReport {
    pub netns: String,
    /// nf_tables tables (`family name`): iptables-nft's and native nftables alike.
    pub nftables_tables: Vec<String>,
    /// Legacy xtables tables (`ip filter`, `ip6 nat`, ...).
    pub legacy_tables: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub async fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let report = collect(&args);
    let mut out = String::new();
    if args.json {
        out = serde_json::to_string_pretty(&report)?;
        out.push('\n');
    } else {
        render(&report, &mut out);
    }
    print!("{out}");
    Ok(ExitCode::from(match report.health {
        Health::Ok => 0,
        Health::Degraded => 1,
        Health::Broken => 2,
    }))
}

fn collect(args: &DoctorArgs) -> Report {
    let mut problems: Vec<(Health, String)> = Vec::new();
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let kernel = KernelBtf::load();
    let kallsyms_addresses = kallsyms_shows_addresses();
    let lockdown = crate::kernel::privileges::lockdown_forbidding_bpf_reads();
    let kernel_report = KernelReport {
        release,
        btf: kernel.as_ref().map(|_| ()).map_err(|e| e.to_string()),
        module_btf: module_btf(),
        drop_reasons: kernel.as_ref().is_ok_and(|k| k.tracepoint_has_reason),
        netfilter_drop_reason: kernel
            .as_ref()
            .ok()
            .and_then(|k| k.reason_value("NETFILTER_DROP")),
        kallsyms_addresses,
        lockdown: lockdown.clone(),
    };
    if let Err(e) = &kernel {
        problems.push((
            Health::Broken,
            format!("no kernel BTF at {VMLINUX_BTF}: {e}"),
        ));
    }
    if let Some(mode) = &lockdown {
        problems.push((
            Health::Broken,
            format!("kernel lockdown ({mode}) forbids the programs' reads of kernel memory"),
        ));
    }
    if !kallsyms_addresses {
        problems.push((
            Health::Degraded,
            "/proc/kallsyms shows no addresses (kptr_restrict; CAP_SYSLOG is missing): the \
             hook of each drop is unknown and every rule is `inferred`"
                .into(),
        ));
    }
    let capabilities = capabilities(
        release_is_before(&kernel_report.release, (5, 11)),
        kallsyms_addresses,
    );
    for c in &capabilities {
        if let Some(cost) = &c.missing_costs {
            let health = if matches!(c.name.as_str(), "CAP_BPF" | "CAP_PERFMON") {
                Health::Broken
            } else {
                Health::Degraded
            };
            problems.push((health, format!("{} missing: {cost}", c.name)));
        }
    }

    let programs = match (&kernel, crate::kernel::privileges::missing_for_load()) {
        (Ok(k), None) => {
            let ranges = if k.tracepoint_has_reason {
                Vec::new()
            } else {
                let symbols = kallsyms::Kallsyms::load().unwrap_or_default();
                ["nf_hook_slow", "nf_hook_slow_list", "nft_do_chain"]
                    .iter()
                    .filter_map(|f| symbols.range(f))
                    .collect()
            };
            program_check::check_all(k, &ranges)
        }
        (_, missing) => {
            let why = match missing {
                Some(m) => format!("not loaded: missing capabilities {m}"),
                None => "not loaded: no kernel BTF".into(),
            };
            ProgramsReport {
                programs: Vec::new(),
                attach_path: None,
                attach_why: vec![why],
            }
        }
    };
    if !programs.drops_traceable() {
        problems.push((
            Health::Broken,
            format!("no drop program loads: {}", programs.attach_why.join("; ")),
        ));
    }
    for p in &programs.programs {
        if p.status == Status::Refused {
            problems.push((
                Health::Degraded,
                format!(
                    "{}/{} refused ({}): {}",
                    p.object,
                    p.program,
                    p.feature,
                    p.why.as_deref().unwrap_or("")
                ),
            ));
        }
        for over in p.over_margin() {
            problems.push((
                Health::Degraded,
                format!("near the verifier's limit: {over}"),
            ));
        }
    }

    let tools = tools();
    for t in &tools {
        if t.path.is_none() {
            problems.push((
                Health::Degraded,
                format!("{} not installed: {}", t.name, t.used_for),
            ));
        }
    }
    let namespaces = if args.netns.is_empty() {
        vec![namespace("own".to_string(), None)]
    } else {
        args.netns
            .iter()
            .map(|n| namespace(n.clone(), NetnsSelector::parse(n).path()))
            .collect()
    };
    for n in &namespaces {
        if let Some(e) = &n.error {
            problems.push((Health::Degraded, format!("netns {}: {e}", n.netns)));
        }
    }

    problems.sort_by_key(|p| std::cmp::Reverse(p.0));
    let health = problems.first().map_or(Health::Ok, |p| p.0);
    Report {
        health,
        problems: problems.into_iter().map(|p| p.1).collect(),
        droptrace: env!("DROPTRACE_LONG_VERSION").to_string(),
        ebpf_toolchain: env!("DROPTRACE_EBPF_TOOLCHAIN").to_string(),
        kernel: kernel_report,
        capabilities,
        attach_path: programs.attach_path,
        attach_why: programs.attach_why,
        programs: programs.programs,
        limits: Limits {
            stack_limit: VERIFIER_STACK_LIMIT,
            stack_budget: STACK_BUDGET,
            insn_limit: VERIFIER_INSN_LIMIT,
            insn_budget: INSN_BUDGET,
        },
        tools,
        namespaces,
    }
}

/// Whether `release` ("5.10.0-33-cloud-amd64") is older than `major.minor`.
fn release_is_before(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) < (major, minor),
        _ => false,
    }
}

/// Whether /proc/kallsyms gives real addresses to this process (kptr_restrict shows zeros
/// without CAP_SYSLOG).
fn kallsyms_shows_addresses() -> bool {
    use std::io::BufRead as _;
    let Ok(f) = std::fs::File::open("/proc/kallsyms") else {
        return false;
    };
    std::io::BufReader::new(f)
        .lines()
        .take(64)
        .map_while(Result::ok)
        .any(|l| {
            l.split_whitespace()
                .next()
                .and_then(|a| u64::from_str_radix(a, 16).ok())
                .is_some_and(|a| a != 0)
        })
}

/// Netfilter modules with BTF of their own in /sys/kernel/btf.
fn module_btf() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/sys/kernel/btf")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("nf_") || n.contains("_tables") || n.starts_with("xt_"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// (capability, what for, whether its absence costs anything on this host).
/// `kallsyms_open`: /proc/kallsyms already shows addresses (CAP_SYSLOG then costs nothing).
fn capabilities(before_5_11: bool, kallsyms_open: bool) -> Vec<CapabilityReport> {
    let has = |c: Capability| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
    let sys_admin = has(Capability::CAP_SYS_ADMIN);
    let list: [(Capability, &'static str, Option<&'static str>); 8] = [
        (
            Capability::CAP_BPF,
            "load the eBPF programs, read their maps",
            (!sys_admin).then_some("no program loads: nothing can be traced"),
        ),
        (
            Capability::CAP_PERFMON,
            "attach tracing programs",
            (!sys_admin).then_some("no program attaches: nothing can be traced"),
        ),
        (
            Capability::CAP_NET_ADMIN,
            "read the rulesets (iptables-save, nft, ipset)",
            Some("rules are not read: every drop's rule is unknown"),
        ),
        (
            Capability::CAP_SYS_ADMIN,
            "enter other namespaces (setns): their rulesets, probes",
            Some("drops in other namespaces get no rule; --netns NAME and probes fail"),
        ),
        (
            Capability::CAP_SYS_PTRACE,
            "name other users' processes and sockets (/proc/PID/fd)",
            Some("senders of other users are unnamed"),
        ),
        (
            Capability::CAP_DAC_READ_SEARCH,
            "read other processes' /proc entries",
            Some("senders of other users are unnamed"),
        ),
        (
            Capability::CAP_SYSLOG,
            "read /proc/kallsyms addresses: each drop's hook, from its stack",
            (!kallsyms_open).then_some("hooks are unknown: every rule is `inferred`"),
        ),
        (
            Capability::CAP_SYS_RESOURCE,
            "raise RLIMIT_MEMLOCK (BPF maps on kernels before 5.11)",
            before_5_11.then_some("maps may fail to be created on this kernel (memlock)"),
        ),
    ];
    list.into_iter()
        .map(|(c, used_for, cost)| {
            let present = has(c);
            CapabilityReport {
                name: c.to_string(),
                present,
                used_for,
                missing_costs: (!present).then_some(cost).flatten().map(str::to_string),
            }
        })
        .collect()
}

/// The tools attribution runs, with their versions.
fn tools() -> Vec<ToolReport> {
    let list: [(&'static str, &'static [&'static str], &'static str); 6] = [
        (
            "iptables-nft-save",
            &["--version"],
            "iptables rules in nf_tables (iptables-nft): their rules named",
        ),
        (
            "iptables-legacy-save",
            &["--version"],
            "legacy iptables rules: their rules named",
        ),
        ("nft", &["--version"], "native nftables rules named"),
        (
            "ipset",
            &["version"],
            "-m set rules evaluated with their members",
        ),
        ("ip", &["-V"], "network namespaces by name, routes"),
        (
            "conntrack",
            &["--version"],
            "none (the tests use it); optional",
        ),
    ];
    list.into_iter()
        .filter(|(name, _, _)| *name != "conntrack")
        .map(|(name, args, used_for)| {
            let path = find_program(name);
            let version = path.as_ref().and_then(|p| {
                let out = std::process::Command::new(p).args(args).output().ok()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                text.lines().next().map(|l| l.trim().to_string())
            });
            ToolReport {
                name,
                used_for,
                path,
                version,
            }
        })
        .collect()
}

/// The firewall backends in a namespace (`path` None: our own).
fn namespace(label: String, path: Option<PathBuf>) -> NamespaceReport {
    let mut report = NamespaceReport {
        netns: label,
        nftables_tables: Vec::new(),
        legacy_tables: Vec::new(),
        error: None,
    };
    if let Some(p) = &path
        && let Err(e) = check_netns_file(p)
    {
        report.error = Some(e);
        return report;
    }
    let legacy = on_thread_in(path.as_deref(), || {
        let mut tables = Vec::new();
        for (file, family) in [("ip_tables_names", "ip"), ("ip6_tables_names", "ip6")] {
            if let Ok(names) = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")) {
                tables.extend(names.lines().map(|n| format!("{family} {n}")));
            }
        }
        Ok(tables)
    });
    match legacy {
        Ok(t) => report.legacy_tables = t,
        Err(e) => report.error = Some(format!("cannot enter it: {e}")),
    }
    match InNetns::new("nft", &["list", "tables"], path.as_deref()).map(InNetns::output) {
        Ok(Ok(out)) if out.status.success() => {
            report.nftables_tables = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.trim().strip_prefix("table "))
                .map(str::to_string)
                .collect();
        }
        Ok(Ok(out)) => {
            report.error = Some(format!(
                "nft list tables: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Ok(Err(e)) => report.error = Some(format!("nft list tables: {e}")),
        Err(e) => report.error = Some(e.to_string()),
    }
    report
}

/// A namespace file must be one (nsfs), not any file.
fn check_netns_file(p: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
    // NSFS_MAGIC: /proc/PID/ns/net and its bind mounts live on nsfs.
    let fs = nix::sys::statfs::statfs(p).map_err(|e| format!("{}: {e}", p.display()))?;
    if fs.filesystem_type().0 as u64 != 0x6e73_6673 || meta.is_dir() {
        return Err(format!("{} is not a network namespace", p.display()));
    }
    Ok(())
}

/// The report as text, at most 100 columns but for what the system says.
pub fn render(r: &Report, out: &mut String) {
    let verdict = match r.health {
        Health::Ok => "OK: everything droptrace needs works on this host",
        Health::Degraded => "DEGRADED: drops are traced, but something is lost (below)",
        Health::Broken => "BROKEN: droptrace cannot trace drops on this host",
    };
    let _ = writeln!(out, "{verdict}");
    for p in &r.problems {
        let _ = writeln!(out, "  - {}", terminal(p));
    }
    // The version without the toolchain, which has a line of its own at the end.
    let version = match r.droptrace.split_once(", built by") {
        Some((head, _)) => format!("{head})"),
        None => r.droptrace.clone(),
    };
    let _ = writeln!(out, "\ndroptrace {}", terminal(&version));
    let k = &r.kernel;
    let _ = writeln!(out, "\nkernel {}", terminal(&k.release));
    let _ = writeln!(
        out,
        "  BTF          {}",
        match &k.btf {
            Ok(()) => VMLINUX_BTF.to_string(),
            Err(e) => format!("unusable: {}", terminal(e)),
        }
    );
    let _ = writeln!(
        out,
        "  module BTF   {}",
        if k.module_btf.is_empty() {
            "none (netfilter built in, or modules not loaded)".to_string()
        } else {
            k.module_btf.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "  drop reasons {}",
        match (k.drop_reasons, k.netfilter_drop_reason) {
            (true, Some(v)) => format!("yes (NETFILTER_DROP = {v})"),
            (true, None) => "yes, but no NETFILTER_DROP".to_string(),
            (false, _) => "no (before 5.17): drops recognised by location".to_string(),
        }
    );
    let _ = writeln!(
        out,
        "  kallsyms     {}",
        if k.kallsyms_addresses {
            "addresses readable"
        } else {
            "addresses hidden (kptr_restrict): hooks unknown"
        }
    );
    let _ = writeln!(
        out,
        "  attach       {}",
        r.attach_path.as_deref().unwrap_or("nothing attaches")
    );
    for why in &r.attach_why {
        let _ = writeln!(out, "               not better because {}", terminal(why));
    }
    let _ = writeln!(
        out,
        "\nprograms (verifier limits: {} B of stack per call chain, {} instructions; \
         ours: {} B, {})",
        r.limits.stack_limit, r.limits.insn_limit, r.limits.stack_budget, r.limits.insn_budget
    );
    let _ = writeln!(
        out,
        "  {:<15} {:<19} {:<11} {:>9} {:<22}",
        "OBJECT", "PROGRAM", "STATUS", "VERIFIED", "STACK (chain = total)"
    );
    for p in &r.programs {
        let status = match p.status {
            Status::Loaded => "loaded",
            Status::Refused => "REFUSED",
            Status::Unavailable => "unavailable",
            Status::NotTried => "not tried",
        };
        let insns = p
            .verified_insns
            .map_or_else(|| "-".to_string(), |n| n.to_string());
        let stack = p
            .stack
            .as_ref()
            .map_or_else(|| "-".into(), |s| s.describe());
        let _ = writeln!(
            out,
            "  {:<15} {:<19} {:<11} {:>9} {}",
            p.object, p.program, status, insns, stack
        );
        if let Some(why) = &p.why {
            let _ = writeln!(out, "      {}", terminal(why));
        }
    }
    let _ = writeln!(out, "\ncapabilities");
    for c in &r.capabilities {
        let mark = if c.present { "yes" } else { "NO " };
        let _ = writeln!(out, "  {mark} {:<20} {}", c.name, c.used_for);
        if let Some(cost) = &c.missing_costs {
            let _ = writeln!(out, "      missing: {cost}");
        }
    }
    let _ = writeln!(out, "\ntools attribution runs");
    for t in &r.tools {
        match (&t.path, &t.version) {
            (Some(p), v) => {
                let _ = writeln!(
                    out,
                    "  {:<21} {} ({})",
                    t.name,
                    terminal(v.as_deref().unwrap_or("version unknown")),
                    p.display()
                );
            }
            (None, _) => {
                let _ = writeln!(out, "  {:<21} MISSING: {}", t.name, t.used_for);
            }
        }
    }
    for n in &r.namespaces {
        let _ = writeln!(out, "\nfirewall in netns {}", terminal(&n.netns));
        if let Some(e) = &n.error {
            let _ = writeln!(out, "  {}", terminal(e));
        }
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                terminal(&v.join(", ")).into_owned()
            }
        };
        let _ = writeln!(out, "  nf_tables tables  {}", list(&n.nftables_tables));
        let _ = writeln!(out, "  legacy tables     {}", list(&n.legacy_tables));
    }
    let _ = writeln!(out, "\neBPF programs built by");
    for part in r.ebpf_toolchain.split(", ") {
        let _ = writeln!(out, "  {}", terminal(part));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::stack_depth::StackFigures;

    fn report() -> Report {
        Report {
            health: Health::Degraded,
            problems: vec!["droptrace/inventory_tcp refused (inventory): Permission denied".into()],
            droptrace: "0.1.0 (test)".into(),
            ebpf_toolchain: "rustc 1.98 LLVM 22".into(),
            kernel: KernelReport {
                release: "6.18.44".into(),
                btf: Ok(()),
                module_btf: vec![],
                drop_reasons: true,
                netfilter_drop_reason: Some(12),
                kallsyms_addresses: true,
                lockdown: None,
            },
            capabilities: vec![CapabilityReport {
                name: "CAP_SYSLOG".into(),
                present: false,
                used_for: "read /proc/kallsyms addresses",
                missing_costs: Some("hooks are unknown".into()),
            }],
            attach_path: Some("tp_btf/kfree_skb, ring buffer".into()),
            attach_why: vec![],
            programs: vec![ProgramCheck {
                object: "droptrace",
                program: "inventory_tcp".into(),
                feature: "inventory",
                status: Status::Refused,
                why: Some("combined stack size of 2 calls is 528. Too large".into()),
                verified_insns: Some(3894),
                stack: Some(StackFigures {
                    chain: vec![176, 344],
                    combined: 528,
                    instructions: 400,
                }),
                verifier_stack: Some(vec![176, 0, 344]),
            }],
            limits: Limits {
                stack_limit: 512,
                stack_budget: 384,
                insn_limit: 1_000_000,
                insn_budget: 250_000,
            },
            tools: vec![ToolReport {
                name: "ipset",
                used_for: "-m set rules",
                path: None,
                version: None,
            }],
            namespaces: vec![NamespaceReport {
                netns: "own".into(),
                nftables_tables: vec!["ip filter".into()],
                legacy_tables: vec![],
                error: None,
            }],
        }
    }

    #[test]
    fn the_text_names_the_refused_program_its_reason_and_figures() {
        let mut out = String::new();
        render(&report(), &mut out);
        assert!(out.starts_with("DEGRADED"), "{out}");
        assert!(out.contains("inventory_tcp       REFUSED"), "{out}");
        assert!(out.contains("3894 176+344 = 528 bytes"), "{out}");
        assert!(out.contains("combined stack size"), "{out}");
        assert!(out.contains("NO  CAP_SYSLOG"), "{out}");
        assert!(out.contains("ipset                 MISSING"), "{out}");
        assert!(out.contains("nf_tables tables  ip filter"), "{out}");
        for line in out.lines() {
            assert!(line.chars().count() <= 100, "over 100 columns: {line}");
        }
    }

    #[test]
    fn releases_compare_by_major_and_minor() {
        assert!(release_is_before("5.10.0-33-cloud-amd64", (5, 11)));
        assert!(!release_is_before("6.18.44-fc-v1300", (5, 11)));
        assert!(!release_is_before("garbage", (5, 11)));
    }
}
