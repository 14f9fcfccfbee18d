//! nf_tables over netlink, in one namespace: its ruleset generation id (`NFT_MSG_GETGEN`)
//! and the counters of its rules and base chains (`NFT_MSG_GETRULE`, `NFT_MSG_GETCHAIN`
//! dumps).
//!
//! The kernel bumps the generation id at every nf_tables commit (net/netfilter/
//! nf_tables_api.c, `nf_tables_commit`), whichever tool made it: nft, iptables-nft,
//! firewalld. Two reads with the same id hold the same tables, chains and rules, so only
//! their counters need reading again, and a dump of them costs a fraction of a
//! millisecond where `iptables-nft-save -c` costs some 12 ms of CPU with 2,000 rules, and
//! parsing its output more (see [`super::live_counters`]).

use std::{
    io,
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    nftables::{ChainMessage, GenAttribute, GenMessage, NfTablesMessage, RuleMessage},
};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::live_counters::LiveCounters;

/// Netlink sockets in one namespace, to ask nf_tables for its generation id and counters.
pub struct NfTables {
    /// For the generation id: one request, one reply.
    generation: Socket,
    /// For dumps, whose replies span several reads (see [`super::netlink::dump`]).
    dumps: Socket,
}

/// Sequence numbers of dump requests (see [`super::netlink::dump`]).
static SEQUENCE: AtomicU32 = AtomicU32::new(1);

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWCHAIN` and `NFT_MSG_NEWRULE`
/// (include/uapi/linux/netfilter/nfnetlink.h, nf_tables.h): the dumps' messages.
const NEWCHAIN: u16 = 10 << 8 | 3;
const NEWRULE: u16 = 10 << 8 | 6;

impl NfTables {
    /// Sockets in the namespace at `netns` (None: ours): sockets belong to the namespace
    /// of the thread that makes them.
    pub fn open(netns: Option<&Path>) -> io::Result<NfTables> {
        crate::tools::on_thread_in(netns, || {
            Ok(NfTables {
                generation: Socket::new(NETLINK_NETFILTER)?,
                dumps: Socket::new(NETLINK_NETFILTER)?,
            })
        })
    }

    /// The namespace's generation id now.
    pub fn generation(&self) -> io::Result<u32> {
        let msg = request(
            NfTablesMessage::GetGen(GenMessage { attributes: vec![] }),
            0,
            0,
        );
        self.generation.send(&msg, 0)?;
        let mut reply = Vec::with_capacity(4096);
        self.generation.recv(&mut reply, 0)?;
        generation_of(&reply)
    }

    /// Every rule's and base chain's counters now, with the rules' handles, in the
    /// order the kernel keeps them.
    pub fn counters(&self) -> io::Result<LiveCounters> {
        let mut live = LiveCounters::default();
        self.dump(
            NfTablesMessage::GetChain(ChainMessage { attributes: vec![] }),
            NEWCHAIN,
            |family, payload| live.add_chain(family, payload),
        )?;
        self.dump(
            NfTablesMessage::GetRule(RuleMessage { attributes: vec![] }),
            NEWRULE,
            |family, payload| live.add_rule(family, payload),
        )?;
        Ok(live)
    }

    fn dump(
        &self,
        what: NfTablesMessage,
        kind: u16,
        mut each: impl FnMut(u8, &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        super::netlink::dump(
            &self.dumps,
            &request(what, NLM_F_DUMP, seq),
            seq,
            |t, payload| {
                // The nfgenmsg header, then the attributes.
                match payload.split_first_chunk::<4>() {
                    Some((header, attributes)) if t == kind => each(header[0], attributes),
                    _ => Ok(()),
                }
            },
        )
    }
}

/// An nf_tables request (`flags` beside NLM_F_REQUEST), serialised.
fn request(what: NfTablesMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut msg = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
        what,
    ));
    msg.header.flags = NLM_F_REQUEST | flags;
    msg.header.sequence_number = seq;
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

fn bad(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// The id in a `NFT_MSG_NEWGEN` reply.
fn generation_of(reply: &[u8]) -> io::Result<u32> {
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
            let g = NfTables::open(None).unwrap();
            let before = g.generation().unwrap();
            assert_eq!(g.generation().unwrap(), before);
            // A child forked from this thread runs in its namespace.
            let status = std::process::Command::new("nft")
                .args(["add", "table", "ip", "droptrace_gen_test"])
                .status()
                .expect("run nft");
            assert!(status.success());
            assert_ne!(g.generation().unwrap(), before);
        })
        .join()
        .unwrap();
    }
}
