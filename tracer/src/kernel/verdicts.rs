//! The rule engines' own verdicts (tracer-ebpf `verdict`): where the kernel keeps what the
//! programs read, and what a verdict record says.
//!
//! `nft_do_chain`, `ipt_do_table` and `ip6t_do_table` live in modules (`nf_tables`,
//! `ip_tables`, `ip6_tables`) whose structures are described by their own split BTF in
//! /sys/kernel/btf/MODULE (5.11+, CONFIG_DEBUG_INFO_BTF_MODULES). A module that is not
//! loaded, or has no BTF, leaves its engine unwatched; attribution then rests on the
//! userspace evaluation alone, and the start-up line says why.

use std::path::Path;

use aya::{
    Ebpf,
    programs::{KProbe, ProgramError},
};
use tracer_common::{KernelVerdict, engine};

use crate::{
    kernel::btf::VerdictSupport,
    kernel::program::{c_string, program_error},
    kernel::stack::{DropEngine, Hook, TableFamily},
};

/// The return probe, on every watched function (tracer-ebpf `verdict::do_table_return`).
const RETURN_PROBE: &str = "do_table_return";

fn kprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut KProbe, String> {
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from object"))?
        .try_into()
        .map_err(|e: ProgramError| e.to_string())
}

/// Whether [`attach`] may attach anything here: kprobes, and an engine with its BTF.
pub(crate) fn possible(support: &VerdictSupport) -> bool {
    kprobes().is_ok() && (support.nftables.is_ok() || support.xtables.is_ok())
}

fn kprobes() -> Result<(), String> {
    // The kprobe PMU (kernel/trace/trace_kprobe.c) is what aya attaches through.
    if !Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        return Err("CONFIG_KPROBES is off in this kernel".into());
    }
    Ok(())
}

/// Loads the verdict programs and attaches them to every engine function this kernel lets
/// us watch; returns the functions, or why none could be watched.
pub(crate) fn attach(
    ebpf: &mut Ebpf,
    support: &VerdictSupport,
) -> Result<Vec<&'static str>, String> {
    kprobes()?;
    // (whether the engine can be watched, its name, the entry program, the functions).
    type Engine<'a> = (&'a Result<(), String>, &'a str, &'a str, &'a [&'static str]);
    let engines: [Engine; 2] = [
        (
            &support.nftables,
            "nftables",
            "nft_do_chain_entry",
            &["nft_do_chain"],
        ),
        (
            &support.xtables,
            "iptables-legacy",
            "xt_do_table_entry",
            &["ipt_do_table", "ip6t_do_table"],
        ),
    ];
    let mut reasons = Vec::new();
    let mut watched = Vec::new();
    for (usable, label, entry, functions) in engines {
        match usable {
            Ok(()) => watched.push((entry, functions)),
            Err(why) => reasons.push(format!("{label}: {why}")),
        }
    }
    if watched.is_empty() {
        return Err(reasons.join("; "));
    }
    for name in watched
        .iter()
        .map(|(entry, _)| *entry)
        .chain([RETURN_PROBE])
    {
        kprobe(ebpf, name)?
            .load()
            .map_err(|e| format!("{name}: {}", program_error(&e)))?;
    }
    let mut attached = Vec::new();
    for (entry, functions) in watched {
        for &function in functions {
            let link = match kprobe(ebpf, entry)?.attach(function, 0) {
                Ok(link) => link,
                Err(e) => {
                    reasons.push(format!("{function}: {}", program_error(&e)));
                    continue;
                }
            };
            // Entry and return both, or neither: an entry without its return would leave
            // calls on the per-CPU stack that no return pops.
            if let Err(e) = kprobe(ebpf, RETURN_PROBE)?.attach(function, 0) {
                reasons.push(format!("{function} (return): {}", program_error(&e)));
                let _ = kprobe(ebpf, entry)?.detach(link);
                continue;
            }
            attached.push(function);
        }
    }
    if attached.is_empty() {
        return Err(reasons.join("; "));
    }
    if !reasons.is_empty() {
        log::info!(
            "some rule engine verdicts not watched: {}",
            reasons.join("; ")
        );
    }
    Ok(attached)
}

/// What a rule engine function told us about one dropped packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSaw {
    /// `nft_do_chain`, `ipt_do_table` or `ip6t_do_table`.
    pub function: &'static str,
    pub engine: u8,
    /// The table's family as nftables names it (`ip`, `ip6`, `inet`, ...).
    pub family: Option<TableFamily>,
    pub hook: Option<Hook>,
    pub table: String,
    /// The nftables base chain (None for xtables: the hook's built-in chain).
    pub chain: Option<String>,
}

/// `enum nf_inet_hooks` (and `nf_dev_hooks` for the netdev family).
fn hook_of(family: Option<TableFamily>, hook: u8) -> Option<Hook> {
    Some(match (family, hook) {
        (Some(TableFamily::Netdev), 0) => Hook::Ingress,
        (Some(TableFamily::Netdev), 1) => Hook::Egress,
        (_, 0) => Hook::Prerouting,
        (_, 1) => Hook::Input,
        (_, 2) => Hook::Forward,
        (_, 3) => Hook::Output,
        (_, 4) => Hook::Postrouting,
        (_, 5) => Hook::Ingress,
        _ => return None,
    })
}

impl KernelSaw {
    pub fn from_record(v: &KernelVerdict) -> Option<Self> {
        let family = TableFamily::from_nfproto(v.family);
        let (function, chain) = match v.engine {
            engine::NFTABLES => ("nft_do_chain", Some(c_string(&v.chain))),
            engine::XTABLES if family == Some(TableFamily::Ip6) => ("ip6t_do_table", None),
            engine::XTABLES => ("ipt_do_table", None),
            _ => return None,
        };
        Some(KernelSaw {
            function,
            engine: v.engine,
            family,
            hook: hook_of(family, v.hook),
            table: c_string(&v.table),
            chain,
        })
    }

    /// The engine as the stack classifier names it.
    pub fn stack_engine(&self) -> Option<DropEngine> {
        match self.engine {
            engine::NFTABLES => self.family.map(DropEngine::nftables),
            engine::XTABLES => Some(DropEngine::XTABLES),
            _ => None,
        }
    }

    /// `nft_do_chain returned DROP in ip filter OUTPUT`, for the `why` of an attribution.
    pub fn describe(&self) -> String {
        let family = self.family.map_or("?", TableFamily::as_str);
        match (&self.chain, self.hook) {
            (Some(chain), _) => format!(
                "{} returned DROP in {family} {} {chain}",
                self.function, self.table
            ),
            (None, Some(hook)) => format!(
                "{} returned DROP in table {} at {}",
                self.function,
                self.table,
                hook.as_str()
            ),
            (None, None) => format!("{} returned DROP in table {}", self.function, self.table),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(engine: u8, family: u8, hook: u8, table: &str, chain: &str) -> KernelVerdict {
        let mut v = KernelVerdict {
            skb: 1,
            verdict: 0,
            engine,
            family,
            hook,
            _pad: 0,
            table: [0; 32],
            chain: [0; 32],
        };
        v.table[..table.len()].copy_from_slice(table.as_bytes());
        v.chain[..chain.len()].copy_from_slice(chain.as_bytes());
        v
    }

    #[test]
    fn reads_nftables_and_xtables_records() {
        let nft = KernelSaw::from_record(&record(engine::NFTABLES, 1, 3, "fw", "out")).unwrap();
        assert_eq!(nft.family, Some(TableFamily::Inet));
        assert_eq!(nft.hook, Some(Hook::Output));
        assert_eq!(nft.describe(), "nft_do_chain returned DROP in inet fw out");
        let legacy = KernelSaw::from_record(&record(engine::XTABLES, 10, 1, "filter", "")).unwrap();
        assert_eq!(legacy.function, "ip6t_do_table");
        assert_eq!(legacy.chain, None);
        assert_eq!(
            legacy.describe(),
            "ip6t_do_table returned DROP in table filter at INPUT"
        );
        assert_eq!(
            KernelSaw::from_record(&record(engine::NONE, 2, 3, "", "")),
            None
        );
    }
}
