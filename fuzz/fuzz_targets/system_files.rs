//! Files droptrace reads from the system: /proc/PID/{cmdline,cgroup}, /proc/kallsyms,
//! tracefs' event format.
#![no_main]
use droptrace::{btf::TracepointRecord, kallsyms::Kallsyms, procinfo};

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
    let _ = TracepointRecord::from_format(&text);
    let _ = droptrace::escape::terminal(&text);
});
