//! Kernels: the newest package of each suite found with an apt state of its own (the
//! machine's sources stay untouched), downloaded once into the cache, unpacked, depmod'ed.

use super::*;

/// An unpacked kernel in the cache.
pub(super) struct Kernel {
    /// `uname -r`, e.g. 6.1.0-50-cloud-amd64 or 6.1.0-50-cloud-arm64.
    pub(super) release: String,
    pub(super) vmlinuz: PathBuf,
    /// lib/modules/RELEASE of the unpacked packages, with depmod's output.
    pub(super) modules: PathBuf,
}

impl Kernel {
    /// The cache entry of `dir`, if it is complete (`release` is written last).
    pub(super) fn load(dir: &Path) -> Option<Kernel> {
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

pub(super) fn kernels(
    cache: &Path,
    specs: &[&KernelSpec],
    refresh: bool,
) -> anyhow::Result<Vec<Kernel>> {
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

/// apt with its own sources list, package lists and caches for one suite and architecture,
/// under the cache.
pub(super) struct Apt {
    pub(super) dir: PathBuf,
    arch: Arch,
}

impl Apt {
    pub(super) fn new(cache: &Path, spec: &KernelSpec) -> anyhow::Result<Apt> {
        Apt::for_suite(cache, spec.suite, spec.archive, spec.arch)
    }

    pub(super) fn for_suite(
        cache: &Path,
        suite: &str,
        archive: Archive,
        arch: Arch,
    ) -> anyhow::Result<Apt> {
        let dir = cache.join("apt").join(format!("{suite}-{}", arch.debian()));
        fs::create_dir_all(dir.join("lists/partial"))?;
        fs::create_dir_all(dir.join("cache/archives/partial"))?;
        let (debian, security) = mirrors()?;
        let uri = match archive {
            Archive::Debian => debian,
            Archive::Security => security,
        };
        fs::write(
            dir.join("sources.list"),
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {uri} {suite} main\n"
            ),
        )?;
        Ok(Apt { dir, arch })
    }

    pub(super) fn options(&self, cmd: &mut Command) {
        let d = self.dir.display();
        for opt in [
            format!("Dir::Etc::sourcelist={d}/sources.list"),
            // Another architecture's packages are only downloaded and unpacked, never run
            // on this machine.
            format!("APT::Architecture={}", self.arch.debian()),
            format!("APT::Architectures={}", self.arch.debian()),
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

    pub(super) fn apt_get(&self) -> Command {
        let mut cmd = Command::new("apt-get");
        cmd.arg("-qq");
        self.options(&mut cmd);
        cmd
    }

    pub(super) fn cache_query(&self, args: &[&str]) -> anyhow::Result<String> {
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

    pub(super) fn update(&self) -> anyhow::Result<()> {
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
    pub(super) fn newest(&self, spec: &KernelSpec) -> anyhow::Result<(String, Vec<String>)> {
        let names = self.cache_query(&["pkgnames", "linux-image-"])?;
        let mut releases: Vec<&str> = names
            .lines()
            .filter_map(|n| n.strip_prefix("linux-image-"))
            .filter(|r| {
                r.starts_with(|c: char| c.is_ascii_digit())
                    && r.starts_with(spec.release_prefix)
                    && r.ends_with(&format!("-cloud-{}", spec.arch.debian()))
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
            "no linux-image-{}*-cloud-{} with all its packages in {}",
            spec.release_prefix,
            spec.arch.debian(),
            spec.suite
        )
    }

    /// The packages that hold a release's vmlinuz and modules, or `None` when one of them
    /// has no candidate in the suite.
    pub(super) fn packages_of(&self, release: &str) -> anyhow::Result<Option<Vec<String>>> {
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

    pub(super) fn has_candidate(&self, package: &str) -> anyhow::Result<bool> {
        let policy = self.cache_query(&["policy", package])?;
        Ok(policy
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate:"))
            .is_some_and(|c| c.trim() != "(none)"))
    }
}

/// The machine's Debian mirror (`.../debian`, `.../debian-security`), from its apt sources.
pub(super) fn mirrors() -> anyhow::Result<(String, String)> {
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
pub(super) fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    enum Chunk<'s> {
        Number(u128),
        Text(&'s str),
    }
    pub(super) fn key(s: &str) -> Vec<Chunk<'_>> {
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

pub(super) fn download(
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
