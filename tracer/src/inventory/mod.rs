//! Outbound flows, before you block: what `droptrace inventory` collects and the document
//! it writes, which `audit` and `verify` read. A library layer beside the session: the
//! commands use it, it uses no command.
//!
//! [`crate::kernel::inventory`] loads the flow-recording programs, [`collect`] runs them beside a drop
//! [`crate::session::Session`] for a window, [`document`] is the result and its file format.

pub mod collect;
pub mod document;

pub use collect::collect;
pub use document::{
    FORMAT_VERSION, Flow, Inventory, Service, parse, probe_targets_from_file, write_file,
};
