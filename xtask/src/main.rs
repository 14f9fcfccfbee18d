//! Project tasks: `cargo xtask setup | build | test | demo`.
//!
//! xtask itself builds with the machine's default (stable) toolchain. The eBPF programs
//! need a nightly whose LLVM matches the LLVM that bpf-linker is built against (Debian's
//! llvm-22), so every task first runs `setup`, which installs that pinned nightly,
//! bpf-linker and the system tools if they are missing, and then builds droptrace with
//! `rustup run <pinned nightly> cargo ...`. A root rust-toolchain.toml cannot do this:
//! with RUSTUP_AUTO_INSTALL=0 it would make every cargo command fail before xtask runs.

mod arch;
mod bench;
mod debian_root;
mod demo;
mod dist;
mod docker_test;
mod doctor_report;
mod floor;
mod foreign;
mod fuzz;
mod http;
mod image;
mod manifests;
mod netns;
mod package_test;
mod procstat;
mod scan;
mod serve_process;
mod serve_scan;
mod setup;
mod soak;
mod vmtest;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// The nightly that builds the eBPF programs (rustc 1.98, LLVM 22). Keep in sync with
/// tracer/build.rs.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-06-20";

#[derive(Parser)]
#[command(name = "cargo xtask", about = "droptrace project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent; says what it does).
    Setup,
    /// Build the droptrace binary (target/debug/droptrace, or target/release with --release).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run every test: unit tests and the root-only integration tests in network namespaces.
    Test {
        /// Extra arguments for `cargo test` (after --), e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Replay the incident from the brief in network namespaces, with droptrace watching.
    Demo,
    /// The demo's payment client (run by the demo as "java").
    #[command(hide = true)]
    DemoClient {
        #[arg(long)]
        to: std::net::SocketAddr,
        #[arg(long, value_delimiter = ',')]
        from_ports: Vec<u16>,
    },
    /// Run the static droptrace (target/dist) on other kernels under qemu (x86_64: 5.10, 6.1,
    /// 6.12, 6.18, sid; arm64: 6.1, 6.12, sid) and print a table.
    VmTest(vmtest::Args),
    /// Write release artifacts to target/dist, for x86_64 and aarch64: static binaries,
    /// tarballs with man pages and completions, Debian packages, an OCI image archive
    /// holding both architectures, SHA256SUMS.
    Dist,
    /// Install the Debian packages and unpack the OCI images of `cargo xtask dist` into clean
    /// Debian 12 roots of their architecture, and watch a drop with the x86_64 ones (run
    /// `cargo xtask dist` first).
    PackageTest,
    /// Check the deployment files under deploy/ offline: Kubernetes manifests against the
    /// API schemas, alert rules and dashboard queries with promtool.
    Manifests,
    /// Measure droptrace's cost under a drop flood, next to bpftrace (prints figures; not a test).
    Bench {
        /// 2 runs per round instead of 5.
        #[arg(long)]
        quick: bool,
        /// Only the drop-to-line round (2,000 rules, 5 drops a second): latency and CPU.
        #[arg(long)]
        latency_only: bool,
        /// Also write the figures' table into docs/performance.md (between its
        /// `bench:figures` markers).
        #[arg(long)]
        write_docs: bool,
    },
    /// Port-scan bursts beyond the kernel's flow table while `droptrace watch` (or, with
    /// --serve, `serve`) runs: prints exactness, lost, "(rule unknown)", time to catch up,
    /// peak and final RSS and CPU (not a test).
    Scan(scan::Args),
    /// Run `droptrace serve` through namespace, rule, process and flow churn (--week: a
    /// compressed week with port scans); print RSS, CPU, series and scrape time every 10
    /// minutes; fail when RSS grows after the warm-up or series pass their caps.
    Soak(soak::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Build { release } => setup::run().and_then(|()| build(release).map(|_| ())),
        Task::Test { args } => setup::run().and_then(|()| test(&args)),
        Task::Demo => setup::run().and_then(|()| demo::run(&build(false)?)),
        Task::DemoClient { to, from_ports } => demo::client(to, &from_ports),
        Task::VmTest(args) => setup::run().and_then(|()| vmtest::run(&dist::static_binary, &args)),
        Task::PackageTest => {
            setup::run().and_then(|()| package_test::run(&workspace_root().join("target/dist")))
        }
        Task::Manifests => setup::run().and_then(|()| manifests::run()),
        Task::Dist => setup::run().and_then(|()| dist::run().map(|_| ())),
        Task::Scan(args) => {
            setup::run().and_then(|()| scan::run(&given_or_release(args.binary.as_deref())?, &args))
        }
        Task::Soak(args) => {
            setup::run().and_then(|()| soak::run(&given_or_release(args.binary.as_deref())?, &args))
        }
        Task::Bench {
            latency_only: true, ..
        } => setup::run().and_then(|()| bench::latency_only(&build(true)?)),
        Task::Bench {
            quick, write_docs, ..
        } => setup::run().and_then(|()| bench::run(&build(true)?, quick, write_docs)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `cargo` of the pinned nightly, with the variables of the outer (stable) cargo removed
/// so they cannot leak into the inner build.
pub fn pinned_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", EBPF_TOOLCHAIN, "cargo"]);
    inner_build(cmd)
}

/// `cmd`, a cargo run from this one, without the outer cargo's variables (its toolchain,
/// its target dir), with ~/.cargo/bin on the PATH, in the workspace.
pub fn inner_build(mut cmd: Command) -> Command {
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "CARGO",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PATH", setup::path_with_cargo_bin());
    cmd.current_dir(workspace_root());
    cmd
}

pub fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Builds droptrace and returns the binary's path.
/// The droptrace a measuring task was given, or else a release build of the tree.
fn given_or_release(binary: Option<&Path>) -> anyhow::Result<PathBuf> {
    match binary {
        Some(path) => Ok(path.to_path_buf()),
        None => build(true),
    }
}

fn build(release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = pinned_cargo();
    cmd.args(["build", "--package", "tracer", "--bin", "droptrace"]);
    if release {
        cmd.arg("--release");
    }
    eprintln!("xtask: building droptrace with {EBPF_TOOLCHAIN}");
    run_checked(&mut cmd)?;
    Ok(workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("droptrace"))
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    let bin = build(false)?;
    if !nix_is_root() {
        bail!(
            "the integration tests load eBPF programs and create network namespaces: run as root"
        );
    }
    eprintln!(
        "xtask: running all tests (unit and integration) with DROPTRACE_BIN={}",
        bin.display()
    );
    lint()?;
    margins(&bin)?;
    manifests::run()?;
    let mut cmd = pinned_cargo();
    cmd.args(["test", "--workspace", "--exclude", "tracer-ebpf"]);
    cmd.env("DROPTRACE_BIN", &bin);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
        run_checked(&mut cmd)?;
        eprintln!(
            "xtask: a test filter was given: the fuzzers and the kernel matrix (vm-test) did not run"
        );
        return Ok(());
    }
    run_checked(&mut cmd)?;
    // Every parser of outside text, fuzzed briefly: no input may make droptrace panic.
    fuzz::run(FUZZ_SECONDS_PER_TARGET)?;
    // The incident on every kernel of the matrix (x86_64 and arm64) under qemu, with the
    // static binaries that ship (target/dist).
    let binary = dist::run()?;
    let dist_dir = binary.parent().expect("target/dist").to_path_buf();
    vmtest::run(
        &|arch| Ok(dist_dir.join(arch.binary_name())),
        &vmtest::Args::default(),
    )?;
    // The .deb and the OCI image, installed and run in a clean Debian 12 root.
    package_test::run(binary.parent().expect("target/dist"))
}

/// Every program loaded on this machine's kernel by `droptrace doctor`, its figures printed
/// against the verifier's limits; fails when one is refused or crosses our budget (a
/// quarter of each limit kept free), so a compiler that moves a program toward the limit
/// turns CI red with a number rather than a user's first run.
fn margins(bin: &Path) -> anyhow::Result<()> {
    eprintln!("xtask: the eBPF programs on this kernel (droptrace doctor)");
    let out = Command::new(bin)
        .args(["doctor", "--json"])
        .output()
        .context("cannot run droptrace doctor")?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "droptrace doctor printed no report: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let limits = &report["limits"];
    let stack_budget = limits["stack_budget"].as_u64().unwrap_or(0);
    eprintln!(
        "  {:<15} {:<19} {:<11} {:>9} {:>6} {:>6}  stack chain (limit {}, budget {stack_budget}; \
         instructions limit {}, budget {})",
        "object",
        "program",
        "status",
        "verified",
        "stack",
        "margin",
        limits["stack_limit"],
        limits["insn_limit"],
        limits["insn_budget"],
    );
    for p in report["programs"].as_array().into_iter().flatten() {
        let combined = p["stack"]["combined"].as_u64().unwrap_or(u64::MAX);
        eprintln!(
            "  {:<15} {:<19} {:<11} {:>9} {:>6} {:>6}  {}",
            p["object"].as_str().unwrap_or("?"),
            p["program"].as_str().unwrap_or("?"),
            p["status"].as_str().unwrap_or("?"),
            p["verified_insns"]
                .as_u64()
                .map_or("-".into(), |n| n.to_string()),
            combined,
            stack_budget as i64 - combined as i64,
            doctor_report::stack_chain(p),
        );
    }
    // Unavailable: this kernel cannot run it (no kprobes); refused or not tried is a failure.
    let over = doctor_report::program_problems(&report, None, |p| {
        p["status"] == "loaded" || p["status"] == "unavailable"
    });
    if !over.is_empty() {
        bail!(
            "eBPF programs over their margins on this machine: {}",
            over.join("; ")
        );
    }
    Ok(())
}

/// clippy with warnings as errors, on every crate: the host ones, and the eBPF programs
/// for their own target (what `cargo test` never compiles).
fn lint() -> anyhow::Result<()> {
    eprintln!("xtask: cargo clippy -D warnings (host crates, then the eBPF programs)");
    run_checked(pinned_cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_checked(pinned_cargo().args([
        "clippy",
        "--package",
        "tracer-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))
}

/// Long enough to get past the seeds into mutations, short enough for CI.
const FUZZ_SECONDS_PER_TARGET: u64 = 20;

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
