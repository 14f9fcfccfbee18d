//! A namespace's xt_recent lists (`-m recent`, ufw's `limit`) with the kernel's clock:
//! /proc/net/xt_recent/NAME, read from a thread in the namespace (its /proc/thread-self/net
//! is the namespace's), and `jiffies` from /proc/timer_list, the only place the kernel
//! prints it. The lists' stamps are jiffies; a window of `--seconds` needs the tick rate
//! (CONFIG_HZ): from the kernel's config in /boot where it is there, else measured.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, BufRead as _},
    path::Path,
    time::Duration,
};

use ruleset::recent::{RecentLists, parse_list};

/// The tick rates Linux offers (kernel/Kconfig.hz); a measured rate is taken as the
/// nearest of them.
const TICK_RATES: [u32; 4] = [100, 250, 300, 1000];

/// The lists of the namespace at `netns` (None: ours), with the clock read after them.
pub fn read(netns: Option<&Path>) -> io::Result<RecentLists> {
    let lists = crate::tools::on_thread_in(netns, read_here)?;
    let hz = tick_rate()?;
    Ok(RecentLists {
        now: clock()?.1,
        hz,
        lists,
    })
}

/// The lists of this thread's namespace, by name.
fn read_here() -> io::Result<BTreeMap<String, Vec<ruleset::recent::RecentEntry>>> {
    let dir = Path::new("/proc/thread-self/net/xt_recent");
    let mut lists = BTreeMap::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        // No rule of the namespace has made a list.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(lists),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let text = fs::read_to_string(entry.path())?;
        let list = parse_list(&text)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {e}")))?;
        lists.insert(name, list);
    }
    Ok(lists)
}

/// The monotonic clock (ns) and `jiffies`, as /proc/timer_list prints them together
/// (`now at N nsecs`, then the first CPU's `jiffies: J`).
fn clock() -> io::Result<(u64, u64)> {
    let file = fs::File::open("/proc/timer_list")?;
    let (mut now, mut jiffies) = (None, None);
    for line in io::BufReader::new(file).lines() {
        let line = line?;
        if let Some(ns) = line.strip_prefix("now at ") {
            now = ns.trim_end_matches(" nsecs").parse().ok();
        } else if let Some(j) = line.strip_prefix("jiffies: ") {
            jiffies = j.trim().parse().ok();
        }
        if let (Some(now), Some(jiffies)) = (now, jiffies) {
            return Ok((now, jiffies));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "/proc/timer_list gives no jiffies",
    ))
}

/// CONFIG_HZ: from the running kernel's config in /boot when it is there, else measured
/// over a fifth of a second.
fn tick_rate() -> io::Result<u32> {
    if let Some(hz) = configured_tick_rate() {
        return Ok(hz);
    }
    let (t0, j0) = clock()?;
    std::thread::sleep(Duration::from_millis(200));
    let (t1, j1) = clock()?;
    let measured = j1.saturating_sub(j0) as f64 * 1e9 / t1.saturating_sub(t0).max(1) as f64;
    nearest_rate(measured).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the kernel's tick rate measured {measured:.0} Hz, none Linux offers"),
        )
    })
}

/// The tick rate within a tenth of `measured`.
fn nearest_rate(measured: f64) -> Option<u32> {
    TICK_RATES
        .into_iter()
        .find(|&hz| (measured - f64::from(hz)).abs() < f64::from(hz) / 10.0)
}

fn configured_tick_rate() -> Option<u32> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let boot = format!("/boot/config-{}", release.trim());
    let text = fs::read_to_string(boot).ok()?;
    config_hz(&text)
}

/// `CONFIG_HZ=N` in a kernel config.
fn config_hz(config: &str) -> Option<u32> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|hz| hz.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_rates_from_config_and_measurement() {
        assert_eq!(
            config_hz("CONFIG_HZ_250=y\nCONFIG_HZ=250\nCONFIG_SCHED_HRTICK=y\n"),
            Some(250)
        );
        assert_eq!(config_hz("CONFIG_HZ_PERIODIC=y\n"), None);
        assert_eq!(nearest_rate(247.0), Some(250));
        assert_eq!(nearest_rate(1012.0), Some(1000));
        assert_eq!(nearest_rate(500.0), None);
    }
}
