//! A plain `cargo build` (or `cargo test`) at the workspace root builds this crate, not
//! droptrace: droptrace needs the pinned nightly and bpf-linker (its eBPF programs), which
//! `cargo xtask setup` installs, and with the machine's stable toolchain cargo would stop
//! at aya's `rust-version` with a message that names aya, not what to do. So on a toolchain
//! older than the one droptrace needs, this build script stops the build with one line that
//! says what to type. Under the pinned nightly (`cargo xtask build`, `cargo xtask test`) it
//! does nothing.

use std::{env, process::Command};

/// The rustc minor version aya (and so droptrace) needs; keep in sync with tracer's
/// `rust-version`.
const NEEDED_MINOR: u32 = 98;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let minor = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let v = String::from_utf8_lossy(&o.stdout).into_owned();
            v.split_whitespace()
                .nth(1)?
                .split('.')
                .nth(1)?
                .parse::<u32>()
                .ok()
        });
    if minor.is_some_and(|m| m < NEEDED_MINOR) {
        println!(
            "cargo::error=droptrace is built with `cargo xtask build` (or `cargo xtask test`, `cargo xtask dist`): it needs the pinned nightly and bpf-linker, which `cargo xtask setup` installs"
        );
    }
}
