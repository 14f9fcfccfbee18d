//! Reading a drop's kernel stack: which netfilter hook, which engine, which context.
//!
//! `nf_hook_slow()` (net/netfilter/core.c) runs the hook's chains; its caller names the
//! hook, since each hook is invoked from one place per family (`__ip_local_out` is
//! `NF_INET_LOCAL_OUT`, `ip_rcv` is `NF_INET_PRE_ROUTING`, ...). When nf_tables drops,
//! `nft_do_chain_<family>` (net/netfilter/nft_chain_filter.c) is on the stack too and
//! names the table family. Legacy xtables returns NF_DROP from `ipt_do_table`, and
//! `nf_hook_slow` itself frees the packet, so the drop location is `nf_hook_slow` and
//! no nft frame is present.

use serde::Serialize;

pub use tracer_common::netfilter::{Engine, Hook, TableFamily};

/// The engine whose verdict dropped a packet, as the drop's stack shows it: nf_tables with
/// the family whose `nft_do_chain_<family>` ran, or x_tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DropEngine {
    pub engine: Engine,
    /// For nf_tables, the family of the chain that ran.
    pub family: Option<TableFamily>,
}

impl DropEngine {
    pub const XTABLES: DropEngine = DropEngine {
        engine: Engine::Xtables,
        family: None,
    };

    pub const fn nftables(family: TableFamily) -> DropEngine {
        DropEngine {
            engine: Engine::NfTables,
            family: Some(family),
        }
    }

    /// As records name it: `nftables/ip`, `nftables/inet`, ..., or `xtables`.
    pub fn as_str(self) -> &'static str {
        match (self.engine, self.family) {
            (Engine::Xtables, _) => "xtables",
            (Engine::NfTables, None) => "nftables",
            (Engine::NfTables, Some(f)) => match f {
                TableFamily::Ip => "nftables/ip",
                TableFamily::Ip6 => "nftables/ip6",
                TableFamily::Inet => "nftables/inet",
                TableFamily::Bridge => "nftables/bridge",
                TableFamily::Arp => "nftables/arp",
                TableFamily::Netdev => "nftables/netdev",
            },
        }
    }
}

impl Serialize for DropEngine {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Whether the drop ran on behalf of the current task, in softirq (timers, receive), or
/// for a packet the kernel sent of its own accord (neighbour discovery, an ICMP error, a
/// reset): the current task, whichever it is, did not send that one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Context {
    Process,
    Softirq,
    Kernel,
}

/// What a stack says about a drop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackFacts {
    pub hook: Option<Hook>,
    pub engine: Option<DropEngine>,
    pub softirq: bool,
    /// The kernel made the packet itself: what it is (see [`KERNEL_SENDERS`]).
    pub kernel_sender: Option<&'static str>,
}

/// Functions through which the kernel sends packets of its own, whatever task it runs
/// on, and what such a packet is; the innermost found names it (an ICMP error sent for a
/// REJECT is an `icmp error`).
const KERNEL_SENDERS: &[(&str, &str)] = &[
    // net/ipv6/ndisc.c: router and neighbour solicitations, advertisements, redirects.
    ("ndisc_send_skb", "ndisc"),
    // net/ipv6/mcast.c: MLD reports.
    ("mld_sendpack", "mld"),
    ("igmp6_send", "mld"),
    // net/ipv4/igmp.c.
    ("igmpv3_sendpack", "igmp"),
    ("igmp_send_report", "igmp"),
    // net/ipv{4,6}/netfilter/nf_reject_ipv{4,6}.c: a REJECT's reset (its ICMP errors go
    // through icmp_send below).
    ("nf_send_reset", "reject reset"),
    ("nf_send_reset6", "reject reset"),
    // net/ipv4/icmp.c, net/ipv6/icmp.c.
    ("__icmp_send", "icmp error"),
    ("icmp6_send", "icmpv6 error"),
    ("icmp_reply", "icmp reply"),
    ("icmpv6_echo_reply", "icmpv6 reply"),
    // net/ipv4/tcp_ipv4.c, net/ipv6/tcp_ipv6.c: answers to segments no socket takes, and
    // time-wait acks, sent from a per-CPU control socket.
    ("tcp_v4_send_reset", "tcp reset"),
    ("tcp_v6_send_reset", "tcp reset"),
    ("tcp_v4_send_ack", "tcp ack"),
    ("tcp_v6_send_response", "tcp reset or ack"),
    ("ip_send_unicast_reply", "tcp reset or ack"),
];

/// Functions that call `nf_hook_slow`/`nf_hook_slow_list` for one hook (via the inline
/// `nf_hook()`/`NF_HOOK()` of include/linux/netfilter.h).
const HOOK_CALLERS: &[(&str, Hook)] = &[
    ("__ip_local_out", Hook::Output),
    ("__ip6_local_out", Hook::Output),
    ("ip6_xmit", Hook::Output),
    ("raw_send_hdrinc", Hook::Output),
    ("rawv6_send_hdrinc", Hook::Output),
    ("ndisc_send_skb", Hook::Output),
    ("mld_sendpack", Hook::Output),
    ("igmp6_send", Hook::Output),
    ("ip_output", Hook::Postrouting),
    ("ip6_output", Hook::Postrouting),
    ("ip_mc_output", Hook::Postrouting),
    ("ip6_finish_output2", Hook::Postrouting),
    ("ip_forward", Hook::Forward),
    ("ip6_forward", Hook::Forward),
    ("ip_rcv", Hook::Prerouting),
    ("ipv6_rcv", Hook::Prerouting),
    ("ip_sublist_rcv", Hook::Prerouting),
    ("ip_list_rcv", Hook::Prerouting),
    ("ipv6_list_rcv", Hook::Prerouting),
    ("ip6_sublist_rcv", Hook::Prerouting),
    ("ip_local_deliver", Hook::Input),
    ("ip6_input", Hook::Input),
    ("ip_mr_input", Hook::Input),
    ("nf_hook_ingress", Hook::Ingress),
    ("__netif_receive_skb_core", Hook::Ingress),
    ("nf_hook_egress", Hook::Egress),
];

/// Frames that mean the stack runs in softirq, not on behalf of the current task.
const SOFTIRQ_FRAMES: &[&str] = &[
    "handle_softirqs",
    "__do_softirq",
    "do_softirq",
    "run_timer_softirq",
    "net_rx_action",
];

/// Classifies a symbolized stack, innermost frame first.
pub fn classify<'a>(frames: impl IntoIterator<Item = &'a str>) -> StackFacts {
    let mut facts = StackFacts::default();
    let mut after_hook_slow = false;
    for f in frames {
        let f = strip_suffix(f);
        if facts.hook.is_none() {
            if after_hook_slow {
                facts.hook = HOOK_CALLERS.iter().find(|(n, _)| *n == f).map(|(_, h)| *h);
                after_hook_slow = facts.hook.is_none() && !f.starts_with("nf_hook");
            }
            if f == "nf_hook_slow" || f == "nf_hook_slow_list" {
                after_hook_slow = true;
            }
        }
        if facts.engine.is_none() {
            facts.engine = nft_family(f).map(DropEngine::nftables);
        }
        if SOFTIRQ_FRAMES.contains(&f) {
            facts.softirq = true;
        }
        if facts.kernel_sender.is_none() {
            facts.kernel_sender = KERNEL_SENDERS
                .iter()
                .find(|(n, _)| *n == f)
                .map(|(_, w)| *w);
        }
    }
    facts
}

/// The engine when the stack shows none: a drop located in `nf_hook_slow` itself is most
/// likely a legacy xtables verdict, since nf_tables frees the packet inside `nft_do_chain`
/// on recent kernels. Before that (5.10) both end in `nf_hook_slow`, so attribution tries
/// the other engine when this guess finds no dropping rule.
pub fn engine_from_location(location_fn: &str) -> Option<DropEngine> {
    matches!(
        strip_suffix(location_fn),
        "nf_hook_slow" | "nf_hook_slow_list"
    )
    .then_some(DropEngine::XTABLES)
}

fn nft_family(f: &str) -> Option<TableFamily> {
    Some(match f {
        "nft_do_chain_ipv4" => TableFamily::Ip,
        "nft_do_chain_ipv6" => TableFamily::Ip6,
        "nft_do_chain_inet" | "nft_do_chain_inet_ingress" => TableFamily::Inet,
        "nft_do_chain_bridge" => TableFamily::Bridge,
        "nft_do_chain_arp" => TableFamily::Arp,
        "nft_do_chain_netdev" => TableFamily::Netdev,
        _ => return None,
    })
}

/// Compilers clone functions (`ip_rcv.cold`, `__ip_local_out.constprop.0`): compare the base.
fn strip_suffix(f: &str) -> &str {
    f.split_once('.').map_or(f, |(base, _)| base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_output_drop_from_the_sending_process() {
        // As seen on 6.18 for iptables-nft (KERNEL-NOTES).
        let s = classify([
            "sk_skb_reason_drop",
            "nft_do_chain",
            "nft_do_chain_ipv4",
            "nf_hook_slow",
            "__ip_local_out",
            "ip_local_out",
            "__ip_queue_xmit",
            "tcp_connect",
        ]);
        assert_eq!(s.hook, Some(Hook::Output));
        assert_eq!(s.engine, Some(DropEngine::nftables(TableFamily::Ip)));
        assert!(!s.softirq);
    }

    #[test]
    fn legacy_drop_has_no_nft_frame_and_is_located_in_nf_hook_slow() {
        let s = classify([
            "sk_skb_reason_drop",
            "nf_hook_slow",
            "__ip_local_out",
            "ip_send_skb",
            "udp_send_skb",
        ]);
        assert_eq!(s.hook, Some(Hook::Output));
        assert_eq!(s.engine, None);
        assert_eq!(
            engine_from_location("nf_hook_slow"),
            Some(DropEngine::XTABLES)
        );
        assert_eq!(engine_from_location("nft_do_chain"), None);
    }

    #[test]
    fn retransmission_from_a_timer_is_softirq() {
        let s = classify([
            "sk_skb_reason_drop",
            "nft_do_chain",
            "nft_do_chain_inet",
            "nf_hook_slow",
            "ip6_xmit",
            "inet6_csk_xmit",
            "__tcp_transmit_skb",
            "tcp_retransmit_skb",
            "tcp_retransmit_timer",
            "tcp_write_timer_handler",
            "call_timer_fn",
            "run_timer_softirq",
            "handle_softirqs",
        ]);
        assert_eq!(s.hook, Some(Hook::Output));
        assert_eq!(s.engine, Some(DropEngine::nftables(TableFamily::Inet)));
        assert!(s.softirq);
    }

    /// An IPv6 router solicitation from addrconf's timer, dropped by an output policy:
    /// the kernel's own packet, not the interrupted task's.
    #[test]
    fn a_packet_the_kernel_makes_names_what_it_is() {
        let s = classify([
            "nft_do_chain",
            "nft_do_chain_inet",
            "nf_hook_slow",
            "__ip6_local_out",
            "ip6_local_out",
            "ndisc_send_skb",
            "ndisc_send_rs",
            "addrconf_rs_timer",
            "call_timer_fn",
            "run_timer_softirq",
            "handle_softirqs",
        ]);
        assert_eq!(s.hook, Some(Hook::Output));
        assert_eq!(s.kernel_sender, Some("ndisc"));
        // A REJECT's ICMP error: the innermost sender names it.
        let s = classify([
            "nf_hook_slow",
            "__ip_local_out",
            "ip_local_out",
            "ip_push_pending_frames",
            "__icmp_send",
            "nf_send_unreach",
            "reject_tg",
        ]);
        assert_eq!(s.kernel_sender, Some("icmp error"));
        assert_eq!(
            classify(["nf_hook_slow", "__ip_local_out"]).kernel_sender,
            None
        );
    }

    #[test]
    fn input_and_prerouting_and_forward() {
        let hook = |caller: &str| classify(["nft_do_chain", "nf_hook_slow", caller]).hook;
        assert_eq!(hook("ip_local_deliver"), Some(Hook::Input));
        assert_eq!(hook("ip6_input"), Some(Hook::Input));
        assert_eq!(hook("ip_rcv"), Some(Hook::Prerouting));
        assert_eq!(hook("ip_forward"), Some(Hook::Forward));
        assert_eq!(hook("ip_output"), Some(Hook::Postrouting));
        assert_eq!(hook("ip_rcv.cold"), Some(Hook::Prerouting));
        assert_eq!(hook("something_new"), None);
    }

    #[test]
    fn no_netfilter_frames_means_no_hook() {
        let s = classify([
            "sk_skb_reason_drop",
            "tcp_v4_rcv",
            "ip_protocol_deliver_rcu",
        ]);
        assert_eq!(s, StackFacts::default());
    }
}
