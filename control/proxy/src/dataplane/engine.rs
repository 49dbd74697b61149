//! The incremental programmer of the eBPF mode: service models in, ordered map operations out.
//!
//! The engine keeps, per service, the map entries it rendered last (a *fragment*) and the ids it
//! holds. [`Engine::update`] re-renders only the changed services (plus the services that gain
//! or lose a frontend another changed service asked for) and returns the ordered difference of
//! those fragments, so one endpoint change at 10k services is a handful of operations, not a
//! diff of the whole state. [`Engine::desired`] is the union of all fragments: what a full
//! resync compares against the kernel's maps.
//!
//! Ids are the engine's own: service ids (`u16`, never 0) per (ClusterIP, port, protocol),
//! backend ids (`u32`, never 0) per (service id, address, port, protocol). An id freed by an
//! update stays reserved until [`Engine::commit`] says the operations are in the maps, so an id
//! is never reused within one apply (an old flow's service or backend would turn into another
//! one mid-update). At start the engine adopts the ids it finds in the maps (a restarted agent
//! rewrites nothing for unchanged services); ids nobody adopts are freed by the first
//! [`Engine::sync_all`].
//!
//! Frontends two services ask for go to the first by namespace/name, as in [`super::desired`].

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use xkube_common::lb::{
    Backend, RevNat, SCOPE_DEFAULT, SVC_F_CLUSTER_IP, ServiceKey, ServiceValue,
};

use super::{
    desired::{
        BackendIdent, DesiredState, NodeContext, ServiceIdent, frontend_addrs, ip_of, ne,
        node_entries, node_port_range, node_ports,
    },
    filter::FrontendFilter,
    plan::{Op, plan},
    render::{IdSource, render_service, wanted_frontends},
};
use crate::model::{ServiceModel, ServiceName};

/// A next-fit id allocator whose freed ids are reserved until committed.
#[derive(Debug, Clone)]
struct IdPool {
    used: HashSet<u32>,
    /// Freed, not yet committed: still in `used`.
    pending: Vec<u32>,
    next: u32,
    max: u32,
}

impl IdPool {
    fn new(max: u32) -> Self {
        Self {
            used: HashSet::new(),
            pending: Vec::new(),
            next: 1,
            max,
        }
    }

    fn reserve(&mut self, id: u32) {
        if id != 0 && id <= self.max {
            self.used.insert(id);
            self.next = self.next.max(id.saturating_add(1));
        }
    }

    fn alloc(&mut self) -> Option<u32> {
        if self.used.len() >= self.max as usize {
            return None;
        }
        let mut id = self.next;
        loop {
            if id == 0 || id > self.max {
                id = 1;
            }
            if !self.used.contains(&id) {
                break;
            }
            id += 1;
        }
        self.used.insert(id);
        self.next = id.wrapping_add(1);
        Some(id)
    }

    fn free_later(&mut self, id: u32) {
        self.pending.push(id);
    }

    fn commit(&mut self) {
        for id in self.pending.drain(..) {
            self.used.remove(&id);
        }
    }
}

/// One service's map entries, as sorted slices (a fragment is small and read whole; slices
/// take a fraction of the memory of maps at 10k services).
#[derive(Debug, Clone, Default)]
struct Entries {
    services: Box<[(ServiceKey, ServiceValue)]>,
    backends: Box<[(u32, Backend)]>,
    revnat: Box<[(u16, RevNat)]>,
    maglev: Box<[(u16, Vec<u32>)]>,
}

impl Entries {
    fn from_state(s: DesiredState) -> Self {
        Self {
            services: s.services.into_iter().collect(),
            backends: s.backends.into_iter().collect(),
            revnat: s.revnat.into_iter().collect(),
            maglev: s.maglev.into_iter().collect(),
        }
    }
}

/// A sorted (key, id) slice.
#[derive(Debug, Clone)]
struct IdMap<K, V>(Box<[(K, V)]>);

impl<K: Ord + Copy, V: Copy> IdMap<K, V> {
    fn from_map(m: HashMap<K, V>) -> Self {
        let mut v: Vec<(K, V)> = m.into_iter().collect();
        v.sort_unstable_by_key(|(k, _)| *k);
        Self(v.into_boxed_slice())
    }

    fn get(&self, k: &K) -> Option<V> {
        self.0
            .binary_search_by(|(x, _)| x.cmp(k))
            .ok()
            .map(|i| self.0[i].1)
    }

    fn iter(&self) -> impl Iterator<Item = &(K, V)> {
        self.0.iter()
    }

    fn empty() -> Self {
        Self(Box::new([]))
    }
}

/// One service's map entries and the ids they use.
#[derive(Debug, Clone)]
struct Fragment {
    model: Arc<ServiceModel>,
    state: Entries,
    wanted: Box<[ServiceKey]>,
    service_ids: IdMap<ServiceIdent, u16>,
    backend_ids: IdMap<BackendIdent, u32>,
}

/// Ids found in the maps at start, by identity, until a service adopts them.
#[derive(Debug, Clone, Default)]
struct Recovered {
    services: HashMap<ServiceIdent, u16>,
    backends: HashMap<BackendIdent, u32>,
    /// Every id found (adopted or not).
    all_services: BTreeSet<u16>,
    all_backends: BTreeSet<u32>,
}

/// The incremental eBPF programmer (module docs).
#[derive(Debug, Clone)]
pub struct Engine {
    node: NodeContext,
    fragments: HashMap<ServiceName, Fragment>,
    /// Frontend (slot 0, default scope) -> the services asking for it, sorted; the first owns
    /// it (almost always only one: a vector).
    claims: HashMap<ServiceKey, Vec<ServiceName>>,
    service_pool: IdPool,
    backend_pool: IdPool,
    recovered: Option<Recovered>,
    /// NodePort -> frontends using it (for the node config's NodePort range).
    node_ports: BTreeMap<u16, usize>,
    /// Exact frontend address -> frontends using it (for `NODE_F_FRONTEND_ON_NODE` and the
    /// frontend filter).
    frontend_addrs: HashMap<u32, usize>,
    filter: FrontendFilter,
}

/// What [`Engine::update`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// The ordered map operations.
    pub ops: Vec<Op>,
    /// Services rendered again (the changed ones and those whose frontends moved).
    pub rendered: usize,
    /// Service ids whose name changed: `None` when the id is no longer used (for metrics;
    /// removals come before additions).
    pub names: Vec<(u16, Option<String>)>,
}

/// The `ns/name:port/proto` of each service id of a fragment.
fn fragment_names(name: &ServiceName, f: &Fragment) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    for p in &f.model.ports {
        let Some(proto) = super::render::ip_proto(p.protocol) else {
            continue;
        };
        let ident = ServiceIdent {
            cluster_ip: p.cluster_ip,
            port: p.port,
            proto,
        };
        if let Some(id) = f.service_ids.get(&ident) {
            let pname = if p.port_name.is_empty() {
                p.port.to_string()
            } else {
                p.port_name.clone()
            };
            out.push((id, format!("{name}:{pname}/{}", p.protocol.lower())));
        }
    }
    out
}

struct RenderIds<'a> {
    old_services: &'a IdMap<ServiceIdent, u16>,
    old_backends: &'a IdMap<BackendIdent, u32>,
    recovered: Option<&'a mut Recovered>,
    service_pool: &'a mut IdPool,
    backend_pool: &'a mut IdPool,
    services: HashMap<ServiceIdent, u16>,
    backends: HashMap<BackendIdent, u32>,
}

impl IdSource for RenderIds<'_> {
    fn service_id(&mut self, ident: ServiceIdent) -> Option<u16> {
        if let Some(id) = self.services.get(&ident) {
            return Some(*id);
        }
        let id = match self.old_services.get(&ident) {
            Some(id) => id,
            None => match self
                .recovered
                .as_mut()
                .and_then(|r| r.services.remove(&ident))
            {
                Some(id) => id,
                None => u16::try_from(self.service_pool.alloc()?).ok()?,
            },
        };
        self.services.insert(ident, id);
        Some(id)
    }

    fn backend_id(&mut self, ident: BackendIdent) -> Option<u32> {
        if let Some(id) = self.backends.get(&ident) {
            return Some(*id);
        }
        let id = match self.old_backends.get(&ident) {
            Some(id) => id,
            None => match self
                .recovered
                .as_mut()
                .and_then(|r| r.backends.remove(&ident))
            {
                Some(id) => id,
                None => self.backend_pool.alloc()?,
            },
        };
        self.backends.insert(ident, id);
        Some(id)
    }
}

fn merge(dst: &mut DesiredState, src: &Entries) {
    dst.services.extend(src.services.iter().copied());
    dst.backends.extend(src.backends.iter().copied());
    dst.revnat.extend(src.revnat.iter().copied());
    dst.maglev
        .extend(src.maglev.iter().map(|(k, v)| (*k, v.clone())));
}

impl Engine {
    /// An engine for `node` over maps that hold `actual` (empty maps: a fresh engine). The ids
    /// in `actual` are adopted by the services that render the same identities.
    pub fn new(node: NodeContext, actual: &DesiredState) -> Self {
        let mut service_pool = IdPool::new(u32::from(u16::MAX));
        let mut backend_pool = IdPool::new(u32::MAX);
        let mut rec = Recovered::default();
        for (key, value) in &actual.services {
            if value.rev_nat_id != 0 {
                rec.all_services.insert(value.rev_nat_id);
            }
            if key.slot == 0
                && key.scope == SCOPE_DEFAULT
                && value.flags & SVC_F_CLUSTER_IP != 0
                && value.rev_nat_id != 0
            {
                rec.services
                    .entry(ServiceIdent {
                        cluster_ip: ip_of(key.addr),
                        port: u16::from_be(key.port),
                        proto: key.proto,
                    })
                    .or_insert(value.rev_nat_id);
            }
        }
        rec.all_services.extend(actual.revnat.keys().copied());
        rec.all_services.extend(actual.maglev.keys().copied());
        for (id, b) in &actual.backends {
            rec.all_services.insert(b.rev_nat_id);
            rec.all_backends.insert(*id);
            rec.backends
                .entry(BackendIdent {
                    service: b.rev_nat_id,
                    addr: ip_of(b.addr),
                    port: u16::from_be(b.port),
                    proto: b.proto,
                })
                .or_insert(*id);
        }
        rec.all_services.remove(&0);
        rec.all_backends.remove(&0);
        for id in &rec.all_services {
            service_pool.reserve(u32::from(*id));
        }
        for id in &rec.all_backends {
            backend_pool.reserve(*id);
        }
        Self {
            node,
            fragments: HashMap::new(),
            claims: HashMap::new(),
            service_pool,
            backend_pool,
            recovered: Some(rec),
            node_ports: BTreeMap::new(),
            frontend_addrs: HashMap::new(),
            filter: FrontendFilter::default(),
        }
    }

    /// The node the engine renders for.
    pub fn node(&self) -> &NodeContext {
        &self.node
    }

    /// Changes the node facts; every service is rendered again (locality may differ). Returns
    /// the operations for the services (node entries are written by a full sync).
    pub fn set_node(&mut self, node: NodeContext) -> Update {
        if node == self.node {
            return Update::default();
        }
        self.node = node;
        let all: Vec<(ServiceName, Option<Arc<ServiceModel>>)> = self
            .fragments
            .iter()
            .map(|(n, f)| (n.clone(), Some(Arc::clone(&f.model))))
            .collect();
        self.render(all, true, true)
    }

    /// Number of services with a fragment.
    pub fn services(&self) -> usize {
        self.fragments.len()
    }

    /// Service ids by `ns/name:port/proto`, for metrics (every service: O(services)).
    pub fn service_names(&self) -> BTreeMap<u16, String> {
        self.fragments
            .iter()
            .flat_map(|(name, f)| fragment_names(name, f))
            .collect()
    }

    /// Applies changed services (`None`: removed) and returns the ordered operations that turn
    /// their old entries into the new ones. Touches only those services (and those whose
    /// frontends they take or give back).
    pub fn update(&mut self, changes: &[(ServiceName, Option<Arc<ServiceModel>>)]) -> Update {
        self.render(changes.to_vec(), false, true)
    }

    /// Brings the engine to exactly `models` (services not in it are removed, services whose
    /// model differs re-rendered) and frees the ids found at start that no service adopted.
    /// Computes no operations (`ops` is empty): a full sync applies `plan(actual, desired())`.
    pub fn sync_all(&mut self, models: &BTreeMap<ServiceName, Arc<ServiceModel>>) -> Update {
        let mut changes: Vec<(ServiceName, Option<Arc<ServiceModel>>)> = self
            .fragments
            .keys()
            .filter(|n| !models.contains_key(*n))
            .map(|n| (n.clone(), None))
            .collect();
        changes.extend(
            models
                .iter()
                .filter(|(n, m)| self.fragments.get(*n).is_none_or(|f| f.model != **m))
                .map(|(n, m)| (n.clone(), Some(Arc::clone(m)))),
        );
        let up = self.render(changes, false, false);
        if let Some(rec) = self.recovered.take() {
            let adopted_services: HashSet<u16> = self
                .fragments
                .values()
                .flat_map(|f| f.service_ids.iter().map(|(_, id)| *id))
                .collect();
            let adopted_backends: HashSet<u32> = self
                .fragments
                .values()
                .flat_map(|f| f.backend_ids.iter().map(|(_, id)| *id))
                .collect();
            for id in rec.all_services {
                if !adopted_services.contains(&id) {
                    self.service_pool.free_later(u32::from(id));
                }
            }
            for id in rec.all_backends {
                if !adopted_backends.contains(&id) {
                    self.backend_pool.free_later(id);
                }
            }
        }
        up
    }

    /// The operations of the last update or sync are in the maps: ids they freed may be reused.
    pub fn commit(&mut self) {
        self.service_pool.commit();
        self.backend_pool.commit();
    }

    /// Everything the maps should hold: node entries and every service's entries.
    pub fn desired(&self) -> DesiredState {
        let mut s = DesiredState::default();
        node_entries(&self.node, &mut s);
        s.node_config = self.node_config();
        s.frontend_filter = self.filter.words();
        for f in self.fragments.values() {
            merge(&mut s, &f.state);
        }
        s
    }

    /// The node config entry, with the range of the NodePorts programmed.
    fn node_config(&self) -> xkube_common::lb::NodeConfig {
        let mut c = self.node.node_config();
        let (lo, hi) = node_port_range(
            self.node_ports
                .first_key_value()
                .into_iter()
                .chain(self.node_ports.last_key_value())
                .map(|(p, _)| *p),
        );
        c.node_port_min = lo;
        c.node_port_max = hi;
        if self
            .node
            .node_addrs
            .iter()
            .chain([&self.node.node_addr])
            .any(|a| self.frontend_addrs.contains_key(&ne(*a)))
        {
            c.flags |= xkube_common::lb::NODE_F_FRONTEND_ON_NODE;
        }
        c
    }

    /// Counts the NodePorts and exact frontend addresses of `state` in (`add`) or out; an
    /// address gained or lost updates the filter, recording changed words in `touched`.
    fn count_frontends(&mut self, state: &Entries, add: bool, touched: &mut BTreeMap<u32, u64>) {
        fn count(n: &mut usize, add: bool) -> bool {
            if add {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
            }
            *n == 0
        }
        for p in node_ports(state.services.iter().map(|(k, _)| k)) {
            if count(self.node_ports.entry(p).or_insert(0), add) {
                self.node_ports.remove(&p);
            }
        }
        for a in frontend_addrs(state.services.iter().map(|(k, _)| k)) {
            let n = self.frontend_addrs.entry(a).or_insert(0);
            let was = *n;
            if count(n, add) {
                self.frontend_addrs.remove(&a);
                if was > 0 {
                    self.filter.remove(a, touched);
                }
            } else if was == 0 {
                self.filter.insert(a, touched);
            }
        }
    }

    fn owner(&self, key: &ServiceKey) -> Option<&ServiceName> {
        self.claims.get(key).and_then(|c| c.first())
    }

    /// Renders the changed services; with `ops`, also the operations from their old entries to
    /// the new ones.
    fn render(
        &mut self,
        changes: Vec<(ServiceName, Option<Arc<ServiceModel>>)>,
        force: bool,
        ops: bool,
    ) -> Update {
        let mut work: BTreeMap<ServiceName, Option<Arc<ServiceModel>>> = BTreeMap::new();
        let mut moved: BTreeSet<ServiceName> = BTreeSet::new();
        for (name, model) in changes {
            if !force
                && let (Some(m), Some(f)) = (&model, self.fragments.get(&name))
                && f.model == *m
            {
                continue;
            }
            let old: BTreeSet<ServiceKey> = self
                .fragments
                .get(&name)
                .map(|f| f.wanted.iter().copied().collect())
                .unwrap_or_default();
            let new: BTreeSet<ServiceKey> = model
                .as_deref()
                .map(|m| wanted_frontends(m).into_iter().collect())
                .unwrap_or_default();
            for k in old.difference(&new) {
                if let Some(c) = self.claims.get_mut(k) {
                    let was_owner = c.first() == Some(&name);
                    c.retain(|n| *n != name);
                    match c.first() {
                        Some(next) if was_owner => {
                            moved.insert(next.clone());
                        }
                        None => {
                            self.claims.remove(k);
                        }
                        _ => {}
                    }
                }
            }
            for k in new.difference(&old) {
                let c = self.claims.entry(*k).or_default();
                let before = c.first().cloned();
                if let Err(at) = c.binary_search(&name) {
                    c.insert(at, name.clone());
                }
                if let Some(prev) = before
                    && c.first() == Some(&name)
                {
                    moved.insert(prev);
                }
            }
            work.insert(name, model);
        }
        for name in moved {
            if !work.contains_key(&name)
                && let Some(f) = self.fragments.get(&name)
            {
                let m = Arc::clone(&f.model);
                work.insert(name, Some(m));
            }
        }

        let mut before = DesiredState {
            node_config: self.node_config(),
            ..DesiredState::default()
        };
        let mut after = DesiredState::default();
        let mut touched = BTreeMap::new();
        let rendered = work.len();
        let mut removed_names = Vec::new();
        let mut added_names = Vec::new();
        let empty_s = IdMap::empty();
        let empty_b = IdMap::empty();
        for (name, model) in work {
            let old = self.fragments.remove(&name);
            if let Some(o) = &old {
                if ops {
                    merge(&mut before, &o.state);
                }
                self.count_frontends(&o.state, false, &mut touched);
                removed_names.extend(o.service_ids.iter().map(|(_, id)| (*id, None)));
            }
            let new = model.map(|model| {
                let claims = &self.claims;
                let denied = |k: &ServiceKey| {
                    claims
                        .get(k)
                        .and_then(|c| c.first())
                        .is_some_and(|owner| *owner != name)
                };
                let mut ids = RenderIds {
                    old_services: old.as_ref().map_or(&empty_s, |o| &o.service_ids),
                    old_backends: old.as_ref().map_or(&empty_b, |o| &o.backend_ids),
                    recovered: self.recovered.as_mut(),
                    service_pool: &mut self.service_pool,
                    backend_pool: &mut self.backend_pool,
                    services: HashMap::new(),
                    backends: HashMap::new(),
                };
                let mut state = DesiredState::default();
                render_service(&model, &self.node, &mut ids, &denied, &mut state);
                let (service_ids, backend_ids) = (ids.services, ids.backends);
                Fragment {
                    wanted: wanted_frontends(&model).into_boxed_slice(),
                    model,
                    state: Entries::from_state(state),
                    service_ids: IdMap::from_map(service_ids),
                    backend_ids: IdMap::from_map(backend_ids),
                }
            });
            // Ids the old fragment held and the new one does not are freed after the apply.
            if let Some(o) = &old {
                for (ident, id) in o.service_ids.iter() {
                    if new
                        .as_ref()
                        .is_none_or(|n| n.service_ids.get(ident) != Some(*id))
                    {
                        self.service_pool.free_later(u32::from(*id));
                    }
                }
                for (ident, id) in o.backend_ids.iter() {
                    if new
                        .as_ref()
                        .is_none_or(|n| n.backend_ids.get(ident) != Some(*id))
                    {
                        self.backend_pool.free_later(*id);
                    }
                }
            }
            if let Some(n) = new {
                if ops {
                    merge(&mut after, &n.state);
                }
                self.count_frontends(&n.state, true, &mut touched);
                added_names.extend(
                    fragment_names(&name, &n)
                        .into_iter()
                        .map(|(i, n)| (i, Some(n))),
                );
                self.fragments.insert(name, n);
            }
        }
        // A new NodePort outside the range widens it before its frontend is written (the
        // node config comes first in a plan); a range that shrinks is narrowed first too,
        // which only stops lookups for frontends about to be removed.
        after.node_config = self.node_config();
        after.frontend_filter = self.filter.current(&touched);
        before.frontend_filter = touched;
        removed_names.extend(added_names);
        Update {
            ops: if ops {
                plan(&before, &after)
            } else {
                Vec::new()
            },
            rendered,
            names: removed_names,
        }
    }

    /// The owner of a frontend, for tests and diagnostics.
    pub fn frontend_owner(&self, key: &ServiceKey) -> Option<&ServiceName> {
        self.owner(key)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use xkube_common::lb::IPPROTO_TCP;

    use super::*;
    use crate::{
        dataplane::desired::{
            Ids, desired, ne,
            tests::{endpoints, node, service, web, web_eps},
        },
        model::{EndpointSource, build},
    };
    use k8s_openapi::api::core::v1::{Endpoints, Service};

    fn models(svcs: &[Service], eps: &[Endpoints]) -> BTreeMap<ServiceName, Arc<ServiceModel>> {
        svcs.iter()
            .filter_map(|s| {
                let name = ServiceName::of_service(s);
                let e = eps.iter().find(|e| ServiceName::of_endpoints(e) == name);
                build(s, e.map_or(EndpointSource::None, EndpointSource::Endpoints))
                    .map(|m| (name, Arc::new(m)))
            })
            .collect()
    }

    fn changes(
        m: &BTreeMap<ServiceName, Arc<ServiceModel>>,
    ) -> Vec<(ServiceName, Option<Arc<ServiceModel>>)> {
        m.iter()
            .map(|(n, m)| (n.clone(), Some(m.clone())))
            .collect()
    }

    /// The first operation after the frontend filter's bits (which always come first).
    fn first_non_filter(ops: &[Op]) -> Option<&Op> {
        ops.iter().find(|o| !matches!(o, Op::SetFilterWord { .. }))
    }

    fn mixed() -> (Vec<Service>, Vec<Endpoints>) {
        let lb = service(json!({
            "metadata": {"name": "lb", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.50",
                     "externalTrafficPolicy": "Local", "externalIPs": ["198.18.5.1"],
                     "sessionAffinity": "ClientIP",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                               {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.18.6.1"}]}}
        }));
        let lb_eps = endpoints(json!({
            "metadata": {"name": "lb", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "10.244.1.5", "nodeName": "node-a"},
                                       {"ip": "10.244.2.5", "nodeName": "node-b"}],
                         "ports": [{"name": "http", "port": 8080},
                                   {"name": "dns", "port": 5353, "protocol": "UDP"}]}]
        }));
        (
            vec![web("web", "10.96.0.10"), web("api", "10.96.0.11"), lb],
            vec![
                web_eps("web", &["10.244.1.5", "10.244.2.7"]),
                web_eps("api", &["10.244.1.9"]),
                lb_eps,
            ],
        )
    }

    #[test]
    fn incremental_result_equals_the_whole_state_function() {
        let (svcs, eps) = mixed();
        let mut e = Engine::new(node(), &DesiredState::default());
        let up = e.update(&changes(&models(&svcs, &eps)));
        e.commit();
        let whole = desired(&svcs, &eps, &node(), &mut Ids::new());
        assert_eq!(e.desired(), whole, "same entries and the same ids");
        let mut written = DesiredState::default();
        node_entries(&node(), &mut written);
        assert_eq!(
            plan(&written, &whole).len(),
            up.ops.len(),
            "the update wrote every service entry"
        );
    }

    #[test]
    fn one_endpoint_change_at_10k_services_touches_only_that_service() {
        let n = 10_000u32;
        let base = u32::from(std::net::Ipv4Addr::new(10, 96, 0, 10));
        let pod = u32::from(std::net::Ipv4Addr::new(10, 200, 0, 0));
        let ip = |x: u32| std::net::Ipv4Addr::from(x).to_string();
        let svcs: Vec<Service> = (0..n)
            .map(|i| web(&format!("s{i}"), &ip(base + i)))
            .collect();
        let eps: Vec<Endpoints> = (0..n)
            .map(|i| {
                let addrs: Vec<String> = (0..5).map(|j| ip(pod + i * 5 + j)).collect();
                let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
                web_eps(&format!("s{i}"), &refs)
            })
            .collect();
        let all = models(&svcs, &eps);
        let mut e = Engine::new(node(), &DesiredState::default());
        let first = e.update(&changes(&all));
        e.commit();
        assert_eq!(first.rendered, n as usize);
        let filter = first
            .ops
            .iter()
            .filter(|o| matches!(o, Op::SetFilterWord { .. }))
            .count();
        assert_eq!(
            first.ops.len() - filter,
            n as usize * (1 + 5 + 5 + 1),
            "frontend, slots, backends, revnat"
        );
        assert!(
            (1..=xkube_common::lb::FRONTEND_FILTER_WORDS).contains(&filter),
            "each filter word written once: {filter}"
        );
        assert!(
            first.ops[..filter]
                .iter()
                .all(|o| matches!(o, Op::SetFilterWord { .. })),
            "filter bits before anything else"
        );

        // Replace one endpoint of s1234.
        let target = ServiceName::new("default", "s1234");
        let changed = {
            let mut addrs: Vec<String> = (0..4).map(|j| ip(pod + 1234 * 5 + j)).collect();
            addrs.push(ip(pod + n * 5 + 1));
            let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
            let svc = &svcs[1234];
            Arc::new(
                build(svc, EndpointSource::Endpoints(&web_eps("s1234", &refs)))
                    .unwrap_or_else(|| panic!("model")),
            )
        };
        let up = e.update(&[(target.clone(), Some(changed))]);
        assert_eq!(up.rendered, 1, "only the changed service is rendered");
        let id = e
            .service_names()
            .into_iter()
            .find(|(_, n)| n.starts_with("default/s1234:"))
            .map(|(id, _)| id)
            .unwrap_or_else(|| panic!("id of s1234"));
        let cip = ne(std::net::Ipv4Addr::from(base + 1234));
        for op in &up.ops {
            let ours = match op {
                Op::UpsertService { key, value } => key.addr == cip && value.rev_nat_id == id,
                Op::DeleteService { key } => key.addr == cip,
                Op::UpsertBackend { backend, .. } => backend.rev_nat_id == id,
                Op::DeleteBackend { .. } => true,
                _ => false,
            };
            assert!(ours, "op {op:?} does not belong to s1234 (id {id})");
        }
        // New backend, its slot (sorted last: slot 5), the old backend removed; the slots of
        // the four unchanged endpoints move up by one.
        assert!(
            (3..=7).contains(&up.ops.len()),
            "a handful of map operations, got {}: {:?}",
            up.ops.len(),
            up.ops
        );
        assert_eq!(
            up.ops.iter().filter(|o| o.is_delete()).count(),
            1,
            "the old backend"
        );
    }

    #[test]
    fn a_frontend_moves_to_the_next_claimant_when_its_owner_lets_go() {
        let a = service(json!({
            "metadata": {"name": "a", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.1", "externalIPs": ["198.18.7.1"], "ports": [{"port": 80}]}
        }));
        let b = service(json!({
            "metadata": {"name": "b", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.2", "externalIPs": ["198.18.7.1"], "ports": [{"port": 80}]}
        }));
        let ext = ServiceKey {
            addr: ne(std::net::Ipv4Addr::new(198, 18, 7, 1)),
            port: 80u16.to_be(),
            proto: IPPROTO_TCP,
            scope: SCOPE_DEFAULT,
            slot: 0,
            _pad: 0,
        };
        let mut e = Engine::new(node(), &DesiredState::default());
        // b first, then a: a still wins (first by namespace/name).
        let mb = models(std::slice::from_ref(&b), &[]);
        e.update(&changes(&mb));
        let ma = models(std::slice::from_ref(&a), &[]);
        let up = e.update(&changes(&ma));
        assert_eq!(up.rendered, 2, "a, and b which lost the frontend");
        assert_eq!(
            e.frontend_owner(&ext),
            Some(&ServiceName::new("default", "a"))
        );
        let d = e.desired();
        let ids = e.service_names();
        let a_id = ids
            .iter()
            .find(|(_, n)| n.starts_with("default/a"))
            .map(|(i, _)| *i);
        assert_eq!(d.services.get(&ext).map(|v| v.rev_nat_id), a_id);
        e.commit();
        // a goes away: b takes the frontend over.
        let up = e.update(&[(ServiceName::new("default", "a"), None)]);
        let b_id = e
            .service_names()
            .into_iter()
            .find(|(_, n)| n.starts_with("default/b"))
            .map(|(i, _)| i);
        assert!(
            up.ops.iter().any(|o| matches!(o, Op::UpsertService { key, value } if *key == ext && Some(value.rev_nat_id) == b_id)),
            "b's frontend written: {:?}",
            up.ops
        );
        assert!(
            !up.ops
                .iter()
                .any(|o| matches!(o, Op::DeleteService { key } if *key == ext)),
            "the shared frontend is rewritten, never deleted"
        );
    }

    #[test]
    fn freed_ids_are_not_reused_before_commit() {
        let mut e = Engine::new(node(), &DesiredState::default());
        let m1 = models(
            &[web("one", "10.96.0.1")],
            &[web_eps("one", &["10.244.1.2"])],
        );
        e.update(&changes(&m1));
        e.commit();
        let id1 = *e.service_names().keys().next().unwrap_or(&0);
        let m2 = models(
            &[web("two", "10.96.0.2")],
            &[web_eps("two", &["10.244.1.3"])],
        );
        let mut ch = changes(&m2);
        ch.push((ServiceName::new("default", "one"), None));
        e.update(&ch);
        let id2 = *e.service_names().keys().next().unwrap_or(&0);
        assert_ne!(id1, id2, "the freed id is not reused in the same apply");
        e.commit();
        // Walk the id space around: after commit the freed id can come back.
        assert!(e.service_pool.alloc().is_some());
    }

    #[test]
    fn restarted_engine_adopts_the_ids_in_the_maps_and_plans_nothing() {
        let (svcs, eps) = mixed();
        let all = models(&svcs, &eps);
        let mut e = Engine::new(node(), &DesiredState::default());
        e.update(&changes(&all));
        e.commit();
        let actual = e.desired();
        let mut restarted = Engine::new(node(), &actual);
        restarted.sync_all(&all);
        restarted.commit();
        assert_eq!(
            plan(&actual, &restarted.desired()),
            vec![],
            "a restart rewrites nothing"
        );
    }

    #[test]
    fn ids_left_in_the_maps_by_services_gone_during_a_restart_are_freed_after_the_first_sync() {
        let (svcs, eps) = mixed();
        let mut e = Engine::new(node(), &DesiredState::default());
        e.update(&changes(&models(&svcs, &eps)));
        e.commit();
        let actual = e.desired();
        let mut restarted = Engine::new(node(), &actual);
        let fewer = models(&svcs[..1], &eps);
        restarted.sync_all(&fewer);
        let ops = plan(&actual, &restarted.desired());
        assert!(
            ops.iter().any(Op::is_delete),
            "the gone services are removed"
        );
        assert_eq!(
            restarted.service_pool.pending.len(),
            3,
            "api and lb's two ports"
        );
        restarted.commit();
        assert!(restarted.service_pool.pending.is_empty());
    }

    #[test]
    fn internal_traffic_policy_local_keeps_cluster_ip_traffic_on_the_node() {
        let s = service(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "internalTrafficPolicy": "Local",
                     "ports": [{"port": 80, "targetPort": 8080}]}
        }));
        let ep = endpoints(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "10.244.1.5", "nodeName": "node-a"},
                                       {"ip": "10.244.2.5", "nodeName": "node-b"}],
                         "ports": [{"port": 8080}]}]
        }));
        let mut e = Engine::new(node(), &DesiredState::default());
        e.update(&changes(&models(&[s], &[ep])));
        let d = e.desired();
        let fe = d
            .services
            .iter()
            .find(|(k, _)| k.slot == 0)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("frontend"));
        assert_eq!(fe.count, 1, "only the local endpoint");
        assert_eq!(
            d.backends.len(),
            2,
            "both backends exist (for conntrack revalidation)"
        );
    }

    #[test]
    fn the_node_port_range_is_widened_before_a_node_port_is_written_and_narrowed_after_removal() {
        let np = service(json!({
            "metadata": {"name": "np", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.20",
                     "ports": [{"port": 80, "nodePort": 30080}]}
        }));
        let mut e = Engine::new(node(), &DesiredState::default());
        let cfg = e.desired().node_config;
        assert!(
            cfg.node_port_min > cfg.node_port_max,
            "no NodePorts: an empty range"
        );
        let up = e.update(&changes(&models(std::slice::from_ref(&np), &[])));
        e.commit();
        assert!(
            matches!(first_non_filter(&up.ops), Some(Op::SetNodeConfig(c)) if (c.node_port_min, c.node_port_max) == (30080, 30080)),
            "the range comes first: {:?}",
            up.ops
        );
        let up = e.update(&[(ServiceName::new("default", "np"), None)]);
        assert!(
            matches!(first_non_filter(&up.ops), Some(Op::SetNodeConfig(c)) if c.node_port_min > c.node_port_max),
            "{:?}",
            up.ops
        );
    }

    #[test]
    fn an_external_ip_on_a_node_address_is_flagged_so_the_uplink_looks_it_up() {
        use xkube_common::lb::NODE_F_FRONTEND_ON_NODE;
        let on_node = service(json!({
            "metadata": {"name": "x", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.30", "externalIPs": ["198.18.0.11"],
                     "ports": [{"port": 443}]}
        }));
        let mut e = Engine::new(node(), &DesiredState::default());
        e.update(&changes(&models(&[web("web", "10.96.0.10")], &[])));
        assert_eq!(e.desired().node_config.flags & NODE_F_FRONTEND_ON_NODE, 0);
        let up = e.update(&changes(&models(std::slice::from_ref(&on_node), &[])));
        assert!(
            matches!(first_non_filter(&up.ops), Some(Op::SetNodeConfig(c)) if c.flags & NODE_F_FRONTEND_ON_NODE != 0),
            "flag set before the frontend: {:?}",
            up.ops
        );
        let whole = desired(
            &[web("web", "10.96.0.10"), on_node],
            &[],
            &node(),
            &mut Ids::new(),
        );
        assert_eq!(e.desired().node_config, whole.node_config);
        e.update(&[(ServiceName::new("default", "x"), None)]);
        assert_eq!(e.desired().node_config.flags & NODE_F_FRONTEND_ON_NODE, 0);
    }
}
