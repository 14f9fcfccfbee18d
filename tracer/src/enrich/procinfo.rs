//! Who a process is beyond its 16-byte `comm`: full command line, cgroup, and the
//! container or systemd unit that cgroup belongs to.
//!
//! Read from /proc once per process (the first time a drop names it) and cached, since a
//! retry storm names the same process thousands of times. All of it is text the process
//! (or whoever started it) chose, so it is escaped when printed.

use std::{collections::HashMap, fs, path::Path};

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProcInfo {
    pub cmdline: Option<String>,
    pub cgroup: Option<String>,
    /// `docker:ID`, `containerd:ID`, `crio:ID`, `podman:ID`, `k8s-pod:UID`, or a systemd unit.
    pub container: Option<String>,
    /// The filesystem gid (what `-m owner --gid-owner` and `meta skgid` test, through the
    /// credentials the socket was opened with).
    pub fsgid: Option<u32>,
}

/// The filesystem gid from `/proc/PID/status`: the fourth number of its `Gid:` line.
pub fn parse_fsgid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Gid:"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// `/proc/PID/cmdline`: NUL-separated arguments, joined with spaces.
pub fn parse_cmdline(raw: &[u8]) -> Option<String> {
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!args.is_empty()).then(|| args.join(" "))
}

/// The cgroup v2 path from `/proc/PID/cgroup` (`0::/system.slice/nginx.service`), or the
/// first v1 hierarchy's path when there is no unified line.
pub fn parse_cgroup(text: &str) -> Option<String> {
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
        if id == "0" && ctrl.is_empty() {
            return Some(path.to_string());
        }
        if v1.is_none() && !path.is_empty() {
            v1 = Some(path.to_string());
        }
    }
    v1
}

/// Names the container or unit a cgroup path belongs to, from the naming conventions of
/// the usual managers (systemd cgroup driver and cgroupfs driver alike).
pub fn container_of(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let id_after = |s: &str, prefix: &str, suffix: &str| {
        s.strip_prefix(prefix)
            .map(|rest| rest.strip_suffix(suffix).unwrap_or(rest).to_string())
    };
    let short = |id: String| id.chars().take(12).collect::<String>();
    // Innermost first: a container inside a pod is the container.
    for s in segments.iter().rev() {
        for (prefix, kind) in [
            ("docker-", "docker"),
            ("cri-containerd-", "containerd"),
            ("crio-", "crio"),
            ("libpod-", "podman"),
        ] {
            if let Some(id) = id_after(s, prefix, ".scope").filter(|id| is_hex_id(id)) {
                return Some(format!("{kind}:{}", short(id)));
            }
        }
    }
    // cgroupfs driver: /docker/<id>, /kubepods/.../<id>.
    if let Some(i) = segments.iter().position(|s| *s == "docker")
        && let Some(id) = segments.get(i + 1).filter(|id| is_hex_id(id))
    {
        return Some(format!("docker:{}", short(id.to_string())));
    }
    // kubelet: `kubepods-<qos>-pod<uid>.slice` (systemd driver), `pod<uid>` (cgroupfs).
    if path.contains("kubepods") {
        for s in segments.iter().rev() {
            let pod = s
                .rsplit_once("-pod")
                .map(|(_, p)| p)
                .or_else(|| s.strip_prefix("pod"));
            if let Some(pod) = pod {
                let uid = pod.strip_suffix(".slice").unwrap_or(pod).replace('_', "-");
                if !uid.is_empty() {
                    return Some(format!("k8s-pod:{uid}"));
                }
            }
        }
    }
    segments
        .iter()
        .rev()
        .find(|s| s.ends_with(".service") || s.ends_with(".scope"))
        .map(|s| s.to_string())
}

fn is_hex_id(s: &str) -> bool {
    s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Process details by (pid, comm): a reused pid with another name is another process.
#[derive(Debug, Default)]
pub struct ProcCache {
    known: HashMap<(u32, String), ProcInfo>,
}

const MAX_PROCS: usize = 16_384;

impl ProcCache {
    /// Forgets processes that have exited: on a node where processes come and go, the
    /// cache holds the living, not the last 16,384 that ever dropped.
    pub fn forget_exited(&mut self) {
        self.known
            .retain(|(pid, _), _| Path::new(&format!("/proc/{pid}")).exists());
    }

    pub fn get(&mut self, pid: u32, comm: &str) -> ProcInfo {
        let key = (pid, comm.to_string());
        if let Some(info) = self.known.get(&key) {
            return info.clone();
        }
        if self.known.len() >= MAX_PROCS {
            self.known.clear();
        }
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|t| parse_cgroup(&t));
        let info = ProcInfo {
            cmdline: fs::read(format!("/proc/{pid}/cmdline"))
                .ok()
                .and_then(|b| parse_cmdline(&b)),
            container: cgroup.as_deref().and_then(container_of),
            cgroup,
            fsgid: fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|t| parse_fsgid(&t)),
        };
        self.known.insert(key, info.clone());
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdlines_join_arguments() {
        assert_eq!(
            parse_cmdline(b"java\0-jar\0pay.jar\0").as_deref(),
            Some("java -jar pay.jar")
        );
        assert_eq!(parse_cmdline(b""), None);
        assert_eq!(parse_cmdline(b"\0\0"), None);
    }

    #[test]
    fn fsgid_is_the_fourth_gid() {
        let status = "Name:\tjava\nUid:\t0\t0\t0\t0\nGid:\t100\t101\t102\t103\nGroups:\t\n";
        assert_eq!(parse_fsgid(status), Some(103));
        assert_eq!(parse_fsgid("Gid:\t1\t2\n"), None);
        assert_eq!(parse_fsgid("garbage"), None);
        let ours = fs::read_to_string("/proc/self/status").unwrap();
        assert_eq!(parse_fsgid(&ours), Some(nix::unistd::getegid().as_raw()));
    }

    #[test]
    fn cgroup_v2_and_v1() {
        assert_eq!(
            parse_cgroup("0::/system.slice/nginx.service\n").as_deref(),
            Some("/system.slice/nginx.service")
        );
        let v1 = "12:cpuset:/docker/abc\n11:memory:/docker/abc\n";
        assert_eq!(parse_cgroup(v1).as_deref(), Some("/docker/abc"));
        assert_eq!(parse_cgroup("garbage"), None);
    }

    #[test]
    fn containers_and_units_are_recognised() {
        let id = "3f4e2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";
        assert_eq!(
            container_of(&format!("/system.slice/docker-{id}.scope")).as_deref(),
            Some("docker:3f4e2a1b9c8d")
        );
        assert_eq!(
            container_of(&format!("/docker/{id}")).as_deref(),
            Some("docker:3f4e2a1b9c8d")
        );
        assert_eq!(
            container_of(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/cri-containerd-{id}.scope"
            ))
            .as_deref(),
            Some("containerd:3f4e2a1b9c8d")
        );
        assert_eq!(
            container_of(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-poda1b2_c3d4.slice"
            )
            .as_deref(),
            Some("k8s-pod:a1b2-c3d4")
        );
        assert_eq!(
            container_of(&format!("/machine.slice/libpod-{id}.scope")).as_deref(),
            Some("podman:3f4e2a1b9c8d")
        );
        assert_eq!(
            container_of("/system.slice/payments.service").as_deref(),
            Some("payments.service")
        );
        assert_eq!(
            container_of("/user.slice/user-0.slice/session-3.scope").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(container_of("/"), None);
    }
}
