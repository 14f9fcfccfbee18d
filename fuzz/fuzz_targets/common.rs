// Shared by the targets: a packet to evaluate parsed rulesets with, so the evaluator is
// fuzzed on whatever the parsers accept.
pub fn packets() -> Vec<ruleset::Packet> {
    let mk = |family, proto, src: &str, dst: &str, ct| ruleset::Packet {
        proto,
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        sport: Some(40000),
        dport: Some(8443),
        tcp_flags: Some(0x02),
        iif: Some("eth0".into()),
        oif: Some("eth0".into()),
        mark: 1,
        uid: Some(0),
        ct_state: ct,
        len: 60,
        unknown: ruleset::Unknown::NONE,
        ..ruleset::Packet::unknown(family)
    };
    vec![
        mk(ruleset::Family::Ipv4, 6, "198.51.100.2", "203.0.113.10", Some(ruleset::CtState::New)),
        mk(ruleset::Family::Ipv6, 17, "2001:db8::2", "2001:db8::10", None),
    ]
}

pub fn evaluate_all(rs: &ruleset::Ruleset) {
    for p in packets() {
        for hook in [ruleset::Hook::Input, ruleset::Hook::Output, ruleset::Hook::Forward] {
            for engine in [ruleset::Engine::NfTables, ruleset::Engine::Xtables] {
                let _ = ruleset::eval::evaluate(rs, engine.backends(), p.family, hook, &p);
            }
        }
    }
}
