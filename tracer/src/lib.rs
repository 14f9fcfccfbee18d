//! droptrace: which packets the firewall drops, which rule dropped them, to where, from
//! which process.
//!
//! The folders follow the data, bottom to top; a module uses only the layers below its
//! own, front-ends never use each other, and there are no import circles:
//!
//! - [`kernel`]: BTF, symbols, stacks, loading and attaching the eBPF programs, decoding
//!   their records into [`kernel::drop::Drop`]s.
//! - [`record`]: the [`record::DropRecord`] every output renders, with its rule fields.
//! - [`enrich`]: a `Drop` becomes a `DropRecord` (process, socket owner, namespace, names).
//! - [`attribution`]: the rule that dropped it, from the namespace's ruleset and counters.
//! - [`session`]: one capture from start to summary — the one way front-ends get drops.
//!   [`inventory`] (outbound flows before you block) and [`probe`] (traffic droptrace
//!   sends) sit beside it.
//! - [`sinks`]: text, JSON lines, pcapng, Prometheus metrics and the recent-drops list.
//! - [`commands`]: one module per front-end; [`cli`] parses the command line and its man
//!   pages, and `main.rs` dispatches.
//!
//! [`escape`] and [`tools`] are leaf helpers anyone may use. CONTRIBUTING.md has the rule
//! for where a change goes.

pub mod attribution;
pub mod cli;
pub mod commands;
pub mod enrich;
pub mod escape;
pub mod inventory;
pub mod kernel;
pub mod probe;
pub mod record;
pub mod session;
pub mod sinks;
pub mod tools;
