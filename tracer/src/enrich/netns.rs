//! Network namespaces: turning the user's `--netns` into an inode the kernel program can
//! compare, and inodes back into names for display.
//!
//! `ip netns add NAME` bind-mounts the namespace on /run/netns/NAME; the inode of that
//! file is the namespace's `ns.inum`, which the program reads from the packet's socket
//! or device. Namespaces without a name are shown by inode.

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetnsError {
    #[error("no network namespace {name:?}: {path} does not exist (see `ip netns list`)")]
    NotFound { name: String, path: String },
    #[error("{path} is not a network namespace")]
    NotNetns { path: String },
}

/// Which namespaces `--netns` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsSelector {
    All,
    /// A name under /run/netns.
    Named(String),
    /// A path such as /proc/PID/ns/net or a bind mount.
    Path(PathBuf),
}

impl NetnsSelector {
    pub fn parse(s: &str) -> Self {
        if s == "all" {
            NetnsSelector::All
        } else if s == "host" {
            // The namespace of PID 1 (in droptrace's PID namespace): the host's.
            NetnsSelector::Path(PathBuf::from("/proc/1/ns/net"))
        } else if s.contains('/') {
            NetnsSelector::Path(PathBuf::from(s))
        } else {
            NetnsSelector::Named(s.to_string())
        }
    }

    /// The namespace file this selector names, if it names one.
    pub fn path(&self) -> Option<PathBuf> {
        match self {
            NetnsSelector::All => None,
            NetnsSelector::Named(n) => Some(Path::new(NETNS_RUN_DIR).join(n)),
            NetnsSelector::Path(p) => Some(p.clone()),
        }
    }

    /// The namespace inode, or `None` for all namespaces.
    pub fn inode(&self) -> Result<Option<u32>, NetnsError> {
        let Some(path) = self.path() else {
            return Ok(None);
        };
        let name = match self {
            NetnsSelector::Named(n) => n.clone(),
            _ => path.display().to_string(),
        };
        let meta = fs::metadata(&path).map_err(|_| NetnsError::NotFound {
            name,
            path: path.display().to_string(),
        })?;
        // Namespace files live on nsfs; their inode numbers are the namespace ids, which
        // the kernel allocates as 32-bit values (proc_alloc_inum).
        u32::try_from(meta.ino())
            .map(Some)
            .map_err(|_| NetnsError::NotNetns {
                path: path.display().to_string(),
            })
    }
}

/// The inode of the namespace this process runs in.
pub fn own_inode() -> Option<u32> {
    fs::metadata("/proc/self/ns/net")
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
}

/// The host's namespace: pid 1's (init_net); our own when pid 1 is hidden from us (a
/// container or sandbox, where our namespace is the only "host" we can know).
pub fn host_inode() -> Option<u32> {
    fs::metadata("/proc/1/ns/net")
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
        .or_else(own_inode)
}

/// A file that opens the namespace `inode`, to enter it: /run/netns/NAME, or
/// /proc/PID/ns/net of a process inside it. `Ok(None)` means our own namespace.
pub fn path_of(inode: u32) -> Option<Option<PathBuf>> {
    if own_inode() == Some(inode) {
        return Some(None);
    }
    holders()
        .find(|(_, ino)| *ino == inode)
        .map(|(path, _)| Some(path))
}

/// Every namespace something still holds (a name in /run/netns or a process): the ones
/// that exist. A namespace missing here is gone, its state safe to forget.
pub fn live_inodes() -> HashSet<u32> {
    let mut live: HashSet<u32> = holders().map(|(_, ino)| ino).collect();
    live.extend(own_inode());
    live
}

/// The files that hold namespaces open, with their inodes: /run/netns first (names are
/// better paths than processes, which come and go), then /proc/PID/ns/net.
fn holders() -> impl Iterator<Item = (PathBuf, u32)> {
    let ino = |p: &Path| {
        fs::metadata(p)
            .ok()
            .and_then(|m| u32::try_from(m.ino()).ok())
    };
    let named = fs::read_dir(NETNS_RUN_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    let procs = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path().join("ns/net"));
    named
        .chain(procs)
        .filter_map(move |p| ino(&p).map(|i| (p, i)))
}

/// Names of namespaces by inode, from /run/netns, refreshed when an unknown inode shows up
/// (at most once a second: a namespace without a name would otherwise cost a scan per drop).
#[derive(Debug, Default)]
pub struct NetnsNames {
    names: HashMap<u32, String>,
    last_scan: Option<Instant>,
}

impl NetnsNames {
    pub fn new() -> Self {
        let mut n = NetnsNames::default();
        n.rescan();
        n
    }

    fn rescan(&mut self) {
        self.last_scan = Some(Instant::now());
        self.names.clear();
        if let Some(host) = host_inode() {
            self.names.insert(host, "host".to_string());
        }
        let Ok(dir) = fs::read_dir(NETNS_RUN_DIR) else {
            return;
        };
        for entry in dir.flatten() {
            if let (Ok(meta), Some(name)) = (fs::metadata(entry.path()), entry.file_name().to_str())
                && let Ok(ino) = u32::try_from(meta.ino())
            {
                self.names.insert(ino, name.to_string());
            }
        }
    }

    /// The namespace's name, if it has one.
    pub fn name(&mut self, inode: u32) -> Option<String> {
        if !self.names.contains_key(&inode)
            && self
                .last_scan
                .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
        {
            self.rescan();
        }
        self.names.get(&inode).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_forms() {
        assert_eq!(NetnsSelector::parse("all"), NetnsSelector::All);
        assert_eq!(
            NetnsSelector::parse("host").path().unwrap(),
            Path::new("/proc/1/ns/net")
        );
        assert_eq!(
            NetnsSelector::parse("client"),
            NetnsSelector::Named("client".into())
        );
        assert_eq!(
            NetnsSelector::parse("/proc/1/ns/net"),
            NetnsSelector::Path("/proc/1/ns/net".into())
        );
        assert_eq!(
            NetnsSelector::parse("client").path(),
            Some(PathBuf::from("/run/netns/client"))
        );
    }

    #[test]
    fn missing_namespace_is_a_clear_error() {
        let err = NetnsSelector::parse("no-such-ns-droptrace")
            .inode()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("no network namespace \"no-such-ns-droptrace\"")
        );
    }

    #[test]
    fn own_namespace_is_entered_as_is() {
        assert_eq!(path_of(own_inode().unwrap()), Some(None));
        assert_eq!(path_of(1), None);
    }

    #[test]
    fn own_namespace_resolves() {
        let own = NetnsSelector::parse("/proc/self/ns/net").inode().unwrap();
        assert_eq!(own, own_inode());
        let host = host_inode().unwrap();
        assert_eq!(NetnsNames::new().name(host).as_deref(), Some("host"));
    }
}
