//! Per-packet service NAT with connection tracking, shared by the XDP (uplink) and tc (pod and
//! uplink egress) programs. The callers parse headers and apply the rewrite; this module owns
//! the decisions and the conntrack entries.
//!
//! A translated connection has two entries in `XKUBE_CONNTRACK`:
//! - forward, keyed by the client's original tuple: the backend id (revalidated on every hit)
//!   and the SNAT source if any;
//! - reply, keyed by the tuple the backend's replies carry: the client's original address and
//!   the service address to restore.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use xkube_common::lb::{
    BACKEND_F_LOCAL, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_EXTERNAL, CT_F_SNAT, CtKey, CtValue,
    NodeConfig, SVC_F_SNAT_REMOTE, flow_hash,
};

use crate::{
    lb::{self, Count, Flow, Origin},
    maps::{XKUBE_CONNTRACK, XKUBE_NODE_CONFIG},
};

/// How many SNAT source ports are tried for a new connection before giving up.
const SNAT_TRIES: u32 = 16;

/// A packet's 5-tuple; addresses and ports in network order.
#[derive(Clone, Copy)]
pub struct Tuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
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

#[inline(always)]
pub fn node_config() -> Option<NodeConfig> {
    XKUBE_NODE_CONFIG.get(0).copied()
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

/// A packet of a flow in conntrack whose backend still exists.
#[inline(always)]
fn established(t: &Tuple, now: u64) -> Option<Forward> {
    let fkey = ct_key(t, CT_DIR_FORWARD);
    if let Some(ct) = XKUBE_CONNTRACK.get_ptr_mut(&fkey) {
        // SAFETY: a valid map value pointer; fields are plain integers.
        let v = unsafe { *ct };
        if let Some(b) = lb::backend(v.backend_id, v.rev_nat_id) {
            unsafe { (*ct).last_seen = now };
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
        // The backend went away: forget the flow and choose again.
        let _ = XKUBE_CONNTRACK.remove(&fkey);
    }
    None
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
        let Some(port) = alloc_snat_port(t, cfg, &mut rkey, &rval) else {
            return Forward::Reject;
        };
        rw.sport = port;
    } else if XKUBE_CONNTRACK.insert(&rkey, &rval, 0).is_err() {
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

/// Picks a free SNAT source port for the reply key and inserts the reply entry; returns the
/// port in network order.
#[inline(always)]
fn alloc_snat_port(t: &Tuple, cfg: &NodeConfig, rkey: &mut CtKey, rval: &CtValue) -> Option<u16> {
    let min = u32::from(cfg.snat_port_min);
    let span = u32::from(cfg.snat_port_max).saturating_sub(min) + 1;
    if min == 0 {
        return None;
    }
    let h = flow_hash(t.saddr, t.daddr, t.sport, t.dport, t.proto);
    let mut i = 0;
    while i < SNAT_TRIES {
        let port = ((min + (h.wrapping_add(i.wrapping_mul(7919))) % span) as u16).to_be();
        rkey.dst_port = port;
        if XKUBE_CONNTRACK
            .insert(&*rkey, rval, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return Some(port);
        }
        i += 1;
    }
    None
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
