//! After attaching, droptrace keeps only the capabilities the rest of a capture needs
//! (tracer/src/privileges.rs): checked on the running process's real capability sets.

use droptrace_tests::{Topology, Watcher};

/// A capability set from /proc/PID/status (`CapEff:\t000001fffeffffff`).
fn set(status: &str, name: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {status}"));
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

const CAP_SETUID: u32 = 7;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_MODULE: u32 = 16;
const CAP_SYS_RAWIO: u32 = 17;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[test]
fn capabilities_are_dropped_after_attach() {
    // The test means something only if droptrace starts with what it must give up.
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    for bit in [CAP_BPF, CAP_PERFMON, CAP_SYS_MODULE] {
        assert_ne!(
            set(&ours, "CapEff:") & (1 << bit),
            0,
            "the test runs without cap {bit}"
        );
    }
    let t = Topology::new().unwrap();
    // The start line comes after the programs are attached and the capabilities dropped.
    let w = Watcher::start(&["watch", "--netns", &t.client.name]).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.pid())).unwrap();
    for name in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let caps = set(&status, name);
        for (bit, what) in [
            (CAP_BPF, "CAP_BPF"),
            (CAP_PERFMON, "CAP_PERFMON"),
            (CAP_SYS_MODULE, "CAP_SYS_MODULE"),
            (CAP_SYS_RAWIO, "CAP_SYS_RAWIO"),
            (CAP_SETUID, "CAP_SETUID"),
        ] {
            assert_eq!(caps & (1 << bit), 0, "{name} still holds {what}: {status}");
        }
        for (bit, what) in [
            (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
            (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        ] {
            assert_ne!(
                caps & (1 << bit),
                0,
                "{name} lost {what}, still needed: {status}"
            );
        }
    }
    w.stop().unwrap();
}

/// Without privileges the error is the one line that says what is missing, with nothing
/// before it (a warning about hidden kernel addresses used to come first).
#[test]
fn an_unprivileged_run_says_only_what_is_missing() {
    let bin = droptrace_tests::droptrace_bin();
    // A copy anyone may run: the build directory under /root is not searchable by nobody.
    let copy = std::env::temp_dir().join(format!("droptrace-unprivileged-{}", std::process::id()));
    std::fs::copy(&bin, &copy).unwrap();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&copy)
        .args(["watch", "--duration", "1s"])
        .output()
        .unwrap();
    std::fs::remove_file(&copy).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("droptrace: error: missing capabilities: CAP_BPF"),
        "{stderr}"
    );
}
