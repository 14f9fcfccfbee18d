//! Every capture mode, forced by flags, on this kernel: the fallbacks used on older
//! kernels (classic tracepoint, recognising netfilter drops by location) are exercised
//! here, not only under qemu.

use droptrace_tests::{Topology, Watcher, drops, packets, summary};

fn run_mode(extra: &[&str], expected_mode: &str) {
    let t = Topology::new().unwrap();
    t.client
        .exec(&[
            "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "8443", "-j", "DROP",
        ])
        .unwrap();
    t.client
        .exec(&[
            "iptables-legacy",
            "-A",
            "OUTPUT",
            "-p",
            "udp",
            "--dport",
            "9090",
            "-j",
            "DROP",
        ])
        .unwrap();
    let mut args = vec!["watch", "--netns", &t.client.name];
    args.extend_from_slice(extra);
    let w = Watcher::start_checked(&args, |start| {
        assert_eq!(start["mode"], expected_mode, "{start}");
    })
    .unwrap();
    t.client.udp_send(t.gateway_addr(8443), 4).unwrap();
    t.client.udp_send(t.gateway_addr(9090), 3).unwrap();
    // Not dropped by netfilter: must not appear.
    t.client.udp_send(t.gateway_addr(5044), 2).unwrap();
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    let nft: Vec<_> = d.iter().copied().filter(|v| v["dport"] == 8443).collect();
    let legacy: Vec<_> = d.iter().copied().filter(|v| v["dport"] == 9090).collect();
    assert_eq!(packets(&nft), 4, "{extra:?}: {d:?}");
    assert_eq!(packets(&legacy), 3, "{extra:?}: {d:?}");
    assert!(
        nft.iter()
            .all(|v| v["engine"] == "nftables/ip" && v["hook"] == "OUTPUT")
    );
    assert!(
        legacy
            .iter()
            .all(|v| v["engine"] == "xtables" && v["hook"] == "OUTPUT")
    );
    assert!(d.iter().all(|v| v["reason"] == "NETFILTER_DROP"));
    assert_eq!(summary(&lines)["total"], 7);
}

#[test]
fn tp_btf_by_reason() {
    run_mode(
        &["--attach", "tp-btf", "--detect", "reason"],
        "tp_btf/kfree_skb",
    );
}

#[test]
fn classic_tracepoint_by_reason() {
    run_mode(
        &["--attach", "tracepoint", "--detect", "reason"],
        "tracepoint/skb/kfree_skb",
    );
}

#[test]
fn tp_btf_by_location_as_on_kernels_without_drop_reasons() {
    run_mode(
        &["--attach", "tp-btf", "--detect", "location"],
        "tp_btf/kfree_skb, netfilter drops recognised by location",
    );
}

#[test]
fn classic_tracepoint_by_location_as_on_5_10() {
    run_mode(
        &["--attach", "tracepoint", "--detect", "location"],
        "tracepoint/skb/kfree_skb, netfilter drops recognised by location",
    );
}

#[test]
fn auto_picks_tp_btf_by_reason_here() {
    run_mode(&[], "tp_btf/kfree_skb");
}
