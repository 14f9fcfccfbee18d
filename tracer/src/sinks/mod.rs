//! Where records go: text for people and JSON lines for tools ([`lines`]), pcapng for
//! Wireshark ([`pcapng`]). Renderers take records and write bytes; they know nothing of
//! the kernel, so they are tested with fabricated records.

pub mod lines;
pub mod pcapng;
