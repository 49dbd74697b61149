//! Per-packet service NAT with connection tracking, shared by the XDP (uplink) and tc (pod and
//! uplink egress) programs. The callers parse headers and apply the rewrite; this module owns
//! the decisions and the conntrack entries.
//!
//! A translated connection has two entries in `XKUBE_CONNTRACK`:
//! - forward, keyed by the client's original tuple: the backend id (revalidated on every hit)
//!   and the SNAT source if any;
//! - reply, keyed by the tuple the backend's replies carry: the client's original address and
//!   the service address to restore.
//!
//! TCP flows carry their close state on both entries (`CT_F_FIN_*`, `CT_F_RST`): a SYN on a
//! closed flow's tuple (the client reusing its port) opens a new flow, another client may take
//! a closed flow's SNAT port once the backend's TIME_WAIT is over (a second after the close
//! when the client closed first, at once after a reset), and
//! the agent's GC drops closed flows after a minute instead of hours.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use xkube_common::lb::{
    BACKEND_F_LOCAL, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_BACKEND_TIME_WAIT, CT_F_EXTERNAL,
    CT_F_FIN_FORWARD, CT_F_FIN_REPLY, CT_F_RST, CT_F_SNAT, CT_SNAT_REUSE_AFTER_CLOSE_NS,
    CT_SNAT_REUSE_AFTER_TIME_WAIT_NS, CtKey, CtValue, NodeConfig, SVC_F_SNAT_REMOTE, ct_closed,
    flow_hash,
};

use crate::{
    lb::{self, Count, Flow, Origin},
    maps::{XKUBE_CONNTRACK, XKUBE_NODE_CONFIG},
    net::{IPPROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// How many random SNAT source ports are tried for a new connection before giving up. Probes
/// are independent, so with a fraction `f` of the range taken a new flow fails with
/// probability `f^32` (1e-5 at 70 %).
const SNAT_TRIES: u32 = 32;

/// A packet's 5-tuple; addresses and ports in network order.
#[derive(Clone, Copy)]
pub struct Tuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
}

impl Tuple {
    /// A TCP SYN opening a connection (not a SYN-ACK).
    #[inline(always)]
    fn is_syn(&self) -> bool {
        self.proto == IPPROTO_TCP && self.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
    }

    /// The close state (`CT_F_*`) this packet adds to its flow; `reply` when it comes from the
    /// backend.
    #[inline(always)]
    fn close_bits(&self, reply: bool) -> u16 {
        if self.proto != IPPROTO_TCP {
            return 0;
        }
        let mut bits = 0;
        if self.tcp_flags & TCP_RST != 0 {
            bits |= CT_F_RST;
        }
        if self.tcp_flags & TCP_FIN != 0 {
            bits |= if reply {
                CT_F_FIN_REPLY
            } else {
                CT_F_FIN_FORWARD
            };
        }
        bits
    }
}

/// The tuple a translated packet must carry.
#[derive(Clone, Copy)]
pub struct Rewrite {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// Forward path: the backend runs on this node.
    pub local: bool,
    pub rev_nat_id: u16,
}

pub enum Forward {
    /// Not a service frontend (maybe a reply: try [`reply`]).
    NotService,
    /// A service without endpoints.
    Reject,
    Translate(Rewrite),
}

/// The node config, read in place (userspace replaces it whole; copying its 40 bytes out
/// would cost every packet on the uplink a few nanoseconds).
#[inline(always)]
pub fn node_config() -> Option<&'static NodeConfig> {
    XKUBE_NODE_CONFIG.get(0)
}

#[inline(always)]
fn in_cidr(addr: u32, cidr: u32, len: u32) -> bool {
    if len == 0 || len > 32 {
        return len == 0 && cidr == 0;
    }
    let mask = u32::MAX << (32 - len);
    u32::from_be(addr) & mask == u32::from_be(cidr) & mask
}

#[inline(always)]
fn ct_key(t: &Tuple, dir: u8) -> CtKey {
    CtKey {
        src_addr: t.saddr,
        dst_addr: t.daddr,
        src_port: t.sport,
        dst_port: t.dport,
        proto: t.proto,
        dir,
        _pad: 0,
    }
}

/// Whether `addr` is in this node's pod CIDR (false when the node has none).
#[inline(always)]
pub fn in_pod_cidr(addr: u32, cfg: &NodeConfig) -> bool {
    cfg.pod_cidr_len != 0 && in_cidr(addr, cfg.pod_cidr, cfg.pod_cidr_len)
}

/// The forward path: a packet from a client, maybe to a service.
#[inline(always)]
pub fn forward(t: &Tuple, origin: Origin, cfg: &NodeConfig) -> Forward {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(f) = established(t, now) {
        return f;
    }
    let Some(fe) = lb::lookup(t.daddr, t.dport, t.proto, origin) else {
        return Forward::NotService;
    };
    new_flow(t, &fe, origin, cfg, now)
}

/// The forward path for a packet already known to be for frontend `fe` (the uplink looks the
/// frontend up first, so that other packets cost one lookup).
#[inline(always)]
pub fn forward_to(t: &Tuple, fe: &lb::Frontend, origin: Origin, cfg: &NodeConfig) -> Forward {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(f) = established(t, now) {
        return f;
    }
    new_flow(t, fe, origin, cfg, now)
}

/// A packet of a flow in conntrack whose backend still exists. A SYN on the tuple of a closed
/// flow, or of one whose reply entry now belongs to another flow, starts a new flow instead.
#[inline(always)]
fn established(t: &Tuple, now: u64) -> Option<Forward> {
    let fkey = ct_key(t, CT_DIR_FORWARD);
    if let Some(ct) = XKUBE_CONNTRACK.get_ptr_mut(&fkey) {
        // SAFETY: a valid map value pointer; fields are plain integers.
        let v = unsafe { *ct };
        if let Some(b) = lb::backend(v.backend_id, v.rev_nat_id) {
            // The key the backend's replies carry (the SNAT source, or the client itself).
            let rkey = CtKey {
                src_addr: b.addr,
                dst_addr: v.nat_addr,
                src_port: b.port,
                dst_port: v.nat_port,
                proto: t.proto,
                dir: CT_DIR_REPLY,
                _pad: 0,
            };
            let bits = t.close_bits(false);
            let renew = t.is_syn() && (ct_closed(v.flags) || own_reply(&rkey, t, 0, now).is_none());
            if !renew {
                unsafe { (*ct).last_seen = now };
                if bits & !v.flags != 0 {
                    unsafe { (*ct).flags |= bits };
                    let _ = own_reply(&rkey, t, bits, now);
                }
                let snat = v.flags & CT_F_SNAT != 0;
                return Some(Forward::Translate(Rewrite {
                    saddr: if snat { v.nat_addr } else { t.saddr },
                    sport: if snat { v.nat_port } else { t.sport },
                    daddr: b.addr,
                    dport: b.port,
                    local: b.flags & BACKEND_F_LOCAL != 0,
                    rev_nat_id: v.rev_nat_id,
                }));
            }
        }
        // The backend went away or the client opens a new connection on the tuple of a
        // closed one: forget the flow and choose again.
        let _ = XKUBE_CONNTRACK.remove(&fkey);
    }
    None
}

/// The reply entry `rkey` if it still belongs to the flow of client packet `t` (reply entries
/// keep the client's original address and port); adds close state `bits` to it.
#[inline(always)]
fn own_reply(rkey: &CtKey, t: &Tuple, bits: u16, now: u64) -> Option<()> {
    let r = XKUBE_CONNTRACK.get_ptr_mut(rkey)?;
    // SAFETY: a valid map value pointer; fields are plain integers.
    unsafe {
        if (*r).nat_addr != t.saddr || (*r).nat_port != t.sport {
            return None;
        }
        if bits != 0 {
            (*r).flags |= bits;
            (*r).last_seen = now;
        }
    }
    Some(())
}

/// A new flow to frontend `fe`: select a backend, create the conntrack entries.
#[inline(always)]
fn new_flow(t: &Tuple, fe: &lb::Frontend, origin: Origin, cfg: &NodeConfig, now: u64) -> Forward {
    let fkey = ct_key(t, CT_DIR_FORWARD);
    let id = fe.svc.rev_nat_id;
    let flow = Flow {
        client: t.saddr,
        src: t.saddr,
        dst: t.daddr,
        sport: t.sport,
        dport: t.dport,
        proto: t.proto,
    };
    let Some((backend_id, b)) = lb::select(fe, &flow) else {
        lb::count(id, Count::Rejected);
        return Forward::Reject;
    };
    let local = b.flags & BACKEND_F_LOCAL != 0;
    // Who the backend will see as the client:
    // - off-cluster clients reaching a remote backend are SNATed to the node (so replies come
    //   back through this node to be reverse-translated) — the MASQUERADE replacement;
    // - a pod reaching itself through its service (hairpin) gets the bridge address, since a
    //   packet from its own address would be dropped as martian.
    let (snat, nat_addr) = match origin {
        Origin::External => (
            !local
                && fe.svc.flags & SVC_F_SNAT_REMOTE != 0
                && !in_cidr(t.saddr, cfg.cluster_cidr, cfg.cluster_cidr_len),
            cfg.node_addr,
        ),
        Origin::Internal => (b.addr == t.saddr, cfg.hairpin_addr),
    };
    let mut rw = Rewrite {
        saddr: t.saddr,
        sport: t.sport,
        daddr: b.addr,
        dport: b.port,
        local,
        rev_nat_id: id,
    };
    let mut rval = CtValue {
        backend_id,
        nat_addr: t.saddr,
        nat_port: t.sport,
        rev_nat_id: id,
        flags: if snat { CT_F_SNAT } else { 0 }
            | if origin == Origin::External {
                CT_F_EXTERNAL
            } else {
                0
            },
        svc_port: t.dport,
        svc_addr: t.daddr,
        _pad: 0,
        last_seen: now,
    };
    rval.flags |= t.close_bits(false);
    let mut rkey = CtKey {
        src_addr: b.addr,
        dst_addr: t.saddr,
        src_port: b.port,
        dst_port: t.sport,
        proto: t.proto,
        dir: CT_DIR_REPLY,
        _pad: 0,
    };
    if snat {
        rkey.dst_addr = nat_addr;
        rw.saddr = nat_addr;
        let Some(port) = alloc_snat_port(t, cfg, &mut rkey, &rval, now) else {
            lb::count(id, Count::Rejected);
            return Forward::Reject;
        };
        rw.sport = port;
    } else if XKUBE_CONNTRACK.insert(&rkey, &rval, 0).is_err() {
        lb::count(id, Count::Rejected);
        return Forward::Reject;
    }
    rval.nat_addr = rw.saddr;
    rval.nat_port = rw.sport;
    rval.svc_addr = 0;
    rval.svc_port = 0;
    let _ = XKUBE_CONNTRACK.insert(&fkey, &rval, 0);
    lb::count(id, Count::Connection);
    Forward::Translate(rw)
}

/// Picks a SNAT source port for the reply key and inserts the reply entry; returns the port
/// in network order.
///
/// The first probe is a hash of the client's tuple and the backend, so a client reopening a
/// connection from the same port gets the same SNAT port and the backend sees the same tuple
/// (TIME_WAIT accepts a new SYN on it); the other probes are random. A probed port whose
/// entry is this client's own tuple is taken over at once; failing a free port, the first
/// probed port of a flow that may be reused ([`snat_reusable`]) is taken.
#[inline(always)]
fn alloc_snat_port(
    t: &Tuple,
    cfg: &NodeConfig,
    rkey: &mut CtKey,
    rval: &CtValue,
    now: u64,
) -> Option<u16> {
    let min = u32::from(cfg.snat_port_min);
    let span = u32::from(cfg.snat_port_max).saturating_sub(min) + 1;
    if min == 0 {
        return None;
    }
    let mut pick = flow_hash(t.saddr, rkey.src_addr, t.sport, rkey.src_port, t.proto);
    // Port 0 is never in the range (min > 0): it means "none found".
    let mut reusable = 0u16;
    let mut i = 0;
    while i < SNAT_TRIES {
        let port = ((min + pick % span) as u16).to_be();
        rkey.dst_port = port;
        if XKUBE_CONNTRACK
            .insert(&*rkey, rval, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return Some(port);
        }
        if let Some(old) = unsafe { XKUBE_CONNTRACK.get(&*rkey) } {
            if old.nat_addr == t.saddr && old.nat_port == t.sport {
                XKUBE_CONNTRACK.insert(&*rkey, rval, 0).ok()?;
                return Some(port);
            }
            if reusable == 0 && snat_reusable(old, now) {
                reusable = port;
            }
        }
        pick = unsafe { bpf_get_prandom_u32() };
        i += 1;
    }
    if reusable == 0 {
        return None;
    }
    rkey.dst_port = reusable;
    XKUBE_CONNTRACK.insert(&*rkey, rval, 0).ok()?;
    Some(reusable)
}

/// Whether a reply entry's SNAT port may go to another client's new flow: its flow was reset,
/// or closed from both sides and quiet for long enough (the backend's TIME_WAIT when it closed
/// first).
#[inline(always)]
fn snat_reusable(v: &CtValue, now: u64) -> bool {
    if v.flags & CT_F_RST != 0 {
        return true;
    }
    let quiet = if v.flags & CT_F_BACKEND_TIME_WAIT != 0 {
        CT_SNAT_REUSE_AFTER_TIME_WAIT_NS
    } else {
        CT_SNAT_REUSE_AFTER_CLOSE_NS
    };
    ct_closed(v.flags) && now.saturating_sub(v.last_seen) >= quiet
}

/// Where a reply is being looked at.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ReplyAt {
    /// XDP on the uplink: every reply.
    UplinkIngress,
    /// tc on the uplink's egress: replies of flows that came in through the uplink.
    UplinkEgress,
    /// tc on a pod's veth: replies of flows from pods and host processes.
    Pod,
}

/// What the reply path found.
pub enum Reply {
    /// Not a reply of a translated flow (maybe a new flow: try [`forward`]).
    None,
    /// A reply that is translated at another hook (e.g. a local backend's reply to an
    /// external client, restored on the uplink's egress): let it pass untouched.
    Elsewhere,
    Translate(Rewrite),
}

/// The reply path: a packet from a backend back to a translated client.
#[inline(always)]
pub fn reply(t: &Tuple, at: ReplyAt) -> Reply {
    let key = ct_key(t, CT_DIR_REPLY);
    let Some(ct) = XKUBE_CONNTRACK.get_ptr_mut(&key) else {
        return Reply::None;
    };
    // SAFETY: a valid map value pointer.
    let v = unsafe { *ct };
    let external = v.flags & CT_F_EXTERNAL != 0;
    match at {
        ReplyAt::UplinkIngress => {}
        ReplyAt::UplinkEgress if external => {}
        ReplyAt::Pod if !external => {}
        _ => return Reply::Elsewhere,
    }
    unsafe { (*ct).last_seen = bpf_ktime_get_ns() };
    let bits = t.close_bits(true);
    if bits & !v.flags != 0 {
        // The backend closing first ends in TIME_WAIT on its side.
        let tw = if bits & CT_F_FIN_REPLY != 0 && v.flags & (CT_F_FIN_FORWARD | CT_F_RST) == 0 {
            CT_F_BACKEND_TIME_WAIT
        } else {
            0
        };
        unsafe { (*ct).flags |= bits | tw };
        // The forward entry, keyed by the client's original tuple, if it is still this flow's
        // (its source after translation is where this reply goes).
        let fkey = CtKey {
            src_addr: v.nat_addr,
            dst_addr: v.svc_addr,
            src_port: v.nat_port,
            dst_port: v.svc_port,
            proto: t.proto,
            dir: CT_DIR_FORWARD,
            _pad: 0,
        };
        if let Some(f) = XKUBE_CONNTRACK.get_ptr_mut(&fkey) {
            // SAFETY: a valid map value pointer; fields are plain integers.
            unsafe {
                if (*f).nat_addr == t.daddr && (*f).nat_port == t.dport {
                    (*f).flags |= bits;
                }
            }
        }
    }
    Reply::Translate(Rewrite {
        saddr: v.svc_addr,
        sport: v.svc_port,
        daddr: v.nat_addr,
        dport: v.nat_port,
        local: false,
        rev_nat_id: v.rev_nat_id,
    })
}

/// Counts a translated packet.
#[inline(always)]
pub fn count_packet(rev_nat_id: u16, len: u64) {
    lb::count(rev_nat_id, Count::Packet(len));
}
