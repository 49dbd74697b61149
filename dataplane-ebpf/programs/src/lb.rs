//! Service lookup and backend selection, shared by the socket, tc and XDP programs.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use xkube_common::lb::{
    AffinityKey, AffinityValue, Backend, LOCAL_F_NODE, MAGLEV_TABLE_SIZE, MaglevKey,
    NODE_F_EXTRA_ADDRS, NODE_F_FRONTEND_FILTER, NodeConfig, SCOPE_DEFAULT, SCOPE_INTERNAL,
    SVC_F_AFFINITY, SVC_F_MAGLEV, SVC_F_TWO_SCOPES, ServiceKey, ServiceValue, flow_hash,
    frontend_filter_bit,
};

use crate::maps::{
    XKUBE_AFFINITY, XKUBE_BACKENDS, XKUBE_FRONTEND_FILTER, XKUBE_LOCAL_ADDRS, XKUBE_MAGLEV,
    XKUBE_SERVICE_COUNTERS, XKUBE_SERVICES,
};

/// Where the traffic comes from, which decides the scope of a two-scope service.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// From a pod or a host process on this node (socket and pod paths).
    Internal,
    /// From outside the node (the uplink).
    External,
}

/// A frontend found for a destination.
pub struct Frontend {
    pub key: ServiceKey,
    pub svc: ServiceValue,
}

/// Finds the frontend for `addr:port/proto`: an exact frontend (ClusterIP, externalIP, LB IP),
/// else a NodePort frontend when `addr` is one of this node's addresses.
#[inline(always)]
pub fn lookup(addr: u32, port: u16, proto: u8, origin: Origin) -> Option<Frontend> {
    let mut key = ServiceKey {
        addr,
        port,
        proto,
        scope: SCOPE_DEFAULT,
        slot: 0,
        _pad: 0,
    };
    // SAFETY: the value is copied out immediately; entries are only replaced whole.
    let mut svc = unsafe { XKUBE_SERVICES.get(&key) }.copied();
    if svc.is_none() {
        let local = unsafe { XKUBE_LOCAL_ADDRS.get(&addr) }
            .copied()
            .unwrap_or(0);
        if local & LOCAL_F_NODE != 0 {
            key.addr = 0;
            svc = unsafe { XKUBE_SERVICES.get(&key) }.copied();
        }
    }
    let mut svc = svc?;
    if origin == Origin::Internal && svc.flags & SVC_F_TWO_SCOPES != 0 {
        key.scope = SCOPE_INTERNAL;
        svc = unsafe { XKUBE_SERVICES.get(&key) }.copied()?;
    }
    Some(Frontend { key, svc })
}

/// [`lookup`] for traffic arriving on the uplink, where most packets are for no service: the
/// exact frontend is looked up only when the frontend filter does not rule it out; a NodePort lookup only for a port in the range of
/// programmed NodePorts and a destination that is the node's address (known from the config,
/// no lookup) or one of its other addresses (a local-address lookup, only on nodes with
/// several addresses).
#[inline(always)]
pub fn lookup_external(addr: u32, port: u16, proto: u8, cfg: &NodeConfig) -> Option<Frontend> {
    let mut key = ServiceKey {
        addr,
        port,
        proto,
        scope: SCOPE_DEFAULT,
        slot: 0,
        _pad: 0,
    };
    // The filter (an array entry: the verifier inlines the lookup) rules out most
    // destinations that are no exact frontend without the hash lookup.
    if (cfg.flags & NODE_F_FRONTEND_FILTER == 0 || may_be_frontend(addr))
        // SAFETY: the value is copied out immediately; entries are only replaced whole.
        && let Some(svc) = unsafe { XKUBE_SERVICES.get(&key) }.copied()
    {
        return Some(Frontend { key, svc });
    }
    let hport = u16::from_be(port);
    if hport < cfg.node_port_min || hport > cfg.node_port_max {
        return None;
    }
    let node = addr == cfg.node_addr
        || (cfg.flags & NODE_F_EXTRA_ADDRS != 0
            && unsafe { XKUBE_LOCAL_ADDRS.get(&addr) }
                .copied()
                .unwrap_or(0)
                & LOCAL_F_NODE
                != 0);
    if !node {
        return None;
    }
    key.addr = 0;
    let svc = unsafe { XKUBE_SERVICES.get(&key) }.copied()?;
    Some(Frontend { key, svc })
}

/// Whether `addr` may be an exact frontend: its bit in the frontend filter is set (or the
/// word cannot be read).
#[inline(always)]
fn may_be_frontend(addr: u32) -> bool {
    let bit = frontend_filter_bit(addr);
    XKUBE_FRONTEND_FILTER.get(0).is_none_or(|words| {
        words
            .get((bit >> 6) as usize)
            .is_none_or(|w| *w & (1u64 << (bit & 63)) != 0)
    })
}

/// The backend with `id`, if it still exists and still belongs to service `rev_nat_id`.
#[inline(always)]
pub fn backend(id: u32, rev_nat_id: u16) -> Option<Backend> {
    let b = unsafe { XKUBE_BACKENDS.get(&id) }.copied()?;
    if b.rev_nat_id == rev_nat_id {
        Some(b)
    } else {
        None
    }
}

/// The flow a selection is made for: the client identity for affinity and the 5-tuple for
/// Maglev. Addresses and ports in network order.
pub struct Flow {
    pub client: u32,
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// Chooses a backend for a new connection: ClientIP affinity first, then Maglev or random.
/// `None` when the service has no endpoints (the caller rejects).
#[inline(always)]
pub fn select(fe: &Frontend, flow: &Flow) -> Option<(u32, Backend)> {
    let svc = &fe.svc;
    if svc.count == 0 {
        return None;
    }
    let id = svc.rev_nat_id;
    let now = unsafe { bpf_ktime_get_ns() };
    let aff_key = AffinityKey {
        client_addr: flow.client,
        rev_nat_id: id,
        _pad: 0,
    };
    if svc.flags & SVC_F_AFFINITY != 0
        && let Some(a) = unsafe { XKUBE_AFFINITY.get(&aff_key) }.copied()
        && now.saturating_sub(a.last_used) < u64::from(svc.affinity_timeout) * 1_000_000_000
        && let Some(b) = backend(a.backend_id, id)
    {
        remember(&aff_key, a.backend_id, now);
        return Some((a.backend_id, b));
    }
    let backend_id = if svc.flags & SVC_F_MAGLEV != 0 {
        let h = flow_hash(flow.src, flow.dst, flow.sport, flow.dport, flow.proto);
        let key = MaglevKey {
            rev_nat_id: id,
            _pad: 0,
            index: h % MAGLEV_TABLE_SIZE,
        };
        unsafe { XKUBE_MAGLEV.get(&key) }.copied()?
    } else {
        let slot = (unsafe { bpf_get_prandom_u32() } % u32::from(svc.count)) as u16 + 1;
        let key = ServiceKey { slot, ..fe.key };
        unsafe { XKUBE_SERVICES.get(&key) }.map(|v| v.backend_id)?
    };
    let b = backend(backend_id, id)?;
    if svc.flags & SVC_F_AFFINITY != 0 {
        remember(&aff_key, backend_id, now);
    }
    Some((backend_id, b))
}

#[inline(always)]
fn remember(key: &AffinityKey, backend_id: u32, now: u64) {
    let v = AffinityValue {
        backend_id,
        _pad: 0,
        last_used: now,
    };
    // A full LRU map evicts; a failed update only loses stickiness for this client.
    let _ = XKUBE_AFFINITY.insert(key, &v, 0);
}

/// Which per-service counter to bump.
pub enum Count {
    Connection,
    Packet(u64),
    Rejected,
}

#[inline(always)]
pub fn count(rev_nat_id: u16, what: Count) {
    if let Some(c) = XKUBE_SERVICE_COUNTERS.get_ptr_mut(u32::from(rev_nat_id)) {
        // SAFETY: per-CPU slot, written only by this CPU while the program runs.
        unsafe {
            match what {
                Count::Connection => (*c).connections += 1,
                Count::Packet(bytes) => {
                    (*c).packets += 1;
                    (*c).bytes += bytes;
                }
                Count::Rejected => (*c).rejected += 1,
            }
        }
    }
}
