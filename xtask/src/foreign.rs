//! Running another architecture's programs on this machine: qemu-user, registered with the
//! kernel's binfmt_misc so that an arm64 program started anywhere (in a chroot too) runs
//! under it. debootstrap needs this to configure an arm64 Debian root, and apt to install
//! the arm64 package into it.
//!
//! The registration is the machine's, like an installed package: it stays after xtask
//! ends, and is made once. The `F` flag (Debian's own binfmt.d entry for qemu-user-static)
//! opens the interpreter when registering, so it need not exist inside the chroot.

use std::{fs, path::Path};

use anyhow::Context as _;

use crate::{arch::Arch, run_checked, setup};

const BINFMT: &str = "/proc/sys/fs/binfmt_misc";

fn say(msg: &str) {
    eprintln!("xtask: {msg}");
}

/// Makes `arch`'s programs run here; nothing to do for the machine's own.
pub fn ensure(arch: Arch) -> anyhow::Result<()> {
    if arch.is_host() {
        return Ok(());
    }
    setup::install_packages(
        &[(
            "qemu-user-static",
            "runs arm64 programs here (the arm64 Debian root of the package and the image)",
        )],
        say,
    )?;
    if !Path::new(BINFMT).join("register").exists() {
        run_checked(std::process::Command::new("mount").args([
            "-t",
            "binfmt_misc",
            "binfmt_misc",
            BINFMT,
        ]))?;
    }
    let name = format!("qemu-{}", arch.uname());
    let entry = Path::new(BINFMT).join(&name);
    match fs::read_to_string(&entry) {
        Ok(state) if state.starts_with("enabled") => return Ok(()),
        // Registered, then switched off: switch it back on.
        Ok(_) => {
            return fs::write(&entry, "1").with_context(|| format!("cannot enable {name}"));
        }
        Err(_) => {}
    }
    let conf = Path::new("/usr/lib/binfmt.d").join(format!("{name}.conf"));
    let line = fs::read_to_string(&conf)
        .with_context(|| format!("cannot read {} (qemu-user-static)", conf.display()))?;
    say(&format!(
        "registering {name} with binfmt_misc ({}), once per boot",
        conf.display()
    ));
    fs::write(Path::new(BINFMT).join("register"), line.trim())
        .with_context(|| format!("cannot register {name} with binfmt_misc"))
}
