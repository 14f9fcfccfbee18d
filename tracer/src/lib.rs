//! droptrace: which packets the firewall drops, which rule dropped them, to where, from
//! which process.
//!
//! Collection ([`capture`]) is separate from enrichment ([`record`]) and from display
//! ([`output`], [`summary`]), so everything but the kernel attachment is tested with
//! fabricated input.

pub mod attribution;
pub mod audit;
pub mod cli;
pub mod enrich;
pub mod escape;
pub mod explain;

pub mod inventory;
pub mod kernel;
pub mod manual;
pub mod output;
pub mod pcapng;
pub mod probe;
pub mod record;
pub mod session;
pub mod tools;
pub mod top;
pub mod verify;
pub mod watch;
