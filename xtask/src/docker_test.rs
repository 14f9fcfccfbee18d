//! The image under a real container engine, started with exactly the README's command:
//! part of `cargo xtask package-test`.
//!
//! Debian's Docker 20.10 starts containers on our machines (podman 4.3 cannot). Its daemon
//! runs in a network namespace and a mount namespace of its own, with its state in a
//! temporary directory, so its iptables chains and mounts stay out of the host's (see
//! shared/KERNEL-NOTES.md, "Docker runs here"); everything goes when the daemon stops. The
//! README's `docker run` line is read from README.md itself, so the documented command is
//! the tested one; the drop must come out `exact` (CAP_SYSLOG and /run/netns propagation
//! are what made it `inferred`, or missing, before).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{netns::Netns, run_checked, setup, workspace_root};

fn say(msg: &str) {
    eprintln!("xtask package-test: {msg}");
}

/// The README's `docker run` command, as words (continuation lines joined).
pub fn readme_command(readme: &str) -> anyhow::Result<Vec<String>> {
    let mut lines = readme
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("docker run"));
    let mut text = String::new();
    for line in lines.by_ref() {
        let line = line.trim();
        match line.strip_suffix('\\') {
            Some(head) => {
                text.push_str(head);
                text.push(' ');
            }
            None => {
                text.push_str(line);
                break;
            }
        }
    }
    if text.is_empty() {
        bail!("README.md has no `docker run` command");
    }
    Ok(text.split_whitespace().map(str::to_string).collect())
}

/// A Docker daemon in namespaces of its own; stopped (and its state removed) on drop.
struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: String,
    _netns: Netns,
}

impl Daemon {
    fn start() -> anyhow::Result<Daemon> {
        let netns = Netns::create("dt-dockerd")?;
        let dir = PathBuf::from(format!("/tmp/dt-docker-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        let d = dir.display();
        let socket = format!("unix://{d}/docker.sock");
        // nsenter rather than `ip netns exec`, which remounts /sys and hides the cgroup
        // mounts dockerd needs; a private /run/docker so nothing of it lands in the host's.
        let script = format!(
            "mkdir -p /run/docker && mount -t tmpfs tmpfs /run/docker && \
             exec dockerd --data-root {d}/data --exec-root {d}/exec --pidfile {d}/pid \
             -H {socket} --containerd-namespace dt-test --iptables=true"
        );
        let log = fs::File::create(dir.join("dockerd.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", netns.name))
            .args(["unshare", "--mount", "--propagation", "slave", "sh", "-c"])
            .arg(script)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start dockerd")?;
        let mut daemon = Daemon {
            child,
            dir,
            socket,
            _netns: netns,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let ok = daemon
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(daemon);
            }
            if Instant::now() > deadline || daemon.child.try_wait()?.is_some() {
                let log = fs::read_to_string(daemon.dir.join("dockerd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                bail!("dockerd did not start: {}", tail.join(" | "));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `docker -H <this daemon> ARGS`.
    fn docker(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.args(["-H", &self.socket]).args(args);
        cmd
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM: dockerd stops its containers and containerd, and unmounts its layers.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Loads `archive` (`droptrace-VERSION-docker.tar`) into a daemon of the test's and runs
/// the README's command with `watch --netns NS --json --duration 6s` while a connection to
/// a port dropped in NS's OUTPUT is tried: the drop must be named, `exact`.
pub fn run(archive: &Path) -> anyhow::Result<()> {
    setup::install_packages(&[("docker.io", "runs the image as the README says")], say)?;
    let readme = fs::read_to_string(workspace_root().join("README.md"))?;
    let mut command = readme_command(&readme)?;
    // No terminal here; everything else as written.
    command.retain(|w| w != "-it" && w != "-t");
    if command.last().map(String::as_str) != Some("watch") {
        bail!("the README's docker command does not end in `droptrace watch`: {command:?}");
    }
    let daemon = Daemon::start()?;
    run_checked(daemon.docker(&["load", "--quiet", "-i"]).arg(archive))?;

    crate::package_test::dropped_connection_named(
        "the image under Docker, with the README's command",
        |ns| {
            let mut args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
            args.extend(["--netns", ns, "--json", "--duration", "6s"]);
            daemon.docker(&args)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_command_is_read_with_its_continuations() {
        let readme = "text\n```sh\ndocker load -i x\ndocker run --rm -it --pid=host \\\n  \
                      --cap-add A,B \\\n  -v /a:/a:ro droptrace watch\n```\n";
        assert_eq!(
            readme_command(readme).unwrap(),
            [
                "docker",
                "run",
                "--rm",
                "-it",
                "--pid=host",
                "--cap-add",
                "A,B",
                "-v",
                "/a:/a:ro",
                "droptrace",
                "watch"
            ]
        );
        assert!(readme_command("no command").is_err());
    }

    #[test]
    fn the_real_readme_has_one() {
        let readme = fs::read_to_string(workspace_root().join("README.md")).unwrap();
        let words = readme_command(&readme).unwrap();
        assert!(words.iter().any(|w| w.contains("rslave")), "{words:?}");
        assert!(words.iter().any(|w| w.contains("SYSLOG")), "{words:?}");
    }
}
