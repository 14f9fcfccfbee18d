//! Shared helpers for the integration tests: fixture loading and a terse
//! way to describe the packet under test.

#![allow(dead_code, reason = "each test file uses some of the helpers")]

use ruleset::{
    Backend, CtState, DecidedBy, Family, Hook, Packet, RuleRef, Ruleset, Table, Unknown, eval,
    eval::Evaluation,
};

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

pub fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

pub fn iptables_fixture(name: &str, backend: Backend, family: Family) -> Vec<Table> {
    ruleset::iptables_save::parse(&fixture(name), backend, family).unwrap()
}

/// `nft -j` fixture with the display text from the matching `nft -a` one.
pub fn nft_fixture(stem: &str) -> Vec<Table> {
    let mut tables = ruleset::nft_json::parse(&fixture(&format!("{stem}.nft.json"))).unwrap();
    let texts = ruleset::nft_text::handles(&fixture(&format!("{stem}.nft.txt")));
    ruleset::nft_text::apply(&mut tables, &texts);
    tables
}

pub fn ruleset(tables: Vec<Table>) -> Ruleset {
    Ruleset {
        tables,
        ipsets: Default::default(),
        local_routes: None,
        recent: None,
    }
}

/// A new outgoing TCP SYN from a local process (uid 1000) leaving via
/// uplink0; adjust with the builder methods.
pub fn tcp(src: &str, dst: &str, dport: u16) -> Packet {
    let dst_addr: std::net::IpAddr = dst.parse().unwrap();
    let family = if dst_addr.is_ipv4() {
        Family::Ipv4
    } else {
        Family::Ipv6
    };
    Packet {
        proto: 6,
        src: src.parse().unwrap(),
        dst: dst_addr,
        sport: Some(40_000),
        dport: Some(dport),
        tcp_flags: Some(SYN),
        oif: Some("uplink0".to_string()),
        uid: Some(1000),
        gid: Some(1000),
        ct_state: Some(CtState::New),
        len: 60,
        unknown: Unknown::NONE,
        ..Packet::unknown(family)
    }
}

pub fn udp(src: &str, dst: &str, dport: u16) -> Packet {
    Packet {
        proto: 17,
        tcp_flags: None,
        ..tcp(src, dst, dport)
    }
}

pub fn icmp(src: &str, dst: &str, icmp_type: u8, code: u8) -> Packet {
    let mut packet = tcp(src, dst, 0);
    packet.proto = if packet.family == Family::Ipv4 { 1 } else { 58 };
    packet.sport = None;
    packet.dport = None;
    packet.tcp_flags = None;
    packet.icmp_type = Some(icmp_type);
    packet.icmp_code = Some(code);
    packet
}

pub trait PacketExt {
    fn inbound(self, iif: &str) -> Packet;
    fn forwarded(self, iif: &str, oif: &str) -> Packet;
    fn oif(self, oif: &str) -> Packet;
    fn ct(self, state: Option<CtState>) -> Packet;
    fn flags(self, flags: u8) -> Packet;
    fn uid(self, uid: Option<u32>) -> Packet;
    fn mark(self, mark: u32) -> Packet;
    fn len(self, len: u32) -> Packet;
}

impl PacketExt for Packet {
    /// Arriving on `iif` for a local socket: no output device, no owner.
    fn inbound(mut self, iif: &str) -> Packet {
        self.iif = Some(iif.to_string());
        self.oif = None;
        self.uid = None;
        self.gid = None;
        self
    }
    fn forwarded(mut self, iif: &str, oif: &str) -> Packet {
        self.iif = Some(iif.to_string());
        self.oif = Some(oif.to_string());
        self.uid = None;
        self.gid = None;
        self
    }
    fn oif(mut self, oif: &str) -> Packet {
        self.oif = Some(oif.to_string());
        self
    }
    fn ct(mut self, state: Option<CtState>) -> Packet {
        self.ct_state = state;
        self
    }
    fn flags(mut self, flags: u8) -> Packet {
        self.tcp_flags = Some(flags);
        self
    }
    fn uid(mut self, uid: Option<u32>) -> Packet {
        self.uid = uid;
        self.gid = uid;
        self
    }
    fn mark(mut self, mark: u32) -> Packet {
        self.mark = mark;
        self
    }
    fn len(mut self, len: u32) -> Packet {
        self.len = len;
        self
    }
}

pub fn evaluate(
    ruleset: &Ruleset,
    backends: &[Backend],
    hook: Hook,
    packet: &Packet,
) -> Evaluation {
    eval::evaluate(ruleset, backends, packet.family, hook, packet)
}

/// The deciding rule, or a panic naming what decided instead.
pub fn rule(evaluation: &Evaluation) -> &RuleRef {
    match &evaluation.by {
        DecidedBy::Rule(rule) => rule,
        other => panic!("expected a rule to decide, got {other}: {evaluation:#?}"),
    }
}

/// `(table, chain, position)` of the deciding rule.
pub fn decided_at(evaluation: &Evaluation) -> (String, String, u32) {
    let rule = rule(evaluation);
    (rule.table.clone(), rule.chain.clone(), rule.position)
}

/// `(table, chain)` of the deciding policy.
pub fn policy_of(evaluation: &Evaluation) -> (String, String) {
    match &evaluation.by {
        DecidedBy::Policy(chain) => (chain.table.clone(), chain.chain.clone()),
        other => panic!("expected a policy to decide, got {other}: {evaluation:#?}"),
    }
}

pub fn path(evaluation: &Evaluation) -> Vec<String> {
    evaluation
        .path
        .iter()
        .map(|chain| format!("{}/{}", chain.table, chain.chain))
        .collect()
}

/// Positions (or handles for nft) of the undecided rules, in order.
pub fn undecided(evaluation: &Evaluation) -> Vec<String> {
    evaluation
        .undecided
        .iter()
        .map(|(rule, _)| match rule.handle {
            Some(handle) => format!("{}#{handle}", rule.chain),
            None => format!("{}:{}", rule.chain, rule.position),
        })
        .collect()
}
