//! The front-ends: one module per command. Each takes its arguments, gets drops from a
//! [`crate::session::Session`] (or flows from [`crate::inventory`], or a ruleset from
//! [`crate::attribution`]) and renders with [`crate::sinks`]. Commands never import each
//! other: what two of them share belongs to a layer below.

pub mod audit;
pub mod doctor;
pub mod explain;
pub mod inventory;
pub mod serve;
pub mod top;
pub mod verify;
pub mod watch;
