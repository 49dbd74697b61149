//! The EndpointSlice mirroring controller: every Endpoints object becomes EndpointSlices
//! (`discovery.k8s.io/v1`, one per subset, labelled `kubernetes.io/service-name` and
//! `endpointslice.kubernetes.io/managed-by`), so clients and proxies that read slices see the
//! endpoints. Kubernetes mirrors only the Endpoints of selector-less Services and builds the
//! others' slices from pods; xkube mirrors every Endpoints object (the endpoints controller
//! already did the pod work), see docs/decisions.md.
//!
//! Slice names are deterministic (`<name>`, `<name>-1`, ...), so a reconcile reads its slices
//! from the cache by name instead of scanning every slice of the namespace (quadratic at 10k
//! Services).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use tokio_util::sync::CancellationToken;
use xkube_client::runtime::{Controller, Reconciler, Requeue, Seen, WorkQueue, split_key};
use xkube_client::{Api, Client, DeleteParams, Object, Store};

use crate::error::{Error, Result};

/// Label naming the controller that manages a slice.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY`] on the slices this controller writes.
pub const MIRROR: &str = "endpointslicemirroring-controller.k8s.io";
/// Label naming a slice's Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label of Endpoints that are not mirrored (the apiserver writes the `kubernetes` Service's
/// slice itself).
pub const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
/// kubectl's `apply` annotation, never mirrored.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The name of the `i`th slice of Endpoints `name`.
fn slice_name(name: &str, i: usize) -> String {
    if i == 0 {
        name.to_string()
    } else {
        format!("{name}-{i}")
    }
}

fn endpoint(a: &EndpointAddress, ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![a.ip.clone()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            ..EndpointConditions::default()
        }),
        hostname: a.hostname.clone(),
        node_name: a.node_name.clone(),
        target_ref: a.target_ref.clone(),
        ..Endpoint::default()
    }
}

/// The slices Endpoints `ep` asks for: one per subset, ready addresses first; none when
/// labelled [`SKIP_MIRROR`].
pub fn slices_for(ep: &Endpoints) -> Vec<EndpointSlice> {
    let labels = ep.metadata.labels.as_ref();
    if labels.and_then(|l| l.get(SKIP_MIRROR)).map(String::as_str) == Some("true") {
        return Vec::new();
    }
    let name = ep.name();
    let mut annotations = ep.metadata.annotations.clone().unwrap_or_default();
    // Annotations are copied, as Kubernetes' mirroring controller does (the proxies read
    // `endpoints.kubernetes.io/last-change-trigger-time` for their programming latency),
    // except kubectl's last-applied configuration.
    annotations.remove(LAST_APPLIED);
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Endpoints".into(),
        name: name.to_string(),
        uid: ep.uid().to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let subsets = ep.subsets.iter().flatten();
    subsets
        .enumerate()
        .map(|(i, subset)| {
            let ready = subset.addresses.iter().flatten().map(|a| endpoint(a, true));
            let not_ready =
                (subset.not_ready_addresses.iter().flatten()).map(|a| endpoint(a, false));
            let ports = subset.ports.iter().flatten().map(|p| EndpointPort {
                // `name` is always set (empty for unnamed ports), as Kubernetes' controllers
                // do: kubectl dereferences it.
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(p.port),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol.clone(),
            });
            EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(slice_name(name, i)),
                    namespace: Some(ep.namespace().to_string()),
                    labels: Some(BTreeMap::from([
                        (SERVICE_NAME.to_string(), name.to_string()),
                        (MANAGED_BY.to_string(), MIRROR.to_string()),
                    ])),
                    annotations: (!annotations.is_empty()).then(|| annotations.clone()),
                    owner_references: Some(vec![owner.clone()]),
                    ..ObjectMeta::default()
                },
                address_type: "IPv4".into(),
                endpoints: ready.chain(not_ready).collect(),
                ports: Some(ports.collect()),
            }
        })
        .collect()
}

/// Whether `slice` is one this controller wrote for Endpoints `name`.
fn mirrored_for(slice: &EndpointSlice, name: &str) -> bool {
    let labels = slice.metadata.labels.as_ref();
    let label = |k| labels.and_then(|l| l.get(k)).map(String::as_str);
    label(MANAGED_BY) == Some(MIRROR) && label(SERVICE_NAME) == Some(name)
}

fn same(have: &EndpointSlice, want: &EndpointSlice) -> bool {
    have.endpoints == want.endpoints
        && have.ports == want.ports
        && have.metadata.labels == want.metadata.labels
        && have.metadata.annotations == want.metadata.annotations
        && have.metadata.owner_references == want.metadata.owner_references
}

/// The mirroring controller.
#[derive(Clone)]
pub struct EndpointSliceMirroringController {
    client: Client,
    endpoints: Store<Endpoints>,
    slices: Store<EndpointSlice>,
    queue: WorkQueue<String>,
}

impl EndpointSliceMirroringController {
    /// A controller over these caches.
    pub fn new(client: Client, endpoints: Store<Endpoints>, slices: Store<EndpointSlice>) -> Self {
        EndpointSliceMirroringController {
            client,
            endpoints,
            slices,
            queue: WorkQueue::new(),
        }
    }

    /// Watches the caches and runs `workers` reconcilers until `shutdown`.
    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        // A changed or deleted mirrored slice (or one left behind by deleted Endpoints while
        // the controller was down) enqueues its Endpoints.
        let enqueue = |slice: &EndpointSlice, q: &WorkQueue<String>| {
            let labels = slice.metadata.labels.as_ref();
            if let Some(svc) = labels.and_then(|l| l.get(SERVICE_NAME))
                && labels.and_then(|l| l.get(MANAGED_BY)).map(String::as_str) == Some(MIRROR)
            {
                q.add(format!("{}/{svc}", slice.namespace()));
            }
        };
        let slices = self.slices.clone();
        Controller::new(
            "endpointslicemirroring",
            self.clone(),
            self.queue.clone(),
            &shutdown,
        )
        .owns(&self.endpoints, Duration::from_secs(30), |_| true)
        .watches(&self.slices, move |s, q| match s {
            Seen::Object(slice) => enqueue(&slice, q),
            Seen::All => slices.list().iter().for_each(|s| enqueue(s, q)),
        })
        .run(workers)
        .await;
    }
}

impl Reconciler for EndpointSliceMirroringController {
    type Error = Error;

    /// Brings the slices of Endpoints `key` to what the Endpoints ask for (none once deleted).
    #[tracing::instrument(skip(self), fields(controller = "endpointslicemirroring"))]
    async fn reconcile(&self, key: &str) -> Result<Requeue> {
        let (ns, name) = split_key(key);
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let want = self
            .endpoints
            .get(ns, name)
            .map(|ep| slices_for(&ep))
            .unwrap_or_default();
        // The cache may lag behind our own writes: a conflict means the watch brings the
        // newer object, and the key comes back shortly.
        let retry = Ok(Some(Duration::from_millis(50)));
        for w in &want {
            let wname = w.name();
            match self.slices.get(ns, wname) {
                Some(have) if !mirrored_for(&have, name) => {
                    tracing::debug!(
                        slice = wname,
                        "endpoint slice of another manager left alone"
                    );
                }
                Some(have) if same(&have, w) => {}
                Some(have) => {
                    let mut w = w.clone();
                    w.metadata.resource_version = have.metadata.resource_version.clone();
                    match api.replace(wname, &w).await {
                        Ok(_) => {}
                        Err(e) if e.is_conflict() || e.is_not_found() => return retry,
                        Err(e) => return Err(Error::api(format!("update slice {ns}/{wname}"))(e)),
                    }
                }
                None => match api.create(w).await {
                    Ok(_) => {}
                    Err(e) if e.is_conflict() => return retry,
                    Err(e) => return Err(Error::api(format!("create slice {ns}/{wname}"))(e)),
                },
            }
        }
        // Slices beyond the wanted ones (fewer subsets, or the Endpoints deleted); the
        // mirror's slices are numbered without gaps.
        for i in want.len().. {
            let sname = slice_name(name, i);
            match self.slices.get(ns, &sname) {
                Some(have) if mirrored_for(&have, name) => {
                    match api.delete(&sname, &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(Error::api(format!("delete slice {ns}/{sname}"))(e)),
                    }
                }
                _ => break,
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn endpoints(v: serde_json::Value) -> Endpoints {
        serde_json::from_value(v).expect("endpoints literal")
    }

    #[test]
    fn one_slice_per_subset_with_ready_conditions() {
        let ep = endpoints(
            json!({"metadata": {"name": "web", "namespace": "d", "uid": "u"},
            "subsets": [{"addresses": [{"ip": "10.0.0.1", "nodeName": "n1", "hostname": "db-0"}],
                         "notReadyAddresses": [{"ip": "10.0.0.2"}],
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
                        {"addresses": [{"ip": "10.0.0.3"}], "ports": [{"port": 81}]}]}),
        );
        let s: Vec<serde_json::Value> = slices_for(&ep)
            .iter()
            .map(|s| serde_json::to_value(s).expect("serialize"))
            .collect();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0]["metadata"]["name"], "web");
        assert_eq!(s[1]["metadata"]["name"], "web-1");
        assert_eq!(s[0]["metadata"]["labels"][SERVICE_NAME], "web");
        assert_eq!(s[0]["metadata"]["labels"][MANAGED_BY], MIRROR);
        assert_eq!(s[0]["metadata"]["ownerReferences"][0]["uid"], "u");
        assert_eq!(
            s[0]["endpoints"][0],
            json!({"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "nodeName": "n1",
                   "hostname": "db-0"})
        );
        assert_eq!(s[0]["endpoints"][1]["conditions"]["ready"], false);
        assert_eq!(
            s[1]["ports"],
            json!([{"name": "", "port": 81, "protocol": "TCP"}])
        );
        assert!(s[0]["metadata"]["annotations"].is_null(), "none to copy");
    }

    #[test]
    fn the_trigger_time_is_mirrored_and_last_applied_is_not() {
        let ep = endpoints(
            json!({"metadata": {"name": "web", "namespace": "d", "uid": "u",
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-12-05T08:00:00Z",
                            LAST_APPLIED: "{}"}},
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]}),
        );
        let s = slices_for(&ep);
        assert_eq!(
            s[0].metadata.annotations,
            Some(BTreeMap::from([(
                "endpoints.kubernetes.io/last-change-trigger-time".to_string(),
                "2026-12-05T08:00:00Z".to_string()
            )]))
        );
    }

    #[test]
    fn only_the_mirrors_own_slices_are_its_to_change() {
        let ep = endpoints(
            json!({"metadata": {"name": "web", "namespace": "d", "uid": "u"},
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}]}]}),
        );
        let mine = &slices_for(&ep)[0];
        assert!(mirrored_for(mine, "web"));
        assert!(!mirrored_for(mine, "other"));
        let mut theirs = mine.clone();
        if let Some(l) = theirs.metadata.labels.as_mut() {
            l.insert(MANAGED_BY.into(), "endpointslice-controller.k8s.io".into());
        }
        assert!(!mirrored_for(&theirs, "web"));
    }

    #[test]
    fn endpoints_labelled_skip_mirror_get_no_slices() {
        let ep = endpoints(
            json!({"metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {SKIP_MIRROR: "true"}},
            "subsets": [{"addresses": [{"ip": "198.18.0.1"}]}]}),
        );
        assert!(slices_for(&ep).is_empty());
    }
}
