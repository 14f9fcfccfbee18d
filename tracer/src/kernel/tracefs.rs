//! tracefs, for the classic tracepoint: its id (aya reads it) and its record layout.
//!
//! tracefs is often not mounted (it is not on our own machines). Mounting it for the whole
//! host would outlive droptrace, so when it is missing droptrace moves itself into a
//! private mount namespace first: the mount exists only for this process and disappears
//! with it.

use std::{collections::HashMap, fs, io, path::Path};

use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, unshare},
};

use crate::kernel::btf::TracepointRecord;

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
    kfree_skb_record(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected kfree_skb format"))
}

/// Field offsets of a tracefs `format` file
/// (`field:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;`).
pub fn format_fields(text: &str) -> HashMap<String, u32> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let (mut name, mut offset) = (None, None);
        for part in line.trim().split(';').map(str::trim) {
            if let Some(decl) = part.strip_prefix("field:") {
                // `__u8 daddr[4]`: the name is the last word, without the array suffix.
                let last = decl.rsplit([' ', '*']).next().unwrap_or("");
                name = Some(last.split('[').next().unwrap_or("").to_string());
            } else if let Some(o) = part.strip_prefix("offset:") {
                offset = o.trim().parse::<u32>().ok();
            }
        }
        if let (Some(n), Some(o)) = (name, offset)
            && !n.is_empty()
        {
            fields.insert(n, o);
        }
    }
    fields
}

/// The `skb/kfree_skb` record layout from its `format` file.
pub fn kfree_skb_record(text: &str) -> Option<TracepointRecord> {
    let fields = format_fields(text);
    Some(TracepointRecord {
        skbaddr: *fields.get("skbaddr")?,
        location: *fields.get("location")?,
        reason: fields.get("reason").copied(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracefs_format_of_an_old_kernel_has_no_reason() {
        // Linux 5.10's events/skb/kfree_skb/format.
        let old = "name: kfree_skb\nID: 1337\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;\n\nprint fmt: \"skbaddr=%p\"\n";
        let r = kfree_skb_record(old).unwrap();
        assert_eq!(
            r,
            TracepointRecord {
                skbaddr: 8,
                location: 16,
                reason: None
            }
        );
        let new = "\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;\n";
        assert_eq!(kfree_skb_record(new).unwrap().reason, Some(36));
        assert_eq!(kfree_skb_record("garbage"), None);
    }
}
