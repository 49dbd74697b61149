//! The mode-neutral service model: what every proxy mode needs to know about a Service and its
//! endpoints, parsed once (like Cilium's `pkg/loadbalancer`, free of BPF types).
//!
//! [`build`] turns one `Service` and its `Endpoints` (or `EndpointSlice`s) into a
//! [`ServiceModel`]: per service port its frontends (ClusterIP, NodePort, externalIPs,
//! LoadBalancer ingress IPs), protocol, session affinity, traffic policies, health-check node
//! port, source ranges and its endpoints with their conditions. It is pure and works per
//! object: the [`ChangeTracker`] rebuilds only the service whose Service or Endpoints changed
//! and reports which services differ, which is what the modes apply.
//!
//! What is left out, as kube-proxy leaves it out: `ExternalName` and headless Services, service
//! ports without a valid port number, non-IPv4 addresses.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Endpoints, Service},
    discovery::v1::EndpointSlice,
};

/// Annotation choosing the backend selection algorithm of a Service: `maglev` or `random`
/// (the default).
pub const LB_ALGORITHM_ANNOTATION: &str = "service.xkube.io/lb-algorithm";
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;
/// The annotation the endpoints controller sets to the time of the change that triggered an
/// Endpoints update (RFC 3339); the source of `network_programming_duration_seconds`.
pub const LAST_CHANGE_TRIGGER_TIME_ANNOTATION: &str =
    "endpoints.kubernetes.io/last-change-trigger-time";
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub use xkube_api::net::{CidrParseError, Ipv4Cidr};

/// `--cluster-cidr` default ([`xkube_api::cluster::CLUSTER_CIDR`]).
pub const DEFAULT_CLUSTER_CIDR: Ipv4Cidr = match Ipv4Cidr::new(Ipv4Addr::new(10, 244, 0, 0), 16) {
    Some(c) => c,
    None => panic!("a valid prefix"),
};

/// `namespace/name` of a Service (and of its Endpoints).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Self::new(
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or(""),
        )
    }

    /// The name of a Service or Endpoints object.
    pub fn of_service(s: &Service) -> Self {
        Self::of(&s.metadata)
    }

    pub fn of_endpoints(e: &Endpoints) -> Self {
        Self::of(&e.metadata)
    }

    /// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label).
    pub fn of_slice(s: &EndpointSlice) -> Option<Self> {
        let svc = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        Some(Self::new(
            s.metadata.namespace.as_deref().unwrap_or("default"),
            svc.as_str(),
        ))
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A service port's transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// `TCP` (also the default when unset), `UDP` or `SCTP`.
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// Lower case, as kube-proxy prints it (`tcp`).
    pub fn lower(&self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// How a backend is chosen for a new connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LbAlgorithm {
    #[default]
    Random,
    Maglev,
}

/// One endpoint of a service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    /// The endpoint port serving this service port.
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
    pub zone: Option<String>,
}

impl Endpoint {
    /// Whether the endpoint runs on the node `node_name`, whose pods are in `pod_cidr`:
    /// by `nodeName` when set, by address otherwise.
    pub fn is_local(&self, node_name: &str, pod_cidr: Option<Ipv4Cidr>) -> bool {
        match self.node_name.as_deref() {
            Some(n) if !n.is_empty() => n == node_name,
            _ => pod_cidr.is_some_and(|c| c.contains(self.addr)),
        }
    }
}

/// One port of a Service with everything a mode implements for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// `spec.ports[].name` (empty when unnamed).
    pub port_name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub cluster_ip: Ipv4Addr,
    /// Set for NodePort and LoadBalancer services.
    pub node_port: Option<u16>,
    pub external_ips: Vec<Ipv4Addr>,
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP` and its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    pub external_policy: TrafficPolicy,
    pub internal_policy: TrafficPolicy,
    pub health_check_node_port: Option<u16>,
    pub source_ranges: Vec<Ipv4Cidr>,
    pub algorithm: LbAlgorithm,
    /// Sorted by (address, port); one entry per distinct address and port.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// The endpoints that receive new connections, as kube-proxy picks them: the ready ones;
    /// when there are none, the serving ones that are terminating (graceful termination).
    pub fn usable_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        let any_ready = self.endpoints.iter().any(|e| e.ready);
        self.endpoints.iter().filter(move |e| {
            if any_ready {
                e.ready
            } else {
                e.serving && e.terminating
            }
        })
    }

    /// `ns/name:port` as kube-proxy names service ports (the port name, or nothing).
    pub fn display_name(&self, svc: &ServiceName) -> String {
        if self.port_name.is_empty() {
            format!("{svc}")
        } else {
            format!("{svc}:{}", self.port_name)
        }
    }
}

/// One Service as every mode sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceModel {
    pub name: ServiceName,
    pub ports: Vec<ServicePort>,
}

/// Where a service's endpoints come from.
#[derive(Clone, Copy, Debug)]
pub enum EndpointSource<'a> {
    None,
    Endpoints(&'a Endpoints),
    /// The service's EndpointSlices (all of them; IPv4 ones are used).
    Slices(&'a [Arc<EndpointSlice>]),
}

fn parse_ips<'a>(ips: impl Iterator<Item = &'a str>) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = ips
        .filter_map(|s| s.parse::<Ipv4Addr>().ok())
        .filter(|ip| !ip.is_unspecified())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Endpoints sharing a set of ports: one subset of an Endpoints object or one EndpointSlice,
/// parsed (what the change tracker keeps instead of the API object).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointGroup {
    /// (port name, protocol, port); unknown protocols and invalid ports left out.
    pub ports: Vec<(String, Protocol, u16)>,
    /// The endpoints, `port` 0 (it is per service port).
    pub endpoints: Vec<Endpoint>,
}

impl EndpointGroup {
    fn port_for(&self, name: &str, proto: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|(n, p, _)| n == name && *p == proto)
            .map(|(_, _, port)| *port)
    }
}

fn group_ports<'a>(
    ports: impl Iterator<Item = (Option<&'a str>, Option<&'a str>, Option<i32>)>,
) -> Vec<(String, Protocol, u16)> {
    ports
        .filter_map(|(n, p, port)| {
            let proto = Protocol::parse(p)?;
            let port = port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)?;
            Some((n.unwrap_or("").to_owned(), proto, port))
        })
        .collect()
}

/// The groups of an Endpoints object: `addresses` are ready (and serving), `notReadyAddresses`
/// neither (Endpoints cannot say more).
pub fn endpoint_groups(eps: &Endpoints) -> Vec<EndpointGroup> {
    let mut out = Vec::new();
    for subset in eps.subsets.iter().flatten() {
        let ports = group_ports(
            subset
                .ports
                .iter()
                .flatten()
                .map(|p| (p.name.as_deref(), p.protocol.as_deref(), Some(p.port))),
        );
        if ports.is_empty() {
            continue;
        }
        let mut endpoints = Vec::new();
        for (addrs, ready) in [
            (&subset.addresses, true),
            (&subset.not_ready_addresses, false),
        ] {
            for a in addrs.iter().flatten() {
                let Ok(addr) = a.ip.parse::<Ipv4Addr>() else {
                    continue;
                };
                endpoints.push(Endpoint {
                    addr,
                    port: 0,
                    ready,
                    serving: ready,
                    terminating: false,
                    node_name: a.node_name.clone(),
                    zone: None,
                });
            }
        }
        out.push(EndpointGroup { ports, endpoints });
    }
    out
}

/// The group of an EndpointSlice (conditions as the API defines them: a missing `ready` is
/// true, a missing `serving` follows `ready`, a missing `terminating` is false); `None` for
/// non-IPv4 slices.
pub fn slice_group(slice: &EndpointSlice) -> Option<EndpointGroup> {
    if slice.address_type != "IPv4" {
        return None;
    }
    let ports = group_ports(
        slice
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.protocol.as_deref(), p.port)),
    );
    let mut endpoints = Vec::new();
    for e in &slice.endpoints {
        let c = e.conditions.as_ref();
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        let serving = c.and_then(|c| c.serving).unwrap_or(ready);
        let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
        for a in &e.addresses {
            let Ok(addr) = a.parse::<Ipv4Addr>() else {
                continue;
            };
            endpoints.push(Endpoint {
                addr,
                port: 0,
                ready,
                serving,
                terminating,
                node_name: e.node_name.clone(),
                zone: e.zone.clone(),
            });
        }
    }
    Some(EndpointGroup { ports, endpoints })
}

/// The service's model with the endpoints of `groups` on each port (matched by port name and
/// protocol). Pure.
pub fn with_endpoints<'a>(
    template: &ServiceModel,
    groups: impl Iterator<Item = &'a EndpointGroup> + Clone,
) -> ServiceModel {
    let mut m = template.clone();
    for p in &mut m.ports {
        let mut found = Vec::new();
        for g in groups.clone() {
            let Some(port) = g.port_for(&p.port_name, p.protocol) else {
                continue;
            };
            found.extend(g.endpoints.iter().map(|e| Endpoint { port, ..e.clone() }));
        }
        p.endpoints = merge_endpoints(found);
    }
    m
}

/// The model of one Service with its endpoints; `None` when no mode implements it
/// (ExternalName, headless, no IPv4 ClusterIP yet). Pure.
pub fn build(svc: &Service, source: EndpointSource<'_>) -> Option<ServiceModel> {
    let template = parse_service(svc)?;
    Some(match source {
        EndpointSource::None => template,
        EndpointSource::Endpoints(e) => with_endpoints(&template, endpoint_groups(e).iter()),
        EndpointSource::Slices(s) => {
            let groups: Vec<EndpointGroup> = s.iter().filter_map(|s| slice_group(s)).collect();
            with_endpoints(&template, groups.iter())
        }
    })
}

/// The model of one Service without endpoints (the template [`with_endpoints`] fills).
pub fn parse_service(svc: &Service) -> Option<ServiceModel> {
    let spec = svc.spec.as_ref()?;
    let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if svc_type == "ExternalName" {
        return None;
    }
    let cluster_ip: Ipv4Addr = match spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => return None,
        Some(s) => s.parse().ok()?,
    };
    let name = ServiceName::of_service(svc);
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS)
    });
    let policy = |p: Option<&str>| match p {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    let algorithm = match svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LB_ALGORITHM_ANNOTATION))
    {
        Some(a) if a.eq_ignore_ascii_case("maglev") => LbAlgorithm::Maglev,
        _ => LbAlgorithm::Random,
    };
    let node_ports = matches!(svc_type, "NodePort" | "LoadBalancer");
    let external_ips = parse_ips(spec.external_ips.iter().flatten().map(String::as_str));
    let load_balancer_ips = parse_ips(
        svc.status
            .iter()
            .filter_map(|s| s.load_balancer.as_ref())
            .filter_map(|lb| lb.ingress.as_ref())
            .flatten()
            // `ipMode: Proxy`: the load balancer proxies to the nodes, its address is not
            // one to capture on them (kube-proxy ignores it too).
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_deref()),
    );
    let mut source_ranges: Vec<Ipv4Cidr> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    source_ranges.sort();
    source_ranges.dedup();
    let external_policy = policy(spec.external_traffic_policy.as_deref());
    let health_check_node_port = spec
        .health_check_node_port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0 && external_policy == TrafficPolicy::Local);

    let mut ports = Vec::new();
    let mut seen = BTreeSet::new();
    for sp in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::parse(sp.protocol.as_deref()) else {
            continue;
        };
        let Some(port) = u16::try_from(sp.port).ok().filter(|p| *p != 0) else {
            continue;
        };
        if !seen.insert((port, protocol)) {
            continue; // a duplicate the apiserver should have refused
        }
        let port_name = sp.name.clone().unwrap_or_default();
        ports.push(ServicePort {
            port_name,
            protocol,
            port,
            cluster_ip,
            node_port: sp
                .node_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| node_ports && *p != 0),
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            affinity_timeout,
            external_policy,
            internal_policy: policy(spec.internal_traffic_policy.as_deref()),
            health_check_node_port,
            source_ranges: source_ranges.clone(),
            algorithm,
            endpoints: Vec::new(),
        });
    }
    Some(ServiceModel { name, ports })
}

/// Sorts endpoints by (address, port) and merges duplicates (the same address listed twice,
/// e.g. in two slices): the best conditions win.
fn merge_endpoints(mut found: Vec<Endpoint>) -> Vec<Endpoint> {
    found.sort_by_key(|e| (u32::from(e.addr), e.port, !e.ready, !e.serving));
    let mut out: Vec<Endpoint> = Vec::with_capacity(found.len());
    for e in found {
        match out.last_mut() {
            Some(last) if last.addr == e.addr && last.port == e.port => {
                last.ready |= e.ready;
                last.serving |= e.serving;
                last.terminating &= e.terminating;
            }
            _ => out.push(e),
        }
    }
    out
}

/// What changed since the last [`ChangeTracker::take_changes`].
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// Services whose model differs from the one last taken; `None`: the service is gone (or no
    /// mode implements it any more).
    pub services: Vec<(ServiceName, Option<Arc<ServiceModel>>)>,
    /// `endpoints.kubernetes.io/last-change-trigger-time` of every Endpoints update seen, raw.
    pub trigger_times: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// The current Services and Endpoints by name, parsed, and the models built from them. A change
/// of one object marks one service dirty; [`ChangeTracker::take_changes`] rebuilds the dirty
/// ones only. API objects are parsed on arrival and not kept: what stays is the service
/// templates, the endpoint groups and the models.
#[derive(Debug, Default)]
pub struct ChangeTracker {
    /// Service templates (models without endpoints) of the services a mode implements.
    services: BTreeMap<ServiceName, ServiceModel>,
    /// Endpoints objects' groups and their last trigger time.
    endpoints: BTreeMap<ServiceName, (Vec<EndpointGroup>, Option<String>)>,
    /// EndpointSlices' groups and last trigger times by slice name.
    slices: BTreeMap<ServiceName, BTreeMap<String, (EndpointGroup, Option<String>)>>,
    models: BTreeMap<ServiceName, Arc<ServiceModel>>,
    dirty: BTreeSet<ServiceName>,
    trigger_times: Vec<String>,
    service_changes: u64,
    endpoint_changes: u64,
}

fn trigger_time(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<String> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(LAST_CHANGE_TRIGGER_TIME_ANNOTATION))
        .cloned()
}

impl ChangeTracker {
    pub fn new() -> Self {
        Self::default()
    }

    fn set_service(&mut self, svc: &Service) -> ServiceName {
        let name = ServiceName::of_service(svc);
        match parse_service(svc) {
            Some(t) => self.services.insert(name.clone(), t),
            None => self.services.remove(&name),
        };
        name
    }

    /// A Service was added or changed.
    pub fn service_applied(&mut self, svc: Arc<Service>) {
        self.service_changes += 1;
        let name = self.set_service(&svc);
        self.dirty.insert(name);
    }

    /// A Service was deleted.
    pub fn service_deleted(&mut self, name: &ServiceName) {
        self.service_changes += 1;
        self.services.remove(name);
        self.dirty.insert(name.clone());
    }

    /// An Endpoints object was added or changed.
    pub fn endpoints_applied(&mut self, eps: Arc<Endpoints>) {
        let name = ServiceName::of_endpoints(&eps);
        self.endpoint_changes += 1;
        let new = trigger_time(&eps.metadata);
        let old = self.endpoints.get(&name).and_then(|(_, t)| t.clone());
        self.note_trigger(&new, old.as_ref());
        self.endpoints
            .insert(name.clone(), (endpoint_groups(&eps), new));
        self.dirty.insert(name);
    }

    /// An Endpoints object was deleted.
    pub fn endpoints_deleted(&mut self, name: &ServiceName) {
        self.endpoint_changes += 1;
        self.endpoints.remove(name);
        self.dirty.insert(name.clone());
    }

    /// A new trigger time (an Endpoints' or EndpointSlice's annotation) is a change to
    /// measure the network programming latency of.
    fn note_trigger(&mut self, new: &Option<String>, old: Option<&String>) {
        if let Some(t) = new
            && Some(t) != old
        {
            self.trigger_times.push(t.clone());
        }
    }

    fn set_slice(&mut self, slice: &EndpointSlice) -> Option<ServiceName> {
        let name = ServiceName::of_slice(slice)?;
        let slice_name = slice.metadata.name.clone().unwrap_or_default();
        let m = self.slices.entry(name.clone()).or_default();
        match slice_group(slice) {
            Some(g) => {
                m.insert(slice_name, (g, trigger_time(&slice.metadata)));
            }
            None => {
                m.remove(&slice_name);
                if m.is_empty() {
                    self.slices.remove(&name);
                }
            }
        }
        Some(name)
    }

    /// An EndpointSlice was added or changed (slices without a service label are ignored).
    pub fn slice_applied(&mut self, slice: Arc<EndpointSlice>) {
        let Some(name) = ServiceName::of_slice(&slice) else {
            return;
        };
        self.endpoint_changes += 1;
        let old = self
            .slices
            .get(&name)
            .and_then(|m| m.get(slice.metadata.name.as_deref().unwrap_or("")))
            .and_then(|(_, t)| t.clone());
        self.note_trigger(&trigger_time(&slice.metadata), old.as_ref());
        self.set_slice(&slice);
        self.dirty.insert(name);
    }

    /// An EndpointSlice was deleted.
    pub fn slice_deleted(&mut self, slice: &EndpointSlice) {
        let Some(name) = ServiceName::of_slice(slice) else {
            return;
        };
        self.endpoint_changes += 1;
        if let Some(m) = self.slices.get_mut(&name) {
            m.remove(slice.metadata.name.as_deref().unwrap_or(""));
            if m.is_empty() {
                self.slices.remove(&name);
            }
        }
        self.dirty.insert(name);
    }

    /// Replaces every Service with a full list (a relist); only services whose model differs
    /// are reported by the next [`Self::take_changes`].
    pub fn replace_services(&mut self, services: impl IntoIterator<Item = Arc<Service>>) {
        let old = std::mem::take(&mut self.services);
        self.dirty.extend(old.into_keys());
        for s in services {
            let name = self.set_service(&s);
            self.dirty.insert(name);
        }
    }

    /// Replaces every EndpointSlice with a full list (a relist).
    pub fn replace_slices(&mut self, slices: impl IntoIterator<Item = Arc<EndpointSlice>>) {
        let old = std::mem::take(&mut self.slices);
        self.dirty.extend(old.into_keys());
        for s in slices {
            if let Some(name) = self.set_slice(&s) {
                self.dirty.insert(name);
            }
        }
    }

    /// Replaces every Endpoints object with a full list (a relist).
    pub fn replace_endpoints(&mut self, endpoints: impl IntoIterator<Item = Arc<Endpoints>>) {
        let old = std::mem::take(&mut self.endpoints);
        self.dirty.extend(old.into_keys());
        for e in endpoints {
            let name = ServiceName::of_endpoints(&e);
            let t = trigger_time(&e.metadata);
            self.endpoints
                .insert(name.clone(), (endpoint_groups(&e), t));
            self.dirty.insert(name);
        }
    }

    /// Replaces everything with full lists.
    pub fn replace_all(
        &mut self,
        services: impl IntoIterator<Item = Arc<Service>>,
        endpoints: impl IntoIterator<Item = Arc<Endpoints>>,
        slices: impl IntoIterator<Item = Arc<EndpointSlice>>,
    ) {
        self.replace_services(services);
        self.replace_endpoints(endpoints);
        self.replace_slices(slices);
    }

    /// Whether anything is waiting for [`Self::take_changes`].
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Rebuilds the dirty services' models and returns those that differ. EndpointSlices, when
    /// a service has any, take precedence over its Endpoints.
    pub fn take_changes(&mut self) -> Changes {
        let mut out = Changes {
            services: Vec::new(),
            trigger_times: std::mem::take(&mut self.trigger_times),
        };
        for name in std::mem::take(&mut self.dirty) {
            let model = self.services.get(&name).map(|t| {
                let m = match (self.slices.get(&name), self.endpoints.get(&name)) {
                    (Some(s), _) if !s.is_empty() => with_endpoints(t, s.values().map(|(g, _)| g)),
                    (_, Some((g, _))) => with_endpoints(t, g.iter()),
                    _ => t.clone(),
                };
                Arc::new(m)
            });
            match (model, self.models.get(&name)) {
                (Some(m), Some(old)) if *m == **old => {}
                (Some(m), _) => {
                    self.models.insert(name.clone(), Arc::clone(&m));
                    out.services.push((name, Some(m)));
                }
                (None, Some(_)) => {
                    self.models.remove(&name);
                    out.services.push((name, None));
                }
                (None, None) => {}
            }
        }
        out
    }

    /// Every service's current model (as of the last [`Self::take_changes`]).
    pub fn models(&self) -> &BTreeMap<ServiceName, Arc<ServiceModel>> {
        &self.models
    }

    /// Service and endpoint object changes seen so far (kube-proxy's
    /// `service_changes_total` / `endpoint_changes_total`).
    pub fn change_counts(&self) -> (u64, u64) {
        (self.service_changes, self.endpoint_changes)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("test Service does not parse: {e}"))
    }

    fn endpoints(v: serde_json::Value) -> Endpoints {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("test Endpoints does not parse: {e}"))
    }

    fn svc(spec: serde_json::Value) -> Service {
        service(json!({"metadata": {"name": "web", "namespace": "ns1"}, "spec": spec}))
    }

    fn eps(subsets: serde_json::Value) -> Endpoints {
        endpoints(json!({"metadata": {"name": "web", "namespace": "ns1"}, "subsets": subsets}))
    }

    fn model(s: &Service, e: Option<&Endpoints>) -> ServiceModel {
        build(s, e.map_or(EndpointSource::None, EndpointSource::Endpoints))
            .unwrap_or_else(|| panic!("a model for {s:?}"))
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn cluster_ip_service_has_one_port_with_its_ready_endpoints() {
        let s =
            svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80, "targetPort": 8080}]}));
        let e = eps(
            json!([{"addresses": [{"ip": "10.244.1.5", "nodeName": "n1"}, {"ip": "10.244.0.9"}],
                            "notReadyAddresses": [{"ip": "10.244.2.2"}],
                            "ports": [{"port": 8080}]}]),
        );
        let m = model(&s, Some(&e));
        assert_eq!(m.name.to_string(), "ns1/web");
        assert_eq!(m.ports.len(), 1);
        let p = &m.ports[0];
        assert_eq!(
            (p.cluster_ip, p.port, p.protocol),
            (ip("10.96.0.10"), 80, Protocol::Tcp)
        );
        assert_eq!(p.node_port, None, "ClusterIP type has no NodePort");
        let addrs: Vec<_> = p
            .endpoints
            .iter()
            .map(|e| (e.addr, e.port, e.ready))
            .collect();
        assert_eq!(
            addrs,
            [
                (ip("10.244.0.9"), 8080, true),
                (ip("10.244.1.5"), 8080, true),
                (ip("10.244.2.2"), 8080, false)
            ],
            "sorted by address, not-ready kept with ready=false"
        );
        let usable: Vec<_> = p.usable_endpoints().map(|e| e.addr).collect();
        assert_eq!(usable, [ip("10.244.0.9"), ip("10.244.1.5")]);
        assert_eq!(p.endpoints[1].node_name.as_deref(), Some("n1"));
    }

    #[test]
    fn nodeport_external_ips_and_load_balancer_ips_are_frontends_of_every_port() {
        let s = service(json!({
            "metadata": {"name": "lb", "namespace": "ns1"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.50",
                     "externalIPs": ["198.18.5.1", "not-an-ip", "198.18.5.1"],
                     "loadBalancerSourceRanges": ["198.18.0.0/16", " 10.0.0.0/8 "],
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                               {"name": "https", "port": 443, "nodePort": 30443}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.18.6.1"}, {"hostname": "lb.example"}]}}
        }));
        let m = model(&s, None);
        assert_eq!(m.ports.len(), 2);
        for (p, np) in m.ports.iter().zip([30080, 30443]) {
            assert_eq!(p.node_port, Some(np));
            assert_eq!(
                p.external_ips,
                [ip("198.18.5.1")],
                "deduplicated, invalid skipped"
            );
            assert_eq!(p.load_balancer_ips, [ip("198.18.6.1")]);
            assert_eq!(
                p.source_ranges,
                [
                    "10.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e}")),
                    "198.18.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"))
                ]
            );
            assert!(p.endpoints.is_empty(), "no endpoints");
        }
    }

    #[test]
    fn nodeport_is_ignored_on_a_cluster_ip_service() {
        let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80, "nodePort": 30080}]}));
        assert_eq!(model(&s, None).ports[0].node_port, None);
    }

    #[test]
    fn headless_external_name_and_unallocated_services_have_no_model() {
        for spec in [
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            json!({"type": "ExternalName", "externalName": "example.com"}),
            json!({"ports": [{"port": 80}]}),
            json!({"clusterIP": "fd00::1", "ports": [{"port": 80}]}),
        ] {
            assert_eq!(
                build(&svc(spec.clone()), EndpointSource::None),
                None,
                "{spec}"
            );
        }
    }

    #[test]
    fn traffic_policies_and_health_check_node_port() {
        let s = svc(json!({"type": "NodePort", "clusterIP": "10.96.0.10",
                           "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local",
                           "healthCheckNodePort": 32000,
                           "ports": [{"port": 80, "nodePort": 30080}]}));
        let p = &model(&s, None).ports[0];
        assert_eq!(p.external_policy, TrafficPolicy::Local);
        assert_eq!(p.internal_policy, TrafficPolicy::Local);
        assert_eq!(p.health_check_node_port, Some(32000));
        let s = svc(json!({"type": "NodePort", "clusterIP": "10.96.0.10",
                           "healthCheckNodePort": 32000, "ports": [{"port": 80, "nodePort": 30080}]}));
        let p = &model(&s, None).ports[0];
        assert_eq!(p.external_policy, TrafficPolicy::Cluster);
        assert_eq!(p.internal_policy, TrafficPolicy::Cluster);
        assert_eq!(
            p.health_check_node_port, None,
            "only with externalTrafficPolicy Local"
        );
    }

    #[test]
    fn client_ip_affinity_with_default_and_explicit_timeout() {
        let s = svc(
            json!({"clusterIP": "10.96.0.10", "sessionAffinity": "ClientIP", "ports": [{"port": 80}]}),
        );
        assert_eq!(
            model(&s, None).ports[0].affinity_timeout,
            Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS)
        );
        let s = svc(
            json!({"clusterIP": "10.96.0.10", "sessionAffinity": "ClientIP",
                           "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                           "ports": [{"port": 80}]}),
        );
        assert_eq!(model(&s, None).ports[0].affinity_timeout, Some(60));
        let s = svc(
            json!({"clusterIP": "10.96.0.10", "sessionAffinity": "None", "ports": [{"port": 80}]}),
        );
        assert_eq!(model(&s, None).ports[0].affinity_timeout, None);
    }

    #[test]
    fn named_target_ports_match_endpoint_ports_by_name_and_protocol() {
        let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": "dns"}]}));
        let e = eps(json!([
            {"addresses": [{"ip": "10.244.1.5"}],
             "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]},
            {"addresses": [{"ip": "10.244.1.6"}],
             "ports": [{"name": "http", "port": 9090}, {"name": "dns-tcp", "port": 5353, "protocol": "TCP"}]}]));
        let m = model(&s, Some(&e));
        let eps_of = |i: usize| -> Vec<(Ipv4Addr, u16)> {
            m.ports[i]
                .endpoints
                .iter()
                .map(|e| (e.addr, e.port))
                .collect()
        };
        assert_eq!(
            eps_of(0),
            [(ip("10.244.1.5"), 8080), (ip("10.244.1.6"), 9090)],
            "per-pod ports"
        );
        assert_eq!(m.ports[1].protocol, Protocol::Udp);
        assert_eq!(eps_of(1), [(ip("10.244.1.5"), 5353)]);
        assert_eq!(
            eps_of(2),
            [(ip("10.244.1.6"), 5353)],
            "same name, other protocol"
        );
    }

    #[test]
    fn udp_and_sctp_ports_are_modelled() {
        let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [
            {"name": "a", "port": 53, "protocol": "UDP"}, {"name": "b", "port": 9, "protocol": "SCTP"},
            {"name": "c", "port": 7, "protocol": "ICMP"}, {"name": "d", "port": 0}]}));
        let protos: Vec<_> = model(&s, None).ports.iter().map(|p| p.protocol).collect();
        assert_eq!(
            protos,
            [Protocol::Udp, Protocol::Sctp],
            "unknown protocols and port 0 skipped"
        );
    }

    #[test]
    fn terminating_serving_endpoints_are_used_only_when_none_is_ready() {
        let slice = |conds: serde_json::Value| -> Arc<EndpointSlice> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": "web-abc", "namespace": "ns1",
                                 "labels": {SERVICE_NAME_LABEL: "web"}},
                    "addressType": "IPv4",
                    "endpoints": conds,
                    "ports": [{"port": 8080, "protocol": "TCP", "name": ""}]
                }))
                .unwrap_or_else(|e| panic!("slice: {e}")),
            )
        };
        let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}));
        let both = [slice(json!([
            {"addresses": ["10.244.1.5"], "conditions": {"ready": false, "serving": true, "terminating": true},
             "nodeName": "n1", "zone": "z1"},
            {"addresses": ["10.244.1.6"], "conditions": {"ready": true}},
            {"addresses": ["10.244.1.7"], "conditions": {"ready": false, "serving": false, "terminating": true}}]))];
        let m = build(&s, EndpointSource::Slices(&both)).unwrap_or_else(|| panic!("model"));
        let p = &m.ports[0];
        assert_eq!(p.endpoints.len(), 3);
        assert_eq!(p.endpoints[0].zone.as_deref(), Some("z1"));
        assert!(p.endpoints[0].terminating && p.endpoints[0].serving && !p.endpoints[0].ready);
        let usable: Vec<_> = p.usable_endpoints().map(|e| e.addr).collect();
        assert_eq!(usable, [ip("10.244.1.6")], "the ready one only");
        let terminating_only = [slice(json!([
            {"addresses": ["10.244.1.5"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.244.1.7"], "conditions": {"ready": false, "serving": false, "terminating": true}}]))];
        let m =
            build(&s, EndpointSource::Slices(&terminating_only)).unwrap_or_else(|| panic!("model"));
        let usable: Vec<_> = m.ports[0].usable_endpoints().map(|e| e.addr).collect();
        assert_eq!(
            usable,
            [ip("10.244.1.5")],
            "falls back to serving terminating endpoints"
        );
    }

    #[test]
    fn slices_drive_the_tracker_with_trigger_times_and_relists() {
        let slice = |name: &str, ip: &str, trigger: &str| -> Arc<EndpointSlice> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "ns1",
                                 "labels": {SERVICE_NAME_LABEL: "web"},
                                 "annotations": {LAST_CHANGE_TRIGGER_TIME_ANNOTATION: trigger}},
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
                    "ports": [{"port": 8080, "protocol": "TCP", "name": ""}]
                }))
                .unwrap_or_else(|e| panic!("slice: {e}")),
            )
        };
        let addrs = |c: &Changes| -> Vec<Ipv4Addr> {
            c.services[0].1.as_ref().expect("model").ports[0]
                .endpoints
                .iter()
                .map(|e| e.addr)
                .collect()
        };
        let mut t = ChangeTracker::new();
        t.service_applied(Arc::new(service(json!({
            "metadata": {"name": "web", "namespace": "ns1"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "targetPort": 8080}]}}))));
        t.slice_applied(slice("web-a", "10.244.1.5", "t1"));
        t.slice_applied(slice("web-b", "10.244.2.5", "t2"));
        let c = t.take_changes();
        assert_eq!(addrs(&c), [ip("10.244.1.5"), ip("10.244.2.5")]);
        assert_eq!(c.trigger_times, ["t1", "t2"]);
        // The same trigger time again is no new change to measure.
        t.slice_applied(slice("web-a", "10.244.1.6", "t1"));
        let c = t.take_changes();
        assert_eq!(addrs(&c), [ip("10.244.1.6"), ip("10.244.2.5")]);
        assert!(c.trigger_times.is_empty());
        // A relist without web-b drops its endpoints; deleting the last slice leaves none.
        t.replace_slices([slice("web-a", "10.244.1.6", "t1")]);
        assert_eq!(addrs(&t.take_changes()), [ip("10.244.1.6")]);
        t.slice_deleted(&slice("web-a", "10.244.1.6", "t1"));
        assert!(addrs(&t.take_changes()).is_empty());
    }

    #[test]
    fn maglev_annotation_selects_the_algorithm() {
        let s = service(json!({"metadata": {"name": "web", "namespace": "ns1",
                                            "annotations": {LB_ALGORITHM_ANNOTATION: "Maglev"}},
                               "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}}));
        assert_eq!(model(&s, None).ports[0].algorithm, LbAlgorithm::Maglev);
    }

    #[test]
    fn endpoint_locality_by_node_name_or_pod_cidr() {
        let cidr = "10.244.1.0/24".parse().ok();
        let ep = |addr: &str, node: Option<&str>| Endpoint {
            addr: ip(addr),
            port: 80,
            ready: true,
            serving: true,
            terminating: false,
            node_name: node.map(str::to_owned),
            zone: None,
        };
        assert!(ep("10.244.9.9", Some("n1")).is_local("n1", cidr));
        assert!(
            !ep("10.244.1.9", Some("n2")).is_local("n1", cidr),
            "nodeName wins"
        );
        assert!(ep("10.244.1.9", None).is_local("n1", cidr));
        assert!(!ep("10.244.2.9", None).is_local("n1", cidr));
    }

    #[test]
    fn tracker_rebuilds_only_the_changed_service_and_reports_real_differences() {
        let mut t = ChangeTracker::new();
        let a = |ip: &str| {
            Arc::new(service(
                json!({"metadata": {"name": "a", "namespace": "ns1"},
                                    "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}),
            ))
        };
        let b = Arc::new(service(
            json!({"metadata": {"name": "b", "namespace": "ns1"},
                                        "spec": {"clusterIP": "10.96.0.2", "ports": [{"port": 80}]}}),
        ));
        t.service_applied(a("10.96.0.1"));
        t.service_applied(b);
        let c = t.take_changes();
        assert_eq!(c.services.len(), 2);
        assert!(!t.has_changes());
        // The same object again: dirty, but the model is unchanged.
        t.service_applied(a("10.96.0.1"));
        assert!(t.take_changes().is_empty());
        // Endpoints of `a`: only `a` is reported.
        let e = Arc::new(endpoints(json!({
            "metadata": {"name": "a", "namespace": "ns1",
                         "annotations": {LAST_CHANGE_TRIGGER_TIME_ANNOTATION: "2026-01-01T00:00:00Z"}},
            "subsets": [{"addresses": [{"ip": "10.244.1.5"}], "ports": [{"port": 8080}]}]})));
        t.endpoints_applied(e);
        let c = t.take_changes();
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.services[0].0, ServiceName::new("ns1", "a"));
        assert_eq!(c.trigger_times, ["2026-01-01T00:00:00Z"]);
        let m = c.services[0]
            .1
            .as_ref()
            .unwrap_or_else(|| panic!("model of a"));
        assert_eq!(m.ports[0].endpoints.len(), 1);
        // Deleting `b` reports it as gone.
        t.service_deleted(&ServiceName::new("ns1", "b"));
        let c = t.take_changes();
        assert_eq!(c.services, vec![(ServiceName::new("ns1", "b"), None)]);
        assert_eq!(t.models().len(), 1);
        assert_eq!(t.change_counts(), (4, 1));
    }

    #[test]
    fn replace_all_reports_only_differences() {
        let mut t = ChangeTracker::new();
        let s = |n: &str, ip: &str| {
            Arc::new(service(json!({"metadata": {"name": n, "namespace": "ns1"},
                                    "spec": {"clusterIP": ip, "ports": [{"port": 80}]}})))
        };
        t.service_applied(s("a", "10.96.0.1"));
        t.service_applied(s("b", "10.96.0.2"));
        t.take_changes();
        t.replace_all([s("a", "10.96.0.1"), s("c", "10.96.0.3")], [], []);
        let mut names: Vec<_> = t
            .take_changes()
            .services
            .into_iter()
            .map(|(n, m)| (n.name, m.is_some()))
            .collect();
        names.sort();
        assert_eq!(names, [("b".to_owned(), false), ("c".to_owned(), true)]);
    }
}
