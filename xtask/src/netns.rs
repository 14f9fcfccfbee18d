//! A network namespace for one xtask run, deleted when dropped (also on error).

use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::run_checked;

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `ip netns add PREFIX-PID`, with `lo` up.
    pub fn create(prefix: &str) -> anyhow::Result<Netns> {
        let name = format!("{prefix}-{}", std::process::id());
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `args` in the namespace; its stdout.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {args:?} in {}", self.name))?;
        if !out.status.success() {
            bail!(
                "{args:?} in netns {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .status()
        {
            Ok(s) if s.success() => eprintln!("xtask: deleted netns {}", self.name),
            _ => eprintln!(
                "xtask: could not delete netns {}: `ip netns del {}`",
                self.name, self.name
            ),
        }
    }
}
