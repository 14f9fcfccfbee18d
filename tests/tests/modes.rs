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

#[test]
fn perf_buffers_as_on_kernels_before_5_8() {
    run_mode(
        &["--buffer", "perf"],
        "tp_btf/kfree_skb, records through perf buffers",
    );
}

/// What a 4.x-era kernel gets: no tp_btf, no drop reasons, no ring buffer.
#[test]
fn every_fallback_at_once() {
    run_mode(
        &[
            "--attach",
            "tracepoint",
            "--detect",
            "location",
            "--buffer",
            "perf",
        ],
        "tracepoint/skb/kfree_skb, netfilter drops recognised by location, records through perf buffers",
    );
}

/// `--kernel-verdicts on` needs kprobes: where the kernel has none (this machine) it is a
/// one-line error naming why; where it has them, the start line names what is watched.
#[test]
fn kernel_verdicts_on_requires_kprobes() {
    let t = Topology::new().unwrap();
    let has_kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    if has_kprobes {
        let w = Watcher::start_checked(
            &[
                "watch",
                "--netns",
                &t.client.name,
                "--kernel-verdicts",
                "on",
            ],
            |start| {
                let v = start["kernel_verdicts"].as_str().unwrap_or_default();
                assert!(v.contains("nft_do_chain"), "{start}");
            },
        )
        .unwrap();
        w.stop().unwrap();
        return;
    }
    let (code, out, err) = droptrace_tests::droptrace_output(&[
        "watch",
        "--netns",
        &t.client.name,
        "--kernel-verdicts",
        "on",
        "--duration",
        "1s",
    ])
    .unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("verdicts cannot be watched") && err.contains("CONFIG_KPROBES is off"),
        "{err}"
    );
}

/// Kernels built without BTF: offsets from a BTF file (as BTFHub ships them), the
/// classic tracepoint, and drops recognised by location. The file here is a copy of this
/// kernel's own BTF, at a path droptrace knows nothing about.
#[test]
fn btf_from_a_file_as_on_kernels_without_btf() {
    let file = std::env::temp_dir().join(format!("droptrace-test-{}.btf", std::process::id()));
    std::fs::copy("/sys/kernel/btf/vmlinux", &file).unwrap();
    let path = file.to_string_lossy().into_owned();
    run_mode(
        &[
            "--btf",
            &path,
            "--attach",
            "tracepoint",
            "--detect",
            "location",
        ],
        "tracepoint/skb/kfree_skb, netfilter drops recognised by location",
    );
    std::fs::remove_file(&file).unwrap();

    let (code, _, err) = droptrace_tests::droptrace_output(&[
        "watch",
        "--btf",
        "/nonexistent/vmlinux.btf",
        "--duration",
        "1s",
    ])
    .unwrap();
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        err.trim(),
        "droptrace: error: no BTF file at /nonexistent/vmlinux.btf"
    );
}
