//! A namespace's `local` routing tables, both families, for address type tests
//! (`-m addrtype`, nft `fib ... type`): what `ip -j route show table local` lists, read
//! over rtnetlink (`RTM_GETROUTE`) from a thread in the namespace. Addresses come and go
//! without a generation id to tell, so the tables are read with every ruleset read; two
//! `ip` runs each time were a sixth of droptrace's CPU while it re-read an unchanged
//! ruleset.

use std::{collections::HashMap, io, net::IpAddr, path::Path};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, Parseable as _};
use netlink_packet_route::{
    RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteMessage},
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use ruleset::addrtype::{LocalRoute, LocalTable};

/// `RT_TABLE_LOCAL` and `RTM_NEWROUTE` (include/uapi/linux/rtnetlink.h).
const RT_TABLE_LOCAL: u32 = 255;
const RTM_NEWROUTE: u16 = 24;

/// The `local` tables of the namespace at `netns` (None: ours).
pub fn read(netns: Option<&Path>) -> io::Result<LocalTable> {
    crate::tools::on_thread_in(netns, read_here)
}

/// The `local` tables of this thread's namespace.
fn read_here() -> io::Result<LocalTable> {
    let socket = Socket::new(NETLINK_ROUTE)?;
    // Every family's routes (the header's family unspecified); the kernel filters by
    // table only on request (strict checking), so the local table is picked out here.
    let mut msg = NetlinkMessage::from(RouteNetlinkMessage::GetRoute(RouteMessage::default()));
    msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    msg.header.sequence_number = 1;
    msg.finalize();
    let mut request = vec![0; msg.buffer_len()];
    msg.serialize(&mut request);
    let mut table = LocalTable::default();
    let mut names = HashMap::new();
    super::netlink::dump(&socket, &request, 1, |kind, payload| {
        if kind != RTM_NEWROUTE {
            return Ok(());
        }
        let route = RouteMessage::parse(payload)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("route: {e}")))?;
        if let Some(route) = local_route(&route, &mut names) {
            table.routes.push(route);
        }
        Ok(())
    })?;
    Ok(table)
}

/// `route` as the local table's, when it is in that table and has a destination (`ip`
/// prints `default` for none, which address type tests never look up).
fn local_route(
    route: &RouteMessage,
    names: &mut HashMap<u32, Option<String>>,
) -> Option<LocalRoute> {
    let (mut table, mut dst, mut oif) = (u32::from(route.header.table), None, None);
    for a in &route.attributes {
        match a {
            // Table ids past 255 are only in the attribute.
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(v4)) => dst = Some(IpAddr::V4(*v4)),
            RouteAttribute::Destination(RouteAddress::Inet6(v6)) => dst = Some(IpAddr::V6(*v6)),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    if table != RT_TABLE_LOCAL {
        return None;
    }
    let dst = IpNet::new(dst?, route.header.destination_prefix_length).ok()?;
    let dev = oif.and_then(|index| {
        names
            .entry(index)
            .or_insert_with(|| {
                nix::net::if_::if_indextoname(index)
                    .ok()
                    .and_then(|name| name.into_string().ok())
            })
            .clone()
    });
    Some(LocalRoute {
        dst,
        kind: u8::from(route.header.kind),
        dev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real kernel, in a namespace of the test thread's own: the routes read are
    /// those `ip -j route show table local` lists, with addresses of both families on a
    /// veth device and on lo, and a route added to the local table by hand (AnyIP).
    /// Needs root and iproute2, as CI has.
    #[test]
    fn the_local_tables_are_those_ip_lists() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare a network namespace (root needed)");
            let ip = |args: &str| {
                let out = std::process::Command::new("ip")
                    .args(args.split_whitespace())
                    .output()
                    .expect("run ip");
                assert!(out.status.success(), "ip {args}: {out:?}");
                String::from_utf8(out.stdout).unwrap()
            };
            ip("link set lo up");
            ip("link add dt0 type veth peer name dt1");
            ip("link set dt0 up");
            ip("addr add 192.0.2.1/24 dev dt0");
            ip("-6 addr add 2001:db8::1/64 dev dt0 nodad");
            ip("route add local 198.51.100.0/24 dev lo table local");
            let mut listed = LocalTable::default();
            for family in ["-4", "-6"] {
                listed
                    .add_ip_json(&ip(&format!("-j {family} route show table local")))
                    .unwrap();
            }
            let read = read(None).unwrap();
            let sorted = |t: &LocalTable| {
                let mut routes: Vec<_> = t
                    .routes
                    .iter()
                    .map(|r| (r.dst.to_string(), r.kind, r.dev.clone()))
                    .collect();
                routes.sort();
                routes
            };
            assert_eq!(sorted(&read), sorted(&listed));
            assert!(read.is_local("198.51.100.7".parse().unwrap()));
            assert!(read.is_local("2001:db8::1".parse().unwrap()));
            assert!(!read.is_local("192.0.2.2".parse().unwrap()));
        })
        .join()
        .unwrap();
    }
}
