//! What every capture is asked: which drops (the filter flags) and how long and how
//! (the capture flags). The commands that watch drops all take these, so what an engineer
//! learns for `watch` works for the rest.

use std::time::Duration;

use clap::Args;

use crate::{
    enrich::netns::{NetnsArg, NetnsError, NetnsSelector},
    kernel::capture::{AttachMode, Detect, VerdictMode},
    kernel::event_source::BufferKind,
    kernel::filter::{Cidr, Filters, Ports, Proto},
};

/// The `--attempts` flag of the commands that show attempts beside drops.
pub const ATTEMPTS_HELP: &str = "Also count the attempts to each destination service (TCP \
    connects, UDP and ICMP echo first packets) and name the rule that let through those not \
    dropped, with their conntrack state: a service both dropped and let through is \
    intermittent. Costs a little on every packet the host sends.";

/// How long a capture runs and what it keeps.
#[derive(Debug, Args, Clone, Default)]
pub struct CaptureArgs {
    /// Stop after this long (e.g. 30s, 5m; at most 31d); default: until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many dropped packets.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Report packets freed for any drop reason, not only netfilter drops.
    #[arg(help_heading = "Filters", long)]
    pub all_reasons: bool,
    /// Show reverse DNS names of destinations (looked up in the background; a line shows
    /// the name once it is known).
    #[arg(help_heading = "Output", long)]
    pub resolve: bool,
    /// Count attempts beside drops (see [`ATTEMPTS_HELP`]); set by the commands that
    /// show them, from their own `--attempts` flag.
    #[arg(skip)]
    pub attempts: bool,
    /// Do not name rules (no ruleset reads; lines are printed without the ~1 s wait for
    /// counter confirmation).
    #[arg(help_heading = "Output", long)]
    pub no_rules: bool,
    /// Kernel hook: tp_btf, the classic tracepoint, or auto (tp_btf, falling back).
    #[arg(help_heading = "Kernel hooks (expert)", long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach: AttachMode,
    /// How netfilter drops are recognised: by drop reason (5.17+), by the freeing
    /// function's address (older kernels), or auto.
    #[arg(help_heading = "Kernel hooks (expert)", long, value_enum, default_value_t = Detect::Auto)]
    pub detect: Detect,
    /// Have the kernel name the table and chain of each drop (kprobes on nft_do_chain,
    /// ipt_do_table, ip6t_do_table): auto uses them where the kernel allows, on requires
    /// them, off relies on ruleset evaluation and counters alone.
    #[arg(help_heading = "Kernel hooks (expert)", long, value_enum, default_value_t = VerdictMode::Auto)]
    pub kernel_verdicts: VerdictMode,
    /// How records reach droptrace: the BPF ring buffer (5.8+), per-CPU perf buffers
    /// (older kernels), or auto.
    #[arg(help_heading = "Kernel hooks (expert)", long, value_enum, default_value_t = BufferKind::Auto)]
    pub buffer: BufferKind,
    /// This kernel's BTF, for kernels built without it (no /sys/kernel/btf/vmlinux), e.g.
    /// from BTFHub: struct offsets are read from it, and the classic tracepoint is used.
    /// It must match the running kernel's release.
    #[arg(help_heading = "Kernel hooks (expert)", long, value_name = "FILE")]
    pub btf: Option<std::path::PathBuf>,
    /// Flows the kernel's flow table holds (default 131072): for tests of what happens
    /// beyond it, without sending as many flows.
    #[arg(long, hide = true, value_name = "N",
          value_parser = clap::value_parser!(u32).range(16..=i64::from(tracer_common::MAX_FLOWS)))]
    pub flow_table_size: Option<u32>,
}

/// Which drops to report. All filters are applied in the kernel.
#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Network namespace: a name from `ip netns list`, a path (/proc/PID/ns/net), `host`
    /// (PID 1's), or `all`.
    #[arg(long, value_name = "NAME|PATH|all", default_value = "all",
          value_parser = NetnsParser, hide_possible_values = true)]
    pub netns: NetnsArg,
    /// Protocol: tcp, udp, icmp, icmpv6, sctp or a number.
    #[arg(help_heading = "Filters", long, value_name = "PROTO", value_parser = ProtoParser, hide_possible_values = true)]
    pub proto: Option<Proto>,
    /// Source address or CIDR.
    #[arg(help_heading = "Filters", long, value_name = "ADDR[/LEN]")]
    pub src: Option<Cidr>,
    /// Destination address or CIDR.
    #[arg(help_heading = "Filters", long, value_name = "ADDR[/LEN]")]
    pub dst: Option<Cidr>,
    /// Source port or range (1024-65535).
    #[arg(help_heading = "Filters", long, value_name = "PORT[-PORT]")]
    pub sport: Option<Ports>,
    /// Destination port or range (1024-65535).
    #[arg(help_heading = "Filters", long, value_name = "PORT[-PORT]")]
    pub dport: Option<Ports>,
    /// Only drops sent by this process id (matched after attribution to the socket's owner).
    #[arg(help_heading = "Filters", long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Only drops sent by processes with this command name.
    #[arg(help_heading = "Filters", long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Only drops sent from a cgroup whose path contains this text (a unit, a container id).
    #[arg(help_heading = "Filters", long, value_name = "TEXT")]
    pub cgroup: Option<String>,
}

impl FilterArgs {
    pub fn netns_selector(&self) -> NetnsSelector {
        self.netns.selector.clone()
    }

    /// Resolves the namespace and checks the filters can match at all.
    pub fn to_filters(&self) -> anyhow::Result<Filters> {
        let netns = self
            .netns_selector()
            .inode()
            .map_err(|e: NetnsError| anyhow::anyhow!(e))?;
        let f = Filters {
            netns,
            proto: self.proto,
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
        };
        f.validate()?;
        Ok(f)
    }

    /// Whether a record passes the process filters (`--pid`, `--comm`, `--cgroup`), which
    /// are applied in userspace: the sender of a softirq drop is only known here.
    pub fn wants_process(&self, r: &crate::record::DropRecord) -> bool {
        self.pid.is_none_or(|p| r.pid == Some(p))
            && self
                .comm
                .as_ref()
                .is_none_or(|c| r.pid.is_some() && &r.comm == c)
            && self
                .cgroup
                .as_ref()
                .is_none_or(|c| r.cgroup.as_ref().is_some_and(|g| g.contains(c.as_str())))
    }

    /// The filters in the user's words, for the start line.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = self.proto {
            parts.push(format!("proto {}", crate::kernel::filter::proto_name(p.0)));
        }
        if let Some(c) = self.src {
            parts.push(format!("src {}", c.0));
        }
        if let Some(c) = self.dst {
            parts.push(format!("dst {}", c.0));
        }
        let ports = |p: Ports| {
            if p.lo == p.hi {
                p.lo.to_string()
            } else {
                format!("{}-{}", p.lo, p.hi)
            }
        };
        if let Some(p) = self.sport {
            parts.push(format!("sport {}", ports(p)));
        }
        if let Some(p) = self.dport {
            parts.push(format!("dport {}", ports(p)));
        }
        if let Some(p) = self.pid {
            parts.push(format!("pid {p}"));
        }
        if let Some(c) = &self.comm {
            parts.push(format!("comm {c}"));
        }
        if let Some(c) = &self.cgroup {
            parts.push(format!("cgroup {c}"));
        }
        parts.join(", ")
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_duration_up_to(s, MAX_DURATION, "31d")
}

/// The longest duration any flag takes (`--duration`, serve's windows): a month. Longer
/// runs are `serve`'s job, which has no end; a longer window would be a typo, and past
/// some point a clock's deadline overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(31 * 24 * 3600);

/// The longest `--probe-timeout`: a probe that has not connected in five minutes has its
/// answer.
pub const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(300);

/// Parses `--probe-timeout` (at most [`MAX_PROBE_TIMEOUT`]).
pub fn parse_probe_timeout(s: &str) -> Result<Duration, String> {
    parse_duration_up_to(s, MAX_PROBE_TIMEOUT, "5m")
}

fn parse_duration_up_to(s: &str, max: Duration, max_text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 5m, 1h)"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    if d > max {
        return Err(format!("at most {max_text}"));
    }
    Ok(d)
}

/// Parses `--proto` by name or number; shells complete the common names.
#[derive(Debug, Clone, Copy)]
pub struct ProtoParser;

impl clap::builder::TypedValueParser for ProtoParser {
    type Value = Proto;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Proto, clap::Error> {
        let text = clap::builder::StringValueParser::new().parse_ref(cmd, arg, value)?;
        text.parse()
            .map_err(|e: crate::kernel::filter::FilterError| {
                clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n"))
                    .with_cmd(cmd)
            })
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            ["tcp", "udp", "icmp", "icmpv6", "sctp"]
                .into_iter()
                .map(clap::builder::PossibleValue::new),
        ))
    }
}

/// Parses `--netns`: a name, a path, `host` or `all`. Shells complete `all` and `host`
/// rather than file names (names come from `ip netns list`).
#[derive(Debug, Clone, Copy)]
pub struct NetnsParser;

impl clap::builder::TypedValueParser for NetnsParser {
    type Value = NetnsArg;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<NetnsArg, clap::Error> {
        clap::builder::StringValueParser::new()
            .parse_ref(cmd, arg, value)
            .map(|s| NetnsArg::parse(&s))
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            [("all", "every namespace"), ("host", "PID 1's namespace")]
                .into_iter()
                .map(|(v, h)| clap::builder::PossibleValue::new(v).help(h)),
        ))
    }
}
