//! Files droptrace reads from the system: /proc/PID/{cmdline,cgroup}, /proc/kallsyms,
//! tracefs' event format, /proc/net/{tcp,udp}[6], /proc/net/xt_recent/NAME (then a ufw
//! `limit` test decided against it).
#![no_main]
use droptrace::{kernel::kallsyms::Kallsyms, enrich::procinfo};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = procinfo::parse_cmdline(data);
    let text = String::from_utf8_lossy(data);
    if let Some(path) = procinfo::parse_cgroup(&text) {
        let _ = procinfo::container_of(&path);
    }
    let _ = procinfo::container_of(&text);
    let k = Kallsyms::parse(&text);
    let _ = k.resolve(0xffff_ffff_8100_0000);
    let _ = k.range("nf_hook_slow");
    let _ = droptrace::kernel::tracefs::format_fields(&text);
    let _ = droptrace::kernel::tracefs::kfree_skb_record(&text);
    let _ = droptrace::escape::terminal(&text);
    if let Ok(entries) = ruleset::recent::parse_list(&text) {
        let lists = ruleset::recent::RecentLists {
            now: 4_295_000_000,
            hz: 250,
            lists: [("DEFAULT".to_string(), entries)].into(),
        };
        let limit = ruleset::recent::RecentTest {
            name: "DEFAULT".into(),
            side: ruleset::Direction::Source,
            mode: ruleset::recent::RecentMode::Update,
            seconds: 30,
            hit_count: 6,
            ttl: false,
            mask: Some("255.255.255.0".parse().unwrap()),
        };
        let _ = limit.decide("198.51.100.2".parse().unwrap(), false, Some(&lists), &[]);
    }
    for (local, remote) in [
        ("10.0.0.2:40000", "203.0.113.10:8443"),
        ("[::1]:1", "[::]:0"),
    ] {
        let _ =
            droptrace::enrich::sockets::find_inode(&text, local.parse().unwrap(), remote.parse().unwrap());
    }
});
