//! `cargo xtask vm-test`: droptrace on other kernels, under qemu.
//!
//! Our machines and CI all run one kernel (6.18), but droptrace must work on the kernels
//! production runs. This task boots Debian's stock kernels (5.10, 6.1, 6.12, the 6.18 LTS
//! our machines run, from trixie-backports, and sid's newest) in qemu, each with a small
//! busybox initramfs holding the release droptrace binary, iptables (nft and legacy), nft,
//! ip and the kernel's netfilter modules. The guest's /init (xtask/vm/init.sh) replays the
//! incident with each iptables backend and with `--attempts`, runs `droptrace doctor`
//! (every program loaded and unloaded) and `droptrace inventory`, and reports on the
//! serial console; the host prints one table row per kernel and backend, and a table of
//! every program's verifier figures per kernel.
//!
//! - Installs what is missing (qemu-system-x86, busybox-static, cpio, kmod, xz-utils) with
//!   apt-get, and says so; bpftool goes into the guest if the machine has it.
//! - Kernel packages are downloaded once into a cache outside the repo
//!   (/var/cache/droptrace-vmtest, or $DROPTRACE_VMTEST_CACHE) with a separate apt
//!   configuration (its own sources list, package lists and caches), so the machine's own
//!   apt sources and lists stay untouched. `--refresh` looks for newer kernels.
//! - The mirror is the one the machine's apt already uses (its `.../debian` and
//!   `.../debian-security` URIs), or $DROPTRACE_VMTEST_MIRROR.
//! - qemu runs with software emulation (TCG): Debian kernels hang with KVM on our machines.
//!   Two guests run at a time (2 cores), each with a timeout so CI can never hang.
//! - Which kernels must pass is the table [`KERNELS`]; every one does today, 5.10 included
//!   (no drop reasons, no module BTF: drops are recognised by location and confirmed by
//!   counters, the verdict probes stay off). A kernel marked `expect_pass: false` would
//!   have its result shown without failing the task; a guest that gives no report at all
//!   always fails it (the harness itself is broken).

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    env,
    ffi::OsStr,
    fmt::Write as _,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::run_checked;

/// A kernel of the matrix: the newest `linux-image-<release_prefix>*-cloud-amd64` of a
/// Debian suite.
struct KernelSpec {
    /// What `--kernel` selects and the table shows.
    label: &'static str,
    suite: &'static str,
    archive: Archive,
    /// The kernel release must start with this ("" = the newest in the suite).
    release_prefix: &'static str,
    /// Whether droptrace must work there today. Flip when it does.
    expect_pass: bool,
    /// Why not, when it need not.
    why_not: &'static str,
    /// Whether the rule engines' verdicts must be seen there (kprobes on nft_do_chain /
    /// ipt_do_table, with offsets from module BTF, which 5.10 lacks): every drop is then
    /// `exact` with the kernel's confirmation.
    kernel_verdicts: bool,
    /// Programs `droptrace doctor` may find unavailable there (never refused), and why;
    /// every other program must load.
    may_lack: &'static [(&'static str, &'static str)],
    /// Instructions a program may take the verifier there, when this kernel's verifier
    /// needs more than our budget (`None`: the budget doctor reports, a quarter of the
    /// limit), and why.
    insn_budget: Option<(u64, &'static str)>,
}

/// The rule engines' verdict probes, which need the engines' module BTF.
const VERDICT_PROBES: [&str; 3] = ["nft_do_chain_entry", "xt_do_table_entry", "do_table_return"];

#[derive(Clone, Copy)]
enum Archive {
    Debian,
    Security,
}

const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        label: "5.10",
        suite: "bullseye-security",
        archive: Archive::Security,
        release_prefix: "5.10.",
        expect_pass: true,
        why_not: "",
        kernel_verdicts: false,
        may_lack: &[
            (VERDICT_PROBES[0], "no module BTF on 5.10"),
            (VERDICT_PROBES[1], "no module BTF on 5.10"),
            (VERDICT_PROBES[2], "no module BTF on 5.10"),
            (
                "inventory_send",
                "no sock_send_length tracepoint before 6.3",
            ),
        ],
        insn_budget: None,
    },
    KernelSpec {
        label: "6.1",
        suite: "bookworm",
        archive: Archive::Debian,
        release_prefix: "6.1.",
        expect_pass: true,
        why_not: "",
        kernel_verdicts: true,
        may_lack: &[(
            "inventory_send",
            "no sock_send_length tracepoint before 6.3",
        )],
        // Measured 2026-12-06: kfree_skb 629,264 instructions on 6.1 against 17,949-20,037
        // on 6.12, 6.18 and 7.2 (its verifier prunes the flow cache's paths far less). The
        // tightest margin in the matrix: held at three quarters of the limit here.
        insn_budget: Some((
            750_000,
            "6.1's verifier prunes far less: kfree_skb measured 629,264 of 1,000,000",
        )),
    },
    KernelSpec {
        label: "6.12",
        suite: "trixie-security",
        archive: Archive::Security,
        release_prefix: "6.12.",
        expect_pass: true,
        why_not: "",
        kernel_verdicts: true,
        may_lack: &[],
        insn_budget: None,
    },
    KernelSpec {
        // The LTS kernel our machines run, as Debian's backports carry it.
        label: "6.18",
        suite: "trixie-backports",
        archive: Archive::Debian,
        release_prefix: "6.18.",
        expect_pass: true,
        why_not: "",
        kernel_verdicts: true,
        may_lack: &[],
        insn_budget: None,
    },
    KernelSpec {
        // sid moves on (7.2 in 2026-11): always its newest, so the matrix never goes stale.
        label: "sid",
        suite: "sid",
        archive: Archive::Debian,
        release_prefix: "",
        expect_pass: true,
        why_not: "",
        kernel_verdicts: true,
        may_lack: &[],
        insn_budget: None,
    },
];

/// Debian packages on the host: (package, why).
const PACKAGES: &[(&str, &str)] = &[
    (
        "qemu-system-x86",
        "qemu-system-x86_64 boots the test kernels",
    ),
    ("busybox-static", "the guest's /init, shell and tools"),
    ("cpio", "packs the initramfs"),
    ("kmod", "depmod for the guest's module tree"),
    (
        "xz-utils",
        "unpacks .ko.xz modules (6.12+) for busybox modprobe",
    ),
];

/// The guest's /init.
const INIT: &str = include_str!("../vm/init.sh");

/// Guests run at once (our machines have 2 cores).
const JOBS: usize = 2;
/// One guest, boot to poweroff: about 25 s when droptrace works; a droptrace that hangs
/// is stopped by the guest after 100 s per backend.
const GUEST_TIMEOUT: Duration = Duration::from_secs(240);
/// How long a guest may take to reach its /init (the `VMTEST-KERNEL` line; ~15 s is usual).
/// Under TCG a guest now and then hangs in the firmware before the kernel starts, which
/// says nothing about droptrace: such a boot is retried once, and the retry is reported.
const INIT_TIMEOUT: Duration = Duration::from_secs(120);
/// The netfilter modules the guest gets, with their dependencies.
const MODULE_DIRS: &[&str] = &[
    "kernel/net/netfilter/",
    "kernel/net/ipv4/netfilter/",
    "kernel/net/ipv6/netfilter/",
];
/// Where the guest's traffic goes; both ports must show up as drops.
const EXPECTED_DPORTS: &[u64] = &[8443, 5044];
const BACKENDS: &[&str] = &["nft", "legacy", "nftables", "nft-perf", "attempts"];
/// Longer first error lines (verifier logs) are printed in full below the table.
const ERROR_WIDTH: usize = 90;

#[derive(clap::Args, Default)]
pub struct Args {
    /// Only this kernel: 5.10, 6.1, 6.12, 6.18 or sid (or a suite name, or the version of a cached
    /// kernel, e.g. 7.2 for sid's); repeatable.
    #[arg(long = "kernel", value_name = "KERNEL")]
    kernels: Vec<String>,
    /// Keep the work directory (initramfs, serial console logs) and say where it is.
    #[arg(long)]
    keep: bool,
    /// Look for newer kernel packages even if some are cached.
    #[arg(long)]
    refresh: bool,
}

fn say(msg: &str) {
    eprintln!("xtask vm-test: {msg}");
}

pub fn run(droptrace: &Path, args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let cache = cache_dir();
    let specs = select(&args.kernels, &cache)?;
    packages()?;
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let kernels = kernels(&cache, &specs, args.refresh)?;
    say(&format!("kernels ready after {:.0?}", started.elapsed()));

    let work = WorkDir::new(args.keep)?;
    let common = work.path.join("common.cpio");
    build_userland(&work.path.join("userland"), droptrace, &common)?;
    let mut guests = Vec::new();
    for (spec, kernel) in specs.iter().zip(&kernels) {
        let dir = work.path.join(spec.label);
        let initrd = build_initrd(&dir, kernel, &common)?;
        guests.push(Guest {
            spec,
            kernel,
            initrd,
            console: dir.join("console.log"),
        });
    }
    say(&format!(
        "booting {} kernel(s) under qemu (TCG, {JOBS} at a time, {}s timeout each)",
        guests.len(),
        GUEST_TIMEOUT.as_secs()
    ));
    let boot_started = Instant::now();
    let outcomes = boot_all(&guests);
    say(&format!("guests done in {:.0?}", boot_started.elapsed()));

    let reports: Vec<Report> = guests
        .iter()
        .zip(outcomes)
        .map(|(g, outcome)| Report::new(g, outcome))
        .collect();
    print!("{}", table(&reports));
    let failures: Vec<String> = reports.iter().flat_map(Report::failures).collect();
    say(&format!("total {:.0?}", started.elapsed()));
    if !failures.is_empty() {
        if !args.keep {
            say("run with --keep to keep the serial console logs");
        }
        bail!("vm-test failed (details above): {}", failures.join(", "));
    }
    Ok(())
}

fn select(wanted: &[String], cache: &Path) -> anyhow::Result<Vec<&'static KernelSpec>> {
    if wanted.is_empty() {
        return Ok(KERNELS.iter().collect());
    }
    wanted
        .iter()
        .map(|w| {
            KERNELS
                .iter()
                .find(|k| k.label == w || k.suite == w)
                .or_else(|| {
                    // "7.2": the kernel whose cached release it is (sid's, today).
                    KERNELS.iter().find(|k| {
                        Kernel::load(&cache.join("kernels").join(k.label))
                            .is_some_and(|c| c.release.starts_with(&format!("{w}.")))
                    })
                })
                .with_context(|| {
                    let known: Vec<_> = KERNELS.iter().map(|k| k.label).collect();
                    format!("unknown kernel {w:?}: choose from {}", known.join(", "))
                })
        })
        .collect()
}

fn packages() -> anyhow::Result<()> {
    crate::setup::install_packages(PACKAGES, say)
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os("DROPTRACE_VMTEST_CACHE") {
        return PathBuf::from(dir);
    }
    if crate::nix_is_root() {
        return PathBuf::from("/var/cache/droptrace-vmtest");
    }
    env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(env::temp_dir)
        .join("droptrace-vmtest")
}

// ---------------------------------------------------------------------------------------
// Kernels: download once, unpack, depmod.

/// An unpacked kernel in the cache.
struct Kernel {
    /// `uname -r`, e.g. 6.1.0-50-cloud-amd64.
    release: String,
    vmlinuz: PathBuf,
    /// lib/modules/RELEASE of the unpacked packages, with depmod's output.
    modules: PathBuf,
}

impl Kernel {
    /// The cache entry of `dir`, if it is complete (`release` is written last).
    fn load(dir: &Path) -> Option<Kernel> {
        let release = fs::read_to_string(dir.join("release"))
            .ok()?
            .trim()
            .to_string();
        let root = dir.join("root");
        let modules = [root.join("lib/modules"), root.join("usr/lib/modules")]
            .into_iter()
            .map(|d| d.join(&release))
            .find(|d| d.join("modules.dep").is_file())?;
        let vmlinuz = [
            root.join("boot").join(format!("vmlinuz-{release}")),
            modules.join("vmlinuz"),
        ]
        .into_iter()
        .find(|p| p.is_file())?;
        Some(Kernel {
            release,
            vmlinuz,
            modules,
        })
    }
}

fn kernels(cache: &Path, specs: &[&KernelSpec], refresh: bool) -> anyhow::Result<Vec<Kernel>> {
    let mut out = Vec::new();
    for spec in specs {
        let dir = cache.join("kernels").join(spec.label);
        let cached = Kernel::load(&dir);
        if let Some(k) = &cached
            && !refresh
        {
            say(&format!("{}: cached {}", spec.label, k.release));
        }
        let kernel = match cached {
            Some(k) if !refresh => k,
            cached => {
                let apt = Apt::new(cache, spec)?;
                apt.update()?;
                let (release, packages) = apt.newest(spec)?;
                match cached {
                    Some(k) if k.release == release => {
                        say(&format!(
                            "{}: {release} is still the newest in {}",
                            spec.label, spec.suite
                        ));
                        k
                    }
                    _ => download(&apt, spec, &dir, &release, &packages)?,
                }
            }
        };
        out.push(kernel);
    }
    Ok(out)
}

/// apt with its own sources list, package lists and caches for one suite, under the cache.
struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(cache: &Path, spec: &KernelSpec) -> anyhow::Result<Apt> {
        let dir = cache.join("apt").join(spec.suite);
        fs::create_dir_all(dir.join("lists/partial"))?;
        fs::create_dir_all(dir.join("cache/archives/partial"))?;
        let (debian, security) = mirrors()?;
        let uri = match spec.archive {
            Archive::Debian => debian,
            Archive::Security => security,
        };
        fs::write(
            dir.join("sources.list"),
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {uri} {} main\n",
                spec.suite
            ),
        )?;
        Ok(Apt { dir })
    }

    fn options(&self, cmd: &mut Command) {
        let d = self.dir.display();
        for opt in [
            format!("Dir::Etc::sourcelist={d}/sources.list"),
            "Dir::Etc::sourceparts=-".into(),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::Cache={d}/cache"),
            // The machine's installed packages are irrelevant to a download.
            "Dir::State::status=/dev/null".into(),
            "Acquire::Languages=none".into(),
            // Our cache is root's; apt would warn that its _apt user cannot write there.
            "APT::Sandbox::User=root".into(),
        ] {
            cmd.arg("-o").arg(opt);
        }
    }

    fn apt_get(&self) -> Command {
        let mut cmd = Command::new("apt-get");
        cmd.arg("-qq");
        self.options(&mut cmd);
        cmd
    }

    fn cache_query(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new("apt-cache");
        self.options(&mut cmd);
        cmd.args(args);
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn update(&self) -> anyhow::Result<()> {
        say(&format!(
            "reading the package list of {} (separate apt state in {})",
            self.dir.file_name().unwrap_or_default().to_string_lossy(),
            self.dir.display()
        ));
        run_checked(self.apt_get().args(["update", "--error-on=any"]))
    }

    /// The newest kernel release of the suite matching `spec`, and the packages that hold
    /// its vmlinuz and modules.
    ///
    /// A release whose packages are not all in the suite is passed over: backports list
    /// the names of a newer kernel before its packages are there (6.18.15's image had no
    /// candidate while its name was listed).
    fn newest(&self, spec: &KernelSpec) -> anyhow::Result<(String, Vec<String>)> {
        let names = self.cache_query(&["pkgnames", "linux-image-"])?;
        let mut releases: Vec<&str> = names
            .lines()
            .filter_map(|n| n.strip_prefix("linux-image-"))
            .filter(|r| {
                r.starts_with(|c: char| c.is_ascii_digit())
                    && r.starts_with(spec.release_prefix)
                    && r.ends_with("-cloud-amd64")
            })
            .collect();
        releases.sort_by(|a, b| natural_cmp(b, a));
        for release in &releases {
            if let Some(packages) = self.packages_of(release)? {
                return Ok((release.to_string(), packages));
            }
            say(&format!(
                "{}: {release} is listed but not all its packages are in {}; trying an older one",
                spec.label, spec.suite
            ));
        }
        bail!(
            "no linux-image-{}*-cloud-amd64 with all its packages in {}",
            spec.release_prefix,
            spec.suite
        )
    }

    /// The packages that hold a release's vmlinuz and modules, or `None` when one of them
    /// has no candidate in the suite.
    fn packages_of(&self, release: &str) -> anyhow::Result<Option<Vec<String>>> {
        let image = format!("linux-image-{release}");
        if !self.has_candidate(&image)? {
            return Ok(None);
        }
        // In sid (7.x) linux-image-* is empty and depends on linux-binary-* (vmlinuz),
        // linux-modules-* and linux-base-* (modules.builtin, modules.order).
        let show = self.cache_query(&["show", "--no-all-versions", &image])?;
        let mut packages = vec![image];
        for dep in show
            .lines()
            .filter_map(|l| l.strip_prefix("Depends:"))
            .flat_map(|d| d.split(','))
            .filter_map(|d| d.split('|').next())
            .filter_map(|d| d.split_whitespace().next())
        {
            if ["linux-binary-", "linux-modules-", "linux-base-"]
                .iter()
                .any(|p| dep.starts_with(p))
            {
                if self.has_candidate(dep)? {
                    packages.push(dep.to_string());
                } else if !dep.starts_with("linux-base-") {
                    return Ok(None);
                }
                // trixie-backports' 6.18 images name a linux-base that the suite does not
                // carry, and hold modules.builtin and modules.order themselves.
            }
        }
        Ok(Some(packages))
    }

    fn has_candidate(&self, package: &str) -> anyhow::Result<bool> {
        let policy = self.cache_query(&["policy", package])?;
        Ok(policy
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate:"))
            .is_some_and(|c| c.trim() != "(none)"))
    }
}

/// The machine's Debian mirror (`.../debian`, `.../debian-security`), from its apt sources.
fn mirrors() -> anyhow::Result<(String, String)> {
    if let Some(m) = env::var_os("DROPTRACE_VMTEST_MIRROR") {
        let m = m.to_string_lossy().trim_end_matches('/').to_string();
        return Ok((m.clone(), format!("{m}-security")));
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(OsStr::to_str),
                    Some("list" | "sources")
                )
            })
            .collect();
        more.sort();
        files.extend(more);
    }
    let mut uris = Vec::new();
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        for line in text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
        {
            if let Some(list) = line.strip_prefix("URIs:") {
                uris.extend(list.split_whitespace().map(str::to_string));
            } else if let Some(rest) = line.strip_prefix("deb ") {
                // deb [options] URI suite components
                let mut in_options = false;
                for word in rest.split_whitespace() {
                    if word.starts_with('[') {
                        in_options = true;
                    }
                    if !in_options {
                        uris.push(word.to_string());
                        break;
                    }
                    if word.ends_with(']') {
                        in_options = false;
                    }
                }
            }
        }
    }
    let uris: Vec<String> = uris
        .iter()
        .map(|u| u.trim_end_matches('/').to_string())
        .collect();
    let debian = uris
        .iter()
        .find(|u| u.ends_with("/debian"))
        .context("no .../debian mirror in the apt sources: set DROPTRACE_VMTEST_MIRROR to one")?;
    let security = uris
        .iter()
        .find(|u| u.ends_with("/debian-security"))
        .cloned()
        .unwrap_or_else(|| format!("{debian}-security"));
    Ok((debian.clone(), security))
}

/// `5.10.0-9` < `5.10.0-46`: digit runs compare as numbers.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    enum Chunk<'s> {
        Number(u128),
        Text(&'s str),
    }
    fn key(s: &str) -> Vec<Chunk<'_>> {
        let mut out = Vec::new();
        let mut rest = s;
        while let Some(c) = rest.chars().next() {
            let digits = c.is_ascii_digit();
            let end = rest
                .find(|c: char| c.is_ascii_digit() != digits)
                .unwrap_or(rest.len());
            let (chunk, tail) = rest.split_at(end);
            out.push(match chunk.parse() {
                Ok(n) if digits => Chunk::Number(n),
                _ => Chunk::Text(chunk),
            });
            rest = tail;
        }
        out
    }
    key(a).cmp(&key(b))
}

fn download(
    apt: &Apt,
    spec: &KernelSpec,
    dir: &Path,
    release: &str,
    packages: &[String],
) -> anyhow::Result<Kernel> {
    say(&format!(
        "{}: downloading {release} from {} ({}), once",
        spec.label,
        spec.suite,
        packages.join(", ")
    ));
    let tmp = dir.with_extension("tmp");
    let _ = fs::remove_dir_all(&tmp);
    let debs = tmp.join("debs");
    let root = tmp.join("root");
    fs::create_dir_all(&debs)?;
    fs::create_dir_all(&root)?;
    run_checked(
        apt.apt_get()
            .arg("download")
            .args(packages)
            .current_dir(&debs),
    )?;
    for deb in fs::read_dir(&debs)? {
        run_checked(Command::new("dpkg").arg("-x").arg(deb?.path()).arg(&root))?;
    }
    fs::remove_dir_all(&debs)?;
    // The packages' postinst would run depmod; we need its modules.dep to pick the
    // netfilter modules' dependencies.
    let base = if root.join("usr/lib/modules").join(release).is_dir() {
        root.join("usr")
    } else {
        root.clone()
    };
    run_checked(Command::new("depmod").arg("-b").arg(&base).arg(release))?;
    fs::write(tmp.join("release"), format!("{release}\n"))?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&tmp, dir)?;
    Kernel::load(dir)
        .with_context(|| format!("no vmlinuz or modules for {release} in {}", dir.display()))
}

// ---------------------------------------------------------------------------------------
// The initramfs: a userland shared by all kernels, and one module tree per kernel. The
// kernel unpacks concatenated cpio archives in turn, so the initrd is the two, appended.

struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn new(keep: bool) -> anyhow::Result<WorkDir> {
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
fn host_tool(name: &str) -> anyhow::Result<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{name} not found on this machine (`cargo xtask setup` installs it)")
        })
}

/// `path` inside `root`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Copies `src` to `dest` in the guest (following symlinks), and notes its libraries.
fn add_file(
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
fn ldd(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
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

fn build_userland(root: &Path, droptrace: &Path, cpio: &Path) -> anyhow::Result<()> {
    say("building the guest userland (busybox, droptrace, iptables nft+legacy, nft, ip)");
    let mut libs = BTreeSet::new();
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "tmp", "root",
    ] {
        fs::create_dir_all(root.join(d))?;
    }

    let busybox = host_tool("busybox")?;
    add_file(root, &busybox, Path::new("/bin/busybox"), &mut libs)?;
    if !libs.is_empty() {
        bail!(
            "{} is not static: install busybox-static",
            busybox.display()
        );
    }
    let applets = Command::new(&busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&applets.stdout)
        .lines()
        .filter(|a| *a != "busybox")
    {
        symlink("busybox", root.join("bin").join(applet))?;
    }
    // The kernel runs /sbin/modprobe to load netfilter modules on demand.
    symlink("../bin/busybox", root.join("sbin/modprobe"))?;

    let init = root.join("init");
    fs::write(&init, INIT)?;
    run_checked(Command::new("chmod").arg("755").arg(&init))?;
    add_file(root, droptrace, Path::new("/usr/bin/droptrace"), &mut libs)?;

    for tool in ["ip", "nft", "xtables-nft-multi", "xtables-legacy-multi"] {
        add_file(
            root,
            &host_tool(tool)?,
            &Path::new("/usr/sbin").join(tool),
            &mut libs,
        )?;
    }
    // Optional, for poking around in a kept guest.
    if let Ok(bpftool) = host_tool("bpftool") {
        add_file(root, &bpftool, Path::new("/usr/sbin/bpftool"), &mut libs)?;
    }
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
            symlink(name, root.join("usr/sbin").join(entry.file_name()))?;
        }
    }
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
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    pack(root, cpio)
}

/// `root` as a newc cpio archive, owned by root.
fn pack(root: &Path, cpio: &Path) -> anyhow::Result<()> {
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

fn build_initrd(dir: &Path, kernel: &Kernel, common: &Path) -> anyhow::Result<PathBuf> {
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

// ---------------------------------------------------------------------------------------
// Booting.

struct Guest<'a> {
    spec: &'a KernelSpec,
    kernel: &'a Kernel,
    initrd: PathBuf,
    console: PathBuf,
}

enum Outcome {
    /// qemu exited by itself (the guest powered off, or it panicked and did not reboot).
    Exited {
        status: String,
        took: Duration,
    },
    TimedOut,
    /// The guest never reached its /init (see [`INIT_TIMEOUT`]).
    NoInit,
    Failed(String),
}

fn boot_all(guests: &[Guest]) -> Vec<Outcome> {
    let next = Mutex::new(0..guests.len());
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(guests.iter().map(|_| None).collect());
    thread::scope(|s| {
        for _ in 0..JOBS.min(guests.len()) {
            s.spawn(|| {
                loop {
                    let Some(i) = next.lock().expect("not poisoned").next() else {
                        break;
                    };
                    let outcome =
                        boot(&guests[i]).unwrap_or_else(|e| Outcome::Failed(format!("{e:#}")));
                    results.lock().expect("not poisoned")[i] = Some(outcome);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("not poisoned")
        .into_iter()
        .map(|o| o.expect("every guest ran"))
        .collect()
}

fn boot(g: &Guest) -> anyhow::Result<Outcome> {
    match boot_once(g)? {
        Outcome::NoInit => {
            say(&format!(
                "{}: the guest did not reach /init within {}s (stuck before the kernel ran): booting it again",
                g.spec.label,
                INIT_TIMEOUT.as_secs()
            ));
            boot_once(g)
        }
        other => Ok(other),
    }
}

fn boot_once(g: &Guest) -> anyhow::Result<Outcome> {
    let console = fs::File::create(&g.console)?;
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&g.kernel.vmlinuz)
        .arg("-initrd")
        .arg(&g.initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    say(&format!("{}: booting {}", g.spec.label, g.kernel.release));
    loop {
        if let Some(status) = child.try_wait()? {
            let took = started.elapsed();
            say(&format!("{}: guest finished in {took:.0?}", g.spec.label));
            return Ok(Outcome::Exited {
                status: status.to_string(),
                took,
            });
        }
        if started.elapsed() > INIT_TIMEOUT
            && !fs::read_to_string(&g.console).is_ok_and(|c| c.contains("VMTEST-KERNEL"))
        {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Outcome::NoInit);
        }
        if started.elapsed() > GUEST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            say(&format!(
                "{}: guest timed out after {}s, killed",
                g.spec.label,
                GUEST_TIMEOUT.as_secs()
            ));
            return Ok(Outcome::TimedOut);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------
// Reading the serial console.

/// One droptrace run in a guest.
#[derive(Default)]
struct Run {
    /// droptrace's exit code, or "rules" if the iptables rules could not be added.
    exit: Option<String>,
    /// From droptrace's start to its exit, as the guest saw it.
    took: Option<String>,
    start: Option<Value>,
    summary: Option<Value>,
    drops: Vec<Value>,
    stderr: Vec<String>,
}

impl Run {
    fn mode(&self) -> String {
        self.start
            .as_ref()
            .and_then(|s| s["mode"].as_str())
            .unwrap_or("-")
            .to_string()
    }

    /// Which engine functions reported verdicts, from the start line (`off` and why not).
    fn verdicts(&self) -> String {
        let v = self
            .start
            .as_ref()
            .and_then(|s| s["kernel_verdicts"].as_str())
            .unwrap_or("-");
        match v.strip_prefix("off") {
            Some(_) => "off".into(),
            None => v.replace(' ', ""),
        }
    }

    fn field_set(&self, field: &str) -> String {
        let set: BTreeSet<String> = self
            .drops
            .iter()
            .map(|d| match &d[field] {
                Value::String(s) => s.clone(),
                Value::Null => "?".into(),
                v => v.to_string(),
            })
            .collect();
        if set.is_empty() {
            "-".into()
        } else {
            set.into_iter().collect::<Vec<_>>().join(",")
        }
    }

    /// Why this run does not count as working, if it does not. `kernel_verdicts`: the
    /// engines' verdicts must have confirmed every attribution.
    fn problem(&self, backend: &str, kernel_verdicts: bool) -> Option<String> {
        let first_err = || self.stderr.iter().find(|l| !l.trim().is_empty()).cloned();
        match self.exit.as_deref() {
            None => return Some("no report from the guest".into()),
            Some("rules") => {
                return Some(first_err().unwrap_or_else(|| "iptables rules failed".into()));
            }
            Some("0") => {}
            Some(code) => {
                return Some(
                    first_err().unwrap_or_else(|| format!("droptrace exited with {code}")),
                );
            }
        }
        if self.start.is_none() {
            return Some("no start line".into());
        }
        if self.summary.is_none() {
            return Some("no summary line".into());
        }
        let missing: Vec<String> = EXPECTED_DPORTS
            .iter()
            .filter(|p| !self.drops.iter().any(|d| d["dport"].as_u64() == Some(**p)))
            .map(u64::to_string)
            .collect();
        if !missing.is_empty() {
            return Some(format!("no drop reported for dport {}", missing.join(", ")));
        }
        // tp_btf loads on every kernel of the matrix: a silent fallback to the classic
        // tracepoint (the verifier refusing the tp_btf program) is a failure. nft-perf forces
        // the tracepoint.
        let mode = self.mode();
        if backend != "nft-perf" && !mode.starts_with("tp_btf/") {
            return Some(format!("fell back to {mode}"));
        }
        // The incident's rule is named on every kernel: by the engine's own verdict where
        // it is watched, else by evaluation confirmed by the rule's counter.
        if let Some(d) = self.drops.iter().find(|d| d["attribution"] != "exact") {
            return Some(format!(
                "drop to dport {} attributed {} ({})",
                d["dport"], d["attribution"], d["why"]
            ));
        }
        // init.sh: native nft drops in user chain `hardening` of `inet fw`; iptables in
        // filter/OUTPUT.
        let (table, chain) = match backend {
            "nftables" => ("fw", "hardening"),
            _ => ("filter", "OUTPUT"),
        };
        if let Some(d) = self
            .drops
            .iter()
            .find(|d| d["table"] != table || d["chain"] != chain)
        {
            return Some(format!(
                "drop to dport {} attributed to {}/{}, not {table}/{chain}",
                d["dport"], d["table"], d["chain"]
            ));
        }
        // init.sh dials the payment gateway once: one attempt, dropped.
        if backend == "attempts" {
            let summary = self.summary.as_ref().expect("checked above");
            let services = summary["services"].as_array();
            let gateway = services
                .into_iter()
                .flatten()
                .find(|s| s["dst"] == "203.0.113.10:8443" && s["proto"] == "tcp");
            match gateway {
                Some(s)
                    if s["attempts"].as_u64() >= Some(1) && s["dropped"].as_u64() >= Some(1) => {}
                Some(s) => return Some(format!("attempts to 203.0.113.10:8443: {s}")),
                None => {
                    return Some(format!(
                        "no attempts to 203.0.113.10:8443 ({})",
                        summary["attempts_unavailable"]
                            .as_str()
                            .unwrap_or("no such service")
                    ));
                }
            }
        }
        if kernel_verdicts {
            if self.verdicts() == "off" {
                let why = self
                    .start
                    .as_ref()
                    .and_then(|s| s["kernel_verdicts"].as_str());
                return Some(format!(
                    "kernel verdicts not watched: {}",
                    why.unwrap_or("-")
                ));
            }
            let unconfirmed = self.drops.iter().find(|d| {
                d["attribution"] != "exact"
                    || !d["why"]
                        .as_str()
                        .is_some_and(|w| w.starts_with("the kernel confirmed it"))
            });
            if let Some(d) = unconfirmed {
                return Some(format!(
                    "drop to dport {} not confirmed by the kernel: {} ({})",
                    d["dport"], d["attribution"], d["why"]
                ));
            }
        }
        None
    }
}

struct Report<'a> {
    spec: &'a KernelSpec,
    /// What the guest's `uname -r` said (the package's release if it said nothing).
    release: String,
    runs: BTreeMap<String, Run>,
    done: bool,
    /// droptrace's programs in the kernel while capturing, and after a `kill -9`.
    kill9: Option<(u32, u32)>,
    /// `droptrace doctor --json`: its exit code and report.
    doctor: Option<(String, Value)>,
    /// `droptrace inventory --json`: its exit code and report.
    inventory: Option<(String, Value)>,
    /// Why the guest gave no full report, with the end of its console.
    infra: Option<String>,
    took: Option<Duration>,
}

impl<'a> Report<'a> {
    fn new(g: &Guest<'a>, outcome: Outcome) -> Report<'a> {
        let text = fs::read(&g.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let mut report = Report {
            spec: g.spec,
            release: g.kernel.release.clone(),
            runs: BTreeMap::new(),
            done: false,
            kill9: None,
            doctor: None,
            inventory: None,
            infra: None,
            took: None,
        };
        for line in text.lines().map(|l| l.trim_end_matches('\r')) {
            let Some(rest) = line.find("VMTEST-").map(|i| &line[i + "VMTEST-".len()..]) else {
                continue;
            };
            let (tag, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            match tag {
                "KERNEL" => report.release = rest.trim().to_string(),
                "DONE" => report.done = true,
                "KILL9" => {
                    let mut n = rest.split_whitespace().map(|w| w.parse::<u32>().ok());
                    if let (Some(Some(during)), Some(Some(after))) = (n.next(), n.next()) {
                        report.kill9 = Some((during, after));
                    }
                }
                "DOCTOR" | "INVENTORY" => {
                    let (code, json) = rest.split_once(' ').unwrap_or((rest, ""));
                    let value = serde_json::from_str::<Value>(json).unwrap_or(Value::Null);
                    let slot = if tag == "DOCTOR" {
                        &mut report.doctor
                    } else {
                        &mut report.inventory
                    };
                    *slot = Some((code.to_string(), value));
                }
                "JSON" | "STDERR" | "EXIT" => {
                    let (backend, payload) = rest.split_once(' ').unwrap_or((rest, ""));
                    let run = report.runs.entry(backend.to_string()).or_default();
                    match tag {
                        "EXIT" => {
                            let mut words = payload.split_whitespace().map(str::to_string);
                            run.exit = words.next();
                            run.took = words.next();
                        }
                        "STDERR" => run.stderr.push(payload.to_string()),
                        _ => match serde_json::from_str::<Value>(payload) {
                            Ok(v) => match v["type"].as_str() {
                                Some("start") => run.start = Some(v),
                                Some("summary") => run.summary = Some(v),
                                _ => run.drops.push(v),
                            },
                            Err(e) => run
                                .stderr
                                .push(format!("vm-test: unreadable JSON line ({e}): {payload}")),
                        },
                    }
                }
                _ => {}
            }
        }
        match outcome {
            Outcome::Exited { took, .. } if report.done => report.took = Some(took),
            outcome => {
                let why = match outcome {
                    Outcome::Exited { status, .. } => {
                        format!("qemu exited ({status}) before the guest finished")
                    }
                    Outcome::TimedOut => format!("no poweroff within {}s", GUEST_TIMEOUT.as_secs()),
                    Outcome::NoInit => format!(
                        "twice no /init within {}s: the guest is stuck before the kernel runs",
                        INIT_TIMEOUT.as_secs()
                    ),
                    Outcome::Failed(e) => e,
                };
                let tail: Vec<&str> = text
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                say(&format!(
                    "{}: {why}; end of its console:\n    {}",
                    g.spec.label,
                    tail.join("\n    ")
                ));
                report.infra = Some(why);
            }
        }
        report
    }

    fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(why) = &self.infra {
            // Without a report the kernel's result is unknown, whatever is expected of it.
            out.push(format!("{} ({}): {why}", self.spec.label, self.release));
        }
        if self.spec.expect_pass {
            for backend in BACKENDS {
                let problem = self
                    .runs
                    .get(*backend)
                    .map_or(Some("no report from the guest".into()), |r| {
                        r.problem(backend, self.spec.kernel_verdicts)
                    });
                if problem.is_some() {
                    out.push(format!("{} ({}) {backend}", self.spec.label, self.release));
                }
            }
            if let Some(problem) = self.kill9_problem() {
                out.push(format!(
                    "{} ({}) kill -9: {problem}",
                    self.spec.label, self.release
                ));
            }
            for problem in self.doctor_problems() {
                out.push(format!(
                    "{} ({}) doctor: {problem}",
                    self.spec.label, self.release
                ));
            }
            if let Some(problem) = self.inventory_problem() {
                out.push(format!(
                    "{} ({}) inventory: {problem}",
                    self.spec.label, self.release
                ));
            }
        }
        out
    }

    /// What `droptrace doctor` found that it must not: a program refused or unavailable
    /// that this kernel must run (all but `may_lack`), one over its margins, or no drop
    /// traceable at all.
    fn doctor_problems(&self) -> Vec<String> {
        let Some((code, report)) = &self.doctor else {
            return vec!["no report from the guest".into()];
        };
        if report.is_null() {
            return vec![format!("exit {code}, no JSON report")];
        }
        let mut out = Vec::new();
        if report["health"] == "broken" {
            out.push(format!("broken: {}", report["problems"]));
        }
        let limits = &report["limits"];
        let stack_budget = limits["stack_budget"].as_u64().unwrap_or(0);
        let insn_budget = self
            .spec
            .insn_budget
            .map_or(limits["insn_budget"].as_u64().unwrap_or(0), |(n, _)| n);
        for p in report["programs"].as_array().into_iter().flatten() {
            let name = format!(
                "{}/{}",
                p["object"].as_str().unwrap_or("?"),
                p["program"].as_str().unwrap_or("?")
            );
            let program = p["program"].as_str().unwrap_or("?");
            let lack_allowed = p["status"] == "unavailable"
                && self.spec.may_lack.iter().any(|(m, _)| *m == program);
            if p["status"] != "loaded" && !lack_allowed {
                out.push(format!("{name} {}: {}", p["status"], p["why"]));
            }
            if p["stack"]["combined"].as_u64().unwrap_or(u64::MAX) > stack_budget {
                out.push(format!(
                    "{name} stack {} over {stack_budget}",
                    p["stack"]["combined"]
                ));
            }
            if p["verified_insns"]
                .as_u64()
                .is_some_and(|n| n > insn_budget)
            {
                out.push(format!(
                    "{name} {} instructions over {insn_budget}",
                    p["verified_insns"]
                ));
            }
        }
        out
    }

    /// Whether `droptrace inventory` saw the payment gateway dialled and dropped.
    fn inventory_problem(&self) -> Option<String> {
        let Some((code, report)) = &self.inventory else {
            return Some("no report from the guest".into());
        };
        if code != "0" {
            return Some(format!("exit {code}"));
        }
        let found = report["services"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| {
                s["proto"] == "tcp"
                    && s["dst"] == "203.0.113.10"
                    && s["dport"] == 8443
                    && s["dropped"] == true
            });
        (!found).then(|| "the dropped connection to 203.0.113.10:8443 is not listed".into())
    }

    /// Why the `kill -9` check failed, if it did: programs must have been loaded (else the
    /// check proves nothing) and none left after.
    fn kill9_problem(&self) -> Option<String> {
        match self.kill9 {
            None => Some("no report from the guest".into()),
            Some((0, _)) => Some("no droptrace program was loaded during the capture".into()),
            Some((_, 0)) => None,
            Some((during, after)) => Some(format!("{after} of {during} programs left behind")),
        }
    }
}

fn table(reports: &[Report]) -> String {
    let header = [
        "KERNEL",
        "RELEASE",
        "BACKEND",
        "EXIT",
        "TIME",
        "MODE",
        "DROPS",
        "LOST",
        "HOOKS",
        "DPORTS",
        "VERDICTS",
        "ATTRIBUTION",
        "RESULT",
        "ERROR",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut errors = Vec::new();
    let empty = Run::default();
    for r in reports {
        for backend in BACKENDS {
            let run = r.runs.get(*backend).unwrap_or(&empty);
            let problem = run.problem(backend, r.spec.kernel_verdicts);
            let result = match (&problem, r.spec.expect_pass) {
                (None, true) => "pass",
                (None, false) => "PASS (expected to fail: flip expect_pass)",
                (Some(_), true) => "FAIL",
                (Some(_), false) => "fail (expected)",
            };
            let summary = |f: &str| {
                run.summary
                    .as_ref()
                    .and_then(|s| s[f].as_u64())
                    .map_or("-".into(), |n| n.to_string())
            };
            let error = problem
                .filter(|_| run.exit.is_some() || r.infra.is_none())
                .unwrap_or_default();
            let mut short: String = error.chars().take(ERROR_WIDTH).collect();
            if short.len() < error.len() {
                short.push_str("...");
                errors.push(format!("{} {backend}: {error}", r.spec.label));
            }
            rows.push(vec![
                r.spec.label.into(),
                r.release.clone(),
                (*backend).into(),
                run.exit.clone().unwrap_or_else(|| "-".into()),
                run.took.clone().unwrap_or_else(|| "-".into()),
                run.mode(),
                summary("total"),
                summary("lost"),
                run.field_set("hook"),
                run.field_set("dport"),
                run.verdicts(),
                run.field_set("attribution"),
                result.into(),
                short,
            ]);
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    if !errors.is_empty() {
        out.push_str("errors in full:\n");
        for e in errors {
            let _ = writeln!(out, "  {e}");
        }
    }
    out.push_str(&programs_table(reports));
    for r in reports {
        if let Some((during, after)) = r.kill9 {
            let _ = writeln!(
                out,
                "{} ({}) kill -9 while capturing: {during} droptrace programs loaded, {after} left after",
                r.spec.label, r.release
            );
        }
        if !r.spec.expect_pass {
            let _ = writeln!(
                out,
                "{} is not expected to pass yet: {}",
                r.spec.label, r.spec.why_not
            );
        }
        if let Some(took) = r.took {
            let _ = writeln!(
                out,
                "{} ({}) ran to poweroff in {took:.0?}",
                r.spec.label, r.release
            );
        }
    }
    out
}

/// Each program on each kernel, from `droptrace doctor`: instructions the verifier
/// processed (or why not loaded), with its stack chain, and `inventory`'s result.
fn programs_table(reports: &[Report]) -> String {
    let mut programs: Vec<String> = Vec::new();
    for r in reports {
        for p in r
            .doctor
            .iter()
            .flat_map(|(_, d)| d["programs"].as_array().cloned().unwrap_or_default())
        {
            let name = format!(
                "{}/{}",
                p["object"].as_str().unwrap_or("?"),
                p["program"].as_str().unwrap_or("?")
            );
            if !programs.contains(&name) {
                programs.push(name);
            }
        }
    }
    let mut out = String::from(
        "\nprograms by kernel (instructions verified; stack of the deepest call chain):\n",
    );
    let _ = write!(out, "  {:<34}", "PROGRAM");
    for r in reports {
        let _ = write!(out, " {:>12}", r.spec.label);
    }
    out.push_str("  STACK\n");
    for name in &programs {
        let _ = write!(out, "  {name:<34}");
        let mut stack = String::new();
        for r in reports {
            let p = r.doctor.as_ref().and_then(|(_, d)| {
                d["programs"]
                    .as_array()?
                    .iter()
                    .find(|p| {
                        format!(
                            "{}/{}",
                            p["object"].as_str().unwrap_or("?"),
                            p["program"].as_str().unwrap_or("?")
                        ) == *name
                    })
                    .cloned()
            });
            let cell = match &p {
                None => "-".to_string(),
                Some(p) if p["status"] == "loaded" => p["verified_insns"]
                    .as_u64()
                    .map_or("loaded".into(), |n| n.to_string()),
                Some(p) => p["status"].as_str().unwrap_or("?").to_string(),
            };
            if let Some(p) = &p
                && stack.is_empty()
            {
                let chain: Vec<String> = p["stack"]["chain"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| d.to_string())
                    .collect();
                stack = format!("{} = {}", chain.join("+"), p["stack"]["combined"]);
            }
            let _ = write!(out, " {cell:>12}");
        }
        let _ = writeln!(out, "  {stack}");
    }
    let _ = write!(out, "  {:<34}", "inventory (dropped 8443 listed)");
    for r in reports {
        let cell = match r.inventory_problem() {
            None => "pass".to_string(),
            Some(_) if !r.spec.expect_pass => "fail (exp.)".to_string(),
            Some(_) => "FAIL".to_string(),
        };
        let _ = write!(out, " {cell:>12}");
    }
    out.push('\n');
    for r in reports {
        for (program, why) in r.spec.may_lack {
            let _ = writeln!(out, "  {} may lack {program}: {why}", r.spec.label);
        }
        if let Some((n, why)) = r.spec.insn_budget {
            let _ = writeln!(out, "  {} instruction budget {n}: {why}", r.spec.label);
        }
        for p in r.doctor_problems() {
            let _ = writeln!(out, "  {} doctor: {p}", r.spec.label);
        }
        if let Some(p) = r.inventory_problem() {
            let _ = writeln!(out, "  {} inventory: {p}", r.spec.label);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        assert!(natural_cmp("5.10.0-9-cloud-amd64", "5.10.0-46-cloud-amd64").is_lt());
        assert!(natural_cmp("6.12.118+deb13-cloud-amd64", "6.12.115+deb13.1-cloud-amd64").is_gt());
        assert!(natural_cmp("7.2.13+deb14-cloud-amd64", "7.10.1+deb14-cloud-amd64").is_lt());
    }
}
