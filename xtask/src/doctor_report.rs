//! Reading `droptrace doctor --json`: each program's name and figures, and which of them
//! cross the budgets the report states. Used by `cargo xtask test` (this machine's kernel)
//! and vm-test (each kernel of the matrix), so both judge the same way.

use serde_json::Value;

/// `object/program`.
pub fn program_name(p: &Value) -> String {
    format!(
        "{}/{}",
        p["object"].as_str().unwrap_or("?"),
        p["program"].as_str().unwrap_or("?")
    )
}

/// The frames of the deepest call chain: `176+56+0`.
pub fn stack_chain(p: &Value) -> String {
    let frames: Vec<String> = p["stack"]["chain"]
        .as_array()
        .into_iter()
        .flatten()
        .map(Value::to_string)
        .collect();
    frames.join("+")
}

/// What is wrong with the report's programs: one whose status `acceptable` refuses, a
/// stack chain over the report's budget, instructions over `insn_budget` (the report's
/// own when `None`).
pub fn program_problems(
    report: &Value,
    insn_budget: Option<u64>,
    acceptable: impl Fn(&Value) -> bool,
) -> Vec<String> {
    let limits = &report["limits"];
    let stack_budget = limits["stack_budget"].as_u64().unwrap_or(0);
    let insn_budget = insn_budget.unwrap_or(limits["insn_budget"].as_u64().unwrap_or(0));
    let mut out = Vec::new();
    for p in report["programs"].as_array().into_iter().flatten() {
        let name = program_name(p);
        if !acceptable(p) {
            out.push(format!("{name} {}: {}", p["status"], p["why"]));
        }
        let combined = p["stack"]["combined"].as_u64().unwrap_or(u64::MAX);
        if combined > stack_budget {
            out.push(format!("{name} stack {combined} over {stack_budget}"));
        }
        if let Some(n) = p["verified_insns"].as_u64().filter(|n| *n > insn_budget) {
            out.push(format!("{name} {n} instructions over {insn_budget}"));
        }
    }
    out
}
