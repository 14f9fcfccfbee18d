//! Every program droptrace ships, loaded on this kernel the way the commands load it, and
//! its figures against the verifier's limits: what `droptrace doctor` reports and what
//! `cargo xtask test` holds to margins.
//!
//! Each object is loaded through the same code the commands use ([`Capture::start`],
//! [`InventoryCapture::start`]) with the same configuration, so the verifier sees what it
//! would see in `watch` or `inventory`; the captures are dropped at once, which detaches and
//! unloads everything (no pinning: nothing outlives this).

use serde::Serialize;

use crate::kernel::{
    btf::KernelBtf,
    capture::{AttachMode, Capture, CaptureOptions, Detect, VerdictMode, shipped_objects},
    event_source::BufferKind,
    filter::Filters,
    inventory::InventoryCapture,
    stack_depth::{self, INSN_BUDGET, STACK_BUDGET, StackFigures},
};

/// What a program is for, by its name in the objects.
fn feature(program: &str) -> &'static str {
    match program {
        "kfree_skb" => "drops (watch, top, verify, serve), tp_btf path",
        "kfree_skb_tp" => "drops (watch, top, verify, serve), classic tracepoint path",
        "nft_do_chain_entry" | "xt_do_table_entry" | "do_table_return" => {
            "the engines' own verdicts (kprobes)"
        }
        "inventory_tcp" | "inventory_route4" | "inventory_route6" | "inventory_send" => {
            "inventory, --attempts, audit of live traffic"
        }
        "attempt_passed" => "--attempts (first packets that got through)",
        _ => "unknown",
    }
}

/// Whether a program's failure costs droptrace its drops (both drop paths gone) or only a
/// feature.
fn essential(program: &str) -> bool {
    matches!(program, "kfree_skb" | "kfree_skb_tp")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Loaded and attached.
    Loaded,
    /// The kernel refused it (or its attachment).
    Refused,
    /// Not tried: this kernel cannot run it (no kprobes, no module BTF).
    Unavailable,
    /// Not tried: the feature stopped at another of its programs, refused before it.
    NotTried,
}

/// One program on this kernel.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramCheck {
    /// The object it is in (`droptrace`: ring buffer; `droptrace-perf`: perf buffers).
    pub object: &'static str,
    pub program: String,
    pub feature: &'static str,
    pub status: Status,
    /// Why it was refused or not tried, in one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Instructions the verifier processed (`verified_insns`, Linux 5.16+), or what it
    /// printed when it refused the program.
    pub verified_insns: Option<u32>,
    /// The deepest call chain's stack, from the object (see [`stack_depth`]).
    pub stack: Option<StackFigures>,
    /// The verifier's stack frames as it printed them when it refused the program.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verifier_stack: Option<Vec<u32>>,
}

impl ProgramCheck {
    /// Over our margins (a quarter of each verifier limit kept free): a figure the next
    /// compiler or kernel may push past the limit.
    pub fn over_margin(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(s) = &self.stack
            && s.combined > STACK_BUDGET
        {
            out.push(format!(
                "{}/{}: stack {} over {STACK_BUDGET}",
                self.object,
                self.program,
                s.describe()
            ));
        }
        if let Some(n) = self.verified_insns
            && n > INSN_BUDGET
        {
            out.push(format!(
                "{}/{}: {n} instructions verified, over {INSN_BUDGET}",
                self.object, self.program
            ));
        }
        out
    }
}

/// What loading everything found.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramsReport {
    pub programs: Vec<ProgramCheck>,
    /// What `watch` attaches on this kernel, and why not the better path when it cannot.
    pub attach_path: Option<String>,
    pub attach_why: Vec<String>,
}

impl ProgramsReport {
    /// Whether any drop can be traced: a drop program loaded in either object.
    pub fn drops_traceable(&self) -> bool {
        self.programs
            .iter()
            .any(|p| essential(&p.program) && p.status == Status::Loaded)
    }
}

/// One attempt at loading, and what it loaded or why it failed.
struct Attempt {
    loaded: Vec<(String, Option<u32>)>,
    error: Option<String>,
    /// Programs the attempt could not run on this kernel, with why (verdict probes).
    unavailable: Option<String>,
    /// What the attempt went on without, each naming the program (the inventory's
    /// datagram programs are optional to it).
    notes: Vec<String>,
}

fn attempt(result: Result<Attempt, String>) -> Attempt {
    result.unwrap_or_else(|e| Attempt {
        loaded: Vec::new(),
        error: Some(e),
        unavailable: None,
        notes: Vec::new(),
    })
}

/// Loads every program of every shipped object. Needs a tokio runtime (the captures'
/// buffers register with it) and the privileges loading needs.
pub fn check_all(kernel: &KernelBtf, netfilter_ranges: &[(u64, u64)]) -> ProgramsReport {
    let btf = aya::Btf::from_sys_fs().ok();
    let capture = |attach: AttachMode, buffer: BufferKind| -> Attempt {
        let opts = CaptureOptions {
            filters: Filters::default(),
            attach,
            detect: Detect::Auto,
            netfilter_ranges: netfilter_ranges.to_vec(),
            verdicts: VerdictMode::Auto,
            buffer,
            btf: btf.clone(),
            // The verifier does not care how many flows; the kernel's memory does.
            flow_table: Some(1024),
            ..CaptureOptions::default()
        };
        attempt(
            Capture::start(kernel, &opts)
                .map(|c| Attempt {
                    loaded: c.programs_loaded(),
                    unavailable: c
                        .verdicts
                        .strip_prefix("off (")
                        .map(|w| w.strip_suffix(')').unwrap_or(w).to_string()),
                    error: None,
                    notes: Vec::new(),
                })
                .map_err(|e| e.to_string()),
        )
    };
    let ring_btf = capture(AttachMode::TpBtf, BufferKind::Ringbuf);
    let ring_tp = capture(AttachMode::Tracepoint, BufferKind::Ringbuf);
    let perf_btf = capture(AttachMode::TpBtf, BufferKind::Perf);
    let perf_tp = capture(AttachMode::Tracepoint, BufferKind::Perf);
    let inventory_capture = |passed: bool| {
        attempt(
            InventoryCapture::start(kernel, &Filters::default(), passed)
                .map(|c| Attempt {
                    loaded: c.programs_loaded(),
                    error: None,
                    unavailable: None,
                    notes: c.blind_spots.clone(),
                })
                .map_err(|e| format!("{e:#}")),
        )
    };
    let inventory = inventory_capture(false);
    let passed = inventory_capture(true);

    let mut programs = Vec::new();
    for (object, bytes) in shipped_objects() {
        let stacks = stack_depth::of_object(bytes).unwrap_or_default();
        for (program, stack) in stacks {
            // The attempts that load this program, best first.
            let tries: Vec<&Attempt> = match (object, program.as_str()) {
                ("droptrace", "kfree_skb") => vec![&ring_btf],
                ("droptrace", "kfree_skb_tp") => vec![&ring_tp],
                ("droptrace-perf", "kfree_skb") => vec![&perf_btf],
                ("droptrace-perf", "kfree_skb_tp") => vec![&perf_tp],
                ("droptrace", "attempt_passed") => vec![&passed],
                ("droptrace", p) if p.starts_with("inventory_") => vec![&inventory, &passed],
                ("droptrace", _) => vec![&ring_btf, &ring_tp],
                (_, _) => vec![&perf_btf, &perf_tp],
            };
            programs.push(judge(object, program, stack, &tries));
        }
    }
    let mut attach_why = Vec::new();
    let attach_path = match (
        &ring_btf.error,
        &ring_tp.error,
        &perf_btf.error,
        &perf_tp.error,
    ) {
        (None, _, _, _) => Some("tp_btf/kfree_skb, ring buffer".to_string()),
        (Some(e), None, _, _) => {
            attach_why.push(format!("tp_btf: {e}"));
            Some("tracepoint/skb/kfree_skb, ring buffer".to_string())
        }
        (Some(a), Some(b), pb, pt) => {
            attach_why.push(format!("tp_btf: {a}"));
            attach_why.push(format!("tracepoint: {b}"));
            match (pb, pt) {
                (None, _) => Some("tp_btf/kfree_skb, perf buffers".to_string()),
                (Some(_), None) => Some("tracepoint/skb/kfree_skb, perf buffers".to_string()),
                (Some(c), Some(d)) => {
                    attach_why.push(format!("perf buffers: {c}; {d}"));
                    None
                }
            }
        }
    };
    ProgramsReport {
        programs,
        attach_path,
        attach_why,
    }
}

/// The program's status from the attempts that load it: loaded in one of them, else
/// unavailable (the attempt worked and said this kernel cannot run it), else refused with
/// the first attempt's error.
fn judge(
    object: &'static str,
    program: String,
    stack: StackFigures,
    tries: &[&Attempt],
) -> ProgramCheck {
    let mut check = ProgramCheck {
        object,
        feature: feature(&program),
        status: Status::Refused,
        why: None,
        verified_insns: None,
        stack: Some(stack),
        verifier_stack: None,
        program,
    };
    if let Some(insns) = tries
        .iter()
        .find_map(|t| t.loaded.iter().find(|(n, _)| *n == check.program))
    {
        check.status = Status::Loaded;
        check.verified_insns = insns.1;
        return check;
    }
    if let Some(why) = tries
        .iter()
        .find(|t| t.error.is_none())
        .and_then(|t| t.unavailable.clone())
    {
        check.status = Status::Unavailable;
        check.why = Some(why);
        return check;
    }
    let error = tries
        .iter()
        .find_map(|t| t.error.clone())
        .or_else(|| {
            tries
                .iter()
                .flat_map(|t| &t.notes)
                .find(|n| n.contains(check.program.as_str()))
                .cloned()
        })
        .unwrap_or_else(|| "not loaded by the command that uses it on this kernel".to_string());
    // A tracepoint this kernel does not have (aya finds no `btf_trace_NAME` in its BTF):
    // nothing to refuse, the kernel is older than the hook (sock_send_length: 6.3).
    if let Some(rest) = error.split("unknown BTF type `btf_trace_").nth(1) {
        let tracepoint = rest.split('`').next().unwrap_or(rest);
        check.status = Status::Unavailable;
        check.why = Some(format!("this kernel has no {tracepoint} tracepoint"));
        return check;
    }
    // A drop path's error is its program's own; another feature's error is this
    // program's only when it names it (the feature stops at the first refusal).
    let names_it = error
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|w| w == check.program);
    if !essential(&check.program) && !names_it {
        check.status = Status::NotTried;
        check.why = Some(format!("not tried: {}", one_line(&error)));
        return check;
    }
    // The verifier's own figures, from the log lines the error carries (" | "-joined).
    let (stack, processed) = stack_depth::from_verifier_log(&error.replace(" | ", "\n"));
    check.verifier_stack = stack;
    check.verified_insns = processed;
    check.why = Some(one_line(&error));
    check
}

/// The first sentence that says why, short enough for a terminal line.
fn one_line(error: &str) -> String {
    let first = error.split(" | ").take(2).collect::<Vec<_>>().join(" | ");
    if first.chars().count() > 300 {
        let cut: String = first.chars().take(297).collect();
        format!("{cut}...")
    } else {
        first
    }
}
