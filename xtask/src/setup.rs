//! `cargo xtask setup`: installs what is missing, and only that.
//!
//! - Debian packages: llvm-22-dev (bpf-linker links against it) and the firewall and
//!   network tools droptrace reads and the tests drive (iptables, nftables, iproute2).
//! - The pinned nightly with rust-src (`-Z build-std=core` for the BPF target).
//! - The aarch64 musl std of the default (stable) toolchain, for its C objects (dist.rs).
//! - bpf-linker 0.13 built against llvm-22. Its build script finds LLVM through the
//!   `llvm-config` first in PATH, so /usr/lib/llvm-22/bin goes first (Debian's default
//!   llvm-config may be an older LLVM).

use std::{
    env,
    ffi::OsString,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{EBPF_TOOLCHAIN, arch::Arch, run_checked};

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages: (package, why).
const PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links against LLVM 22"),
    ("libzstd-dev", "LLVM 22's link dependencies"),
    ("zlib1g-dev", "LLVM 22's link dependencies"),
    (
        "iptables",
        "iptables-nft and iptables-legacy rulesets (tests, demo, attribution)",
    ),
    ("nftables", "native nftables rulesets (tests, attribution)"),
    (
        "iproute2",
        "network namespaces and veth pairs (tests, demo)",
    ),
    (
        "bpftool",
        "tests check that no BPF program outlives droptrace",
    ),
    ("tshark", "tests read droptrace's pcapng files back"),
    (
        "conntrack",
        "live conntrack entries for the intermittent service (tests, demo)",
    ),
    (
        "ipset",
        "-m set rules and their members (attribution, tests)",
    ),
    (
        "ufw",
        "the ufw front-end, run inside test namespaces (tests/tests/frontends.rs)",
    ),
    (
        "musl-tools",
        "musl-gcc and musl's libc, for the static binary (cargo xtask dist)",
    ),
    (
        "libunwind-22-dev",
        "LLVM's libunwind, which the static musl binary links (cargo xtask dist)",
    ),
    (
        "prometheus",
        "a real Prometheus scrapes droptrace serve in the tests (tests/tests/serve.rs)",
    ),
    (
        "busybox-static",
        "ping for the ICMP inventory test; the qemu guests' userland",
    ),
];

/// The llvm-22-dev that bpf-linker was last tested with (a fresh machine, 2026-12-06).
/// Debian updates it in place; another version may build objects of other sizes, which
/// `cargo xtask test` measures (tracer/src/kernel/stack_depth.rs), so a difference is said
/// loudly rather than refused.
const TESTED_LLVM: &str = "1:22.1.8-1~deb12u1";

pub fn run() -> anyhow::Result<()> {
    packages()?;
    let llvm = package_version("llvm-22-dev");
    if llvm.as_deref() != Some(TESTED_LLVM) {
        say(&format!(
            "WARNING: llvm-22-dev is {} here, not {TESTED_LLVM} that droptrace's eBPF objects \
             were tested with; the stack and verifier checks of `cargo xtask test` say whether \
             the objects it builds still fit",
            llvm.as_deref().unwrap_or("missing")
        ));
    }
    toolchain()?;
    musl_objects()?;
    bpf_linker()?;
    crate::fuzz::setup()?;
    ensure_cargo_deb()?;
    Ok(())
}

fn say(msg: &str) {
    eprintln!("xtask setup: {msg}");
}

pub fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// The installed version of a Debian package.
fn package_version(pkg: &str) -> Option<String> {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", pkg])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
}

fn packages() -> anyhow::Result<()> {
    install_packages(PACKAGES, say)
}

/// Installs those of `packages` (name, what for) that dpkg does not list as installed,
/// saying why each is needed through `say`; says so when all are present.
pub fn install_packages(packages: &[(&str, &str)], say: fn(&str)) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(p, _)| !installed(p))
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        let names: Vec<&str> = packages.iter().map(|(p, _)| *p).collect();
        say(&format!("{} Debian packages present", names.len()));
        return Ok(());
    }
    for (p, why) in packages.iter().filter(|(p, _)| missing.contains(p)) {
        say(&format!("installing {p}: {why}"));
    }
    run_checked(Command::new("apt-get").args(["update", "-q"]))?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn toolchain() -> anyhow::Result<()> {
    let has_components = Command::new("rustup")
        .args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| {
            let list = String::from_utf8_lossy(&o.stdout);
            o.status.success() && list.contains("rust-src") && list.contains("clippy")
        });
    if has_components {
        say(&format!(
            "toolchain {EBPF_TOOLCHAIN} with rust-src and clippy present"
        ));
        return Ok(());
    }
    say(&format!(
        "installing toolchain {EBPF_TOOLCHAIN} with rust-src (builds the eBPF programs) and clippy (the tests' lint step)"
    ));
    run_checked(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
    ]))?;
    run_checked(Command::new("rustup").args([
        "component",
        "add",
        "--toolchain",
        EBPF_TOOLCHAIN,
        "rust-src",
        "clippy",
    ]))
}

/// The toolchain whose prebuilt aarch64 musl std supplies the C runtime objects, libc and
/// libunwind the aarch64 binary links (the pinned nightly has no such component; see
/// dist.rs): the machine's default one (`rustup default`), a stable release.
pub fn musl_objects_toolchain() -> anyhow::Result<String> {
    let out = Command::new("rustup")
        .arg("default")
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .context("cannot run rustup default")?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .filter(|_| out.status.success())
        .map(str::to_string)
        .context("rustup names no default toolchain")
}

/// Adds the aarch64 musl std to the default toolchain if it is missing.
fn musl_objects() -> anyhow::Result<()> {
    let target = Arch::Aarch64.rust_target();
    let toolchain = musl_objects_toolchain()?;
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed", "--toolchain", &toolchain])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == target)
        });
    if installed {
        say(&format!("{target} std of {toolchain} present"));
        return Ok(());
    }
    say(&format!(
        "adding {target} to {toolchain}: musl's objects and libraries for the aarch64 binary (cargo xtask dist)"
    ));
    run_checked(Command::new("rustup").args(["target", "add", "--toolchain", &toolchain, target]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let version = Command::new("bpf-linker")
        .arg("--version")
        .env("PATH", path_with_cargo_bin())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if version.as_deref() == Some(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
        say(&format!("bpf-linker {BPF_LINKER_VERSION} present"));
        return Ok(());
    }
    say(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against {LLVM_PREFIX} (a few minutes, once)"
    ));
    let mut path = OsString::from(format!("{LLVM_PREFIX}/bin:"));
    path.push(path_with_cargo_bin());
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("PATH", path)
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .status()?;
    if !status.success() {
        bail!("cargo install bpf-linker failed ({status})");
    }
    Ok(())
}

/// cargo-deb, which `cargo xtask dist` builds the Debian package with.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Installs cargo-deb if it is missing or another version.
pub fn ensure_cargo_deb() -> anyhow::Result<()> {
    let version = Command::new("cargo")
        .args(["deb", "--version"])
        .env("PATH", path_with_cargo_bin())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if version.is_some_and(|v| v.ends_with(CARGO_DEB_VERSION)) {
        say(&format!("cargo-deb {CARGO_DEB_VERSION} present"));
        return Ok(());
    }
    say(&format!(
        "installing cargo-deb {CARGO_DEB_VERSION} (builds the Debian package)"
    ));
    run_checked(
        Command::new("cargo")
            .args([
                "install",
                "cargo-deb",
                "--locked",
                "--version",
                CARGO_DEB_VERSION,
            ])
            .env("PATH", path_with_cargo_bin())
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR"),
    )
}

/// PATH with ~/.cargo/bin (where rustup and cargo install put binaries) in front.
pub fn path_with_cargo_bin() -> OsString {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let mut path = home.join("bin").into_os_string();
    if let Some(p) = env::var_os("PATH") {
        path.push(":");
        path.push(p);
    }
    path
}
