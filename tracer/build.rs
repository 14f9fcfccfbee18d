//! Builds the eBPF programs (tracer-ebpf) for the BPF target with the pinned nightly, so
//! the userspace binary can embed them. `cargo xtask` installs that toolchain and
//! bpf-linker; see README.md.

/// The toolchain known to build aya programs on our machines: its LLVM (22) must not be
/// newer than the LLVM bpf-linker is built against. Keep in sync with xtask.
const EBPF_TOOLCHAIN: &str = "nightly-2026-06-20";

fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "tracer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN))?;
    long_version()
}

/// `droptrace --version`: version, commit, target, and a digest of the two embedded eBPF
/// objects, so a bug report says exactly which programs ran.
fn long_version() -> anyhow::Result<()> {
    use sha2::{Digest as _, Sha256};
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut digest = Sha256::new();
    for object in ["droptrace", "droptrace-perf"] {
        digest.update(std::fs::read(out.join(object))?);
    }
    let digest: String = digest.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let commit = std::process::Command::new("git")
        .args(["-C", root, "rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    // A new commit moves the branch's ref, not HEAD itself.
    for git in [".git/HEAD", ".git/refs/heads"] {
        println!("cargo:rerun-if-changed={root}/{git}");
    }
    println!(
        "cargo:rustc-env=DROPTRACE_LONG_VERSION={} (commit {commit}, {}, eBPF objects sha256 {digest})",
        std::env::var("CARGO_PKG_VERSION")?,
        std::env::var("TARGET")?,
    );
    Ok(())
}
