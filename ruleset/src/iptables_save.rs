//! Parser for `iptables-save -c` / `ip6tables-save -c` output (nft or legacy).
//!
//! iptables-save is the one format every iptables variant prints the same
//! way, with counters, in the order the kernel evaluates rules. The parser
//! keeps each rule's original text (minus the `[packets:bytes]` prefix) for
//! display, and lowers the options it understands into [`Match`]es.
//!
//! Options that depend on state we cannot see (rate limits, `recent` lists,
//! user names, unknown modules, ...) become [`Condition::Undecidable`]: the
//! evaluator then reports lower confidence instead of guessing. Only
//! structural damage (no table, undeclared chain, unbalanced quote) is a
//! [`ParseError`].

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::addrtype::{AddrTypes, Matcher};
use crate::error::{ParseError, Result};
use crate::model::{
    AddrRange, Backend, BaseChain, Chain, ChainKind, Condition, Counters, Field, InterfaceName,
    Match, OwnerId, Policy, Rule, Table, TableFamily, Target, ValueTest,
};
use crate::names;
use crate::packet::{Direction, Family, Hook, ValueRange};
use crate::shell;

/// [`parse`], as a whole [`Ruleset`](crate::Ruleset) of its own (no ipsets, no routes): a
/// proposed ruleset, a test's.
pub fn parse_ruleset(text: &str, backend: Backend, family: Family) -> Result<crate::Ruleset> {
    Ok(crate::Ruleset {
        tables: parse(text, backend, family)?,
        ..Default::default()
    })
}

/// Parses the tables in `text`. `backend` says which iptables printed it and
/// `family` whether it was `iptables-save` (IPv4) or `ip6tables-save`.
pub fn parse(text: &str, backend: Backend, family: Family) -> Result<Vec<Table>> {
    let mut tables = Vec::new();
    let mut open: Option<OpenTable> = None;
    for (line, trimmed) in lines(text) {
        if let Some(name) = trimmed.strip_prefix('*') {
            if let Some(table) = &open {
                return Err(ParseError::line(
                    line,
                    format!(
                        "table {} (line {}) has no COMMIT before *{name}",
                        table.name, table.line
                    ),
                ));
            }
            if !KNOWN_TABLES.contains(&name) {
                return Err(ParseError::line(line, format!("unknown table *{name}")));
            }
            open = Some(OpenTable {
                name: name.to_string(),
                line,
                chains: Vec::new(),
            });
            continue;
        }
        let Some(table) = open.as_mut() else {
            return Err(ParseError::line(
                line,
                format!("{trimmed:?} appears outside a *table ... COMMIT block"),
            ));
        };
        if trimmed == "COMMIT" {
            if let Some(table) = open.take() {
                tables.push(table.finish(backend, family));
            }
        } else if let Some(declaration) = trimmed.strip_prefix(':') {
            let chain = parse_chain_line(declaration, &table.name, line)?;
            if table.chains.iter().any(|known| known.name == chain.name) {
                return Err(ParseError::line(
                    line,
                    format!("chain {} declared twice", chain.name),
                ));
            }
            table.chains.push(chain);
        } else if trimmed.starts_with('[') || trimmed.starts_with('-') {
            table.add_rule(trimmed, line, family)?;
        } else {
            return Err(ParseError::line(
                line,
                format!("unexpected line {trimmed:?}"),
            ));
        }
    }
    if let Some(table) = open {
        return Err(ParseError::line(
            table.line,
            format!("table {} is never COMMITted", table.name),
        ));
    }
    Ok(tables)
}

/// The lines of a dump that say something (not blank, not comments), trimmed, with their
/// 1-based numbers.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(index, raw)| (index + 1, raw.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}

const KNOWN_TABLES: &[&str] = &["filter", "nat", "mangle", "raw", "security"];

/// Priority and chain type of a built-in chain, as the kernel registers
/// them (NF_IP_PRI_*; identical for IPv6).
fn builtin_priority(table: &str, hook: Hook) -> Option<(i32, ChainKind)> {
    use Hook::*;
    match (table, hook) {
        ("raw", Prerouting | Output) => Some((-300, ChainKind::Filter)),
        ("mangle", Output) => Some((-150, ChainKind::Route)),
        ("mangle", _) => Some((-150, ChainKind::Filter)),
        ("nat", Prerouting | Output) => Some((-100, ChainKind::Nat)),
        ("nat", Input | Postrouting) => Some((100, ChainKind::Nat)),
        ("filter", Input | Forward | Output) => Some((0, ChainKind::Filter)),
        ("security", Input | Forward | Output) => Some((50, ChainKind::Filter)),
        _ => None,
    }
}

struct OpenTable {
    name: String,
    line: usize,
    chains: Vec<Chain>,
}

impl OpenTable {
    fn add_rule(&mut self, text: &str, line: usize, family: Family) -> Result<()> {
        let (counters, rule_text) = split_counters(text, line)?;
        let words = shell::split(rule_text).map_err(|message| ParseError::line(line, message))?;
        let (chain_name, options) = match words.as_slice() {
            [append, chain, options @ ..] if append == "-A" || append == "--append" => {
                (chain.as_str(), options)
            }
            _ => {
                return Err(ParseError::line(
                    line,
                    "rule does not start with -A CHAIN".to_string(),
                ));
            }
        };
        let chain_names: Vec<&str> = self.chains.iter().map(|c| c.name.as_str()).collect();
        let mut builder = RuleBuilder {
            words: options,
            next: 0,
            line,
            family,
            chain_names: &chain_names,
            protocol: None,
            modules: Vec::new(),
            matches: Vec::new(),
            comment: None,
            target: None,
            counters,
        };
        builder.run()?;
        let RuleBuilder {
            matches,
            comment,
            target,
            counters,
            ..
        } = builder;
        let Some(chain) = self.chains.iter_mut().find(|c| c.name == chain_name) else {
            return Err(ParseError::line(
                line,
                format!("rule for chain {chain_name} which has no :{chain_name} line"),
            ));
        };
        let position = u32::try_from(chain.rules.len() + 1).unwrap_or(u32::MAX);
        chain.rules.push(Rule {
            position,
            handle: None,
            text: rule_text.to_string(),
            comment,
            counters,
            matches,
            target: target.unwrap_or(Target::Continue { action: None }),
        });
        Ok(())
    }

    /// Jumps to names that turned out not to be chains of this table are
    /// targets we do not know.
    fn finish(mut self, backend: Backend, family: Family) -> Table {
        let chain_names: Vec<String> = self.chains.iter().map(|c| c.name.clone()).collect();
        for chain in &mut self.chains {
            for rule in &mut chain.rules {
                if let Target::Jump { chain: target } = &rule.target
                    && !chain_names.contains(target)
                {
                    rule.target = Target::Unknown {
                        action: target.clone(),
                    };
                }
            }
        }
        Table {
            backend,
            family: TableFamily::of(family),
            name: self.name,
            chains: self.chains,
        }
    }
}

/// `:INPUT ACCEPT [12:3456]` (built-in) or `:MYCHAIN - [0:0]` (user chain).
fn parse_chain_line(declaration: &str, table: &str, line: usize) -> Result<Chain> {
    let mut parts = declaration.split_whitespace();
    let (Some(name), Some(policy)) = (parts.next(), parts.next()) else {
        return Err(ParseError::line(
            line,
            "chain line needs a name and a policy",
        ));
    };
    let policy_counters = match parts.next() {
        Some(counters) => Some(parse_counters(counters, line)?),
        None => None,
    };
    let base = match policy {
        "-" => None,
        "ACCEPT" | "DROP" => {
            let hook = Hook::from_iptables_chain(name).ok_or_else(|| {
                ParseError::line(
                    line,
                    format!("chain {name} has a policy but is not built-in"),
                )
            })?;
            let (priority, kind) = builtin_priority(table, hook).ok_or_else(|| {
                ParseError::line(line, format!("table {table} has no built-in chain {name}"))
            })?;
            Some(BaseChain {
                hook,
                priority,
                policy: if policy == "ACCEPT" {
                    Policy::Accept
                } else {
                    Policy::Drop
                },
                kind,
            })
        }
        other => {
            return Err(ParseError::line(
                line,
                format!("chain {name}: unknown policy {other:?}"),
            ));
        }
    };
    Ok(Chain {
        name: name.to_string(),
        base,
        rules: Vec::new(),
        policy_counters,
    })
}

/// Splits an optional `[packets:bytes]` prefix from the rule.
fn split_counters(text: &str, line: usize) -> Result<(Option<Counters>, &str)> {
    if !text.starts_with('[') {
        return Ok((None, text));
    }
    let Some(end) = text.find(']') else {
        return Err(ParseError::line(line, "counter prefix has no closing ]"));
    };
    let (counters, rest) = text.split_at(end + 1);
    Ok((Some(parse_counters(counters, line)?), rest.trim()))
}

fn parse_counters(text: &str, line: usize) -> Result<Counters> {
    let inner = text
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.split_once(':'));
    let parsed =
        inner.and_then(|(packets, bytes)| Some((packets.parse().ok()?, bytes.parse().ok()?)));
    match parsed {
        Some((packets, bytes)) => Ok(Counters { packets, bytes }),
        None => Err(ParseError::line(
            line,
            format!("bad counters {text:?}, expected [packets:bytes]"),
        )),
    }
}

/// An `iptables-save -c` dump's counters, in order, and a digest of everything else (but
/// comment lines, which carry the time): two dumps with the same digest hold the same
/// tables, chains, policies and rules, so the tables parsed from one take the other's
/// counters ([`SaveCounters::apply`]) instead of a parse — 2 ms for 2,000 rules, at every
/// read of a legacy ruleset, which has no generation id to say it did not change.
#[derive(Debug)]
pub struct SaveCounters {
    pub digest: u64,
    /// One per chain line (its policy's counters) and per rule line, in order.
    counted: Vec<Counted>,
}

#[derive(Debug)]
struct Counted {
    table: String,
    chain: String,
    /// A chain line's policy counters, not a rule's.
    policy: bool,
    counters: Option<Counters>,
}

/// Reads [`SaveCounters`] from `text`. Lines are not checked beyond their counters: a
/// dump that does not parse fails [`parse`] (and its digest matches no parsed one).
pub fn counters(text: &str) -> Result<SaveCounters> {
    use std::hash::{Hash as _, Hasher as _};
    let mut digest = std::collections::hash_map::DefaultHasher::new();
    let mut counted = Vec::new();
    let mut table = "";
    for (line, trimmed) in lines(text) {
        if let Some(name) = trimmed.strip_prefix('*') {
            table = name;
            trimmed.hash(&mut digest);
        } else if let Some(declaration) = trimmed.strip_prefix(':') {
            let mut parts = declaration.split_whitespace();
            let (chain, policy) = (parts.next().unwrap_or(""), parts.next());
            (chain, policy).hash(&mut digest);
            counted.push(Counted {
                table: table.to_string(),
                chain: chain.to_string(),
                policy: true,
                counters: parts.next().map(|c| parse_counters(c, line)).transpose()?,
            });
        } else if trimmed.starts_with('[') || trimmed.starts_with('-') {
            let (counters, rule) = split_counters(trimmed, line)?;
            rule.hash(&mut digest);
            counted.push(Counted {
                table: table.to_string(),
                // `-A CHAIN ...`: chain names hold no blanks.
                chain: rule.split_whitespace().nth(1).unwrap_or("").to_string(),
                policy: false,
                counters,
            });
        } else {
            trimmed.hash(&mut digest);
        }
    }
    Ok(SaveCounters {
        digest: digest.finish(),
        counted,
    })
}

impl SaveCounters {
    /// Puts these counters into `tables`, parsed from a dump of the same digest: every
    /// rule's and chain policy's, by place. An error names what did not pair up; `tables`
    /// may then be partly updated and should be dropped.
    pub fn apply(&self, tables: &mut [Table]) -> std::result::Result<(), String> {
        let mut places = std::collections::HashMap::new();
        for (t, table) in tables.iter().enumerate() {
            for (c, chain) in table.chains.iter().enumerate() {
                places.insert((table.name.as_str(), chain.name.as_str()), (t, c));
            }
        }
        let mut next = vec![Vec::new(); tables.len()];
        for (t, table) in tables.iter().enumerate() {
            next[t] = vec![0usize; table.chains.len()];
        }
        let mut updates = Vec::with_capacity(self.counted.len());
        for counted in &self.counted {
            let &(t, c) = places
                .get(&(counted.table.as_str(), counted.chain.as_str()))
                .ok_or_else(|| format!("no chain {} {}", counted.table, counted.chain))?;
            if counted.policy {
                updates.push((t, c, None, counted.counters));
                continue;
            }
            let rule = next[t][c];
            next[t][c] += 1;
            updates.push((t, c, Some(rule), counted.counters));
        }
        for (t, table) in tables.iter().enumerate() {
            for (c, chain) in table.chains.iter().enumerate() {
                if next[t][c] != chain.rules.len() {
                    return Err(format!(
                        "{} {}: {} rules counted, {} parsed",
                        table.name,
                        chain.name,
                        next[t][c],
                        chain.rules.len()
                    ));
                }
            }
        }
        for (t, c, rule, counters) in updates {
            let chain = &mut tables[t].chains[c];
            match rule {
                None => chain.policy_counters = counters,
                Some(r) => chain.rules[r].counters = counters,
            }
        }
        Ok(())
    }
}

/// Modules whose options we turn into real conditions.
const EVALUATED_MODULES: &[&str] = &[
    "tcp",
    "udp",
    "sctp",
    "dccp",
    "udplite",
    "multiport",
    "conntrack",
    "state",
    "owner",
    "mark",
    "icmp",
    "icmp6",
    "comment",
    "set",
    "length",
    "iprange",
    "addrtype",
];

/// Whether `module` (one of [`EVALUATED_MODULES`]) takes `option`.
fn module_takes(module: &str, option: &str) -> bool {
    let port_options = ["--sport", "--source-port", "--dport", "--destination-port"];
    match module {
        "tcp" => {
            port_options.contains(&option)
                || ["--tcp-flags", "--syn", "--tcp-option"].contains(&option)
        }
        "udp" | "udplite" => port_options.contains(&option),
        "sctp" => port_options.contains(&option) || option == "--chunk-types",
        "dccp" => {
            port_options.contains(&option) || ["--dccp-types", "--dccp-option"].contains(&option)
        }
        "multiport" => [
            "--dports",
            "--destination-ports",
            "--sports",
            "--source-ports",
            "--ports",
        ]
        .contains(&option),
        "conntrack" => option.starts_with("--ct"),
        "state" => option == "--state",
        "owner" => [
            "--uid-owner",
            "--gid-owner",
            "--socket-exists",
            "--suppl-groups",
        ]
        .contains(&option),
        "mark" => option == "--mark",
        "icmp" => option == "--icmp-type",
        "icmp6" => option == "--icmpv6-type",
        "comment" => option == "--comment",
        "set" => {
            option == "--match-set"
                || option == "--return-nomatch"
                || option.starts_with("--update-")
                || option.starts_with("--packets-")
                || option.starts_with("--bytes-")
        }
        "length" => option == "--length",
        "iprange" => option == "--src-range" || option == "--dst-range",
        "addrtype" => {
            option.starts_with("--src-type")
                || option.starts_with("--dst-type")
                || option.starts_with("--limit-iface")
        }
        _ => false,
    }
}

/// Why a module we do not evaluate cannot be decided.
fn undecidable_module_reason(module: &str) -> String {
    match module {
        "limit" | "hashlimit" => {
            format!("-m {module}: whether the rate limit was exceeded depends on recent traffic")
        }
        "recent" => "-m recent: the recent list's contents are not visible".to_string(),
        "statistic" => "-m statistic: random or nth sampling".to_string(),
        "connlimit" => "-m connlimit: depends on live connection counts".to_string(),
        "connmark" => "-m connmark: the conntrack mark is not reported".to_string(),
        "connbytes" => "-m connbytes: depends on connection byte counts".to_string(),
        "mac" => "-m mac: the MAC address is not reported".to_string(),
        "physdev" => "-m physdev: bridge ports are not reported".to_string(),
        "quota" => "-m quota: depends on bytes already counted".to_string(),
        "time" => "-m time: depends on when the packet passed".to_string(),
        other => format!("-m {other} is not evaluated"),
    }
}

/// Targets that end evaluation of the chain like ACCEPT (NAT).
pub(crate) const NAT_TARGETS: &[&str] = &["MASQUERADE", "SNAT", "DNAT", "REDIRECT", "NETMAP"];

/// Targets that act on the packet and let evaluation continue.
pub(crate) const CONTINUING_TARGETS: &[&str] = &[
    "LOG",
    "NFLOG",
    "ULOG",
    "MARK",
    "CONNMARK",
    "CT",
    "NOTRACK",
    "TCPMSS",
    "TRACE",
    "CLASSIFY",
    "DSCP",
    "TOS",
    "TTL",
    "HL",
    "ECN",
    "SECMARK",
    "CONNSECMARK",
    "AUDIT",
    "CHECKSUM",
    "TEE",
    "SET",
    "IDLETIMER",
    "LED",
    "RATEEST",
    "TCPOPTSTRIP",
    "HMARK",
    "SNPT",
    "DNPT",
];

struct RuleBuilder<'a> {
    words: &'a [String],
    next: usize,
    line: usize,
    family: Family,
    chain_names: &'a [&'a str],
    /// The rule's `-p` protocol, for options that load a module implicitly
    /// (`-p tcp --dport 22`) and for multiport.
    protocol: Option<u8>,
    modules: Vec<String>,
    matches: Vec<Match>,
    comment: Option<String>,
    target: Option<Target>,
    counters: Option<Counters>,
}

impl<'a> RuleBuilder<'a> {
    fn take(&mut self) -> Option<&'a str> {
        let word = self.words.get(self.next)?;
        self.next += 1;
        Some(word.as_str())
    }

    fn value(&mut self, option: &str) -> Result<String> {
        match self.take() {
            Some(value) => Ok(value.to_string()),
            None => Err(ParseError::line(
                self.line,
                format!("{option} needs a value"),
            )),
        }
    }

    fn peek(&self) -> Option<&'a str> {
        self.words.get(self.next).map(String::as_str)
    }

    /// The words consumed since index `start`, for messages.
    fn words_since(&self, start: usize) -> &'a [String] {
        self.words.get(start..self.next).unwrap_or_default()
    }

    /// Skips the arguments of an option we do not interpret.
    fn skip_arguments(&mut self) {
        while let Some(word) = self.peek() {
            if word.starts_with('-') || word == "!" {
                break;
            }
            self.next += 1;
        }
    }

    fn push(&mut self, negated: bool, condition: Condition) {
        self.matches.push(Match::negated_if(negated, condition));
    }

    fn undecidable(&mut self, reason: String) {
        self.matches.push(Match::undecidable(reason));
    }

    fn run(&mut self) -> Result<()> {
        while let Some(word) = self.take() {
            let mut option = word.to_string();
            let negated = option == "!";
            if negated {
                option = self.value("!")?;
            }
            match option.as_str() {
                "-p" | "--protocol" => {
                    let value = self.value(&option)?;
                    self.protocol_option(negated, &value);
                }
                "-s" | "--source" | "--src" => {
                    let value = self.value(&option)?;
                    self.address_option(negated, Direction::Source, &value);
                }
                "-d" | "--destination" | "--dst" => {
                    let value = self.value(&option)?;
                    self.address_option(negated, Direction::Destination, &value);
                }
                "-i" | "--in-interface" => {
                    let value = self.value(&option)?;
                    self.push(negated, interface(Direction::Source, &value));
                }
                "-o" | "--out-interface" => {
                    let value = self.value(&option)?;
                    self.push(negated, interface(Direction::Destination, &value));
                }
                "-f" | "--fragment" => {
                    self.undecidable("-f: whether the packet is a fragment is not reported".into())
                }
                "-m" | "--match" => {
                    let module = self.value(&option)?;
                    if !EVALUATED_MODULES.contains(&module.as_str()) {
                        self.undecidable(undecidable_module_reason(&module));
                    }
                    self.modules.push(module);
                }
                "-j" | "--jump" => {
                    let name = self.value(&option)?;
                    self.jump(&name)?;
                }
                "-g" | "--goto" => {
                    let chain = self.value(&option)?;
                    self.target = Some(Target::Goto { chain });
                }
                "-c" | "--set-counters" => {
                    let packets = self.value(&option)?;
                    let bytes = self.value(&option)?;
                    self.counters =
                        Some(parse_counters(&format!("[{packets}:{bytes}]"), self.line)?);
                }
                "-4" | "-6" | "--ipv4" | "--ipv6" => {}
                long if long.starts_with("--") => self.module_option(negated, long)?,
                other => {
                    return Err(ParseError::line(
                        self.line,
                        format!("unexpected word {other:?} in rule"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn protocol_option(&mut self, negated: bool, value: &str) {
        if value == "all" || value == "0" {
            if negated {
                // `! -p all` matches nothing.
                self.push(
                    true,
                    Condition::Value {
                        field: Field::L4Proto { family: None },
                        mask: None,
                        test: ValueTest::OneOf(vec![ValueRange {
                            first: 0,
                            last: 255,
                        }]),
                    },
                );
            }
            return;
        }
        match names::protocol(value) {
            Some(protocol) => {
                if !negated {
                    self.protocol = Some(protocol);
                }
                self.push(
                    negated,
                    Condition::Value {
                        field: Field::L4Proto { family: None },
                        mask: None,
                        test: ValueTest::OneOf(vec![ValueRange::single(protocol.into())]),
                    },
                );
            }
            None => self.undecidable(format!("-p {value}: unknown protocol")),
        }
    }

    fn address_option(&mut self, negated: bool, direction: Direction, value: &str) {
        let mut ranges = Vec::new();
        for part in value.split(',') {
            match parse_address(part, self.family) {
                Ok(range) => ranges.push(range),
                Err(reason) => {
                    self.undecidable(reason);
                    return;
                }
            }
        }
        self.push(
            negated,
            Condition::Address {
                direction,
                family: None,
                ranges,
            },
        );
    }

    fn jump(&mut self, name: &str) -> Result<()> {
        let mut options: Vec<(String, Vec<String>)> = Vec::new();
        while let Some(word) = self.peek() {
            if !word.starts_with("--") {
                break;
            }
            let option = word.to_string();
            self.next += 1;
            let start = self.next;
            self.skip_arguments();
            options.push((option, self.words_since(start).to_vec()));
        }
        let option_value = |wanted: &str| {
            options
                .iter()
                .find(|(option, _)| option == wanted)
                .and_then(|(_, values)| values.first().cloned())
        };
        let target = match name {
            "ACCEPT" => Target::Accept,
            "DROP" => Target::Drop,
            "RETURN" => Target::Return,
            "QUEUE" | "NFQUEUE" => Target::Queue,
            "REJECT" => Target::Reject {
                with: Some(option_value("--reject-with").unwrap_or_else(|| {
                    match self.family {
                        Family::Ipv4 => "icmp-port-unreachable",
                        Family::Ipv6 => "icmp6-port-unreachable",
                    }
                    .to_string()
                })),
            },
            chain if self.chain_names.contains(&chain) => Target::Jump {
                chain: chain.to_string(),
            },
            nat if NAT_TARGETS.contains(&nat) => Target::Nat {
                action: nat.to_string(),
            },
            action if CONTINUING_TARGETS.contains(&action) => Target::Continue {
                action: Some(action.to_string()),
            },
            // A chain declared later in the table, or a target we do not
            // know; settled when the table is COMMITted.
            other => Target::Jump {
                chain: other.to_string(),
            },
        };
        self.target = Some(target);
        Ok(())
    }

    /// The module that owns `option`: the last loaded evaluated module that
    /// takes it, else the module `-p` loads implicitly.
    fn owner_of(&self, option: &str) -> Option<String> {
        if let Some(module) = self.modules.iter().rev().find(|module| {
            EVALUATED_MODULES.contains(&module.as_str()) && module_takes(module, option)
        }) {
            return Some(module.clone());
        }
        let implicit = match self.protocol? {
            6 => "tcp",
            17 => "udp",
            132 => "sctp",
            33 => "dccp",
            136 => "udplite",
            1 => "icmp",
            58 => "icmp6",
            _ => return None,
        };
        module_takes(implicit, option).then(|| implicit.to_string())
    }

    fn module_option(&mut self, negated: bool, option: &str) -> Result<()> {
        let Some(module) = self.owner_of(option) else {
            // An option of a module we do not evaluate (already reported as
            // undecidable when the module was loaded), or of none at all.
            let belongs_to_unevaluated = self
                .modules
                .iter()
                .any(|module| !EVALUATED_MODULES.contains(&module.as_str()));
            if !belongs_to_unevaluated {
                self.undecidable(format!("option {option} is not understood"));
            }
            self.skip_arguments();
            return Ok(());
        };
        match (module.as_str(), option) {
            (
                "tcp" | "udp" | "sctp" | "dccp" | "udplite",
                "--sport" | "--source-port" | "--dport" | "--destination-port",
            ) => {
                let value = self.value(option)?;
                let protocol = names::protocol(&module);
                let field = if option.starts_with("--s") {
                    Field::SrcPort { protocol }
                } else {
                    Field::DstPort { protocol }
                };
                match parse_port_range(&value) {
                    Some(range) => self.push(
                        negated,
                        Condition::Value {
                            field,
                            mask: None,
                            test: ValueTest::OneOf(vec![range]),
                        },
                    ),
                    None => self.undecidable(format!("{option} {value}: not a port or range")),
                }
            }
            ("tcp", "--tcp-flags") => {
                let mask = self.value(option)?;
                let compare = self.value(option)?;
                match (tcp_flag_list(&mask), tcp_flag_list(&compare)) {
                    (Some(mask), Some(compare)) => self.push(negated, tcp_flags(mask, compare)),
                    _ => self.undecidable(format!("--tcp-flags {mask} {compare}: unknown flag")),
                }
            }
            ("tcp", "--syn") => self.push(negated, tcp_flags(0x17, 0x02)),
            ("multiport", _) => {
                let value = self.value(option)?;
                let ranges: Option<Vec<ValueRange>> =
                    value.split(',').map(parse_port_range).collect();
                let Some(ranges) = ranges else {
                    self.undecidable(format!("{option} {value}: not a port list"));
                    return Ok(());
                };
                let protocol = self.protocol;
                let condition = match option {
                    "--ports" => Condition::AnyPort { protocol, ranges },
                    "--sports" | "--source-ports" => Condition::Value {
                        field: Field::SrcPort { protocol },
                        mask: None,
                        test: ValueTest::OneOf(ranges),
                    },
                    _ => Condition::Value {
                        field: Field::DstPort { protocol },
                        mask: None,
                        test: ValueTest::OneOf(ranges),
                    },
                };
                self.push(negated, condition);
            }
            ("conntrack", "--ctstate") | ("state", "--state") => {
                let value = self.value(option)?;
                let bits: Option<u32> = value
                    .split(',')
                    .map(names::ct_state_bit)
                    .try_fold(0, |all, bit| Some(all | bit?));
                match bits {
                    Some(bits) => self.push(
                        negated,
                        Condition::Value {
                            field: Field::CtState,
                            mask: None,
                            test: ValueTest::AnyBitSet(bits),
                        },
                    ),
                    None => self.undecidable(format!(
                        "{option} {value}: SNAT/DNAT pseudo-states are not reported"
                    )),
                }
            }
            ("owner", "--uid-owner" | "--gid-owner") => {
                let value = self.value(option)?;
                let id = if option == "--uid-owner" {
                    OwnerId::Uid
                } else {
                    OwnerId::Gid
                };
                match parse_id_range(&value) {
                    Some(range) => self.push(
                        negated,
                        Condition::SocketOwner {
                            id,
                            ranges: vec![range],
                        },
                    ),
                    None => self.undecidable(format!(
                        "{option} {value}: a name needs the host's user database"
                    )),
                }
            }
            ("mark", "--mark") => {
                let value = self.value(option)?;
                match parse_value_mask(&value) {
                    Some((value, mask)) => self.push(
                        negated,
                        Condition::Value {
                            field: Field::Mark,
                            mask: Some(mask),
                            test: ValueTest::OneOf(vec![ValueRange::single(value)]),
                        },
                    ),
                    None => self.undecidable(format!("--mark {value}: not a mark")),
                }
            }
            ("icmp", "--icmp-type") | ("icmp6", "--icmpv6-type") => {
                let value = self.value(option)?;
                let protocol = if module == "icmp" { 1 } else { 58 };
                match parse_icmp_type(protocol, &value) {
                    Some(condition) => self.push(negated, condition),
                    None => self.undecidable(format!("{option} {value}: unknown ICMP type")),
                }
            }
            ("comment", "--comment") => {
                let value = self.value(option)?;
                self.comment = Some(value);
            }
            ("set", "--match-set") => {
                let name = self.value(option)?;
                let flags = self.value(option)?;
                let directions: Option<Vec<Direction>> = flags
                    .split(',')
                    .map(|flag| match flag {
                        "src" => Some(Direction::Source),
                        "dst" => Some(Direction::Destination),
                        _ => None,
                    })
                    .collect();
                match directions {
                    Some(directions) => self.push(negated, Condition::IpSet { name, directions }),
                    None => self.undecidable(format!("--match-set {name} {flags}: bad directions")),
                }
            }
            ("set", "--update-counters" | "--update-subcounters") => {}
            ("length", "--length") => {
                let value = self.value(option)?;
                match parse_port_style_range(&value, u32::from(u16::MAX)) {
                    Some(range) => self.push(
                        negated,
                        Condition::Value {
                            field: Field::Length,
                            mask: None,
                            test: ValueTest::OneOf(vec![range]),
                        },
                    ),
                    None => self.undecidable(format!("--length {value}: not a length range")),
                }
            }
            ("iprange", "--src-range" | "--dst-range") => {
                let value = self.value(option)?;
                let direction = if option == "--src-range" {
                    Direction::Source
                } else {
                    Direction::Destination
                };
                let parsed = value.split_once('-').and_then(|(first, last)| {
                    Some((IpAddr::from_str(first).ok()?, IpAddr::from_str(last).ok()?))
                });
                match parsed {
                    Some((first, last)) => self.push(
                        negated,
                        Condition::Address {
                            direction,
                            family: None,
                            ranges: vec![AddrRange::Range { first, last }],
                        },
                    ),
                    None => self.undecidable(format!("{option} {value}: not an address range")),
                }
            }
            ("addrtype", "--src-type" | "--dst-type") => {
                let value = self.value(option)?;
                let direction = if option == "--src-type" {
                    Direction::Source
                } else {
                    Direction::Destination
                };
                match AddrTypes::parse_list(&value) {
                    Ok(types) => self.push(
                        negated,
                        Condition::AddrType {
                            direction,
                            types,
                            limit_iface: None,
                            matcher: Matcher::Xt,
                        },
                    ),
                    Err(e) => self.undecidable(format!("-m addrtype {option} {value}: {e}")),
                }
            }
            ("addrtype", "--limit-iface-in" | "--limit-iface-out") => {
                let side = if option == "--limit-iface-in" {
                    Direction::Source
                } else {
                    Direction::Destination
                };
                // Applies to the types of this `-m addrtype`, printed just before it.
                for one in self.matches.iter_mut().rev() {
                    match &mut one.condition {
                        Condition::AddrType { limit_iface, .. } => *limit_iface = Some(side),
                        _ => break,
                    }
                }
            }
            (module, option) => {
                // Known module, option we do not model (--tcp-option,
                // --ctorigsrc, --socket-exists, --packets-gt, ...).
                let start = self.next;
                self.skip_arguments();
                let arguments = self.words_since(start).join(" ");
                self.undecidable(format!("-m {module} {option} {arguments} is not evaluated"));
            }
        }
        Ok(())
    }
}

fn tcp_flags(mask: u32, compare: u32) -> Condition {
    Condition::Value {
        field: Field::TcpFlags,
        mask: Some(mask),
        test: ValueTest::OneOf(vec![ValueRange::single(compare & mask)]),
    }
}

fn tcp_flag_list(list: &str) -> Option<u32> {
    list.split(',')
        .try_fold(0, |all, name| Some(all | names::tcp_flag_bits(name)?))
}

/// `eth0`, `veth+` (prefix), `+` (any).
fn interface(direction: Direction, value: &str) -> Condition {
    let (name, wildcard) = match value.strip_suffix('+') {
        Some(prefix) => (prefix, true),
        None => (value, false),
    };
    Condition::Interface {
        direction,
        names: vec![InterfaceName {
            name: name.to_string(),
            wildcard,
        }],
    }
}

/// `10.0.0.0/8`, `10.0.0.0/255.0.0.0`, `192.0.2.1`, `2001:db8::/32`.
fn parse_address(text: &str, family: Family) -> std::result::Result<AddrRange, String> {
    let net = if let Ok(net) = IpNet::from_str(text) {
        net.trunc()
    } else if let Ok(addr) = IpAddr::from_str(text) {
        IpNet::from(addr)
    } else if let Some((addr, mask)) = text.split_once('/') {
        let (Ok(addr), Ok(mask)) = (IpAddr::from_str(addr), IpAddr::from_str(mask)) else {
            return Err(format!("{text:?} is not an address (host names need DNS)"));
        };
        match IpNet::with_netmask(addr, mask) {
            Ok(net) => net.trunc(),
            Err(_) => return Err(format!("{text:?} has a non-contiguous mask")),
        }
    } else {
        return Err(format!("{text:?} is not an address (host names need DNS)"));
    };
    let family_matches = matches!(
        (family, net),
        (Family::Ipv4, IpNet::V4(_)) | (Family::Ipv6, IpNet::V6(_))
    );
    if family_matches {
        Ok(AddrRange::Net(net))
    } else {
        Err(format!("{text:?} is not an {family:?} address"))
    }
}

/// `22`, `1024:65535`, `:1023`, `1024:`.
fn parse_port_range(text: &str) -> Option<ValueRange> {
    parse_port_style_range(text, u32::from(u16::MAX))
}

fn parse_port_style_range(text: &str, max: u32) -> Option<ValueRange> {
    let parse = |part: &str| -> Option<u32> {
        let value: u32 = part.parse().ok()?;
        (value <= max).then_some(value)
    };
    match text.split_once(':') {
        Some((first, last)) => {
            let first = if first.is_empty() { 0 } else { parse(first)? };
            let last = if last.is_empty() { max } else { parse(last)? };
            (first <= last).then_some(ValueRange { first, last })
        }
        None => parse(text).map(ValueRange::single),
    }
}

/// `1000` or `0-99` (owner ids).
fn parse_id_range(text: &str) -> Option<ValueRange> {
    match text.split_once('-') {
        Some((first, last)) => {
            let (first, last) = (first.parse().ok()?, last.parse().ok()?);
            (first <= last).then_some(ValueRange { first, last })
        }
        None => text.parse().ok().map(ValueRange::single),
    }
}

/// `0x19/0xff` or `25`.
fn parse_value_mask(text: &str) -> Option<(u32, u32)> {
    match text.split_once('/') {
        Some((value, mask)) => {
            let mask = names::number(mask)?;
            Some((names::number(value)? & mask, mask))
        }
        None => Some((names::number(text)?, u32::MAX)),
    }
}

/// `8`, `3/4`, `echo-request`, `any`.
fn parse_icmp_type(protocol: u8, text: &str) -> Option<Condition> {
    let all_codes = ValueRange {
        first: 0,
        last: 255,
    };
    let (icmp_type, codes) = if let Some((icmp_type, code)) = text.split_once('/') {
        let code: u8 = code.parse().ok()?;
        (icmp_type.parse().ok()?, ValueRange::single(code.into()))
    } else if let Ok(icmp_type) = text.parse::<u8>() {
        (icmp_type, all_codes)
    } else {
        let named = if protocol == 1 {
            names::iptables_icmp(text)
        } else {
            names::iptables_icmpv6(text)
        };
        let (icmp_type, code) = named?;
        (
            icmp_type,
            code.map_or(all_codes, |code| ValueRange::single(code.into())),
        )
    };
    Some(Condition::Icmp {
        protocol,
        icmp_type,
        codes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counters read alone, put into the tables of an earlier dump, are those a parse of
    /// the later dump gives; the digest sees rules and policies, not counters or comments.
    #[test]
    fn counters_alone_update_the_tables_of_the_same_rules() {
        let dump = |input: (u64, u64), rule: u64, log: u64, when: &str| {
            format!(
                "# Generated by iptables-save v1.8.9 on {when}\n*filter\n\
                 :INPUT DROP [{}:{}]\n:OUTPUT ACCEPT [0:0]\n:LOG_DROP - [0:0]\n\
                 [{rule}:60] -A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n\
                 [{log}:0] -A INPUT -j LOG_DROP\n[{log}:0] -A LOG_DROP -j DROP\nCOMMIT\n\
                 *raw\n:PREROUTING ACCEPT [9:9]\nCOMMIT\n",
                input.0, input.1
            )
        };
        let before = dump((1, 40), 1, 0, "Wed Dec  2 16:00:00 2026");
        let after = dump((7, 280), 5, 3, "Wed Dec  2 16:00:01 2026");
        let mut tables = parse(&before, Backend::IptablesLegacy, Family::Ipv4).unwrap();
        let counted = counters(&after).unwrap();
        assert_eq!(counted.digest, counters(&before).unwrap().digest);
        counted.apply(&mut tables).unwrap();
        let parsed = parse(&after, Backend::IptablesLegacy, Family::Ipv4).unwrap();
        let all = |tables: &[Table]| -> Vec<(Option<Counters>, Vec<Option<Counters>>)> {
            tables
                .iter()
                .flat_map(|t| &t.chains)
                .map(|c| {
                    (
                        c.policy_counters,
                        c.rules.iter().map(|r| r.counters).collect(),
                    )
                })
                .collect()
        };
        assert_eq!(all(&tables), all(&parsed));

        let other_rule = before.replace("--dport 22", "--dport 23");
        let other_policy = before.replace(":INPUT DROP", ":INPUT ACCEPT");
        for changed in [other_rule, other_policy] {
            assert_ne!(counters(&changed).unwrap().digest, counted.digest);
        }
        // A rule more than the tables have does not pair up.
        let more = after.replace("COMMIT\n*raw", "[0:0] -A LOG_DROP -j ACCEPT\nCOMMIT\n*raw");
        let err = counters(&more).unwrap().apply(&mut tables).unwrap_err();
        assert!(err.contains("LOG_DROP: 2 rules counted, 1 parsed"), "{err}");
        assert!(counters("*filter\n:INPUT DROP [x:1]\nCOMMIT\n").is_err());
    }

    fn parse_v4(text: &str) -> Vec<Table> {
        parse(text, Backend::IptablesNft, Family::Ipv4).unwrap()
    }

    fn only_rule(text: &str) -> Rule {
        let rules = format!(
            "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:USER - [0:0]\n{text}\nCOMMIT\n"
        );
        let tables = parse_v4(&rules);
        let chain = tables[0]
            .chains
            .iter()
            .find(|chain| !chain.rules.is_empty())
            .unwrap();
        chain.rules[0].clone()
    }

    fn value(field: Field, mask: Option<u32>, ranges: &[(u32, u32)]) -> Condition {
        Condition::Value {
            field,
            mask,
            test: ValueTest::OneOf(
                ranges
                    .iter()
                    .map(|&(first, last)| ValueRange { first, last })
                    .collect(),
            ),
        }
    }

    #[test]
    fn tables_chains_policies_and_counters() {
        let tables = parse_v4(
            "# Generated by iptables-save v1.8.9 (nf_tables)\n\
             *nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [7:420]\nCOMMIT\n\
             *filter\n:INPUT DROP [3:180]\n:OUTPUT ACCEPT [0:0]\n:LOGGING - [0:0]\n\
             [5:300] -A INPUT -i lo -j ACCEPT\n-A INPUT -j LOGGING\nCOMMIT\n",
        );
        assert_eq!(tables.len(), 2);
        let nat = &tables[0];
        assert_eq!(nat.family, TableFamily::Ip);
        let postrouting = nat.chain("POSTROUTING").unwrap().base.unwrap();
        assert_eq!(
            (postrouting.priority, postrouting.kind),
            (100, ChainKind::Nat)
        );
        assert_eq!(
            nat.chain("PREROUTING").unwrap().base.unwrap().priority,
            -100
        );
        let filter = &tables[1];
        let input = filter.chain("INPUT").unwrap();
        assert_eq!(input.base.unwrap().policy, Policy::Drop);
        assert_eq!(input.base.unwrap().hook, Hook::Input);
        assert_eq!(
            input.policy_counters,
            Some(Counters {
                packets: 3,
                bytes: 180
            })
        );
        assert_eq!(input.rules.len(), 2);
        assert_eq!(input.rules[0].text, "-A INPUT -i lo -j ACCEPT");
        assert_eq!(
            input.rules[0].counters,
            Some(Counters {
                packets: 5,
                bytes: 300
            })
        );
        assert_eq!(input.rules[1].position, 2);
        assert_eq!(input.rules[1].counters, None);
        assert_eq!(
            input.rules[1].target,
            Target::Jump {
                chain: "LOGGING".into()
            }
        );
        assert!(filter.chain("LOGGING").unwrap().base.is_none());
    }

    #[test]
    fn protocol_ports_and_implicit_modules() {
        let rule = only_rule("-A OUTPUT -p tcp --dport 1024:65535 -j DROP");
        assert_eq!(
            rule.matches,
            vec![
                Match::new(value(Field::L4Proto { family: None }, None, &[(6, 6)])),
                Match::new(value(
                    Field::DstPort { protocol: Some(6) },
                    None,
                    &[(1024, 65535)]
                )),
            ]
        );
        assert_eq!(rule.target, Target::Drop);
        let rule = only_rule("-A OUTPUT -p udp -m udp ! --sport :1023 -j ACCEPT");
        assert_eq!(
            rule.matches[1],
            Match::negated_if(
                true,
                value(Field::SrcPort { protocol: Some(17) }, None, &[(0, 1023)])
            )
        );
        let rule = only_rule("-A OUTPUT -p tcp --dport ssh -j ACCEPT");
        assert!(matches!(
            rule.matches[1].condition,
            Condition::Undecidable { .. }
        ));
    }

    #[test]
    fn multiport_lists_with_ranges() {
        let rule = only_rule("-A OUTPUT -p tcp -m multiport --dports 80,443,8000:8100 -j ACCEPT");
        assert_eq!(
            rule.matches[1].condition,
            value(
                Field::DstPort { protocol: Some(6) },
                None,
                &[(80, 80), (443, 443), (8000, 8100)]
            )
        );
        let rule = only_rule("-A OUTPUT -p udp -m multiport ! --ports 53,123 -j ACCEPT");
        assert_eq!(
            rule.matches[1],
            Match::negated_if(
                true,
                Condition::AnyPort {
                    protocol: Some(17),
                    ranges: vec![ValueRange::single(53), ValueRange::single(123)]
                }
            )
        );
    }

    #[test]
    fn addresses_cidrs_lists_masks_and_negation() {
        let rule = only_rule(
            "-A OUTPUT ! -d 10.0.0.0/8 -s 192.0.2.1,198.51.100.0/255.255.255.0 -j ACCEPT",
        );
        assert_eq!(
            rule.matches[0],
            Match::negated_if(
                true,
                Condition::Address {
                    direction: Direction::Destination,
                    family: None,
                    ranges: vec![AddrRange::Net("10.0.0.0/8".parse().unwrap())]
                }
            )
        );
        assert_eq!(
            rule.matches[1].condition,
            Condition::Address {
                direction: Direction::Source,
                family: None,
                ranges: vec![
                    AddrRange::Net("192.0.2.1/32".parse().unwrap()),
                    AddrRange::Net("198.51.100.0/24".parse().unwrap())
                ]
            }
        );
        let rule = only_rule("-A OUTPUT -d db.example.com -j ACCEPT");
        assert!(
            matches!(&rule.matches[0].condition, Condition::Undecidable { reason } if reason.contains("DNS"))
        );
        let rule = only_rule("-A OUTPUT -d 2001:db8::/32 -j ACCEPT");
        assert!(matches!(
            rule.matches[0].condition,
            Condition::Undecidable { .. }
        ));
    }

    #[test]
    fn interfaces_with_wildcards() {
        let rule = only_rule("-A OUTPUT -o veth+ -j DROP");
        assert_eq!(
            rule.matches[0].condition,
            Condition::Interface {
                direction: Direction::Destination,
                names: vec![InterfaceName {
                    name: "veth".into(),
                    wildcard: true
                }]
            }
        );
        let rule = only_rule("-A INPUT ! -i lo -j DROP");
        assert!(rule.matches[0].negated);
    }

    #[test]
    fn tcp_flags_and_syn() {
        let rule = only_rule("-A INPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j ACCEPT");
        assert_eq!(rule.matches[1].condition, tcp_flags(0x17, 0x02));
        let rule = only_rule("-A INPUT -p tcp ! --syn -j ACCEPT");
        assert_eq!(
            rule.matches[1],
            Match::negated_if(true, tcp_flags(0x17, 0x02))
        );
        let rule = only_rule("-A INPUT -p tcp --tcp-flags ALL NONE -j DROP");
        assert_eq!(rule.matches[1].condition, tcp_flags(0xff, 0));
    }

    #[test]
    fn conntrack_state_owner_mark_length() {
        let rule = only_rule("-A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT");
        assert_eq!(
            rule.matches[0].condition,
            Condition::Value {
                field: Field::CtState,
                mask: None,
                test: ValueTest::AnyBitSet(2 | 4)
            }
        );
        let rule = only_rule("-A INPUT -m state ! --state INVALID,UNTRACKED -j ACCEPT");
        assert_eq!(
            rule.matches[0],
            Match::negated_if(
                true,
                Condition::Value {
                    field: Field::CtState,
                    mask: None,
                    test: ValueTest::AnyBitSet(1 | 64)
                }
            )
        );
        let rule = only_rule("-A OUTPUT -m conntrack --ctstate DNAT -j ACCEPT");
        assert!(matches!(
            rule.matches[0].condition,
            Condition::Undecidable { .. }
        ));
        let rule = only_rule("-A OUTPUT -m owner --uid-owner 0-99 -j ACCEPT");
        assert_eq!(
            rule.matches[0].condition,
            Condition::SocketOwner {
                id: OwnerId::Uid,
                ranges: vec![ValueRange { first: 0, last: 99 }]
            }
        );
        let rule = only_rule("-A OUTPUT -m owner --gid-owner www-data -j ACCEPT");
        assert!(
            matches!(&rule.matches[0].condition, Condition::Undecidable { reason } if reason.contains("user database"))
        );
        let rule = only_rule("-A OUTPUT -m mark --mark 0x19/0xff -j ACCEPT");
        assert_eq!(
            rule.matches[0].condition,
            value(Field::Mark, Some(0xff), &[(0x19, 0x19)])
        );
        let rule = only_rule("-A OUTPUT -m mark --mark 7 -j ACCEPT");
        assert_eq!(
            rule.matches[0].condition,
            value(Field::Mark, Some(u32::MAX), &[(7, 7)])
        );
        let rule = only_rule("-A OUTPUT -m length --length 0:128 -j ACCEPT");
        assert_eq!(
            rule.matches[0].condition,
            value(Field::Length, None, &[(0, 128)])
        );
    }

    #[test]
    fn icmp_types_by_number_code_and_name() {
        let icmp = |icmp_type, first, last| Condition::Icmp {
            protocol: 1,
            icmp_type,
            codes: ValueRange { first, last },
        };
        let rule = only_rule("-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT");
        assert_eq!(rule.matches[1].condition, icmp(8, 0, 255));
        let rule = only_rule("-A INPUT -p icmp -m icmp --icmp-type 3/4 -j ACCEPT");
        assert_eq!(rule.matches[1].condition, icmp(3, 4, 4));
        let rule = only_rule("-A INPUT -p icmp --icmp-type echo-request -j ACCEPT");
        assert_eq!(rule.matches[1].condition, icmp(8, 0, 255));
        let rule = only_rule("-A INPUT -p icmp ! --icmp-type port-unreachable -j ACCEPT");
        assert_eq!(rule.matches[1], Match::negated_if(true, icmp(3, 3, 3)));
    }

    #[test]
    fn comments_keep_quotes_and_do_not_match() {
        let rule = only_rule(
            r#"[0:0] -A INPUT -p tcp -m comment --comment "web \"front\" door" -j ACCEPT"#,
        );
        assert_eq!(rule.comment.as_deref(), Some(r#"web "front" door"#));
        assert_eq!(rule.matches.len(), 1);
        assert_eq!(
            rule.text,
            r#"-A INPUT -p tcp -m comment --comment "web \"front\" door" -j ACCEPT"#
        );
    }

    #[test]
    fn ipset_and_undecidable_modules() {
        let rule = only_rule("-A OUTPUT -m set ! --match-set svc dst,dst -j ACCEPT");
        assert_eq!(
            rule.matches[0],
            Match::negated_if(
                true,
                Condition::IpSet {
                    name: "svc".into(),
                    directions: vec![Direction::Destination, Direction::Destination]
                }
            )
        );
        let rule =
            only_rule("-A INPUT -p icmp -m icmp --icmp-type 8 -m limit --limit 5/sec -j ACCEPT");
        assert_eq!(rule.matches.len(), 3);
        assert!(
            matches!(&rule.matches[2].condition, Condition::Undecidable { reason } if reason.contains("limit"))
        );
        let rule = only_rule(
            "-A INPUT -m recent --rcheck --seconds 60 --hitcount 4 --name ssh --mask 255.255.255.255 --rsource -j DROP",
        );
        assert_eq!(rule.matches.len(), 1);
        assert_eq!(rule.target, Target::Drop);
        let rule = only_rule("-A INPUT -m u32 --u32 \"0>>22&0x3C@ 12>>26&0x3F=0x10\" -j DROP");
        assert!(
            matches!(&rule.matches[0].condition, Condition::Undecidable { reason } if reason.contains("u32"))
        );
        // Both directions and the interface flag, printed after the types as iptables-save does.
        let rule = only_rule(
            "-A INPUT -m addrtype ! --src-type LOCAL --dst-type LOCAL,BROADCAST --limit-iface-in -j ACCEPT",
        );
        let types = |names: &str| AddrTypes::parse_list(names).unwrap();
        assert_eq!(
            rule.matches,
            vec![
                Match::negated_if(
                    true,
                    Condition::AddrType {
                        direction: Direction::Source,
                        types: types("LOCAL"),
                        limit_iface: Some(Direction::Source),
                        matcher: Matcher::Xt,
                    }
                ),
                Match::new(Condition::AddrType {
                    direction: Direction::Destination,
                    types: types("LOCAL,BROADCAST"),
                    limit_iface: Some(Direction::Source),
                    matcher: Matcher::Xt,
                }),
            ]
        );
        let rule =
            only_rule("-A OUTPUT -m iprange --dst-range 203.0.113.10-203.0.113.20 -j ACCEPT");
        assert_eq!(
            rule.matches[0].condition,
            Condition::Address {
                direction: Direction::Destination,
                family: None,
                ranges: vec![AddrRange::Range {
                    first: "203.0.113.10".parse().unwrap(),
                    last: "203.0.113.20".parse().unwrap()
                }]
            }
        );
    }

    #[test]
    fn targets() {
        assert_eq!(
            only_rule("-A INPUT -p tcp -j REJECT --reject-with tcp-reset").target,
            Target::Reject {
                with: Some("tcp-reset".into())
            }
        );
        assert_eq!(
            only_rule("-A INPUT -j REJECT").target,
            Target::Reject {
                with: Some("icmp-port-unreachable".into())
            }
        );
        assert_eq!(
            only_rule("-A INPUT -g USER").target,
            Target::Goto {
                chain: "USER".into()
            }
        );
        assert_eq!(
            only_rule(r#"-A INPUT -j LOG --log-prefix "droptrace: " --log-level 4"#).target,
            Target::Continue {
                action: Some("LOG".into())
            }
        );
        assert_eq!(
            only_rule("-A INPUT -p tcp").target,
            Target::Continue { action: None }
        );
        assert_eq!(
            only_rule("-A INPUT -j NFQUEUE --queue-num 3").target,
            Target::Queue
        );
        assert_eq!(
            only_rule("-A INPUT -j FROBNICATE --hard").target,
            Target::Unknown {
                action: "FROBNICATE".into()
            }
        );
    }

    #[test]
    fn nat_targets_and_ipv6_defaults() {
        let tables = parse(
            "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 172.17.0.0/16 -o uplink0 -j MASQUERADE\nCOMMIT\n\
             *filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 2001:db8::/32 -j REJECT\nCOMMIT\n",
            Backend::IptablesLegacy,
            Family::Ipv6,
        );
        // The IPv4 source in an ip6tables dump is undecidable, not an error.
        let tables = tables.unwrap();
        assert_eq!(tables[0].family, TableFamily::Ip6);
        let masquerade = &tables[0].chains[0].rules[0];
        assert!(matches!(
            masquerade.matches[0].condition,
            Condition::Undecidable { .. }
        ));
        assert_eq!(
            masquerade.target,
            Target::Nat {
                action: "MASQUERADE".into()
            }
        );
        assert_eq!(
            tables[1].chains[0].rules[0].target,
            Target::Reject {
                with: Some("icmp6-port-unreachable".into())
            }
        );
    }

    #[test]
    fn structural_errors_name_the_line() {
        let cases = [
            ("-A INPUT -j ACCEPT\n", "line 1:"),
            (
                "*filter\n:INPUT ACCEPT [0:0]\n-A OUTPUT -j ACCEPT\nCOMMIT\n",
                "line 3:",
            ),
            (
                "*filter\n:INPUT ACCEPT [0:0]\n",
                "line 1: table filter is never COMMITted",
            ),
            ("*filter\n:INPUT ACCEPT [x:0]\nCOMMIT\n", "line 2:"),
            (
                "*filter\n:INPUT ACCEPT [0:0]\n[1:2 -A INPUT\nCOMMIT\n",
                "line 3:",
            ),
            (
                "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment \"open\nCOMMIT\n",
                "line 3:",
            ),
            (
                "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p\nCOMMIT\n",
                "line 3: -p needs a value",
            ),
            (
                "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s\u{e9} 1\nCOMMIT\n",
                "line 3:",
            ),
            ("*filter\n:INPUT ACCEPT [0:0]\n*nat\n", "line 3:"),
            ("*bogus\nCOMMIT\n", "line 1: unknown table"),
            ("*filter\n:FOO ACCEPT [0:0]\nCOMMIT\n", "line 2:"),
            ("*raw\n:INPUT ACCEPT [0:0]\nCOMMIT\n", "line 2:"),
            ("*filter\n:INPUT MAYBE [0:0]\nCOMMIT\n", "line 2:"),
            (
                "*filter\n:INPUT ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\nCOMMIT\n",
                "line 3:",
            ),
            (
                "*filter\n:INPUT ACCEPT [0:0]\nINPUT -j ACCEPT\nCOMMIT\n",
                "line 3:",
            ),
            (
                "*filter\n:INPUT ACCEPT [0:0]\n-I INPUT -j ACCEPT\nCOMMIT\n",
                "line 3:",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text, Backend::IptablesNft, Family::Ipv4).unwrap_err();
            assert!(
                error.to_string().starts_with(expected),
                "{text:?}: got {error}, expected {expected}"
            );
        }
    }

    #[test]
    fn hostile_input_never_panics() {
        let nasty = [
            "*filter\n:INPUT ACCEPT [18446744073709551616:0]\nCOMMIT",
            "*filter\n:INPUT ACCEPT\n[]\nCOMMIT",
            "*filter\n:INPUT ACCEPT [0:0]\n[0:0]\nCOMMIT",
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT ! \nCOMMIT",
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m\nCOMMIT",
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --tcp-flags SYN\nCOMMIT",
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m set --match-set x\nCOMMIT",
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 99999 -m mark --mark 0x/0x\nCOMMIT",
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p icmp --icmp-type 300/1 -m length --length 9:1\nCOMMIT",
            "*filter\n:\u{1F525} ACCEPT [0:0]\nCOMMIT",
            "\u{0}\u{1}*",
        ];
        for text in nasty {
            let _ = parse(text, Backend::IptablesNft, Family::Ipv4);
        }
    }
}
