//! The service load-balancer maps (DESIGN.md section 5, modelled on Cilium's `lb4` maps).
//!
//! Byte order: every IPv4 address and every port in these types is in **network byte order**
//! (as in packets and in `bpf_sock_addr.user_ip4` / `user_port`). Protocol numbers, counts, ids,
//! flags and times are host order.
//!
//! Layout of a service with `n` backends in [`SERVICES`]:
//! - slot 0 (the frontend): [`ServiceValue::count`] = `n`, flags, service id, affinity timeout;
//! - slots `1..=n`: [`ServiceValue::backend_id`] names an entry of [`BACKENDS`].
//!
//! A backend id belongs to exactly one service (its [`Backend::rev_nat_id`] is the service id),
//! so conntrack and affinity entries revalidate a cached backend with one lookup. Writers add
//! backends, then slots, then the frontend; removals go in reverse, so a reader never follows a
//! slot to a missing backend nor a count past the written slots.

/// Services: [`ServiceKey`] -> [`ServiceValue`] (hash).
pub const SERVICES: &str = "XKUBE_SERVICES";
pub const SERVICES_MAX: u32 = 262_144;
/// Backends: backend id (`u32`) -> [`Backend`] (hash).
pub const BACKENDS: &str = "XKUBE_BACKENDS";
pub const BACKENDS_MAX: u32 = 262_144;
/// Reverse NAT: service id (`u16` in a `u32` key) -> [`RevNat`] (hash).
pub const REVNAT: &str = "XKUBE_REVNAT";
pub const REVNAT_MAX: u32 = 65_536;
/// Addresses owned by this node: address (`u32`, network order) -> `u32` flags (hash).
/// NodePort frontends (address 0) answer on these.
pub const LOCAL_ADDRS: &str = "XKUBE_LOCAL_ADDRS";
pub const LOCAL_ADDRS_MAX: u32 = 64;
/// Node configuration: one [`NodeConfig`] at index 0 (array).
pub const NODE_CONFIG: &str = "XKUBE_NODE_CONFIG";
/// Socket-LB reverse translation for UDP replies and `getpeername`: [`SockRevNatKey`] ->
/// [`SockRevNatValue`] (LRU hash).
pub const SOCK_REVNAT: &str = "XKUBE_SOCK_REVNAT";
pub const SOCK_REVNAT_MAX: u32 = 131_072;
/// Connection tracking for per-packet NAT (tc and XDP): [`CtKey`] -> [`CtValue`] (LRU hash).
pub const CONNTRACK: &str = "XKUBE_CONNTRACK";
pub const CONNTRACK_MAX: u32 = 262_144;
/// ClientIP session affinity: [`AffinityKey`] -> [`AffinityValue`] (LRU hash).
pub const AFFINITY: &str = "XKUBE_AFFINITY";
pub const AFFINITY_MAX: u32 = 65_536;
/// Maglev lookup tables: [`MaglevKey`] -> backend id `u32` (hash).
pub const MAGLEV: &str = "XKUBE_MAGLEV";
/// Maglev table size per service (prime). Cilium defaults to 16381; a smaller table keeps the
/// map small at the cost of a coarser balance (still < 1% imbalance for up to ~25 backends).
pub const MAGLEV_TABLE_SIZE: u32 = 1021;
pub const MAGLEV_MAX: u32 = MAGLEV_TABLE_SIZE * 256;
/// Per-CPU counters per service id: index = service id -> [`ServiceCounters`] (per-CPU array).
pub const SERVICE_COUNTERS: &str = "XKUBE_SERVICE_COUNTERS";
pub const SERVICE_COUNTERS_LEN: u32 = 65_536;

/// Frontend address filter: one array entry of [`FRONTEND_FILTER_WORDS`] `u64` words (64 KiB),
/// one bit per [`frontend_filter_bit`] of every exact frontend address (ClusterIP,
/// externalIP, LB IP). A clear bit proves a destination is no exact frontend with one inlined
/// array lookup, so the XDP uplink passes transit traffic without a hash lookup; a set bit may
/// be a collision and the services map decides. One entry, so userspace reads and writes the
/// whole filter with one system call each.
pub const FRONTEND_FILTER: &str = "XKUBE_FRONTEND_FILTER";
/// log2 of the filter's bits: 524,288 bits, about 2% of non-frontend addresses collide with
/// 10,000 frontend addresses, 17% with 100,000.
pub const FRONTEND_FILTER_BITS_LOG2: u32 = 19;
pub const FRONTEND_FILTER_WORDS: usize = 1 << (FRONTEND_FILTER_BITS_LOG2 - 6);
/// The value of the filter's one entry.
pub type FrontendFilterWords = [u64; FRONTEND_FILTER_WORDS];

/// The filter bit of `addr` (network order, as in packets and [`ServiceKey::addr`]):
/// Fibonacci hashing of the raw word, its top [`FRONTEND_FILTER_BITS_LOG2`] bits. Both the
/// programs and userspace use this function.
#[inline(always)]
pub const fn frontend_filter_bit(addr: u32) -> u32 {
    addr.wrapping_mul(0x9E37_79B1) >> (32 - FRONTEND_FILTER_BITS_LOG2)
}

/// bpffs directory under which each node's datapath pins its objects
/// (`<PIN_ROOT>/<node>/maps/<map>`, `<PIN_ROOT>/<node>/links/<program>`).
pub const PIN_ROOT: &str = "/sys/fs/bpf/xkube";
/// Subdirectory of a node's pin directory holding its maps.
pub const PIN_MAPS_DIR: &str = "maps";
/// Subdirectory of a node's pin directory holding its program links.
pub const PIN_LINKS_DIR: &str = "links";

/// Every map of the load-balancer datapath, by name.
pub const MAP_NAMES: [&str; 11] = [
    SERVICES,
    BACKENDS,
    REVNAT,
    LOCAL_ADDRS,
    NODE_CONFIG,
    FRONTEND_FILTER,
    MAGLEV,
    CONNTRACK,
    AFFINITY,
    SOCK_REVNAT,
    SERVICE_COUNTERS,
];

/// Program names in the object file.
pub mod programs {
    pub const SOCK_CONNECT4: &str = "xkube_sock_connect4";
    pub const SOCK_SENDMSG4: &str = "xkube_sock_sendmsg4";
    pub const SOCK_RECVMSG4: &str = "xkube_sock_recvmsg4";
    pub const SOCK_GETPEERNAME4: &str = "xkube_sock_getpeername4";
    pub const XDP_UPLINK: &str = "xkube_xdp_uplink";
    pub const TC_UPLINK_EGRESS: &str = "xkube_tc_uplink_egress";
    pub const TC_POD_INGRESS: &str = "xkube_tc_pod_ingress";
    pub const TC_POD_EGRESS: &str = "xkube_tc_pod_egress";
    pub const XDP_PASS: &str = "xkube_xdp_pass";
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Scope of a [`ServiceKey`]: the default scope is what external traffic (XDP on the uplink)
/// and services without `externalTrafficPolicy: Local` use. A service with
/// [`SVC_F_TWO_SCOPES`] also has an internal-scope copy with all backends, used by the socket
/// and pod paths, while its default scope lists only node-local backends.
pub const SCOPE_DEFAULT: u8 = 0;
pub const SCOPE_INTERNAL: u8 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Frontend address, network order; 0 for NodePort frontends (any [`LOCAL_ADDRS`] entry).
    pub addr: u32,
    /// Frontend port, network order.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// [`SCOPE_DEFAULT`] or [`SCOPE_INTERNAL`].
    pub scope: u8,
    /// 0 = frontend, `1..=count` = backend slots.
    pub slot: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 12);

/// The frontend is a ClusterIP.
pub const SVC_F_CLUSTER_IP: u16 = 1 << 0;
/// The frontend is a NodePort (key address 0).
pub const SVC_F_NODE_PORT: u16 = 1 << 1;
/// The frontend is one of `spec.externalIPs`.
pub const SVC_F_EXTERNAL_IP: u16 = 1 << 2;
/// The frontend is a `status.loadBalancer.ingress[].ip`.
pub const SVC_F_LOAD_BALANCER: u16 = 1 << 3;
/// `sessionAffinity: ClientIP`; see [`ServiceValue::affinity_timeout`].
pub const SVC_F_AFFINITY: u16 = 1 << 4;
/// Backends are chosen through the service's Maglev table instead of at random.
pub const SVC_F_MAGLEV: u16 = 1 << 5;
/// `externalTrafficPolicy: Local`: the default scope lists node-local backends only and an
/// internal-scope copy lists them all.
pub const SVC_F_TWO_SCOPES: u16 = 1 << 6;
/// Traffic from outside the cluster to a remote backend is SNATed to the node address.
pub const SVC_F_SNAT_REMOTE: u16 = 1 << 7;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Slots `1..`: the backend id. Slot 0: 0.
    pub backend_id: u32,
    /// Slot 0: the number of backend slots. 0 means no endpoints: reject.
    pub count: u16,
    /// The 16-bit service id (reverse NAT, affinity, conntrack, Maglev, counters).
    pub rev_nat_id: u16,
    /// `SVC_F_*` (slot 0).
    pub flags: u16,
    pub _pad: u16,
    /// ClientIP affinity timeout in seconds (slot 0, with [`SVC_F_AFFINITY`]).
    pub affinity_timeout: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);

/// The backend runs on this node.
pub const BACKEND_F_LOCAL: u8 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Network order.
    pub addr: u32,
    /// Network order.
    pub port: u16,
    pub proto: u8,
    /// `BACKEND_F_*`.
    pub flags: u8,
    /// The service this backend id belongs to.
    pub rev_nat_id: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 12);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNat {
    /// Service address, network order (0 for a NodePort: the node address the client used).
    pub addr: u32,
    /// Service port, network order.
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<RevNat>() == 8);

/// The node's own address: NodePort frontends and SNAT use it.
pub const LOCAL_F_NODE: u32 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeConfig {
    /// The node's primary address (SNAT source), network order.
    pub node_addr: u32,
    /// The pod network of this node (podCIDR), network order, and its prefix length.
    pub pod_cidr: u32,
    pub pod_cidr_len: u32,
    /// The cluster's pod network (`--cluster-cidr`), network order, and its prefix length.
    /// Sources inside it are never SNATed.
    pub cluster_cidr: u32,
    pub cluster_cidr_len: u32,
    /// SNAT source port range, host order, inclusive.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// The uplink's interface index.
    pub uplink_ifindex: u32,
    /// Source address for hairpin traffic (a pod reaching itself through its service): the
    /// pod bridge's address, network order.
    pub hairpin_addr: u32,
    /// `NODE_F_*`.
    pub flags: u32,
    /// The lowest and highest NodePort programmed, host order (`min > max`: none). Packets to
    /// the node on other ports skip the NodePort lookup.
    pub node_port_min: u16,
    pub node_port_max: u16,
}
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 40);

/// The node has addresses besides `node_addr` (in `XKUBE_LOCAL_ADDRS`): a NodePort on another
/// destination needs the local-address lookup. Without it, the uplink decides a packet for
/// neither a frontend nor a translated flow with one map lookup.
pub const NODE_F_EXTRA_ADDRS: u32 = 1 << 0;
/// Some exact frontend (an externalIP, a LoadBalancer IP) is a node address. Without it, a
/// packet to the node's address on a port that is neither a NodePort nor a SNAT port is for
/// the node itself: the uplink passes it without any map lookup.
pub const NODE_F_FRONTEND_ON_NODE: u32 = 1 << 1;

/// [`FRONTEND_FILTER`] holds every exact frontend address: a clear bit means "no exact
/// frontend". Set once userspace has written the filter (an upgraded node's first program
/// run with older maps ignores the empty filter until then).
pub const NODE_F_FRONTEND_FILTER: u32 = 1 << 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevNatKey {
    /// `bpf_get_socket_cookie` of the client socket.
    pub cookie: u64,
    /// The backend address, network order.
    pub addr: u32,
    /// The backend port, network order.
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockRevNatKey>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevNatValue {
    /// The service address the application used, network order.
    pub addr: u32,
    /// The service port the application used, network order.
    pub port: u16,
    pub rev_nat_id: u16,
}
const _: () = assert!(core::mem::size_of::<SockRevNatValue>() == 8);

/// A connection as seen in one direction. Addresses and ports in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    /// [`CT_DIR_FORWARD`] (client -> service, before translation) or [`CT_DIR_REPLY`]
    /// (backend -> translated source, as the reply arrives).
    pub dir: u8,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 16);

pub const CT_DIR_FORWARD: u8 = 0;
pub const CT_DIR_REPLY: u8 = 1;

/// The forward entry also rewrote the source (SNAT to the node or hairpin address).
pub const CT_F_SNAT: u16 = 1 << 0;
/// The flow came in through the uplink (XDP). Its replies are translated on the uplink only:
/// a reply rewritten to the node's own address on a pod interface would be dropped by the
/// stack as a martian (local source arriving from outside).
pub const CT_F_EXTERNAL: u16 = 1 << 1;
/// TCP state, kept on both entries of a flow: the client sent a FIN.
pub const CT_F_FIN_FORWARD: u16 = 1 << 2;
/// TCP state: the backend sent a FIN.
pub const CT_F_FIN_REPLY: u16 = 1 << 3;
/// TCP state: either side sent a RST.
pub const CT_F_RST: u16 = 1 << 4;
/// TCP state, on the reply entry: the backend sent the first FIN, so it ends in TIME_WAIT.
pub const CT_F_BACKEND_TIME_WAIT: u16 = 1 << 5;

/// Whether a TCP flow with these `CT_F_*` flags is over: reset, or closed from both sides.
/// A closed flow's SNAT port may be taken by a new flow, a SYN on its tuple starts a new flow,
/// and the agent's GC drops it after a short timeout instead of the established one.
#[inline(always)]
pub const fn ct_closed(flags: u16) -> bool {
    flags & CT_F_RST != 0
        || flags & (CT_F_FIN_FORWARD | CT_F_FIN_REPLY) == CT_F_FIN_FORWARD | CT_F_FIN_REPLY
}

/// How long a flow the backend closed first keeps its SNAT port from other clients after its
/// last packet: the backend holds the tuple in TIME_WAIT that long (60 s on Linux), and a SYN
/// from another client, whose TCP timestamps have another random offset, would be refused
/// there by PAWS. The same client reopening its own tuple may take the port at once (Linux NAT
/// allows that too), and a reset flow leaves no TIME_WAIT behind.
pub const CT_SNAT_REUSE_AFTER_TIME_WAIT_NS: u64 = 60_000_000_000;
/// How long a flow the client closed first keeps its SNAT port: the backend leaves no
/// TIME_WAIT, but the last ACK (or a retransmitted FIN) must still find the flow's entries.
pub const CT_SNAT_REUSE_AFTER_CLOSE_NS: u64 = 1_000_000_000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// Forward: the chosen backend id (revalidated on every hit).
    pub backend_id: u32,
    /// Forward: the source address after SNAT; reply: the original client address.
    pub nat_addr: u32,
    /// Forward: the source port after SNAT; reply: the original client port (network order).
    pub nat_port: u16,
    pub rev_nat_id: u16,
    /// `CT_F_*`.
    pub flags: u16,
    /// Reply: the service port the client used (network order).
    pub svc_port: u16,
    /// Reply: the service address the client used (network order).
    pub svc_addr: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns` of the last packet; the agent's GC removes idle entries.
    pub last_seen: u64,
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 32);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// Client address, network order.
    pub client_addr: u32,
    pub rev_nat_id: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns` of the last use.
    pub last_used: u64,
}
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MaglevKey {
    pub rev_nat_id: u16,
    pub _pad: u16,
    /// `0..MAGLEV_TABLE_SIZE`.
    pub index: u32,
}
const _: () = assert!(core::mem::size_of::<MaglevKey>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceCounters {
    pub packets: u64,
    pub bytes: u64,
    /// New connections (socket connects, new conntrack entries, UDP sends by the socket LB).
    pub connections: u64,
    /// New connections refused: the service had no endpoints, or no SNAT source port was free.
    pub rejected: u64,
}
const _: () = assert!(core::mem::size_of::<ServiceCounters>() == 32);

/// The Maglev/flow hash of a 5-tuple (addresses and ports as stored, network order). Used by
/// the programs to index a Maglev table; userspace uses it in tests to predict choices.
#[inline(always)]
pub const fn flow_hash(src: u32, dst: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h: u32 = 0x9e37_79b9;
    h = mix(h ^ src);
    h = mix(h ^ dst);
    h = mix(h ^ ((sport as u32) << 16 | dport as u32));
    mix(h ^ proto as u32)
}

#[inline(always)]
const fn mix(mut x: u32) -> u32 {
    // murmur3 finaliser
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], Copy, contain only integers and have explicit
    // padding fields, so every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for RevNat {}
    unsafe impl aya::Pod for NodeConfig {}
    unsafe impl aya::Pod for SockRevNatKey {}
    unsafe impl aya::Pod for SockRevNatValue {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for MaglevKey {}
    unsafe impl aya::Pod for ServiceCounters {}
}
