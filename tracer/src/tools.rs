//! The system tools droptrace runs (`iptables-save`, `nft`, `ipset`, `ip`): where to find
//! them, and how to run one inside another network namespace.
//!
//! The child enters the namespace with `setns` between fork and exec, so droptrace's own
//! threads never change namespace and the caller is unaffected.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// Looks a tool up in PATH and the sbin directories (sudo and cron often drop them).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Why a tool could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{0} is not installed")]
    Missing(String),
    #[error("cannot open namespace: {0}")]
    Namespace(io::Error),
}

/// A command that runs the tool `program` (with `args`, no input, C locale) inside the
/// namespace at `netns` (`None`: droptrace's own). The namespace file stays open as long
/// as the command, so its descriptor is valid in the child.
pub struct InNetns {
    pub command: Command,
    _netns: Option<File>,
}

impl InNetns {
    pub fn new(program: &str, args: &[&str], netns: Option<&Path>) -> Result<Self, ToolError> {
        let path = find_program(program).ok_or_else(|| ToolError::Missing(program.into()))?;
        let file = netns
            .map(File::open)
            .transpose()
            .map_err(ToolError::Namespace)?;
        let mut command = Command::new(path);
        command.args(args).stdin(Stdio::null()).env("LC_ALL", "C");
        if let Some(file) = &file {
            let fd = file.as_raw_fd();
            // SAFETY: only an async-signal-safe syscall runs between fork and exec; `file`
            // lives as long as `command`, so the descriptor is valid in the child.
            unsafe {
                command.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        Ok(InNetns {
            command,
            _netns: file,
        })
    }
}

/// Runs `f` on a thread of its own that first enters the namespace at `netns` (None: ours):
/// the sockets it makes and the threads and processes it starts belong to that namespace,
/// while droptrace's other threads never move. The thread ends with `f`.
pub fn on_thread_in<T: Send + 'static>(
    netns: Option<&Path>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let ns = netns.map(File::open).transpose()?;
    std::thread::spawn(move || {
        if let Some(ns) = ns {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        }
        f()
    })
    .join()
    .map_err(|_| io::Error::other("the thread in the namespace panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_is_reported_not_fatal() {
        assert_eq!(find_program("droptrace-no-such-tool"), None);
        assert!(matches!(
            InNetns::new("droptrace-no-such-tool", &[], None),
            Err(ToolError::Missing(_))
        ));
    }

    #[test]
    fn a_tool_runs_in_our_own_namespace() {
        let mut t = InNetns::new("true", &[], None).expect("`true` is on every machine");
        assert!(t.command.status().unwrap().success());
        assert!(matches!(
            InNetns::new(
                "true",
                &[],
                Some(Path::new("/run/netns/droptrace-no-such-ns"))
            ),
            Err(ToolError::Namespace(_))
        ));
    }
}
