//! Where records go: text for people and JSON lines for tools ([`lines`]), pcapng for
//! Wireshark ([`pcapng`]), Prometheus metrics ([`metrics`]) and the recent-drops list
//! ([`recent`]) for `serve`. Renderers take records and write bytes; they know nothing of
//! the kernel, so they are tested with fabricated records.

pub mod lines;
pub mod metrics;
pub mod pcapng;
pub mod recent;
