//! The tracers a run starts (droptrace, bpftrace), as child processes that are reaped
//! with their resource usage, and killed if the bench stops early.

use std::{
    io::{self, Read as _},
    process::{Child, ChildStderr, Command},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::{
    libc,
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{STOP_TIMEOUT, say};

pub(super) fn read_all(mut r: ChildStderr) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// A child process that is killed and reaped if the bench stops early.
pub(super) struct Proc {
    pub(super) child: Child,
    reaped: bool,
    /// What it is, for messages.
    name: String,
}

pub(super) struct Exit {
    pub(super) status: libc::c_int,
    usage: libc::rusage,
}

impl Exit {
    pub(super) fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }
    pub(super) fn cpu_s(&self) -> f64 {
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(self.usage.ru_utime) + t(self.usage.ru_stime)
    }
    pub(super) fn peak_rss_kib(&self) -> u64 {
        self.usage.ru_maxrss as u64
    }
}

impl Proc {
    pub(super) fn spawn(cmd: &mut Command, what: &str) -> anyhow::Result<Proc> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what} ({cmd:?})"))?;
        Ok(Proc {
            child,
            reaped: false,
            name: what.to_string(),
        })
    }

    /// Whether it has already exited (then it is reaped).
    pub(super) fn exited(&mut self) -> bool {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            self.reaped = true;
        }
        self.reaped
    }

    pub(super) fn kill(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }

    /// Sends `sig` and waits for the exit, with the process's resource usage (its CPU
    /// time and peak RSS, from wait4).
    /// Sends `sig` and reaps the process. The signal is sent again every 5 s while the
    /// process lives (bpftrace was once seen to miss a SIGINT and wait for minutes), and after
    /// [`STOP_TIMEOUT`] it is killed.
    pub(super) fn stop(&mut self, sig: Signal) -> anyhow::Result<Exit> {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, sig);
        let started = Instant::now();
        let mut signalled = Instant::now();
        let mut status = 0;
        // SAFETY: rusage is plain old data.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            let flags = if started.elapsed() > STOP_TIMEOUT {
                let _ = kill(pid, Signal::SIGKILL);
                0
            } else {
                libc::WNOHANG
            };
            // SAFETY: valid pointers to locals; the pid is our unreaped child.
            let r = unsafe { libc::wait4(pid.as_raw(), &mut status, flags, &mut usage) };
            if r == pid.as_raw() {
                break;
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(e).context("wait4");
                }
                continue;
            }
            if signalled.elapsed() > Duration::from_secs(5) {
                say(&format!("{} still running: sending {sig} again", self.name));
                let _ = kill(pid, sig);
                signalled = Instant::now();
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.reaped = true;
        Ok(Exit { status, usage })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
