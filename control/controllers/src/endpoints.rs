//! The endpoints controller: one Endpoints object per Service with a selector, listing the
//! ready and not-ready addresses of the selected pods with their resolved target ports.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio_util::sync::CancellationToken;
use xkube_client::{Api, Client, DeleteParams, Object, Store};

use crate::error::{Error, Result};
use xkube_api::pod::{self as podutil, selector_matches};
use xkube_client::runtime::{Controller, Reconciler, Requeue, Seen, WorkQueue, key_of, split_key};

/// Resolves a service port's target port on one pod: a number as is, a name through the
/// pod's container ports of the same protocol; `None` when the pod has no such port.
pub fn resolve_target_port(sp: &ServicePort, pod: &Pod) -> Option<i32> {
    let proto = sp.protocol.as_deref().unwrap_or("TCP");
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.iter().flatten().find_map(|p| {
                    (p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == proto)
                        .then_some(p.container_port)
                })
            })
        }
    }
}

fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty())
}

fn address(pod: &Pod, svc: &Service) -> Option<EndpointAddress> {
    let ip = pod_ip(pod)?;
    let spec = pod.spec.as_ref();
    let hostname = spec
        .and_then(|s| s.hostname.clone())
        .filter(|_| spec.and_then(|s| s.subdomain.as_deref()) == Some(svc.name()));
    Some(EndpointAddress {
        ip: ip.to_string(),
        hostname,
        node_name: Some(podutil::node_name(pod).to_string()).filter(|n| !n.is_empty()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some(pod.namespace().to_string()),
            name: Some(pod.name().to_string()),
            uid: Some(pod.uid().to_string()).filter(|u| !u.is_empty()),
            resource_version: Some(pod.resource_version().to_string()).filter(|r| !r.is_empty()),
            ..ObjectReference::default()
        }),
    })
}

type PortKey = (String, i32, String);

/// The subsets of a Service's Endpoints given the pods of its namespace (pure): addresses
/// with the same resolved ports share a subset; addresses sorted by IP, ports by name.
pub fn compute_subsets(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let ports = spec.ports.clone().unwrap_or_default();
    // port set -> (ready, not ready) addresses
    let mut groups: BTreeMap<Vec<PortKey>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for pod in pods {
        if pod.namespace() != svc.namespace()
            || !selector_matches(selector, pod.metadata.labels.as_ref())
            || podutil::is_terminal(pod)
            || (podutil::is_terminating(pod) && !publish_not_ready)
        {
            continue;
        }
        let Some(addr) = address(pod, svc) else {
            continue;
        };
        let mut set: BTreeSet<PortKey> = BTreeSet::new();
        for sp in &ports {
            if let Some(port) = resolve_target_port(sp, pod) {
                set.insert((
                    sp.name.clone().unwrap_or_default(),
                    port,
                    sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ));
            }
        }
        if set.is_empty() && !(headless && ports.is_empty()) {
            continue;
        }
        let entry = groups.entry(set.into_iter().collect()).or_default();
        if podutil::is_ready(pod) || publish_not_ready {
            entry.0.push(addr);
        } else {
            entry.1.push(addr);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name: Some(name).filter(|n| !n.is_empty()),
                            port,
                            protocol: Some(protocol),
                            app_protocol: None,
                        })
                        .collect()
                }),
            }
        })
        .collect()
}

/// The annotation carrying the time of the change (a pod's readiness, the Service's creation)
/// that triggered an Endpoints update; proxies derive network programming latency from it.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// What a service's last reconcile saw.
#[derive(Debug, Default)]
struct TriggerState {
    service: Option<jiff::Timestamp>,
    pods: HashMap<String, jiff::Timestamp>,
}

/// Kubernetes' `TriggerTimeTracker`: the trigger time of an Endpoints update is the earliest
/// of the changes not yet reflected in it, a change being a selected pod whose `Ready`
/// condition moved (`lastTransitionTime`) or the Service's creation, compared with what the
/// previous reconcile of the same Service saw.
#[derive(Debug, Default)]
pub struct TriggerTimeTracker {
    states: Mutex<HashMap<String, TriggerState>>,
}

/// A pod's trigger time: when its `Ready` condition last changed.
fn pod_trigger_time(pod: &Pod) -> Option<jiff::Timestamp> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

impl TriggerTimeTracker {
    /// The trigger time for the Service `key` given the pods it selects; `None` when nothing
    /// changed since the previous call. Records what it saw.
    pub fn compute(&self, key: &str, svc: &Service, pods: &[&Pod]) -> Option<jiff::Timestamp> {
        let Ok(mut states) = self.states.lock() else {
            return None;
        };
        let state = states.entry(key.to_owned()).or_default();
        let mut min: Option<jiff::Timestamp> = None;
        let mut seen = HashMap::with_capacity(pods.len());
        for pod in pods {
            let Some(t) = pod_trigger_time(pod) else {
                continue;
            };
            let name = pod.name().to_owned();
            if state.pods.get(&name).is_none_or(|prev| t > *prev) {
                min = Some(min.map_or(t, |m| m.min(t)));
            }
            seen.insert(name, t);
        }
        let svc_time = svc.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if let Some(t) = svc_time
            && state.service.is_none_or(|prev| t > prev)
        {
            min = Some(min.map_or(t, |m| m.min(t)));
        }
        state.pods = seen;
        state.service = svc_time;
        min
    }

    /// The Service is gone.
    pub fn forget(&self, key: &str) {
        if let Ok(mut s) = self.states.lock() {
            s.remove(key);
        }
    }
}

/// The endpoints controller.
#[derive(Clone)]
pub struct EndpointsController {
    client: Client,
    services: Store<Service>,
    pods: Store<Pod>,
    endpoints: Store<Endpoints>,
    queue: WorkQueue<String>,
    triggers: Arc<TriggerTimeTracker>,
}

impl EndpointsController {
    /// A controller over these caches.
    pub fn new(
        client: Client,
        services: Store<Service>,
        pods: Store<Pod>,
        endpoints: Store<Endpoints>,
    ) -> Self {
        EndpointsController {
            client,
            services,
            pods,
            endpoints,
            queue: WorkQueue::new(),
            triggers: Arc::new(TriggerTimeTracker::default()),
        }
    }

    /// Watches the caches and runs `workers` reconcilers until `shutdown`.
    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        let svcs = self.services.clone();
        Controller::new("endpoints", self.clone(), self.queue.clone(), &shutdown)
            .owns(&self.services, Duration::from_secs(30), |_| true)
            .watches(&self.pods, move |s, q| match s {
                // Labels may have changed: every selector Service of the namespace is checked.
                Seen::Object(pod) => svcs
                    .filter(|s| {
                        s.namespace() == pod.namespace()
                            && s.spec
                                .as_ref()
                                .and_then(|s| s.selector.as_ref())
                                .is_some_and(|m| !m.is_empty())
                    })
                    .iter()
                    .for_each(|s| q.add(key_of(&**s))),
                Seen::All => svcs.list().iter().for_each(|s| q.add(key_of(&**s))),
            })
            .watches(&self.endpoints, |s, q| {
                if let Seen::Object(ep) = s {
                    q.add(key_of(&*ep));
                }
            })
            .run(workers)
            .await;
    }
}

impl Reconciler for EndpointsController {
    type Error = Error;

    /// Brings the Endpoints of one Service up to date.
    #[tracing::instrument(skip(self), fields(controller = "endpoints"))]
    async fn reconcile(&self, key: &str) -> Result<Requeue> {
        let (ns, name) = split_key(key);
        let api: Api<Endpoints> = Api::namespaced(self.client.clone(), ns);
        let Some(svc) = self.services.get(ns, name) else {
            self.triggers.forget(key);
            // The Service is gone: so are its Endpoints. The cache may lag behind a Service
            // created just now, so the apiserver has the last word.
            if self.endpoints.get(ns, name).is_some() {
                let svc_api: Api<Service> = Api::namespaced(self.client.clone(), ns);
                match svc_api.get_opt(name).await {
                    Ok(None) => {}
                    Ok(Some(_)) => return Ok(Some(Duration::from_millis(50))),
                    Err(e) => return Err(Error::api(format!("get service {key}"))(e)),
                }
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => tracing::info!("deleted endpoints of a deleted service"),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(Error::api(format!("delete endpoints {key}"))(e)),
                }
            }
            return Ok(None);
        };
        let has_selector = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_some_and(|s| !s.is_empty());
        if !has_selector {
            // Manual Endpoints of selector-less Services are the user's.
            return Ok(None);
        }
        let pods = self.pods.filter(|p| p.namespace() == ns);
        let subsets = compute_subsets(&svc, &pods);
        let selected: Vec<&Pod> = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .map(|sel| {
                pods.iter()
                    .map(|p| &**p)
                    .filter(|p| selector_matches(sel, p.metadata.labels.as_ref()))
                    .collect()
            })
            .unwrap_or_default();
        // Computed on every reconcile, as Kubernetes does, so the tracker follows the pods even
        // when the Endpoints need no update.
        let trigger = self.triggers.compute(key, &svc, &selected);
        let labels = svc.metadata.labels.clone();
        let current = self.endpoints.get(ns, name);
        if let Some(cur) = &current {
            let cur_subsets = cur.subsets.clone().unwrap_or_default();
            if cur_subsets == subsets && cur.metadata.labels == labels {
                return Ok(None);
            }
        }
        let mut ep = Endpoints {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(ns.to_string()),
                labels,
                ..ObjectMeta::default()
            },
            subsets: Some(subsets),
        };
        let mut annotations = current
            .as_ref()
            .and_then(|c| c.metadata.annotations.clone())
            .unwrap_or_default();
        match trigger {
            Some(t) => {
                annotations.insert(LAST_CHANGE_TRIGGER_TIME.to_owned(), t.to_string());
            }
            None => {
                annotations.remove(LAST_CHANGE_TRIGGER_TIME);
            }
        }
        ep.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
        match current {
            Some(cur) => {
                ep.metadata.resource_version = cur.metadata.resource_version.clone();
                match api.replace(name, &ep).await {
                    Ok(_) => Ok(None),
                    // A stale cache: the watch brings the newer version and requeues us.
                    Err(e) if e.is_conflict() => Ok(Some(Duration::from_millis(50))),
                    Err(e) if e.is_not_found() => Ok(Some(Duration::ZERO)),
                    Err(e) => Err(Error::api(format!("update endpoints {key}"))(e)),
                }
            }
            None => match api.create(&ep).await {
                Ok(_) => Ok(None),
                Err(e) if e.is_conflict() => Ok(Some(Duration::from_millis(50))),
                Err(e) => Err(Error::api(format!("create endpoints {key}"))(e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(extra: serde_json::Value) -> Service {
        let mut v = json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10",
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                               {"name": "metrics", "port": 9100, "targetPort": 9100, "protocol": "TCP"}]}
        });
        if let (Some(a), Some(b)) = (v["spec"].as_object_mut(), extra.as_object()) {
            for (k, val) in b {
                a.insert(k.clone(), val.clone());
            }
        }
        serde_json::from_value(v).expect("service literal")
    }

    fn pod(name: &str, ip: &str, ready: bool, http_port: Option<i32>) -> Arc<Pod> {
        let ports: Vec<_> = http_port
            .map(|p| json!({"name": "http", "containerPort": p}))
            .into_iter()
            .collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                             "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": ports}]},
                "status": {"phase": "Running", "podIP": ip,
                           "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
            }))
            .expect("pod literal"),
        )
    }

    #[test]
    fn named_ports_resolve_per_pod_and_readiness_splits_addresses() {
        let pods = vec![
            pod("a", "10.244.0.3", true, Some(8080)),
            pod("b", "10.244.1.3", false, Some(8080)),
            pod("c", "10.244.2.3", true, Some(9090)),
        ];
        let subsets = compute_subsets(&svc(json!({})), &pods);
        assert_eq!(subsets.len(), 2, "two port sets: {subsets:?}");
        let s8080 = subsets
            .iter()
            .find(|s| s.ports.iter().flatten().any(|p| p.port == 8080))
            .expect("subset with 8080");
        let ips = |v: &Option<Vec<EndpointAddress>>| {
            v.iter().flatten().map(|a| a.ip.clone()).collect::<Vec<_>>()
        };
        assert_eq!(ips(&s8080.addresses), ["10.244.0.3"]);
        assert_eq!(ips(&s8080.not_ready_addresses), ["10.244.1.3"]);
        assert_eq!(
            s8080.ports.as_ref().map(Vec::len),
            Some(2),
            "http and numeric metrics"
        );
        let a = &s8080.addresses.as_ref().expect("addresses")[0];
        assert_eq!(a.node_name.as_deref(), Some("n1"));
        assert_eq!(
            a.target_ref.as_ref().and_then(|r| r.name.as_deref()),
            Some("a")
        );
    }

    #[test]
    fn pods_without_the_named_port_only_get_numeric_ports_and_no_ip_means_no_address() {
        let pods = vec![
            pod("a", "10.244.0.3", true, None),
            pod("b", "", true, Some(80)),
        ];
        let subsets = compute_subsets(&svc(json!({})), &pods);
        assert_eq!(subsets.len(), 1);
        let ports: Vec<i32> = subsets[0].ports.iter().flatten().map(|p| p.port).collect();
        assert_eq!(ports, [9100]);
        assert_eq!(subsets[0].addresses.as_ref().map(Vec::len), Some(1));
    }

    #[test]
    fn selectorless_services_get_nothing_and_headless_without_ports_lists_addresses() {
        assert!(
            compute_subsets(
                &svc(json!({"selector": null})),
                &[pod("a", "10.0.0.1", true, None)]
            )
            .is_empty()
        );
        let headless = svc(json!({"clusterIP": "None", "ports": null}));
        let subsets = compute_subsets(&headless, &[pod("a", "10.0.0.1", true, None)]);
        assert_eq!(subsets.len(), 1);
        assert!(subsets[0].ports.is_none());
        assert_eq!(subsets[0].addresses.as_ref().map(Vec::len), Some(1));
    }

    fn with_ready_at(pod: &Pod, secs: i64) -> Pod {
        let mut p = pod.clone();
        if let Some(c) = p
            .status
            .as_mut()
            .and_then(|s| s.conditions.as_mut())
            .and_then(|c| c.iter_mut().find(|c| c.type_ == "Ready"))
        {
            c.last_transition_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::from_second(secs).expect("timestamp"),
            ));
        }
        p
    }

    #[test]
    fn trigger_time_is_the_earliest_unseen_change_as_kubernetes_computes_it() {
        let t = TriggerTimeTracker::default();
        let mut s = svc(json!({}));
        s.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::from_second(1_000).expect("timestamp"),
        ));
        let a = with_ready_at(&pod("a", "10.0.0.1", true, Some(80)), 1_100);
        let b = with_ready_at(&pod("b", "10.0.0.2", true, Some(80)), 1_200);
        let ts = |secs| Some(jiff::Timestamp::from_second(secs).expect("timestamp"));
        // First sight: the service's creation is the earliest change.
        assert_eq!(t.compute("default/web", &s, &[&a, &b]), ts(1_000));
        // Nothing new.
        assert_eq!(t.compute("default/web", &s, &[&a, &b]), None);
        // b turns ready again later, a new pod c appears: the earliest of the two.
        let b2 = with_ready_at(&b, 1_500);
        let c = with_ready_at(&pod("c", "10.0.0.3", true, Some(80)), 1_400);
        assert_eq!(t.compute("default/web", &s, &[&a, &b2, &c]), ts(1_400));
        // A pod without a Ready condition never triggers.
        let mut d = (*pod("d", "10.0.0.4", false, Some(80))).clone();
        if let Some(st) = d.status.as_mut() {
            st.conditions = None;
        }
        assert_eq!(t.compute("default/web", &s, &[&a, &b2, &c, &d]), None);
        // Forgotten with the service: everything is new again.
        t.forget("default/web");
        assert_eq!(t.compute("default/web", &s, &[&a]), ts(1_000));
    }

    #[test]
    fn terminating_pods_are_left_out() {
        let mut p = (*pod("a", "10.0.0.1", true, Some(80))).clone();
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
        assert!(compute_subsets(&svc(json!({})), &[Arc::new(p)]).is_empty());
    }
}
