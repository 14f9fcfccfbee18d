//! tracefs, for the classic tracepoint: its id (aya reads it) and its record layout.
//!
//! tracefs is often not mounted (it is not on our own machines). Mounting it for the whole
//! host would outlive droptrace, so when it is missing droptrace moves itself into a
//! private mount namespace first: the mount exists only for this process and disappears
//! with it.

use std::{fs, io, path::Path};

use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, unshare},
};

use crate::btf::TracepointRecord;

const MOUNT_POINTS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
const FORMAT: &str = "events/skb/kfree_skb/format";

fn mounted() -> Option<&'static str> {
    MOUNT_POINTS
        .iter()
        .copied()
        .find(|p| Path::new(p).join("events").is_dir())
}

/// Makes tracefs visible to this process, mounting it in a private mount namespace if
/// needed. Must run before other threads exist (unshare(CLONE_NEWNS) requires it).
pub fn ensure_mounted() -> io::Result<&'static str> {
    if let Some(p) = mounted() {
        return Ok(p);
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(io::Error::from)?;
    // Keep our mounts from propagating back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(io::Error::from)?;
    mount(
        Some("tracefs"),
        MOUNT_POINTS[0],
        Some("tracefs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(io::Error::from)?;
    log::info!(
        "mounted tracefs at {} in droptrace's own mount namespace",
        MOUNT_POINTS[0]
    );
    Ok(MOUNT_POINTS[0])
}

/// The layout of the `skb/kfree_skb` record from tracefs.
pub fn kfree_skb_format() -> io::Result<TracepointRecord> {
    let root = ensure_mounted()?;
    let text = fs::read_to_string(Path::new(root).join(FORMAT))?;
    TracepointRecord::from_format(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected kfree_skb format"))
}
