//! `--write FILE.pcapng`: the dropped packets' headers, for Wireshark and tshark.
//!
//! Each record the kernel sends carries the first bytes of the packet from its network
//! header on (raw IP, link type 101). A packet's comment says what dropped it and who sent
//! it, so the file stands on its own in an incident ticket. Only packets that reached
//! userspace as records are written (a flow's first packet and its periodic updates), each
//! with the count of packets it stands for; the counts in the text and JSON output stay
//! the exact ones.

use std::{
    borrow::Cow,
    fs::File,
    io::{BufWriter, Write as _},
    path::Path,
    time::Duration,
};

use pcap_file::{
    DataLink,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
    },
};
use tracer_common::HEADER_BYTES;

use crate::{record::DropRecord, sinks::lines::process_text};

pub struct PcapngFile {
    writer: PcapNgWriter<BufWriter<File>>,
    /// One interface description per (namespace, interface) seen, by id.
    interfaces: Vec<String>,
    pub written: u64,
}

impl PcapngFile {
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = File::create(path)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
        let writer = PcapNgWriter::new(BufWriter::new(file))?;
        Ok(PcapngFile {
            writer,
            interfaces: Vec::new(),
            written: 0,
        })
    }

    /// The interface id of the record's device, described on first use: its name (with
    /// the namespace, since two namespaces may each have an `eth0`) and nanosecond
    /// timestamps (`if_tsresol` 9; pcapng's default is microseconds, and the packet blocks
    /// carry nanoseconds).
    fn interface_id(&mut self, r: &DropRecord) -> anyhow::Result<u32> {
        let name = match &r.netns_name {
            Some(ns) => format!("{}@{ns}", r.ifname),
            None => format!("{}@netns:{}", r.ifname, r.netns),
        };
        if let Some(i) = self.interfaces.iter().position(|n| *n == name) {
            return Ok(u32::try_from(i)?);
        }
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::RAW,
            snaplen: HEADER_BYTES as u32,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(name.clone())),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        self.writer.write_pcapng_block(idb)?;
        self.interfaces.push(name);
        Ok(u32::try_from(self.interfaces.len() - 1)?)
    }

    /// Writes the record's packet, if it carries one.
    pub fn write(&mut self, r: &DropRecord) -> anyhow::Result<()> {
        if r.headers.is_empty() {
            return Ok(());
        }
        // skb->len counts from the network header on; never claim more bytes than that.
        let len = (r.len as usize).clamp(1, r.headers.len());
        let since_epoch = r
            .time
            .parse::<jiff::Timestamp>()
            .map(|t| Duration::from_nanos(u64::try_from(t.as_nanosecond()).unwrap_or(0)))
            .unwrap_or_default();
        let interface_id = self.interface_id(r)?;
        let block = EnhancedPacketBlock {
            interface_id,
            timestamp: since_epoch,
            original_len: r.len.max(len as u32),
            data: Cow::Borrowed(&r.headers[..len]),
            options: vec![EnhancedPacketOption::Comment(Cow::Owned(comment(r)))],
        };
        self.writer.write_pcapng_block(block)?;
        self.written += 1;
        Ok(())
    }

    pub fn finish(mut self) -> anyhow::Result<u64> {
        self.writer.get_mut().flush()?;
        Ok(self.written)
    }
}

/// "dropped by filter/OUTPUT rule 4 `...` [exact]; hook OUTPUT; process java[812]; ..."
pub fn comment(r: &DropRecord) -> String {
    let by = match &r.rule {
        Some(a) => match a.label() {
            Some(l) => format!("{l} [{}]", a.attribution.as_str()),
            None => format!("rule unknown ({})", a.why),
        },
        None => "rule not attributed".to_string(),
    };
    let mut parts = vec![
        format!("dropped by {by}"),
        format!("hook {}", r.hook.map_or("?", |h| h.as_str())),
        format!("process {}", process_text(r)),
        format!(
            "netns {}",
            r.netns_name.clone().unwrap_or_else(|| r.netns.to_string())
        ),
        format!("reason {}", r.reason),
    ];
    if let Some(cmd) = &r.cmdline {
        parts.push(format!("cmdline {cmd}"));
    }
    if r.count > 1 {
        parts.push(format!("stands for {} packets of this flow", r.count));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    /// tshark reads the times as written (nanoseconds) and the interface by name.
    #[test]
    fn tshark_reads_times_and_interface_names() {
        let dir = std::env::temp_dir().join(format!("dt-pcapng-ts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("drops.pcapng");
        let mut f = PcapngFile::create(&path).unwrap();
        let mut r = sample();
        // A minimal IPv4 header: version 4, IHL 5, total length 20, protocol TCP.
        r.headers = vec![
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 198, 51, 100, 2, 203, 0, 113, 10,
        ];
        r.len = 20;
        f.write(&r).unwrap();
        f.finish().unwrap();
        let out = std::process::Command::new("tshark")
            .args(["-r"])
            .arg(&path)
            .args([
                "-T",
                "fields",
                "-e",
                "frame.time_epoch",
                "-e",
                "frame.interface_name",
            ])
            .output()
            .expect("tshark (installed by cargo xtask setup)");
        std::fs::remove_dir_all(&dir).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let (epoch, name) = text.trim().split_once('\t').expect("two fields");
        // sample(): 2026-11-24T10:30:00.123456789Z
        assert!(epoch.starts_with("1795516200.123456789"), "{text}");
        assert_eq!(name, "veth-c@client");
    }

    #[test]
    fn writes_a_readable_file() {
        let dir = std::env::temp_dir().join(format!("dt-pcapng-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("drops.pcapng");
        let mut f = PcapngFile::create(&path).unwrap();
        let mut r = sample();
        r.headers = vec![0x45, 0, 0, 60];
        f.write(&r).unwrap();
        f.write(&sample()).unwrap(); // no headers: skipped
        assert_eq!(f.finish().unwrap(), 1);
        let data = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut reader = pcap_file::pcapng::PcapNgReader::new(&data[..]).unwrap();
        let mut packets = 0;
        while let Some(block) = reader.next_block() {
            if let pcap_file::pcapng::Block::EnhancedPacket(p) = block.unwrap() {
                packets += 1;
                assert_eq!(&p.data[..], &[0x45, 0, 0, 60]);
                assert!(
                    matches!(&p.options[0], EnhancedPacketOption::Comment(c) if c.contains("java[812]"))
                );
            }
        }
        assert_eq!(packets, 1);
    }
}
