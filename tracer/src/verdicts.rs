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
use btf_rs::{Btf, Type};
use tracer_common::{KernelVerdict, NO_OFFSET, VerdictConfig, engine};

use crate::{
    btf::member_offset,
    capture::program_error,
    drop::c_string,
    stack::{Hook, NftFamily},
};

/// What the kernel's BTF allows the verdict programs to read, engine by engine.
#[derive(Debug, Clone)]
pub struct VerdictSupport {
    pub config: VerdictConfig,
    /// `Ok` when `nft_do_chain` can be watched, else why not.
    pub nftables: Result<(), String>,
    /// `Ok` when `ipt_do_table` (and `ip6t_do_table`) can be watched, else why not.
    pub xtables: Result<(), String>,
}

impl VerdictSupport {
    pub fn none(why: &str) -> Self {
        VerdictSupport {
            config: VerdictConfig::NONE,
            nftables: Err(why.into()),
            xtables: Err(why.into()),
        }
    }

    /// Reads the module BTF next to `vmlinux` (`dir` is /sys/kernel/btf).
    pub fn from_modules(vmlinux: &Btf, dir: &Path) -> Self {
        let mut config = VerdictConfig::NONE;
        config.state_hook = member_offset(vmlinux, "nf_hook_state", &["hook"]).unwrap_or(NO_OFFSET);
        // A module's own split BTF, or vmlinux's when the module is built in.
        let module = |name: &str, probe: &str| -> Result<Option<Btf>, String> {
            let path = dir.join(name);
            if path.exists() {
                return Btf::from_split_file(&path, vmlinux)
                    .map(Some)
                    .map_err(|e| format!("{}: {e}", path.display()));
            }
            if vmlinux
                .resolve_ids_by_name(probe)
                .is_ok_and(|ids| !ids.is_empty())
            {
                return Ok(None);
            }
            Err(format!(
                "no BTF for module {name} (not loaded, or built without module BTF)"
            ))
        };
        let nftables = module("nf_tables", "nft_chain")
            .and_then(|btf| nft_offsets(btf.as_ref().unwrap_or(vmlinux), &mut config));
        let xtables = module("ip_tables", "ipt_do_table").and_then(|btf| {
            xt_offsets(btf.as_ref().unwrap_or(vmlinux), "ipt_do_table", &mut config)
        });
        VerdictSupport {
            config,
            nftables,
            xtables,
        }
    }
}

fn nft_offsets(btf: &Btf, c: &mut VerdictConfig) -> Result<(), String> {
    let need = |s: &str, path: &[&str]| {
        member_offset(btf, s, path)
            .ok_or_else(|| format!("nf_tables BTF has no {s}.{}", path.join(".")))
    };
    c.pkt_skb = need("nft_pktinfo", &["skb"])?;
    // `pkt->state` since 5.15; `pkt->xt.state` before.
    c.pkt_state = member_offset(btf, "nft_pktinfo", &["state"])
        .or_else(|| member_offset(btf, "nft_pktinfo", &["xt", "state"]))
        .unwrap_or(NO_OFFSET);
    c.chain_name = need("nft_chain", &["name"])?;
    c.chain_table = need("nft_chain", &["table"])?;
    c.table_name = need("nft_table", &["name"])?;
    // `u16 family:6, flags:8, genmask:2` in struct nft_table (include/net/netfilter/nf_tables.h).
    let (bit, width) =
        member_bits(btf, "nft_table", "family").ok_or("nf_tables BTF has no nft_table.family")?;
    c.table_family = bit / 16 * 2;
    c.table_family_shift = (bit % 16) as u8;
    c.table_family_bits = width.unwrap_or(16).min(16) as u8;
    Ok(())
}

fn xt_offsets(btf: &Btf, func: &str, c: &mut VerdictConfig) -> Result<(), String> {
    let params = func_params(btf, func).ok_or_else(|| format!("ip_tables BTF has no {func}"))?;
    let position = |names: &[&str]| {
        params
            .iter()
            .position(|p| names.contains(&p.as_str()))
            .and_then(|i| u8::try_from(i).ok())
            .ok_or_else(|| format!("{func}({}): no {} argument", params.join(", "), names[0]))
    };
    c.xt_arg_skb = position(&["skb"])?;
    c.xt_arg_state = position(&["state"])?;
    c.xt_arg_table = position(&["table", "priv"])?;
    c.xt_table_name = member_offset(btf, "xt_table", &["name"]).ok_or("no xt_table.name in BTF")?;
    c.xt_table_af = member_offset(btf, "xt_table", &["af"]).ok_or("no xt_table.af in BTF")?;
    Ok(())
}

/// Bit offset and bitfield width (None when not a bitfield) of `field` in struct `name`.
fn member_bits(btf: &Btf, name: &str, field: &str) -> Option<(u32, Option<u32>)> {
    btf.resolve_types_by_name(name)
        .ok()?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => s.members.iter().find_map(|m| {
                (btf.resolve_name(m).ok()? == field).then(|| (m.bit_offset(), m.bitfield_size()))
            }),
            _ => None,
        })
}

/// Parameter names of function `name`.
fn func_params(btf: &Btf, name: &str) -> Option<Vec<String>> {
    btf.resolve_types_by_name(name)
        .ok()?
        .into_iter()
        .find_map(|t| match t {
            Type::Func(f) => match btf.resolve_chained_type(&f).ok()? {
                Type::FuncProto(p) => Some(
                    p.parameters
                        .iter()
                        .map(|a| btf.resolve_name(a).unwrap_or_default())
                        .collect(),
                ),
                _ => None,
            },
            _ => None,
        })
}

/// The return probe, on every watched function (tracer-ebpf `verdict::do_table_return`).
const RETURN_PROBE: &str = "do_table_return";

fn kprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut KProbe, String> {
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from object"))?
        .try_into()
        .map_err(|e: ProgramError| e.to_string())
}

/// Loads the verdict programs and attaches them to every engine function this kernel lets
/// us watch; returns the functions, or why none could be watched.
pub(crate) fn attach(
    ebpf: &mut Ebpf,
    support: &VerdictSupport,
) -> Result<Vec<&'static str>, String> {
    // The kprobe PMU (kernel/trace/trace_kprobe.c) is what aya attaches through.
    if !Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        return Err("CONFIG_KPROBES is off in this kernel".into());
    }
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
    pub family: Option<NftFamily>,
    pub hook: Option<Hook>,
    pub table: String,
    /// The nftables base chain (None for xtables: the hook's built-in chain).
    pub chain: Option<String>,
}

/// `NFPROTO_*` (include/uapi/linux/netfilter.h).
fn family_of(nfproto: u8) -> Option<NftFamily> {
    Some(match nfproto {
        1 => NftFamily::Inet,
        2 => NftFamily::Ip,
        3 => NftFamily::Arp,
        5 => NftFamily::Netdev,
        7 => NftFamily::Bridge,
        10 => NftFamily::Ip6,
        _ => return None,
    })
}

/// `enum nf_inet_hooks` (and `nf_dev_hooks` for the netdev family).
fn hook_of(family: Option<NftFamily>, hook: u8) -> Option<Hook> {
    Some(match (family, hook) {
        (Some(NftFamily::Netdev), 0) => Hook::Ingress,
        (Some(NftFamily::Netdev), 1) => Hook::Egress,
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
        let family = family_of(v.family);
        let (function, chain) = match v.engine {
            engine::NFTABLES => ("nft_do_chain", Some(c_string(&v.chain))),
            engine::XTABLES if family == Some(NftFamily::Ip6) => ("ip6t_do_table", None),
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
    pub fn stack_engine(&self) -> Option<crate::stack::Engine> {
        match self.engine {
            engine::NFTABLES => self.family.map(crate::stack::Engine::Nftables),
            engine::XTABLES => Some(crate::stack::Engine::Xtables),
            _ => None,
        }
    }

    /// `nft_do_chain returned DROP in ip filter OUTPUT`, for the `why` of an attribution.
    pub fn describe(&self) -> String {
        let family = self.family.map_or("?", NftFamily::as_str);
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
        assert_eq!(nft.family, Some(NftFamily::Inet));
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

    /// Offsets come from the module's BTF, or from vmlinux where netfilter is built in
    /// (as on the development machine); without either, the engine is reported unwatched
    /// with a reason, never half-configured.
    #[test]
    fn offsets_from_vmlinux_or_a_stated_reason() {
        let dir = std::env::temp_dir().join(format!("droptrace-no-btf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let vmlinux = Btf::from_file(crate::btf::VMLINUX_BTF).unwrap();
        let s = VerdictSupport::from_modules(&vmlinux, &dir);
        std::fs::remove_dir(&dir).unwrap();
        assert_ne!(s.config.state_hook, NO_OFFSET);
        let built_in = vmlinux.resolve_ids_by_name("nft_chain").is_ok();
        match s.nftables {
            Ok(()) => {
                assert!(built_in);
                assert_eq!(s.config.pkt_skb, 0, "nft_pktinfo.skb is the first member");
                assert_ne!(s.config.chain_name, NO_OFFSET);
                assert!((1..=16).contains(&s.config.table_family_bits));
            }
            Err(why) => {
                assert!(!built_in);
                assert!(why.contains("no BTF for module nf_tables"), "{why}");
            }
        }
        if s.xtables.is_ok() {
            // (skb, state, table) before 5.16, (priv, skb, state) since: three distinct.
            let c = s.config;
            let mut args = [c.xt_arg_skb, c.xt_arg_state, c.xt_arg_table];
            args.sort();
            assert_eq!(args, [0, 1, 2]);
        }
    }
}
