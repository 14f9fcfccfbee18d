//! Capabilities: say exactly which one is missing before trying, and give up the ones
//! the rest of the run does not need once the programs are attached.
//!
//! Loading and attaching needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN on kernels
//! before 5.8). After that, droptrace only reads maps through file descriptors it already
//! holds, reads rulesets (children entering a namespace: CAP_SYS_ADMIN for setns,
//! CAP_NET_ADMIN for the netfilter dumps, CAP_SYS_PTRACE and the DAC overrides to open
//! other processes' /proc entries) and sends probes. Everything else — CAP_BPF,
//! CAP_PERFMON, module loading, raw I/O, setuid and the rest — is dropped from the
//! effective, permitted and bounding sets, so neither droptrace nor the tools it runs can
//! use them for the rest of the capture.

use caps::{CapSet, Capability};

/// What loading needs, with what each is for.
const TO_LOAD: &[(Capability, &str)] = &[
    (Capability::CAP_BPF, "load BPF programs and maps"),
    (Capability::CAP_PERFMON, "attach tracing programs"),
    (Capability::CAP_NET_ADMIN, "read the netfilter rulesets"),
];

/// Kept after attaching.
const KEPT: &[Capability] = &[
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_NET_RAW,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
];

/// The capabilities loading needs that this process lacks, as one sentence; `None`
/// when all are there. CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON (pre-5.8).
pub fn missing_for_load() -> Option<String> {
    let has = |c: Capability| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
    let sys_admin = has(Capability::CAP_SYS_ADMIN);
    let missing: Vec<String> = TO_LOAD
        .iter()
        .filter(|(c, _)| !has(*c) && !(sys_admin && *c != Capability::CAP_NET_ADMIN))
        .map(|(c, why)| format!("{c} (to {why})"))
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// The kernel lockdown mode (security/lockdown/lockdown.c), when it is one that forbids
/// what droptrace's programs do: `confidentiality` refuses `bpf_probe_read_kernel`
/// (LOCKDOWN_BPF_READ_KERNEL), and with it every field read. `integrity` allows it.
pub fn lockdown_forbidding_bpf_reads() -> Option<String> {
    let text = std::fs::read_to_string("/sys/kernel/security/lockdown").ok()?;
    lockdown_mode(&text).filter(|m| m == "confidentiality")
}

/// The selected mode of /sys/kernel/security/lockdown: `none integrity [confidentiality]`.
fn lockdown_mode(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .map(str::to_string)
}

/// Drops every capability not in [`KEPT`]. Failure is logged, never fatal: the capture
/// itself does not depend on it.
pub fn drop_after_attach() {
    let keep: caps::CapsHashSet = KEPT.iter().copied().collect();
    let mut failed = Vec::new();
    // The bounding set first: lowering it needs CAP_SETPCAP, which goes next.
    for cap in caps::all() {
        if !keep.contains(&cap)
            && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false)
            && let Err(e) = caps::drop(None, CapSet::Bounding, cap)
        {
            failed.push(format!("{cap} from the bounding set: {e}"));
        }
    }
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        let current = match caps::read(None, set) {
            Ok(c) => c,
            Err(e) => {
                failed.push(format!("reading the {set:?} set: {e}"));
                continue;
            }
        };
        let target: caps::CapsHashSet = current.intersection(&keep).copied().collect();
        if let Err(e) = caps::set(None, set, &target) {
            failed.push(format!("the {set:?} set: {e}"));
        }
    }
    if failed.is_empty() {
        log::info!("dropped every capability but {KEPT:?}");
    } else {
        log::warn!("could not drop every capability: {}", failed.join("; "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_selected_lockdown_mode() {
        assert_eq!(
            lockdown_mode("[none] integrity confidentiality\n").as_deref(),
            Some("none")
        );
        assert_eq!(
            lockdown_mode("none integrity [confidentiality]\n").as_deref(),
            Some("confidentiality")
        );
        assert_eq!(lockdown_mode(""), None);
    }
}
