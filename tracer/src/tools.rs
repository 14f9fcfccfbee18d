//! The system tools droptrace runs (`iptables-save`, `nft`, `ipset`, `ip`): where to find
//! them, and how to run one inside another network namespace.
//!
//! The child is started from a thread of its own that entered the namespace (children
//! are born in their parent thread's namespaces), so droptrace's other threads never
//! change namespace. Entering it in the child instead, between fork and exec, would make
//! the standard library fork rather than `posix_spawn`: a fork copies droptrace's page
//! tables (its maps and the kernel's BTF make them large), which was a tenth of its CPU
//! while re-reading a ruleset.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
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
/// namespace at `netns` (`None`: droptrace's own), opened when the command is made.
pub struct InNetns {
    pub command: Command,
    netns: Option<File>,
}

impl InNetns {
    pub fn new(program: &str, args: &[&str], netns: Option<&Path>) -> Result<Self, ToolError> {
        let path = find_program(program).ok_or_else(|| ToolError::Missing(program.into()))?;
        let netns = netns
            .map(File::open)
            .transpose()
            .map_err(ToolError::Namespace)?;
        let mut command = Command::new(path);
        command.args(args).stdin(Stdio::null()).env("LC_ALL", "C");
        Ok(InNetns { command, netns })
    }

    /// Runs the command to its end in the namespace, collecting its output.
    pub fn output(self) -> io::Result<Output> {
        let mut command = self.command;
        match self.netns {
            None => command.output(),
            Some(netns) => on_thread_in_file(Some(netns), move || command.output()),
        }
    }
}

/// Runs `f` on a thread of its own that first enters the namespace at `netns` (None: ours):
/// the sockets it makes and the threads and processes it starts belong to that namespace,
/// while droptrace's other threads never move. The thread ends with `f`.
pub fn on_thread_in<T: Send + 'static>(
    netns: Option<&Path>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    on_thread_in_file(netns.map(File::open).transpose()?, f)
}

/// [`on_thread_in`], the namespace already open.
fn on_thread_in_file<T: Send + 'static>(
    ns: Option<File>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
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
        let t = InNetns::new("true", &[], None).expect("`true` is on every machine");
        assert!(t.output().unwrap().status.success());
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
