//! Another architecture's guest tools, from Debian's packages: bookworm's busybox-static,
//! iptables, nftables, iproute2 and bpftool for that architecture with every package they
//! depend on, downloaded once into the cache (with an apt state of its own) and unpacked.
//! Nothing of it runs on this machine.

use super::*;

/// What the guest's /init runs, besides droptrace.
const TOOLS: &[&str] = &[
    "busybox-static",
    "iptables",
    "nftables",
    "iproute2",
    "bpftool",
];
/// The suite the tools come from: the release our machines run, so the host's names for
/// iptables' alternatives are the guest's too.
const SUITE: &str = "bookworm";

/// The unpacked root of `arch`'s tools, from the cache or downloaded now.
pub(super) fn unpacked(cache: &Path, arch: Arch) -> anyhow::Result<PathBuf> {
    let dir = cache.join("tools").join(arch.debian());
    let root = dir.join("root");
    // Written last: a root without it is a download cut short.
    let complete = dir.join("complete");
    if complete.exists() {
        say(&format!("{}: cached guest tools", arch.debian()));
        return Ok(root);
    }
    let apt = Apt::for_suite(cache, SUITE, Archive::Debian, arch)?;
    apt.update()?;
    say(&format!(
        "{}: downloading {} from {SUITE} with their dependencies, once",
        arch.debian(),
        TOOLS.join(", ")
    ));
    let archives = apt.dir.join("cache/archives");
    for old in fs::read_dir(&archives)?.filter_map(Result::ok) {
        if old.path().extension() == Some(OsStr::new("deb")) {
            fs::remove_file(old.path())?;
        }
    }
    // apt's status is empty (Apt::options): every dependency is downloaded, libc included.
    run_checked(
        apt.apt_get()
            .args([
                "install",
                "--download-only",
                "--no-install-recommends",
                "-y",
            ])
            .args(TOOLS),
    )?;
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(&root)?;
    let mut count = 0;
    for deb in fs::read_dir(&archives)?.filter_map(Result::ok) {
        if deb.path().extension() == Some(OsStr::new("deb")) {
            run_checked(Command::new("dpkg").arg("-x").arg(deb.path()).arg(&root))?;
            count += 1;
        }
    }
    fs::write(&complete, format!("{count} packages\n"))?;
    say(&format!(
        "{}: {count} packages unpacked in {}",
        arch.debian(),
        root.display()
    ));
    Ok(root)
}
