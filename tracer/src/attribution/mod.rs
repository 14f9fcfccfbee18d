//! Naming the rule that dropped a packet: backend, table, chain, rule, and how sure we are.
//!
//! The kernel tells us the hook and the engine (from the drop's stack); the rule is found
//! by evaluating the dropped packet against the ruleset of its own namespace, read with the
//! standard tools ([`reader`]), and confirmed by the rule's packet counter growing.

pub mod reader;

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

/// Which rule dropped a packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attribution {
    /// `iptables-nft`, `iptables-legacy` or `nftables`.
    pub backend: Option<String>,
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
}

impl Attribution {
    pub fn none(why: impl Into<String>) -> Self {
        Attribution {
            backend: None,
            table: None,
            chain: None,
            rule: None,
            rule_num: None,
            rule_handle: None,
            verdict: None,
            attribution: Level::None,
            why: why.into(),
        }
    }

    /// `filter/OUTPUT rule 4 `-A OUTPUT ...``, `filter/OUTPUT policy`, or the chain alone.
    pub fn label(&self) -> Option<String> {
        let (table, chain) = (self.table.as_ref()?, self.chain.as_ref()?);
        let place = format!("{table}/{chain}");
        Some(
            match (
                &self.rule,
                self.rule_num,
                self.rule_handle,
                self.verdict.as_deref(),
            ) {
                (_, _, _, Some("policy")) => format!("{place} policy DROP"),
                (Some(rule), Some(n), _, _) => format!("{place} rule {n} `{rule}`"),
                (Some(rule), None, Some(h), _) => format!("{place} handle {h} `{rule}`"),
                (Some(rule), _, _, _) => format!("{place} `{rule}`"),
                (None, ..) => place,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_like_the_brief() {
        let a = Attribution {
            backend: Some("iptables-nft".into()),
            table: Some("filter".into()),
            chain: Some("OUTPUT".into()),
            rule: Some("-A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP".into()),
            rule_num: Some(4),
            rule_handle: None,
            verdict: Some("DROP".into()),
            attribution: Level::Exact,
            why: "counter grew".into(),
        };
        assert_eq!(
            a.label().unwrap(),
            "filter/OUTPUT rule 4 `-A OUTPUT -p tcp -m tcp --dport 1024:65535 -j DROP`"
        );
        let p = Attribution {
            rule: None,
            rule_num: None,
            verdict: Some("policy".into()),
            ..a
        };
        assert_eq!(p.label().unwrap(), "filter/OUTPUT policy DROP");
        assert_eq!(Attribution::none("no ruleset").label(), None);
    }
}
