//! Booting the guests: qemu with software emulation (TCG), two at a time, each with a
//! timeout and one retry when the kernel never reaches /init, so CI can never hang.

use super::*;

pub(super) struct Guest<'a> {
    pub(super) spec: &'a KernelSpec,
    pub(super) kernel: &'a Kernel,
    pub(super) initrd: PathBuf,
    pub(super) console: PathBuf,
}

pub(super) enum Outcome {
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

pub(super) fn boot_all(guests: &[Guest]) -> Vec<Outcome> {
    // The slowest first (arm64, every instruction translated), so that the last guests to
    // start are short ones and both cores stay busy to the end.
    let mut order: Vec<usize> = (0..guests.len()).collect();
    order.sort_by_key(|&i| guests[i].spec.arch.is_host());
    let next = Mutex::new(order.into_iter());
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

pub(super) fn boot(g: &Guest) -> anyhow::Result<Outcome> {
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

pub(super) fn boot_once(g: &Guest) -> anyhow::Result<Outcome> {
    let console = fs::File::create(&g.console)?;
    let started = Instant::now();
    // The machine, and its serial console: the PC's 8250 (ttyS0), `virt`'s PL011 (ttyAMA0).
    let (qemu, machine, tty): (&str, &[&str], &str) = match g.spec.arch {
        Arch::X86_64 => ("qemu-system-x86_64", &[], "ttyS0"),
        // No network device: `virt` would look for its boot ROM (ipxe-qemu).
        Arch::Aarch64 => (
            "qemu-system-aarch64",
            &["-machine", "virt", "-nic", "none"],
            "ttyAMA0",
        ),
    };
    let cpu: &[&str] = if g.spec.cpu.is_empty() {
        &[]
    } else {
        &["-cpu", g.spec.cpu]
    };
    let timeout = if g.spec.arch.is_host() {
        GUEST_TIMEOUT
    } else {
        GUEST_TIMEOUT_FOREIGN
    };
    let mut child = Command::new(qemu)
        .args(machine)
        .args(cpu)
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
        .args(["-append", &format!("console={tty} panic=-1 quiet")])
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .spawn()
        .with_context(|| format!("cannot start {qemu}"))?;
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
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            say(&format!(
                "{}: guest timed out after {}s, killed",
                g.spec.label,
                timeout.as_secs()
            ));
            return Ok(Outcome::TimedOut);
        }
        thread::sleep(Duration::from_millis(200));
    }
}
