//! libvirt's network names, for the bridges its rules name.
//!
//! libvirt writes its filter rules per bridge (`oif "virbr0" counter reject` in `table ip
//! libvirt_network`, `-o virbr0 -j REJECT` in LIBVIRT_FWI: src/network/network_nftables.c
//! and network_iptables.c), while an engineer acts on the network (`virsh net-edit
//! default`). A running libvirtd keeps each active network's state in
//! /run/libvirt/network/NAME.xml (`cfg->stateDir`, src/network/bridge_driver_conf.c): a
//! `<networkstatus>` holding the `<network>` with its `<name>` and `<bridge name=…/>`
//! (`virNetworkObjFormat`). Only active networks have such a file, and only they have
//! rules.

use std::{collections::HashMap, io::Read as _, path::Path, sync::Mutex, time::SystemTime};

/// Where libvirtd (system instance) keeps its active networks' state.
pub const STATE_DIR: &str = "/run/libvirt/network";

/// Status files larger than this are not libvirt's: not read.
const MAX_STATUS_BYTES: u64 = 1 << 20;

/// The active network whose bridge is `bridge`, from [`STATE_DIR`] (read again only when
/// the directory changed: libvirt replaces a status file by renaming a new one in).
pub fn network_of_bridge(bridge: &str) -> Option<String> {
    type Cache = Option<(SystemTime, HashMap<String, String>)>;
    static CACHE: Mutex<Cache> = Mutex::new(None);
    let dir = Path::new(STATE_DIR);
    let changed = std::fs::metadata(dir).and_then(|m| m.modified()).ok()?;
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if cache.as_ref().is_none_or(|(seen, _)| *seen != changed) {
        *cache = Some((changed, networks_by_bridge(dir)));
    }
    cache.as_ref()?.1.get(bridge).cloned()
}

/// Bridge name → network name, for every status file in `dir`.
fn networks_by_bridge(dir: &Path) -> HashMap<String, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "xml"))
        .filter_map(|e| {
            let mut text = String::new();
            std::fs::File::open(e.path())
                .ok()?
                .take(MAX_STATUS_BYTES)
                .read_to_string(&mut text)
                .ok()?;
            network_and_bridge(&text)
        })
        .map(|(network, bridge)| (bridge, network))
        .collect()
}

/// A status file's (or a network definition's) network name and bridge.
fn network_and_bridge(xml: &str) -> Option<(String, String)> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let network = doc.descendants().find(|n| n.has_tag_name("network"))?;
    let child = |tag: &str| network.children().find(|n| n.has_tag_name(tag));
    let name = child("name")?.text()?.trim().to_string();
    let bridge = child("bridge")?.attribute("name")?.to_string();
    (!name.is_empty() && !bridge.is_empty()).then_some((name, bridge))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status file as libvirtd writes it for the default network (`virNetworkObjFormat`
    /// around the definition of tests/networkxml2xmlout/nat-network.xml's form).
    const STATUS: &str = "<networkstatus>
  <class_id bitmap='0-2'/>
  <floor sum='0'/>
  <network>
    <name>default</name>
    <uuid>81ff0d90-c91e-6742-64da-4a736edb9a9b</uuid>
    <forward mode='nat'/>
    <bridge name='virbr0' stp='on' delay='0'/>
    <ip address='192.168.122.1' netmask='255.255.255.0'>
      <dhcp>
        <range start='192.168.122.2' end='192.168.122.254'/>
      </dhcp>
    </ip>
  </network>
</networkstatus>
";

    #[test]
    fn a_status_file_gives_its_network_and_bridge() {
        assert_eq!(
            network_and_bridge(STATUS),
            Some(("default".into(), "virbr0".into()))
        );
        // A network without a bridge of its own (macvtap, hostdev) names none.
        let direct = STATUS.replace("<bridge name='virbr0' stp='on' delay='0'/>", "");
        assert_eq!(network_and_bridge(&direct), None);
        assert_eq!(network_and_bridge("<networkstatus"), None);
    }
}
