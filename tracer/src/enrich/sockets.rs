//! Who owns a socket that was never seen sending, found the way `ss -p` does: the socket's
//! inode from its namespace's /proc/net/{tcp,tcp6,udp,udp6} table (matched by addresses and
//! ports), then the process holding a descriptor on `socket:[inode]`.
//!
//! Drops in softirq carry the packet's socket but not who owns it: a SYN retransmitted by
//! the TCP timer for a connect() that began before droptrace started was never seen in
//! process context, yet that is exactly the host an engineer is triaging.

use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

/// How long one read of a socket table, and one walk of every process's descriptors, is
/// reused: a burst of retransmissions from many sockets costs one of each, not one per
/// socket.
const TTL: Duration = Duration::from_secs(1);

/// Finds socket owners; keeps the last reads.
#[derive(Default)]
pub struct SocketOwners {
    /// `socket:[inode]` -> pid, and when it was built.
    fd_map: Option<(Instant, HashMap<u64, u32>)>,
    /// /proc/net tables by namespace file (None: ours) and table name, when read.
    tables: HashMap<(Option<PathBuf>, String), (Instant, String)>,
}

impl SocketOwners {
    /// The process (pid, comm) owning the `proto` socket `local` -> `remote` in the
    /// namespace that `netns` opens (`None`: our own).
    pub fn owner(
        &mut self,
        netns: Option<PathBuf>,
        proto: u8,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Option<(u32, String)> {
        let table = match proto {
            6 => "tcp",
            17 => "udp",
            _ => return None,
        };
        let file = if local.is_ipv6() {
            format!("{table}6")
        } else {
            table.to_string()
        };
        let key = (netns, file);
        let fresh = self
            .tables
            .get(&key)
            .is_some_and(|(at, _)| at.elapsed() < TTL);
        if !fresh {
            let text = read_net_table(key.0.clone(), &key.1)?;
            self.tables.retain(|_, (at, _)| at.elapsed() < TTL);
            self.tables.insert(key.clone(), (Instant::now(), text));
        }
        let inode = find_inode(&self.tables.get(&key)?.1, local, remote)?;
        let pid = self.pid_of(inode)?;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        Some((pid, comm.trim_end().to_string()))
    }

    fn pid_of(&mut self, inode: u64) -> Option<u32> {
        let fresh = self
            .fd_map
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < TTL);
        if !fresh {
            self.fd_map = Some((Instant::now(), socket_fds()));
        }
        self.fd_map.as_ref()?.1.get(&inode).copied()
    }
}

/// /proc/net/FILE as the namespace `netns` sees it, read from a thread that enters it
/// (setns affects only the calling thread; /proc/thread-self/net follows it).
fn read_net_table(netns: Option<PathBuf>, file: &str) -> Option<String> {
    let Some(path) = netns else {
        return fs::read_to_string(format!("/proc/self/net/{file}")).ok();
    };
    let file = file.to_string();
    crate::tools::on_thread_in(Some(&path), move || {
        fs::read_to_string(format!("/proc/thread-self/net/{file}"))
    })
    .ok()
}

/// Every `socket:[inode]` descriptor of every process, by inode.
fn socket_fds() -> HashMap<u64, u32> {
    let mut map = HashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return map;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Some(inode) = fs::read_link(fd.path())
                .ok()
                .and_then(|l| socket_inode(l.to_str()?))
            {
                map.entry(inode).or_insert(pid);
            }
        }
    }
    map
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The inode of the socket `local` -> `remote` in a /proc/net/{tcp,udp}[6] table; else an
/// unconnected socket (remote `0.0.0.0:0`, a listener) bound to `local`, else one bound to
/// the wildcard address on `local`'s port.
pub fn find_inode(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let mut unconnected = None;
    let mut wildcard = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        let (Some(l), Some(r), Some(inode)) = (
            f.get(1).and_then(|s| parse_addr(s)),
            f.get(2).and_then(|s| parse_addr(s)),
            f.get(9).and_then(|s| s.parse::<u64>().ok()),
        ) else {
            continue;
        };
        let open = r.port() == 0 && r.ip().is_unspecified();
        if inode == 0 {
            continue;
        }
        if l != local {
            if open && l.ip().is_unspecified() && l.port() == local.port() {
                wildcard = Some(inode);
            }
            continue;
        }
        if r == remote {
            return Some(inode);
        }
        if open {
            unconnected = Some(inode);
        }
    }
    unconnected.or(wildcard)
}

/// `0100007F:1F90` (IPv4) or 32 hex digits + port (IPv6): each 32-bit word of the address is
/// printed as a host-order integer (net/ipv4/tcp_ipv4.c, `get_tcp4_sock`), so on a
/// little-endian host its bytes come back with `to_le_bytes`.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_le_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 21417 1 0000000000000000 100 0 0 10 0
   1: 0200000A:9C40 0A7100CB:20FB 02 00000001:00000000 01:00000152 00000002     0        0 88123 2 0000000000000000 400 0 0 1 7
";

    #[test]
    fn finds_a_syn_sent_socket_by_its_addresses() {
        let local: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let remote: SocketAddr = "203.0.113.10:8443".parse().unwrap();
        assert_eq!(find_inode(TCP, local, remote), Some(88123));
        let other: SocketAddr = "203.0.113.10:9090".parse().unwrap();
        assert_eq!(find_inode(TCP, local, other), None);
    }

    #[test]
    fn falls_back_to_an_unconnected_socket_on_the_local_address() {
        let local: SocketAddr = "127.0.0.1:3306".parse().unwrap();
        let remote: SocketAddr = "10.1.1.1:5000".parse().unwrap();
        assert_eq!(find_inode(TCP, local, remote), Some(21417));
    }

    /// sshd listening on 0.0.0.0:22 is the receiver of a SYN to 10.0.0.2:22.
    #[test]
    fn a_wildcard_listener_owns_its_port_on_every_address() {
        let table = "header\n   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1\n";
        let local: SocketAddr = "10.0.0.2:22".parse().unwrap();
        let remote: SocketAddr = "198.51.100.2:40000".parse().unwrap();
        assert_eq!(find_inode(table, local, remote), Some(777));
        let other: SocketAddr = "10.0.0.2:23".parse().unwrap();
        assert_eq!(find_inode(table, other, remote), None);
    }

    #[test]
    fn reads_ipv6_addresses() {
        let line = "  sl  local_address                         remote_address                        st
   0: 000080FE00000000FF000000010000FD:B2D2 B80D0120000000000000000001000000:20FB 02 00000000:00000000 00:00000000 00000000     0        0 4242 1\n";
        let local: SocketAddr = "[fe80::ff:fd00:1]:45778".parse().unwrap();
        let remote: SocketAddr = "[2001:db8::1]:8443".parse().unwrap();
        assert_eq!(find_inode(line, local, remote), Some(4242));
    }

    #[test]
    fn garbage_is_no_match() {
        let any: SocketAddr = "1.2.3.4:5".parse().unwrap();
        for text in [
            "",
            "header only\n",
            "x\n 0: zz:zz yy:yy",
            "x\n 0: 0100007F:zz",
        ] {
            assert_eq!(find_inode(text, any, any), None);
        }
        assert_eq!(socket_inode("socket:[77]"), Some(77));
        assert_eq!(socket_inode("pipe:[77]"), None);
    }
}
