//! Command lines: every flag value parser (filters, durations, probe targets, probe files).
#![no_main]
use clap::Parser as _;
use droptrace::{cli::Cli, probe};

libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = probe::parse_probe_file(text);
    let _ = text.parse::<probe::Target>();
    let _ = text.parse::<droptrace::kernel::filter::Cidr>();
    let _ = text.parse::<droptrace::kernel::filter::Ports>();
    let _ = text.parse::<droptrace::kernel::filter::Proto>();
    let _ = droptrace::session::options::parse_duration(text);
    let args: Vec<&str> = std::iter::once("droptrace").chain(text.split(' ')).collect();
    let _ = Cli::try_parse_from(args);
});
