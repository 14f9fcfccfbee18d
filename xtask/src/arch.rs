//! The architectures droptrace ships for, and what Rust, Debian, qemu and OCI call each.
//!
//! Releases are built on x86_64 machines: the aarch64 binary is cross-compiled
//! ([`crate::dist`]), its Debian root for the package and the image runs under qemu-user
//! ([`crate::foreign`]), and its kernels boot under qemu-system-aarch64
//! ([`crate::vmtest`]).

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// Every architecture a release holds, the build machine's first.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// Rust's static (musl) target.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }

    /// Debian's (and OCI's) name: amd64, arm64.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The kernel's name (`uname -m`), as release file names carry it.
    pub fn uname(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Whether this machine runs it natively (releases are built on x86_64).
    pub fn is_host(self) -> bool {
        self.uname() == std::env::consts::ARCH
    }

    /// What the static binary of this architecture is called in target/dist.
    pub fn binary_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "droptrace",
            Arch::Aarch64 => "droptrace-aarch64",
        }
    }

    /// The release tarball's name (without `.tar.gz`).
    pub fn tarball(self, version: &str) -> String {
        format!("droptrace-{version}-{}-linux-musl", self.uname())
    }

    /// The Debian package's file name.
    pub fn deb(self, version: &str) -> String {
        format!("droptrace_{version}_{}.deb", self.debian())
    }
}
