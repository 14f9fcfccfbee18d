//! A dropped packet as userspace sees it: the raw kernel record decoded into owned,
//! typed fields, before any enrichment (hook, process, rule).

use std::net::IpAddr;

use tracer_common::{
    DropEvent, FlowKey, FlowState, flags,
    netfilter::{icmp_of_port, icmp_port, ipproto},
};

use crate::kernel::program::c_string;

pub use tracer_common::netfilter::CtInfo;

/// A flow's counts as the kernel keeps them: packets and bytes (`skb->len`, from the
/// network header on, as the rules' own byte counters count them), cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub packets: u64,
    pub bytes: u64,
}

impl Tally {
    pub fn of(state: &FlowState) -> Tally {
        Tally {
            packets: state.count,
            bytes: state.bytes,
        }
    }

    /// What `self` has beyond `earlier` (nothing when it has not grown).
    pub fn since(self, earlier: Tally) -> Tally {
        Tally {
            packets: self.packets.saturating_sub(earlier.packets),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drop {
    /// The kernel's per-flow key of this packet.
    pub key: FlowKey,
    /// The flow's cumulative counts when this record was written.
    pub cumulative: Tally,
    pub ts_ns: u64,
    pub location: u64,
    pub netns: u32,
    pub ifindex: u32,
    pub ifname: String,
    pub out_ifindex: u32,
    pub out_ifname: String,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub socket: Option<u64>,
    pub uid: Option<u32>,
    pub reason: u32,
    pub mark: u32,
    /// The connection's mark, when the packet had a connection and the kernel's was read.
    pub ct_mark: Option<u32>,
    pub len: u32,
    /// The kernel stack of the drop, innermost frame first (empty when not taken).
    pub stack: Vec<u64>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// Ports when the protocol has them (TCP, UDP, SCTP).
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub tcp_flags: Option<u8>,
    pub icmp: Option<(u8, u8)>,
    pub ct_state: CtInfo,
    pub fragment: bool,
    /// The packet from its network header on, when capture was asked for.
    pub headers: Vec<u8>,
    /// The table (and nftables chain) whose engine returned the drop, when the verdict
    /// programs saw it.
    pub kernel: Option<crate::kernel::verdicts::KernelSaw>,
    /// The aggregate the kernel counts this flow's drops in.
    pub aggregate: tracer_common::AggKey,
    /// Whether `stack` is the one the flow's site was taken from (the flow's first
    /// record): then the site's hook can be learnt from it.
    pub stack_is_sites: bool,
}

pub use tracer_common::netfilter::ip_addr;

impl From<&DropEvent> for Drop {
    fn from(e: &DropEvent) -> Self {
        let (src, dst) = (ip_addr(e.family, &e.saddr), ip_addr(e.family, &e.daddr));
        let has_l4 = e.flags & flags::HAS_L4 != 0;
        let ports = has_l4 && tracer_common::has_ports(e.proto);
        let headers_len = usize::from(e.headers_len).min(e.headers.len());
        let icmp = ipproto::is_icmp(e.proto);
        let key = FlowKey {
            saddr: e.saddr,
            daddr: e.daddr,
            location: e.location,
            netns: e.netns,
            reason: e.reason,
            sport: if icmp {
                icmp_port(e.icmp_type, e.icmp_code)
            } else {
                e.sport
            },
            dport: e.dport,
            family: e.family,
            proto: e.proto,
            tcp_flags: e.tcp_flags,
            ct_info: e.ct_info,
        };
        Drop {
            key,
            cumulative: Tally {
                packets: e.count,
                bytes: e.bytes,
            },
            ts_ns: e.ts_ns,
            location: e.location,
            netns: e.netns,
            ifindex: e.ifindex,
            ifname: c_string(&e.ifname),
            out_ifindex: e.out_ifindex,
            out_ifname: c_string(&e.out_ifname),
            pid: e.pid,
            tid: e.tid,
            comm: c_string(&e.comm),
            socket: (e.flags & flags::HAS_SOCKET != 0).then_some(e.sk),
            uid: (e.flags & flags::HAS_UID != 0).then_some(e.uid),
            reason: e.reason,
            mark: e.mark,
            // Read where the packet has a connection (and the kernel the field: the
            // capture clears it otherwise).
            ct_mark: (e.ct_info != tracer_common::CT_NONE).then_some(e.ct_mark),
            len: e.len,
            stack: {
                let frames = usize::try_from(e.stack_bytes).unwrap_or(0) / 8;
                e.stack[..frames.min(e.stack.len())].to_vec()
            },
            src,
            dst,
            proto: e.proto,
            sport: ports.then_some(e.sport),
            dport: ports.then_some(e.dport),
            tcp_flags: (has_l4 && e.proto == ipproto::TCP).then_some(e.tcp_flags),
            icmp: (has_l4 && icmp).then_some((e.icmp_type, e.icmp_code)),
            ct_state: CtInfo(e.ct_info),
            fragment: e.flags & flags::FRAGMENT != 0,
            headers: e.headers[..headers_len].to_vec(),
            kernel: crate::kernel::verdicts::KernelSaw::from_record(&e.kernel),
            aggregate: tracer_common::AggKey::of(&key, e.site),
            stack_is_sites: e.stack_bytes > 0 && tracer_common::site_of(&e.stack) == e.site,
        }
    }
}

impl Drop {
    /// A drop known only from the kernel's flow table: its records never reached us
    /// (ring buffer full), but its key and first packet's task are known.
    pub fn from_flow(key: &FlowKey, state: &FlowState) -> Self {
        let mut e = DropEvent {
            count: state.count,
            bytes: state.bytes,
            ts_ns: state.first_ns,
            location: key.location,
            sk: 0,
            netns: key.netns,
            ifindex: 0,
            out_ifindex: 0,
            pid: state.pid,
            tid: state.pid,
            uid: state.uid,
            reason: key.reason,
            mark: 0,
            len: 0,
            stack_bytes: -1,
            saddr: key.saddr,
            daddr: key.daddr,
            sport: key.sport,
            dport: key.dport,
            family: key.family,
            proto: key.proto,
            tcp_flags: key.tcp_flags,
            icmp_type: icmp_of_port(key.sport).0,
            icmp_code: icmp_of_port(key.sport).1,
            ct_info: key.ct_info,
            flags: flags::HAS_L4
                | if state.uid == u32::MAX {
                    0
                } else {
                    flags::HAS_UID
                },
            _pad: 0,
            headers_len: 0,
            _pad2: 0,
            site: state.site,
            ct_mark: 0,
            comm: state.comm,
            ifname: [0; 16],
            out_ifname: [0; 16],
            kernel: tracer_common::KernelVerdict::NONE,
            stack: [0; tracer_common::STACK_FRAMES],
            headers: [0; tracer_common::HEADER_BYTES],
        };
        if ipproto::is_icmp(key.proto) {
            e.sport = 0;
        }
        // The flow table keeps no connection mark.
        Drop {
            ct_mark: None,
            ..Drop::from(&e)
        }
    }
}

/// TCP flags as tcpdump prints them: `S`, `S.`, `R.`, `F.`, `P.`.
pub fn tcp_flags_text(f: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x20, 'U'),
        (0x40, 'E'),
        (0x80, 'W'),
    ] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    if f & 0x10 != 0 {
        s.push('.');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{AF_INET, HEADER_BYTES};

    /// The names docs/output.md documents for `ct_state`.
    #[test]
    fn ct_states_serialize_as_documented() {
        let names: Vec<String> = (0..=5)
            .map(|info| {
                let state = CtInfo(info);
                let json = serde_json::to_value(state).unwrap();
                assert_eq!(json, state.as_str(), "text and JSON name it alike");
                json.as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(
            names,
            [
                "established",
                "related",
                "new",
                "established_reply",
                "related_reply",
                "none"
            ]
        );
    }

    fn raw() -> DropEvent {
        DropEvent {
            count: 1,
            bytes: 60,
            ts_ns: 1,
            location: 0xffff_ffff_8100_0000,
            sk: 0xffff_8880_1234_0000,
            netns: 4026531840,
            ifindex: 2,
            out_ifindex: 3,
            pid: 812,
            tid: 813,
            uid: 1000,
            reason: 12,
            mark: 0,
            len: 60,
            stack_bytes: -14,
            saddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [203, 0, 113, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport: 40000,
            dport: 8443,
            family: AF_INET,
            proto: 6,
            tcp_flags: 0x02,
            icmp_type: 0,
            icmp_code: 0,
            ct_info: 2,
            flags: flags::HAS_L4 | flags::HAS_SOCKET,
            _pad: 0,
            headers_len: 0,
            _pad2: 0,
            site: 0,
            ct_mark: 0,
            comm: *b"java\0\0\0\0\0\0\0\0\0\0\0\0",
            ifname: [0; 16],
            out_ifname: *b"veth0\0\0\0\0\0\0\0\0\0\0\0",
            kernel: tracer_common::KernelVerdict::NONE,
            stack: [0xffff_ffff_8100_1000; tracer_common::STACK_FRAMES],
            headers: [0; HEADER_BYTES],
        }
    }

    #[test]
    fn keeps_the_stack_frames_the_kernel_wrote() {
        let mut e = raw();
        e.stack_bytes = 16;
        assert_eq!(Drop::from(&e).stack, vec![0xffff_ffff_8100_1000; 2]);
        e.stack_bytes = i32::MAX;
        assert_eq!(Drop::from(&e).stack.len(), tracer_common::STACK_FRAMES);
    }

    #[test]
    fn decodes_a_tcp_syn() {
        let d = Drop::from(&raw());
        assert_eq!(d.dst.to_string(), "203.0.113.10");
        assert_eq!(d.dport, Some(8443));
        assert_eq!(d.tcp_flags.map(tcp_flags_text).as_deref(), Some("S"));
        assert_eq!(d.comm, "java");
        assert_eq!(d.out_ifname, "veth0");
        assert_eq!(d.ifname, "");
        assert!(d.stack.is_empty());
        assert_eq!(d.uid, None);
        assert_eq!(d.ct_state, CtInfo::NEW);
        assert!(d.socket.is_some());
        assert_eq!(d.key.dport, 8443);
        assert_eq!(d.cumulative.packets, 1);
    }

    #[test]
    fn a_flow_known_only_from_the_kernel_table_decodes() {
        let d = Drop::from(&raw());
        let state = FlowState {
            count: 9,
            bytes: 540,
            first_ns: 5,
            last_emit_ns: 5,
            pid: 812,
            uid: 0,
            comm: *b"java\0\0\0\0\0\0\0\0\0\0\0\0",
            site: 7,
            _pad: 0,
        };
        let f = Drop::from_flow(&d.key, &state);
        assert_eq!(f.key, d.key);
        assert_eq!(f.dport, Some(8443));
        assert_eq!(f.comm, "java");
        assert_eq!(f.cumulative.packets, 9);
        // A record has its connection's mark; the flow table keeps none.
        assert_eq!(d.ct_mark, Some(0));
        assert_eq!(f.ct_mark, None);
    }

    /// A packet without a connection has no connection mark to report.
    #[test]
    fn the_connection_mark_needs_a_connection() {
        let mut e = raw();
        e.ct_mark = 0x20;
        assert_eq!(Drop::from(&e).ct_mark, Some(0x20));
        e.ct_info = tracer_common::CT_NONE;
        assert_eq!(Drop::from(&e).ct_mark, None);
    }

    #[test]
    fn icmp_has_no_ports() {
        let mut e = raw();
        e.proto = 1;
        e.icmp_type = 8;
        let d = Drop::from(&e);
        assert_eq!(d.sport, None);
        assert_eq!(d.icmp, Some((8, 0)));
    }

    #[test]
    fn tcp_flag_text_matches_tcpdump() {
        assert_eq!(tcp_flags_text(0x12), "S.");
        assert_eq!(tcp_flags_text(0x14), "R.");
        assert_eq!(tcp_flags_text(0x18), "P.");
    }
}
