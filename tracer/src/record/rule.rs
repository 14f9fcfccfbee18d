//! The rule fields of a drop record: which rule dropped it, how sure droptrace is, and
//! who manages that rule. Filled in by [`crate::attribution`]; defined here, with the
//! record, so that the record and its renderers do not depend on how rules are found.

use serde::Serialize;

/// How sure an attribution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// The evaluation named the rule and its packet counter grew by the drops.
    Exact,
    /// The evaluation named the rule; counters could not confirm it.
    Inferred,
    /// Only the chain (and its policy or an undecidable rule) is known.
    Chain,
    /// Nothing could be attributed.
    None,
}

impl Level {
    /// The name used in JSON and text: `exact`, `inferred`, `chain`, `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Exact => "exact",
            Level::Inferred => "inferred",
            Level::Chain => "chain",
            Level::None => "none",
        }
    }
}

/// Which rule dropped a packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attribution {
    /// `iptables-nft`, `iptables-legacy` or `nftables`.
    pub backend: Option<String>,
    /// The table's family: `ip`, `ip6`, `inet`, `bridge`, `arp` or `netdev` (`family`
    /// is the packet's).
    pub table_family: Option<String>,
    pub table: Option<String>,
    pub chain: Option<String>,
    /// The rule in its backend's syntax.
    pub rule: Option<String>,
    /// Position in the chain, as `iptables -L --line-numbers` counts (iptables).
    pub rule_num: Option<u32>,
    /// nftables rule handle.
    pub rule_handle: Option<u64>,
    /// `DROP`, `REJECT`, or `policy`.
    pub verdict: Option<String>,
    pub attribution: Level,
    /// Why this level: what confirmed it, or what was missing.
    pub why: String,
    /// Other rules (or policies) that may have dropped it instead: rules droptrace could
    /// not decide lead there, and the counters did not rule them out.
    pub alternatives: Vec<String>,
    /// The front-end that manages the rule (ufw, kube-proxy, ...), whose configuration is
    /// the place to change it; null for rules no known front-end claims.
    pub owner: Option<Owner>,
    /// What dropped it when no rule did (conntrack's table full, ...), or why the rule's
    /// verdict became a drop (its queue had no program): null otherwise, and when the
    /// kernel's counters do not tell.
    pub cause: Option<Cause>,
    /// The engine's own verdict (kprobe) agreed with the evaluation.
    #[serde(skip)]
    pub kernel_confirmed: bool,
    /// The namespace has rules of more than one backend (iptables-legacy beside
    /// iptables-nft, after an upgrade): text names the rule's backend, or `iptables -L`
    /// would send the engineer to the other one's rules.
    #[serde(skip)]
    pub backends_mixed: bool,
}

impl Attribution {
    pub fn none(why: impl Into<String>) -> Self {
        Attribution {
            backend: None,
            table_family: None,
            table: None,
            chain: None,
            rule: None,
            rule_num: None,
            rule_handle: None,
            verdict: None,
            attribution: Level::None,
            why: why.into(),
            alternatives: Vec::new(),
            owner: None,
            kernel_confirmed: false,
            backends_mixed: false,
            cause: None,
        }
    }

    /// `filter/OUTPUT rule 4 `-A OUTPUT ...``, `inet filter/input handle 7 `...``,
    /// `filter/OUTPUT policy DROP` (`policy ACCEPT` for what let an attempt through), or the
    /// chain alone.
    pub fn label(&self) -> Option<String> {
        let (table, chain) = (self.table.as_ref()?, self.chain.as_ref()?);
        // The fields hold names; the rule for naming a table is ruleset's.
        let backend = match self.backend.as_deref() {
            Some("nftables") => ruleset::Backend::Nftables,
            _ => ruleset::Backend::IptablesNft,
        };
        let table = match self
            .table_family
            .as_deref()
            .and_then(ruleset::TableFamily::from_nft)
        {
            Some(family) => ruleset::table_label(backend, family, table),
            None => table.clone(),
        };
        let place = match (self.backends_mixed, self.backend.as_deref()) {
            (true, Some(b)) => format!("{b} {table}/{chain}"),
            _ => format!("{table}/{chain}"),
        };
        Some(
            match (
                &self.rule,
                self.rule_num,
                self.rule_handle,
                self.verdict.as_deref(),
            ) {
                (_, _, _, Some("policy")) => format!("{place} policy DROP"),
                (_, _, _, Some(POLICY_ACCEPT)) => format!("{place} policy ACCEPT"),
                (Some(rule), Some(n), _, _) => format!("{place} rule {n} `{rule}`"),
                (Some(rule), None, Some(h), _) => format!("{place} handle {h} `{rule}`"),
                (Some(rule), _, _, _) => format!("{place} `{rule}`"),
                (None, ..) => place,
            },
        )
    }
}

/// Characters of `why` text output shows on a drop's line (the JSON has all of it).
pub const SHORT_WHY: usize = 100;

impl Attribution {
    /// `why` in one short line for text output: its first clause (the decisive one: the
    /// evaluation's answer comes before what qualifies it), cut at [`SHORT_WHY`]
    /// characters on a word, with `…` where something was left out.
    pub fn short_why(&self) -> String {
        let first = self.why.split("; ").next().unwrap_or_default();
        if first.chars().count() <= SHORT_WHY && first.len() == self.why.len() {
            return first.to_string();
        }
        let mut cut: String = first.chars().take(SHORT_WHY).collect();
        if cut.len() < first.len()
            && let Some(space) = cut.rfind(' ')
        {
            cut.truncate(space);
        }
        format!("{} …", cut.trim_end_matches([',', ':', ' ']))
    }

    /// What summaries group its drops under: the rule, or for a drop no rule made whose
    /// cause is known, `(no rule: conntrack table full)`.
    pub fn summary_label(&self) -> Option<String> {
        self.label().or_else(|| {
            self.cause
                .as_ref()
                .map(|c| format!("(no rule: {})", c.kind()))
        })
    }

    /// The command that lists the rule where its backend keeps it, numbered as
    /// `rule_num` counts (`iptables-legacy -t filter -L OUTPUT --line-numbers -v`), or
    /// with handles (`nft -a list chain inet filter input`).
    pub fn list_command(&self) -> Option<String> {
        let (table, chain) = (self.table.as_ref()?, self.chain.as_ref()?);
        let v6 = self.table_family.as_deref() == Some("ip6");
        let iptables = |suffix: &str| {
            let tool = if v6 { "ip6tables" } else { "iptables" };
            format!("{tool}-{suffix} -t {table} -L {chain} --line-numbers -v")
        };
        Some(match self.backend.as_deref()? {
            "iptables-legacy" => iptables("legacy"),
            "iptables-nft" => iptables("nft"),
            _ => format!(
                "nft -a list chain {} {table} {chain}",
                self.table_family.as_deref()?
            ),
        })
    }
}

/// Why a packet no rule dropped was dropped, as the kernel's own counters tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cause {
    /// Stable: `conntrack_table_full`, `nat_no_free_port`, `conntrack_clash`,
    /// `conntrack_invalid` or `conntrack_dropped` (no rule dropped it); `nfqueue_no_listener`
    /// or `nfqueue_full` (a rule queued it, and the queue dropped it).
    pub name: &'static str,
    /// The cause in a few words, with its figures: `conntrack table full (50 of
    /// nf_conntrack_max 50)`.
    pub title: String,
    /// The counters account for every drop no rule made in the namespace since the
    /// ruleset was last read; false when they account for only some of them.
    pub certain: bool,
}

impl Cause {
    /// The kind of cause in words, the same for every drop of that kind: what summaries
    /// group by.
    pub fn kind(&self) -> &'static str {
        match self.name {
            "conntrack_table_full" => "conntrack table full",
            "nat_no_free_port" => "NAT found no free port",
            "conntrack_clash" => "conntrack clash at insertion",
            "conntrack_invalid" => "conntrack judged it invalid",
            _ => "conntrack dropped it",
        }
    }

    /// `conntrack table full (50 of nf_conntrack_max 50)`, or with `unsure:` before it.
    pub fn text(&self) -> String {
        if self.certain {
            self.title.clone()
        } else {
            format!("unsure: {}", self.title)
        }
    }
}

/// `verdict` of a chain's policy that accepted a packet (an attempt that got through);
/// a dropping policy's is `policy`.
pub const POLICY_ACCEPT: &str = "policy accept";

/// The front-end behind a rule, and the object it stands for when the rule says so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    /// `ufw`, `firewalld`, `docker`, `netavark`, `libvirt`, `incus`, `lxd`, `fw4`,
    /// `kube-proxy`, `kubelet`, `kube-router`, `flannel`, `calico`, `cilium` or `fail2ban`.
    pub tool: &'static str,
    /// kube-proxy's Service (`namespace/name:port`), fail2ban's jail, Docker's bridge
    /// (`bridge br-…`), firewalld's and firewall4's zone (`zone public`).
    pub object: Option<String>,
    /// A read-only command that shows the object (or the front-end's rules) in the
    /// front-end's own terms: `ufw status numbered`, `firewall-cmd --zone=public
    /// --list-all`, `fail2ban-client status sshd`. Never one that changes anything.
    pub show: Option<String>,
    /// Why the front-end wrote the rule, where it says: kube-proxy's `has no endpoints`,
    /// `has no local endpoints`; Calico's `no policy of tier default allowed it`.
    pub reason: Option<String>,
}

impl Owner {
    /// `kube-proxy, Service ns2/svc2:p80`, for text output.
    pub fn text(&self) -> String {
        match (&self.object, self.tool) {
            (Some(o), "kube-proxy") => match &self.reason {
                Some(r) => format!("kube-proxy, Service {o} {r}"),
                None => format!("kube-proxy, Service {o}"),
            },
            (Some(o), "fail2ban") => format!("fail2ban, jail {o}"),
            (Some(o), "ufw") => format!("ufw, {o}"),
            (Some(o), tool) => match &self.reason {
                Some(r) => format!("{tool}, {o}: {r}"),
                None => format!("{tool}, {o}"),
            },
            (None, tool) => tool.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_short_why_is_the_first_clause_on_one_line() {
        assert_eq!(Attribution::none("no ruleset").short_why(), "no ruleset");
        let long = format!(
            "no rule dropped it: the ruleset accepts this packet; earlier rules not decidable: {}",
            "filter/ufw-not-local rule 1 (destination address type local); ".repeat(25)
        );
        assert_eq!(
            Attribution::none(long).short_why(),
            "no rule dropped it: the ruleset accepts this packet …"
        );
        let one = format!(
            "the ruleset as read accepts this packet whatever {}",
            "x ".repeat(80)
        );
        let short = Attribution::none(one).short_why();
        assert!(short.chars().count() <= SHORT_WHY + 2, "{short}");
        assert!(short.ends_with("x …"), "{short}");
    }
}
