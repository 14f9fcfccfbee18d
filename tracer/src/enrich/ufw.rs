//! ufw's own numbering of its rules, so that a drop in `ufw-user-input` reads "ufw, rule 2:
//! 8081/tcp REJECT IN Anywhere", as `ufw status numbered` shows it: the number an engineer
//! passes to `ufw delete`.
//!
//! ufw keeps its rules in /etc/ufw/user.rules and user6.rules: each rule is a `### tuple ###`
//! comment followed by the iptables lines it expands to (backend_iptables.py
//! `_write_rules`), loaded with iptables-restore as written (ufw-init-functions `ufw_start`,
//! `_reload_user_rules`), so the kernel's `ufw-user-input` holds those lines in file order.
//! `ufw status numbered` numbers the IPv4 file's rules, then the IPv6 file's (`get_status`:
//! `rules = self.rules + self.rules6`); input, output and route rules share the numbers.
//!
//! A number is given only when the kernel's chain holds exactly the file's lines for it:
//! as many rules, each with the file line's words in order. A chain edited by hand, or a
//! file edited and not reloaded, gets no number rather than a wrong one. The files are
//! droptrace's own mount namespace's: a ufw inside a container is checked the same way.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

/// Where ufw keeps its rules.
pub const UFW_DIR: &str = "/etc/ufw";

/// The rules of /etc/ufw/user.rules and user6.rules, numbered as ufw numbers them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UfwRules {
    /// IPv4 rules, then IPv6 ones: index + 1 is ufw's number.
    rules: Vec<UfwRule>,
}

#[derive(Debug, PartialEq, Eq)]
struct UfwRule {
    v6: bool,
    /// The rule as `ufw status numbered` shows it, without its number.
    status: String,
    /// `ufw limit`: its packets over the rate are rejected in `ufw-user-limit`.
    limit: bool,
    /// The iptables lines it expands to: chain, and the words after it.
    lines: Vec<(String, Vec<String>)>,
}

impl UfwRules {
    /// Reads the rules files under `dir` (/etc/ufw); `None` where there are none.
    pub fn read(dir: &Path) -> Option<UfwRules> {
        let v4 = std::fs::read_to_string(dir.join("user.rules")).ok()?;
        let v6 = std::fs::read_to_string(dir.join("user6.rules")).unwrap_or_default();
        Some(UfwRules::parse(&v4, &v6))
    }

    pub fn parse(v4: &str, v6: &str) -> UfwRules {
        let mut rules: Vec<UfwRule> = Vec::new();
        for (text, v6) in [(v4, false), (v6, true)] {
            // Lines belong to the tuple above them until the rules section ends (logging
            // and rate-limiting lines follow, no rule's own).
            let mut in_rule = false;
            for line in text.lines() {
                if let Some(tuple) = line.strip_prefix("### tuple ###") {
                    let rule = UfwRule::of_tuple(tuple, v6);
                    in_rule = rule.is_some();
                    rules.extend(rule);
                } else if line.starts_with("### END RULES") {
                    in_rule = false;
                } else if let Some(rest) = line.strip_prefix("-A ")
                    && in_rule
                    && let Some(rule) = rules.last_mut()
                    && let [chain, words @ ..] = words(rest).as_slice()
                {
                    rule.lines.push((chain.clone(), words.to_vec()));
                }
            }
        }
        UfwRules { rules }
    }

    /// ufw's number and status line for rule `position` (from 1) of the kernel's `chain`,
    /// whose rules (iptables-save lines, `-A chain ...`) are `kernel`, in order.
    pub fn numbered(&self, chain: &str, kernel: &[&str], position: u32) -> Option<(usize, &str)> {
        let v6 = chain.starts_with("ufw6-");
        let index = usize::try_from(position).ok()?.checked_sub(1)?;
        if chain.ends_with("-user-limit") {
            // Reached from a `ufw limit` rule's jump: named when only one rule jumps there.
            let mut limits = self.numbered_rules().filter(|(_, r)| r.v6 == v6 && r.limit);
            let (n, rule) = limits.next()?;
            return limits.next().is_none().then_some((n, rule.status.as_str()));
        }
        let lines: Vec<(usize, &Vec<String>)> = self
            .numbered_rules()
            .filter(|(_, r)| r.v6 == v6)
            .flat_map(|(n, r)| {
                r.lines
                    .iter()
                    .filter(|(c, _)| c == chain)
                    .map(move |(_, words)| (n, words))
            })
            .collect();
        if lines.len() != kernel.len() {
            return None;
        }
        let written_as_loaded = lines.iter().zip(kernel).all(|((_, file), kernel)| {
            let kernel = words(kernel.strip_prefix("-A ").unwrap_or(kernel));
            is_subsequence(file, kernel.get(1..).unwrap_or_default())
        });
        if !written_as_loaded {
            return None;
        }
        let (n, _) = lines.get(index)?;
        let rule = &self.rules[n - 1];
        Some((*n, rule.status.as_str()))
    }

    fn numbered_rules(&self) -> impl Iterator<Item = (usize, &UfwRule)> {
        self.rules.iter().enumerate().map(|(i, r)| (i + 1, r))
    }
}

impl UfwRule {
    /// A `### tuple ###` line's fields: `action proto dport dst sport src [dapp sapp]
    /// direction[_interfaces] [comment=HEX]` (backend_iptables.py `_write_rules`).
    fn of_tuple(tuple: &str, v6: bool) -> Option<UfwRule> {
        let tuple = tuple.split(" comment=").next().unwrap_or(tuple);
        let f: Vec<&str> = tuple.split_whitespace().collect();
        if !(6..=9).contains(&f.len()) {
            return None;
        }
        let (action, proto, dport, dst, sport, src) = (f[0], f[1], f[2], f[3], f[4], f[5]);
        let (apps, direction) = match f.len() {
            8 => (Some((f[6], f[7])), "in"),
            9 => (Some((f[6], f[7])), f[8]),
            7 => (None, f[6]),
            _ => (None, "in"),
        };
        let (route, action) = match action.strip_prefix("route:") {
            Some(a) => (true, a),
            None => (false, action),
        };
        let action = action.split('_').next().unwrap_or(action);
        let mut direction_parts = direction.split('_');
        let dir = direction_parts.next().unwrap_or("in");
        let interface = direction_parts.collect::<Vec<_>>().join("_");
        let app = |a: &str| (a != "-").then(|| a.replace("%20", " "));
        let both_any = is_any(src) && is_any(dst);
        let location = |addr: &str, port: &str, app: Option<String>| {
            let mut s = if is_any(addr) {
                String::new()
            } else {
                addr.to_string()
            };
            let service = match app {
                Some(app) => Some(app),
                None if port != "any" => Some(if proto == "any" {
                    port.to_string()
                } else {
                    format!("{port}/{proto}")
                }),
                None => None,
            };
            if let Some(service) = service {
                if !s.is_empty() {
                    s.push(' ');
                }
                s.push_str(&service);
            }
            if s.is_empty() {
                s = "Anywhere".into();
                if addr == "::/0" {
                    s.push_str(" (v6)");
                }
            } else if v6 && both_any {
                s.push_str(" (v6)");
            }
            s
        };
        let mut to = location(dst, dport, apps.and_then(|(d, _)| app(d)));
        if !interface.is_empty() {
            to.push_str(&format!(" on {}", interface.replace("!", " ")));
        }
        let from = location(src, sport, apps.and_then(|(_, s)| app(s)));
        let dir_word = if route {
            "FWD".to_string()
        } else {
            dir.to_ascii_uppercase()
        };
        let mut status = format!("{to} {} {dir_word} {from}", action.to_ascii_uppercase());
        if dir == "out" && !route {
            status.push_str(" (out)");
        }
        Some(UfwRule {
            v6,
            status,
            limit: action == "limit",
            lines: Vec::new(),
        })
    }
}

fn is_any(addr: &str) -> bool {
    addr == "0.0.0.0/0" || addr == "::/0"
}

/// An iptables line's words, quotes dropped and host prefixes (`/32`, `/128`) left out, as
/// iptables-save prints what ufw wrote.
fn words(line: &str) -> Vec<String> {
    line.split_whitespace()
        .map(|w| {
            let w = w.trim_matches(|c| c == '\'' || c == '"');
            w.strip_suffix("/32")
                .or_else(|| w.strip_suffix("/128"))
                .unwrap_or(w)
                .to_string()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Every word of `file`, in order, among `kernel`'s: iptables-save adds words (`-m tcp`,
/// `recent`'s defaults) but keeps the order of those given.
fn is_subsequence(file: &[String], kernel: &[String]) -> bool {
    let mut kernel = kernel.iter();
    file.iter().all(|w| kernel.any(|k| k == w))
}

/// When each rules file was last written (`None`: not there).
type Stamps = [Option<SystemTime>; 2];

/// The rules under [`UFW_DIR`], read again only when a file changed.
pub fn current() -> Option<Arc<UfwRules>> {
    static CACHE: Mutex<Option<(Stamps, Option<Arc<UfwRules>>)>> = Mutex::new(None);
    let dir = PathBuf::from(UFW_DIR);
    let stamps: Stamps = ["user.rules", "user6.rules"].map(|f| {
        std::fs::metadata(dir.join(f))
            .and_then(|m| m.modified())
            .ok()
    });
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((seen, rules)) = cache.as_ref()
        && *seen == stamps
    {
        return rules.clone();
    }
    let rules = UfwRules::read(&dir).map(Arc::new);
    *cache = Some((stamps, rules.clone()));
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What ufw 0.36.2 (Debian's) writes for `ufw limit 22/tcp`, `ufw reject 8081/tcp`,
    /// `ufw allow 80/tcp` and `ufw deny out 9100/tcp` (its rules section and rate limiting;
    /// backend_iptables.py `_write_rules`).
    const USER_RULES: &str = "*filter
:ufw-user-input - [0:0]
:ufw-user-output - [0:0]
### RULES ###

### tuple ### limit tcp 22 0.0.0.0/0 any 0.0.0.0/0 in
-A ufw-user-input -p tcp --dport 22 -m conntrack --ctstate NEW -m recent --set
-A ufw-user-input -p tcp --dport 22 -m conntrack --ctstate NEW -m recent --update --seconds 30 --hitcount 6 -j ufw-user-limit
-A ufw-user-input -p tcp --dport 22 -j ufw-user-limit-accept

### tuple ### reject tcp 8081 0.0.0.0/0 any 0.0.0.0/0 in
-A ufw-user-input -p tcp --dport 8081 -j REJECT --reject-with tcp-reset

### tuple ### allow tcp 80 0.0.0.0/0 any 0.0.0.0/0 in
-A ufw-user-input -p tcp --dport 80 -j ACCEPT

### tuple ### deny tcp 9100 0.0.0.0/0 any 0.0.0.0/0 out
-A ufw-user-output -p tcp --dport 9100 -j DROP

### END RULES ###

### RATE LIMITING ###
-A ufw-user-limit -m limit --limit 3/minute -j LOG --log-prefix \"[UFW LIMIT BLOCK] \"
-A ufw-user-limit -j REJECT
-A ufw-user-limit-accept -j ACCEPT
### END RATE LIMITING ###
COMMIT
";

    /// ufw-user-input as iptables-nft-save prints it once ufw loaded the file above.
    const KERNEL_INPUT: [&str; 5] = [
        "-A ufw-user-input -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m recent --set --name DEFAULT --mask 255.255.255.255 --rsource",
        "-A ufw-user-input -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m recent --update --seconds 30 --hitcount 6 --name DEFAULT --mask 255.255.255.255 --rsource -j ufw-user-limit",
        "-A ufw-user-input -p tcp -m tcp --dport 22 -j ufw-user-limit-accept",
        "-A ufw-user-input -p tcp -m tcp --dport 8081 -j REJECT --reject-with tcp-reset",
        "-A ufw-user-input -p tcp -m tcp --dport 80 -j ACCEPT",
    ];

    fn rules() -> UfwRules {
        let v6 = USER_RULES
            .replace("ufw-", "ufw6-")
            .replace("0.0.0.0/0", "::/0");
        UfwRules::parse(USER_RULES, &v6)
    }

    #[test]
    fn rules_are_numbered_as_ufw_status_numbered_shows_them() {
        let r = rules();
        assert_eq!(
            r.numbered("ufw-user-input", &KERNEL_INPUT, 4),
            Some((2, "8081/tcp REJECT IN Anywhere"))
        );
        assert_eq!(
            r.numbered(
                "ufw-user-output",
                &["-A ufw-user-output -p tcp -m tcp --dport 9100 -j DROP"],
                1
            ),
            Some((4, "9100/tcp DENY OUT Anywhere (out)"))
        );
        // IPv6 rules come after every IPv4 one.
        let v6: Vec<String> = KERNEL_INPUT
            .iter()
            .map(|l| l.replace("ufw-", "ufw6-"))
            .collect();
        let v6: Vec<&str> = v6.iter().map(String::as_str).collect();
        assert_eq!(
            r.numbered("ufw6-user-input", &v6, 5),
            Some((7, "80/tcp (v6) ALLOW IN Anywhere (v6)"))
        );
        // The one `ufw limit` rule stands for the REJECT its jump reaches.
        assert_eq!(
            r.numbered("ufw-user-limit", &[], 2),
            Some((1, "22/tcp LIMIT IN Anywhere"))
        );
    }

    #[test]
    fn a_chain_that_differs_from_the_file_gets_no_number() {
        let r = rules();
        // A rule inserted by hand: one more rule than the file has.
        let mut edited = vec!["-A ufw-user-input -s 203.0.113.7 -j DROP"];
        edited.extend(KERNEL_INPUT);
        assert_eq!(r.numbered("ufw-user-input", &edited, 1), None);
        assert_eq!(r.numbered("ufw-user-input", &edited, 5), None);
        // As many rules, but not the file's (a file edited and not reloaded).
        let mut other = KERNEL_INPUT;
        other[3] = "-A ufw-user-input -p tcp -m tcp --dport 8082 -j REJECT --reject-with tcp-reset";
        assert_eq!(r.numbered("ufw-user-input", &other, 4), None);
        // No number 0, none past the chain.
        assert_eq!(r.numbered("ufw-user-input", &KERNEL_INPUT, 0), None);
        assert_eq!(r.numbered("ufw-user-input", &KERNEL_INPUT, 6), None);
    }

    #[test]
    fn tuples_with_addresses_interfaces_apps_and_routes_read_as_ufw_shows_them() {
        let rule = |tuple: &str, v6| UfwRule::of_tuple(tuple, v6).unwrap().status;
        assert_eq!(
            rule(" allow tcp 22 0.0.0.0/0 any 192.0.2.0/24 in_eth0", false),
            "22/tcp on eth0 ALLOW IN 192.0.2.0/24"
        );
        assert_eq!(
            rule(" route:deny_log any any 10.0.0.0/8 any 0.0.0.0/0 in", false),
            "10.0.0.0/8 DENY FWD Anywhere"
        );
        assert_eq!(
            rule(" allow tcp 80,443 ::/0 any ::/0 Nginx%20Full - in", true),
            "Nginx Full (v6) ALLOW IN Anywhere (v6)"
        );
        assert!(
            UfwRule::of_tuple(" allow any any", false).is_none(),
            "malformed"
        );
    }
}
