//! The kernel's BPF run-time statistics of the tracers' programs on kfree_skb: what the
//! diagnostic runs read to say how many ns a drop costs in the program.

use std::{
    collections::HashSet,
    io,
    os::fd::{FromRawFd as _, OwnedFd},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::libc;

use super::say;

/// Turns on the kernel's BPF run-time statistics (`bpf(BPF_ENABLE_STATS)`) until the
/// returned fd is closed. Reference-counted by the kernel: it never turns off statistics
/// someone else enabled, and they stop by themselves if the bench dies. `None` (with a
/// note) if the kernel refuses.
pub(super) fn bpf_stats() -> anyhow::Result<Option<OwnedFd>> {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    const BPF_STATS_RUN_TIME: u32 = 0;
    let attr: [u32; 2] = [BPF_STATS_RUN_TIME, 0];
    // SAFETY: attr is a valid `union bpf_attr` prefix of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_ptr(),
            size_of_val(&attr),
        )
    };
    if fd < 0 {
        say(&format!(
            "no BPF run-time statistics ({}): diagnostics skipped",
            io::Error::last_os_error()
        ));
        return Ok(None);
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// Loaded BPF programs on kfree_skb (droptrace's and bpftrace's are all named kfree_skb*),
/// with their run-time statistics (zero unless enabled): id -> (run_time_ns, run_cnt).
pub(super) fn kfree_skb_progs() -> anyhow::Result<Vec<(u64, u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .context("cannot run bpftool")?;
    let progs: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("bpftool -j prog show")?;
    Ok(progs
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("kfree_skb"))
        })
        .filter_map(|p| {
            Some((
                p["id"].as_u64()?,
                p["run_time_ns"].as_u64().unwrap_or(0),
                p["run_cnt"].as_u64().unwrap_or(0),
            ))
        })
        .collect())
}

/// Waits (up to 3 s) for the previous run's programs to be gone: the kernel frees a
/// program some time after its last fd is closed, and a run should not start beside one.
pub(super) fn settle() -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(3);
    while !kfree_skb_progs()?.is_empty() && Instant::now() < until {
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The programs a tracer loaded (those not in `before`) and their summed statistics.
pub(super) struct ProgStats {
    ids: HashSet<u64>,
}

impl ProgStats {
    pub(super) fn new_since(before: &HashSet<u64>) -> anyhow::Result<ProgStats> {
        let ids = kfree_skb_progs()?
            .into_iter()
            .map(|p| p.0)
            .filter(|id| !before.contains(id))
            .collect();
        Ok(ProgStats { ids })
    }
    /// (run_time_ns, run_cnt) summed over the tracer's programs.
    pub(super) fn read(&self) -> anyhow::Result<(u64, u64)> {
        Ok(kfree_skb_progs()?
            .into_iter()
            .filter(|p| self.ids.contains(&p.0))
            .fold((0, 0), |(t, n), p| (t + p.1, n + p.2)))
    }
}
