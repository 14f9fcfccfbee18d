//! Which front-end manages a rule: ufw, firewalld, Docker, kube-proxy, Calico, Cilium or
//! fail2ban.
//!
//! A generated rule hand-edited during an incident comes back at the front-end's next
//! reload; the SRE has to change the front-end's configuration instead. The front-ends are
//! told apart by the names they give their tables and chains and by what they put in rules
//! (kube-proxy's Service comments, fail2ban's `f2b-` sets). A rule none of them claims has
//! no owner: it was written by hand or by a tool droptrace does not know.

use crate::record::rule::Owner;

/// The owner of a rule (or a chain's policy: `rule` empty) in `table`/`chain`.
pub fn owner_of(table: &str, chain: &str, rule: &str) -> Option<Owner> {
    let tool = |tool| Some(Owner { tool, object: None });
    let upper = chain.to_ascii_uppercase();
    if chain.starts_with("ufw-") || chain.starts_with("ufw6-") {
        return tool("ufw");
    }
    if let Some(set) = match_set(rule).filter(|s| s.starts_with("f2b-")) {
        let jail = set.trim_start_matches("f2b-").trim_end_matches('6');
        return Some(Owner {
            tool: "fail2ban",
            object: Some(jail.to_string()),
        });
    }
    if let Some(jail) = chain.strip_prefix("f2b-") {
        return Some(Owner {
            tool: "fail2ban",
            object: Some(jail.to_string()),
        });
    }
    if table == "f2b-table" {
        return tool("fail2ban");
    }
    if table == "firewalld" || is_firewalld_iptables_chain(chain) {
        return tool("firewalld");
    }
    if upper.starts_with("KUBE-") || table == "kube-proxy" {
        return Some(Owner {
            tool: "kube-proxy",
            object: comment(rule).and_then(|c| service_of(&c)),
        });
    }
    // DOCKER-USER is where Docker leaves room for the administrator's own rules.
    if upper.starts_with("DOCKER") && upper != "DOCKER-USER" {
        return tool("docker");
    }
    if chain.starts_with("cali-") {
        return tool("calico");
    }
    if upper.starts_with("CILIUM") {
        return tool("cilium");
    }
    None
}

/// A built-in chain's policy has no name of its own: it belongs to the front-end whose
/// chains fill the same table (ufw sets INPUT/FORWARD/OUTPUT policies from its
/// `DEFAULT_*_POLICY`; firewalld from its zones' targets). Docker also sets FORWARD's
/// policy but is one writer among many there, so it is not named.
pub fn policy_owner(a: &mut super::Attribution, rs: &ruleset::Ruleset) {
    if a.verdict.as_deref() != Some("policy") || a.owner.is_some() {
        return;
    }
    let Some(table) = rs.tables.iter().find(|t| {
        Some(t.name.as_str()) == a.table.as_deref()
            && Some(t.family.to_string()) == a.table_family
            && Some(t.backend.as_str()) == a.backend.as_deref()
    }) else {
        return;
    };
    let managed_by = |tool: &str| {
        table.chains.iter().any(|c| {
            c.base.is_none() && owner_of(&table.name, &c.name, "").is_some_and(|o| o.tool == tool)
        })
    };
    for tool in ["ufw", "firewalld"] {
        if managed_by(tool) {
            a.owner = Some(Owner {
                tool,
                object: Some("default policy".to_string()),
            });
            return;
        }
    }
}

/// firewalld's chains when it drives iptables (FirewallBackend=iptables): `INPUT_direct`,
/// `INPUT_ZONES`, and per zone `IN_public`, `IN_public_allow`, `FWDI_trusted`, ... (zone
/// names are lowercase, which keeps a hand-made `IN_SSH` out).
fn is_firewalld_iptables_chain(chain: &str) -> bool {
    if chain.ends_with("_direct") || chain.ends_with("_ZONES") {
        return true;
    }
    ["IN_", "FWDI_", "FWDO_", "PRE_", "POST_"].iter().any(|p| {
        chain
            .strip_prefix(p)
            .and_then(|zone| zone.chars().next())
            .is_some_and(|c| c.is_ascii_lowercase())
    })
}

/// The comment of a rule in iptables (`-m comment --comment "..."`) or nft
/// (`comment "..."`) syntax.
fn comment(rule: &str) -> Option<String> {
    let rest = rule
        .split_once("--comment ")
        .or_else(|| rule.split_once("comment "))?
        .1;
    if let Some(quoted) = rest.strip_prefix('"') {
        quoted.split_once('"').map(|(c, _)| c.to_string())
    } else {
        rest.split_whitespace().next().map(String::from)
    }
}

/// The set an iptables `-m set --match-set NAME` or nft `@NAME` rule looks up.
fn match_set(rule: &str) -> Option<&str> {
    if let Some((_, rest)) = rule.split_once("--match-set ") {
        return rest.split_whitespace().next();
    }
    rule.split_once('@')
        .and_then(|(_, rest)| rest.split(|c: char| c.is_whitespace() || c == '}').next())
}

/// `ns2/svc2:p80` from kube-proxy's comments (`ns2/svc2:p80 has no local endpoints`,
/// `ns1/svc1:p80 cluster IP`); comments about kube-proxy itself name no Service.
fn service_of(comment: &str) -> Option<String> {
    let first = comment.split_whitespace().next()?;
    let (namespace, name) = first.split_once('/')?;
    (!namespace.is_empty() && !name.is_empty()).then(|| first.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(table: &str, chain: &str, rule: &str) -> Option<&'static str> {
        owner_of(table, chain, rule).map(|o| o.tool)
    }

    /// Chain and rule texts as the front-ends write them (see tests/corpus/).
    #[test]
    fn front_ends_are_told_apart_by_their_names() {
        assert_eq!(tool("filter", "ufw-user-input", ""), Some("ufw"));
        assert_eq!(tool("filter", "ufw6-before-input", ""), Some("ufw"));
        assert_eq!(
            tool("filter", "DOCKER-ISOLATION-STAGE-1", "-A ... -j DROP"),
            Some("docker")
        );
        assert_eq!(
            tool("filter", "DOCKER-USER", "-A DOCKER-USER -j DROP"),
            None
        );
        assert_eq!(
            tool("firewalld", "filter_IN_public_deny", ""),
            Some("firewalld")
        );
        assert_eq!(tool("filter", "IN_public_allow", ""), Some("firewalld"));
        assert_eq!(tool("filter", "INPUT_direct", ""), Some("firewalld"));
        assert_eq!(tool("filter", "IN_SSH", ""), None);
        assert_eq!(tool("filter", "cali-fw-eth0", ""), Some("calico"));
        assert_eq!(tool("filter", "CILIUM_INPUT", ""), Some("cilium"));
        assert_eq!(tool("filter", "OUTPUT", "-A OUTPUT -p tcp -j DROP"), None);
        assert_eq!(tool("filter", "INPUT", ""), None);
    }

    #[test]
    fn kube_proxy_rules_name_their_service() {
        let o = owner_of(
            "filter",
            "KUBE-EXTERNAL-SERVICES",
            "-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment \"ns2/svc2:p80 has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp --dport 3001 -j DROP",
        )
        .unwrap();
        assert_eq!(o.text(), "kube-proxy, Service ns2/svc2:p80");
        let o = owner_of(
            "filter",
            "KUBE-FIREWALL",
            "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -j DROP",
        )
        .unwrap();
        assert_eq!(o.text(), "kube-proxy");
    }

    #[test]
    fn fail2ban_is_known_by_its_sets_in_builtin_chains() {
        let o = owner_of(
            "filter",
            "INPUT",
            "-A INPUT -p tcp -m multiport --dports 22 -m set --match-set f2b-sshd6 src -j REJECT",
        )
        .unwrap();
        assert_eq!(o.text(), "fail2ban, jail sshd");
        assert_eq!(tool("f2b-table", "f2b-chain", ""), Some("fail2ban"));
        let nft = owner_of("filter", "input", "ip saddr @f2b-sshd reject").unwrap();
        assert_eq!(nft.object.as_deref(), Some("sshd"));
    }
}
