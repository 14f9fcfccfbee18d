//! Loading the inventory's programs (tracer-ebpf/src/inventory.rs, and passed.rs for
//! `--attempts`) and reading what they saw: first sightings from a ring buffer, counters
//! from the flow table.
//!
//! The object is the one `watch` loads, so the drop side's maps are shrunk to nothing here
//! and the inventory's (declared tiny, for `watch`'s sake) are sized for real. Offsets come
//! from BTF like the drop program's; the TCP tracepoint's record layout from BTF or, when
//! BTF does not describe it, from tracefs.

use std::{collections::HashMap, io, path::Path};

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, ProgramError, TracePoint},
};
use btf_rs::Btf;
use tokio::io::unix::AsyncFd;
use tracer_common::{
    Config, InventoryConfig, InventoryEvent, InventoryKey, InventoryState, NO_OFFSET, PassedKey,
    inventory,
};

use crate::{
    kernel::btf::{KernelBtf, VMLINUX_BTF, member_offset},
    kernel::filter::Filters,
    kernel::program::refused_for_test,
};

const TCP_PROGRAM: &str = "inventory_tcp";
const PASSED_PROGRAM: &str = "attempt_passed";
/// (program, BTF tracepoint, what it contributes).
const DATAGRAM_PROGRAMS: &[(&str, &str)] = &[
    ("inventory_route4", "fib_table_lookup"),
    ("inventory_route6", "fib6_table_lookup"),
    ("inventory_send", "sock_send_length"),
];

/// The running inventory programs and their maps. Dropping it detaches everything.
pub struct InventoryCapture {
    /// Hooks in use, for the start line and the report.
    pub sources: Vec<String>,
    /// What cannot be seen on this kernel, and why.
    pub blind_spots: Vec<String>,
    _ebpf: Ebpf,
    ring: AsyncFd<RingBuf<MapData>>,
    flows: BpfHashMap<MapData, InventoryKey, InventoryState>,
    stats: PerCpuArray<MapData, u64>,
    /// First packets that got through (`start`'s `passed`), by key and conntrack state.
    passed: Option<BpfHashMap<MapData, PassedKey, u64>>,
}

impl InventoryCapture {
    /// Loads and attaches the programs with `filters` applied in the kernel; with `passed`,
    /// also the one that counts the first packets that got through the firewall
    /// (tracer-ebpf/src/passed.rs). Mounts tracefs in a private mount namespace if needed,
    /// so it must run before any thread is spawned.
    pub fn start(kernel: &KernelBtf, filters: &Filters, passed: bool) -> anyhow::Result<Self> {
        if let Some(missing) = crate::kernel::privileges::missing_for_load() {
            anyhow::bail!("missing capabilities: {missing}; run as root");
        }
        let btf = Btf::from_file(Path::new(VMLINUX_BTF))
            .map_err(|e| anyhow::anyhow!("cannot parse kernel BTF at {VMLINUX_BTF}: {e}"))?;
        crate::kernel::tracefs::ensure_mounted().context("cannot mount tracefs")?;
        let mut inv = offsets(&btf);
        if inv.tp_newstate == NO_OFFSET {
            let text = std::fs::read_to_string(
                Path::new(crate::kernel::tracefs::ensure_mounted()?)
                    .join("events/sock/inet_sock_set_state/format"),
            )
            .context("this kernel has no sock/inet_sock_set_state tracepoint")?;
            apply_format(&mut inv, &crate::kernel::tracefs::format_fields(&text));
        }
        if inv.tp_newstate == NO_OFFSET || inv.tp_daddr == NO_OFFSET {
            anyhow::bail!("cannot read the layout of the sock/inet_sock_set_state tracepoint");
        }
        let mut cfg = Config::EMPTY;
        cfg.offsets = kernel.offsets;
        filters.apply(&mut cfg);

        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &cfg, true)
            .override_global("INVENTORY", &inv, true)
            .map_max_entries("INV_FLOWS", inventory::MAX_FLOWS)
            .map_max_entries("INV_PENDING", inventory::MAX_PENDING)
            .map_max_entries("INV_EVENTS", inventory::RING_BYTES)
            .map_max_entries("PASSED", if passed { inventory::MAX_PASSED } else { 1 })
            // The drop program's maps are not used here.
            .map_max_entries("FLOWS", 1)
            .map_max_entries("EVENTS", 4096)
            .load(crate::kernel::capture::PROGRAM)
            .map_err(|e| anyhow::anyhow!("the kernel refused to load the BPF object: {e}"))?;

        let tcp: &mut TracePoint = ebpf
            .program_mut(TCP_PROGRAM)
            .context("program inventory_tcp missing from the object")?
            .try_into()?;
        if let Some(why) = refused_for_test(TCP_PROGRAM) {
            anyhow::bail!("the kernel refused {TCP_PROGRAM}: {why}");
        }
        tcp.load().map_err(|e| program_error("inventory_tcp", &e))?;
        tcp.attach("sock", "inet_sock_set_state")
            .map_err(|e| program_error("inventory_tcp", &e))?;
        let mut sources = vec!["tracepoint/sock/inet_sock_set_state (tcp)".to_string()];
        let mut blind_spots = Vec::new();

        let aya_btf = aya::Btf::from_sys_fs().ok();
        let mut datagrams = Vec::new();
        for (program, tracepoint) in DATAGRAM_PROGRAMS {
            let attached = (|| -> anyhow::Result<()> {
                let btf = aya_btf.as_ref().context("no kernel BTF for tp_btf")?;
                let p: &mut BtfTracePoint = ebpf
                    .program_mut(program)
                    .with_context(|| format!("program {program} missing from the object"))?
                    .try_into()?;
                p.load(tracepoint, btf)
                    .map_err(|e| program_error(program, &e))?;
                p.attach().map_err(|e| program_error(program, &e))?;
                Ok(())
            })();
            match attached {
                Ok(()) => datagrams.push(format!("tp_btf/{tracepoint}")),
                Err(e) => {
                    log::warn!("inventory: {e:#}");
                    blind_spots.push(format!("tp_btf/{tracepoint}: {e:#}"));
                }
            }
        }
        let has = |tp: &str| datagrams.iter().any(|d| d.ends_with(tp));
        if !has("sock_send_length") || (!has("fib_table_lookup") && !has("fib6_table_lookup")) {
            blind_spots.push("UDP and ICMP echo flows are not inventoried on this kernel".into());
        } else {
            for (tp, family) in [("fib_table_lookup", "IPv4"), ("fib6_table_lookup", "IPv6")] {
                if !has(tp) {
                    blind_spots.push(format!(
                        "{family} UDP and ICMP echo flows are not inventoried on this kernel"
                    ));
                }
            }
            sources.push(format!("{} (udp, icmp echo)", datagrams.join(" + ")));
        }

        if passed {
            if let Some(why) = refused_for_test(PASSED_PROGRAM) {
                anyhow::bail!("the kernel refused {PASSED_PROGRAM}: {why}");
            }
            let btf = aya_btf
                .as_ref()
                .context("attempts need the kernel's BTF (tp_btf)")?;
            let p: &mut BtfTracePoint = ebpf
                .program_mut(PASSED_PROGRAM)
                .context("program attempt_passed missing from the object")?
                .try_into()?;
            p.load("net_dev_queue", btf)
                .map_err(|e| program_error(PASSED_PROGRAM, &e))?;
            p.attach().map_err(|e| program_error(PASSED_PROGRAM, &e))?;
            sources.push("tp_btf/net_dev_queue (first packets that got through)".into());
        }
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the object"))
        };
        let ring = RingBuf::try_from(take(&mut ebpf, "INV_EVENTS")?)?;
        let flows = BpfHashMap::try_from(take(&mut ebpf, "INV_FLOWS")?)?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, "INV_STATS")?)?;
        let passed = if passed {
            Some(BpfHashMap::try_from(take(&mut ebpf, "PASSED")?)?)
        } else {
            None
        };
        // SAFETY: the RingBuf owns its map fd, which stays open until the AsyncFd drops it.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot watch the inventory ring buffer: {}",
                    e.into_parts().1
                )
            })?;
        Ok(InventoryCapture {
            sources,
            blind_spots,
            _ebpf: ebpf,
            ring,
            flows,
            stats,
            passed,
        })
    }

    /// The programs loaded, with the instructions the verifier processed for each.
    pub fn programs_loaded(&self) -> Vec<(String, Option<u32>)> {
        crate::kernel::capture::loaded_programs(&self._ebpf)
    }

    /// Waits until first sightings are available.
    pub async fn readable(&self) -> io::Result<()> {
        let mut guard = self.ring.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Moves every first sighting now in the ring buffer into `out`.
    pub fn drain(&mut self, out: &mut Vec<(InventoryKey, InventoryState)>) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<InventoryEvent>() {
                continue;
            }
            // SAFETY: written by our program as an InventoryEvent; read_unaligned because
            // the ring buffer only guarantees 8-byte alignment.
            let e: InventoryEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            out.push((e.key, e.state));
        }
    }

    /// Every flow in the kernel's table, with its current counters.
    pub fn flows(&self) -> Vec<(InventoryKey, InventoryState)> {
        self.flows.iter().filter_map(Result::ok).collect()
    }

    /// First packets that got through, with their packet counts (empty unless `start` was
    /// asked for them).
    pub fn passed(&self) -> Vec<(PassedKey, u64)> {
        self.passed
            .as_ref()
            .map(|m| m.iter().filter_map(Result::ok).collect())
            .unwrap_or_default()
    }

    /// First sightings the ring buffer could not take (those flows are still in the table,
    /// but their process may have exited before it was looked up).
    pub fn lost(&self) -> u64 {
        self.stats
            .get(&inventory::STAT_LOST, 0)
            .map_or(0, |v| v.iter().sum())
    }
}

fn program_error(program: &str, e: &ProgramError) -> anyhow::Error {
    anyhow::anyhow!(
        "the kernel refused {program}: {}",
        crate::kernel::program::program_error(e)
    )
}

/// Every offset the inventory programs need, from the kernel's BTF.
fn offsets(btf: &Btf) -> InventoryConfig {
    let at = |s: &str, path: &[&str]| member_offset(btf, s, path).unwrap_or(NO_OFFSET);
    let tp = |f: &str| at("trace_event_raw_inet_sock_set_state", &[f]);
    let fl4 = |path: &[&str]| at("flowi4", path);
    let fl6 = |path: &[&str]| at("flowi6", path);
    let common = |f: &'static str| ["__fl_common", f];
    let sk = |path: &[&str]| at("sock", path);
    InventoryConfig {
        tp_skaddr: tp("skaddr"),
        tp_newstate: tp("newstate"),
        tp_sport: tp("sport"),
        tp_dport: tp("dport"),
        tp_family: tp("family"),
        tp_protocol: tp("protocol"),
        tp_saddr: tp("saddr"),
        tp_daddr: tp("daddr"),
        tp_saddr_v6: tp("saddr_v6"),
        tp_daddr_v6: tp("daddr_v6"),
        fl4_iif: fl4(&common("flowic_iif")),
        fl4_proto: fl4(&common("flowic_proto")),
        fl4_mark: fl4(&common("flowic_mark")),
        fl4_uid: fl4(&common("flowic_uid")),
        fl4_saddr: fl4(&["saddr"]),
        fl4_daddr: fl4(&["daddr"]),
        fl4_uli: fl4(&["uli"]),
        fl6_iif: fl6(&common("flowic_iif")),
        fl6_proto: fl6(&common("flowic_proto")),
        fl6_mark: fl6(&common("flowic_mark")),
        fl6_uid: fl6(&common("flowic_uid")),
        fl6_saddr: fl6(&["saddr"]),
        fl6_daddr: fl6(&["daddr"]),
        fl6_uli: fl6(&["uli"]),
        nhc_dev: at("fib_nh_common", &["nhc_dev"]),
        res6_f6i: at("fib6_result", &["f6i"]),
        net_fib6_null_entry: at("net", &["ipv6", "fib6_null_entry"]),
        sk_mark: sk(&["sk_mark"]),
        sk_protocol: sk(&["sk_protocol"]),
        sk_family: sk(&["__sk_common", "skc_family"]),
        sk_state: sk(&["__sk_common", "skc_state"]),
        sk_daddr: sk(&["__sk_common", "skc_daddr"]),
        sk_rcv_saddr: sk(&["__sk_common", "skc_rcv_saddr"]),
        sk_dport: sk(&["__sk_common", "skc_dport"]),
        sk_num: sk(&["__sk_common", "skc_num"]),
        sk_v6_daddr: sk(&["__sk_common", "skc_v6_daddr"]),
        sk_v6_rcv_saddr: sk(&["__sk_common", "skc_v6_rcv_saddr"]),
        _pad: 0,
    }
}

fn apply_format(inv: &mut InventoryConfig, fields: &HashMap<String, u32>) {
    let get = |f: &str| fields.get(f).copied().unwrap_or(NO_OFFSET);
    inv.tp_skaddr = get("skaddr");
    inv.tp_newstate = get("newstate");
    inv.tp_sport = get("sport");
    inv.tp_dport = get("dport");
    inv.tp_family = get("family");
    inv.tp_protocol = get("protocol");
    inv.tp_saddr = get("saddr");
    inv.tp_daddr = get("daddr");
    inv.tp_saddr_v6 = get("saddr_v6");
    inv.tp_daddr_v6 = get("daddr_v6");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux 6.18's events/sock/inet_sock_set_state/format.
    const FORMAT: &str = "name: inet_sock_set_state\nID: 2287\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;\n\
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;\n\
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;\n\
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;\n\
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;\n\
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;\n\
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;\n\
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;\n\
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n\
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;\n\nprint fmt: \"family=%s\"\n";

    #[test]
    fn tracefs_format_gives_the_record_layout() {
        let mut inv = InventoryConfig::EMPTY;
        apply_format(&mut inv, &crate::kernel::tracefs::format_fields(FORMAT));
        assert_eq!((inv.tp_skaddr, inv.tp_newstate), (8, 20));
        assert_eq!((inv.tp_sport, inv.tp_dport), (24, 26));
        assert_eq!((inv.tp_daddr, inv.tp_daddr_v6), (36, 56));
        let mut none = InventoryConfig::EMPTY;
        apply_format(
            &mut none,
            &crate::kernel::tracefs::format_fields("garbage\n\tfield:;offset:x;"),
        );
        assert_eq!(none.tp_newstate, NO_OFFSET);
    }

    /// BTF and tracefs must agree on this kernel (every machine of ours has both).
    #[test]
    fn btf_offsets_on_this_kernel() {
        let btf = Btf::from_file(Path::new(VMLINUX_BTF)).expect("every machine of ours has BTF");
        let inv = offsets(&btf);
        let mut from_format = InventoryConfig::EMPTY;
        apply_format(
            &mut from_format,
            &crate::kernel::tracefs::format_fields(FORMAT),
        );
        assert_eq!(inv.tp_daddr, from_format.tp_daddr);
        assert_eq!(inv.tp_newstate, from_format.tp_newstate);
        for (name, off) in [
            ("fl4_uli", inv.fl4_uli),
            ("fl6_uli", inv.fl6_uli),
            ("nhc_dev", inv.nhc_dev),
            ("sk_protocol", inv.sk_protocol),
            ("sk_state", inv.sk_state),
            ("sk_dport", inv.sk_dport),
            ("sk_v6_daddr", inv.sk_v6_daddr),
            ("net_fib6_null_entry", inv.net_fib6_null_entry),
        ] {
            assert_ne!(off, NO_OFFSET, "{name}");
        }
        // struct flowi4: __fl_common, then saddr and daddr, then uli.
        assert_eq!(inv.fl4_daddr, inv.fl4_saddr + 4);
        assert_eq!(inv.fl4_uli, inv.fl4_daddr + 4);
        // skc_daddr is the first field of struct sock.
        assert_eq!(inv.sk_daddr, 0);
    }
}
