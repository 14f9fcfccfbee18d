//! Which front-end manages a rule: ufw, firewalld, Docker, podman's netavark, libvirt,
//! Incus, LXD, OpenWrt's firewall4, kube-proxy, the kubelet, kube-router, flannel,
//! Calico, Cilium or fail2ban.
//!
//! A generated rule hand-edited during an incident comes back at the front-end's next
//! reload; the SRE has to change the front-end's configuration instead. The front-ends are
//! told apart by the names they give their tables and chains and by what they put in rules
//! (kube-proxy's Service comments, fail2ban's `f2b-` sets). A rule none of them claims has
//! no owner: it was written by hand or by a tool droptrace does not know.

use ruleset::TableFamily;

use crate::record::rule::Owner;

/// The owner of a rule (or a chain's policy: `rule` empty) in `table`/`chain` of `family`
/// (when known), with the command that shows it in the front-end's terms.
pub fn owner_of(
    family: Option<TableFamily>,
    table: &str,
    chain: &str,
    rule: &str,
) -> Option<Owner> {
    let mut owner = front_end_of(family, table, chain, rule)?;
    owner.show = show_command(owner.tool, owner.object.as_deref());
    Some(owner)
}

/// A firewalld or firewall4 rule outside any zone's chains (`filter_INPUT`'s final reject
/// of what no zone accepted; fw4's `handle_reject`, jumped to from `reject_from_wan`) acts
/// for the zone the packet was dispatched to: the last zone chain on the packet's `path`.
pub fn zone_from_path(owner: &mut Owner, path: &[ruleset::ChainRef]) {
    if owner.object.is_some() {
        return;
    }
    let zone_of = |chain: &str| match owner.tool {
        "firewalld" => firewalld_object(chain),
        "fw4" => fw4_zone(chain).map(|z| format!("zone {z}")),
        _ => None,
    };
    if let Some(zone) = path.iter().rev().find_map(|c| zone_of(&c.chain)) {
        owner.show = show_command(owner.tool, Some(&zone));
        owner.object = Some(zone);
    }
}

/// A read-only command that shows `object` of `tool` (or the tool's rules), in its own
/// terms; `None` where the tool has no such command.
fn show_command(tool: &str, object: Option<&str>) -> Option<String> {
    Some(match (tool, object) {
        ("ufw", _) => "ufw status numbered".into(),
        ("firewalld", Some(o)) => match o.split_once(' ') {
            Some(("zone", zone)) => format!("firewall-cmd --zone={zone} --list-all"),
            Some(("policy", policy)) => format!("firewall-cmd --info-policy={policy}"),
            _ => "firewall-cmd --list-all-zones".into(),
        },
        ("firewalld", None) => "firewall-cmd --list-all-zones".into(),
        ("fail2ban", Some(jail)) => format!("fail2ban-client status {jail}"),
        ("fail2ban", None) => "fail2ban-client status".into(),
        ("kube-proxy", Some(service)) => {
            // `ns/name:port`
            let (ns, rest) = service.split_once('/')?;
            let name = rest.split(':').next()?;
            format!(
                "kubectl -n {ns} get service {name} -o wide; kubectl -n {ns} get \
                 endpointslices -l kubernetes.io/service-name={name}"
            )
        }
        ("kube-proxy", None) => "kubectl get services -A -o wide".into(),
        ("kube-router", Some(pod)) => {
            // `pod ns/name`: the policies of its namespace, and the labels they select by.
            let (ns, name) = pod.strip_prefix("pod ")?.split_once('/')?;
            format!(
                "kubectl -n {ns} get networkpolicies; kubectl -n {ns} get pod {name} --show-labels"
            )
        }
        ("calico", Some(o)) => match o.split_once(' ') {
            Some(("KubernetesNetworkPolicy", id)) => {
                let (ns, name) = id.split_once('/')?;
                format!("kubectl -n {ns} get networkpolicy {name} -o yaml")
            }
            Some(("NetworkPolicy", id)) => {
                let (ns, name) = id.split_once('/')?;
                format!("calicoctl get networkpolicy {name} -n {ns} -o yaml")
            }
            Some(("GlobalNetworkPolicy", name)) => {
                format!("calicoctl get globalnetworkpolicy {name} -o yaml")
            }
            // A workload endpoint's interface: the pod it is, and the policies it has.
            Some(("workload", _)) => "calicoctl get workloadendpoints -A -o wide".into(),
            _ => "kubectl get networkpolicies -A".into(),
        },
        ("kube-router" | "calico", _) => "kubectl get networkpolicies -A".into(),
        ("docker", Some(o)) => match o.strip_prefix("bridge ") {
            // Docker names a network's bridge `br-` and the network ID's first 12 digits.
            Some(bridge) => match bridge
                .strip_prefix("br-")
                .filter(|id| id.len() == 12 && id.chars().all(|c| c.is_ascii_hexdigit()))
            {
                Some(id) => format!("docker network inspect {id}"),
                None if bridge == "docker0" => "docker network inspect bridge".into(),
                None => "docker network ls".into(),
            },
            None => "docker network ls".into(),
        },
        ("docker", None) => "docker network ls".into(),
        ("netavark", Some(o)) => match o.split_once(' ') {
            // podman takes a network ID's prefix wherever it takes a name.
            Some(("network", id)) => format!("podman network inspect {id}"),
            // A bridge's network: podman lists each network with its interface.
            _ => "podman network ls --format '{{.Name}} {{.NetworkInterface}}'".into(),
        },
        ("netavark", None) => "podman network ls".into(),
        ("libvirt", _) => "virsh net-list --all".into(),
        ("incus" | "lxd", Some(o)) => {
            let cli = if tool == "incus" { "incus" } else { "lxc" };
            let words: Vec<&str> = o.split(' ').collect();
            match words.as_slice() {
                ["network", network] => format!("{cli} network show {network}"),
                ["instance", instance, "device", _] => {
                    format!("{cli} config show {instance} --expanded")
                }
                ["instance", instance, "device", _, "project", project] => {
                    format!("{cli} config show {instance} --expanded --project {project}")
                }
                _ => format!("{cli} network list"),
            }
        }
        ("incus", None) => "incus network list".into(),
        ("lxd", None) => "lxc network list".into(),
        ("fw4", _) => "uci show firewall".into(),
        _ => return None,
    })
}

/// The front-end of a rule and its object, by the names the front-end writes.
fn front_end_of(
    family: Option<TableFamily>,
    table: &str,
    chain: &str,
    rule: &str,
) -> Option<Owner> {
    let tool = |tool| {
        Some(Owner {
            tool,
            object: None,
            show: None,
            reason: None,
        })
    };
    if chain.starts_with("ufw-") || chain.starts_with("ufw6-") {
        return tool("ufw");
    }
    if let Some(set) = match_set(rule).filter(|s| s.starts_with("f2b-")) {
        let jail = set.trim_start_matches("f2b-").trim_end_matches('6');
        return Some(Owner {
            tool: "fail2ban",
            object: Some(jail.to_string()),
            show: None,
            reason: None,
        });
    }
    // fail2ban's nftables action (config/action.d/nftables.conf): one table and chain,
    // a set per jail, `addr-set-<jail>` (`addr6-set-` for IPv6).
    if table == "f2b-table" {
        let jail = match_set(rule).and_then(|s| {
            s.strip_prefix("addr-set-")
                .or_else(|| s.strip_prefix("addr6-set-"))
        });
        return Some(Owner {
            tool: "fail2ban",
            object: jail.map(str::to_string),
            show: None,
            reason: None,
        });
    }
    if let Some(jail) = chain.strip_prefix("f2b-") {
        return Some(Owner {
            tool: "fail2ban",
            object: Some(jail.to_string()),
            show: None,
            reason: None,
        });
    }
    if table == "firewalld" || is_firewalld_iptables_chain(chain) {
        return Some(Owner {
            tool: "firewalld",
            object: firewalld_object(chain),
            show: None,
            reason: None,
        });
    }
    if let Some(tool) = kubernetes_tool(table, chain) {
        // kube-proxy's comments say why a rule is there after the Service's name.
        let reason = (tool == "kube-proxy")
            .then(|| comment(rule))
            .flatten()
            .and_then(|c| {
                let (service, why) = c.split_once(' ')?;
                service_of(service)?;
                let why = why.trim();
                why.starts_with("has no").then(|| why.to_string())
            });
        let object = match tool {
            "kube-proxy" => comment(rule)
                .and_then(|c| service_of(&c))
                .or_else(|| nft_service_of(chain)),
            "kube-router" => comment(rule).and_then(|c| kube_router_pod(&c)),
            _ => None,
        };
        return Some(Owner {
            tool,
            object,
            show: None,
            reason,
        });
    }
    if DOCKER_CHAINS.contains(&chain) {
        return Some(Owner {
            tool: "docker",
            object: network_bridge(rule).map(|b| format!("bridge {b}")),
            show: None,
            reason: None,
        });
    }
    if chain.starts_with("cali-") || matches!(table, "calico" | "calico-arp") {
        let (object, reason) = calico_object(table, chain, rule);
        return Some(Owner {
            tool: "calico",
            object,
            show: None,
            reason,
        });
    }
    if chain.starts_with("CILIUM_") {
        return tool("cilium");
    }
    nft_table_owner(family, table, chain, rule).or_else(|| iptables_chain_owner(chain, rule))
}

/// Docker's iptables chains (moby daemon/libnetwork/drivers/bridge/internal/iptabler,
/// swarm's DOCKER-INGRESS, DOCKER-ISOLATION before 17.06). DOCKER-USER is not among them:
/// it is where Docker leaves room for the administrator's own rules. A chain merely
/// named like these (`DOCKER-BLOCK`) is not Docker's.
const DOCKER_CHAINS: &[&str] = &[
    "DOCKER",
    "DOCKER-FORWARD",
    "DOCKER-BRIDGE",
    "DOCKER-CT",
    "DOCKER-INTERNAL",
    "DOCKER-ISOLATION-STAGE-1",
    "DOCKER-ISOLATION-STAGE-2",
    "DOCKER-ISOLATION",
    "DOCKER-INGRESS",
];

/// Front-ends that keep their rules in nftables tables of their own, by the table names
/// their sources give, with the object a chain's name carries.
fn nft_table_owner(
    family: Option<TableFamily>,
    table: &str,
    chain: &str,
    rule: &str,
) -> Option<Owner> {
    let owner = |tool, object: Option<String>| {
        Some(Owner {
            tool,
            object,
            show: None,
            reason: None,
        })
    };
    match table {
        // moby: daemon/libnetwork/drivers/bridge/internal/nftabler (per network chains
        // `filter-forward-in__<bridge>`), the overlay driver's and the embedded DNS's.
        "docker-bridges" | "docker-overlay" | "docker-dns" => owner(
            "docker",
            chain
                .split_once("__")
                .map(|(_, bridge)| bridge)
                // raw-PREROUTING's "DROP DIRECT ACCESS": `ip daddr C iifname != "B" drop`.
                .or_else(|| network_bridge(rule))
                .map(|bridge| format!("bridge {bridge}")),
        ),
        // netavark (podman's network stack), src/firewall/nft.rs.
        "netavark" => owner("netavark", netavark_object(chain, rule)),
        // libvirt, src/network/network_nftables.c.
        "libvirt_network" => owner(
            "libvirt",
            network_bridge(rule).map(|bridge| format!("bridge {bridge}")),
        ),
        // Incus and LXD (the same drivers_nftables.go naming): a network's chains in the
        // inet table, an instance NIC's in the bridge table.
        "incus" => owner("incus", incus_object(family, chain)),
        "lxd" => owner("lxd", incus_object(family, chain)),
        // OpenWrt's firewall4: `input_<zone>`, `reject_from_<zone>`, ...
        "fw4" => owner("fw4", fw4_zone(chain).map(|z| format!("zone {z}"))),
        // flannel, pkg/trafficmngr/nftables.
        "flannel-ipv4" | "flannel-ipv6" => owner("flannel", None),
        _ => None,
    }
}

/// The network of a netavark rule (src/firewall/nft.rs; varktables before): a subnet's
/// chain `nv_<first 8 digits of the network ID>_<subnet>[_dnat]` names the network by ID;
/// an isolation chain's `oifname "podman1" drop` (NETAVARK-ISOLATION-2/3, iptables
/// `NETAVARK_ISOLATION_2`) names the bridge of the network the packet was kept out of.
/// Its rules carry no network name, and FORWARD's `ct state invalid drop` is no network's.
fn netavark_object(chain: &str, rule: &str) -> Option<String> {
    if let Some(rest) = chain.strip_prefix("nv_") {
        let id = rest.split('_').next()?;
        return (!id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| format!("network {id}"));
    }
    let isolation =
        chain.starts_with("NETAVARK-ISOLATION-") || chain.starts_with("NETAVARK_ISOLATION_");
    isolation
        .then(|| network_bridge(rule))
        .flatten()
        .map(|bridge| format!("bridge {bridge}"))
}

/// The network or instance of an Incus or LXD chain (lxc/incus
/// internal/server/firewall/drivers/drivers_nftables.go): `<prefix>.<network>` (`fwd.`,
/// `acl.`, `aclfwd.`, `in.`, ...) in the inet table; in the bridge table, and for the
/// inet `prert.` reverse-path chains, `<prefix>.<label>` where the label is
/// `[<project>_]<instance>.<device>` (instance names have neither `.` nor `_`).
fn incus_object(family: Option<TableFamily>, chain: &str) -> Option<String> {
    let (prefix, rest) = chain.split_once('.')?;
    if rest.is_empty() {
        return None;
    }
    if family == Some(TableFamily::Bridge) || prefix == "prert" {
        let (project, label) = match rest.split_once('_') {
            Some((project, label)) if !project.contains('.') => (Some(project), label),
            _ => (None, rest),
        };
        let (instance, device) = label.split_once('.')?;
        if instance.is_empty() || device.is_empty() {
            return None;
        }
        return Some(match project {
            Some(p) => format!("instance {instance} device {device} project {p}"),
            None => format!("instance {instance} device {device}"),
        });
    }
    const NETWORK_PREFIXES: &[&str] = &[
        "fwd", "pstrt", "in", "out", "aclin", "aclout", "aclfwd", "acl", "fwdprert", "fwdout",
        "fwdpstrt", "egress",
    ];
    NETWORK_PREFIXES
        .contains(&prefix)
        .then(|| format!("network {rest}"))
}

/// What a Calico (Felix) rule acts for, and why it drops where its comment says
/// (felix/rules/rule_defs.go, policy.go, endpoints.go). In nft mode (table `calico`) a
/// chain's name starts with the iptables table it stands for (`filter-cali-tw-…`).
/// - `cali-tw-<iface>`/`cali-fw-<iface>`: the workload endpoint (pod) on that interface,
///   traffic to or from it; the end-of-tier drop says `End of tier T. Drop if no policies
///   passed packet` (`Drop if no policies passed packet` before v3.30).
/// - `cali-pi-<id>`/`cali-po-<id>`: a policy, when its ID fits the 28-character name
///   (`knp/ns/name` since v3.32; a hashed `_…` name is resolved from the chain's first
///   rule by [`calico_policy`]).
fn calico_object(table: &str, chain: &str, rule: &str) -> (Option<String>, Option<String>) {
    let chain = if table == "calico" {
        chain.split_once('-').map_or(chain, |(_, c)| c)
    } else {
        chain
    };
    let rest = |p: &str| chain.strip_prefix(p).filter(|r| !r.is_empty());
    if let Some(iface) = rest("cali-tw-").or_else(|| rest("cali-fw-")) {
        let reason = comments(rule).into_iter().find_map(|c| {
            let tier = c
                .strip_prefix("End of tier ")
                .and_then(|t| t.split_once(". "))
                .map(|(tier, _)| tier);
            c.ends_with("if no policies passed packet")
                .then(|| match tier {
                    Some(tier) => format!("no policy of tier {tier} allowed it"),
                    None => "no policy allowed it".to_string(),
                })
        });
        return (Some(format!("workload {iface}")), reason);
    }
    let policy = rest("cali-pi-")
        .or_else(|| rest("cali-po-"))
        .filter(|id| !id.starts_with('_'))
        .and_then(calico_policy_of_id);
    (policy, None)
}

/// `KubernetesNetworkPolicy shop/deny-db` from a Felix policy ID (`knp/shop/deny-db`,
/// `np/shop/default.web`, `gnp/default.deny`, felix/types/policy_id.go) or from the
/// comment on a policy chain's first rule (`KubernetesNetworkPolicy shop/deny-db ingress`;
/// `Policy shop/knp.default.deny-db ingress` before v3.32).
fn calico_policy_of_id(id: &str) -> Option<String> {
    let (kind, rest) = id.split_once('/')?;
    let kind = match kind {
        "knp" => "KubernetesNetworkPolicy",
        "np" => "NetworkPolicy",
        "gnp" => "GlobalNetworkPolicy",
        "kcnp" => "ClusterNetworkPolicy",
        _ => return None,
    };
    (!rest.is_empty()).then(|| format!("{kind} {rest}"))
}

/// The policy a Calico policy chain's first rule names in its comment.
fn calico_policy_of_comment(comment: &str) -> Option<String> {
    let words: Vec<&str> = comment.split(' ').collect();
    let [kind, id, direction] = words.as_slice() else {
        return None;
    };
    if !matches!(*direction, "ingress" | "egress") || id.is_empty() {
        return None;
    }
    Some(match *kind {
        // Before v3.32: `Policy <ns>/knp.default.<name>` for a Kubernetes policy.
        "Policy" => match id.split_once("/knp.default.") {
            Some((ns, name)) => format!("KubernetesNetworkPolicy {ns}/{name}"),
            None => format!("NetworkPolicy {id}"),
        },
        "KubernetesNetworkPolicy"
        | "NetworkPolicy"
        | "GlobalNetworkPolicy"
        | "KubernetesClusterNetworkPolicy" => format!("{kind} {id}"),
        _ => return None,
    })
}

/// A Calico policy chain whose name was hashed (`cali-pi-_PymyFHQQg3808jiz1OJ`: the ID did
/// not fit) names its policy in the comment of its first rule (Felix puts it there, on an
/// empty rule if need be): read it from the ruleset.
pub fn calico_policy(a: &mut super::Attribution, rs: &ruleset::Ruleset) {
    if !a
        .owner
        .as_ref()
        .is_some_and(|o| o.tool == "calico" && o.object.is_none())
    {
        return;
    }
    let (Some(table), Some(chain)) = (table_of(a, rs), a.chain.as_deref()) else {
        return;
    };
    let Some(first) = table
        .chains
        .iter()
        .find(|c| c.name == chain)
        .and_then(|c| c.rules.first())
    else {
        return;
    };
    let policy = comments(&first.text)
        .iter()
        .find_map(|c| calico_policy_of_comment(c));
    if let (Some(policy), Some(owner)) = (policy, a.owner.as_mut()) {
        owner.show = show_command("calico", Some(&policy));
        owner.object = Some(policy);
    }
}

/// The zone of one of firewall4's per-zone chains (root/usr/share/firewall4/templates).
fn fw4_zone(chain: &str) -> Option<&str> {
    [
        "input_",
        "output_",
        "forward_",
        "helper_",
        "accept_from_",
        "reject_from_",
        "drop_from_",
        "accept_to_",
        "reject_to_",
        "drop_to_",
        "dstnat_",
        "srcnat_",
        "notrack_",
    ]
    .iter()
    .find_map(|p| chain.strip_prefix(p))
    .filter(|z| !z.is_empty())
}

/// Front-ends known by their iptables chains: libvirt's (src/network/network_iptables.c),
/// netavark's before it left iptables (src/firewall/varktables), flannel's
/// (pkg/trafficmngr/iptables).
fn iptables_chain_owner(chain: &str, rule: &str) -> Option<Owner> {
    let tool = match chain {
        "LIBVIRT_INP" | "LIBVIRT_OUT" | "LIBVIRT_FWO" | "LIBVIRT_FWI" | "LIBVIRT_FWX"
        | "LIBVIRT_PRT" => "libvirt",
        "FLANNEL-FWD" | "FLANNEL-POSTRTG" => "flannel",
        c if c.starts_with("NETAVARK_") || c.starts_with("NETAVARK-") => "netavark",
        _ => return None,
    };
    Some(Owner {
        tool,
        object: match tool {
            "libvirt" => network_bridge(rule).map(|bridge| format!("bridge {bridge}")),
            "netavark" => netavark_object(chain, rule),
            _ => None,
        },
        show: None,
        reason: None,
    })
}

/// A libvirt rule's network, by the bridge it names (see [`crate::enrich::libvirt`]),
/// with the command that shows the network's definition.
pub fn libvirt_network(a: &mut super::Attribution) {
    let Some(owner) = a.owner.as_mut().filter(|o| o.tool == "libvirt") else {
        return;
    };
    let Some(bridge) = owner
        .object
        .as_deref()
        .and_then(|o| o.strip_prefix("bridge "))
    else {
        return;
    };
    if let Some(network) = crate::enrich::libvirt::network_of_bridge(bridge) {
        owner.show = Some(format!("virsh net-dumpxml {network}"));
        owner.object = Some(format!("network {network} (bridge {bridge})"));
    }
}

/// A built-in chain's policy has no name of its own: it belongs to the front-end whose
/// chains fill the same table (ufw sets INPUT/FORWARD/OUTPUT policies from its
/// `DEFAULT_*_POLICY`; firewalld from its zones' targets). Docker also sets FORWARD's
/// policy but is one writer among many there, so it is not named.
pub fn policy_owner(a: &mut super::Attribution, rs: &ruleset::Ruleset) {
    if a.verdict.as_deref() != Some("policy") || a.owner.is_some() {
        return;
    }
    let Some(table) = table_of(a, rs) else {
        return;
    };
    let managed_by = |tool: &str| {
        table.chains.iter().any(|c| {
            c.base.is_none()
                && owner_of(Some(table.family), &table.name, &c.name, "")
                    .is_some_and(|o| o.tool == tool)
        })
    };
    for tool in ["ufw", "firewalld"] {
        if managed_by(tool) {
            a.owner = Some(Owner {
                tool,
                object: Some("default policy".to_string()),
                show: show_command(tool, None),
                reason: None,
            });
            return;
        }
    }
}

/// Docker's iptables backend drops packets sent straight at a container from outside its
/// network in the raw table's built-in PREROUTING, with no chain or comment of its own:
/// `-A PREROUTING -d 192.168.0.2/32 ! -i br-1a2b3c4d5e6f -j DROP` (moby
/// daemon/libnetwork/drivers/bridge/internal/iptabler/endpoint.go, filterDirectAccess).
/// The rule is Docker's when it has exactly that shape and Docker's chains fill the same
/// engine's filter table; a rule of that shape on a host without Docker is nobody's.
pub fn docker_direct_access(a: &mut super::Attribution, rs: &ruleset::Ruleset) {
    if a.owner.is_some() || a.table.as_deref() != Some("raw") {
        return;
    }
    let Some(rule) = a.rule.as_deref() else {
        return;
    };
    let words: Vec<&str> = rule.split_whitespace().collect();
    let ["-A", "PREROUTING", "-d", _, "!", "-i", bridge, "-j", "DROP"] = words.as_slice() else {
        return;
    };
    let docker_filter = rs.tables.iter().any(|t| {
        t.name == "filter"
            && Some(t.family.to_string()) == a.table_family
            && Some(t.backend.as_str()) == a.backend.as_deref()
            && t.chains
                .iter()
                .any(|c| DOCKER_CHAINS.contains(&c.name.as_str()))
    });
    if docker_filter {
        let object = format!("bridge {bridge}");
        a.owner = Some(Owner {
            tool: "docker",
            show: show_command("docker", Some(&object)),
            object: Some(object),
            reason: None,
        });
    }
}

/// The table an attribution names, in the ruleset read.
fn table_of<'a>(a: &super::Attribution, rs: &'a ruleset::Ruleset) -> Option<&'a ruleset::Table> {
    rs.tables.iter().find(|t| {
        Some(t.name.as_str()) == a.table.as_deref()
            && Some(t.family.to_string()) == a.table_family
            && Some(t.backend.as_str()) == a.backend.as_deref()
    })
}

/// A rule in ufw's user chains, named by ufw's own number and words (`rule 2: 8081/tcp
/// REJECT IN Anywhere`, as `ufw status numbered` shows it), when ufw's rules files say
/// which it is (see [`crate::enrich::ufw`]).
pub fn ufw_number(a: &mut super::Attribution, rs: &ruleset::Ruleset) {
    let (Some(owner), Some(chain), Some(position)) = (&a.owner, a.chain.as_deref(), a.rule_num)
    else {
        return;
    };
    if owner.tool != "ufw"
        || owner.object.is_some()
        || !(chain.starts_with("ufw-user-") || chain.starts_with("ufw6-user-"))
    {
        return;
    }
    let Some(kernel) = table_of(a, rs).and_then(|t| t.chain(chain)) else {
        return;
    };
    let kernel: Vec<&str> = kernel.rules.iter().map(|r| r.text.as_str()).collect();
    let Some(rules) = crate::enrich::ufw::current() else {
        return;
    };
    let Some((number, status)) = rules.numbered(chain, &kernel, position) else {
        return;
    };
    let object = format!("rule {number}: {status}");
    if let Some(owner) = a.owner.as_mut() {
        owner.object = Some(object);
    }
}

/// kube-proxy's chains (pkg/proxy/iptables/proxier.go; ipvs mode's in pkg/proxy/ipvs; the
/// old userspace proxy's), fixed names and per-Service prefixes.
const KUBE_PROXY_CHAINS: &[&str] = &[
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
    "KUBE-FORWARD",
    "KUBE-PROXY-FIREWALL",
    "KUBE-PROXY-CANARY",
    "KUBE-SOURCE-RANGES-FIREWALL",
    "KUBE-NODE-PORT",
    "KUBE-LOAD-BALANCER",
    "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
    "KUBE-PORTALS-CONTAINER",
    "KUBE-PORTALS-HOST",
    "KUBE-NODEPORT-CONTAINER",
    "KUBE-NODEPORT-HOST",
    "KUBE-NODEPORT-NON-LOCAL",
];
const KUBE_PROXY_PREFIXES: &[&str] = &[
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-FW-",
    "KUBE-EXT-",
    "KUBE-SEP-",
    "KUBE-XLB-",
];
/// The kubelet's own (pkg/kubelet/kubelet_network_linux.go): KUBE-FIREWALL's localnet
/// drop, which kube-proxy's iptables mode also writes, identical; KUBE-MARK-DROP of older
/// kubelets, whose mark KUBE-FIREWALL drops.
const KUBELET_CHAINS: &[&str] = &[
    "KUBE-FIREWALL",
    "KUBE-KUBELET-CANARY",
    "KUBE-IPTABLES-HINT",
    "KUBE-MARK-DROP",
];
/// kube-router's network policy and service proxy chains
/// (pkg/controllers/netpol/network_policy_controller.go, pkg/controllers/proxy): the
/// `KUBE-` prefix is kube-proxy's too, so only these.
const KUBE_ROUTER_PREFIXES: &[&str] = &["KUBE-ROUTER-", "KUBE-POD-FW-", "KUBE-NWPLCY-"];

/// Which Kubernetes component writes `table`/`chain`, by the names their sources give:
/// a `KUBE-` chain none of them names has no owner (a prefix guess put kube-router's
/// policy chains on kube-proxy).
fn kubernetes_tool(table: &str, chain: &str) -> Option<&'static str> {
    let prefixed = |prefixes: &[&str]| prefixes.iter().any(|p| chain.starts_with(p));
    if prefixed(KUBE_ROUTER_PREFIXES)
        || matches!(table, "kube-router-filter-ipv4" | "kube-router-filter-ipv6")
    {
        return Some("kube-router");
    }
    // Older ipvs kube-proxy kept load-balancer source ranges in a nat KUBE-FIREWALL.
    if chain == "KUBE-FIREWALL" && table == "nat" {
        return Some("kube-proxy");
    }
    if KUBELET_CHAINS.contains(&chain) {
        return Some("kubelet");
    }
    if table == "kube-proxy" || KUBE_PROXY_CHAINS.contains(&chain) || prefixed(KUBE_PROXY_PREFIXES)
    {
        return Some("kube-proxy");
    }
    None
}

/// `ns1/svc1:p80` from kube-proxy's nftables chain names (pkg/proxy/nftables/proxier.go):
/// `service-ULMVA6XW-ns1/svc1/tcp/p80`, `endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80`,
/// and the `local-`, `external-`, `firewall-` chains of the same shape.
fn nft_service_of(chain: &str) -> Option<String> {
    let rest = ["service-", "local-", "external-", "endpoint-", "firewall-"]
        .iter()
        .find_map(|p| chain.strip_prefix(p))?;
    let (_hash, port_name) = rest.split_once('-')?;
    let mut parts = port_name.split('/');
    let (namespace, name, _proto, port) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let port = port.split("__").next()?;
    (!namespace.is_empty() && !name.is_empty() && !port.is_empty())
        .then(|| format!("{namespace}/{name}:{port}"))
}

/// The zone or policy of one of firewalld's per-zone chains, nftables
/// (`filter_IN_public_allow`, `nat_PRE_home`, `filter_IN_policy_allow-host-ipv6`) or
/// iptables (`IN_public_deny`, `FWDI_trusted`): firewalld's src/firewall/core/nftables.py
/// and ipXtables.py name them `<table>_<hook>_<zone>[_<part>]`.
fn firewalld_object(chain: &str) -> Option<String> {
    let rest = ["filter_", "nat_", "mangle_", "raw_"]
        .iter()
        .find_map(|t| chain.strip_prefix(t))
        .unwrap_or(chain);
    let (hook, rest) = ["IN_", "FWDI_", "FWDO_", "FWD_", "OUT_", "PRE_", "POST_"]
        .iter()
        .find_map(|h| rest.strip_prefix(h).map(|r| (*h, r)))?;
    let (kind, name) = match rest.strip_prefix("policy_") {
        Some(policy) => ("policy", policy),
        // firewalld 2's dispatch chains, `filter_IN_public_to_HOST` and
        // `nat_PRE_public_dispatch_stage2`, act for one zone: the ingress zone, or on
        // output the egress zone (nftables.py `build_zone_target_rules`).
        None => {
            let zone = rest.strip_suffix("_dispatch_stage2").unwrap_or(rest);
            match zone.split_once("_to_") {
                Some((_, egress)) if matches!(hook, "OUT_" | "POST_") => ("zone", egress),
                Some((ingress, _)) => ("zone", ingress),
                None => ("zone", zone),
            }
        }
    };
    let name = ["_allow", "_deny", "_log", "_pre", "_post"]
        .iter()
        .find_map(|p| name.strip_suffix(p))
        .unwrap_or(name);
    (!name.is_empty() && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
        .then(|| format!("{kind} {name}"))
}

/// The bridge a rule of a container or VM network names: the interfaces in Docker's and
/// libvirt's rules are their networks' bridges (`-o br-1a2b3c4d5e6f`, `-i docker0`, the
/// name a network was given with `com.docker.network.bridge.name`; libvirt's `oif
/// "virbr0"`, `-o virbr0`).
fn network_bridge(rule: &str) -> Option<&str> {
    let words: Vec<&str> = rule.split_whitespace().collect();
    words.iter().enumerate().find_map(|(i, w)| {
        if !matches!(*w, "-i" | "-o" | "iifname" | "oifname" | "iif" | "oif") {
            return None;
        }
        // `iifname != "bridge1"` (nft), `! -i docker0` puts the `!` before (iptables).
        let name = words[i + 1..]
            .iter()
            .find(|n| !matches!(**n, "!=" | "==" | "!"))?
            .trim_matches('"');
        (!name.is_empty() && !name.ends_with(['+', '*'])).then_some(name)
    })
}

/// firewalld's chains when it drives iptables (FirewallBackend=iptables): `INPUT_direct`,
/// `INPUT_ZONES`, and per zone `IN_public`, `IN_public_allow`, `FWDI_trusted`, ... (zone
/// names are lowercase, which keeps a hand-made `IN_SSH` out).
fn is_firewalld_iptables_chain(chain: &str) -> bool {
    // ipXtables.py: `<builtin>_direct`, `INPUT_ZONES`, `FORWARD_IN_ZONES`, ... and the
    // `_SOURCE` dispatch chains of firewalld before 0.7.
    let builtin = ["INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"];
    if chain
        .strip_suffix("_direct")
        .is_some_and(|b| builtin.contains(&b))
    {
        return true;
    }
    let dispatch = chain.strip_suffix("_SOURCE").unwrap_or(chain);
    if let Some(hook) = dispatch.strip_suffix("_ZONES") {
        let hook = hook
            .strip_suffix("_IN")
            .or_else(|| hook.strip_suffix("_OUT"))
            .unwrap_or(hook);
        return builtin.contains(&hook);
    }
    ["IN_", "FWDI_", "FWDO_", "PRE_", "POST_"].iter().any(|p| {
        chain
            .strip_prefix(p)
            .and_then(|zone| zone.chars().next())
            .is_some_and(|c| c.is_ascii_lowercase())
    })
}

/// Every comment of an iptables rule (Felix gives one rule several), or an nft rule's
/// one (Felix's `cali:<hash>; <comment>` split at `; `).
fn comments(rule: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = rule;
    while let Some((_, after)) = rest.split_once("--comment ") {
        if let Some(quoted) = after.strip_prefix('"') {
            let Some((c, tail)) = quoted.split_once('"') else {
                break;
            };
            out.push(c.to_string());
            rest = tail;
        } else {
            out.extend(after.split_whitespace().next().map(String::from));
            rest = after;
        }
    }
    if out.is_empty()
        && let Some(c) = comment(rule)
    {
        out.extend(c.split("; ").map(String::from));
    }
    out
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

/// `pod ns/name` from kube-router's comment on the rule that rejects what no network
/// policy let through to a pod: `NS/NAME reject` since its comments were shortened
/// (pkg/controllers/netpol/comments.go, `idComment`), `rule to REJECT traffic destined for
/// POD name:NAME namespace: NS` before (also without the space, and the `default rule
/// ...` of older releases). Its policy chains' rules say `NS/POLICY <kind>`: `policy
/// ns/name`.
fn kube_router_pod(comment: &str) -> Option<String> {
    if let Some((id, kind)) = comment.split_once(' ')
        && let Some((ns, name)) = id.split_once('/')
        && !ns.is_empty()
        && !name.is_empty()
    {
        let what = match kind {
            "reject" | "log-drop" | "in" | "out" => "pod",
            _ => "policy",
        };
        return Some(format!("{what} {ns}/{name}"));
    }
    let rest = comment.split_once("POD name:")?.1;
    let (name, ns) = rest.split_once(" namespace:")?;
    let (name, ns) = (name.trim(), ns.split_whitespace().next()?);
    (!name.is_empty() && !name.contains(char::is_whitespace)).then(|| format!("pod {ns}/{name}"))
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
        owner_of(None, table, chain, rule).map(|o| o.tool)
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

    /// Names an administrator could give their own chains and tables, close to a
    /// front-end's but not as the front-end writes them (see the real-drop test in
    /// tests/tests/frontends.rs): a wrong owner sends the engineer to the wrong team.
    #[test]
    fn chains_only_named_like_a_front_ends_have_no_owner() {
        for (table, chain, rule) in [
            ("filter", "DOCKER-BLOCK", "-j DROP"),
            ("filter", "docker", "-j DROP"),
            (
                "filter",
                "KUBE-LOCAL-DROP",
                "-m comment --comment \"shop/pay:https has no endpoints\"",
            ),
            (
                "filter",
                "cilium-deny",
                "-m comment --comment \"cilium: deny\" -j DROP",
            ),
            ("filter", "CILIUMISH", ""),
            ("filter", "LOCAL_ZONES", ""),
            ("filter", "audit_direct", ""),
            ("filter", "ufwish-input", ""),
            ("docker", "filter-forward-in__br0", "drop"),
            ("firewall", "filter_IN_public_deny", "reject"),
            ("fw4-lab", "input_lan", "drop"),
        ] {
            assert_eq!(owner_of(None, table, chain, rule), None, "{table} {chain}");
        }
        // What the front-ends do write.
        assert_eq!(tool("filter", "DOCKER-FORWARD", ""), Some("docker"));
        assert_eq!(tool("filter", "FORWARD_IN_ZONES", ""), Some("firewalld"));
        assert_eq!(tool("filter", "INPUT_ZONES_SOURCE", ""), Some("firewalld"));
        assert_eq!(tool("mangle", "PREROUTING_direct", ""), Some("firewalld"));
        assert_eq!(tool("nat", "CILIUM_POST_nat", ""), Some("cilium"));
    }

    /// netavark's rules as its src/firewall/nft.rs writes them (tests/corpus/netavark.nft).
    #[test]
    fn netavark_rules_name_their_network_by_id_or_bridge() {
        let o = owner_of(
            None,
            "netavark",
            "NETAVARK-ISOLATION-3",
            "oifname \"podman2\" drop",
        )
        .unwrap();
        assert_eq!(o.object.as_deref(), Some("bridge podman2"));
        assert_eq!(
            o.show.as_deref(),
            Some("podman network ls --format '{{.Name}} {{.NetworkInterface}}'")
        );
        let o = owner_of(None, "netavark", "nv_3a9f1c2e_10_89_0_0_nm24_dnat", "").unwrap();
        assert_eq!(o.object.as_deref(), Some("network 3a9f1c2e"));
        assert_eq!(o.show.as_deref(), Some("podman network inspect 3a9f1c2e"));
        let o = owner_of(None, "netavark", "FORWARD", "ct state invalid drop").unwrap();
        assert_eq!((o.tool, o.object), ("netavark", None));
        let o = owner_of(
            None,
            "filter",
            "NETAVARK_ISOLATION_2",
            "-A NETAVARK_ISOLATION_2 -o podman1 -j DROP",
        )
        .unwrap();
        assert_eq!(o.object.as_deref(), Some("bridge podman1"));
    }

    /// Incus's chains as drivers_nftables.go names them (tests/corpus/incus.nft).
    #[test]
    fn incus_and_lxd_chains_name_their_network_or_instance() {
        let of = |family, table, chain| {
            let o = owner_of(Some(family), table, chain, "drop").unwrap();
            (
                o.tool,
                o.object.unwrap_or_default(),
                o.show.unwrap_or_default(),
            )
        };
        assert_eq!(
            of(TableFamily::Inet, "incus", "acl.incusbr0"),
            (
                "incus",
                "network incusbr0".into(),
                "incus network show incusbr0".into()
            )
        );
        assert_eq!(
            of(TableFamily::Bridge, "incus", "fwd.c1.eth0"),
            (
                "incus",
                "instance c1 device eth0".into(),
                "incus config show c1 --expanded".into()
            )
        );
        assert_eq!(
            of(TableFamily::Bridge, "incus", "in.shop_web1.eth1"),
            (
                "incus",
                "instance web1 device eth1 project shop".into(),
                "incus config show web1 --expanded --project shop".into()
            )
        );
        assert_eq!(
            of(TableFamily::Inet, "incus", "prert.c1.eth0").1,
            "instance c1 device eth0"
        );
        assert_eq!(
            of(TableFamily::Inet, "lxd", "fwd.lxdbr0"),
            (
                "lxd",
                "network lxdbr0".into(),
                "lxc network show lxdbr0".into()
            )
        );
    }

    /// Felix's chains and comments (felix/rules/*_test.go; tests/corpus/calico.iptables).
    #[test]
    fn calico_rules_name_the_workload_or_the_policy() {
        let o = owner_of(
            None,
            "filter",
            "cali-tw-cali1234abcd5",
            "-A cali-tw-cali1234abcd5 -m comment --comment \"cali:Fp3yJ6OnfdHVXmmV\" -m \
             comment --comment \"End of tier default. Drop if no policies passed packet\" -m \
             mark --mark 0x0/0x20000 -j DROP",
        )
        .unwrap();
        assert_eq!(o.object.as_deref(), Some("workload cali1234abcd5"));
        assert_eq!(
            o.reason.as_deref(),
            Some("no policy of tier default allowed it")
        );
        assert_eq!(
            o.show.as_deref(),
            Some("calicoctl get workloadendpoints -A -o wide")
        );
        // nft mode, and Felix before v3.30.
        let o = owner_of(
            Some(TableFamily::Ip),
            "calico",
            "filter-cali-fw-cali9f8e7d6c5b4",
            "meta mark & 0x00020000 == 0 counter drop comment \"cali:x; Drop if no policies \
             passed packet\"",
        )
        .unwrap();
        assert_eq!(o.object.as_deref(), Some("workload cali9f8e7d6c5b4"));
        assert_eq!(o.reason.as_deref(), Some("no policy allowed it"));
        let o = owner_of(None, "filter", "cali-pi-knp/shop/deny-db", "").unwrap();
        assert_eq!(
            o.object.as_deref(),
            Some("KubernetesNetworkPolicy shop/deny-db")
        );
        assert_eq!(
            o.show.as_deref(),
            Some("kubectl -n shop get networkpolicy deny-db -o yaml")
        );
        // A hashed name names nothing by itself; its first rule's comment does.
        let o = owner_of(None, "filter", "cali-pi-_PymyFHQQg3808jiz1OJ", "").unwrap();
        assert_eq!((o.tool, o.object), ("calico", None));
        assert_eq!(
            calico_policy_of_comment("KubernetesNetworkPolicy shop/deny-db ingress").as_deref(),
            Some("KubernetesNetworkPolicy shop/deny-db")
        );
        assert_eq!(
            calico_policy_of_comment("Policy shop/knp.default.deny-db egress").as_deref(),
            Some("KubernetesNetworkPolicy shop/deny-db")
        );
        assert_eq!(
            calico_policy_of_comment("GlobalNetworkPolicy default.deny ingress").as_deref(),
            Some("GlobalNetworkPolicy default.deny")
        );
        assert_eq!(calico_policy_of_comment("Start of tier default"), None);
    }

    #[test]
    fn firewalld_and_docker_rules_name_their_zone_and_bridge_and_how_to_see_them() {
        let fw = |chain: &str| owner_of(None, "firewalld", chain, "tcp dport 22 reject");
        let o = fw("filter_IN_public_allow").unwrap();
        assert_eq!(o.object.as_deref(), Some("zone public"));
        assert_eq!(
            o.show.as_deref(),
            Some("firewall-cmd --zone=public --list-all")
        );
        assert_eq!(
            fw("filter_FWD_policy_allow-host-ipv6")
                .unwrap()
                .object
                .as_deref(),
            Some("policy allow-host-ipv6")
        );
        // firewalld 2's dispatch chains: the ingress zone's, the egress zone's on output.
        let zone = |chain: &str| fw(chain).unwrap().object.unwrap();
        assert_eq!(zone("filter_IN_public_to_HOST"), "zone public");
        assert_eq!(zone("filter_FWD_internal_to_public"), "zone internal");
        assert_eq!(zone("nat_POST_internal_to_public"), "zone public");
        assert_eq!(zone("nat_PRE_public_dispatch_stage2"), "zone public");
        assert_eq!(
            owner_of(None, "filter", "IN_home_deny", "")
                .unwrap()
                .object
                .as_deref(),
            Some("zone home")
        );
        // firewalld's own chains that belong to no zone.
        let input = fw("filter_INPUT").unwrap();
        assert_eq!(input.object, None);
        assert_eq!(input.show.as_deref(), Some("firewall-cmd --list-all-zones"));

        let rule = "-A DOCKER-ISOLATION-STAGE-1 -i br-1a2b3c4d5e6f ! -o br-1a2b3c4d5e6f -j DROP";
        let d = owner_of(None, "filter", "DOCKER-ISOLATION-STAGE-1", rule).unwrap();
        assert_eq!(d.object.as_deref(), Some("bridge br-1a2b3c4d5e6f"));
        assert_eq!(
            d.show.as_deref(),
            Some("docker network inspect 1a2b3c4d5e6f")
        );
        let d0 = owner_of(
            None,
            "filter",
            "DOCKER",
            "-A DOCKER ! -i docker0 -o docker0 -j DROP",
        );
        assert_eq!(
            d0.unwrap().show.as_deref(),
            Some("docker network inspect bridge")
        );
        assert_eq!(
            owner_of(None, "filter", "ufw-user-input", "")
                .unwrap()
                .show
                .as_deref(),
            Some("ufw status numbered")
        );
        let kp = owner_of(
            None,
            "filter",
            "KUBE-SERVICES",
            r#"-m comment --comment "ns6/svc6:p80 has no endpoints" -j REJECT"#,
        );
        assert_eq!(
            kp.unwrap().show.as_deref(),
            Some(
                "kubectl -n ns6 get service svc6 -o wide; kubectl -n ns6 get endpointslices \
                 -l kubernetes.io/service-name=svc6"
            )
        );
    }

    #[test]
    fn dockers_direct_access_drop_names_its_bridge() {
        // moby's nftables backend, raw-PREROUTING (as its docs' generated ruleset shows).
        let rule =
            r#"ip daddr 192.0.2.2 iifname != "bridge1" counter drop comment "DROP DIRECT ACCESS""#;
        let o = owner_of(None, "docker-bridges", "raw-PREROUTING", rule).unwrap();
        assert_eq!(o.object.as_deref(), Some("bridge bridge1"));
        let o = owner_of(
            None,
            "filter",
            "DOCKER",
            "-A DOCKER ! -i docker0 -o docker0 -j DROP",
        )
        .unwrap();
        assert_eq!(o.object.as_deref(), Some("bridge docker0"));
    }

    #[test]
    fn kube_proxy_says_why_its_rule_is_there() {
        let rule = r#"-A KUBE-SERVICES -d 172.30.0.46/32 -p tcp -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp --dport 80 -j REJECT"#;
        let o = owner_of(None, "filter", "KUBE-SERVICES", rule).unwrap();
        assert_eq!(o.reason.as_deref(), Some("has no endpoints"));
        assert_eq!(
            o.text(),
            "kube-proxy, Service ns6/svc6:p80 has no endpoints"
        );
        let cluster =
            r#"-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -j KUBE-SVC-X"#;
        assert_eq!(
            owner_of(None, "nat", "KUBE-SERVICES", cluster)
                .unwrap()
                .reason,
            None
        );
    }

    #[test]
    fn kube_router_rejects_name_the_pod_no_policy_let_through() {
        // As kube-router writes it (iptables-save of a node).
        let rule = r#"-A KUBE-POD-FW-DMK5BTVAK65PRJG4 -m comment --comment "rule to REJECT traffic destined for POD name:work-probe namespace: chuggy-work" -m mark ! --mark 0x10000/0x10000 -j REJECT --reject-with icmp-port-unreachable"#;
        let o = owner_of(None, "filter", "KUBE-POD-FW-DMK5BTVAK65PRJG4", rule).unwrap();
        assert_eq!(o.tool, "kube-router");
        assert_eq!(o.object.as_deref(), Some("pod chuggy-work/work-probe"));
        assert_eq!(
            o.show.as_deref(),
            Some(
                "kubectl -n chuggy-work get networkpolicies; kubectl -n chuggy-work get pod \
                 work-probe --show-labels"
            )
        );
        // Since kube-router shortened its comments (comments.go, idComment).
        let new = r#"-A KUBE-POD-FW-X -m comment --comment "shop/web-0 reject" -m mark ! --mark 0x10000/0x10000 -j REJECT"#;
        assert_eq!(
            owner_of(None, "filter", "KUBE-POD-FW-X", new)
                .unwrap()
                .object
                .as_deref(),
            Some("pod shop/web-0")
        );
        let old = r#"-A KUBE-POD-FW-X -m comment --comment "rule to REJECT traffic destined for POD name:web-0 namespace:shop" -j REJECT"#;
        assert_eq!(
            owner_of(None, "filter", "KUBE-POD-FW-X", old)
                .unwrap()
                .object
                .as_deref(),
            Some("pod shop/web-0")
        );
    }

    #[test]
    fn kube_proxy_rules_name_their_service() {
        let o = owner_of(None, "filter",
            "KUBE-EXTERNAL-SERVICES",
            "-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment \"ns2/svc2:p80 has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp --dport 3001 -j DROP",
        )
        .unwrap();
        assert_eq!(
            o.text(),
            "kube-proxy, Service ns2/svc2:p80 has no local endpoints"
        );
        let o = owner_of(
            None,
            "filter",
            "KUBE-FIREWALL",
            "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -j DROP",
        )
        .unwrap();
        assert_eq!(o.text(), "kubelet");
        // nftables mode: the Service is in the chain's name.
        let o = owner_of(
            None,
            "kube-proxy",
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80",
            "ip saddr 10.180.0.1 jump mark-for-masquerade",
        )
        .unwrap();
        assert_eq!(o.text(), "kube-proxy, Service ns1/svc1:p80");
        assert_eq!(
            tool("kube-proxy", "reject-chain", "reject"),
            Some("kube-proxy")
        );
    }

    /// Front-ends with nftables tables of their own, named by their tables (and the object
    /// a chain's name carries); libvirt, flannel and netavark also by their iptables chains.
    #[test]
    fn nftables_front_ends_are_named_by_their_tables() {
        let o = owner_of(
            None,
            "docker-bridges",
            "filter-forward-in__br-dummy",
            "drop",
        )
        .unwrap();
        assert_eq!(
            (o.tool, o.object.as_deref()),
            ("docker", Some("bridge br-dummy"))
        );
        assert_eq!(
            tool("netavark", "NETAVARK-ISOLATION-1", ""),
            Some("netavark")
        );
        assert_eq!(tool("libvirt_network", "guest_output", ""), Some("libvirt"));
        assert_eq!(tool("incus", "fwd.incusbr0", ""), Some("incus"));
        assert_eq!(tool("lxd", "fwd.lxdbr0", ""), Some("lxd"));
        let o = owner_of(None, "fw4", "reject_from_wan", "").unwrap();
        assert_eq!((o.tool, o.object.as_deref()), ("fw4", Some("zone wan")));
        assert_eq!(owner_of(None, "fw4", "input", "").unwrap().object, None);
        assert_eq!(tool("flannel-ipv4", "forward", ""), Some("flannel"));
        assert_eq!(tool("calico", "filter-FORWARD", ""), Some("calico"));
        assert_eq!(tool("filter", "LIBVIRT_FWI", ""), Some("libvirt"));
        assert_eq!(tool("filter", "FLANNEL-FWD", ""), Some("flannel"));
        assert_eq!(tool("filter", "NETAVARK_FORWARD", ""), Some("netavark"));
        assert_eq!(tool("filter", "LIBVIRT_SOMETHING", ""), None);
        assert_eq!(tool("mytable", "input", ""), None);
    }

    /// kube-router's policy chains are kube-router's, not kube-proxy's (12 of 12 drops
    /// on a kube-router node were put on kube-proxy by a `KUBE-` prefix guess); a `KUBE-`
    /// chain no Kubernetes component names stays unknown.
    #[test]
    fn kubernetes_components_are_named_by_their_own_chains() {
        assert_eq!(
            tool("filter", "KUBE-POD-FW-ABCDEFGHIJKLMNOP", ""),
            Some("kube-router")
        );
        assert_eq!(
            tool("filter", "KUBE-NWPLCY-DEFAULT", ""),
            Some("kube-router")
        );
        assert_eq!(tool("filter", "KUBE-ROUTER-INPUT", ""), Some("kube-router"));
        assert_eq!(
            tool("kube-router-filter-ipv4", "INPUT", ""),
            Some("kube-router")
        );
        assert_eq!(
            tool("filter", "KUBE-SVC-ABCDEFGHIJKLMNOP", ""),
            Some("kube-proxy")
        );
        assert_eq!(tool("filter", "KUBE-NODE-PORT", ""), Some("kube-proxy"));
        assert_eq!(tool("nat", "KUBE-FIREWALL", ""), Some("kube-proxy"));
        assert_eq!(tool("filter", "KUBE-KUBELET-CANARY", ""), Some("kubelet"));
        assert_eq!(tool("filter", "KUBE-SOMETHING-ELSE", ""), None);
    }

    #[test]
    fn fail2ban_is_known_by_its_sets_in_builtin_chains() {
        let o = owner_of(
            None,
            "filter",
            "INPUT",
            "-A INPUT -p tcp -m multiport --dports 22 -m set --match-set f2b-sshd6 src -j REJECT",
        )
        .unwrap();
        assert_eq!(o.text(), "fail2ban, jail sshd");
        assert_eq!(tool("f2b-table", "f2b-chain", ""), Some("fail2ban"));
        // Its nftables action: the jail is in the set's name, never the chain's.
        let nft = owner_of(
            None,
            "f2b-table",
            "f2b-chain",
            "ip saddr @addr-set-sshd reject",
        )
        .unwrap();
        assert_eq!(nft.object.as_deref(), Some("sshd"));
        assert_eq!(
            owner_of(None, "f2b-table", "f2b-chain", "").unwrap().object,
            None
        );
        let nft = owner_of(None, "filter", "input", "ip saddr @f2b-sshd reject").unwrap();
        assert_eq!(nft.object.as_deref(), Some("sshd"));
    }
}
