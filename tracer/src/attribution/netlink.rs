//! Netlink dumps: a request whose replies span several reads, ended by `NLMSG_DONE`.

use std::io;

use netlink_packet_core::{NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer};
use netlink_sys::Socket;

/// Sends `request` (a dump, sequence number `seq`) on `socket` and hands each reply
/// message's type and payload to `each`, until the dump is done. Messages of another
/// sequence number are skipped: a dump cut short by an error leaves its rest in the
/// socket, for the next dump to pass over. A dump the kernel marks interrupted (what it
/// lists changed meanwhile) is an error.
pub fn dump(
    socket: &Socket,
    request: &[u8],
    seq: u32,
    mut each: impl FnMut(u16, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    socket.send(request, 0)?;
    // A dump's messages come in buffers of at most 32 KiB (net/netlink/af_netlink.c,
    // `netlink_dump`).
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        socket.recv(&mut buf, 0)?;
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let msg = NetlinkBuffer::new_checked(rest)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = (msg.length() as usize).next_multiple_of(4).min(rest.len());
            let payload = msg.payload();
            rest = &rest[len..];
            if msg.sequence_number() != seq {
                continue;
            }
            if msg.flags() & NLM_F_DUMP_INTR != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "the dump was interrupted by a change",
                ));
            }
            match msg.message_type() {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let code = payload
                        .first_chunk::<4>()
                        .map_or(0, |c| i32::from_ne_bytes(*c));
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                t => each(t, payload)?,
            }
        }
    }
}
