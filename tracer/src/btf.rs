//! What the running kernel's BTF tells us: struct offsets for the eBPF program, the
//! numbering of `enum skb_drop_reason`, and the shape of the `kfree_skb` tracepoint.
//!
//! Rust eBPF has no CO-RE, so offsets that differ between kernel builds (`sk_buff`
//! changes almost every release) are looked up here at start-up and written into the
//! program's configuration. Drop reason values also move between releases
//! (`SKB_DROP_REASON_NETFILTER_DROP` is 12 on 6.18, other numbers elsewhere), so they are
//! resolved by name.

use std::{collections::HashMap, path::Path};

use btf_rs::{Btf, Type};
use tracer_common::{NO_OFFSET, Offsets};

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
    pub verdicts: crate::verdicts::VerdictSupport,
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
        let btf = Btf::from_file(path).map_err(|e| BtfError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut kernel = Self::from_btf(&btf)?;
        kernel.verdicts = match path.parent() {
            Some(dir) if from_sys => crate::verdicts::VerdictSupport::from_modules(&btf, dir),
            // A BTF file given for a kernel without its own: its modules have none either.
            _ => crate::verdicts::VerdictSupport::none("no module BTF (kernel BTF from a file)"),
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
            verdicts: crate::verdicts::VerdictSupport::none("not read"),
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
}
