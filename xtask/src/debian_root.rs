//! A clean Debian 12 root for the packaging steps: `debootstrap --variant=minbase bookworm`
//! from Debian's archive once per machine and architecture (kept as a tarball under
//! target/package-test), unpacked fresh for every use, and commands run inside it. An arm64
//! root's programs run under qemu-user ([`crate::foreign`]).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{arch::Arch, run_checked, setup};

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

fn say(msg: &str) {
    eprintln!("xtask: {msg}");
}

/// A fresh Debian 12 root of `arch` at `root` (whatever was there is removed).
pub fn fresh(work: &Path, root: &Path, arch: Arch) -> anyhow::Result<()> {
    setup::install_packages(
        &[(
            "debootstrap",
            "a clean Debian 12 root for the package and the image",
        )],
        say,
    )?;
    crate::foreign::ensure(arch)?;
    let base = base_root(work, arch)?;
    unpack(&base, root)
}

/// Installs the .deb at `deb` into `root` with apt, as a user would (apt brings its
/// Recommends: the firewall tools attribution runs).
pub fn install_deb(root: &Path, deb: &Path) -> anyhow::Result<()> {
    fs::copy(deb, root.join("tmp/droptrace.deb"))?;
    fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf"))
        .context("cannot copy /etc/resolv.conf into the root (apt needs it)")?;
    say(&format!(
        "apt-get install {} in a clean Debian 12 root",
        deb.display()
    ));
    in_root(root, &["apt-get", "update", "-q"])?;
    in_root(
        root,
        &["apt-get", "install", "-y", "-q", "/tmp/droptrace.deb"],
    )?;
    fs::remove_file(root.join("tmp/droptrace.deb"))?;
    Ok(())
}

/// The tarball of a fresh `debootstrap --variant=minbase`, made once per machine and
/// architecture.
fn base_root(work: &Path, arch: Arch) -> anyhow::Result<PathBuf> {
    let tarball = work.join(format!("{SUITE}-minbase-{}.tar", arch.debian()));
    if tarball.exists() {
        return Ok(tarball);
    }
    let dir = work.join("debootstrap");
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    say(&format!(
        "debootstrap --variant=minbase --arch={} {SUITE} from {MIRROR} (a few minutes, once{})",
        arch.debian(),
        if arch.is_host() {
            ""
        } else {
            "; its packages are configured under qemu-user"
        }
    ));
    run_checked(
        Command::new("debootstrap")
            .args([
                "--variant=minbase",
                &format!("--arch={}", arch.debian()),
                SUITE,
            ])
            .arg(&dir)
            .arg(MIRROR),
    )?;
    let partial = tarball.with_extension("tar.partial");
    run_checked(
        Command::new("tar")
            .arg("-C")
            .arg(&dir)
            .arg("-cf")
            .arg(&partial)
            .arg("."),
    )?;
    fs::rename(&partial, &tarball)?;
    fs::remove_dir_all(&dir)?;
    Ok(tarball)
}

fn unpack(tarball: &Path, root: &Path) -> anyhow::Result<()> {
    if root.exists() {
        fs::remove_dir_all(root)?;
    }
    fs::create_dir_all(root)?;
    run_checked(
        Command::new("tar")
            .arg("-xf")
            .arg(tarball)
            .arg("-C")
            .arg(root),
    )
}

/// Runs `args` chrooted in `root`, in a private mount namespace where the host's /proc,
/// /sys, /dev and /run/netns are mounted into the root (gone with the namespace, so
/// nothing stays mounted whatever happens to us).
pub fn root_command(root: &Path, args: &[&str]) -> Command {
    const MOUNTS: &str = r#"set -e
r=$1; shift
mount -t proc proc "$r/proc"
mount --rbind /sys "$r/sys"
mount --rbind /dev "$r/dev"
mkdir -p /run/netns "$r/run/netns"
mount --rbind /run/netns "$r/run/netns"
exec chroot "$r" "$@""#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        MOUNTS,
        "sh",
    ])
    .arg(root)
    .args(args)
    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    .env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

pub fn in_root(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = root_command(root, args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {args:?} in {}", root.display()))?;
    if !out.status.success() {
        bail!(
            "{args:?} in {} failed: {}{}",
            root.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
