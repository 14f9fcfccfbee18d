//! `cargo xtask package-test` (also the last step of `cargo xtask test`): the Debian package
//! and the OCI image of `cargo xtask dist`, installed and run as a user would, on a clean
//! Debian 12 root rather than on this development machine.
//!
//! - The package: `apt-get install ./droptrace_*_amd64.deb` in a fresh root
//!   ([`debian_root`]; apt brings the Recommends: iptables, nftables, ipset, iproute2), then
//!   the installed `droptrace` runs `--version`, `man`, `completions bash` and a short
//!   `watch` of a dropped connection.
//! - The arm64 package, the same way in a fresh arm64 root whose programs qemu-user runs
//!   ([`crate::foreign`]): `--version` (which must name the aarch64 target), `man`,
//!   `completions bash` and the installed files. Its `watch` is what `cargo xtask vm-test`
//!   runs on arm64 kernels: qemu-user does not pass bpf(2) through.
//! - Each tarball holds its architecture's binary (the ELF header's machine).
//! - The image (target/dist/droptrace-VERSION-oci.tar): its index must name linux/amd64
//!   and linux/arm64; each architecture's image is unpacked from the archive
//!   (`umoci unpack`) and its root filesystem entered with `unshare` and `chroot`, then the
//!   same checks (the `watch` on amd64). Not with podman: podman 4.3 cannot start
//!   containers on our machines, which are containers themselves (`crun: setrlimit
//!   RLIMIT_NOFILE: Operation not permitted`).
//!
//! - The package's systemd unit: `systemd-analyze verify` accepts it without a warning, and
//!   its `ExecStart` command, run from the root, serves /healthz and ends cleanly on SIGTERM
//!   (our machines do not run systemd, so the unit's sandboxing itself is not exercised);
//!   `watch` under exactly its `CapabilityBoundingSet` (setpriv) names the drop `exact`.
//!
//! - The image under Docker, started with the README's own `docker run` line
//!   ([`crate::docker_test`]): the drop named `exact`.
//!
//! Each `watch` runs in a private mount namespace (`unshare --mount`) with /proc, /sys, /dev
//! and /run/netns of the host mounted into the root, the way the README's container command
//! mounts them; the dropped connection is made in a network namespace of the test's, whose
//! OUTPUT chain drops it. The rule must be named from the root's own iptables.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{
    arch::Arch,
    debian_root::{self, in_root, root_command},
    netns::Netns,
    run_checked, setup, workspace_root,
};

fn say(msg: &str) {
    eprintln!("xtask package-test: {msg}");
}

pub fn run(dist: &Path) -> anyhow::Result<()> {
    setup::install_packages(
        &[
            ("umoci", "unpacks the OCI image"),
            ("systemd", "systemd-analyze checks the package's unit"),
        ],
        say,
    )?;
    let work = workspace_root().join("target/package-test");
    fs::create_dir_all(&work)?;
    let version = crate::dist::version_of(&dist.join("droptrace"))?;

    // Each tarball carries its architecture's binary and the deployment files beside it.
    for arch in Arch::ALL {
        check_tarball(dist, &work, arch, &version)?;
    }

    // The package, installed with apt as a user would.
    let deb = dist.join(Arch::X86_64.deb(&version));
    let root = work.join("deb-root");
    debian_root::fresh(&work, &root, Arch::X86_64)?;
    debian_root::install_deb(&root, &deb)?;
    check_installed(&root, &version, Arch::X86_64)?;
    watch_in_root(&root, "the .deb", &[])?;
    service_in_root(&root, &work)?;
    // The unit's capabilities, exactly: the drop must still be named `exact` (without
    // CAP_SYSLOG, /proc/kallsyms hides the addresses that name the hook).
    let bounding = unit_bounding_set(&root)?;
    watch_in_root(
        &root,
        "the .deb under the unit's CapabilityBoundingSet",
        &["setpriv", "--bounding-set", &bounding, "--"],
    )?;
    fs::remove_dir_all(&root)?;

    // The arm64 package in an arm64 root, its programs (apt's, dpkg's, droptrace) run by
    // qemu-user. Loading eBPF under qemu-user is not droptrace on arm64 (qemu-user does not
    // translate bpf(2)): `cargo xtask vm-test` runs it on arm64 kernels.
    let arm64_deb = dist.join(Arch::Aarch64.deb(&version));
    let arm64_root = work.join("deb-root-arm64");
    debian_root::fresh(&work, &arm64_root, Arch::Aarch64)?;
    debian_root::install_deb(&arm64_root, &arm64_deb)?;
    check_installed(&arm64_root, &version, Arch::Aarch64)?;
    fs::remove_dir_all(&arm64_root)?;

    // The image, unpacked from its archive as a runtime would.
    let archive = dist.join(format!("droptrace-{version}-oci.tar"));
    let layout = work.join("test-layout");
    let bundle = work.join("test-bundle");
    for dir in [&layout, &bundle] {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
    }
    fs::create_dir_all(&layout)?;
    run_checked(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&layout),
    )?;
    let platforms = crate::image::index_platforms(&layout)?;
    let wanted: Vec<String> = Arch::ALL
        .iter()
        .map(|a| format!("linux/{}", a.debian()))
        .collect();
    if platforms != wanted {
        bail!("the image index names {platforms:?}, not {wanted:?}");
    }
    // What a host pulling the tag gets: skopeo resolves the index for each platform.
    for arch in Arch::ALL {
        let out = Command::new("skopeo")
            .args([
                "inspect",
                "--override-os",
                "linux",
                "--override-arch",
                arch.debian(),
            ])
            .arg(format!(
                "oci-archive:{}:{}",
                archive.display(),
                crate::image::INDEX_REF
            ))
            .output()
            .context("cannot run skopeo inspect")?;
        let inspected: serde_json::Value =
            serde_json::from_slice(&out.stdout).with_context(|| {
                format!(
                    "skopeo inspect of the index for {}: {}",
                    arch.debian(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            })?;
        if inspected["Architecture"] != arch.debian() {
            bail!(
                "the index gives a linux/{} host the {} image",
                arch.debian(),
                inspected["Architecture"]
            );
        }
    }
    say(&format!(
        "the image index names {}, and skopeo resolves it for each",
        platforms.join(", ")
    ));
    for arch in Arch::ALL {
        run_checked(
            Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!(
                    "{}:{}",
                    layout.display(),
                    crate::image::image_ref(arch)
                ))
                .arg(&bundle),
        )?;
        let rootfs = bundle.join("rootfs");
        check_installed(&rootfs, &version, arch)?;
        if arch.is_host() {
            watch_in_root(&rootfs, "the OCI image", &[])?;
        }
        fs::remove_dir_all(&bundle)?;
    }
    fs::remove_dir_all(&layout)?;

    // The same image under a real engine, with the README's command.
    crate::docker_test::run(&dist.join(format!("droptrace-{version}-docker.tar")))?;
    say(&format!(
        "passed: {}, {} and {}",
        deb.display(),
        arm64_deb.display(),
        archive.display()
    ));
    Ok(())
}

/// `arch`'s tarball: its binary (for that machine) and the deployment files beside it.
fn check_tarball(dist: &Path, work: &Path, arch: Arch, version: &str) -> anyhow::Result<()> {
    let tarball = arch.tarball(version);
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(dist.join(format!("{tarball}.tar.gz")))
        .output()
        .context("cannot list the tarball")?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    for file in crate::dist::DEPLOY_FILES.iter().chain(&["droptrace"]) {
        if !listing.lines().any(|l| l == format!("{tarball}/{file}")) {
            bail!("{tarball}.tar.gz lacks {file}");
        }
    }
    // The binary as a user unpacks it: static, and for this machine.
    let unpacked = work.join(format!("tarball-{}", arch.debian()));
    if unpacked.exists() {
        fs::remove_dir_all(&unpacked)?;
    }
    fs::create_dir_all(&unpacked)?;
    run_checked(
        Command::new("tar")
            .arg("-xzf")
            .arg(dist.join(format!("{tarball}.tar.gz")))
            .arg("-C")
            .arg(&unpacked)
            .arg(format!("{tarball}/droptrace")),
    )?;
    crate::dist::check_static(&unpacked.join(&tarball).join("droptrace"), arch)
        .with_context(|| format!("{tarball}.tar.gz"))?;
    fs::remove_dir_all(&unpacked)?;
    say(&format!(
        "{tarball}.tar.gz: {} binary, man pages, completions and deploy/ files",
        arch.uname()
    ));
    Ok(())
}

/// `--version`, `man` and `completions bash` of the installed droptrace (built for `arch`),
/// and its files where Debian's tools look for them.
fn check_installed(root: &Path, version: &str, arch: Arch) -> anyhow::Result<()> {
    let v = in_root(root, &["droptrace", "--version"])?;
    if !v.contains(version) || !v.contains(arch.rust_target()) {
        bail!(
            "droptrace --version in the root says {v:?}, not {version} for {}",
            arch.rust_target()
        );
    }
    let man = in_root(root, &["droptrace", "man", "watch"])?;
    if !man.contains(".TH") {
        bail!("droptrace man watch printed no man page");
    }
    let completions = in_root(root, &["droptrace", "completions", "bash"])?;
    if !completions.contains("complete") {
        bail!("droptrace completions bash printed no completion script");
    }
    for file in [
        "usr/bin/droptrace",
        "usr/share/man/man1/droptrace.1.gz",
        "usr/share/man/man1/droptrace-watch.1.gz",
        "usr/share/bash-completion/completions/droptrace",
        "usr/share/zsh/vendor-completions/_droptrace",
        "usr/share/fish/vendor_completions.d/droptrace.fish",
        "usr/share/droptrace/droptrace-alerts.yml",
        "usr/share/droptrace/droptrace-dashboard.json",
        "usr/share/droptrace/droptrace.yaml",
        "usr/sbin/iptables-nft-save",
        "usr/sbin/iptables-legacy-save",
        "usr/sbin/nft",
        "sbin/ipset",
    ] {
        let path = root.join(file);
        if !path.exists() && !root.join("usr").join(file).exists() {
            bail!("{file} is missing from the root");
        }
    }
    say(&format!("{}: {}", root.display(), v.trim()));
    Ok(())
}

/// Where the unit listens (its ExecStart's --listen).
const SERVICE_ADDR: &str = "127.0.0.1:9849";

/// The installed systemd unit: verified by systemd, then its command started.
fn service_in_root(root: &Path, work: &Path) -> anyhow::Result<()> {
    let unit_path = ["usr/lib/systemd/system", "lib/systemd/system"]
        .iter()
        .map(|d| root.join(d).join("droptrace.service"))
        .find(|p| p.exists())
        .context("the package installs no droptrace.service")?;
    let unit = fs::read_to_string(&unit_path)?;
    // systemd-analyze checks that ExecStart's binary exists on this host: point it at the
    // root's copy (static, it runs anywhere).
    let check_dir = work.join("unit-check");
    fs::create_dir_all(&check_dir)?;
    let binary = root.join("usr/bin/droptrace");
    let copy = check_dir.join("droptrace.service");
    fs::write(
        &copy,
        unit.replace("/usr/bin/droptrace", &binary.display().to_string()),
    )?;
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .context("cannot run systemd-analyze")?;
    let complaints = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !complaints.trim().is_empty() {
        bail!(
            "systemd-analyze verify droptrace.service: {}",
            complaints.trim()
        );
    }
    fs::remove_dir_all(&check_dir)?;

    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .context("droptrace.service has no ExecStart")?;
    let args: Vec<&str> = exec.split_whitespace().collect();
    if !exec.contains(SERVICE_ADDR) {
        bail!("droptrace.service does not listen on {SERVICE_ADDR}: {exec}");
    }
    let mut child = root_command(root, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the unit's command")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let healthy = loop {
        if let Ok(body) = crate::http::get(SERVICE_ADDR, "/healthz")
            && body.starts_with("HTTP/1.1 200")
            && body.contains(r#""status":"ok""#)
        {
            break true;
        }
        if std::time::Instant::now() > deadline || child.try_wait()?.is_some() {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !healthy {
        bail!(
            "the unit's command never answered /healthz: {}",
            stderr.trim()
        );
    }
    if !out.status.success() {
        bail!(
            "the unit's command exited with {} on SIGTERM: {}",
            out.status,
            stderr.trim()
        );
    }
    say(&format!(
        "the .deb's droptrace.service: verified, `{exec}` served /healthz, SIGTERM ended it"
    ));
    Ok(())
}

/// The installed unit's `CapabilityBoundingSet`, as setpriv's `--bounding-set` takes it
/// (`-all,+bpf,+perfmon,...`).
fn unit_bounding_set(root: &Path) -> anyhow::Result<String> {
    let unit = ["usr/lib/systemd/system", "lib/systemd/system"]
        .iter()
        .map(|d| root.join(d).join("droptrace.service"))
        .find(|p| p.exists())
        .context("the package installs no droptrace.service")?;
    let caps = fs::read_to_string(&unit)?
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .map(|l| {
            l.split_whitespace()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
                .collect::<Vec<_>>()
        })
        .context("droptrace.service sets no CapabilityBoundingSet")?;
    Ok(format!("-all,{}", caps.join(",")))
}

/// `droptrace watch` from the root (behind `prefix`, a command that runs it) while a
/// connection to a port dropped in OUTPUT is tried in a namespace: the drop must be
/// reported with its rule, `exact`.
fn watch_in_root(root: &Path, what: &str, prefix: &[&str]) -> anyhow::Result<()> {
    dropped_connection_named(what, |ns| {
        let watch = [
            "droptrace",
            "watch",
            "--netns",
            ns,
            "--json",
            "--duration",
            "6s",
        ];
        root_command(root, &[prefix, &watch[..]].concat())
    })
}

/// A network namespace whose OUTPUT drops TCP 8443, `watch` started by `command` (given
/// the namespace's name; it must print JSON lines and end by itself), and a connection to
/// 127.0.0.1:8443 from the namespace: the drop must be reported with its rule, `exact`.
/// `what` names the droptrace under test in messages.
pub(crate) fn dropped_connection_named(
    what: &str,
    command: impl FnOnce(&str) -> Command,
) -> anyhow::Result<()> {
    let ns = Netns::create("dt-pkg")?;
    ns.exec(&[
        "iptables", "-A", "OUTPUT", "-p", "tcp", "--dport", "8443", "-j", "DROP",
    ])?;
    let mut child = command(&ns.name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start droptrace from {what}"))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let first = lines.next().transpose()?.unwrap_or_default();
    if !first.contains(r#""type":"start""#) {
        let _ = child.kill();
        let out = child.wait_with_output()?;
        bail!(
            "droptrace from {what} did not start: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // One SYN and its retransmission, dropped: bash gives up after 2 s.
    let _ = Command::new("ip")
        .args(["netns", "exec", &ns.name, "timeout", "2", "bash", "-c"])
        .arg("exec 3<>/dev/tcp/127.0.0.1/8443")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "droptrace from {what} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let drops: Vec<serde_json::Value> = rest
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "drop" && v["dport"] == 8443)
        .collect();
    let named = drops.iter().find(|d| {
        d["attribution"] == "exact"
            && d["rule"]
                .as_str()
                .is_some_and(|r| r.contains("--dport 8443") && r.contains("-j DROP"))
    });
    match named {
        Some(d) => {
            say(&format!(
                "{what}: drop to 127.0.0.1:8443 reported, rule {} (exact)",
                d["rule"]
            ));
            Ok(())
        }
        None => bail!(
            "droptrace from {what} reported no drop to 8443 with its rule, exact: {}",
            drops
                .iter()
                .map(|d| format!("{} ({}: {})", d["rule"], d["attribution"], d["why"]))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}
