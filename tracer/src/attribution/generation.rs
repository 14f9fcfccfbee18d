//! nf_tables' ruleset generation id, read over netlink (`NFT_MSG_GETGEN`).
//!
//! The kernel bumps it at every nf_tables commit (net/netfilter/nf_tables_api.c,
//! `nf_tables_commit`), whichever tool made it: nft, iptables-nft, firewalld. Two reads
//! with the same id hold the same tables, chains and rules, so what only a change can
//! alter (which native nftables tables exist) need not be listed again: `nft -j list
//! tables` costs some 30 ms of CPU with 2,000 iptables-nft rules, the query a few µs.
//! Counters change without a commit; they are read every time.

use std::{io, path::Path};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    nftables::{GenAttribute, GenMessage, NfTablesMessage},
};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

/// A netlink socket in one namespace, to ask for its generation id.
pub struct Generation {
    socket: Socket,
}

impl Generation {
    /// A socket in the namespace at `netns` (None: ours): sockets belong to the namespace
    /// of the thread that makes them.
    pub fn open(netns: Option<&Path>) -> io::Result<Generation> {
        crate::tools::on_thread_in(netns, || {
            Ok(Generation {
                socket: Socket::new(NETLINK_NETFILTER)?,
            })
        })
    }

    /// The namespace's generation id now.
    pub fn read(&self) -> io::Result<u32> {
        let mut msg = NetlinkMessage::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
            NfTablesMessage::GetGen(GenMessage { attributes: vec![] }),
        ));
        msg.header.flags = NLM_F_REQUEST;
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut reply = Vec::with_capacity(4096);
        self.socket.recv(&mut reply, 0)?;
        generation_of(&reply)
    }
}

/// The id in a `NFT_MSG_NEWGEN` reply.
fn generation_of(reply: &[u8]) -> io::Result<u32> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let msg = NetlinkMessage::<NetfilterMessage>::deserialize(reply)
        .map_err(|e| bad(format!("NFT_MSG_GETGEN reply: {e}")))?;
    match msg.payload {
        NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewGen(generation)),
            ..
        }) => generation
            .attributes
            .iter()
            .find_map(|a| match a {
                GenAttribute::Id(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| bad("NFT_MSG_NEWGEN without an id".into())),
        NetlinkPayload::Error(e) => Err(e.to_io()),
        other => Err(bad(format!("NFT_MSG_GETGEN: unexpected reply {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply as the kernel sends it (nlmon capture of `nft list ruleset`, the message
    /// netlink-packet-netfilter's own tests use): generation 1, from nft (pid 0x34f2).
    #[test]
    fn the_id_is_read_from_a_reply() {
        let reply = [
            0x2c, 0x00, 0x00, 0x00, 0x0f, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf2, 0x34,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01,
            0x08, 0x00, 0x02, 0x00, 0x00, 0x00, 0x34, 0xf2, 0x08, 0x00, 0x03, 0x00, 0x6e, 0x66,
            0x74, 0x00,
        ];
        assert_eq!(generation_of(&reply).unwrap(), 1);
        assert!(generation_of(&reply[..10]).is_err());
    }

    /// The real kernel: a commit bumps the id, a read does not. In a namespace of the
    /// test thread's own (gone with the thread); needs root and nft, as CI has.
    #[test]
    fn a_commit_bumps_the_id() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare a network namespace (root needed)");
            let g = Generation::open(None).unwrap();
            let before = g.read().unwrap();
            assert_eq!(g.read().unwrap(), before);
            // A child forked from this thread runs in its namespace.
            let status = std::process::Command::new("nft")
                .args(["add", "table", "ip", "droptrace_gen_test"])
                .status()
                .expect("run nft");
            assert!(status.success());
            assert_ne!(g.read().unwrap(), before);
        })
        .join()
        .unwrap();
    }
}
