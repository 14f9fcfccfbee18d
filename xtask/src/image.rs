//! The OCI image of `cargo xtask dist`, built without a daemon: a clean Debian 12 root
//! ([`debian_root`]) with the droptrace package installed by apt (so the image holds the
//! static binary and the tools attribution runs inside namespaces: iptables-save for both
//! backends, nft, ipset, ip), packed by umoci and saved as an OCI archive.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{debian_root, run_checked, setup};

fn say(msg: &str) {
    eprintln!("xtask dist: {msg}");
}

/// Builds `droptrace-VERSION-oci.tar` in `dist` from the package `deb`; returns its path.
pub fn build(work: &Path, dist: &Path, deb: &Path, version: &str) -> anyhow::Result<PathBuf> {
    setup::install_packages(
        &[
            ("umoci", "packs the OCI image"),
            ("skopeo", "converts it to the archive Docker loads"),
        ],
        say,
    )?;
    let root = work.join("image-root");
    debian_root::fresh(work, &root)?;
    debian_root::install_deb(&root, deb)?;
    debian_root::in_root(&root, &["apt-get", "clean"])?;
    fs::remove_dir_all(root.join("var/lib/apt/lists"))?;
    fs::create_dir_all(root.join("var/lib/apt/lists/partial"))?;
    // The build host's DNS settings (debootstrap and apt needed them) are not the image's:
    // container runtimes mount their own.
    fs::write(root.join("etc/resolv.conf"), "")?;
    let archive = dist.join(format!("droptrace-{version}-oci.tar"));
    pack(work, &root, &archive, version)?;
    fs::remove_dir_all(&root)?;
    Ok(archive)
}

/// The same image as a `docker save` archive tagged `droptrace:latest`: Docker before 25
/// cannot load an OCI archive.
pub fn docker_archive(oci: &Path, dist: &Path, version: &str) -> anyhow::Result<PathBuf> {
    let out = dist.join(format!("droptrace-{version}-docker.tar"));
    if out.exists() {
        fs::remove_file(&out)?;
    }
    run_checked(
        Command::new("skopeo")
            .arg("copy")
            .arg("--quiet")
            .arg(format!("oci-archive:{}:droptrace", oci.display()))
            .arg(format!("docker-archive:{}:droptrace:latest", out.display())),
    )?;
    say(&format!("wrote {}", out.display()));
    Ok(out)
}

/// Packs `root` into an OCI image with umoci and saves it as an OCI archive.
fn pack(work: &Path, root: &Path, archive: &Path, version: &str) -> anyhow::Result<()> {
    let layout = work.join("layout");
    let bundle = work.join("bundle");
    for dir in [&layout, &bundle] {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
    }
    let image = format!("{}:droptrace", layout.display());
    say("packing an OCI image (umoci)");
    run_checked(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
    )?;
    run_checked(Command::new("umoci").args(["new", "--image", &image]))?;
    run_checked(
        Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle),
    )?;
    let rootfs = bundle.join("rootfs");
    fs::remove_dir_all(&rootfs)?;
    run_checked(Command::new("cp").arg("-a").arg(root).arg(&rootfs))?;
    run_checked(
        Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle),
    )?;
    run_checked(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.entrypoint",
        "/usr/bin/droptrace",
        "--config.cmd",
        "watch",
        "--config.env",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        "--config.label",
        "org.opencontainers.image.title=droptrace",
        "--config.label",
        &format!("org.opencontainers.image.version={version}"),
        "--config.label",
        "org.opencontainers.image.description=which firewall rule dropped which packet, from which process",
    ]))?;
    run_checked(Command::new("umoci").args(["gc", "--layout"]).arg(&layout))?;
    fs::remove_dir_all(&bundle)?;
    // An OCI archive is the layout as a tar (what `skopeo copy oci-archive:` and
    // `podman load` read).
    run_checked(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(archive)
            .arg("."),
    )?;
    fs::remove_dir_all(&layout)?;
    say(&format!("wrote {}", archive.display()));
    Ok(())
}
