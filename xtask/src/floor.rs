//! The bench's floor: an empty `tp_btf/kfree_skb` program, loaded by the bench itself.
//!
//! It returns at once, so a run with it attached measures what attaching anything to
//! `kfree_skb` costs (the BPF trampoline's entry and exit), the least any tracer of drops
//! can pay. Loaded with two `bpf(2)` calls rather than from an object file: two
//! instructions need no compiler, and the bench needs no bpftrace for its floor.

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
    process::Command,
};

use anyhow::{Context as _, bail};
use nix::libc;

/// `enum bpf_cmd`, `enum bpf_prog_type`, `enum bpf_attach_type` (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_RAW_TP: u32 = 23;

/// The program's name, as `bpftool prog show` lists it: the bench's statistics pick up
/// programs whose names start with `kfree_skb`.
const NAME: &[u8] = b"kfree_skb_floor";

/// The loaded and attached program; dropping it detaches and unloads it (and so does the
/// bench's death: nothing is pinned).
pub struct Floor {
    _prog: OwnedFd,
    _link: OwnedFd,
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to `attach_btf_id` (the kernel zero-checks the
/// rest of the size it is given).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_prog_fd: u32,
    _pad: u32,
}

impl Floor {
    pub fn attach() -> anyhow::Result<Floor> {
        let btf_id = kfree_skb_btf_id()?;
        // r0 = 0; exit.
        let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
        let license = c"GPL";
        let mut log = vec![0u8; 4096];
        let mut name = [0u8; 16];
        name[..NAME.len()].copy_from_slice(NAME);
        let attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_TRACING,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            prog_name: name,
            expected_attach_type: BPF_TRACE_RAW_TP,
            attach_btf_id: btf_id,
            ..ProgLoad::default()
        };
        let prog = bpf(BPF_PROG_LOAD, &attr).with_context(|| {
            let log = String::from_utf8_lossy(&log);
            format!(
                "loading the empty tp_btf program: {}",
                log.trim_end_matches('\0').trim()
            )
        })?;
        // BPF_RAW_TRACEPOINT_OPEN { name = NULL, prog_fd }: a tracing program attaches to the
        // BTF id it was loaded for.
        let open: [u64; 2] = [0, std::os::fd::AsRawFd::as_raw_fd(&prog) as u64];
        let link =
            bpf(BPF_RAW_TRACEPOINT_OPEN, &open).context("attaching the empty tp_btf program")?;
        Ok(Floor {
            _prog: prog,
            _link: link,
        })
    }
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a `union bpf_attr` prefix of the size passed, whose pointers point at
    // buffers that outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The BTF id of `btf_trace_kfree_skb`, the typedef a tp_btf program on kfree_skb names.
fn kfree_skb_btf_id() -> anyhow::Result<u32> {
    let out = Command::new("bpftool")
        .args(["btf", "dump", "file", "/sys/kernel/btf/vmlinux"])
        .output()
        .context("cannot run bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool btf dump: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_btf_id(&String::from_utf8_lossy(&out.stdout), "btf_trace_kfree_skb")
        .context("no btf_trace_kfree_skb in the kernel's BTF")
}

/// Finds `[ID] TYPEDEF 'name' ...` in `bpftool btf dump` output.
fn parse_btf_id(dump: &str, name: &str) -> Option<u32> {
    let quoted = format!("TYPEDEF '{name}'");
    dump.lines()
        .find(|l| l.contains(&quoted))?
        .strip_prefix('[')?
        .split(']')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_typedef_id() {
        let dump = "[7] INT 'int' size=4 bits_offset=0 nr_bits=32 encoding=SIGNED\n\
                    [91234] TYPEDEF 'btf_trace_kfree_skb' type_id=91233\n";
        assert_eq!(parse_btf_id(dump, "btf_trace_kfree_skb"), Some(91234));
        assert_eq!(parse_btf_id(dump, "btf_trace_consume_skb"), None);
    }
}
