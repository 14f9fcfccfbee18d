//! Records shared by the droptrace eBPF programs and the userspace CLI.
//!
//! Both sides see the very same bytes, so every type here is `#[repr(C)]`, made of
//! fixed-size integers and arrays, with explicit padding: the ring buffer carries raw
//! [`DropEvent`]s and the loader writes a [`Config`] into the program's read-only data.
#![no_std]

/// Offset value meaning "this field does not exist on the running kernel".
pub const NO_OFFSET: u32 = u32::MAX;

/// `Config::drop_reason` value that lifts the reason filter (`--all-reasons`).
pub const ANY_REASON: u32 = u32::MAX;

/// Reason reported when a netfilter drop was recognised by its location (kernels without
/// drop reasons, or `--detect location`).
pub const REASON_BY_LOCATION: u32 = u32::MAX - 1;

/// `DropEvent::ct_info` value when the packet has no conntrack entry attached.
pub const CT_NONE: u8 = 0xff;

pub mod netfilter;
pub use netfilter::ipproto::has_ports;

/// Address families as the kernel spells them (`AF_INET`, `AF_INET6`).
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Bytes of the packet (from the network header on) copied into each record, for pcapng.
pub const HEADER_BYTES: usize = 128;

/// Kernel stack frames kept per record: enough to reach the softirq entry
/// (`net_rx_action`, `run_timer_softirq`) from a drop on the receive path, which is how
/// a sender is told from whoever the softirq interrupted.
pub const STACK_FRAMES: usize = 48;

/// Length of a kernel task command name and of an interface name (`TASK_COMM_LEN`, `IFNAMSIZ`).
pub const NAME_LEN: usize = 16;

/// Nanoseconds between two records of the same flow: the kernel counts every packet, the
/// ring buffer carries the first one and then at most one update per flow per interval.
pub const FLOW_UPDATE_NS: u64 = 1_000_000_000;

/// Flows tracked at once (LRU: the least recently dropped flow is evicted first; userspace
/// accounts for counts lost that way by comparing with the `STAT_MATCHED` total).
pub const MAX_FLOWS: u32 = 131_072;

/// Indexes into the per-CPU `STATS` array.
pub const STAT_MATCHED: u32 = 0;
pub const STAT_LOST: u32 = 1;
/// Drops counted in no aggregate: [`MAX_AGGREGATES`] and its reserve both full (never
/// expected; userspace then says the aggregate totals fall short by this much).
pub const STAT_UNAGGREGATED: u32 = 2;
pub const STAT_COUNT: u32 = 3;

/// Aggregate keys (see [`AggKey`]) the kernel keeps. Keys are never evicted: once
/// [`MAX_AGGREGATES`] minus [`AGG_RESERVE`] are in use, a new key's drops go to its
/// coarse `other` key (no port, flags or state), for which the reserve is kept.
pub const MAX_AGGREGATES: u32 = 65_536;
pub const AGG_RESERVE: u32 = 4_096;

/// Top stack frames that identify a drop's site (see [`site_of`]): deep enough to reach
/// the caller of `nf_hook_slow`, which names the hook, past the BPF program's own frame,
/// the tracepoint's, and `kfree_skb_reason`'s.
pub const SITE_FRAMES: usize = 10;

/// A drop site: a digest of the top [`SITE_FRAMES`] frames of its kernel stack. The
/// kernel keys aggregates by it (the hook is known only from the stack, and a stack is too
/// big for a key); userspace computes the same digest from records' stacks to learn which
/// hook a site is. Never 0, which means "not known".
#[inline(always)]
pub fn site_of(stack: &[u64; STACK_FRAMES]) -> u32 {
    // FNV-1a over whole words: cheap in BPF (no loop over bytes), good enough to tell a
    // few hundred call paths apart; a collision merges two sites, which userspace sees as
    // one site with two hooks and reports as unknown.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < SITE_FRAMES {
        h = (h ^ stack[i]).wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    ((h >> 32) as u32 ^ h as u32) | 1
}

/// What the kernel counts drops by, beside flows: where they were dropped (namespace,
/// reason, location, [`site_of`] the stack) and the fields rules decide on that are not
/// per flow (protocol, destination port, TCP flags, conntrack state). A port scan fills
/// the flow table; it does not fill this, so totals by rule, hook and port stay exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggKey {
    pub netns: u32,
    pub reason: u32,
    pub location: u64,
    pub site: u32,
    /// Destination port; ICMP: type << 8 | code (as `FlowKey::sport`).
    pub dport: u16,
    pub family: u8,
    pub proto: u8,
    pub tcp_flags: u8,
    pub ct_info: u8,
    /// 1: the coarse key of drops whose own key did not fit (port, flags, state zeroed).
    pub other: u8,
    // Padding as a byte and a word, not `[u8; 5]`: zeroing that array compiles to a
    // `memset` call in BPF, a byte-by-byte loop paid by every drop that misses the cache.
    pub _pad: u8,
    pub _pad2: u32,
}

impl AggKey {
    /// The aggregate a flow's drops are counted in, dropped at `site`.
    #[inline(always)]
    pub fn of(key: &FlowKey, site: u32) -> AggKey {
        let icmp = key.proto == 1 || key.proto == 58;
        AggKey {
            netns: key.netns,
            reason: key.reason,
            location: key.location,
            site,
            dport: if icmp { key.sport } else { key.dport },
            family: key.family,
            proto: key.proto,
            tcp_flags: key.tcp_flags,
            ct_info: key.ct_info,
            other: 0,
            _pad: 0,
            _pad2: 0,
        }
    }

    /// The coarse key this key's drops go to when the table has no room for it.
    #[inline(always)]
    pub fn coarse(&self) -> AggKey {
        let mut key = *self;
        key.coarsen();
        key
    }

    /// Makes this key its [`AggKey::coarse`] key, in place (the eBPF side keeps one key on
    /// its stack, not two).
    #[inline(always)]
    pub fn coarsen(&mut self) {
        self.dport = 0;
        self.tcp_flags = 0;
        self.ct_info = 0;
        self.other = 1;
    }
}

/// Packets and bytes of one [`AggKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggCount {
    pub packets: u64,
    pub bytes: u64,
}

/// `DropEvent::flags` bits.
pub mod flags {
    /// `skb->sk` was set; `DropEvent::sk` holds the socket address.
    pub const HAS_SOCKET: u8 = 1 << 0;
    /// The L4 header was parsed (ports, TCP flags or ICMP type are meaningful).
    pub const HAS_L4: u8 = 1 << 1;
    /// `DropEvent::uid` was read from the socket (`sk->sk_uid`).
    pub const HAS_UID: u8 = 1 << 2;
    /// A non-first IPv4/IPv6 fragment: no L4 header in this packet.
    pub const FRAGMENT: u8 = 1 << 3;
}

/// Kernel struct member offsets (bytes) read from BTF at start-up.
///
/// Rust eBPF programs have no CO-RE relocations, so userspace resolves every offset the
/// program needs from `/sys/kernel/btf/vmlinux` and hands them over at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_dev: u32,
    pub skb_sk: u32,
    pub skb_mark: u32,
    pub skb_len: u32,
    pub skb_refdst: u32,
    pub skb_nfct: u32,
    pub dst_dev: u32,
    pub dev_ifindex: u32,
    pub dev_name: u32,
    pub dev_nd_net: u32,
    pub sk_net: u32,
    pub sk_uid: u32,
    pub net_ns_inum: u32,
    /// `nf_conn.mark` (CONFIG_NF_CONNTRACK_MARK), from vmlinux's BTF or nf_conntrack's.
    pub ct_mark: u32,
    /// `sizeof(struct sk_buff)`: the program copies the whole struct once per drop and reads
    /// its fields from the copy (one helper call instead of eight). 0 when unknown or larger
    /// than [`SKB_COPY_BYTES`]: fields are then read one by one.
    pub skb_size: u32,
}

/// Largest `sk_buff` the program copies whole (224 bytes on 6.18).
pub const SKB_COPY_BYTES: usize = 256;

/// An address prefix the program matches in the kernel (`--src`, `--dst`).
///
/// Address and netmask are two native-endian 64-bit words each, computed by userspace, so
/// the program compares words instead of looping over bits (loops multiply the verifier's
/// work, which old kernels cap at a million instructions).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// 0 = no filter; otherwise `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// Prefix length in bits.
    pub len: u8,
    /// 1 when the match is negated.
    pub negate: u8,
    pub _pad: [u8; 5],
    /// Network address (IPv4 in the first four bytes), as the packet's bytes.
    pub addr: [u64; 2],
    pub mask: [u64; 2],
}

impl Prefix {
    pub const ANY: Prefix = Prefix {
        family: 0,
        len: 0,
        negate: 0,
        _pad: [0; 5],
        addr: [0; 2],
        mask: [0; 2],
    };

    /// Packs 16 address bytes into the two words the program compares.
    pub fn words(bytes: &[u8; 16]) -> [u64; 2] {
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&bytes[..8]);
        hi.copy_from_slice(&bytes[8..]);
        [u64::from_ne_bytes(lo), u64::from_ne_bytes(hi)]
    }
}

/// An inclusive port range; `{0, 65535}` matches everything.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ANY: PortRange = PortRange {
        lo: 0,
        hi: u16::MAX,
    };
}

/// Everything the loader tells the program: offsets and the in-kernel filters.
///
/// Filters are applied before a record is reserved in the ring buffer, so a busy host
/// pays only for the drops the user asked to see.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub offsets: Offsets,
    /// `enum skb_drop_reason` value to keep, or [`ANY_REASON`].
    pub drop_reason: u32,
    /// Network namespace inode to keep, or 0 for all.
    pub netns: u32,
    /// `AF_INET`/`AF_INET6`, or 0 for both.
    pub family: u8,
    /// IP protocol number, or 0 for any.
    pub proto: u8,
    /// 1 to copy the first [`HEADER_BYTES`] of the packet into each record.
    pub capture_headers: u8,
    pub _pad: u8,
    pub sport: PortRange,
    pub dport: PortRange,
    pub src: Prefix,
    pub dst: Prefix,
    /// Offsets of `skbaddr`, `location` and `reason` in the classic `skb/kfree_skb`
    /// tracepoint record (`struct trace_event_raw_kfree_skb`); `reason` is [`NO_OFFSET`] on
    /// kernels before 5.17.
    pub tp_skb: u32,
    pub tp_location: u32,
    pub tp_reason: u32,
    /// 1: a drop is a netfilter drop when its location lies in `nf_ranges` (kernels
    /// without drop reasons), instead of by reason.
    pub match_location: u8,
    pub _pad2: [u8; 11],
    /// `[start, end)` address ranges of the functions that free packets on a netfilter
    /// verdict (`nf_hook_slow`, `nf_hook_slow_list`, `nft_do_chain`); unused pairs are `[0, 0)`.
    pub nf_ranges: [u64; 6],
    /// Where the rule engines' own verdicts are read (see [`VerdictConfig`]).
    pub verdicts: VerdictConfig,
}

impl Config {
    /// A configuration that keeps nothing until offsets are filled in: every offset unknown.
    pub const EMPTY: Config = Config {
        offsets: Offsets {
            skb_head: NO_OFFSET,
            skb_network_header: NO_OFFSET,
            skb_dev: NO_OFFSET,
            skb_sk: NO_OFFSET,
            skb_mark: NO_OFFSET,
            skb_len: NO_OFFSET,
            skb_refdst: NO_OFFSET,
            skb_nfct: NO_OFFSET,
            dst_dev: NO_OFFSET,
            dev_ifindex: NO_OFFSET,
            dev_name: NO_OFFSET,
            dev_nd_net: NO_OFFSET,
            sk_net: NO_OFFSET,
            sk_uid: NO_OFFSET,
            net_ns_inum: NO_OFFSET,
            ct_mark: NO_OFFSET,
            skb_size: 0,
        },
        drop_reason: ANY_REASON,
        netns: 0,
        family: 0,
        proto: 0,
        capture_headers: 0,
        _pad: 0,
        sport: PortRange::ANY,
        dport: PortRange::ANY,
        src: Prefix::ANY,
        dst: Prefix::ANY,
        tp_skb: NO_OFFSET,
        tp_location: NO_OFFSET,
        tp_reason: NO_OFFSET,
        match_location: 0,
        _pad2: [0; 11],
        nf_ranges: [0; 6],
        verdicts: VerdictConfig::NONE,
    };
}

/// Length of the table and chain names in a [`KernelVerdict`] (`XT_TABLE_MAXNAMELEN`;
/// longer nftables names are cut).
pub const VERDICT_NAME_LEN: usize = 32;

/// Which rule engine returned a [`KernelVerdict`].
pub mod engine {
    /// No verdict was seen for this packet.
    pub const NONE: u8 = 0;
    /// `nft_do_chain` (nftables and iptables-nft).
    pub const NFTABLES: u8 = 1;
    /// `ipt_do_table` / `ip6t_do_table` (iptables-legacy).
    pub const XTABLES: u8 = 2;
}

/// The verdict a rule engine function returned for the packet that was then dropped, as
/// seen by the kprobe/kretprobe pair on that function (tracer-ebpf `verdict`): the kernel
/// itself names the table and, for nftables, the base chain.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelVerdict {
    /// The packet the verdict was for (matched against the freed `sk_buff`).
    pub skb: u64,
    /// The function's return value (`NF_DROP` is 0 in its low byte).
    pub verdict: u32,
    /// [`engine`] value.
    pub engine: u8,
    /// `NFPROTO_*` of the table: `nft_table.family`, `xt_table.af`.
    pub family: u8,
    /// `nf_hook_state.hook` (`enum nf_inet_hooks`), 0xff when unknown.
    pub hook: u8,
    pub _pad: u8,
    /// Table name, NUL-padded.
    pub table: [u8; VERDICT_NAME_LEN],
    /// nftables base chain name, NUL-padded (empty for xtables: the hook names it).
    pub chain: [u8; VERDICT_NAME_LEN],
}

/// Offsets and argument positions for the verdict programs, from the BTF of the
/// `nf_tables`, `ip_tables` and `ip6_tables` modules (or vmlinux, where they are built in).
/// An engine is watched when userspace attaches its probes, which it does only with these
/// known.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerdictConfig {
    pub _pad_head: [u8; 2],
    /// Bit shift and width of `nft_table.family` (a bitfield in a u16 at `table_family`).
    pub table_family_shift: u8,
    pub table_family_bits: u8,
    /// `nft_pktinfo.skb` and `.state` (`.xt.state` before 5.15).
    pub pkt_skb: u32,
    pub pkt_state: u32,
    /// `nf_hook_state.hook` (a u8).
    pub state_hook: u32,
    /// `nft_chain.name` (a `char *`) and `.table`.
    pub chain_name: u32,
    pub chain_table: u32,
    /// `nft_table.name` (a `char *`) and the u16 holding `.family`.
    pub table_name: u32,
    pub table_family: u32,
    /// `xt_table.name` (inline `char[32]`) and `.af` (u8).
    pub xt_table_name: u32,
    pub xt_table_af: u32,
    /// Argument positions of `ipt_do_table`'s table, skb and state: `(skb, state, table)`
    /// before 5.16, `(priv, skb, state)` since.
    pub xt_arg_table: u8,
    pub xt_arg_skb: u8,
    pub xt_arg_state: u8,
    /// Whether the verdict programs may be attached (kprobes, an engine's BTF, not
    /// `--kernel-verdicts off`): when not, the drop program does not look for a verdict.
    pub watched: u8,
    pub _pad_tail: u32,
}

impl KernelVerdict {
    pub const NONE: KernelVerdict = KernelVerdict {
        skb: 0,
        verdict: 0,
        engine: engine::NONE,
        family: 0,
        hook: 0,
        _pad: 0,
        table: [0; VERDICT_NAME_LEN],
        chain: [0; VERDICT_NAME_LEN],
    };
}

impl VerdictConfig {
    pub const NONE: VerdictConfig = VerdictConfig {
        _pad_head: [0; 2],
        table_family_shift: 0,
        table_family_bits: 0,
        pkt_skb: NO_OFFSET,
        pkt_state: NO_OFFSET,
        state_hook: NO_OFFSET,
        chain_name: NO_OFFSET,
        chain_table: NO_OFFSET,
        table_name: NO_OFFSET,
        table_family: NO_OFFSET,
        xt_table_name: NO_OFFSET,
        xt_table_af: NO_OFFSET,
        xt_arg_table: 0,
        xt_arg_skb: 0,
        xt_arg_state: 0,
        watched: 0,
        _pad_tail: 0,
    };
}

/// What makes drops "the same": the per-flow counting key in the kernel.
///
/// For ICMP, `sport` holds `type << 8 | code`. The drop location separates verdicts of
/// different engines for the same packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub location: u64,
    pub netns: u32,
    pub reason: u32,
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub proto: u8,
    pub tcp_flags: u8,
    pub ct_info: u8,
}

/// Per-flow state kept in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowState {
    /// Packets dropped so far (atomic add).
    pub count: u64,
    /// Bytes (`skb->len`) dropped so far.
    pub bytes: u64,
    pub first_ns: u64,
    /// When a record of this flow was last written to the ring buffer.
    pub last_emit_ns: u64,
    /// The first packet's task and socket owner, for flows whose records were all lost.
    pub pid: u32,
    pub uid: u32,
    pub comm: [u8; NAME_LEN],
    /// The flow's drop site ([`site_of`] its first drop's stack): its drops are counted
    /// in the aggregate `AggKey::of(key, site)`. 0 when not known.
    pub site: u32,
    pub _pad: u32,
}

impl FlowState {
    /// The state of a flow known only by its counts: no first packet's task, socket owner
    /// or time (a flow counted again after the table evicted it, or still in a CPU's cache).
    pub const fn counted_only(count: u64, bytes: u64, site: u32) -> FlowState {
        FlowState {
            count,
            bytes,
            first_ns: 0,
            last_emit_ns: 0,
            pid: 0,
            uid: u32::MAX,
            comm: [0; NAME_LEN],
            site,
            _pad: 0,
        }
    }
}

/// Packets of one flow a CPU counts in its [`FlowCache`] before adding them to the flow
/// table (one hash lookup and two atomic adds per batch instead of per packet).
pub const CACHE_BATCH: u64 = 1024;

/// Packets of a batch that still read the clock, so a slow flow gets its record once a
/// [`FLOW_UPDATE_NS`] (a retransmitted SYN, sent from a timer, is news) while a flood
/// reads it for 1 packet in 64.
pub const CACHE_TIMED: u64 = 16;

/// The flow a CPU dropped last, counted there: a flood of one flow then costs a key
/// comparison and two plain adds per packet. The program moves `pending` into the flow
/// table when the CPU drops another flow, or after [`CACHE_BATCH`] packets, clearing
/// `pending` before adding it there; userspace reads the flow table first and these
/// caches second, so a flow's count read live is never counted twice, and read after
/// the program is detached it is exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowCache {
    pub key: FlowKey,
    /// Packets and bytes of `key` counted here and not yet in the flow table.
    pub pending: u64,
    pub bytes: u64,
    /// 0 until the CPU's first drop.
    pub live: u64,
    /// When the cache took the flow, or last wrote a record of it.
    pub since_ns: u64,
    /// The flow's drop site (`FlowState::site`), for its aggregate.
    pub site: u32,
    pub _pad: u32,
    /// The flow's first header bytes as the program compares them before parsing (see
    /// `raw_key` in tracer-ebpf): zeros when the flow's packets cannot be told that way.
    pub raw: [u64; 4],
}

/// One dropped packet, as the program writes it into the ring buffer.
///
/// Written for the first packet of a flow and then at most every [`FLOW_UPDATE_NS`];
/// `count` is the flow's cumulative packet count at that moment, so userspace stays exact
/// even when records are lost.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DropEvent {
    /// Cumulative packets of this flow, this one included.
    pub count: u64,
    /// Cumulative bytes (`skb->len`) of this flow, this one included, as far as the flow
    /// table has them (a CPU's cache may hold more; see [`FlowCache`]).
    pub bytes: u64,
    /// `bpf_ktime_get_ns()` at the drop (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Return address inside the function that freed the skb.
    pub location: u64,
    /// `skb->sk` when set (see [`flags::HAS_SOCKET`]); identifies the socket.
    pub sk: u64,
    /// Network namespace inode.
    pub netns: u32,
    /// `skb->dev` ifindex (0 when unset).
    pub ifindex: u32,
    /// Index of the route's output device (`skb_dst(skb)->dev`), 0 when there is no route.
    pub out_ifindex: u32,
    /// Current task: thread-group id (the process) and thread id.
    pub pid: u32,
    pub tid: u32,
    /// Socket owner uid (`sk->sk_uid`), valid with [`flags::HAS_UID`].
    pub uid: u32,
    /// `enum skb_drop_reason`.
    pub reason: u32,
    /// `skb->mark`.
    pub mark: u32,
    /// `skb->len`.
    pub len: u32,
    /// Bytes of `stack` the kernel filled (a multiple of 8), negative when it could not be
    /// taken.
    pub stack_bytes: i32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Ports in host byte order (0 when the protocol has none).
    pub sport: u16,
    pub dport: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u8,
    /// IP protocol number of the L4 header (after IPv6 extension headers).
    pub proto: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// `skb->_nfct & NFCT_INFOMASK` (enum ip_conntrack_info), or [`CT_NONE`].
    pub ct_info: u8,
    /// [`flags`] bits.
    pub flags: u8,
    pub _pad: u8,
    /// Bytes valid in `headers` (0 unless capture was asked for).
    pub headers_len: u16,
    pub _pad2: u16,
    /// The flow's drop site (`FlowState::site`): its drops are counted in the aggregate
    /// `AggKey::of(key, site)`.
    pub site: u32,
    /// The connection's mark (`nf_conn.mark`): valid when `ct_info` names a connection and
    /// `Offsets::ct_mark` was found (zero otherwise).
    pub ct_mark: u32,
    pub comm: [u8; NAME_LEN],
    pub ifname: [u8; NAME_LEN],
    pub out_ifname: [u8; NAME_LEN],
    /// What the rule engine returned for this packet, when the verdict programs are
    /// attached and saw it (`engine` is [`engine::NONE`] otherwise).
    pub kernel: KernelVerdict,
    /// The kernel stack of the drop, innermost frame first (return addresses).
    pub stack: [u64; STACK_FRAMES],
    /// The packet from its network header on.
    pub headers: [u8; HEADER_BYTES],
}

/// `inventory`: the kernel's per-flow table of connections the host starts (TCP connect
/// attempts, UDP and ICMP echo sends). Userspace sizes the maps at load time; the object
/// declares them tiny so that loading it for `watch` costs nothing.
pub mod inventory {
    /// Flows remembered at once (LRU: the least recently active flow goes first).
    pub const MAX_FLOWS: u32 = 65_536;
    /// Route lookups waiting for their send (LRU).
    pub const MAX_PENDING: u32 = 16_384;
    /// Bytes of the first-sighting ring buffer.
    pub const RING_BYTES: u32 = 1 << 20;
    /// First packets that left, remembered at once (LRU; see [`super::PassedKey`]).
    pub const MAX_PASSED: u32 = 16_384;

    /// Indexes into the per-CPU `INV_STATS` array.
    pub const STAT_LOST: u32 = 0;
    pub const STAT_COUNT: u32 = 1;

    /// `InventoryState::source`: which hook saw the flow first.
    pub const SOURCE_TCP_CONNECT: u8 = 1;
    pub const SOURCE_ROUTED_SEND: u8 = 2;
    pub const SOURCE_CONNECTED_SEND: u8 = 3;

    /// `TCP_SYN_SENT` in the kernel's TCP state numbering.
    pub const TCP_SYN_SENT: u32 = 2;
    /// `TCP_ESTABLISHED`: also the state of a connected UDP or ping socket.
    pub const TCP_ESTABLISHED: u8 = 1;
    /// `LOOPBACK_IFINDEX`: the input interface of every route lookup for an outgoing packet.
    pub const LOOPBACK_IFINDEX: u32 = 1;
}

/// One outbound flow in the inventory: a destination service as seen from one process.
///
/// For ICMP, `dport` holds `type << 8 | code` (an echo request: 8 << 8, ICMPv6 128 << 8).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InventoryKey {
    pub daddr: [u8; 16],
    pub netns: u32,
    /// Thread-group id of the process that opened the flow.
    pub tgid: u32,
    pub dport: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u8,
    pub proto: u8,
}

/// What the kernel remembers of a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InventoryState {
    /// `bpf_ktime_get_ns()` of the first and the latest attempt.
    pub first_ns: u64,
    pub last_ns: u64,
    /// TCP connection attempts, or datagrams sent (atomic add).
    pub count: u64,
    /// cgroup v2 id of the sender (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    /// Source address of the first attempt, when already chosen (zero otherwise).
    pub saddr: [u8; 16],
    /// Socket owner uid (`sk->sk_uid`), or `u32::MAX` when unknown.
    pub uid: u32,
    /// Socket mark (`sk->sk_mark`), as `-m mark` / `meta mark` see it.
    pub mark: u32,
    /// Source port of the first attempt (0 before the kernel picked one).
    pub sport: u16,
    /// `inventory::SOURCE_*`.
    pub source: u8,
    pub _pad: u8,
    /// Thread that made the first attempt.
    pub tid: u32,
    pub comm: [u8; NAME_LEN],
}

/// A flow's first sighting, written to the inventory ring buffer so userspace can read
/// the process's details from /proc while it still exists.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InventoryEvent {
    pub key: InventoryKey,
    pub _pad: u32,
    pub state: InventoryState,
}

/// The first packet of an attempt that got through the firewall (every hook accepted it):
/// a TCP SYN, a UDP datagram or an ICMP echo request leaving a local socket, seen at the
/// device queue, with the conntrack state the firewall saw it in. Counted per key, so
/// userspace can tell which rule let it through (`--attempts`).
///
/// `ct_info` is `enum ip_conntrack_info` (original direction only: 0 established,
/// 1 related, 2 new) or [`CT_NONE`] (untracked).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PassedKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub netns: u32,
    /// Socket owner uid (`sk->sk_uid`), as `-m owner` / `meta skuid` see it.
    pub uid: u32,
    /// `skb->mark` (`-m mark`, `meta mark`).
    pub mark: u32,
    pub sport: u16,
    /// For ICMP, `type << 8 | code`.
    pub dport: u16,
    pub family: u8,
    pub proto: u8,
    pub ct_info: u8,
    pub _pad: u8,
    /// The output device's name (`-o`, `oifname`).
    pub oif: [u8; NAME_LEN],
}

/// A route lookup for an outgoing datagram, waiting (by thread, protocol and source port)
/// for the send that made it: a lookup alone may be a `connect()` that never sends (glibc
/// sorts addresses that way), or the reversed flow of an ICMP error.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InventoryPending {
    pub key: InventoryKey,
    pub mark: u32,
    pub saddr: [u8; 16],
    pub uid: u32,
    pub sport: u16,
    pub _pad: u16,
}

/// Offsets the inventory programs need, read from BTF (or tracefs) at start-up.
/// [`NO_OFFSET`] marks what this kernel lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InventoryConfig {
    /// `sock:inet_sock_set_state` record (`struct trace_event_raw_inet_sock_set_state`).
    pub tp_skaddr: u32,
    pub tp_newstate: u32,
    pub tp_sport: u32,
    pub tp_dport: u32,
    pub tp_family: u32,
    pub tp_protocol: u32,
    pub tp_saddr: u32,
    pub tp_daddr: u32,
    pub tp_saddr_v6: u32,
    pub tp_daddr_v6: u32,
    /// `struct flowi4` / `struct flowi6`: input interface, protocol, mark, uid, addresses,
    /// and `uli` (ports, or ICMP type and code).
    pub fl4_iif: u32,
    pub fl4_proto: u32,
    pub fl4_mark: u32,
    pub fl4_uid: u32,
    pub fl4_saddr: u32,
    pub fl4_daddr: u32,
    pub fl4_uli: u32,
    pub fl6_iif: u32,
    pub fl6_proto: u32,
    pub fl6_mark: u32,
    pub fl6_uid: u32,
    pub fl6_saddr: u32,
    pub fl6_daddr: u32,
    pub fl6_uli: u32,
    /// `fib_nh_common.nhc_dev`: the IPv4 route's device, whose namespace is the flow's.
    pub nhc_dev: u32,
    /// `fib6_result.f6i` and `net.ipv6.fib6_null_entry`: an IPv6 lookup that found no route.
    pub res6_f6i: u32,
    pub net_fib6_null_entry: u32,
    /// `struct sock`: mark, protocol, and the connected peer (`__sk_common`).
    pub sk_mark: u32,
    pub sk_protocol: u32,
    pub sk_family: u32,
    pub sk_state: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub _pad: u32,
}

impl InventoryConfig {
    pub const EMPTY: InventoryConfig = InventoryConfig {
        tp_skaddr: NO_OFFSET,
        tp_newstate: NO_OFFSET,
        tp_sport: NO_OFFSET,
        tp_dport: NO_OFFSET,
        tp_family: NO_OFFSET,
        tp_protocol: NO_OFFSET,
        tp_saddr: NO_OFFSET,
        tp_daddr: NO_OFFSET,
        tp_saddr_v6: NO_OFFSET,
        tp_daddr_v6: NO_OFFSET,
        fl4_iif: NO_OFFSET,
        fl4_proto: NO_OFFSET,
        fl4_mark: NO_OFFSET,
        fl4_uid: NO_OFFSET,
        fl4_saddr: NO_OFFSET,
        fl4_daddr: NO_OFFSET,
        fl4_uli: NO_OFFSET,
        fl6_iif: NO_OFFSET,
        fl6_proto: NO_OFFSET,
        fl6_mark: NO_OFFSET,
        fl6_uid: NO_OFFSET,
        fl6_saddr: NO_OFFSET,
        fl6_daddr: NO_OFFSET,
        fl6_uli: NO_OFFSET,
        nhc_dev: NO_OFFSET,
        res6_f6i: NO_OFFSET,
        net_fib6_null_entry: NO_OFFSET,
        sk_mark: NO_OFFSET,
        sk_protocol: NO_OFFSET,
        sk_family: NO_OFFSET,
        sk_state: NO_OFFSET,
        sk_daddr: NO_OFFSET,
        sk_rcv_saddr: NO_OFFSET,
        sk_dport: NO_OFFSET,
        sk_num: NO_OFFSET,
        sk_v6_daddr: NO_OFFSET,
        sk_v6_rcv_saddr: NO_OFFSET,
        _pad: 0,
    };
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data: #[repr(C)], integers and arrays only, padding explicit.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::DropEvent {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::FlowCache {}
    unsafe impl aya::Pod for super::AggKey {}
    unsafe impl aya::Pod for super::AggCount {}
    unsafe impl aya::Pod for super::InventoryConfig {}
    unsafe impl aya::Pod for super::InventoryKey {}
    unsafe impl aya::Pod for super::InventoryState {}
    unsafe impl aya::Pod for super::InventoryEvent {}
    unsafe impl aya::Pod for super::PassedKey {}
}

// The inventory records cross the kernel boundary as raw bytes: no implicit padding.
const _: () = assert!(size_of::<InventoryKey>() == 28);
const _: () = assert!(size_of::<InventoryState>() == 80);
const _: () = assert!(size_of::<InventoryEvent>() == 112);
const _: () = assert!(size_of::<InventoryPending>() == 56);
const _: () = assert!(size_of::<InventoryConfig>() == 38 * 4);
const _: () = assert!(size_of::<PassedKey>() == 68);

// The layouts both sides rely on, with every padding byte explicit.
const _: () = assert!(size_of::<Prefix>() == 40);
const _: () = assert!(size_of::<VerdictConfig>() == 48);
const _: () = assert!(size_of::<KernelVerdict>() == 80);
const _: () = assert!(size_of::<Config>() == 288);
const _: () = assert!(size_of::<FlowKey>() == 56);
const _: () = assert!(size_of::<FlowCache>() == 128);
const _: () = assert!(size_of::<FlowState>() == 64);
const _: () = assert!(size_of::<AggKey>() == 32);
const _: () = assert!(size_of::<AggCount>() == 16);
const _: () = assert!(size_of::<DropEvent>() == 776);
// The program loads whole words of the headers (`raw_key` in tracer-ebpf).
const _: () = assert!(core::mem::offset_of!(DropEvent, headers) % 8 == 0);
