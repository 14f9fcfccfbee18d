//! The packet's headers: IPv4/IPv6 and the L4 header parsed from the record's copy, the
//! conntrack info, and the user's filters (family, protocol, ports, prefixes) applied to
//! them, first on the peeked bytes and then on the parse.

use tracer_common::{
    AF_INET, AF_INET6, CT_NONE, DropEvent, HEADER_BYTES, PortRange, Prefix, flags,
    netfilter::ipproto::{ICMP as IPPROTO_ICMP, ICMPV6 as IPPROTO_ICMPV6, TCP as IPPROTO_TCP},
};

use super::{CONFIG, flows::store_words, kmem::read};

const IP_VERSION_4: u8 = 4;
/// `NFCT_INFOMASK` in include/linux/skbuff.h: low bits of `skb->_nfct` hold ctinfo.
const NFCT_INFOMASK: u64 = 7;

/// `enum ip_conntrack_info` from `skb->_nfct` (a pointer with ctinfo in its low bits,
/// include/linux/skbuff.h), or [`CT_NONE`] when no entry is attached.
#[inline(always)]
pub(crate) fn ct_info(nfct: u64) -> u8 {
    if nfct & !NFCT_INFOMASK != 0 {
        (nfct & NFCT_INFOMASK) as u8
    } else {
        CT_NONE
    }
}

/// The connection (`struct nf_conn *`) `skb->_nfct` points to, 0 when none is attached.
#[inline(always)]
pub(crate) fn conntrack_of(nfct: u64) -> u64 {
    nfct & !NFCT_INFOMASK
}

/// Bytes read first when [`early_filters`]: an IPv4 header without options or an IPv6
/// header, and the ports after it.
pub(super) const PEEK_BYTES: usize = 44;

/// Whether a port, protocol or family filter is set (read-only data: the verifier keeps
/// only the branch taken).
#[inline(always)]
pub(super) fn early_filters() -> bool {
    let any = |r: PortRange| r.lo == 0 && r.hi == u16::MAX;
    conf!(family) != 0 || conf!(proto) != 0 || !any(conf!(sport)) || !any(conf!(dport))
}

/// Whether the first [`PEEK_BYTES`] of the headers show that [`watched`] will refuse the
/// packet, by family, protocol or ports. `false` when they cannot tell (IPv4 options, IPv6
/// extension headers, a fragment of IPv6): the full parse decides then. A port filter
/// refuses what has no ports, as in `watched`.
#[inline(always)]
pub(super) fn ruled_out_early(h: &[u8; HEADER_BYTES]) -> bool {
    let (family, proto, l4, fragment) = match h[0] {
        // Version 4, 5 words of header: no options. frag_off@6 (offset bits).
        0x45 => (
            AF_INET,
            h[9],
            20,
            u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0,
        ),
        first if first >> 4 == 6 && (tracer_common::has_ports(h[6]) || h[6] == IPPROTO_ICMPV6) => {
            (AF_INET6, h[6], 40, false)
        }
        _ => return false,
    };
    if conf!(family) != 0 && conf!(family) != family {
        return true;
    }
    if conf!(proto) != 0 && conf!(proto) != proto {
        return true;
    }
    let has_ports = tracer_common::has_ports(proto) && !fragment;
    let (sport, dport) = if l4 == 20 {
        (
            u16::from_be_bytes([h[20], h[21]]),
            u16::from_be_bytes([h[22], h[23]]),
        )
    } else {
        (
            u16::from_be_bytes([h[40], h[41]]),
            u16::from_be_bytes([h[42], h[43]]),
        )
    };
    !port_in(conf!(sport), sport, has_ports) || !port_in(conf!(dport), dport, has_ports)
}

/// Whether the user's filters (family, protocol, ports, addresses) take the packet parsed
/// into `e`; `l4_flags` as [`parse_l3`] returns them.
#[inline(always)]
pub(crate) fn watched(e: &DropEvent, l4_flags: u8) -> bool {
    if conf!(family) != 0 && conf!(family) != e.family {
        return false;
    }
    if conf!(proto) != 0 && conf!(proto) != e.proto {
        return false;
    }
    let has_ports = l4_flags & HAS_PORTS != 0;
    if !port_in(conf!(sport), e.sport, has_ports) || !port_in(conf!(dport), e.dport, has_ports) {
        return false;
    }
    prefix_matches(&raw const CONFIG.src, e.family, &e.saddr)
        && prefix_matches(&raw const CONFIG.dst, e.family, &e.daddr)
}

/// `parse_l3`'s result bit: the protocol has ports (beside `flags::HAS_L4` and
/// `flags::FRAGMENT`, which go into the record as they are).
const HAS_PORTS: u8 = 1 << 7;

/// Parses the IPv4 or IPv6 header, then the L4 header, from `e.headers` (the packet's
/// first [`HEADER_BYTES`] bytes from its network header, copied from `l3`) into the
/// record's address, port, TCP and ICMP fields. Only headers beyond those bytes (IPv4
/// options, IPv6 extension headers) are read from the kernel again. Returns
/// `flags::HAS_L4`, `flags::FRAGMENT` and [`HAS_PORTS`] bits.
#[inline(always)]
pub(crate) fn parse_l3(e: &mut DropEvent, l3: u64) -> Option<u8> {
    let first = e.headers[0];
    let mut bits = 0;
    e.sport = 0;
    e.dport = 0;
    e.tcp_flags = 0;
    e.icmp_type = 0;
    e.icmp_code = 0;
    // Where the L4 header starts.
    let l4_off: u64;
    match first >> 4 {
        IP_VERSION_4 => {
            // struct iphdr: ihl:4 version:4, tos, tot_len, id, frag_off@6, ttl, protocol@9,
            // check, saddr@12, daddr@16.
            let h = &e.headers;
            e.family = AF_INET;
            e.proto = h[9];
            if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                bits |= flags::FRAGMENT;
            }
            let (s, d): ([u8; 4], [u8; 4]) =
                (h[12..16].try_into().ok()?, h[16..20].try_into().ok()?);
            // The address in the first four bytes, zeros after (little-endian words).
            store_words(&raw mut e.saddr, [u64::from(u32::from_ne_bytes(s)), 0]);
            store_words(&raw mut e.daddr, [u64::from(u32::from_ne_bytes(d)), 0]);
            l4_off = ((first & 0x0f) as u64) * 4;
        }
        6 => {
            // struct ipv6hdr: nexthdr@6, saddr@8, daddr@24; 40 bytes.
            e.family = AF_INET6;
            e.saddr = e.headers[8..24].try_into().ok()?;
            e.daddr = e.headers[24..40].try_into().ok()?;
            let mut next: u8 = e.headers[6];
            let mut off: u64 = 40;
            // Walk extension headers (RFC 8200 section 4). Every unrolled iteration
            // multiplies the paths the verifier walks through the rest of the program, and
            // pre-6.x verifiers give up at a million instructions: two headers (hop-by-hop
            // then routing or fragment) cover what real traffic carries.
            for _ in 0..2 {
                if !matches!(next, 0 | 43 | 60 | 51 | 44) {
                    break;
                }
                let hdr: [u8; 4] = read(l3, off as u32);
                off += match next {
                    51 => (hdr[1] as u64 + 2) * 4,
                    44 => 8,
                    _ => (hdr[1] as u64 + 1) * 8,
                };
                if next == 44 && u16::from_be_bytes([hdr[2], hdr[3]]) & !7 != 0 {
                    bits |= flags::FRAGMENT;
                }
                next = hdr[0];
            }
            e.proto = next;
            l4_off = off;
        }
        _ => return None,
    };
    if bits & flags::FRAGMENT != 0 {
        return Some(bits);
    }
    // The first 14 bytes of the L4 header (ports and TCP flags), from the copy at the two
    // usual offsets (constant indexes the verifier checks once), else from the kernel.
    let l4: [u8; 14] = match l4_off {
        20 => e.headers[20..34].try_into().ok()?,
        40 => e.headers[40..54].try_into().ok()?,
        _ => read(l3 + l4_off, 0),
    };
    match e.proto {
        proto if tracer_common::has_ports(proto) => {
            e.sport = u16::from_be_bytes([l4[0], l4[1]]);
            e.dport = u16::from_be_bytes([l4[2], l4[3]]);
            bits |= HAS_PORTS | flags::HAS_L4;
            if e.proto == IPPROTO_TCP {
                // struct tcphdr: flags byte at offset 13 (CWR..FIN).
                e.tcp_flags = l4[13];
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            e.icmp_type = l4[0];
            e.icmp_code = l4[1];
            bits |= flags::HAS_L4;
        }
        _ => {}
    }
    Some(bits)
}

#[inline(always)]
pub(crate) fn port_in(range: PortRange, port: u16, has_ports: bool) -> bool {
    if range.lo == 0 && range.hi == u16::MAX {
        return true;
    }
    has_ports && port >= range.lo && port <= range.hi
}

/// Whether `addr` is inside `prefix` (a pointer into [`CONFIG`], read field by field).
#[inline(always)]
pub(crate) fn prefix_matches(prefix: *const Prefix, family: u8, addr: &[u8; 16]) -> bool {
    // SAFETY: `prefix` points into CONFIG; volatile keeps the loader's values.
    let field = |p: *const u64| unsafe { core::ptr::read_volatile(p) };
    let want = unsafe { core::ptr::read_volatile(&raw const (*prefix).family) };
    if want == 0 {
        return true;
    }
    let negate = unsafe { core::ptr::read_volatile(&raw const (*prefix).negate) } != 0;
    let words = Prefix::words(addr);
    let differs = |i: usize| unsafe {
        (words[i] ^ field(&raw const (*prefix).addr[i])) & field(&raw const (*prefix).mask[i]) != 0
    };
    let inside = want == family && !differs(0) && !differs(1);
    inside != negate
}
