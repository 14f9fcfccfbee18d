//! The drop record droptrace prints: a kernel [`Drop`] enriched with what userspace knows
//! (hook and engine from the stack, namespace name, the process behind the socket, the
//! reason's name). This is the one type both output formats render, so text and JSON
//! never disagree.

pub mod rule;

use std::net::IpAddr;

use serde::Serialize;

use crate::kernel::{
    drop::CtInfo,
    stack::{Context, DropEngine, Hook},
};

/// One line of output: a dropped packet, or `count` identical ones.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DropRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Wall-clock time of the (first) drop, RFC 3339.
    pub time: String,
    #[serde(skip)]
    pub ts_ns: u64,
    /// The aggregate the kernel counted this line's drops in (see `session::beyond`).
    #[serde(skip)]
    pub aggregate: Option<tracer_common::AggKey>,
    pub netns: u32,
    pub netns_name: Option<String>,
    /// For a namespace without a name: a process inside it (its /proc/PID/ns/net).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns_pid: Option<u32>,
    /// The interface the hook is about: input for PREROUTING/INPUT, output otherwise.
    pub ifname: String,
    pub family: &'static str,
    pub proto: String,
    pub src: IpAddr,
    pub sport: Option<u16>,
    pub dst: IpAddr,
    pub dport: Option<u16>,
    /// Reverse DNS name of `dst` (`--resolve`), once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_name: Option<String>,
    pub tcp_flags: Option<String>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    pub len: u32,
    pub mark: u32,
    /// The connection's mark (`nf_conn.mark`), when the packet had a connection and the
    /// kernel's was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ct_mark: Option<u32>,
    pub ct_state: CtInfo,
    pub reason: String,
    pub hook: Option<Hook>,
    pub engine: Option<DropEngine>,
    /// Kernel function that freed the packet.
    pub location: String,
    pub context: Context,
    /// With `context` `kernel`: the packet the kernel sent (`ndisc`, `icmp error`,
    /// `tcp reset`, ...), when its stack tells.
    pub kernel_sender: Option<&'static str>,
    /// Sender process; `None` (and comm `unknown`) when the drop ran in softirq and the
    /// socket's owner was never seen. For an incoming packet without a socket (INPUT), the
    /// owner of the local socket it was for, with `receiver` set.
    pub pid: Option<u32>,
    pub comm: String,
    /// `pid`/`comm` are the receiving process (the local socket the packet was for), not
    /// the sender.
    pub receiver: bool,
    /// The sender's full command line, cgroup, and container or systemd unit.
    pub cmdline: Option<String>,
    pub cgroup: Option<String>,
    pub container: Option<String>,
    pub uid: Option<u32>,
    /// The socket owner's group: the sending process's filesystem gid, when the packet
    /// has a socket and its process is known.
    pub gid: Option<u32>,
    /// Packets this line stands for (>= 1).
    pub count: u64,
    /// Their bytes (`skb->len`, from the network header on, as a rule's byte counter
    /// counts them).
    pub bytes: u64,
    /// Which rule dropped it (absent when attribution is off).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub rule: Option<rule::Attribution>,
    #[serde(skip)]
    pub headers: Vec<u8>,
    /// Both devices and the raw TCP flags, for the rule engine.
    #[serde(skip)]
    pub in_ifname: String,
    #[serde(skip)]
    pub out_ifname: String,
    #[serde(skip)]
    pub tcp_flags_raw: Option<u8>,
    /// The rule engine's own verdict for this packet, when the kernel reported it.
    #[serde(skip)]
    pub kernel: Option<crate::kernel::verdicts::KernelSaw>,
    /// `engine` is a guess from the drop's location alone (no engine frame in the stack).
    #[serde(skip)]
    pub engine_guessed: bool,
    /// The packet had a socket (`skb->sk`): owner matches apply to it.
    #[serde(skip)]
    pub has_socket: bool,
}

impl DropRecord {
    /// `dst:dport` (IPv6 in brackets), or the bare address for port-less protocols.
    pub fn destination(&self) -> String {
        endpoint(self.dst, self.dport)
    }

    pub fn source(&self) -> String {
        endpoint(self.src, self.sport)
    }

    /// The kernel made the packet itself (see [`Context::Kernel`]): no process sent it.
    pub fn sent_by_kernel(&self) -> bool {
        self.context == Context::Kernel
    }

    /// The rule that dropped it, in words, when attributed.
    /// What dropped its packets, in words: the rule when known, else hook and engine.
    pub fn dropped_by(&self) -> String {
        if let Some(rule) = self.rule.as_ref().and_then(|a| a.summary_label()) {
            return rule;
        }
        let hook = self.hook.map_or("?", |h| h.as_str());
        match self.engine {
            Some(e) => format!("{hook} ({})", e.as_str()),
            None => hook.to_string(),
        }
    }

    pub fn rule_label(&self) -> Option<String> {
        self.rule.as_ref().and_then(|a| a.label())
    }
}

pub fn endpoint(addr: IpAddr, port: Option<u16>) -> String {
    match (addr, port) {
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record as the enricher would build it, for renderer tests.
    pub fn sample() -> DropRecord {
        DropRecord {
            kind: "drop",
            time: "2026-11-24T10:30:00.123456789Z".into(),
            ts_ns: 1,
            aggregate: None,
            netns: 4026532300,
            netns_name: Some("client".into()),
            netns_pid: None,
            ifname: "veth-c".into(),
            family: "ipv4",
            proto: "tcp".into(),
            src: "198.51.100.2".parse().unwrap(),
            sport: Some(40000),
            dst: "203.0.113.10".parse().unwrap(),
            dport: Some(8443),
            dst_name: None,
            tcp_flags: Some("S".into()),
            icmp_type: None,
            icmp_code: None,
            len: 60,
            mark: 0,
            ct_mark: None,
            ct_state: CtInfo::NEW,
            reason: "NETFILTER_DROP".into(),
            hook: Some(Hook::Output),
            engine: Some(DropEngine::nftables(crate::kernel::stack::TableFamily::Ip)),
            location: "nft_do_chain".into(),
            context: Context::Process,
            kernel_sender: None,
            pid: Some(812),
            comm: "java".into(),
            receiver: false,
            cmdline: Some("java -jar payments.jar".into()),
            cgroup: Some("/system.slice/payments.service".into()),
            container: Some("payments.service".into()),
            uid: Some(0),
            gid: Some(0),
            count: 1,
            bytes: 60,
            rule: None,
            headers: vec![],
            in_ifname: String::new(),
            out_ifname: "veth-c".into(),
            tcp_flags_raw: Some(0x02),
            kernel: None,
            engine_guessed: false,
            has_socket: true,
        }
    }

    #[test]
    fn endpoints_bracket_ipv6() {
        assert_eq!(
            endpoint("2001:db8::1".parse().unwrap(), Some(443)),
            "[2001:db8::1]:443"
        );
        assert_eq!(
            endpoint("203.0.113.10".parse().unwrap(), None),
            "203.0.113.10"
        );
    }

    #[test]
    fn json_carries_the_documented_fields() {
        let v = serde_json::to_value(sample()).unwrap();
        for k in [
            "type", "time", "netns", "ifname", "family", "proto", "src", "sport", "dst", "dport",
            "reason", "hook", "pid", "comm", "count",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["type"], "drop");
        assert_eq!(v["hook"], "OUTPUT");
        assert_eq!(v["dst"], "203.0.113.10");
    }
}
