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
    let toolchain = ebpf_toolchain();
    println!("cargo:rustc-env=DROPTRACE_EBPF_TOOLCHAIN={toolchain}");
    println!(
        "cargo:rustc-env=DROPTRACE_LONG_VERSION={} (commit {commit}, {}, eBPF objects sha256 {digest}, built by {toolchain})",
        std::env::var("CARGO_PKG_VERSION")?,
        std::env::var("TARGET")?,
    );
    Ok(())
}

/// What built the eBPF objects: the pinned rustc and its LLVM, bpf-linker, and the LLVM
/// bpf-linker links (Debian's llvm-22-dev). Two machines of one kind once built objects of
/// different stack sizes from one commit; a bug report must say which.
fn ebpf_toolchain() -> String {
    let run = |cmd: &str, args: &[&str]| -> Option<String> {
        let out = std::process::Command::new(cmd).args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let rustc = run("rustup", &["run", EBPF_TOOLCHAIN, "rustc", "-vV"]);
    let field = |name: &str| {
        rustc.as_deref().and_then(|v| {
            v.lines()
                .find_map(|l| l.strip_prefix(name).map(|s| s.trim().to_string()))
        })
    };
    let rustc_line = match (field("release:"), field("commit-date:")) {
        (Some(release), Some(date)) => format!("rustc {release} ({date})"),
        _ => format!("rustc {EBPF_TOOLCHAIN} (version unknown)"),
    };
    let rust_llvm = field("LLVM version:").unwrap_or_else(|| "?".into());
    let linker = run("bpf-linker", &["--version"]).unwrap_or_else(|| "bpf-linker ?".into());
    let linker_llvm = run("dpkg-query", &["-W", "-f=${Version}", "llvm-22-dev"])
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "?".into());
    format!("{rustc_line} LLVM {rust_llvm}, {linker} with llvm-22-dev {linker_llvm}")
}
