//! A process's resident memory and CPU time, from /proc: what the soak and the scan print.

use anyhow::Context as _;

/// RSS in MiB and user+system CPU time in seconds of process `pid`.
pub fn usage(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name's closing parenthesis: utime and stime are the
    // 12th and 13th (proc(5) fields 14 and 15), in clock ticks.
    let after = stat.rsplit_once(')').context("bad /proc/PID/stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok((rss_kb / 1024.0, ticks / hz))
}

/// User+system CPU time in seconds of process `pid` and of its children it has reaped
/// (the tools droptrace runs), as wait4 counts it at the exit.
pub fn cpu_with_children(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("bad /proc/PID/stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime, stime, cutime, cstime: proc(5) fields 14 to 17.
    let mut ticks = 0.0;
    for f in &fields[11..15] {
        ticks += f.parse::<f64>()?;
    }
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok(ticks / hz)
}
