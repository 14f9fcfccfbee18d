//! An `iptables-save -c` dump's counters alone, with a digest of the rest: a legacy
//! ruleset that did not change takes new counters without a parse.

use super::*;

/// An `iptables-save -c` dump's counters, in order, and a digest of everything else (but
/// comment lines, which carry the time): two dumps with the same digest hold the same
/// tables, chains, policies and rules, so the tables parsed from one take the other's
/// counters ([`SaveCounters::apply`]) instead of a parse — 2 ms for 2,000 rules, at every
/// read of a legacy ruleset, which has no generation id to say it did not change.
#[derive(Debug)]
pub struct SaveCounters {
    pub digest: u64,
    /// One per chain line (its policy's counters) and per rule line, in order.
    pub(super) counted: Vec<Counted>,
}

#[derive(Debug)]
pub(super) struct Counted {
    pub(super) table: String,
    pub(super) chain: String,
    /// A chain line's policy counters, not a rule's.
    pub(super) policy: bool,
    pub(super) counters: Option<Counters>,
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
