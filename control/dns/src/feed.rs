//! The watch-fed side: Services, EndpointSlices and Pods in reflector caches; every change
//! recomputes the records of the one Service it touches into the [`Table`](crate::table::Table)
//! (a full recompute after each relist or lost notification, and every resync period).
//!
//! Slices are found by their `kubernetes.io/service-name` label through an index kept here;
//! a pod's `spec.hostname` names its endpoint when its `spec.subdomain` is the Service and the
//! slice carries no hostname; pod addresses feed pod records and their reverse lookups.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use xkube_client::{Change, Object, Store};

use crate::handler::Records;
use crate::metrics::Metrics;
use crate::records::{self, SERVICE_NAME_LABEL};

type Key = (String, String);

/// The three caches and the index of slices by Service.
pub struct Feed {
    records: Records,
    metrics: Arc<Metrics>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    /// `(ns, service)` -> names of its slices.
    slices_of: HashMap<Key, BTreeSet<String>>,
    /// `(ns, slice)` -> its service.
    service_of: HashMap<Key, String>,
    resync: Duration,
    ready: watch::Sender<bool>,
}

fn label_service(s: &EndpointSlice) -> Option<String> {
    s.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .cloned()
}

fn pod_ips(p: &Pod) -> Vec<IpAddr> {
    let spec = p.spec.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true) || p.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let status = p.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.parse().ok())
        .chain(
            status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|i| i.parse().ok()),
        )
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

impl Feed {
    pub fn new(
        records: Records,
        metrics: Arc<Metrics>,
        services: Store<Service>,
        slices: Store<EndpointSlice>,
        pods: Store<Pod>,
        resync: Duration,
    ) -> Self {
        Feed {
            records,
            metrics,
            services,
            slices,
            pods,
            slices_of: HashMap::new(),
            service_of: HashMap::new(),
            resync,
            ready: watch::channel(false).0,
        }
    }

    /// Becomes true once the first full computation is in the table.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    fn index_slice(&mut self, s: &EndpointSlice) {
        let key = (s.namespace().to_string(), s.name().to_string());
        self.unindex_slice(&key);
        if let Some(svc) = label_service(s) {
            self.slices_of
                .entry((key.0.clone(), svc.clone()))
                .or_default()
                .insert(key.1.clone());
            self.service_of.insert(key, svc);
        }
    }

    /// Forgets slice `key`; returns the Service it belonged to.
    fn unindex_slice(&mut self, key: &Key) -> Option<String> {
        let svc = self.service_of.remove(key)?;
        let skey = (key.0.clone(), svc.clone());
        if let Some(set) = self.slices_of.get_mut(&skey) {
            set.remove(&key.1);
            if set.is_empty() {
                self.slices_of.remove(&skey);
            }
        }
        Some(svc)
    }

    /// The hostname pod `r` gives its endpoint in Service `svc`.
    fn pod_hostname(&self, svc: &str, r: &ObjectReference) -> Option<String> {
        if r.kind.as_deref().is_some_and(|k| k != "Pod") {
            return None;
        }
        let pod = self.pods.get(r.namespace.as_deref()?, r.name.as_deref()?)?;
        let spec = pod.spec.as_ref()?;
        (spec.subdomain.as_deref() == Some(svc))
            .then(|| spec.hostname.clone())
            .flatten()
    }

    /// The records of Service `ns/name` as the caches have it now.
    fn compute(&self, ns: &str, name: &str) -> Vec<hickory_server::proto::rr::Record> {
        let Some(svc) = self.services.get(ns, name) else {
            return Vec::new();
        };
        let zone = self.records.read().zone().clone();
        let eps = if records::is_headless(&svc) {
            let slices: Vec<Arc<EndpointSlice>> = self
                .slices_of
                .get(&(ns.to_string(), name.to_string()))
                .into_iter()
                .flatten()
                .filter_map(|s| self.slices.get(ns, s))
                .collect();
            records::endpoints(&svc, slices.iter().map(|s| &**s), |r| {
                self.pod_hostname(name, r)
            })
        } else {
            Vec::new()
        };
        records::service_records(&zone, &svc, &eps)
    }

    fn update_service(&self, ns: &str, name: &str) {
        let recs = self.compute(ns, name);
        let owner = format!("{ns}/{name}");
        let (changed, len) = self.records.write(|t| (t.set_owner(&owner, recs), t.len()));
        if changed {
            tracing::debug!(service = %owner, "records updated");
            self.metrics.updated(len);
        }
    }

    /// Recomputes everything from the caches.
    fn full(&mut self) {
        self.slices_of.clear();
        self.service_of.clear();
        for s in self.slices.list() {
            self.index_slice(&s);
        }
        let services = self.services.list();
        let mut computed = Vec::with_capacity(services.len());
        for s in &services {
            let (ns, name) = (s.namespace(), s.name());
            computed.push((format!("{ns}/{name}"), self.compute(ns, name)));
        }
        let pods: Vec<(Key, Vec<IpAddr>)> = self
            .pods
            .list()
            .iter()
            .map(|p| {
                let key = (p.namespace().to_string(), p.name().to_string());
                (key, pod_ips(p))
            })
            .collect();
        let len = self.records.write(|t| {
            let live: BTreeSet<&str> = computed.iter().map(|(o, _)| o.as_str()).collect();
            t.retain_owners(|o| live.contains(o));
            for (owner, recs) in computed.iter() {
                t.set_owner(owner, recs.clone());
            }
            let live: BTreeSet<&Key> = pods.iter().map(|(k, _)| k).collect();
            t.retain_pods(|ns, n| live.contains(&(ns.to_string(), n.to_string())));
            for ((ns, n), ips) in &pods {
                t.set_pod(ns, n, ips.clone());
            }
            t.len()
        });
        self.metrics.updated(len);
        tracing::info!(
            services = services.len(),
            pods = pods.len(),
            rrsets = len,
            "record table rebuilt"
        );
        self.ready.send_replace(true);
    }

    fn on_service(&mut self, c: Change<Service>) -> bool {
        match c {
            Change::Applied(s) | Change::Deleted(s) => {
                self.update_service(s.namespace(), s.name());
                false
            }
            Change::Resynced => true,
        }
    }

    fn on_slice(&mut self, c: Change<EndpointSlice>) -> bool {
        let (s, deleted) = match c {
            Change::Applied(s) => (s, false),
            Change::Deleted(s) => (s, true),
            Change::Resynced => return true,
        };
        let key = (s.namespace().to_string(), s.name().to_string());
        let old = self.unindex_slice(&key);
        if !deleted {
            self.index_slice(&s);
        }
        let new = self.service_of.get(&key).cloned();
        for svc in [old, new].into_iter().flatten().collect::<BTreeSet<_>>() {
            self.update_service(&key.0, &svc);
        }
        false
    }

    fn on_pod(&mut self, c: Change<Pod>) -> bool {
        let (p, deleted) = match c {
            Change::Applied(p) => (p, false),
            Change::Deleted(p) => (p, true),
            Change::Resynced => return true,
        };
        let ips = if deleted { Vec::new() } else { pod_ips(&p) };
        self.records
            .write(|t| t.set_pod(p.namespace(), p.name(), ips));
        // The pod may name its endpoint in the Service of its subdomain.
        if let Some(sub) = p.spec.as_ref().and_then(|s| s.subdomain.as_deref()) {
            self.update_service(p.namespace(), sub);
        }
        false
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut svc_rx = self.services.subscribe();
        let mut slice_rx = self.slices.subscribe();
        let mut pod_rx = self.pods.subscribe();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = async {
                self.services.wait_ready().await;
                self.slices.wait_ready().await;
                self.pods.wait_ready().await;
            } => {}
        }
        self.full();
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + self.resync, self.resync);
        fn take<K>(
            r: Result<Change<K>, RecvError>,
            f: impl FnOnce(Change<K>) -> bool,
        ) -> Option<bool> {
            match r {
                Ok(c) => Some(f(c)),
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!(lost = n, "change notifications lagged; recomputing");
                    Some(true)
                }
                Err(RecvError::Closed) => None,
            }
        }
        loop {
            let full = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => Some(true),
                r = svc_rx.recv() => take(r, |c| self.on_service(c)),
                r = slice_rx.recv() => take(r, |c| self.on_slice(c)),
                r = pod_rx.recv() => take(r, |c| self.on_pod(c)),
            };
            match full {
                Some(true) => self.full(),
                Some(false) => {}
                None => return,
            }
        }
    }
}
