//! Reading kernel memory: the helpers every program here uses (the inventory and verdict
//! programs too). No read faults (`bpf_probe_read_kernel`, or BTF loads the JIT guards),
//! and none branches on its result: each branch doubles the paths old verifiers walk.

use core::mem::MaybeUninit;

use aya_ebpf::{helpers::generated, macros::map, maps::PerCpuArray};
use tracer_common::{NO_OFFSET, SKB_COPY_BYTES};

/// A copy of the dropped `sk_buff`, read in one helper call (see [`SkbFields`]).
#[map]
static SKB_COPY: PerCpuArray<[u8; SKB_COPY_BYTES]> = PerCpuArray::with_max_entries(1, 0);

/// Reads kernel memory at `base + off`, zero when the read fails (the helper zero-fills
/// its buffer then) or the field does not exist on this kernel.
///
/// Nothing branches on the helper's result: every branch here would double the paths the
/// verifier walks through the rest of the program, and old kernels stop at a million
/// instructions. `off` comes from frozen read-only data, so its check costs no path.
#[inline(always)]
pub(crate) fn read<T>(base: u64, off: u32) -> T {
    let mut v = MaybeUninit::<T>::uninit();
    copy_kernel(v.as_mut_ptr().cast(), size_of::<T>() as u32, base, off);
    // SAFETY: copy_kernel filled `v` with the kernel's bytes or with zeros; every T used
    // here is plain data.
    unsafe { v.assume_init() }
}

/// `bpf_probe_read_kernel` of `len` bytes at `base + off` into `dst`. The helper zero-fills
/// `dst` when the read fails, so a missing field (`off == NO_OFFSET`) is read from address
/// 0 on purpose: no branch, no compiler `memset` (an outlined call whose stack frame adds to
/// ours, over the 512 bytes old verifiers allow for the whole call chain).
#[inline(always)]
pub(crate) fn copy_kernel(dst: *mut u8, len: u32, base: u64, off: u32) {
    let src = if off == NO_OFFSET {
        0
    } else {
        base + off as u64
    };
    // SAFETY: the helper writes exactly `len` bytes at `dst`, a live buffer of that size.
    unsafe { generated::bpf_probe_read_kernel(dst.cast(), len, src as *const core::ffi::c_void) };
}

/// The dropped `sk_buff`'s fields, from one copy of the whole struct when its size is known
/// (a single helper call: each `bpf_probe_read_kernel` costs ~10 ns, paid per dropped
/// packet), else read one by one.
pub(crate) struct SkbFields<const BTF: bool> {
    skb: u64,
    copy: *const u8,
    size: u32,
}

impl<const BTF: bool> SkbFields<BTF> {
    #[inline(always)]
    pub(crate) fn copy(skb: u64) -> Option<Self> {
        if BTF {
            // Typed pointer: fields are loaded directly (see `load`), no copy needed.
            return Some(SkbFields {
                skb,
                copy: core::ptr::null(),
                size: 0,
            });
        }
        let size = conf!(offsets.skb_size);
        let buf = SKB_COPY.get_ptr_mut(0)?;
        if size != 0 {
            copy_kernel(buf.cast(), size.min(SKB_COPY_BYTES as u32), skb, 0);
        }
        Some(SkbFields {
            skb,
            copy: buf as *const u8,
            size,
        })
    }

    #[inline(always)]
    pub(crate) fn get<T>(&self, off: u32) -> T {
        if BTF || self.size == 0 {
            return load::<T, BTF>(self.skb, off);
        }
        if off == NO_OFFSET || off as usize + size_of::<T>() > self.size as usize {
            // SAFETY: only integers are read through here; zero is a valid value.
            return unsafe { core::mem::zeroed() };
        }
        // SAFETY: `off + size_of::<T>()` lies within the copied bytes (checked above).
        unsafe { core::ptr::read_unaligned(self.copy.add(off as usize).cast::<T>()) }
    }
}

/// Reads a field of a kernel struct. `BTF`: `base` is a pointer the verifier knows the type
/// of (a tp_btf argument, or a pointer field loaded from one), so the field is a plain load
/// that the verifier checks against BTF and the JIT guards against faults (BPF_PROBE_MEM,
/// kernel/bpf/verifier.c): about a nanosecond, against some ten for a helper call. A null
/// `base` reads as zero. Otherwise, [`read`].
#[inline(always)]
pub(crate) fn load<T, const BTF: bool>(base: u64, off: u32) -> T {
    if !BTF {
        return read(base, off);
    }
    // Pointers loaded from fields may be null, and the verifier refuses arithmetic on them
    // before a null check.
    if base == 0 || off == NO_OFFSET {
        // SAFETY: only integers are read through here; zero is a valid value.
        return unsafe { core::mem::zeroed() };
    }
    // SAFETY: see above; the verifier rewrites this load into a fault-safe one.
    unsafe { core::ptr::read_volatile((base + off as u64) as *const T) }
}

/// The current task's command name, written in place (zeros if it cannot be read).
#[inline(always)]
pub(crate) fn current_comm(dst: &mut [u8; 16]) {
    // SAFETY: the helper writes at most 16 bytes into the 16-byte array.
    unsafe { generated::bpf_get_current_comm(dst.as_mut_ptr().cast(), 16) };
}
