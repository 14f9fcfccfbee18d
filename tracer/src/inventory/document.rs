//! The inventory document: every outbound service a host used in a window, with its
//! flows and processes, as `droptrace inventory --write` saves it and `droptrace audit
//! --from` and `droptrace verify --probe-file` read it back.

use std::{collections::BTreeSet, fs, net::IpAddr, path::Path};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{
    escape::terminal,
    probe::{ProbeProto, Target},
    record::endpoint,
};

/// Version of the `--write` file format.
pub const FORMAT_VERSION: u32 = 1;

/// An inventory: what `--json` prints and `--write` keeps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Inventory {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    /// When the window started (RFC 3339, UTC).
    pub started: String,
    pub duration_s: f64,
    /// The namespace(s) watched, as `--netns` named them.
    pub netns: String,
    #[serde(default)]
    pub filters: String,
    /// Kernel hooks that saw the flows.
    #[serde(default)]
    pub sources: Vec<String>,
    /// What could not be seen, and why.
    #[serde(default)]
    pub blind_spots: Vec<String>,
    /// How `dropped` was decided; null when drops were not watched.
    #[serde(default)]
    pub drops_from: Option<String>,
    /// Flows whose first sighting the kernel could not hand over (their process details
    /// may be missing; the flows themselves are listed).
    #[serde(default)]
    pub lost: u64,
    pub services: Vec<Service>,
}

/// A destination service (protocol, address, port or ICMP type) and everyone who used it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Service {
    pub proto: String,
    pub dst: IpAddr,
    #[serde(default)]
    pub dport: Option<u16>,
    #[serde(default)]
    pub icmp_type: Option<u8>,
    /// `comm[pid]` (with `@unit` or `@container`), one per process.
    #[serde(default)]
    pub processes: Vec<String>,
    /// Connection attempts (TCP) or datagrams (UDP, ICMP), all flows together.
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
    /// Whether the current ruleset dropped its packets; null when drops were not watched.
    #[serde(default)]
    pub dropped: Option<bool>,
    /// Dropped packets (NETFILTER_DROP) of this service.
    #[serde(default)]
    pub drops: u64,
    #[serde(default)]
    pub dropped_by: Vec<String>,
    pub flows: Vec<Flow>,
}

/// One flow: a service as one process, in one namespace, reached it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Flow {
    pub netns: u32,
    #[serde(default)]
    pub netns_name: Option<String>,
    pub proto: String,
    pub dst: IpAddr,
    #[serde(default)]
    pub dport: Option<u16>,
    #[serde(default)]
    pub icmp_type: Option<u8>,
    #[serde(default)]
    pub icmp_code: Option<u8>,
    /// Source address: the flow's own when the kernel had chosen it, else the route's.
    #[serde(default)]
    pub src: Option<IpAddr>,
    /// Source port of the first attempt, when already chosen.
    #[serde(default)]
    pub sport: Option<u16>,
    /// Output interface, from the namespace's routing table at the end of the window.
    #[serde(default)]
    pub oif: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub comm: String,
    #[serde(default)]
    pub cmdline: Option<String>,
    #[serde(default)]
    pub cgroup: Option<String>,
    #[serde(default)]
    pub container: Option<String>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub mark: u32,
    /// Connection attempts (TCP) or datagrams (UDP, ICMP); for a flow seen only through
    /// its drops, the dropped packets.
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
    /// `connect` (TCP SYN_SENT), `send` (a datagram), or `drop` (seen only being dropped:
    /// it started before the window).
    pub seen_by: String,
    #[serde(default)]
    pub dropped: Option<bool>,
    #[serde(default)]
    pub drops: u64,
    #[serde(default)]
    pub dropped_by: Vec<String>,
}

impl Flow {
    pub(crate) fn service_key(&self) -> ServiceKey {
        (self.proto.clone(), self.dst, self.dport, self.icmp_type)
    }

    /// `comm[pid]`, with the unit or container when it names one; escaped for terminals.
    pub fn process(&self) -> String {
        let Some(pid) = self.pid else {
            return "unknown".to_string();
        };
        match self.container.as_deref() {
            Some(c) if !c.ends_with(".scope") => {
                format!("{}[{pid}]@{}", terminal(&self.comm), terminal(c))
            }
            _ => format!("{}[{pid}]", terminal(&self.comm)),
        }
    }
}

impl Service {
    /// `203.0.113.10:8443`, `[2001:db8::10]:53`, or `203.0.113.10 echo` for ICMP.
    pub fn destination(&self) -> String {
        match (self.dport, self.icmp_type) {
            (Some(p), _) => endpoint(self.dst, Some(p)),
            (None, Some(8 | 128)) => format!("{} echo", self.dst),
            (None, Some(t)) => format!("{} type {t}", self.dst),
            (None, None) => self.dst.to_string(),
        }
    }
}

/// Writes `inv` as pretty JSON.
pub fn write_file(path: &Path, inv: &Inventory) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(inv)?;
    text.push('\n');
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads an inventory written by `--write`.
pub fn parse(text: &str) -> Result<Inventory, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not a droptrace inventory: {e}"))?;
    if v.get("type").and_then(|t| t.as_str()) != Some("inventory") {
        return Err(
            "not a droptrace inventory (no \"type\": \"inventory\"; write one with `droptrace inventory --write FILE`)"
                .into(),
        );
    }
    match v.get("version").and_then(|t| t.as_u64()) {
        Some(n) if n == u64::from(FORMAT_VERSION) => {}
        other => {
            return Err(format!(
                "inventory format version {} is not supported (this droptrace reads version {FORMAT_VERSION})",
                other.map_or("missing".to_string(), |n| n.to_string())
            ));
        }
    }
    serde_json::from_value(v).map_err(|e| format!("malformed inventory: {e}"))
}

/// Probe targets for `verify --probe-file`: one per TCP or UDP service of an inventory.
/// `None` when `text` is not an inventory (then it is a plain list of targets).
pub fn probe_targets_from_file(text: &str) -> Option<Result<Vec<Target>, String>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    if v.get("type").and_then(|t| t.as_str()) != Some("inventory") {
        return None;
    }
    Some(parse(text).map(|inv| probe_targets(&inv)))
}

fn probe_targets(inv: &Inventory) -> Vec<Target> {
    let mut seen = BTreeSet::new();
    inv.services
        .iter()
        .filter_map(|s| {
            let proto = match s.proto.as_str() {
                "tcp" => ProbeProto::Tcp,
                "udp" => ProbeProto::Udp,
                _ => return None,
            };
            let port = s.dport.filter(|p| *p != 0)?;
            seen.insert((s.proto.clone(), s.dst, port)).then(|| Target {
                proto,
                host: s.dst.to_string(),
                port,
            })
        })
        .collect()
}

/// (proto, dst, dport, icmp type): what makes flows one service.
pub(crate) type ServiceKey = (String, IpAddr, Option<u16>, Option<u8>);
