//! Network namespaces: turning the user's `--netns` into an inode the kernel program can
//! compare, and inodes back into names for display.
//!
//! `ip netns add NAME` bind-mounts the namespace on /run/netns/NAME; the inode of that
//! file is the namespace's `ns.inum`, which the program reads from the packet's socket
//! or device. Namespaces without a name are shown by inode. Inodes are reused: see
//! [`NsIdentity`].

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
    #[error("cannot open network namespace {path}: {error}")]
    Unreadable { path: String, error: String },
}

/// `--netns` as the user gave it, parsed once: their words (`host`, a name, a path), for
/// messages, and the namespaces they select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsArg {
    pub given: String,
    pub selector: NetnsSelector,
}

impl NetnsArg {
    pub fn parse(s: &str) -> Self {
        NetnsArg {
            given: s.to_string(),
            selector: NetnsSelector::parse(s),
        }
    }
}

impl Default for NetnsArg {
    fn default() -> Self {
        NetnsArg::parse("all")
    }
}

impl std::fmt::Display for NetnsArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.given)
    }
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
        let shown = path.display().to_string();
        let meta = fs::metadata(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NetnsError::NotFound {
                name,
                path: shown.clone(),
            },
            _ => NetnsError::Unreadable {
                path: shown.clone(),
                error: e.to_string(),
            },
        })?;
        if !is_net_namespace(&path).map_err(|e| NetnsError::Unreadable {
            path: shown.clone(),
            error: e.to_string(),
        })? {
            return Err(NetnsError::NotNetns { path: shown });
        }
        // Namespace files live on nsfs; their inode numbers are the namespace ids, which
        // the kernel allocates as 32-bit values (proc_alloc_inum).
        u32::try_from(meta.ino())
            .map(Some)
            .map_err(|_| NetnsError::NotNetns { path: shown })
    }
}

/// Whether `path` opens a network namespace: a file of nsfs whose namespace type
/// (`NS_GET_NSTYPE`, Linux 4.11) is CLONE_NEWNET. Any other file — a regular one, another
/// kind of namespace — is not, whatever its inode number.
pub fn is_net_namespace(path: &Path) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    /// `NS_GET_NSTYPE`, `_IO(0xb7, 0x3)` in include/uapi/linux/nsfs.h.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    let file = fs::File::open(path)?;
    // SAFETY: an ioctl without an argument on a descriptor we own.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind < 0 {
        let e = std::io::Error::last_os_error();
        // ENOTTY: not an nsfs file at all.
        return match e.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::EINVAL) => Ok(false),
            _ => Err(e),
        };
    }
    Ok(kind == libc::CLONE_NEWNET)
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

/// A namespace as droptrace can tell it apart: its inode and its name. The inode alone is
/// not enough over a long capture: a deleted namespace's inode goes to the next one made
/// (the lowest free number, `ida_alloc` in fs/proc/generic.c `proc_alloc_inum`), often
/// within a second, so "inode 4026532177" may be two namespaces an hour apart. Two
/// unnamed namespaces that share an inode one after the other stay indistinguishable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NsIdentity {
    pub inode: u32,
    /// Its /run/netns name, or "host"; `None` for a namespace without a name.
    pub name: Option<String>,
}

/// The namespaces that exist now: held by a name in /run/netns or by a process. A
/// namespace missing here is gone, its state safe to forget.
#[derive(Debug, Default, Clone)]
pub struct LiveNamespaces {
    /// The names of each live inode (empty: alive, without a name).
    names: HashMap<u32, Vec<String>>,
    /// A file that enters each, as [`path_of`] would find it (`None`: our own).
    paths: HashMap<u32, Option<PathBuf>>,
}

impl LiveNamespaces {
    /// Looks at /run/netns and every process's namespace.
    pub fn scan() -> Self {
        let mut live = LiveNamespaces::default();
        if let Some(host) = host_inode() {
            live.add(host, Some("host".to_string()));
        }
        if let Some(own) = own_inode() {
            live.add(own, None);
            live.paths.insert(own, None);
        }
        for (path, inode) in holders() {
            let name = path
                .strip_prefix(NETNS_RUN_DIR)
                .ok()
                .and_then(|n| n.to_str())
                .map(str::to_string);
            live.add(inode, name);
            live.paths.entry(inode).or_insert(Some(path));
        }
        live
    }

    /// A way into the namespace `inode`, as [`path_of`] gives it, found in the scan: one
    /// scan for every namespace, not one per namespace.
    pub fn path(&self, inode: u32) -> Option<Option<PathBuf>> {
        self.paths.get(&inode).cloned()
    }

    fn add(&mut self, inode: u32, name: Option<String>) {
        let names = self.names.entry(inode).or_default();
        if let Some(n) = name
            && !names.contains(&n)
        {
            names.push(n);
        }
    }

    /// Every live namespace's inode.
    pub fn inodes(&self) -> impl Iterator<Item = u32> + '_ {
        self.names.keys().copied()
    }

    /// Whether some namespace has this inode.
    pub fn has_inode(&self, inode: u32) -> bool {
        self.names.contains_key(&inode)
    }

    /// Whether the namespace `id` still exists: its inode is live and, when it had a name,
    /// still under that name; when it had none, the inode has no name now either (a name
    /// appearing means the inode went to a new, named namespace).
    pub fn holds(&self, id: &NsIdentity) -> bool {
        match (self.names.get(&id.inode), &id.name) {
            (None, _) => false,
            (Some(names), Some(name)) => names.contains(name),
            (Some(names), None) => names.is_empty(),
        }
    }

    #[cfg(test)]
    pub fn from_names(names: &[(u32, Option<&str>)]) -> Self {
        let mut live = LiveNamespaces::default();
        for (inode, name) in names {
            live.add(*inode, name.map(str::to_string));
        }
        live
    }
}

/// The inode of the namespace file at `path`, if it is one.
pub fn inode_of(path: &Path) -> Option<u32> {
    fs::metadata(path)
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
}

/// The files that hold namespaces open, with their inodes: /run/netns first (names are
/// better paths than processes, which come and go), then /proc/PID/ns/net.
fn holders() -> impl Iterator<Item = (PathBuf, u32)> {
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
        .filter_map(|p| inode_of(&p).map(|i| (p, i)))
}

/// Names of namespaces by inode, from /run/netns, scanned again when a new inode shows up,
/// when a name remembered no longer leads to its inode, and at most once a second for an
/// inode known to have no name (a namespace without a name would otherwise cost a scan
/// per drop).
#[derive(Debug, Default)]
pub struct NetnsNames {
    names: HashMap<u32, String>,
    /// Inodes without a name at the last scan.
    unnamed: HashSet<u32>,
    last_scan: Option<Instant>,
}

/// Unnamed inodes remembered at most (a host with as many containers is rare).
const MAX_UNNAMED: usize = 65_536;

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
        for entry in fs::read_dir(NETNS_RUN_DIR).into_iter().flatten().flatten() {
            if let (Ok(meta), Some(name)) = (fs::metadata(entry.path()), entry.file_name().to_str())
                && let Ok(ino) = u32::try_from(meta.ino())
            {
                self.names.insert(ino, name.to_string());
            }
        }
        // Kept across scans, or two unnamed namespaces would make every lookup a scan.
        if self.unnamed.len() > MAX_UNNAMED {
            self.unnamed.clear();
        }
        self.unnamed.retain(|ino| !self.names.contains_key(ino));
    }

    /// The namespace's name, if it has one. A name remembered is checked against
    /// /run/netns first (one `stat`): its namespace may be gone and the inode reused.
    pub fn name(&mut self, inode: u32) -> Option<String> {
        let stale = match self.names.get(&inode) {
            Some(name) if name == "host" => false,
            Some(name) => inode_of(&Path::new(NETNS_RUN_DIR).join(name)) != Some(inode),
            None if !self.unnamed.contains(&inode) => true,
            None => self
                .last_scan
                .is_none_or(|t| t.elapsed() > Duration::from_secs(1)),
        };
        if stale {
            self.rescan();
        }
        let name = self.names.get(&inode).cloned();
        if name.is_none() {
            self.unnamed.insert(inode);
        }
        name
    }

    /// The namespace `inode` as droptrace tells it apart.
    pub fn identity(&mut self, inode: u32) -> NsIdentity {
        NsIdentity {
            inode,
            name: self.name(inode),
        }
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
        assert!(LiveNamespaces::scan().holds(&NsIdentity {
            inode: host,
            name: Some("host".into())
        }));
    }

    #[test]
    fn a_reused_inode_is_another_namespace() {
        let id = |inode, name: Option<&str>| NsIdentity {
            inode,
            name: name.map(str::to_string),
        };
        // "a" was deleted; its inode now belongs to "b".
        let live = LiveNamespaces::from_names(&[(7, Some("b")), (8, None)]);
        assert!(!live.holds(&id(7, Some("a"))));
        assert!(live.holds(&id(7, Some("b"))));
        assert!(live.has_inode(7));
        // An unnamed namespace whose inode went to a named one is gone too.
        assert!(!live.holds(&id(7, None)));
        assert!(live.holds(&id(8, None)));
        assert!(!live.holds(&id(9, None)));
    }
}
