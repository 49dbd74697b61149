//! Services + Endpoints + node facts -> the desired contents of the load-balancer maps.
//!
//! [`desired`] is pure: no I/O, no clock, no randomness. Its only state is the [`Ids`]
//! allocator, which keeps service and backend ids stable across calls (and across agent
//! restarts, see [`Ids::from_actual`]) so an unchanged Service produces identical map entries
//! and the writer's diff is empty.
//!
//! Parsing is the [model](crate::model)'s, the per-service map entries are
//! [`super::render`]'s (see there for the semantics).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    ops::RangeInclusive,
    sync::Arc,
};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use xkube_common::lb::{
    Backend, LOCAL_F_NODE, NODE_F_EXTRA_ADDRS, NODE_F_FRONTEND_FILTER, NODE_F_FRONTEND_ON_NODE,
    NodeConfig, RevNat, SCOPE_DEFAULT, SVC_F_CLUSTER_IP, ServiceKey, ServiceValue,
};

use super::render::{IdSource, render_service};
pub use crate::model::{
    CidrParseError, DEFAULT_AFFINITY_TIMEOUT_SECONDS, DEFAULT_CLUSTER_CIDR, Ipv4Cidr,
    LB_ALGORITHM_ANNOTATION,
};
use crate::model::{EndpointSource, ServiceName, build};

/// Default SNAT source port range (above Linux's default ephemeral range 32768-60999).
pub const DEFAULT_SNAT_PORTS: RangeInclusive<u16> = 61_000..=65_535;

/// What the desired state needs to know about this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeContext {
    /// `metadata.name` of the Node; endpoints with this `nodeName` are local.
    pub node_name: String,
    /// Every address of the node: NodePort frontends answer on these ([`LOCAL_F_NODE`]).
    pub node_addrs: Vec<Ipv4Addr>,
    /// The primary node address: SNAT source for off-cluster clients of remote backends.
    pub node_addr: Ipv4Addr,
    /// `spec.podCIDR`: endpoints without `nodeName` inside it are local.
    pub pod_cidr: Option<Ipv4Cidr>,
    /// `--cluster-cidr`: sources inside it are pods and never SNATed.
    pub cluster_cidr: Ipv4Cidr,
    /// The pod bridge's address: the source of hairpin traffic.
    pub hairpin_addr: Ipv4Addr,
    /// The uplink's interface index.
    pub uplink_ifindex: u32,
    /// SNAT source ports, inclusive.
    pub snat_ports: RangeInclusive<u16>,
}

impl NodeContext {
    /// A node with one address, no pod CIDR and the defaults for everything else.
    pub fn new(node_name: impl Into<String>, node_addr: Ipv4Addr) -> Self {
        Self {
            node_name: node_name.into(),
            node_addrs: vec![node_addr],
            node_addr,
            pod_cidr: None,
            cluster_cidr: DEFAULT_CLUSTER_CIDR,
            hairpin_addr: Ipv4Addr::UNSPECIFIED,
            uplink_ifindex: 0,
            snat_ports: DEFAULT_SNAT_PORTS,
        }
    }

    /// The [`NodeConfig`] entry (addresses in network order, ports in host order).
    pub fn node_config(&self) -> NodeConfig {
        let (pod_cidr, pod_cidr_len) = self
            .pod_cidr
            .map_or((0, 0), |c| (ne(c.network()), u32::from(c.prefix_len())));
        NodeConfig {
            node_addr: ne(self.node_addr),
            pod_cidr,
            pod_cidr_len,
            cluster_cidr: ne(self.cluster_cidr.network()),
            cluster_cidr_len: u32::from(self.cluster_cidr.prefix_len()),
            snat_port_min: *self.snat_ports.start(),
            snat_port_max: *self.snat_ports.end(),
            uplink_ifindex: self.uplink_ifindex,
            hairpin_addr: ne(self.hairpin_addr),
            flags: NODE_F_FRONTEND_FILTER
                | if self
                    .node_addrs
                    .iter()
                    .any(|a| *a != self.node_addr && !a.is_unspecified())
                {
                    NODE_F_EXTRA_ADDRS
                } else {
                    0
                },
            node_port_min: 1,
            node_port_max: 0,
        }
    }
}

/// The range of NodePorts among `ports` (`(1, 0)`, an empty range, when there are none).
pub fn node_port_range(ports: impl IntoIterator<Item = u16>) -> (u16, u16) {
    ports.into_iter().fold((1, 0), |(lo, hi), p| {
        if lo > hi {
            (p, p)
        } else {
            (lo.min(p), hi.max(p))
        }
    })
}

/// The NodePorts among frontend keys (slot 0, any address 0).
pub fn node_ports<'a>(keys: impl IntoIterator<Item = &'a ServiceKey>) -> impl Iterator<Item = u16> {
    keys.into_iter()
        .filter(|k| k.slot == 0 && k.addr == 0 && k.scope == SCOPE_DEFAULT)
        .map(|k| u16::from_be(k.port))
}

/// An address as stored in the maps (network order in a native `u32`).
pub fn ne(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The address of a map field in network order.
pub fn ip_of(ne_addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(ne_addr.to_ne_bytes())
}

/// The desired (or, read back, actual) contents of the maps the agent owns. Keys and values are
/// exactly the map entries: addresses and ports in network order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// `XKUBE_SERVICES`: frontends (slot 0) and their backend slots.
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    /// `XKUBE_BACKENDS`: backend id -> backend.
    pub backends: BTreeMap<u32, Backend>,
    /// `XKUBE_REVNAT`: service id -> the ClusterIP:port.
    pub revnat: BTreeMap<u16, RevNat>,
    /// `XKUBE_MAGLEV`: service id -> its lookup table (`MAGLEV_TABLE_SIZE` backend ids; 0 marks
    /// an entry missing from the map, which only a partially written actual state has).
    pub maglev: BTreeMap<u16, Vec<u32>>,
    /// `XKUBE_LOCAL_ADDRS`: node address (network order) -> `LOCAL_F_*`.
    pub local_addrs: BTreeMap<u32, u32>,
    /// `XKUBE_NODE_CONFIG[0]`.
    pub node_config: NodeConfig,
    /// `XKUBE_FRONTEND_FILTER`: word index -> bits, the non-zero words ([`super::filter`]).
    pub frontend_filter: BTreeMap<u32, u64>,
}

impl DesiredState {
    /// The number of map entries this state holds (Maglev entries counted one by one).
    pub fn entries(&self) -> usize {
        self.services.len()
            + self.backends.len()
            + self.revnat.len()
            + self
                .maglev
                .values()
                .map(|t| t.iter().filter(|id| **id != 0).count())
                .sum::<usize>()
            + self.local_addrs.len()
            + self.frontend_filter.len()
            + 1
    }
}

/// A desired state tagged with the [`Ids`] generation that produced it; what the writer task
/// receives. The writer reports the generation it applied, and [`Ids::release_applied`] then
/// lets ids freed by that generation be reused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub generation: u64,
    pub state: Arc<DesiredState>,
}

impl Desired {
    /// Tags `state` with the generation `ids` just computed it in.
    pub fn new(state: DesiredState, ids: &Ids) -> Self {
        Self {
            generation: ids.generation(),
            state: Arc::new(state),
        }
    }
}

/// What identifies a service id: the service port's ClusterIP, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceIdent {
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
}

/// What identifies a backend id: its service id and the endpoint address, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendIdent {
    pub service: u16,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
}

// Ordered through integers: `Ipv4Addr`'s own `Ord` compares octet arrays with `memcmp`, which
// showed up in the 10k-service profile.
impl Ord for ServiceIdent {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (u32::from(self.cluster_ip), self.port, self.proto).cmp(&(
            u32::from(o.cluster_ip),
            o.port,
            o.proto,
        ))
    }
}

impl PartialOrd for ServiceIdent {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for BackendIdent {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.service, u32::from(self.addr), self.port, self.proto).cmp(&(
            o.service,
            u32::from(o.addr),
            o.port,
            o.proto,
        ))
    }
}

impl PartialOrd for BackendIdent {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// Service id (`u16`, never 0) and backend id (`u32`, never 0) allocator.
///
/// Ids are stable for the same identity across calls of [`desired`]. An id whose identity
/// disappears in generation `g` is quarantined until the writer reports that a generation `>= g`
/// is in the maps ([`Ids::release_applied`]): since the writer may coalesce desired states, this
/// is what guarantees an id is never reused within one apply (which would turn an old flow's
/// service or backend into another one mid-update). New ids are handed out next-fit from a
/// cursor, so a released id is reused as late as possible.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    services: HashMap<ServiceIdent, u16>,
    backends: HashMap<BackendIdent, u32>,
    /// Quarantined ids -> the generation whose application releases them.
    quarantined_services: BTreeMap<u16, u64>,
    quarantined_backends: BTreeMap<u32, u64>,
    next_service: u16,
    next_backend: u32,
    generation: u64,
}

impl Ids {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the allocator from the maps' actual contents, so a restarted agent computes the
    /// same ids for the same objects and its first diff is empty. Service ids are recovered from
    /// the ClusterIP frontends, backend ids from the backends; ids in the maps that cannot be
    /// attributed are quarantined until the first computed state is applied.
    pub fn from_actual(actual: &DesiredState) -> Self {
        let mut ids = Self::default();
        let mut seen_services = BTreeSet::new();
        let mut attributed = BTreeSet::new();
        for (key, value) in &actual.services {
            seen_services.insert(value.rev_nat_id);
            if key.slot == 0
                && key.scope == SCOPE_DEFAULT
                && value.flags & SVC_F_CLUSTER_IP != 0
                && value.rev_nat_id != 0
            {
                let ident = ServiceIdent {
                    cluster_ip: ip_of(key.addr),
                    port: u16::from_be(key.port),
                    proto: key.proto,
                };
                if !attributed.contains(&value.rev_nat_id) && !ids.services.contains_key(&ident) {
                    ids.services.insert(ident, value.rev_nat_id);
                    attributed.insert(value.rev_nat_id);
                }
            }
        }
        seen_services.extend(actual.revnat.keys().copied());
        seen_services.extend(actual.maglev.keys().copied());
        seen_services.extend(actual.backends.values().map(|b| b.rev_nat_id));
        for id in seen_services {
            if id != 0 && !attributed.contains(&id) {
                ids.quarantined_services.insert(id, 1);
            }
        }
        for (id, b) in &actual.backends {
            if *id == 0 {
                continue;
            }
            let ident = BackendIdent {
                service: b.rev_nat_id,
                addr: ip_of(b.addr),
                port: u16::from_be(b.port),
                proto: b.proto,
            };
            match ids.backends.entry(ident) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    ids.quarantined_backends.insert(*id, 1);
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(*id);
                }
            }
        }
        let max_service = ids
            .services
            .values()
            .chain(ids.quarantined_services.keys())
            .max()
            .copied()
            .unwrap_or(0);
        let max_backend = ids
            .backends
            .values()
            .chain(ids.quarantined_backends.keys())
            .max()
            .copied()
            .unwrap_or(0);
        ids.next_service = max_service.wrapping_add(1).max(1);
        ids.next_backend = max_backend.wrapping_add(1).max(1);
        ids
    }

    /// The generation of the last [`desired`] computation (0 before the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The writer has applied `generation`: ids freed by it (or earlier) may be reused.
    pub fn release_applied(&mut self, generation: u64) {
        self.quarantined_services.retain(|_, g| *g > generation);
        self.quarantined_backends.retain(|_, g| *g > generation);
    }

    /// The service id of `ident`, if it has one.
    pub fn service(&self, ident: &ServiceIdent) -> Option<u16> {
        self.services.get(ident).copied()
    }

    /// The backend id of `ident`, if it has one.
    pub fn backend(&self, ident: &BackendIdent) -> Option<u32> {
        self.backends.get(ident).copied()
    }

    /// Ids in use and quarantined.
    pub fn counts(&self) -> IdCounts {
        IdCounts {
            services: self.services.len(),
            backends: self.backends.len(),
            quarantined_services: self.quarantined_services.len(),
            quarantined_backends: self.quarantined_backends.len(),
        }
    }

    fn begin(&mut self) -> Round<'_> {
        self.generation += 1;
        Round {
            services: HashMap::with_capacity(self.services.len()),
            backends: HashMap::with_capacity(self.backends.len()),
            taken_services: None,
            taken_backends: None,
            ids: self,
        }
    }
}

/// Sizes of an [`Ids`] allocator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdCounts {
    pub services: usize,
    pub backends: usize,
    pub quarantined_services: usize,
    pub quarantined_backends: usize,
}

/// One [`desired`] computation's view of the allocator: identities seen this round keep their
/// ids; new ones get ids that were not in use at the start of the round, nor quarantined.
struct Round<'a> {
    ids: &'a mut Ids,
    services: HashMap<ServiceIdent, u16>,
    backends: HashMap<BackendIdent, u32>,
    /// Ids in use at the start of the round plus those allocated in it; built on the first
    /// allocation only (most rounds allocate nothing new).
    taken_services: Option<BTreeSet<u16>>,
    taken_backends: Option<BTreeSet<u32>>,
}

impl Round<'_> {
    fn service(&mut self, ident: ServiceIdent) -> Option<u16> {
        if let Some(id) = self.services.get(&ident) {
            return Some(*id);
        }
        let id = match self.ids.services.get(&ident) {
            Some(id) => *id,
            None => {
                let ids = &mut *self.ids;
                let taken = self
                    .taken_services
                    .get_or_insert_with(|| ids.services.values().copied().collect());
                // Exhausted (65,535 service ports): fail at once instead of scanning the whole
                // id space for every further service.
                if taken.len() + ids.quarantined_services.len() >= usize::from(u16::MAX) {
                    return None;
                }
                let mut id = ids.next_service;
                let mut tries = 0u32;
                while id == 0 || taken.contains(&id) || ids.quarantined_services.contains_key(&id) {
                    id = id.wrapping_add(1);
                    tries += 1;
                    if tries > u32::from(u16::MAX) + 1 {
                        return None;
                    }
                }
                taken.insert(id);
                ids.next_service = id.wrapping_add(1);
                id
            }
        };
        self.services.insert(ident, id);
        Some(id)
    }

    fn backend(&mut self, ident: BackendIdent) -> Option<u32> {
        if let Some(id) = self.backends.get(&ident) {
            return Some(*id);
        }
        let id = match self.ids.backends.get(&ident) {
            Some(id) => *id,
            None => {
                let ids = &mut *self.ids;
                let taken = self
                    .taken_backends
                    .get_or_insert_with(|| ids.backends.values().copied().collect());
                let mut id = ids.next_backend;
                let mut tries = 0u64;
                while id == 0 || taken.contains(&id) || ids.quarantined_backends.contains_key(&id) {
                    id = id.wrapping_add(1);
                    tries += 1;
                    if tries > u64::from(u32::MAX) {
                        return None;
                    }
                }
                taken.insert(id);
                ids.next_backend = id.wrapping_add(1);
                id
            }
        };
        self.backends.insert(ident, id);
        Some(id)
    }

    /// Ends the round: identities not seen are dropped and their ids quarantined until this
    /// generation is applied. (A new id is never an old one, so an old identity that is gone
    /// frees exactly its id.)
    fn finish(self) {
        let generation = self.ids.generation;
        for (ident, id) in &self.ids.services {
            if !self.services.contains_key(ident) {
                self.ids.quarantined_services.insert(*id, generation);
            }
        }
        for (ident, id) in &self.ids.backends {
            if !self.backends.contains_key(ident) {
                self.ids.quarantined_backends.insert(*id, generation);
            }
        }
        self.ids.services = self.services;
        self.ids.backends = self.backends;
    }
}

impl IdSource for Round<'_> {
    fn service_id(&mut self, ident: ServiceIdent) -> Option<u16> {
        self.service(ident)
    }

    fn backend_id(&mut self, ident: BackendIdent) -> Option<u32> {
        self.backend(ident)
    }
}

/// The node's own entries: its config and its addresses.
pub fn node_entries(node: &NodeContext, state: &mut DesiredState) {
    state.node_config = node.node_config();
    state.local_addrs.clear();
    for addr in node.node_addrs.iter().chain([&node.node_addr]) {
        if !addr.is_unspecified() {
            state.local_addrs.insert(ne(*addr), LOCAL_F_NODE);
        }
    }
}

/// Computes the desired map contents for `services` and their `endpoints` (matched by namespace
/// and name) on the node described by `node`, all at once, through the
/// [model](crate::model). Pure; see the module documentation. The agent programs the maps
/// incrementally ([`super::engine::Engine`]); this is the whole-state reference.
pub fn desired(
    services: &[Service],
    endpoints: &[Endpoints],
    node: &NodeContext,
    ids: &mut Ids,
) -> DesiredState {
    let mut state = DesiredState::default();
    node_entries(node, &mut state);
    let mut by_name: HashMap<ServiceName, &Endpoints> = HashMap::with_capacity(endpoints.len());
    for ep in endpoints {
        by_name.entry(ServiceName::of_endpoints(ep)).or_insert(ep);
    }
    // A deterministic order, so conflicting frontends resolve the same way on every call.
    let mut sorted: Vec<(ServiceName, &Service)> = services
        .iter()
        .map(|s| (ServiceName::of_service(s), s))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));

    let mut round = ids.begin();
    for (name, svc) in sorted {
        let source = by_name
            .get(&name)
            .map_or(EndpointSource::None, |e| EndpointSource::Endpoints(e));
        if let Some(model) = build(svc, source) {
            render_service(&model, node, &mut round, &|_| false, &mut state);
        }
    }
    round.finish();
    let (lo, hi) = node_port_range(node_ports(state.services.keys()));
    state.node_config.node_port_min = lo;
    state.node_config.node_port_max = hi;
    let exact: std::collections::HashSet<u32> = frontend_addrs(state.services.keys()).collect();
    state.frontend_filter = super::filter::filter_words(exact.iter().copied());
    if state.local_addrs.keys().any(|a| exact.contains(a)) {
        state.node_config.flags |= NODE_F_FRONTEND_ON_NODE;
    }
    state
}

/// The addresses of exact frontends (slot 0, not NodePorts) among `keys`.
pub fn frontend_addrs<'a>(
    keys: impl IntoIterator<Item = &'a ServiceKey>,
) -> impl Iterator<Item = u32> {
    keys.into_iter()
        .filter(|k| k.slot == 0 && k.addr != 0 && k.scope == SCOPE_DEFAULT)
        .map(|k| k.addr)
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;
    use xkube_common::lb::{
        BACKEND_F_LOCAL, IPPROTO_TCP, IPPROTO_UDP, MAGLEV_TABLE_SIZE, SCOPE_INTERNAL,
        SVC_F_AFFINITY, SVC_F_EXTERNAL_IP, SVC_F_LOAD_BALANCER, SVC_F_MAGLEV, SVC_F_NODE_PORT,
        SVC_F_SNAT_REMOTE, SVC_F_TWO_SCOPES,
    };

    use super::*;

    pub(crate) fn service(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("test Service does not parse: {e}"))
    }

    pub(crate) fn endpoints(v: serde_json::Value) -> Endpoints {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("test Endpoints does not parse: {e}"))
    }

    /// A ClusterIP service `name` at `ip` with one port 80 -> 8080 (TCP).
    pub(crate) fn web(name: &str, ip: &str) -> Service {
        service(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80, "targetPort": 8080}]}
        }))
    }

    /// Endpoints `name` with `ips` ready on port 8080, on node `node-a`.
    pub(crate) fn web_eps(name: &str, ips: &[&str]) -> Endpoints {
        let addrs: Vec<_> = ips
            .iter()
            .map(|ip| json!({"ip": ip, "nodeName": "node-a"}))
            .collect();
        endpoints(json!({
            "metadata": {"name": name, "namespace": "default"},
            "subsets": [{"addresses": addrs, "ports": [{"port": 8080}]}]
        }))
    }

    pub(crate) fn node() -> NodeContext {
        NodeContext {
            pod_cidr: Some(
                Ipv4Cidr::new(Ipv4Addr::new(10, 244, 1, 0), 24).unwrap_or(DEFAULT_CLUSTER_CIDR),
            ),
            hairpin_addr: Ipv4Addr::new(10, 244, 1, 1),
            uplink_ifindex: 2,
            ..NodeContext::new("node-a", Ipv4Addr::new(198, 18, 0, 11))
        }
    }

    #[test]
    fn service_ids_are_capped_at_65535_and_further_service_ports_are_skipped() {
        let base = u32::from(Ipv4Addr::new(10, 96, 0, 10));
        let svcs: Vec<Service> = (0..65_600u32)
            .map(|i| web(&format!("s{i}"), &Ipv4Addr::from(base + i).to_string()))
            .collect();
        let mut ids = Ids::new();
        let state = desired(&svcs, &[], &node(), &mut ids);
        let frontends = state.services.keys().filter(|k| k.slot == 0).count();
        assert_eq!(frontends, usize::from(u16::MAX));
        assert_eq!(ids.counts().services, usize::from(u16::MAX));
    }

    fn key(ip: [u8; 4], port: u16, proto: u8, scope: u8, slot: u16) -> ServiceKey {
        ServiceKey {
            addr: ne(Ipv4Addr::from(ip)),
            port: port.to_be(),
            proto,
            scope,
            slot,
            _pad: 0,
        }
    }

    fn frontend(state: &DesiredState, k: ServiceKey) -> ServiceValue {
        *state
            .services
            .get(&k)
            .unwrap_or_else(|| panic!("no frontend {k:?} in {:#?}", state.services.keys()))
    }

    /// The backends (ip, port) behind frontend `k`, in slot order.
    fn slots(state: &DesiredState, k: ServiceKey) -> Vec<(Ipv4Addr, u16)> {
        let fe = frontend(state, k);
        (1..=fe.count)
            .map(|slot| {
                let v = state
                    .services
                    .get(&ServiceKey { slot, ..k })
                    .unwrap_or_else(|| panic!("slot {slot} of {k:?} missing"));
                let b = state
                    .backends
                    .get(&v.backend_id)
                    .unwrap_or_else(|| panic!("backend {} missing", v.backend_id));
                assert_eq!(
                    b.rev_nat_id, fe.rev_nat_id,
                    "backend belongs to its service"
                );
                (ip_of(b.addr), u16::from_be(b.port))
            })
            .collect()
    }

    fn compute(svcs: &[Service], eps: &[Endpoints], ids: &mut Ids) -> DesiredState {
        desired(svcs, eps, &node(), ids)
    }

    #[test]
    fn cluster_ip_service_gets_frontend_slots_backends_and_revnat() {
        let mut ids = Ids::new();
        let s = compute(
            &[web("web", "10.96.0.10")],
            &[web_eps("web", &["10.244.1.5", "10.244.2.7"])],
            &mut ids,
        );
        let k = key([10, 96, 0, 10], 80, IPPROTO_TCP, SCOPE_DEFAULT, 0);
        let fe = frontend(&s, k);
        assert_eq!(fe.count, 2, "two ready endpoints");
        assert_ne!(fe.rev_nat_id, 0, "service id is never 0");
        assert_eq!(fe.flags, SVC_F_CLUSTER_IP | SVC_F_SNAT_REMOTE, "flags");
        assert_eq!(
            slots(&s, k),
            vec![
                (Ipv4Addr::new(10, 244, 1, 5), 8080),
                (Ipv4Addr::new(10, 244, 2, 7), 8080)
            ],
            "slots sorted by address"
        );
        assert_eq!(
            s.revnat.get(&fe.rev_nat_id),
            Some(&RevNat {
                addr: ne(Ipv4Addr::new(10, 96, 0, 10)),
                port: 80u16.to_be(),
                _pad: 0
            }),
            "revnat points at the ClusterIP"
        );
        assert_eq!(s.services.len(), 3, "frontend + 2 slots");
        assert_eq!(s.backends.len(), 2);
        assert!(s.backends.keys().all(|id| *id != 0), "backend ids never 0");
        assert!(s.maglev.is_empty(), "random by default");
        assert_eq!(
            s.local_addrs.get(&ne(Ipv4Addr::new(198, 18, 0, 11))),
            Some(&LOCAL_F_NODE),
            "node address is local"
        );
    }

    #[test]
    fn addresses_and_ports_are_network_order() {
        let mut ids = Ids::new();
        let s = compute(
            &[web("web", "10.96.0.10")],
            &[web_eps("web", &["10.244.1.5"])],
            &mut ids,
        );
        let (k, _) = s
            .services
            .iter()
            .next()
            .unwrap_or_else(|| panic!("a frontend"));
        assert_eq!(
            k.addr.to_ne_bytes(),
            [10, 96, 0, 10],
            "address bytes as on the wire"
        );
        assert_eq!(k.port.to_ne_bytes(), [0, 80], "port bytes as on the wire");
        let b = s
            .backends
            .values()
            .next()
            .unwrap_or_else(|| panic!("a backend"));
        assert_eq!(
            b.port.to_ne_bytes(),
            8080u16.to_be_bytes(),
            "backend port on the wire"
        );
        assert_eq!(b.proto, 6, "protocol in host order");
        let cfg = s.node_config;
        assert_eq!(cfg.node_addr.to_ne_bytes(), [198, 18, 0, 11]);
        assert_eq!(cfg.pod_cidr.to_ne_bytes(), [10, 244, 1, 0]);
        assert_eq!(cfg.pod_cidr_len, 24);
        assert_eq!(cfg.cluster_cidr.to_ne_bytes(), [10, 244, 0, 0]);
        assert_eq!(cfg.cluster_cidr_len, 16);
        assert_eq!((cfg.snat_port_min, cfg.snat_port_max), (61_000, 65_535));
        assert_eq!(cfg.hairpin_addr.to_ne_bytes(), [10, 244, 1, 1]);
        assert_eq!(cfg.uplink_ifindex, 2);
    }

    #[test]
    fn not_ready_addresses_are_excluded() {
        let mut ids = Ids::new();
        let eps = endpoints(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "subsets": [{
                "addresses": [{"ip": "10.244.1.5"}],
                "notReadyAddresses": [{"ip": "10.244.1.6"}],
                "ports": [{"port": 8080}]
            }]
        }));
        let s = compute(&[web("web", "10.96.0.10")], &[eps], &mut ids);
        let k = key([10, 96, 0, 10], 80, IPPROTO_TCP, SCOPE_DEFAULT, 0);
        assert_eq!(slots(&s, k), vec![(Ipv4Addr::new(10, 244, 1, 5), 8080)]);
    }

    #[test]
    fn service_without_endpoints_keeps_a_frontend_with_count_zero() {
        let mut ids = Ids::new();
        let s = compute(&[web("web", "10.96.0.10")], &[], &mut ids);
        let fe = frontend(&s, key([10, 96, 0, 10], 80, IPPROTO_TCP, SCOPE_DEFAULT, 0));
        assert_eq!(fe.count, 0, "no endpoints: count 0, the datapath rejects");
        assert_eq!(s.services.len(), 1, "only the frontend");
        assert_eq!(s.revnat.len(), 1, "revnat still present");
    }

    #[test]
    fn headless_and_external_name_services_produce_nothing() {
        let mut ids = Ids::new();
        let headless = service(json!({
            "metadata": {"name": "h", "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}
        }));
        let ext = service(json!({
            "metadata": {"name": "e", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}
        }));
        let s = compute(&[headless, ext], &[web_eps("h", &["10.244.1.5"])], &mut ids);
        assert!(s.services.is_empty() && s.backends.is_empty() && s.revnat.is_empty());
        assert_eq!(ids.counts().services, 0, "no ids allocated");
    }

    #[test]
    fn sctp_ports_are_skipped_and_udp_ports_kept() {
        let mut ids = Ids::new();
        let svc = service(json!({
            "metadata": {"name": "dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.96.0.53", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                {"name": "sctp", "port": 99, "protocol": "SCTP"}
            ]}
        }));
        let eps = endpoints(json!({
            "metadata": {"name": "dns", "namespace": "kube-system"},
            "subsets": [{"addresses": [{"ip": "10.244.1.9"}], "ports": [
                {"name": "dns", "port": 5353, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 5354, "protocol": "TCP"},
                {"name": "sctp", "port": 99, "protocol": "SCTP"}
            ]}]
        }));
        let s = compute(&[svc], &[eps], &mut ids);
        let udp = key([10, 96, 0, 53], 53, IPPROTO_UDP, SCOPE_DEFAULT, 0);
        let tcp = key([10, 96, 0, 53], 53, IPPROTO_TCP, SCOPE_DEFAULT, 0);
        assert_eq!(slots(&s, udp), vec![(Ipv4Addr::new(10, 244, 1, 9), 5353)]);
        assert_eq!(slots(&s, tcp), vec![(Ipv4Addr::new(10, 244, 1, 9), 5354)]);
        assert_ne!(
            frontend(&s, udp).rev_nat_id,
            frontend(&s, tcp).rev_nat_id,
            "one service id per (ip, port, protocol)"
        );
        assert_eq!(s.revnat.len(), 2, "no SCTP entry");
        assert!(
            s.services.keys().all(|k| k.port != 99u16.to_be()),
            "no SCTP frontend"
        );
    }

    #[test]
    fn multi_port_service_maps_ports_by_name() {
        let mut ids = Ids::new();
        let svc = service(json!({
            "metadata": {"name": "app", "namespace": "default"},
            "spec": {"clusterIP": "10.96.1.1", "ports": [
                {"name": "http", "port": 80, "targetPort": "web"},
                {"name": "metrics", "port": 9090}
            ]}
        }));
        let eps = endpoints(json!({
            "metadata": {"name": "app", "namespace": "default"},
            "subsets": [
                {"addresses": [{"ip": "10.244.1.5"}], "ports": [
                    {"name": "metrics", "port": 9100}, {"name": "http", "port": 8080}]},
                {"addresses": [{"ip": "10.244.2.5"}], "ports": [
                    {"name": "http", "port": 8081}]}
            ]
        }));
        let s = compute(&[svc], &[eps], &mut ids);
        let http = key([10, 96, 1, 1], 80, IPPROTO_TCP, SCOPE_DEFAULT, 0);
        let metrics = key([10, 96, 1, 1], 9090, IPPROTO_TCP, SCOPE_DEFAULT, 0);
        assert_eq!(
            slots(&s, http),
            vec![
                (Ipv4Addr::new(10, 244, 1, 5), 8080),
                (Ipv4Addr::new(10, 244, 2, 5), 8081)
            ]
        );
        assert_eq!(
            slots(&s, metrics),
            vec![(Ipv4Addr::new(10, 244, 1, 5), 9100)]
        );
        assert_ne!(
            frontend(&s, http).rev_nat_id,
            frontend(&s, metrics).rev_nat_id
        );
    }

    #[test]
    fn endpoints_of_another_namespace_do_not_match() {
        let mut ids = Ids::new();
        let mut eps = web_eps("web", &["10.244.1.5"]);
        eps.metadata.namespace = Some("other".into());
        let s = compute(&[web("web", "10.96.0.10")], &[eps], &mut ids);
        assert_eq!(
            frontend(&s, key([10, 96, 0, 10], 80, IPPROTO_TCP, SCOPE_DEFAULT, 0)).count,
            0
        );
    }

    fn nodeport_svc(policy: &str, extra: serde_json::Value) -> Service {
        let mut v = json!({
            "metadata": {"name": "np", "namespace": "default"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "10.96.0.20",
                "externalIPs": ["198.18.5.1"],
                "externalTrafficPolicy": policy,
                "ports": [{"port": 80, "nodePort": 30080}]
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "198.18.6.1"}, {"hostname": "lb.example"}]}}
        });
        if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            for (k, e) in extra {
                obj.insert(k.clone(), e.clone());
            }
        }
        service(v)
    }

    fn mixed_eps(name: &str) -> Endpoints {
        endpoints(json!({
            "metadata": {"name": name, "namespace": "default"},
            "subsets": [{"addresses": [
                {"ip": "10.244.1.5", "nodeName": "node-a"},
                {"ip": "10.244.2.5", "nodeName": "node-b"},
                {"ip": "10.244.1.6"},
                {"ip": "10.244.3.6"}
            ], "ports": [{"port": 8080}]}]
        }))
    }

    #[test]
    fn load_balancer_service_has_cluster_ip_nodeport_external_and_lb_frontends_sharing_an_id() {
        let mut ids = Ids::new();
        let s = compute(
            &[nodeport_svc("Cluster", json!({}))],
            &[mixed_eps("np")],
            &mut ids,
        );
        let cip = frontend(&s, key([10, 96, 0, 20], 80, IPPROTO_TCP, SCOPE_DEFAULT, 0));
        let np = frontend(&s, key([0, 0, 0, 0], 30080, IPPROTO_TCP, SCOPE_DEFAULT, 0));
        let ext = frontend(&s, key([198, 18, 5, 1], 80, IPPROTO_TCP, SCOPE_DEFAULT, 0));
        let lb = frontend(&s, key([198, 18, 6, 1], 80, IPPROTO_TCP, SCOPE_DEFAULT, 0));
        assert_eq!(cip.flags, SVC_F_CLUSTER_IP | SVC_F_SNAT_REMOTE);
        assert_eq!(np.flags, SVC_F_NODE_PORT | SVC_F_SNAT_REMOTE);
        assert_eq!(ext.flags, SVC_F_EXTERNAL_IP | SVC_F_SNAT_REMOTE);
        assert_eq!(lb.flags, SVC_F_LOAD_BALANCER | SVC_F_SNAT_REMOTE);
        for fe in [np, ext, lb] {
            assert_eq!(
                fe.rev_nat_id, cip.rev_nat_id,
                "one service id for every frontend"
            );
            assert_eq!(fe.count, 4, "all backends");
        }
        assert_eq!(s.revnat.len(), 1);
        assert_eq!(s.backends.len(), 4, "backends shared, not duplicated");
        assert_eq!(s.services.len(), 4 * 5, "4 frontends x (1 + 4 slots)");
        assert!(
            s.services.keys().all(|k| k.scope == SCOPE_DEFAULT),
            "no internal scope without externalTrafficPolicy Local"
        );
    }

    #[test]
    fn cluster_ip_type_has_no_nodeport_frontend() {
        let mut ids = Ids::new();
        let svc = service(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10",
                     "ports": [{"port": 80, "nodePort": 30081}]}
        }));
        let s = compute(&[svc], &[], &mut ids);
        assert!(
            s.services.keys().all(|k| k.addr != 0),
            "no NodePort frontend"
        );
    }

    #[test]
    fn local_backends_by_node_name_or_pod_cidr() {
        let mut ids = Ids::new();
        let s = compute(
            &[nodeport_svc("Cluster", json!({}))],
            &[mixed_eps("np")],
            &mut ids,
        );
        let local: BTreeSet<Ipv4Addr> = s
            .backends
            .values()
            .filter(|b| b.flags & BACKEND_F_LOCAL != 0)
            .map(|b| ip_of(b.addr))
            .collect();
        assert_eq!(
            local,
            BTreeSet::from([Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 1, 6)]),
            "nodeName node-a, or no nodeName and inside the pod CIDR"
        );
    }

    #[test]
    fn external_traffic_policy_local_lists_local_backends_in_default_scope_and_all_internally() {
        let mut ids = Ids::new();
        let s = compute(
            &[nodeport_svc("Local", json!({}))],
            &[mixed_eps("np")],
            &mut ids,
        );
        let local = vec![
            (Ipv4Addr::new(10, 244, 1, 5), 8080),
            (Ipv4Addr::new(10, 244, 1, 6), 8080),
        ];
        let all = vec![
            (Ipv4Addr::new(10, 244, 1, 5), 8080),
            (Ipv4Addr::new(10, 244, 1, 6), 8080),
            (Ipv4Addr::new(10, 244, 2, 5), 8080),
            (Ipv4Addr::new(10, 244, 3, 6), 8080),
        ];
        for (ip, port) in [
            ([0, 0, 0, 0], 30080),
            ([198, 18, 5, 1], 80),
            ([198, 18, 6, 1], 80),
        ] {
            let d = key(ip, port, IPPROTO_TCP, SCOPE_DEFAULT, 0);
            let i = key(ip, port, IPPROTO_TCP, SCOPE_INTERNAL, 0);
            assert!(
                frontend(&s, d).flags & SVC_F_TWO_SCOPES != 0,
                "{ip:?} two scopes"
            );
            assert!(
                frontend(&s, i).flags & SVC_F_TWO_SCOPES != 0,
                "{ip:?} internal copy"
            );
            assert_eq!(
                slots(&s, d),
                local,
                "{ip:?}: default scope lists local backends"
            );
            assert_eq!(
                slots(&s, i),
                all,
                "{ip:?}: internal scope lists all backends"
            );
        }
        let cip = key([10, 96, 0, 20], 80, IPPROTO_TCP, SCOPE_DEFAULT, 0);
        assert_eq!(
            frontend(&s, cip).flags & SVC_F_TWO_SCOPES,
            0,
            "ClusterIP is one scope"
        );
        assert_eq!(slots(&s, cip), all, "ClusterIP lists every backend");
        assert!(
            !s.services
                .contains_key(&key([10, 96, 0, 20], 80, IPPROTO_TCP, SCOPE_INTERNAL, 0)),
            "no internal copy of the ClusterIP frontend"
        );
    }

    #[test]
    fn session_affinity_client_ip_sets_flag_and_timeout() {
        let mut ids = Ids::new();
        let mut a = web("a", "10.96.0.30");
        let mut b = web("b", "10.96.0.31");
        if let Some(spec) = a.spec.as_mut() {
            spec.session_affinity = Some("ClientIP".into());
        }
        b = service(json!({
            "metadata": b.metadata,
            "spec": {"clusterIP": "10.96.0.31", "ports": [{"port": 80}],
                     "sessionAffinity": "ClientIP",
                     "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}
        }));
        let s = compute(&[a, b], &[], &mut ids);
        let fa = frontend(&s, key([10, 96, 0, 30], 80, IPPROTO_TCP, SCOPE_DEFAULT, 0));
        let fb = frontend(&s, key([10, 96, 0, 31], 80, IPPROTO_TCP, SCOPE_DEFAULT, 0));
        assert!(fa.flags & SVC_F_AFFINITY != 0 && fb.flags & SVC_F_AFFINITY != 0);
        assert_eq!(fa.affinity_timeout, 10_800, "Kubernetes' default timeout");
        assert_eq!(fb.affinity_timeout, 60, "configured timeout");
    }

    #[test]
    fn maglev_annotation_sets_flag_and_builds_a_full_table() {
        let mut ids = Ids::new();
        let mut svc = web("web", "10.96.0.10");
        svc.metadata.annotations = Some(BTreeMap::from([(
            LB_ALGORITHM_ANNOTATION.to_string(),
            "maglev".to_string(),
        )]));
        let s = compute(
            &[svc],
            &[web_eps("web", &["10.244.1.5", "10.244.1.6", "10.244.2.5"])],
            &mut ids,
        );
        let fe = frontend(&s, key([10, 96, 0, 10], 80, IPPROTO_TCP, SCOPE_DEFAULT, 0));
        assert!(fe.flags & SVC_F_MAGLEV != 0, "maglev flag");
        let t = s
            .maglev
            .get(&fe.rev_nat_id)
            .unwrap_or_else(|| panic!("a table for service {}", fe.rev_nat_id));
        assert_eq!(t.len(), MAGLEV_TABLE_SIZE as usize);
        assert!(
            t.iter().all(|id| s.backends.contains_key(id)),
            "every entry names a backend of the service"
        );
    }

    #[test]
    fn maglev_with_local_policy_keeps_the_local_scope_random() {
        let mut ids = Ids::new();
        let svc = nodeport_svc(
            "Local",
            json!({"metadata": {"name": "np", "namespace": "default",
                "annotations": {LB_ALGORITHM_ANNOTATION: "maglev"}}}),
        );
        let s = compute(&[svc], &[mixed_eps("np")], &mut ids);
        let d = frontend(&s, key([0, 0, 0, 0], 30080, IPPROTO_TCP, SCOPE_DEFAULT, 0));
        let i = frontend(&s, key([0, 0, 0, 0], 30080, IPPROTO_TCP, SCOPE_INTERNAL, 0));
        assert_eq!(
            d.flags & SVC_F_MAGLEV,
            0,
            "local-only scope: random among local"
        );
        assert!(i.flags & SVC_F_MAGLEV != 0, "internal scope uses the table");
        assert!(s.maglev.contains_key(&d.rev_nat_id));
    }

    #[test]
    fn unchanged_input_gives_identical_state_and_ids() {
        let mut ids = Ids::new();
        let svcs = [nodeport_svc("Local", json!({})), web("web", "10.96.0.10")];
        let eps = [
            mixed_eps("np"),
            web_eps("web", &["10.244.1.5", "10.244.1.7"]),
        ];
        let a = compute(&svcs, &eps, &mut ids);
        let b = compute(&svcs, &eps, &mut ids);
        assert_eq!(a, b, "same objects, same entries");
        let mut rev_svcs = svcs.clone();
        rev_svcs.reverse();
        let mut rev_eps = eps.clone();
        rev_eps.reverse();
        let c = compute(&rev_svcs, &rev_eps, &mut ids);
        assert_eq!(a, c, "input order does not matter");
    }

    #[test]
    fn backend_ids_are_stable_when_other_endpoints_come_and_go() {
        let mut ids = Ids::new();
        let svcs = [web("web", "10.96.0.10")];
        let a = compute(
            &svcs,
            &[web_eps("web", &["10.244.1.5", "10.244.1.7"])],
            &mut ids,
        );
        let b = compute(
            &svcs,
            &[web_eps("web", &["10.244.1.4", "10.244.1.5", "10.244.1.7"])],
            &mut ids,
        );
        for (id, backend) in &a.backends {
            assert_eq!(
                b.backends.get(id),
                Some(backend),
                "backend {id} kept its id"
            );
        }
        assert_eq!(b.backends.len(), 3);
    }

    #[test]
    fn freed_ids_are_not_reused_until_their_removal_is_applied() {
        let mut ids = Ids::new();
        let a = compute(
            &[web("a", "10.96.0.1")],
            &[web_eps("a", &["10.244.1.5"])],
            &mut ids,
        );
        let a_svc = *a
            .revnat
            .keys()
            .next()
            .unwrap_or_else(|| panic!("a has an id"));
        let a_be = *a
            .backends
            .keys()
            .next()
            .unwrap_or_else(|| panic!("a has a backend"));
        // Force the cursor back so the freed ids are the next candidates.
        ids.next_service = a_svc;
        ids.next_backend = a_be;
        let b = compute(
            &[web("b", "10.96.0.2")],
            &[web_eps("b", &["10.244.1.6"])],
            &mut ids,
        );
        let b_svc = *b
            .revnat
            .keys()
            .next()
            .unwrap_or_else(|| panic!("b has an id"));
        assert_ne!(b_svc, a_svc, "service id freed in this apply is not reused");
        assert!(
            !b.backends.contains_key(&a_be),
            "backend id freed in this apply is not reused"
        );
        // Still quarantined while only generation 1 (where a existed) is applied.
        ids.release_applied(1);
        ids.next_service = a_svc;
        let c = compute(
            &[web("b", "10.96.0.2"), web("c", "10.96.0.3")],
            &[],
            &mut ids,
        );
        assert!(
            !c.revnat.contains_key(&a_svc),
            "generation 2 not applied yet"
        );
        ids.release_applied(2);
        ids.next_service = a_svc;
        let d = compute(
            &[
                web("b", "10.96.0.2"),
                web("c", "10.96.0.3"),
                web("d", "10.96.0.4"),
            ],
            &[],
            &mut ids,
        );
        assert!(
            d.revnat.contains_key(&a_svc),
            "released after its removal was applied"
        );
    }

    #[test]
    fn ids_rebuilt_from_actual_state_reproduce_the_same_state() {
        let mut ids = Ids::new();
        let mut svc = nodeport_svc("Local", json!({}));
        svc.metadata.annotations = Some(BTreeMap::from([(
            LB_ALGORITHM_ANNOTATION.to_string(),
            "maglev".to_string(),
        )]));
        let svcs = vec![
            svc,
            web("web", "10.96.0.10"),
            web("web2", "10.96.0.11"),
            web("empty", "10.96.0.12"),
        ];
        let eps = vec![
            mixed_eps("np"),
            web_eps("web", &["10.244.1.5", "10.244.1.7"]),
            web_eps("web2", &["10.244.1.5"]),
        ];
        // Some churn first, so ids are not simply 1..n.
        compute(&svcs[1..], &eps, &mut ids);
        let before = compute(&svcs, &eps, &mut ids);
        let mut rebuilt = Ids::from_actual(&before);
        let after = compute(&svcs, &eps, &mut rebuilt);
        assert_eq!(before, after, "a restarted agent computes the same entries");
    }

    #[test]
    fn ids_found_in_the_maps_without_an_owner_stay_quarantined_until_the_first_apply() {
        let mut ids = Ids::new();
        let s = compute(
            &[web("a", "10.96.0.1"), web("b", "10.96.0.2")],
            &[web_eps("a", &["10.244.1.5"])],
            &mut ids,
        );
        // A crash left b's revnat and backend but not its ClusterIP frontend.
        let mut actual = s.clone();
        let b_key = key([10, 96, 0, 2], 80, IPPROTO_TCP, SCOPE_DEFAULT, 0);
        let b_id = frontend(&s, b_key).rev_nat_id;
        actual.services.remove(&b_key);
        let mut rebuilt = Ids::from_actual(&actual);
        assert_eq!(
            rebuilt.counts().quarantined_services,
            1,
            "b's id has no owner"
        );
        rebuilt.next_service = b_id;
        let again = compute(&[web("c", "10.96.0.3")], &[], &mut rebuilt);
        let c_id = frontend(
            &again,
            key([10, 96, 0, 3], 80, IPPROTO_TCP, SCOPE_DEFAULT, 0),
        );
        assert_ne!(
            c_id.rev_nat_id, b_id,
            "the orphan id is not reused before an apply"
        );
    }

    #[test]
    fn frontend_conflicts_resolve_deterministically() {
        let mut ids = Ids::new();
        let a = service(json!({
            "metadata": {"name": "a", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.1", "externalIPs": ["198.18.7.1"], "ports": [{"port": 80}]}
        }));
        let b = service(json!({
            "metadata": {"name": "b", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.2", "externalIPs": ["198.18.7.1"], "ports": [{"port": 80}]}
        }));
        let s1 = compute(&[a.clone(), b.clone()], &[], &mut ids);
        let s2 = compute(&[b, a], &[], &mut ids);
        assert_eq!(s1, s2, "first by namespace/name wins");
        let owner = frontend(&s1, key([198, 18, 7, 1], 80, IPPROTO_TCP, SCOPE_DEFAULT, 0));
        let a_id = frontend(&s1, key([10, 96, 0, 1], 80, IPPROTO_TCP, SCOPE_DEFAULT, 0));
        assert_eq!(owner.rev_nat_id, a_id.rev_nat_id);
    }

    #[test]
    fn cidr_parses_masks_and_contains() {
        let c: Ipv4Cidr = "10.244.1.7/24".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.network(), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.to_string(), "10.244.1.0/24");
        assert!(c.contains(Ipv4Addr::new(10, 244, 1, 255)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 2, 0)));
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.0.0.0".parse::<Ipv4Cidr>().is_err());
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
    }
}
