//! Which interface and source address a flow leaves by, asked of the flow's own namespace.
//!
//! Egress rules test the output interface (`-o lo -j ACCEPT`, `oifname "eth0"`), and the
//! kernel hooks that see a flow start do not know it yet (a TCP socket is routed before
//! SYN_SENT but gets its route attached after). So droptrace asks the routing table the
//! way an engineer would, `ip -j route get DST [mark M]`, run in a child that enters the
//! flow's namespace (`setns` between fork and exec; droptrace's own threads never move).

use std::{
    fs::File,
    net::IpAddr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::{Command, Stdio},
};

/// The answer of `ip route get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dev: Option<String>,
    pub src: Option<IpAddr>,
}

/// Parses `ip -j route get` output: `[{"dst":"203.0.113.10","dev":"eth0","prefsrc":"…",…}]`.
pub fn parse(json: &str) -> Option<Route> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let first = v.as_array()?.first()?;
    let text = |k: &str| first.get(k).and_then(|x| x.as_str()).map(str::to_string);
    Some(Route {
        dev: text("dev"),
        src: text("prefsrc").and_then(|s| s.parse().ok()),
    })
}

/// Routes `dst` (with `mark`, which policy routing may use) in the namespace at `netns`
/// (`None`: droptrace's own). `None` when the namespace or the route is gone.
pub fn lookup(netns: Option<&Path>, dst: IpAddr, mark: u32) -> Option<Route> {
    let mut cmd = Command::new(find_ip()?);
    cmd.args(["-j", "route", "get", &dst.to_string()]);
    if mark != 0 {
        cmd.args(["mark", &mark.to_string()]);
    }
    cmd.stdin(Stdio::null())
        .stderr(Stdio::null())
        .env("LC_ALL", "C");
    let ns = netns.map(File::open).transpose().ok()?;
    if let Some(file) = &ns {
        let fd = file.as_raw_fd();
        // SAFETY: only an async-signal-safe syscall runs between fork and exec; `ns`
        // outlives the spawn below, so the descriptor is valid in the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = cmd.output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

fn find_ip() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Into::into))
        .map(|d| d.join("ip"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_route_get() {
        let r = parse(
            r#"[{"dst":"203.0.113.10","dev":"dtc3","prefsrc":"198.51.100.2","flags":[],"uid":0,"cache":[]}]"#,
        )
        .unwrap();
        assert_eq!(r.dev.as_deref(), Some("dtc3"));
        assert_eq!(r.src, Some("198.51.100.2".parse().unwrap()));
        let local = parse(
            r#"[{"type":"local","dst":"127.0.0.1","dev":"lo","prefsrc":"127.0.0.1","flags":[],"uid":0,"cache":["local"]}]"#,
        )
        .unwrap();
        assert_eq!(local.dev.as_deref(), Some("lo"));
        assert_eq!(parse("[]"), None);
        assert_eq!(parse("RTNETLINK answers: Network is unreachable"), None);
    }

    #[test]
    fn routes_loopback_in_our_own_namespace() {
        let Some(r) = lookup(None, "127.0.0.1".parse().unwrap(), 0) else {
            eprintln!("skipped: no `ip` here");
            return;
        };
        assert_eq!(r.dev.as_deref(), Some("lo"));
    }
}
