//! The OCI image of `cargo xtask dist`, built without a daemon: per architecture, a clean
//! Debian 12 root ([`debian_root`]) with that architecture's droptrace package installed by
//! apt (so the image holds the static binary and the tools attribution runs inside
//! namespaces: iptables-save for both backends, nft, ipset, ip), packed by umoci; then an
//! image index naming both by platform, saved with them as one OCI archive.
//!
//! The archive's layout has three names: `droptrace` (the index: a registry serves each host
//! its own architecture's image, e.g. after `skopeo copy --all`), and `droptrace-amd64` and
//! `droptrace-arm64` (each architecture's image, for tools that take one image, like
//! `umoci unpack`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::{arch::Arch, debian_root, run_checked, setup};

fn say(msg: &str) {
    eprintln!("xtask dist: {msg}");
}

/// The name of the image index in the archive's layout.
pub const INDEX_REF: &str = "droptrace";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// The annotation that names a layout's images (OCI image-spec, annotations.md).
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The name an entry of a layout's index.json carries (`Null` if none).
fn ref_name(entry: &Value) -> &Value {
    &entry["annotations"][REF_NAME]
}

/// The name of `arch`'s image in the archive's layout.
pub fn image_ref(arch: Arch) -> String {
    format!("droptrace-{}", arch.debian())
}

/// Builds `droptrace-VERSION-oci.tar` in `dist` from the packages `debs` (one per
/// architecture); returns its path.
pub fn build(
    work: &Path,
    dist: &Path,
    debs: &[(Arch, PathBuf)],
    version: &str,
) -> anyhow::Result<PathBuf> {
    setup::install_packages(
        &[
            ("umoci", "packs the OCI image"),
            ("skopeo", "converts it to the archive Docker loads"),
        ],
        say,
    )?;
    let layout = work.join("layout");
    if layout.exists() {
        fs::remove_dir_all(&layout)?;
    }
    run_checked(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
    )?;
    for (arch, deb) in debs {
        let root = work.join(format!("image-root-{}", arch.debian()));
        debian_root::fresh(work, &root, *arch)?;
        debian_root::install_deb(&root, deb)?;
        debian_root::in_root(&root, &["apt-get", "clean"])?;
        fs::remove_dir_all(root.join("var/lib/apt/lists"))?;
        fs::create_dir_all(root.join("var/lib/apt/lists/partial"))?;
        // The build host's DNS settings (debootstrap and apt needed them) are not the
        // image's: container runtimes mount their own.
        fs::write(root.join("etc/resolv.conf"), "")?;
        pack(work, &layout, &root, *arch, version)?;
        fs::remove_dir_all(&root)?;
    }
    let arches: Vec<Arch> = debs.iter().map(|(a, _)| *a).collect();
    add_index(&layout, &arches)?;
    run_checked(Command::new("umoci").args(["gc", "--layout"]).arg(&layout))?;
    // An OCI archive is the layout as a tar (what `skopeo copy oci-archive:` and
    // `podman load` read).
    let archive = dist.join(format!("droptrace-{version}-oci.tar"));
    run_checked(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&archive)
            .arg("."),
    )?;
    fs::remove_dir_all(&layout)?;
    say(&format!(
        "wrote {} ({})",
        archive.display(),
        arches
            .iter()
            .map(|a| format!("linux/{}", a.debian()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(archive)
}

/// The x86_64 image as a `docker save` archive tagged `droptrace:latest`: Docker before 25
/// cannot load an OCI archive (nor an index).
pub fn docker_archive(oci: &Path, dist: &Path, version: &str) -> anyhow::Result<PathBuf> {
    let out = dist.join(format!("droptrace-{version}-docker.tar"));
    if out.exists() {
        fs::remove_file(&out)?;
    }
    run_checked(
        Command::new("skopeo")
            .arg("copy")
            .arg("--quiet")
            .arg(format!(
                "oci-archive:{}:{}",
                oci.display(),
                image_ref(Arch::X86_64)
            ))
            .arg(format!("docker-archive:{}:droptrace:latest", out.display())),
    )?;
    say(&format!("wrote {}", out.display()));
    Ok(out)
}

/// Packs `root` into the layout as `arch`'s image ([`image_ref`]).
fn pack(work: &Path, layout: &Path, root: &Path, arch: Arch, version: &str) -> anyhow::Result<()> {
    let bundle = work.join("bundle");
    if bundle.exists() {
        fs::remove_dir_all(&bundle)?;
    }
    let image = format!("{}:{}", layout.display(), image_ref(arch));
    say(&format!(
        "packing the linux/{} image (umoci)",
        arch.debian()
    ));
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
        "--os",
        "linux",
        "--architecture",
        arch.debian(),
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
    fs::remove_dir_all(&bundle)?;
    Ok(())
}

/// Adds an image index (OCI image-spec, image-index.md) of the images of `arches`, each with
/// its platform, to the layout as [`INDEX_REF`]. umoci makes images, not indexes.
fn add_index(layout: &Path, arches: &[Arch]) -> anyhow::Result<()> {
    let index_path = layout.join("index.json");
    let mut top: Value = serde_json::from_slice(&fs::read(&index_path)?)
        .context("umoci's index.json is not JSON")?;
    let entries = top["manifests"]
        .as_array_mut()
        .context("umoci's index.json lists no manifests")?;
    let mut manifests = Vec::new();
    for arch in arches {
        let name = image_ref(*arch);
        let entry = entries
            .iter()
            .find(|m| ref_name(m) == name.as_str())
            .with_context(|| format!("the layout has no image {name}"))?;
        manifests.push(json!({
            "mediaType": entry["mediaType"],
            "digest": entry["digest"],
            "size": entry["size"],
            "platform": { "architecture": arch.debian(), "os": "linux" },
        }));
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": manifests,
    }))?;
    let digest: String = Sha256::digest(&index)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    fs::write(layout.join("blobs/sha256").join(&digest), &index)?;
    entries.retain(|m| ref_name(m) != INDEX_REF);
    entries.push(json!({
        "mediaType": INDEX_MEDIA_TYPE,
        "digest": format!("sha256:{digest}"),
        "size": index.len(),
        "annotations": { REF_NAME: INDEX_REF },
    }));
    fs::write(&index_path, serde_json::to_vec(&top)?)?;
    Ok(())
}

/// The platforms (`linux/amd64`, ...) the image index of an unpacked layout names.
pub fn index_platforms(layout: &Path) -> anyhow::Result<Vec<String>> {
    let top: Value = serde_json::from_slice(&fs::read(layout.join("index.json"))?)?;
    let entry = top["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| ref_name(m) == INDEX_REF)
        .with_context(|| format!("the image has no {INDEX_REF} index"))?;
    if entry["mediaType"] != INDEX_MEDIA_TYPE {
        bail!(
            "{INDEX_REF} is a {}, not an image index",
            entry["mediaType"]
        );
    }
    let digest = entry["digest"]
        .as_str()
        .and_then(|d| d.strip_prefix("sha256:"))
        .context("the index's digest is not sha256")?;
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(digest))?)?;
    Ok(index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap_or("?"),
                m["platform"]["architecture"].as_str().unwrap_or("?")
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index over two images as umoci leaves them: `droptrace` names both platforms,
    /// and the per-architecture names stay.
    #[test]
    fn the_index_names_each_image_with_its_platform() {
        let layout = std::env::temp_dir().join(format!("droptrace-index-{}", std::process::id()));
        let _ = fs::remove_dir_all(&layout);
        fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        let manifest = |name: &str, digest: &str| {
            json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{digest}"),
                "size": 512,
                // As umoci writes it.
                "annotations": { "org.opencontainers.image.ref.name": name },
            })
        };
        let top = json!({
            "schemaVersion": 2,
            "manifests": [
                manifest("droptrace-amd64", &"a".repeat(64)),
                manifest("droptrace-arm64", &"b".repeat(64)),
            ],
        });
        fs::write(layout.join("index.json"), top.to_string()).unwrap();
        add_index(&layout, &Arch::ALL).unwrap();
        assert_eq!(
            index_platforms(&layout).unwrap(),
            ["linux/amd64", "linux/arm64"]
        );
        let top: Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        let names: Vec<&str> = top["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| ref_name(m).as_str())
            .collect();
        assert_eq!(names, ["droptrace-amd64", "droptrace-arm64", "droptrace"]);
        // The index blob is stored under its own digest.
        let entry = &top["manifests"][2];
        let digest = entry["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        let blob = fs::read(layout.join("blobs/sha256").join(digest)).unwrap();
        let sum: String = Sha256::digest(&blob)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sum, digest);
        assert_eq!(entry["size"], blob.len());
        // A missing image is an error, not an index without it.
        fs::write(
            layout.join("index.json"),
            json!({"schemaVersion": 2, "manifests": [manifest("droptrace-amd64", &"a".repeat(64))]})
                .to_string(),
        )
        .unwrap();
        assert!(add_index(&layout, &Arch::ALL).is_err());
        fs::remove_dir_all(&layout).unwrap();
    }
}
