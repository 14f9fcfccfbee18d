//! A short fuzz run of every parser of outside text, as part of `cargo xtask test`.
//!
//! The targets live in fuzz/ (cargo-fuzz, libFuzzer). Each starts from seeds: real tool
//! output captured for the ruleset tests and small samples in fuzz/seeds. A crash (any
//! panic) fails the run and leaves the input under fuzz/artifacts for a regression test.

use std::{fs, path::Path, process::Command};

use anyhow::Context as _;

use crate::{pinned_cargo, run_checked, workspace_root};

/// Fuzz targets, with the ruleset fixtures (by file suffix) that seed them.
const TARGETS: &[(&str, &[&str])] = &[
    ("iptables_save", &[".iptables-save", ".ip6tables-save"]),
    ("nft", &[".nft.json", ".nft.txt"]),
    ("ipset", &[".ipset"]),
    ("cli", &[]),
    ("system_files", &[]),
];

/// Installs cargo-fuzz if it is missing.
pub fn setup() -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .env("PATH", crate::setup::path_with_cargo_bin())
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        eprintln!("xtask setup: cargo-fuzz present");
        return Ok(());
    }
    eprintln!("xtask setup: installing cargo-fuzz (runs the parsers' fuzz targets in the tests)");
    run_checked(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .env("PATH", crate::setup::path_with_cargo_bin())
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR"),
    )
}

/// Runs every target for `seconds` each.
pub fn run(seconds: u64) -> anyhow::Result<()> {
    let root = workspace_root();
    let fixtures = root.join("ruleset/tests/fixtures");
    for (target, suffixes) in TARGETS {
        let corpus = root.join("fuzz/corpus").join(target);
        fs::create_dir_all(&corpus)?;
        seed(&root.join("fuzz/seeds").join(target), &corpus, &[""])?;
        seed(&fixtures, &corpus, suffixes)?;
        eprintln!("xtask: fuzzing {target} for {seconds}s");
        let mut cmd = pinned_cargo();
        cmd.args(["fuzz", "run", target, "--"])
            .arg(&corpus)
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=4096")
            .arg("-print_final_stats=1");
        run_checked(&mut cmd).with_context(|| {
            format!("fuzz target {target} found a crash (see fuzz/artifacts/{target})")
        })?;
    }
    Ok(())
}

fn seed(from: &Path, corpus: &Path, suffixes: &[&str]) -> anyhow::Result<()> {
    if suffixes.is_empty() {
        return Ok(());
    }
    let Ok(dir) = fs::read_dir(from) else {
        return Ok(());
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_file() && suffixes.iter().any(|s| name.ends_with(s)) {
            fs::copy(entry.path(), corpus.join(format!("seed-{name}")))?;
        }
    }
    Ok(())
}
