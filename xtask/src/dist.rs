//! `cargo xtask dist`: release artifacts under target/dist/, for x86_64 and aarch64.
//!
//! - `droptrace` (x86_64) and `droptrace-aarch64`: one static binary each (musl, no program
//!   interpreter) with both eBPF objects embedded, so it runs on hosts whose glibc is older
//!   than ours — the kernels vm-test covers.
//! - `droptrace-VERSION-{x86_64,aarch64}-linux-musl.tar.gz`: the binary, a man page per
//!   subcommand, bash/zsh/fish completions, the README, the licences, and deploy/ (systemd
//!   unit, Prometheus alert rules, Grafana dashboard, Kubernetes manifests).
//! - `droptrace_VERSION_{amd64,arm64}.deb`: the same files where Debian puts them
//!   (cargo-deb), with the firewall tools attribution runs as Recommends.
//! - `droptrace-VERSION-oci.tar`: an OCI image (archive) whose index holds an image per
//!   architecture, each Debian 12 with that architecture's package installed, built without
//!   a daemon ([`crate::image`]).
//! - `droptrace-VERSION-docker.tar`: the x86_64 image as Docker (before 25) loads it.
//! - `SHA256SUMS` of all of them.
//!
//! The pinned nightly has no prebuilt musl standard library and none can be fetched on our
//! machines, so std is built from its sources (`-Z build-std`, rust-src) for both targets.
//! What it links against differs:
//!
//! - x86_64: Debian's musl-gcc. Rust's musl target expects LLVM's libunwind: Debian's
//!   libunwind-22-dev provides it, built against glibc; its only glibc-only symbol, the
//!   fortified `__fprintf_chk` of its debug messages, is supplied by `dist/fortify_shim.c`.
//! - aarch64: rust-lld, with musl's C runtime objects, libc and libunwind from the
//!   `self-contained` directory of the default (stable) toolchain's prebuilt aarch64 musl
//!   std (rustup has that component for stable, not for the pinned nightly; these are C
//!   libraries, not Rust ones, so the compiler's version does not matter). `aya-build`
//!   builds the eBPF objects with `bpf_target_arch` set to the target's, so the verdict
//!   probes read arm64's `pt_regs`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{arch::Arch, pinned_cargo, run_checked, workspace_root};

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

/// Builds `arch`'s static binary into target/dist; returns its path.
pub fn static_binary(arch: Arch) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let dist = root.join("target/dist");
    let binary = build_static(&root, arch)?;
    check_static(&binary, arch)?;
    fs::create_dir_all(&dist)?;
    let out = dist.join(arch.binary_name());
    fs::copy(&binary, &out).with_context(|| format!("cannot copy to {}", out.display()))?;
    Ok(out)
}

/// Builds every artifact; returns the path of the machine's own binary.
pub fn run() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let dist = root.join("target/dist");
    let mut binaries = Vec::new();
    for arch in Arch::ALL {
        binaries.push((arch, static_binary(arch)?));
    }
    // The host's binary writes the man pages and completions (the same text for both).
    let host = binaries[0].1.clone();
    let version = version_of(&host)?;
    let mut files: Vec<String> = Vec::new();
    let mut debs = Vec::new();
    for (arch, binary) in &binaries {
        files.push(arch.binary_name().to_string());
        let tarball = stage_and_pack(&root, &dist, *arch, binary, &host, &version)?;
        let deb = arch.deb(&version);
        build_deb(&root, *arch, &dist.join(&deb))?;
        files.extend([tarball, deb.clone()]);
        debs.push((*arch, dist.join(deb)));
    }
    let image = crate::image::build(&root.join("target/package-test"), &dist, &debs, &version)?;
    let docker = crate::image::docker_archive(&image, &dist, &version)?;
    for artifact in [&image, &docker] {
        files.push(
            artifact
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned(),
        );
    }
    let sums = Command::new("sha256sum")
        .current_dir(&dist)
        .args(&files)
        .output()
        .context("cannot run sha256sum")?;
    if !sums.status.success() {
        bail!("sha256sum failed");
    }
    fs::write(dist.join("SHA256SUMS"), &sums.stdout)?;
    say(&format!(
        "wrote {} and SHA256SUMS in {}",
        files.join(", "),
        dist.display()
    ));
    Ok(host)
}

/// Fills target/dist/stage with `arch`'s files (what the tarball and the Debian package
/// hold, under a name that does not change with the version: the package's asset list in
/// tracer/Cargo.toml points there) and packs the tarball; returns its file name.
fn stage_and_pack(
    root: &Path,
    dist: &Path,
    arch: Arch,
    binary: &Path,
    host: &Path,
    version: &str,
) -> anyhow::Result<String> {
    let name = arch.tarball(version);
    let stage = dist.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    fs::create_dir_all(stage.join("completions"))?;
    fs::copy(binary, stage.join("droptrace"))?;
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
        Command::new(host)
            .args(["man", "--dir"])
            .arg(stage.join("man/man1")),
    )?;
    for (shell, file) in [
        ("bash", "droptrace.bash"),
        ("zsh", "_droptrace"),
        ("fish", "droptrace.fish"),
    ] {
        let script = Command::new(host).args(["completions", shell]).output()?;
        if !script.status.success() {
            bail!("droptrace completions {shell} failed");
        }
        fs::write(stage.join("completions").join(file), script.stdout)?;
    }
    let tarball = format!("{name}.tar.gz");
    run_checked(Command::new("tar").current_dir(dist).args([
        "--owner=0",
        "--group=0",
        "--transform",
        &format!("s,^stage,{name},"),
        "-czf",
        &tarball,
        "stage",
    ]))?;
    Ok(tarball)
}

/// The Debian package, by cargo-deb from `[package.metadata.deb]` in tracer/Cargo.toml,
/// around the binary already staged (`--no-build`: cargo-deb would build it itself);
/// `--target` sets the package's architecture.
fn build_deb(root: &Path, arch: Arch, out: &Path) -> anyhow::Result<()> {
    crate::setup::ensure_cargo_deb()?;
    run_checked(
        Command::new("cargo")
            .current_dir(root)
            .args([
                "deb",
                "--package",
                "tracer",
                "--target",
                arch.rust_target(),
                "--no-build",
                "--no-strip",
                "--output",
            ])
            .arg(out),
    )
}

fn build_static(root: &Path, arch: Arch) -> anyhow::Result<PathBuf> {
    let target = arch.rust_target();
    // The link inputs in a directory of their own: `-L` on the system's directory would let
    // glibc's libraries in.
    let libs = root.join("target/dist-build").join(target);
    fs::create_dir_all(&libs)?;
    let rustflags = match arch {
        Arch::X86_64 => x86_64_link_inputs(root, &libs)?,
        Arch::Aarch64 => aarch64_link_inputs(&libs)?,
    };
    say(&format!(
        "building a static droptrace for {target} (std from source: a few minutes the first time)"
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
        target,
        "-Z",
        "build-std=std,panic_abort",
    ])
    .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
    .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER", "musl-gcc")
    .env("RUSTFLAGS", rustflags);
    run_checked(&mut cmd)?;
    Ok(root.join("target").join(target).join("release/droptrace"))
}

/// x86_64: linked by musl-gcc with Debian's libunwind and the shim it needs; returns the
/// RUSTFLAGS.
fn x86_64_link_inputs(root: &Path, libs: &Path) -> anyhow::Result<String> {
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
    Ok(format!(
        "-C link-self-contained=no -C relocation-model=static -L native={} -l static=fortify_shim",
        libs.display()
    ))
}

/// aarch64: linked by rust-lld with musl's startup objects, libc and libunwind from the
/// default (stable) toolchain's aarch64 musl std (`cargo xtask setup` adds it); returns the
/// RUSTFLAGS. The startup objects go where a C compiler driver would put them: crt1, crti
/// and crtbegin before everything, crtend and crtn after.
fn aarch64_link_inputs(libs: &Path) -> anyhow::Result<String> {
    let toolchain = crate::setup::musl_objects_toolchain()?;
    let sysroot = Command::new("rustup")
        .args(["run", &toolchain, "rustc", "--print", "sysroot"])
        .output()
        .context("cannot run rustup")?;
    if !sysroot.status.success() {
        bail!("rustup cannot run {toolchain}'s rustc");
    }
    let from = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim())
        .join("lib/rustlib")
        .join(Arch::Aarch64.rust_target())
        .join("lib/self-contained");
    for file in [
        "crt1.o",
        "crti.o",
        "crtbegin.o",
        "crtend.o",
        "crtn.o",
        "libc.a",
        "libunwind.a",
    ] {
        fs::copy(from.join(file), libs.join(file)).with_context(|| {
            format!(
                "cannot copy {} (rustup target add {})",
                from.join(file).display(),
                Arch::Aarch64.rust_target()
            )
        })?;
    }
    let l = libs.display();
    Ok(format!(
        "-C linker=rust-lld -C linker-flavor=ld.lld -C link-self-contained=no \
         -C relocation-model=static -L native={l} \
         -Z pre-link-arg={l}/crt1.o -Z pre-link-arg={l}/crti.o -Z pre-link-arg={l}/crtbegin.o \
         -C link-arg={l}/crtend.o -C link-arg={l}/crtn.o"
    ))
}

/// A static binary has no program interpreter (PT_INTERP) to look for on the host, and it
/// is for the machine it is meant for (readelf's `Machine:`).
pub fn check_static(binary: &Path, arch: Arch) -> anyhow::Result<()> {
    let out = Command::new("readelf")
        .args(["-lhW"])
        .arg(binary)
        .output()
        .context("cannot run readelf")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("INTERP") {
        bail!("{} is not a static executable", binary.display());
    }
    let machine = match arch {
        Arch::X86_64 => "Advanced Micro Devices X86-64",
        Arch::Aarch64 => "AArch64",
    };
    if !text
        .lines()
        .any(|l| l.trim_start().starts_with("Machine:") && l.contains(machine))
    {
        bail!("{} is not an {} executable", binary.display(), arch.uname());
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
