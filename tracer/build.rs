//! Builds the eBPF programs (tracer-ebpf) for the BPF target with the pinned nightly, so
//! the userspace binary can embed them. `cargo xtask` installs that toolchain and
//! bpf-linker; see README.md.

/// The toolchain known to build aya programs on our machines: its LLVM (22) must not be
/// newer than the LLVM bpf-linker is built against. Keep in sync with xtask.
const EBPF_TOOLCHAIN: &str = "nightly-2026-06-20";

fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "tracer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN))
}
