//! What the running kernel's BTF tells us: struct offsets for the eBPF program, the
//! numbering of `enum skb_drop_reason`, and the shape of the `kfree_skb` tracepoint.
//!
//! Rust eBPF has no CO-RE, so offsets that differ between kernel builds (`sk_buff`
//! changes almost every release) are looked up here at start-up and written into the
//! program's configuration. Drop reason values also move between releases
//! (`SKB_DROP_REASON_NETFILTER_DROP` is 12 on 6.18, other numbers elsewhere), so they are
//! resolved by name.

use std::{collections::HashMap, path::Path};

use btf_rs::{Backend, Btf, Type};
use tracer_common::{NO_OFFSET, Offsets, VerdictConfig};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "kernel BTF not found at {path}: this kernel was built without CONFIG_DEBUG_INFO_BTF; pass --btf FILE with its BTF (e.g. from BTFHub)"
    )]
    Missing { path: String },
    #[error("no BTF file at {path}")]
    NoFile { path: String },
    #[error("cannot parse kernel BTF at {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("kernel BTF has no {0}: cannot read packets on this kernel")]
    MissingField(&'static str),
}

/// The facts droptrace needs from the kernel's BTF.
#[derive(Debug, Clone)]
pub struct KernelBtf {
    pub offsets: Offsets,
    /// `enum skb_drop_reason`: value -> name without the `SKB_DROP_REASON_` prefix.
    pub drop_reasons: HashMap<u32, String>,
    /// Whether `trace_kfree_skb` passes a drop reason (Linux 5.17+).
    pub tracepoint_has_reason: bool,
    /// Layout of the classic tracepoint's record, when BTF describes it.
    pub tracepoint_record: Option<TracepointRecord>,
    /// What the rule-engine verdict programs can read on this kernel.
    pub verdicts: VerdictSupport,
}

/// Offsets in the `skb/kfree_skb` tracepoint record (`struct trace_event_raw_kfree_skb`, or
/// the `format` file in tracefs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TracepointRecord {
    pub skbaddr: u32,
    pub location: u32,
    pub reason: Option<u32>,
}

impl KernelBtf {
    pub fn load() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let from_sys = path == Path::new(VMLINUX_BTF);
        if !path.exists() {
            let path = path.display().to_string();
            return Err(if from_sys {
                BtfError::Missing { path }
            } else {
                BtfError::NoFile { path }
            });
        }
        // Mapped, not parsed up front: parsing every type of vmlinux's BTF took 170 ms of
        // a 300 ms start-up, for some thirty lookups. Kernels before 6.16 cannot map
        // /sys/kernel/btf/vmlinux; it is then read and parsed whole.
        let btf = Btf::from_file_with_backend(path, Backend::Mmap)
            .or_else(|_| Btf::from_file(path))
            .map_err(|e| BtfError::Parse {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        let mut kernel = Self::from_btf(&btf)?;
        if from_sys
            && kernel.offsets.ct_mark == NO_OFFSET
            && let Some(dir) = path.parent()
        {
            kernel.offsets.ct_mark = conntrack_mark_offset(&btf, dir);
        }
        kernel.verdicts = match path.parent() {
            Some(dir) if from_sys => VerdictSupport::from_modules(&btf, dir),
            // A BTF file given for a kernel without its own: its modules have none either.
            _ => VerdictSupport::none("no module BTF (kernel BTF from a file)"),
        };
        Ok(kernel)
    }

    fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        let must = |s: &'static str, path: &[&str], what: &'static str| {
            member_offset(btf, s, path).ok_or(BtfError::MissingField(what))
        };
        let may = |s: &str, path: &[&str]| member_offset(btf, s, path).unwrap_or(NO_OFFSET);
        let offsets = Offsets {
            skb_head: must("sk_buff", &["head"], "sk_buff.head")?,
            skb_network_header: must("sk_buff", &["network_header"], "sk_buff.network_header")?,
            skb_dev: may("sk_buff", &["dev"]),
            skb_sk: may("sk_buff", &["sk"]),
            skb_mark: may("sk_buff", &["mark"]),
            skb_len: may("sk_buff", &["len"]),
            skb_refdst: may("sk_buff", &["_skb_refdst"]),
            skb_nfct: may("sk_buff", &["_nfct"]),
            dst_dev: may("dst_entry", &["dev"]),
            dev_ifindex: may("net_device", &["ifindex"]),
            dev_name: may("net_device", &["name"]),
            // possible_net_t holds a single `struct net *net` at offset 0.
            dev_nd_net: may("net_device", &["nd_net", "net"]),
            sk_net: may("sock", &["__sk_common", "skc_net", "net"]),
            sk_uid: may("sock", &["sk_uid"]),
            net_ns_inum: may("net", &["ns", "inum"]),
            // Built-in conntrack; a module's BTF is read by `conntrack_mark_offset`.
            ct_mark: may("nf_conn", &["mark"]),
            skb_size: struct_size(btf, "sk_buff")
                .filter(|n| *n <= tracer_common::SKB_COPY_BYTES)
                .map_or(0, |n| n as u32),
        };
        let record = |field: &str| member_offset(btf, "trace_event_raw_kfree_skb", &[field]);
        let tracepoint_record = match (record("skbaddr"), record("location")) {
            (Some(skbaddr), Some(location)) => Some(TracepointRecord {
                skbaddr,
                location,
                reason: record("reason"),
            }),
            _ => None,
        };
        Ok(KernelBtf {
            offsets,
            drop_reasons: drop_reasons(btf),
            tracepoint_has_reason: tracepoint_param_count(btf, "btf_trace_kfree_skb")
                .is_some_and(|n| n >= 4),
            tracepoint_record,
            verdicts: VerdictSupport::none("not read"),
        })
    }

    /// The value of a drop reason by its short name (`NETFILTER_DROP`).
    pub fn reason_value(&self, name: &str) -> Option<u32> {
        self.drop_reasons
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(v, _)| *v)
    }

    pub fn reason_name(&self, value: u32) -> String {
        if value == tracer_common::REASON_BY_LOCATION {
            return "NETFILTER_DROP".to_string();
        }
        self.drop_reasons
            .get(&value)
            .cloned()
            .unwrap_or_else(|| format!("reason#{value}"))
    }
}

// What the rule-engine verdict programs (kernel/verdicts.rs) can read: their modules'
// split BTF (5.11+, CONFIG_DEBUG_INFO_BTF_MODULES).

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

/// Size in bytes of struct `name`.
fn struct_size(btf: &Btf, name: &str) -> Option<usize> {
    btf.resolve_types_by_name(name)
        .ok()?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s.size()),
            _ => None,
        })
}

/// Offset in bytes of `path` inside struct `name`, looking through anonymous struct and
/// union members the way C does (`skb->sk` lives in an anonymous union).
/// `nf_conn.mark` from nf_conntrack's own BTF, where conntrack is a module (Debian's
/// kernels): [`NO_OFFSET`] when the module is not loaded (then no packet has a connection
/// to read) or has no such field (CONFIG_NF_CONNTRACK_MARK off).
fn conntrack_mark_offset(vmlinux: &Btf, dir: &Path) -> u32 {
    Btf::from_split_file(dir.join("nf_conntrack"), vmlinux)
        .ok()
        .and_then(|module| member_offset(&module, "nf_conn", &["mark"]))
        .unwrap_or(NO_OFFSET)
}

pub fn member_offset(btf: &Btf, name: &str, path: &[&str]) -> Option<u32> {
    let ty = btf
        .resolve_types_by_name(name)
        .ok()?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))?;
    offset_in(btf, &ty, path)
}

fn offset_in(btf: &Btf, ty: &Type, path: &[&str]) -> Option<u32> {
    let (first, rest) = path.split_first()?;
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return None,
    };
    for m in members {
        let name = btf.resolve_name(m).unwrap_or_default();
        let base = m.bit_offset() / 8;
        let member_ty = strip_qualifiers(btf, btf.resolve_chained_type(m).ok()?)?;
        if name == *first {
            if rest.is_empty() {
                return Some(base);
            }
            return offset_in(btf, &member_ty, rest).map(|o| base + o);
        }
        if name.is_empty()
            && let Some(o) = offset_in(btf, &member_ty, path)
        {
            return Some(base + o);
        }
    }
    None
}

/// Follows typedefs, const and volatile to the type underneath.
fn strip_qualifiers(btf: &Btf, mut ty: Type) -> Option<Type> {
    for _ in 0..16 {
        match &ty {
            Type::Typedef(t) => ty = btf.resolve_chained_type(t).ok()?,
            Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => {
                ty = btf.resolve_chained_type(t).ok()?
            }
            Type::TypeTag(t) => ty = btf.resolve_chained_type(t).ok()?,
            _ => return Some(ty),
        }
    }
    None
}

fn drop_reasons(btf: &Btf) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    let Ok(types) = btf.resolve_types_by_name("skb_drop_reason") else {
        return out;
    };
    for ty in types {
        if let Type::Enum(e) = ty {
            for m in &e.members {
                let name = btf.resolve_name(m).unwrap_or_default();
                let short = name
                    .strip_prefix("SKB_DROP_REASON_")
                    .unwrap_or(&name)
                    .to_string();
                out.insert(m.val(), short);
            }
        }
    }
    out
}

/// Parameters of a tracepoint's BTF prototype (`typedef void (*btf_trace_X)(void *, ...)`),
/// the hidden context pointer included.
fn tracepoint_param_count(btf: &Btf, typedef: &str) -> Option<usize> {
    let ty = btf
        .resolve_types_by_name(typedef)
        .ok()?
        .into_iter()
        .next()?;
    let Type::Typedef(td) = ty else { return None };
    let ptr = btf.resolve_chained_type(&td).ok()?;
    let Type::Ptr(p) = ptr else { return None };
    match btf.resolve_chained_type(&p).ok()? {
        Type::FuncProto(proto) => Some(proto.parameters.len()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the BTF of the kernel the tests run on (every machine of ours has it).
    #[test]
    fn resolves_offsets_and_reasons_on_this_kernel() {
        let k = KernelBtf::load().unwrap();
        assert_ne!(k.offsets.skb_sk, NO_OFFSET);
        assert_ne!(k.offsets.skb_dev, NO_OFFSET);
        assert_ne!(k.offsets.net_ns_inum, NO_OFFSET);
        assert_ne!(k.offsets.sk_net, NO_OFFSET);
        assert!(k.offsets.skb_size > 0, "sk_buff fits the copy buffer");
        assert!(k.reason_value("NETFILTER_DROP").is_some());
        assert_eq!(
            k.reason_name(k.reason_value("NO_SOCKET").unwrap()),
            "NO_SOCKET"
        );
        assert!(k.tracepoint_has_reason);
        // 6.11+ layout (KERNEL-NOTES): skbaddr@8, location@16, rx_sk@24, protocol@32, reason@36.
        let tp = k.tracepoint_record.unwrap();
        assert_eq!((tp.skbaddr, tp.location), (8, 16));
        assert!(tp.reason.is_some());
    }

    /// Offsets come from the module's BTF, or from vmlinux where netfilter is built in
    /// (as on the development machine); without either, the engine is reported unwatched
    /// with a reason, never half-configured.
    #[test]
    fn offsets_from_vmlinux_or_a_stated_reason() {
        let dir = std::env::temp_dir().join(format!("droptrace-no-btf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let vmlinux = Btf::from_file(VMLINUX_BTF).unwrap();
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
