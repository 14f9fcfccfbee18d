//! `droptrace doctor` on this machine's kernel: every program loaded (or unavailable, with
//! why), its figures within the margins, the namespace's backends named, exit codes that
//! follow what is lost, and nothing left loaded afterwards.

use std::process::Command;

use droptrace_tests::{Netns, droptrace_bin, lasting_orphans};
use serde_json::Value;

fn doctor(args: &[&str], env: &[(&str, &str)]) -> (i32, Value) {
    let out = Command::new(droptrace_bin())
        .arg("doctor")
        .arg("--json")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("droptrace runs");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

#[test]
fn every_program_loads_here_within_the_margins() {
    let ns = Netns::new("doctor").unwrap();
    ns.exec(&[
        "iptables", "-A", "OUTPUT", "-p", "tcp", "--dport", "8443", "-j", "DROP",
    ])
    .unwrap();
    ns.exec(&["iptables-legacy", "-A", "INPUT", "-j", "ACCEPT"])
        .unwrap();
    let (code, r) = doctor(&["--netns", &ns.name], &[]);
    assert_eq!(code, 0, "{:#}", r["problems"]);
    assert_eq!(r["health"], "ok");
    let programs = r["programs"].as_array().unwrap();
    let names: Vec<&str> = programs
        .iter()
        .map(|p| p["program"].as_str().unwrap())
        .collect();
    for expected in [
        "kfree_skb",
        "kfree_skb_tp",
        "inventory_tcp",
        "inventory_route4",
        "inventory_route6",
        "inventory_send",
        "attempt_passed",
        "nft_do_chain_entry",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} not reported: {names:?}"
        );
    }
    let budget = r["limits"]["stack_budget"].as_u64().unwrap();
    let insn_budget = r["limits"]["insn_budget"].as_u64().unwrap();
    for p in programs {
        match p["status"].as_str().unwrap() {
            "loaded" => {
                let n = p["verified_insns"]
                    .as_u64()
                    .expect("6.18 reports verified_insns");
                assert!(n > 0 && n <= insn_budget, "{p}");
            }
            // Only the kprobe verdict programs, on this kernel without kprobes.
            "unavailable" => assert!(p["why"].as_str().unwrap().contains("CONFIG_KPROBES"), "{p}"),
            other => panic!("{other}: {p}"),
        }
        let combined = p["stack"]["combined"].as_u64().unwrap();
        assert!(combined <= budget, "{p}");
    }
    assert_eq!(r["attach_path"], "tp_btf/kfree_skb, ring buffer");
    let n = &r["namespaces"][0];
    assert_eq!(n["netns"], ns.name.as_str());
    assert!(
        n["nftables_tables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "ip filter"),
        "{n}"
    );
    assert!(
        n["legacy_tables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "ip filter"),
        "{n}"
    );
    // Loaded and unloaded: no program of droptrace's stays in the kernel without a process
    // holding it (freed after an RCU grace period: a moment's wait).
    let orphans = lasting_orphans(std::time::Duration::from_secs(10));
    assert!(orphans.is_empty(), "left in the kernel: {orphans:?}");
}

#[test]
fn a_refused_optional_program_degrades_and_no_drop_program_breaks() {
    let (code, r) = doctor(&[], &[("DROPTRACE_TEST_REFUSE_PROGRAMS", "inventory_tcp")]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["health"], "degraded");
    let tcp = r["programs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["program"] == "inventory_tcp")
        .unwrap();
    assert_eq!(tcp["status"], "refused", "{tcp}");
    assert!(
        r["problems"][0]
            .as_str()
            .unwrap()
            .contains("inventory_tcp refused"),
        "{:#}",
        r["problems"]
    );

    let (code, r) = doctor(
        &[],
        &[("DROPTRACE_TEST_REFUSE_PROGRAMS", "kfree_skb,kfree_skb_tp")],
    );
    assert_eq!(code, 2, "{r:#}");
    assert_eq!(r["health"], "broken");
    assert!(r["attach_path"].is_null());
}

#[test]
fn a_file_that_is_no_namespace_is_said_to_be_one() {
    let (code, r) = doctor(&["--netns", "/etc/passwd"], &[]);
    assert_eq!(code, 1, "{r:#}");
    assert!(
        r["namespaces"][0]["error"]
            .as_str()
            .unwrap()
            .contains("is not a network namespace"),
        "{r:#}"
    );
}
