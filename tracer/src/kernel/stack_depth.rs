//! How much of the verifier's 512-byte stack each program needs along its deepest chain of
//! BPF-to-BPF calls, read from the compiled object's instructions.
//!
//! The verifier refuses a program whose call chain needs more than `MAX_BPF_STACK` (512)
//! bytes, each frame rounded up to 16 bytes when the program is JIT-compiled
//! (`check_max_stack_depth` and `round_up_stack_depth` in kernel/bpf/verifier.c). How much
//! a frame takes is LLVM's choice, and a newer LLVM can take more: a fresh machine built an
//! `inventory_tcp` of 176 + 344 bytes that the verifier refused, from the same source an
//! older install had built small enough. So the figures are measured on the object that
//! ships, before any kernel sees it: `cargo xtask test` fails when a chain crosses
//! [`STACK_BUDGET`], and `droptrace doctor` prints them.
//!
//! A frame's depth is the deepest stack offset its instructions reach through the frame
//! pointer (r10) or a register derived from it by constant moves and adds, which is how
//! LLVM addresses the stack. That bounds what the verifier counts from above: the verifier
//! counts only the paths it explores, and removes code the loader's read-only settings make
//! dead, so these are the worst case over every setting.

use aya_obj::generated::bpf_insn;

/// The verifier's limit on one call chain's stack (`MAX_BPF_STACK`, include/linux/filter.h).
pub const VERIFIER_STACK_LIMIT: u32 = 512;

/// What we allow ourselves: a quarter of the limit stays free for the next compiler.
pub const STACK_BUDGET: u32 = 384;

/// The verifier's budget of instructions processed per program
/// (`BPF_COMPLEXITY_LIMIT_INSNS`, include/linux/bpf.h).
pub const VERIFIER_INSN_LIMIT: u32 = 1_000_000;

/// What we allow ourselves: a quarter of the budget (kernels before 5.2 allowed 131,072,
/// and a verifier that explores a little differently can take several times as many).
pub const INSN_BUDGET: u32 = 250_000;

/// One program's stack figures.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StackFigures {
    /// The frames of the deepest chain, from the program's entry, in bytes (unrounded, as
    /// the verifier prints them in "stack depth 176+344").
    pub chain: Vec<u32>,
    /// The chain's total as the verifier adds it (each frame rounded up to 16 bytes).
    pub combined: u32,
    /// Instructions in the program with the functions it calls.
    pub instructions: usize,
}

impl StackFigures {
    /// "176+344 = 528 bytes".
    pub fn describe(&self) -> String {
        let frames: Vec<String> = self.chain.iter().map(u32::to_string).collect();
        format!("{} = {} bytes", frames.join("+"), self.combined)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("cannot parse the eBPF object: {0}")]
    Parse(String),
    #[error("cannot link the calls of the eBPF object: {0}")]
    Link(String),
    #[error("no program {0} in the eBPF object")]
    NoProgram(String),
    #[error("program {0}: a call leaves the program (instruction {1})")]
    BadCall(String, usize),
}

/// The stack figures of every program in `object`, by program name.
pub fn of_object(object: &[u8]) -> Result<Vec<(String, StackFigures)>, StackError> {
    let mut obj = aya_obj::Object::parse(object).map_err(|e| StackError::Parse(error_chain(&e)))?;
    let text_sections = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_calls(&text_sections)
        .map_err(|e| StackError::Link(error_chain(&e)))?;
    let mut out = Vec::new();
    let mut names: Vec<&String> = obj.programs.keys().collect();
    names.sort();
    for name in names {
        let program = &obj.programs[name];
        let function = obj
            .functions
            .get(&program.function_key())
            .ok_or_else(|| StackError::NoProgram(name.clone()))?;
        let figures = of_instructions(&function.instructions)
            .map_err(|at| StackError::BadCall(name.clone(), at))?;
        out.push((name.clone(), figures));
    }
    Ok(out)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    crate::kernel::program::error_chain(e)
}

const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_ALU: u8 = 0x04;
const CLASS_JMP: u8 = 0x05;
const CLASS_JMP32: u8 = 0x06;
const CLASS_ALU64: u8 = 0x07;
const OP_ADD: u8 = 0x00;
const OP_SUB: u8 = 0x10;
const OP_MOV: u8 = 0xb0;
const SRC_X: u8 = 0x08;
const LD_IMM64: u8 = 0x18;
const JMP_CALL: u8 = 0x85;
const JMP_EXIT: u8 = 0x95;
const JMP_JA: u8 = 0x05;
const PSEUDO_CALL: u8 = 1;
const FRAME_POINTER: usize = 10;

/// The figures of one linked program: its entry at instruction 0, the functions it calls
/// appended after it, reached by pseudo calls (`imm` = target - (call + 1)). Errs with the
/// index of a call whose target lies outside.
pub fn of_instructions(insns: &[bpf_insn]) -> Result<StackFigures, usize> {
    // Subprogram starts: the entry and every call target.
    let mut starts = vec![0usize];
    let mut jump_targets = vec![false; insns.len() + 1];
    for (i, insn) in insns.iter().enumerate() {
        let class = insn.code & 0x07;
        if insn.code == JMP_CALL && insn.src_reg() == PSEUDO_CALL {
            let target = call_target(i, insn, insns.len()).ok_or(i)?;
            starts.push(target);
        } else if (class == CLASS_JMP || class == CLASS_JMP32)
            && insn.code != JMP_CALL
            && insn.code != JMP_EXIT
        {
            // `ja` of the 32-bit class (gotol) keeps its offset in imm.
            let off = if insn.code == (CLASS_JMP32 | JMP_JA) {
                insn.imm as i64
            } else {
                insn.off as i64
            };
            let target = i as i64 + 1 + off;
            if (0..=insns.len() as i64).contains(&target) {
                jump_targets[target as usize] = true;
            }
        }
    }
    starts.sort_unstable();
    starts.dedup();

    let mut depth = vec![0u32; starts.len()];
    let mut calls: Vec<Vec<usize>> = vec![Vec::new(); starts.len()];
    for (s, &start) in starts.iter().enumerate() {
        let end = starts.get(s + 1).copied().unwrap_or(insns.len());
        let (d, targets) = frame(insns, start, end, &jump_targets);
        depth[s] = d;
        calls[s] = targets
            .into_iter()
            .filter_map(|t| starts.binary_search(&t).ok())
            .collect();
    }
    let chain = deepest(0, &depth, &calls, &mut Vec::new());
    let combined = chain.iter().map(|d| d.next_multiple_of(16)).sum();
    Ok(StackFigures {
        chain,
        combined,
        instructions: insns.len(),
    })
}

fn call_target(i: usize, insn: &bpf_insn, len: usize) -> Option<usize> {
    let target = i as i64 + 1 + insn.imm as i64;
    (0..len as i64).contains(&target).then_some(target as usize)
}

/// One frame's depth and the call targets in it: registers known to hold r10 plus a
/// constant are followed through moves and adds (forgotten at jump targets and calls);
/// every such value and every access through one counts.
fn frame(insns: &[bpf_insn], start: usize, end: usize, jump_targets: &[bool]) -> (u32, Vec<usize>) {
    let mut regs: [Option<i64>; 11] = [None; 11];
    let reset = |regs: &mut [Option<i64>; 11]| {
        *regs = [None; 11];
        regs[FRAME_POINTER] = Some(0);
    };
    reset(&mut regs);
    let mut deepest: i64 = 0;
    let mut targets = Vec::new();
    let mut i = start;
    while i < end {
        if jump_targets[i] {
            reset(&mut regs);
        }
        let insn = &insns[i];
        let class = insn.code & 0x07;
        let dst = insn.dst_reg() as usize;
        let src = insn.src_reg() as usize;
        let mut note = |off: i64| deepest = deepest.min(off);
        match class {
            _ if insn.code == LD_IMM64 => {
                if dst < 11 {
                    regs[dst] = None;
                }
                i += 1; // the second half of the 16-byte instruction
            }
            CLASS_LDX => {
                if let Some(base) = regs.get(src).copied().flatten() {
                    note(base + insn.off as i64);
                }
                if dst < 11 {
                    regs[dst] = None;
                }
            }
            CLASS_ST | CLASS_STX => {
                if let Some(base) = regs.get(dst).copied().flatten() {
                    note(base + insn.off as i64);
                }
                // An atomic fetch writes its source register (or r0 for cmpxchg).
                if class == CLASS_STX && insn.code & 0xe0 == 0xc0 && src < 11 {
                    regs[src] = None;
                    regs[0] = None;
                }
            }
            CLASS_ALU64 | CLASS_ALU if dst < 11 => {
                let op = insn.code & 0xf0;
                let by_reg = insn.code & SRC_X != 0;
                let operand = if by_reg {
                    regs.get(src).copied().flatten()
                } else {
                    Some(insn.imm as i64)
                };
                regs[dst] = match (class, op, by_reg) {
                    (CLASS_ALU64, OP_MOV, true) if insn.off == 0 => operand,
                    (CLASS_ALU64, OP_ADD, false) => regs[dst].map(|v| v + insn.imm as i64),
                    (CLASS_ALU64, OP_SUB, false) => regs[dst].map(|v| v - insn.imm as i64),
                    _ => None,
                };
                if let Some(v) = regs[dst] {
                    note(v);
                }
            }
            CLASS_JMP if insn.code == JMP_CALL => {
                if insn.src_reg() == PSEUDO_CALL
                    && let Some(t) = call_target(i, insn, insns.len())
                {
                    targets.push(t);
                }
                for r in regs.iter_mut().take(6) {
                    *r = None;
                }
            }
            _ => {}
        }
        i += 1;
    }
    (deepest.unsigned_abs().min(u32::MAX as u64) as u32, targets)
}

/// The chain from `at` whose rounded frames add up to the most.
fn deepest(at: usize, depth: &[u32], calls: &[Vec<usize>], path: &mut Vec<usize>) -> Vec<u32> {
    if path.contains(&at) {
        return Vec::new(); // recursion: the verifier refuses it anyway
    }
    path.push(at);
    let mut best: Vec<u32> = Vec::new();
    let mut best_sum = 0;
    for &callee in &calls[at] {
        let chain = deepest(callee, depth, calls, path);
        let sum: u32 = chain.iter().map(|d| d.next_multiple_of(16)).sum();
        if sum > best_sum || best.is_empty() {
            best_sum = sum;
            best = chain;
        }
    }
    path.pop();
    let mut out = vec![depth[at]];
    out.extend(best);
    out
}

/// The verifier's own figures from its log, where a load failed: "stack depth 176+0+344"
/// (frames in subprogram order) and "processed 3894 insns".
pub fn from_verifier_log(log: &str) -> (Option<Vec<u32>>, Option<u32>) {
    let stack = log.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("stack depth ")?;
        rest.split('+').map(|d| d.trim().parse().ok()).collect()
    });
    let processed = log.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("processed ")?;
        rest.split_whitespace().next()?.parse().ok()
    });
    (stack, processed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
        let mut i = bpf_insn {
            code,
            _bitfield_1: Default::default(),
            off,
            imm,
        };
        i.set_dst_reg(dst);
        i.set_src_reg(src);
        i
    }

    /// r1 = r10; r1 += -n
    fn stack_ptr(n: i32) -> [bpf_insn; 2] {
        [
            insn(CLASS_ALU64 | OP_MOV | SRC_X, 1, 10, 0, 0),
            insn(CLASS_ALU64 | OP_ADD, 1, 0, 0, -n),
        ]
    }

    #[test]
    fn a_frame_is_its_deepest_store_or_pointer() {
        // *(u64 *)(r10 - 24) = r1; r1 = r10; r1 += -176; exit
        let mut p = vec![insn(CLASS_STX | 0x18, 10, 1, -24, 0)];
        p.extend(stack_ptr(176));
        p.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let f = of_instructions(&p).unwrap();
        assert_eq!(f.chain, vec![176]);
        assert_eq!(f.combined, 176);
    }

    #[test]
    fn the_deepest_chain_adds_rounded_frames() {
        // main (176): call a; call b; exit. a: 0. b (344 via a pointer): exit.
        let mut p = vec![insn(CLASS_ST | 0x18, 10, 0, -176, 0)];
        p.push(insn(JMP_CALL, 0, PSEUDO_CALL, 0, 2)); // to 4
        p.push(insn(JMP_CALL, 0, PSEUDO_CALL, 0, 2)); // to 5
        p.push(insn(JMP_EXIT, 0, 0, 0, 0));
        p.push(insn(JMP_EXIT, 0, 0, 0, 0)); // a
        p.extend(stack_ptr(344)); // b
        p.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let f = of_instructions(&p).unwrap();
        assert_eq!(f.chain, vec![176, 344]);
        // The verifier's figure for this chain on the fresh machine: "combined stack size
        // of 2 calls is 528".
        assert_eq!(f.combined, 528);
    }

    #[test]
    fn a_register_loaded_from_memory_is_no_stack_pointer() {
        let mut p = stack_ptr(64).to_vec();
        p.push(insn(CLASS_LDX | 0x18, 1, 1, 0, 0)); // r1 = *(u64 *)(r1 + 0)
        p.push(insn(CLASS_ALU64 | OP_ADD, 1, 0, 0, -400));
        p.push(insn(JMP_EXIT, 0, 0, 0, 0));
        assert_eq!(of_instructions(&p).unwrap().chain, vec![64]);
    }

    #[test]
    fn a_call_out_of_the_program_is_an_error() {
        let p = vec![
            insn(JMP_CALL, 0, PSEUDO_CALL, 0, 40),
            insn(JMP_EXIT, 0, 0, 0, 0),
        ];
        assert_eq!(of_instructions(&p), Err(0));
    }

    #[test]
    fn the_verifiers_log_gives_its_figures() {
        let log = "combined stack size of 2 calls is 528. Too large\n\
                   verification time 1411 usec\nstack depth 176+0+344\n\
                   processed 3894 insns (limit 1000000) max_states_per_insn 1\n";
        assert_eq!(
            from_verifier_log(log),
            (Some(vec![176, 0, 344]), Some(3894))
        );
        assert_eq!(from_verifier_log("nothing"), (None, None));
    }

    /// Every program droptrace ships stays within the budget: the check that turns CI red
    /// with a number when a new compiler moves a program toward the verifier's limit.
    #[test]
    fn every_shipped_program_is_within_the_stack_budget() {
        for (object, figures) in crate::kernel::capture::shipped_objects()
            .iter()
            .map(|(name, bytes)| (name, of_object(bytes).expect("the objects parse")))
        {
            assert!(!figures.is_empty(), "{object}: no programs");
            for (program, f) in figures {
                println!("{object}/{program}: stack {}", f.describe());
                assert!(
                    f.combined <= STACK_BUDGET,
                    "{object}/{program}: stack {} over the budget of {STACK_BUDGET} (verifier limit {VERIFIER_STACK_LIMIT})",
                    f.describe()
                );
            }
        }
    }
}
