//! A `droptrace serve` process for the tasks that measure it (`soak`, `scan --serve`):
//! started on a port the kernel picks, scraped, stopped with SIGTERM.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The sum of the samples of `metric` in a /metrics response, over the series whose
/// labels include `label` (`netns="NAME"`), and how many series that is.
pub fn sum(body: &str, metric: &str, label: &str) -> (f64, usize) {
    let prefix = format!("{metric}{{");
    body.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold((0.0, 0), |(s, n), v| (s + v, n + 1))
}

/// Samples of every droptrace metric in a /metrics response.
pub fn series(body: &str) -> usize {
    body.lines()
        .filter(|l| l.starts_with("droptrace_") && !l.starts_with('#'))
        .count()
}

/// A `droptrace serve` run by a task, killed when dropped.
pub struct Serve {
    pub child: Child,
    pub addr: String,
}

impl Serve {
    /// Starts `droptrace serve` with `args` on a port the kernel picks; returns once it
    /// serves.
    pub fn start(droptrace: &Path, args: &[&str]) -> anyhow::Result<Serve> {
        use std::io::{BufRead as _, BufReader};
        let mut child = Command::new(droptrace)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start droptrace serve")?;
        let stderr = child.stderr.take().expect("piped");
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines
                .next()
                .transpose()?
                .context("droptrace serve ended before serving")?;
            if let Some(rest) = line.strip_prefix("droptrace: serving http://") {
                break rest.split('/').next().unwrap_or_default().to_string();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        eprintln!("xtask: droptrace serve on {addr}");
        Ok(Serve { child, addr })
    }

    /// One scrape of /metrics (the response with its headers), and how long it took.
    pub fn scrape(&self) -> anyhow::Result<(String, Duration)> {
        let t = Instant::now();
        let body = crate::http::get(&self.addr, "/metrics")?;
        Ok((body, t.elapsed()))
    }

    /// /healthz's response.
    pub fn health(&self) -> anyhow::Result<String> {
        Ok(crate::http::get(&self.addr, "/healthz")?)
    }

    pub fn stop(mut self) -> anyhow::Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("droptrace serve exited with {status} on SIGTERM");
        }
        Ok(())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
