//! The kernel side: reading the kernel's BTF and symbols, loading and attaching droptrace's
//! eBPF programs, and decoding what they send.
//!
//! Everything above this layer sees [`drop::Drop`] records and [`capture::Capture`]'s flow
//! totals; nothing here knows about rules, processes or output. Modules, lower first:
//! [`btf`], [`kallsyms`], [`stack`] and [`tracefs`] read what the kernel tells about itself;
//! [`filter`] and [`privileges`] shape a capture; [`verdicts`] and [`drop`] decode records;
//! [`event_source`] and [`capture`] load, attach and stream; [`stack_depth`] measures the
//! programs against the verifier's stack limit, and [`program_check`] loads each on this
//! kernel (`droptrace doctor`).

pub mod btf;
pub mod capture;
pub mod drop;
pub mod event_source;
pub mod filter;
pub mod inventory;
pub mod kallsyms;
pub mod privileges;
pub mod program;
pub mod program_check;
pub mod stack;
pub mod stack_depth;
pub mod tracefs;
pub mod verdicts;
