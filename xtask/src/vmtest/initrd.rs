//! The initramfs: a userland shared by all kernels, and one module tree per kernel. The
//! kernel unpacks concatenated cpio archives in turn, so the initrd is the two, appended.

use super::*;

pub(super) struct WorkDir {
    pub(super) path: PathBuf,
    pub(super) keep: bool,
}

impl WorkDir {
    pub(super) fn new(keep: bool) -> anyhow::Result<WorkDir> {
        let path = env::temp_dir().join(format!("droptrace-vmtest-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)?;
        Ok(WorkDir { path, keep })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            say(&format!(
                "kept {} (initramfs, */console.log)",
                self.path.display()
            ));
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A host program in the usual directories.
pub(super) fn host_tool(name: &str) -> anyhow::Result<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{name} not found on this machine (`cargo xtask setup` installs it)")
        })
}

/// `path` inside `root`.
pub(super) fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Copies `src` to `dest` in the guest (following symlinks), and notes its libraries.
pub(super) fn add_file(
    root: &Path,
    src: &Path,
    dest: &Path,
    libs: &mut BTreeSet<PathBuf>,
) -> anyhow::Result<()> {
    let target = inside(root, dest);
    fs::create_dir_all(target.parent().expect("absolute path"))?;
    fs::copy(src, &target).with_context(|| format!("cannot copy {}", src.display()))?;
    libs.extend(ldd(src)?);
    Ok(())
}

/// The shared libraries a dynamic ELF file needs (none for static ones and scripts).
pub(super) fn ldd(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(path)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let file = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match file {
            Some(f) if f.starts_with('/') => libs.push(PathBuf::from(f)),
            Some("not") => bail!("{}: a library is missing: {}", path.display(), line.trim()),
            _ => {}
        }
    }
    Ok(libs)
}

/// Where the guest's tools come from.
pub(super) enum Tools {
    /// This machine's own (x86_64 guests): busybox-static, and iptables, nft, ip and bpftool
    /// with the shared libraries ldd names.
    Host,
    /// A root of another architecture's Debian packages, unpacked ([`super::foreign_tools`]).
    Unpacked(PathBuf),
}

pub(super) fn build_userland(
    root: &Path,
    droptrace: &Path,
    tools: &Tools,
    cpio: &Path,
) -> anyhow::Result<()> {
    say("building the guest userland (busybox, droptrace, iptables nft+legacy, nft, ip)");
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "tmp", "root",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    match tools {
        Tools::Host => host_tools(root)?,
        Tools::Unpacked(dir) => unpacked_tools(root, dir)?,
    }
    // busybox's applets, where no real tool of that name is.
    let applets = Command::new(host_tool("busybox")?).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&applets.stdout)
        .lines()
        .filter(|a| *a != "busybox")
    {
        link_if_absent("busybox", &root.join("bin").join(applet))?;
    }
    // The kernel runs /sbin/modprobe to load netfilter modules on demand.
    link_if_absent("../bin/busybox", &root.join("sbin/modprobe"))?;

    let init = root.join("init");
    fs::write(&init, INIT)?;
    run_checked(Command::new("chmod").arg("755").arg(&init))?;
    let target = root.join("usr/bin/droptrace");
    fs::copy(droptrace, &target).with_context(|| format!("cannot copy {}", droptrace.display()))?;
    // iptables, iptables-legacy, iptables-nft-save, ...: the host's names for the two
    // multi-call binaries (through Debian's alternatives: iptables is iptables-nft).
    let nft_multi = host_tool("xtables-nft-multi")?;
    let dir = nft_multi.parent().expect("absolute path");
    for entry in fs::read_dir(dir)?.filter_map(Result::ok) {
        let Ok(target) = fs::canonicalize(entry.path()) else {
            continue;
        };
        let name = target.file_name().unwrap_or_default();
        if entry.path() != target && (name == "xtables-nft-multi" || name == "xtables-legacy-multi")
        {
            link_if_absent(
                Path::new(name),
                &root.join("usr/sbin").join(entry.file_name()),
            )?;
        }
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    pack(root, cpio)
}

/// A symlink at `at` to `to`, unless something is there already.
fn link_if_absent(to: impl AsRef<Path>, at: &Path) -> anyhow::Result<()> {
    if at.symlink_metadata().is_ok() {
        return Ok(());
    }
    symlink(to, at).with_context(|| format!("cannot link {}", at.display()))
}

/// This machine's busybox-static, iptables, nft, ip and bpftool, and their libraries.
fn host_tools(root: &Path) -> anyhow::Result<()> {
    let mut libs = BTreeSet::new();
    let busybox = host_tool("busybox")?;
    add_file(root, &busybox, Path::new("/bin/busybox"), &mut libs)?;
    if !libs.is_empty() {
        bail!(
            "{} is not static: install busybox-static",
            busybox.display()
        );
    }
    for tool in ["ip", "nft", "xtables-nft-multi", "xtables-legacy-multi"] {
        add_file(
            root,
            &host_tool(tool)?,
            &Path::new("/usr/sbin").join(tool),
            &mut libs,
        )?;
    }
    // The kill -9 case counts the programs left in the kernel with it.
    let bpftool = host_tool("bpftool")?;
    add_file(root, &bpftool, Path::new("/usr/sbin/bpftool"), &mut libs)?;
    // The match and target plugins xtables dlopens.
    let plugins = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    for entry in
        fs::read_dir(plugins).with_context(|| format!("cannot read {}", plugins.display()))?
    {
        let path = entry?.path();
        add_file(root, &path, &path, &mut libs)?;
    }
    for lib in &libs {
        let target = inside(root, lib);
        if !target.exists() {
            fs::create_dir_all(target.parent().expect("absolute path"))?;
            fs::copy(lib, &target).with_context(|| format!("cannot copy {}", lib.display()))?;
        }
    }
    for etc in ["protocols", "services", "ethertypes"] {
        let src = Path::new("/etc").join(etc);
        if src.is_file() {
            fs::copy(&src, root.join("etc").join(etc))?;
        }
    }
    Ok(())
}

/// The unpacked packages, without their documentation (the guest's RAM holds the
/// initramfs).
fn unpacked_tools(root: &Path, unpacked: &Path) -> anyhow::Result<()> {
    run_checked(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", unpacked.display()))
            .arg(root),
    )?;
    for dir in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "usr/share/info",
    ] {
        let path = root.join(dir);
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
    }
    for tool in [
        "bin/busybox",
        "usr/sbin/bpftool",
        "usr/sbin/xtables-nft-multi",
        "usr/sbin/nft",
    ] {
        if !root.join(tool).exists() {
            bail!("the unpacked packages hold no /{tool}");
        }
    }
    Ok(())
}

/// `root` as a newc cpio archive, owned by root.
pub(super) fn pack(root: &Path, cpio: &Path) -> anyhow::Result<()> {
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 > \"$0\"")
        .arg(cpio)
        .current_dir(root)
        .status()?;
    if !status.success() {
        bail!("packing {} failed ({status})", root.display());
    }
    Ok(())
}

pub(super) fn build_initrd(dir: &Path, kernel: &Kernel, common: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("modules");
    let moddir = root.join("lib/modules").join(&kernel.release);
    fs::create_dir_all(&moddir)?;

    // The netfilter modules and everything they depend on, from the full tree's modules.dep.
    let dep_text = fs::read_to_string(kernel.modules.join("modules.dep"))?;
    let deps: BTreeMap<&str, Vec<&str>> = dep_text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m, d.split_whitespace().collect()))
        .collect();
    let mut wanted = BTreeSet::new();
    let mut todo: VecDeque<&str> = deps
        .keys()
        .filter(|m| MODULE_DIRS.iter().any(|d| m.starts_with(d)))
        .copied()
        .collect();
    while let Some(m) = todo.pop_front() {
        if wanted.insert(m) {
            todo.extend(deps.get(m).into_iter().flatten());
        }
    }
    // busybox modprobe reads plain .ko files: unpack compressed ones (one call per tool).
    let mut compressed: BTreeMap<&str, Vec<PathBuf>> = BTreeMap::new();
    for m in &wanted {
        let target = moddir.join(m);
        fs::create_dir_all(target.parent().expect("kernel/..."))?;
        fs::copy(kernel.modules.join(m), &target)?;
        for (ext, tool) in [("xz", "xz"), ("zst", "zstd"), ("gz", "gzip")] {
            if target.extension() == Some(OsStr::new(ext)) {
                compressed.entry(tool).or_default().push(target.clone());
            }
        }
    }
    for (tool, files) in compressed {
        run_checked(Command::new(tool).args(["-d", "-q", "-f"]).args(files))?;
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        if kernel.modules.join(f).is_file() {
            fs::copy(kernel.modules.join(f), moddir.join(f))?;
        }
    }
    run_checked(
        Command::new("depmod")
            .arg("-b")
            .arg(&root)
            .arg(&kernel.release),
    )?;
    let modules_cpio = dir.join("modules.cpio");
    pack(&root, &modules_cpio)?;

    let initrd = dir.join("initrd.cpio");
    let mut bytes = fs::read(common)?;
    bytes.extend(fs::read(&modules_cpio)?);
    fs::write(&initrd, &bytes)?;
    say(&format!(
        "{}: initramfs with {} modules, {:.1} MB",
        kernel.release,
        wanted.len(),
        bytes.len() as f64 / 1e6
    ));
    Ok(initrd)
}
