//! Reading the ruleset of a network namespace with the standard tools.
//!
//! Each tool runs in a child process that enters the drop's namespace (`setns` between
//! fork and exec), so droptrace itself never changes namespace and the caller's threads
//! are unaffected. Only machine-readable dumps are read: `iptables-save -c` (counters
//! included) for both iptables backends and families, `nft -j list ruleset`, `nft -a list
//! ruleset` for the statement text and handles, and `ipset save` for set members. A missing
//! tool is not an error: attribution degrades and says why.

use std::{path::Path, process::Command};

use crate::tools::{InNetns, ToolError};

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
    /// The `local` routing tables, for address type tests.
    LocalRoutes4,
    LocalRoutes6,
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
            Source::LocalRoutes4 => &["ip", "-j", "-4", "route", "show", "table", "local"],
            Source::LocalRoutes6 => &["ip", "-j", "-6", "route", "show", "table", "local"],
        }
    }
}

/// Runs `source`'s tool inside the namespace at `netns` (None: our own namespace).
pub fn dump(source: Source, netns: Option<&Path>) -> Dump {
    let argv = source.argv();
    match InNetns::new(argv[0], &argv[1..], netns) {
        Ok(t) => run(t.command, argv[0]),
        Err(ToolError::Missing(_)) => Dump::Missing(argv[0]),
        Err(e) => Dump::Failed(e.to_string()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// nft is installed by `cargo xtask setup`: the namespace, not the tool, is what fails.
    #[test]
    fn a_missing_namespace_is_a_failure_that_says_so() {
        let d = dump(
            Source::NftJson,
            Some(Path::new("/run/netns/droptrace-no-such-ns")),
        );
        match d {
            Dump::Failed(why) => assert!(why.starts_with("cannot open namespace"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
