//! Reading the ruleset of a network namespace with the standard tools.
//!
//! Each tool runs in a child process in the drop's namespace (see [`crate::tools`]), so
//! droptrace's own threads never change namespace. Only machine-readable dumps are read:
//! `iptables-save -c` (counters included) for both iptables backends and families, `nft -j
//! list ruleset`, `nft -a list ruleset` for the statement text and handles, and `ipset
//! save` for set members. A missing tool is not an error: attribution degrades and says
//! why.

use std::path::Path;

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
    /// `nft -j list tables`: names only, to list native tables one by one.
    NftTables,
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
            Source::NftTables => &["nft", "-j", "list", "tables"],
            Source::Ipset => &["ipset", "save"],
        }
    }
}

/// Runs `source`'s tool inside the namespace at `netns` (None: our own namespace).
pub fn dump(source: Source, netns: Option<&Path>) -> Dump {
    let argv = source.argv();
    dump_argv(argv[0], &argv[1..], netns)
}

/// One nftables table, as JSON (`nft -j list table FAMILY NAME`) or as text with handles
/// (`nft -a list table ...`). `None` when `name` is not a plain identifier: nft joins its
/// arguments into one command line and parses it, so a name from the kernel (anything a
/// netlink client chose) must never reach it unchecked.
pub fn dump_nft_table(json: bool, family: &str, name: &str, netns: Option<&Path>) -> Option<Dump> {
    if !plain_identifier(name) {
        return None;
    }
    let mode = if json { "-j" } else { "-a" };
    Some(dump_argv(
        "nft",
        &[mode, "list", "table", family, name],
        netns,
    ))
}

/// What nft's scanner takes as an unquoted identifier: a letter or `_`, then letters,
/// digits and `_ - . /` (what firewalld, Docker and kube-proxy name their tables).
fn plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && name.len() <= 256
}

fn dump_argv(program: &'static str, args: &[&str], netns: Option<&Path>) -> Dump {
    match InNetns::new(program, args, netns) {
        Ok(t) => run(t, program),
        Err(ToolError::Missing(_)) => Dump::Missing(program),
        Err(e) => Dump::Failed(e.to_string()),
    }
}

fn run(tool: InNetns, name: &str) -> Dump {
    match tool.output() {
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

    #[test]
    fn only_plain_table_names_reach_nft() {
        for ok in ["filter", "firewalld", "kube-proxy", "_x1", "a.b/c"] {
            assert!(plain_identifier(ok), "{ok}");
        }
        for bad in [
            "",
            "x; flush ruleset",
            "1abc",
            "-j",
            "a b",
            "x\"y",
            "t\nflush",
        ] {
            assert!(!plain_identifier(bad), "{bad:?}");
            assert!(dump_nft_table(true, "ip", bad, None).is_none());
        }
    }

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
