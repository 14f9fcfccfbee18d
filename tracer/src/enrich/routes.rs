//! Which interface and source address a flow leaves by, asked of the flow's own namespace.
//!
//! Egress rules test the output interface (`-o lo -j ACCEPT`, `oifname "eth0"`), and the
//! kernel hooks that see a flow start do not know it yet (a TCP socket is routed before
//! SYN_SENT but gets its route attached after). So droptrace asks the routing table the
//! way an engineer would, `ip -j route get DST [mark M]`, run in a child that enters the
//! flow's namespace (`setns` between fork and exec; droptrace's own threads never move).

use std::{net::IpAddr, path::Path, process::Stdio};

use crate::tools::InNetns;

/// The answer of `ip route get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dev: Option<String>,
    pub src: Option<IpAddr>,
    /// A route of type `local`: the address is the host's own, delivered to INPUT.
    pub local: bool,
}

/// Parses `ip -j route get` output: `[{"dst":"203.0.113.10","dev":"eth0","prefsrc":"…",…}]`.
pub fn parse(json: &str) -> Option<Route> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let first = v.as_array()?.first()?;
    let text = |k: &str| first.get(k).and_then(|x| x.as_str()).map(str::to_string);
    Some(Route {
        dev: text("dev"),
        src: text("prefsrc").and_then(|s| s.parse().ok()),
        local: text("type").as_deref() == Some("local"),
    })
}

/// Routes `dst` (with `mark`, which policy routing may use) in the namespace at `netns`
/// (`None`: droptrace's own). `None` when the namespace or the route is gone.
pub fn lookup(netns: Option<&Path>, dst: IpAddr, mark: u32) -> Option<Route> {
    let dst = dst.to_string();
    let mark = mark.to_string();
    let mut args = vec!["-j", "route", "get", dst.as_str()];
    if mark != "0" {
        args.extend(["mark", mark.as_str()]);
    }
    let mut t = InNetns::new("ip", &args, netns).ok()?;
    t.command.stderr(Stdio::null());
    let out = t.output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse(&String::from_utf8_lossy(&out.stdout))
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
        assert!(local.local && !r.local);
        assert_eq!(parse("[]"), None);
        assert_eq!(parse("RTNETLINK answers: Network is unreachable"), None);
    }

    #[test]
    fn routes_loopback_in_our_own_namespace() {
        // iproute2 is installed by `cargo xtask setup`: no answer is a failure.
        let r = lookup(None, "127.0.0.1".parse().unwrap(), 0)
            .expect("`ip -j route get 127.0.0.1` answered nothing droptrace could parse");
        assert_eq!(r.dev.as_deref(), Some("lo"));
    }
}
