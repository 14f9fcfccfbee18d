//! Reading the ruleset of a network namespace with the standard tools.
//!
//! Each tool runs in a child process that enters the drop's namespace (`setns` between
//! fork and exec), so droptrace itself never changes namespace and the caller's threads
//! are unaffected. Only machine-readable dumps are read: `iptables-save -c` (counters
//! included) for both iptables backends and families, `nft -j list ruleset`, `nft -a list
//! ruleset` for the statement text and handles, and `ipset save` for set members. A missing
//! tool is not an error: attribution degrades and says why.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// One dump and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dump {
    Text(String),
    /// The tool is not installed.
    Missing(&'static str),
    /// The tool ran and failed (its first stderr line).
    Failed(String),
}

impl Dump {
    pub fn text(&self) -> Option<&str> {
        match self {
            Dump::Text(t) => Some(t),
            _ => None,
        }
    }
}

/// Which tool reads what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    IptablesNft,
    Ip6tablesNft,
    IptablesLegacy,
    Ip6tablesLegacy,
    NftJson,
    NftText,
    Ipset,
}

impl Source {
    pub fn argv(self) -> &'static [&'static str] {
        match self {
            Source::IptablesNft => &["iptables-nft-save", "-c"],
            Source::Ip6tablesNft => &["ip6tables-nft-save", "-c"],
            Source::IptablesLegacy => &["iptables-legacy-save", "-c"],
            Source::Ip6tablesLegacy => &["ip6tables-legacy-save", "-c"],
            Source::NftJson => &["nft", "-j", "list", "ruleset"],
            Source::NftText => &["nft", "-a", "list", "ruleset"],
            Source::Ipset => &["ipset", "save"],
        }
    }
}

/// Runs `source`'s tool inside the namespace at `netns` (None: our own namespace).
pub fn dump(source: Source, netns: Option<&Path>) -> Dump {
    let argv = source.argv();
    let Some(program) = find_program(argv[0]) else {
        return Dump::Missing(argv[0]);
    };
    let mut cmd = Command::new(program);
    cmd.args(&argv[1..]).stdin(Stdio::null()).env("LC_ALL", "C");
    let ns_file = match netns.map(File::open).transpose() {
        Ok(f) => f,
        Err(e) => return Dump::Failed(format!("cannot open namespace: {e}")),
    };
    if let Some(file) = ns_file {
        let fd = file.as_raw_fd();
        // SAFETY: only an async-signal-safe syscall runs between fork and exec; `file`
        // outlives the spawn below, so the descriptor is valid in the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        return run(cmd, argv[0]);
    }
    run(cmd, argv[0])
}

fn run(mut cmd: Command, name: &str) -> Dump {
    match cmd.output() {
        Ok(out) if out.status.success() => {
            Dump::Text(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            Dump::Failed(format!(
                "{name}: {}",
                err.lines().next().unwrap_or("failed").trim()
            ))
        }
        Err(e) => Dump::Failed(format!("{name}: {e}")),
    }
}

/// Looks a tool up in PATH and the sbin directories (sudo and cron often drop them).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_is_reported_not_fatal() {
        assert_eq!(find_program("droptrace-no-such-tool"), None);
    }

    #[test]
    fn a_missing_namespace_is_reported() {
        let d = dump(
            Source::NftJson,
            Some(Path::new("/run/netns/droptrace-no-such-ns")),
        );
        assert!(matches!(d, Dump::Failed(_) | Dump::Missing(_)), "{d:?}");
    }
}
