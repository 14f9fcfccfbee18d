//! Lowering a rule's options into [`Match`]es: the modules evaluated, the targets, and the
//! reason a module's options cannot be decided.

use super::*;

/// Modules whose options we turn into real conditions.
pub(super) const EVALUATED_MODULES: &[&str] = &[
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
    "connmark",
    "icmp",
    "icmp6",
    "comment",
    "set",
    "length",
    "iprange",
    "addrtype",
    "rpfilter",
];

/// Whether `module` (one of [`EVALUATED_MODULES`]) takes `option`.
pub(super) fn module_takes(module: &str, option: &str) -> bool {
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
        "mark" | "connmark" => option == "--mark",
        "rpfilter" => ["--loose", "--validmark", "--accept-local", "--invert"].contains(&option),
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
pub(super) fn undecidable_module_reason(module: &str) -> String {
    match module {
        "limit" | "hashlimit" => {
            format!("-m {module}: whether the rate limit was exceeded depends on recent traffic")
        }
        "statistic" => "-m statistic: random or nth sampling".to_string(),
        "connlimit" => "-m connlimit: depends on live connection counts".to_string(),
        "connbytes" => "-m connbytes: depends on connection byte counts".to_string(),
        "mac" => "-m mac: the MAC address is not reported".to_string(),
        "physdev" => "-m physdev: bridge ports are not reported".to_string(),
        "quota" => "-m quota: depends on bytes already counted".to_string(),
        "time" => "-m time: depends on when the packet passed".to_string(),
        other => format!("-m {other} is not evaluated"),
    }
}

/// The options of `-m recent` (libxt_recent).
const RECENT_OPTIONS: &[&str] = &[
    "--set",
    "--rcheck",
    "--update",
    "--remove",
    "--seconds",
    "--reap",
    "--hitcount",
    "--rttl",
    "--name",
    "--mask",
    "--rsource",
    "--rdest",
];

/// Targets that end evaluation of the chain like ACCEPT (NAT).
pub(crate) const NAT_TARGETS: &[&str] = &["MASQUERADE", "SNAT", "DNAT", "REDIRECT", "NETMAP"];

/// `--state`/`--ctstate` names as a condition. xt_conntrack's `--ctstate` also takes the
/// `SNAT`/`DNAT` pseudo-states, which test the connection's status (a packet without a
/// connection has none): a list that mixes both matches when either test does
/// (`conntrack_mt_state`, net/netfilter/xt_conntrack.c). firewalld's iptables backend
/// writes `--ctstate RELATED,ESTABLISHED,DNAT`.
fn ct_state_condition(option: &str, value: &str) -> Option<Condition> {
    let (mut states, mut statuses) = (0, 0);
    for name in value.split(',') {
        match names::ct_state_bit(name) {
            Some(bit) => states |= bit,
            None if option == "--ctstate" && matches!(name, "SNAT" | "DNAT") => {
                statuses |= names::ct_status_bit(name)?;
            }
            None => return None,
        }
    }
    let test = |field, bits| Match {
        negated: false,
        condition: Condition::Value {
            field,
            mask: None,
            test: ValueTest::AnyBitSet(bits),
        },
    };
    let state = test(Field::CtState, states);
    let status = test(
        Field::CtStatus {
            needs_conntrack: false,
        },
        statuses,
    );
    Some(match (states, statuses) {
        (_, 0) => state.condition,
        (0, _) => status.condition,
        _ => Condition::Concat {
            elements: vec![vec![state], vec![status]],
        },
    })
}

/// What `-j MARK` / `-j CONNMARK` with `options` write: xt_MARK's and xt_CONNMARK's
/// options as iptables-save prints them (`--set-xmark V/M`; `--save-mark` and
/// `--restore-mark` with `--nfmask` and `--ctmask`), and the others as iptables accepts
/// them. A shifted copy (`--left-shift-mark`, `--right-shift-mark`) is not followed.
fn mark_set(target: &str, options: &[(String, Vec<String>)]) -> Option<MarkWrite> {
    let number = |text: &str| names::number(text);
    let arg = |wanted: &str| {
        options
            .iter()
            .find(|(option, _)| option == wanted)
            .map(|(_, values)| values.first().map(String::as_str).unwrap_or_default())
    };
    let pair = |text: &str| match text.split_once('/') {
        Some((v, m)) => Some((number(v)?, number(m)?)),
        None => Some((number(text)?, u32::MAX)),
    };
    // `--set-mark`, `--or-mark` and the like as `--set-xmark` value and mask.
    let xmark = |(option, values): &(String, Vec<String>)| {
        let arg = values.first().map(String::as_str).unwrap_or_default();
        match option.as_str() {
            "--set-xmark" => pair(arg),
            // Zero the mask's bits, then OR the value in.
            "--set-mark" => pair(arg).map(|(v, m)| (v, m | v)),
            "--or-mark" => number(arg).map(|v| (v, v)),
            "--and-mark" => number(arg).map(|v| (0, !v)),
            "--xor-mark" => number(arg).map(|v| (v, 0)),
            _ => None,
        }
    };
    let xmark_set = |option| match xmark(option) {
        Some((value, mask)) => MarkSet::xmark(value, mask),
        None => MarkSet::Unknown,
    };
    let (of, to) = match target {
        "MARK" => (MarkOf::Packet, xmark_set(options.first()?)),
        "CONNMARK" => {
            let shifted = arg("--left-shift-mark").is_some() || arg("--right-shift-mark").is_some();
            // `--mask` stands for both masks.
            let mask = |name| arg(name).or(arg("--mask")).map_or(Some(u32::MAX), number);
            let copy = |keep: Option<u32>, take: Option<u32>| match (keep, take) {
                (Some(keep), Some(take)) if !shifted => MarkSet::Bits {
                    keep: !keep,
                    take,
                    xor: 0,
                },
                _ => MarkSet::Unknown,
            };
            if arg("--restore-mark").is_some() {
                // mark = (mark & ~nfmask) ^ (ctmark & ctmask)
                (MarkOf::Packet, copy(mask("--nfmask"), mask("--ctmask")))
            } else if arg("--save-mark").is_some() {
                // ctmark = (ctmark & ~ctmask) ^ (mark & nfmask)
                (MarkOf::Connection, copy(mask("--ctmask"), mask("--nfmask")))
            } else if shifted {
                (MarkOf::Connection, MarkSet::Unknown)
            } else {
                (MarkOf::Connection, xmark_set(options.first()?))
            }
        }
        _ => return None,
    };
    Some(MarkWrite { of, to })
}

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

pub(super) struct RuleBuilder<'a> {
    pub(super) words: &'a [String],
    pub(super) next: usize,
    pub(super) line: usize,
    pub(super) family: Family,
    pub(super) chain_names: &'a [&'a str],
    /// The rule's `-p` protocol, for options that load a module implicitly
    /// (`-p tcp --dport 22`) and for multiport.
    pub(super) protocol: Option<u8>,
    pub(super) modules: Vec<String>,
    pub(super) matches: Vec<Match>,
    pub(super) comment: Option<String>,
    pub(super) target: Option<Target>,
    pub(super) sets_marks: Vec<MarkWrite>,
    pub(super) counters: Option<Counters>,
}

impl<'a> RuleBuilder<'a> {
    pub(super) fn take(&mut self) -> Option<&'a str> {
        let word = self.words.get(self.next)?;
        self.next += 1;
        Some(word.as_str())
    }

    pub(super) fn value(&mut self, option: &str) -> Result<String> {
        match self.take() {
            Some(value) => Ok(value.to_string()),
            None => Err(ParseError::line(
                self.line,
                format!("{option} needs a value"),
            )),
        }
    }

    pub(super) fn peek(&self) -> Option<&'a str> {
        self.words.get(self.next).map(String::as_str)
    }

    /// The words consumed since index `start`, for messages.
    pub(super) fn words_since(&self, start: usize) -> &'a [String] {
        self.words.get(start..self.next).unwrap_or_default()
    }

    /// Skips the arguments of an option we do not interpret.
    pub(super) fn skip_arguments(&mut self) {
        while let Some(word) = self.peek() {
            if word.starts_with('-') || word == "!" {
                break;
            }
            self.next += 1;
        }
    }

    pub(super) fn push(&mut self, negated: bool, condition: Condition) {
        self.matches.push(Match::negated_if(negated, condition));
    }

    pub(super) fn undecidable(&mut self, reason: String) {
        self.matches.push(Match::undecidable(reason));
    }

    pub(super) fn run(&mut self) -> Result<()> {
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
                    if module == "recent" {
                        self.recent_options()?;
                        continue;
                    }
                    if !EVALUATED_MODULES.contains(&module.as_str()) {
                        self.undecidable(undecidable_module_reason(&module));
                    }
                    if module == "rpfilter" {
                        // The test itself has no option; its options refine it (below).
                        self.push(false, Condition::ReversePath);
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

    /// `-m recent`'s options, as libxt_recent saves them (`[!] --set|--rcheck|--update|
    /// --remove [--seconds N] [--reap] [--hitcount N] [--rttl] --name NAME --mask M
    /// --rsource|--rdest`), as one test.
    fn recent_options(&mut self) -> Result<()> {
        let mut test = RecentTest {
            name: "DEFAULT".to_string(),
            side: Direction::Source,
            mode: RecentMode::Check,
            seconds: 0,
            hit_count: 0,
            ttl: false,
            mask: None,
        };
        let (mut mode, mut negated, mut bad) = (None, false, None);
        loop {
            let (word, after) = match self.peek() {
                Some("!") => (self.words.get(self.next + 1).map(String::as_str), 2),
                word => (word, 1),
            };
            let Some(option) = word.filter(|w| RECENT_OPTIONS.contains(w)) else {
                break;
            };
            negated |= after == 2;
            self.next += after;
            let number = |builder: &mut Self| -> Result<Option<u32>> {
                let value = builder.value(option)?;
                Ok(value.parse().ok())
            };
            match option {
                "--set" => mode = Some(RecentMode::Set),
                "--rcheck" => mode = Some(RecentMode::Check),
                "--update" => mode = Some(RecentMode::Update),
                "--remove" => mode = Some(RecentMode::Remove),
                "--seconds" => match number(self)? {
                    Some(n) => test.seconds = n,
                    None => bad = Some("--seconds is not a number"),
                },
                "--hitcount" => match number(self)? {
                    Some(n) => test.hit_count = n,
                    None => bad = Some("--hitcount is not a number"),
                },
                "--name" => test.name = self.value(option)?,
                "--mask" => match self.value(option)?.parse() {
                    Ok(mask) => test.mask = Some(mask),
                    Err(_) => bad = Some("--mask is not an address"),
                },
                "--rttl" => test.ttl = true,
                "--rsource" => test.side = Direction::Source,
                "--rdest" => test.side = Direction::Destination,
                // Which stamps are dropped after the test: the test's answer is the same.
                _ => {}
            }
        }
        match (mode, bad) {
            (Some(mode), None) => {
                test.mode = mode;
                self.push(negated, Condition::Recent(test));
            }
            (_, Some(why)) => self.undecidable(format!("-m recent: {why}")),
            (None, None) => {
                self.undecidable("-m recent without --set, --rcheck, --update or --remove".into())
            }
        }
        Ok(())
    }

    pub(super) fn protocol_option(&mut self, negated: bool, value: &str) {
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

    pub(super) fn address_option(&mut self, negated: bool, direction: Direction, value: &str) {
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

    pub(super) fn jump(&mut self, name: &str) -> Result<()> {
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
        self.sets_marks = mark_set(name, &options).into_iter().collect();
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
    pub(super) fn owner_of(&self, option: &str) -> Option<String> {
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

    pub(super) fn module_option(&mut self, negated: bool, option: &str) -> Result<()> {
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
                match ct_state_condition(option, &value) {
                    Some(condition) => self.push(negated, condition),
                    None => self.undecidable(format!("{option} {value}: unknown state")),
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
            ("mark" | "connmark", "--mark") => {
                let value = self.value(option)?;
                match parse_value_mask(&value) {
                    Some((value, mask)) => self.push(
                        negated,
                        Condition::Value {
                            field: if module == "mark" {
                                Field::Mark
                            } else {
                                Field::CtMark
                            },
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
            // xt_rpfilter (net/ipv4/netfilter/ipt_rpfilter.c): `--invert` flips the test,
            // `--validmark` looks the route up with the packet's mark, as explain does;
            // `--loose` (any route back) and `--accept-local` are not the strict test.
            ("rpfilter", "--invert" | "--validmark" | "--loose" | "--accept-local") => {
                let Some(at) = self
                    .matches
                    .iter()
                    .rposition(|m| m.condition == Condition::ReversePath)
                else {
                    return Ok(());
                };
                match option {
                    "--invert" => self.matches[at].negated = !self.matches[at].negated,
                    "--validmark" => {}
                    _ => {
                        self.matches[at] = Match::undecidable(format!(
                            "-m rpfilter {option}: only the strict reverse-path test is evaluated"
                        ))
                    }
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
