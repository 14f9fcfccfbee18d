//! `cargo xtask dist`: release artifacts under target/dist/.
//!
//! - `droptrace`: one static binary (musl, no program interpreter) with both eBPF objects
//!   embedded, so it runs on hosts whose glibc is older than ours — the kernels vm-test covers.
//! - `droptrace-VERSION-x86_64-linux-musl.tar.gz`: the binary, a man page per subcommand,
//!   bash/zsh/fish completions, the README, the licences, and deploy/ (systemd unit,
//!   Prometheus alert rules, Grafana dashboard, Kubernetes manifests).
//! - `droptrace_VERSION_amd64.deb`: the same files where Debian puts them (cargo-deb), with
//!   the firewall tools attribution runs as Recommends.
//! - `droptrace-VERSION-oci.tar`: an OCI image (archive) of Debian 12 with that package
//!   installed, built without a daemon ([`crate::image`]).
//! - `droptrace-VERSION-docker.tar`: the same image as Docker (before 25) loads it.
//! - `SHA256SUMS` of the five.
//!
//! The pinned nightly has no prebuilt musl standard library and none can be fetched on our
//! machines, so std is built from its sources (`-Z build-std`, rust-src) and linked with
//! Debian's musl-gcc. Rust's musl target expects LLVM's libunwind: Debian's libunwind-22-dev
//! provides it, built against glibc; its only glibc-only symbol, the fortified
//! `__fprintf_chk` of its debug messages, is supplied by `dist/fortify_shim.c`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{pinned_cargo, run_checked, workspace_root};

const TARGET: &str = "x86_64-unknown-linux-musl";

/// The deployment files the tarball carries under deploy/ (the .deb installs the unit in
/// systemd's place and the rest under /usr/share/droptrace; see tracer/Cargo.toml).
pub const DEPLOY_FILES: &[&str] = &[
    "deploy/systemd/droptrace.service",
    "deploy/prometheus/droptrace-alerts.yml",
    "deploy/grafana/droptrace-dashboard.json",
    "deploy/kubernetes/droptrace.yaml",
];
/// LLVM's libunwind, from Debian's libunwind-22-dev (installed by `cargo xtask setup`).
const LIBUNWIND: &str = "/usr/lib/llvm-22/lib/libunwind.a";

fn say(msg: &str) {
    eprintln!("xtask dist: {msg}");
}

/// Builds the static binary into target/dist; returns its path.
pub fn static_binary() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let dist = root.join("target/dist");
    let binary = build_static(&root)?;
    check_static(&binary)?;
    fs::create_dir_all(&dist)?;
    let out = dist.join("droptrace");
    fs::copy(&binary, &out).with_context(|| format!("cannot copy to {}", out.display()))?;
    Ok(out)
}

/// Builds every artifact; returns the binary's path.
pub fn run() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let dist = root.join("target/dist");
    let out = static_binary()?;
    let version = version_of(&out)?;
    let name = format!("droptrace-{version}-x86_64-linux-musl");
    // What the tarball and the Debian package hold, under a name that does not change with
    // the version (the package's asset list in tracer/Cargo.toml points here).
    let stage = dist.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    fs::create_dir_all(stage.join("completions"))?;
    fs::copy(&out, stage.join("droptrace"))?;
    for file in ["README.md", "LICENSE-MIT", "LICENSE-APACHE"] {
        fs::copy(root.join(file), stage.join(file))
            .with_context(|| format!("cannot copy {file}"))?;
    }
    // The reference pages the README links to.
    fs::create_dir_all(stage.join("docs"))?;
    for entry in fs::read_dir(root.join("docs"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            fs::copy(
                &path,
                stage.join("docs").join(path.file_name().expect("a file")),
            )?;
        }
    }
    // What runs droptrace in a fleet, beside the binary: the systemd unit, the alert rules
    // and the dashboard the README points to, and the Kubernetes manifests.
    for file in DEPLOY_FILES {
        let to = stage.join(file);
        fs::create_dir_all(to.parent().expect("under deploy/"))?;
        fs::copy(root.join(file), &to).with_context(|| format!("cannot copy {file}"))?;
    }
    run_checked(
        Command::new(&out)
            .args(["man", "--dir"])
            .arg(stage.join("man/man1")),
    )?;
    for (shell, file) in [
        ("bash", "droptrace.bash"),
        ("zsh", "_droptrace"),
        ("fish", "droptrace.fish"),
    ] {
        let script = Command::new(&out).args(["completions", shell]).output()?;
        if !script.status.success() {
            bail!("droptrace completions {shell} failed");
        }
        fs::write(stage.join("completions").join(file), script.stdout)?;
    }
    let tarball = format!("{name}.tar.gz");
    run_checked(Command::new("tar").current_dir(&dist).args([
        "--owner=0",
        "--group=0",
        "--transform",
        &format!("s,^stage,{name},"),
        "-czf",
        &tarball,
        "stage",
    ]))?;
    let deb = format!("droptrace_{version}_amd64.deb");
    build_deb(&root, &dist.join(&deb))?;
    let image = crate::image::build(
        &root.join("target/package-test"),
        &dist,
        &dist.join(&deb),
        &version,
    )?;
    let docker = crate::image::docker_archive(&image, &dist, &version)?;
    let name_of = |p: &Path| {
        p.file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned()
    };
    let (image, docker) = (name_of(&image), name_of(&docker));
    let sums = Command::new("sha256sum")
        .current_dir(&dist)
        .args(["droptrace", &tarball, &deb, &image, &docker])
        .output()
        .context("cannot run sha256sum")?;
    if !sums.status.success() {
        bail!("sha256sum failed");
    }
    fs::write(dist.join("SHA256SUMS"), &sums.stdout)?;
    say(&format!(
        "wrote {} (static), {tarball}, {deb}, {image}, {docker} and SHA256SUMS in {}",
        out.display(),
        dist.display()
    ));
    Ok(out)
}

/// The Debian package, by cargo-deb from `[package.metadata.deb]` in tracer/Cargo.toml,
/// around the binary already built (`--no-build`: cargo-deb would build for the host).
fn build_deb(root: &Path, out: &Path) -> anyhow::Result<()> {
    crate::setup::ensure_cargo_deb()?;
    run_checked(
        Command::new("cargo")
            .current_dir(root)
            .args([
                "deb",
                "--package",
                "tracer",
                "--no-build",
                "--no-strip",
                "--output",
            ])
            .arg(out),
    )
}

fn build_static(root: &Path) -> anyhow::Result<PathBuf> {
    // The link inputs in a directory of their own: `-L` on the system's directory would let
    // glibc's libraries in.
    let libs = root.join("target/dist-build/lib");
    fs::create_dir_all(&libs)?;
    fs::copy(LIBUNWIND, libs.join("libunwind.a"))
        .with_context(|| format!("cannot copy {LIBUNWIND} (libunwind-22-dev)"))?;
    let object = libs.join("fortify_shim.o");
    run_checked(
        Command::new("musl-gcc")
            .args(["-O2", "-c"])
            .arg(root.join("xtask/dist/fortify_shim.c"))
            .arg("-o")
            .arg(&object),
    )?;
    run_checked(
        Command::new("ar")
            .arg("rcs")
            .arg(libs.join("libfortify_shim.a"))
            .arg(&object),
    )?;
    say(&format!(
        "building a static droptrace for {TARGET} (std from source: a few minutes the first time)"
    ));
    let mut cmd = pinned_cargo();
    cmd.args([
        "build",
        "--package",
        "tracer",
        "--bin",
        "droptrace",
        "--release",
        "--target",
        TARGET,
        "-Z",
        "build-std=std,panic_abort",
    ])
    .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
    .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER", "musl-gcc")
    .env(
        "RUSTFLAGS",
        format!(
            "-C link-self-contained=no -C relocation-model=static -L native={} -l static=fortify_shim",
            libs.display()
        ),
    );
    run_checked(&mut cmd)?;
    Ok(root.join("target").join(TARGET).join("release/droptrace"))
}

/// A static binary has no program interpreter (PT_INTERP) to look for on the host.
fn check_static(binary: &Path) -> anyhow::Result<()> {
    let out = Command::new("readelf")
        .args(["-lW"])
        .arg(binary)
        .output()
        .context("cannot run readelf")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("INTERP") {
        bail!("{} is not a static executable", binary.display());
    }
    Ok(())
}

/// `0.1.0` from `droptrace --version`.
pub fn version_of(binary: &Path) -> anyhow::Result<String> {
    let out = Command::new(binary).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("unexpected --version output {text:?}"))
}
