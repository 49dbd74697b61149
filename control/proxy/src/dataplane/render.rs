//! One service of the [model](crate::model) -> its entries in the load-balancer maps.
//!
//! Pure. Used by both the whole-state [`super::desired()`] and the incremental
//! [`super::engine::Engine`]; they differ only in where ids come from ([`IdSource`]) and in
//! which frontends another service already owns.
//!
//! Semantics follow kube-proxy: one service id per (ClusterIP, port, protocol); every frontend of
//! that service port (ClusterIP, NodePort, each externalIP, each LoadBalancer ingress IP) shares
//! the id and the backends; usable endpoints only (ready, else serving-and-terminating);
//! `sessionAffinity: ClientIP`; `externalTrafficPolicy: Local` through two scopes;
//! `internalTrafficPolicy: Local` restricts the ClusterIP frontend to node-local backends;
//! Maglev per service by annotation. SCTP ports are not handled by the eBPF dataplane.

use std::{collections::BTreeMap, net::Ipv4Addr};

use tracing::{debug, error, warn};
use xkube_common::lb::{
    BACKEND_F_LOCAL, Backend, IPPROTO_TCP, IPPROTO_UDP, RevNat, SCOPE_DEFAULT, SCOPE_INTERNAL,
    SVC_F_AFFINITY, SVC_F_CLUSTER_IP, SVC_F_EXTERNAL_IP, SVC_F_LOAD_BALANCER, SVC_F_MAGLEV,
    SVC_F_NODE_PORT, SVC_F_SNAT_REMOTE, SVC_F_TWO_SCOPES, ServiceKey, ServiceValue,
};

use super::{
    desired::{BackendIdent, DesiredState, NodeContext, ServiceIdent, ne},
    maglev::{self, MaglevBackend},
};
use crate::model::{LbAlgorithm, Protocol, ServiceModel, ServicePort, TrafficPolicy};

/// Where service and backend ids come from.
pub trait IdSource {
    /// The id of a service port; `None` when the id space is exhausted.
    fn service_id(&mut self, ident: ServiceIdent) -> Option<u16>;
    /// The id of a backend; `None` when the id space is exhausted.
    fn backend_id(&mut self, ident: BackendIdent) -> Option<u32>;
}

/// The eBPF protocol number of a model protocol (`None`: not handled by the dataplane).
pub fn ip_proto(p: Protocol) -> Option<u8> {
    match p {
        Protocol::Tcp => Some(IPPROTO_TCP),
        Protocol::Udp => Some(IPPROTO_UDP),
        Protocol::Sctp => None,
    }
}

fn frontend_key(addr: Ipv4Addr, port: u16, proto: u8) -> ServiceKey {
    ServiceKey {
        addr: ne(addr),
        port: port.to_be(),
        proto,
        scope: SCOPE_DEFAULT,
        slot: 0,
        _pad: 0,
    }
}

/// A frontend of a service port and the flags that make it what it is.
struct Frontend {
    key: ServiceKey,
    kind: u16,
    /// Subject to `externalTrafficPolicy`.
    external: bool,
}

/// The frontends of one service port (default scope, slot 0), the ClusterIP first.
fn frontends(p: &ServicePort, proto: u8) -> Vec<Frontend> {
    let mut out = vec![Frontend {
        key: frontend_key(p.cluster_ip, p.port, proto),
        kind: SVC_F_CLUSTER_IP,
        external: false,
    }];
    if let Some(np) = p.node_port {
        out.push(Frontend {
            key: frontend_key(Ipv4Addr::UNSPECIFIED, np, proto),
            kind: SVC_F_NODE_PORT,
            external: true,
        });
    }
    out.extend(p.external_ips.iter().map(|ip| Frontend {
        key: frontend_key(*ip, p.port, proto),
        kind: SVC_F_EXTERNAL_IP,
        external: true,
    }));
    out.extend(p.load_balancer_ips.iter().map(|ip| Frontend {
        key: frontend_key(*ip, p.port, proto),
        kind: SVC_F_LOAD_BALANCER,
        external: true,
    }));
    out
}

/// Every frontend key (default scope, slot 0) the service asks for; what the engine arbitrates
/// between services that ask for the same one.
pub fn wanted_frontends(model: &ServiceModel) -> Vec<ServiceKey> {
    model
        .ports
        .iter()
        .filter_map(|p| ip_proto(p.protocol).map(|proto| frontends(p, proto)))
        .flatten()
        .map(|f| f.key)
        .collect()
}

/// Renders `model` into `out`. A frontend that `denied` refuses, or that `out` already holds
/// (another service rendered into the same state first), is skipped; a port whose ClusterIP
/// frontend is skipped is skipped whole (the service id belongs to the ClusterIP's owner).
pub fn render_service(
    model: &ServiceModel,
    node: &NodeContext,
    ids: &mut impl IdSource,
    denied: &dyn Fn(&ServiceKey) -> bool,
    out: &mut DesiredState,
) {
    let svc = &model.name;
    for p in &model.ports {
        let Some(proto) = ip_proto(p.protocol) else {
            debug!(service = %svc, port = p.port, "SCTP is not handled by the eBPF dataplane; skipped");
            continue;
        };
        let fes = frontends(p, proto);
        if denied(&fes[0].key) || out.services.contains_key(&fes[0].key) {
            warn!(service = %svc, port = p.port, cluster_ip = %p.cluster_ip,
                "ClusterIP:port already taken by another service; service port skipped");
            continue;
        }
        let Some(svc_id) = ids.service_id(ServiceIdent {
            cluster_ip: p.cluster_ip,
            port: p.port,
            proto,
        }) else {
            error!(service = %svc, port = p.port, "out of service ids; service port skipped");
            continue;
        };
        render_port(svc, p, proto, svc_id, fes, node, ids, denied, out);
    }
}

#[allow(clippy::too_many_arguments)]
fn render_port(
    svc: &crate::model::ServiceName,
    p: &ServicePort,
    proto: u8,
    svc_id: u16,
    fes: Vec<Frontend>,
    node: &NodeContext,
    ids: &mut impl IdSource,
    denied: &dyn Fn(&ServiceKey) -> bool,
    out: &mut DesiredState,
) {
    let maglev = p.algorithm == LbAlgorithm::Maglev;
    let mut common_flags = SVC_F_SNAT_REMOTE;
    let mut affinity_timeout = 0;
    if let Some(t) = p.affinity_timeout {
        common_flags |= SVC_F_AFFINITY;
        affinity_timeout = t;
    }
    if maglev {
        common_flags |= SVC_F_MAGLEV;
    }

    // Backends, sorted by (address, port) so an unchanged service writes identical slots.
    let usable: Vec<_> = p.usable_endpoints().collect();
    if usable.len() > usize::from(u16::MAX) {
        warn!(service = %svc, endpoints = usable.len(), "more endpoints than slots; truncated");
    }
    let mut all = Vec::with_capacity(usable.len());
    let mut local = Vec::new();
    let mut maglev_names: Vec<(String, u32)> = Vec::new();
    for e in usable.into_iter().take(usize::from(u16::MAX)) {
        let Some(id) = ids.backend_id(BackendIdent {
            service: svc_id,
            addr: e.addr,
            port: e.port,
            proto,
        }) else {
            error!(service = %svc, "out of backend ids; endpoint skipped");
            continue;
        };
        let is_local = e.is_local(&node.node_name, node.pod_cidr);
        out.backends.insert(
            id,
            Backend {
                addr: ne(e.addr),
                port: e.port.to_be(),
                proto,
                flags: if is_local { BACKEND_F_LOCAL } else { 0 },
                rev_nat_id: svc_id,
                _pad: 0,
            },
        );
        all.push(id);
        if is_local {
            local.push(id);
        }
        if maglev {
            maglev_names.push((format!("{}:{}", e.addr, e.port), id));
        }
    }
    out.revnat.insert(
        svc_id,
        RevNat {
            addr: ne(p.cluster_ip),
            port: p.port.to_be(),
            _pad: 0,
        },
    );
    if !maglev_names.is_empty() {
        let mb: Vec<MaglevBackend<'_>> = maglev_names
            .iter()
            .map(|(name, id)| MaglevBackend { name, id: *id })
            .collect();
        out.maglev.insert(svc_id, maglev::table(&mb));
    }

    let internal_local = p.internal_policy == TrafficPolicy::Local;
    let external_local = p.external_policy == TrafficPolicy::Local;
    for fe in fes {
        if denied(&fe.key) || out.services.contains_key(&fe.key) {
            warn!(
                service = %svc,
                frontend = %format!("{}:{}", super::desired::ip_of(fe.key.addr), u16::from_be(fe.key.port)),
                "frontend already taken by another service port; skipped"
            );
            continue;
        }
        let value = ServiceValue {
            backend_id: 0,
            count: 0,
            rev_nat_id: svc_id,
            flags: common_flags | fe.kind,
            _pad: 0,
            affinity_timeout,
        };
        if fe.external && external_local {
            // The default scope (external traffic) sees node-local backends only. Maglev
            // tables are per service id and hold every backend, so the local-only scope
            // selects at random among local backends to keep traffic local.
            let flags = (value.flags | SVC_F_TWO_SCOPES) & !SVC_F_MAGLEV;
            write_frontend(out, fe.key, ServiceValue { flags, ..value }, &local);
            let internal = ServiceKey {
                scope: SCOPE_INTERNAL,
                ..fe.key
            };
            let (flags, backends) = if internal_local {
                ((value.flags | SVC_F_TWO_SCOPES) & !SVC_F_MAGLEV, &local)
            } else {
                (value.flags | SVC_F_TWO_SCOPES, &all)
            };
            write_frontend(out, internal, ServiceValue { flags, ..value }, backends);
        } else if !fe.external && internal_local {
            // internalTrafficPolicy Local: the ClusterIP reaches node-local backends only.
            let flags = value.flags & !SVC_F_MAGLEV;
            write_frontend(out, fe.key, ServiceValue { flags, ..value }, &local);
        } else {
            write_frontend(out, fe.key, value, &all);
        }
    }
}

fn write_frontend(state: &mut DesiredState, key: ServiceKey, value: ServiceValue, ids: &[u32]) {
    // `ids.len()` fits: the caller takes at most u16::MAX endpoints.
    let count = u16::try_from(ids.len()).unwrap_or(u16::MAX);
    state.services.insert(key, ServiceValue { count, ..value });
    for (i, id) in ids.iter().take(usize::from(count)).enumerate() {
        state.services.insert(
            ServiceKey {
                slot: i as u16 + 1,
                ..key
            },
            ServiceValue {
                backend_id: *id,
                count: 0,
                rev_nat_id: value.rev_nat_id,
                flags: 0,
                _pad: 0,
                affinity_timeout: 0,
            },
        );
    }
}

/// The backend identities of a rendered state, by backend id (for id bookkeeping).
pub fn backend_idents(state: &DesiredState) -> BTreeMap<u32, BackendIdent> {
    state
        .backends
        .iter()
        .map(|(id, b)| {
            (
                *id,
                BackendIdent {
                    service: b.rev_nat_id,
                    addr: super::desired::ip_of(b.addr),
                    port: u16::from_be(b.port),
                    proto: b.proto,
                },
            )
        })
        .collect()
}
