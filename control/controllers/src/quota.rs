//! The resourcequota controller: `status.used` (and `status.hard`) of every ResourceQuota
//! kept current for pods, services, replicationcontrollers, secrets, configmaps and the
//! cpu/memory requests and limits of the namespace's active pods.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, Pod, ReplicationController, ResourceQuota, ResourceQuotaStatus, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use xkube_api::ResourceInfo;
use xkube_client::{Api, Client, Object, Patch, Store};

use crate::error::{Error, Result};
use xkube_client::runtime::{Controller, Reconciler, Requeue, Seen, WorkQueue, key_of, split_key};

/// `status.used` of `quota` over a namespace's objects (pure): for every resource of
/// `spec.hard`, what the objects the quota applies to (its scopes) charge, counted as the
/// admission counts them (`xkube_api::quota`), in Kubernetes' formats.
pub fn used<'a>(
    quota: &ResourceQuota,
    objects: impl IntoIterator<Item = (&'a ResourceInfo, &'a Value)>,
    now: i64,
) -> BTreeMap<String, Quantity> {
    let quota = serde_json::to_value(quota).unwrap_or_default();
    let hard = xkube_api::quota::hard(&quota);
    xkube_api::quota::used(&quota, &hard, objects, now)
        .into_iter()
        .map(|(k, q)| (k, Quantity(q.to_string())))
        .collect()
}

/// Caches the quota controller reads.
#[derive(Clone)]
pub struct QuotaCaches {
    /// ResourceQuotas.
    pub quotas: Store<ResourceQuota>,
    /// Pods.
    pub pods: Store<Pod>,
    /// Services.
    pub services: Store<Service>,
    /// ReplicationControllers.
    pub rcs: Store<ReplicationController>,
    /// Secrets.
    pub secrets: Store<Secret>,
    /// ConfigMaps.
    pub configmaps: Store<ConfigMap>,
}

/// The resourcequota controller.
#[derive(Clone)]
pub struct QuotaController {
    client: Client,
    c: QuotaCaches,
    resync: Duration,
    queue: WorkQueue<String>,
}

fn enqueue_ns(q: &WorkQueue<String>, quotas: &Store<ResourceQuota>, ns: &str) {
    for rq in quotas.filter(|r| r.namespace() == ns) {
        q.add(key_of(&*rq));
    }
}

/// The quotas of the namespace of every changed object of `store`.
fn watch_ns<K: Object>(
    c: Controller<QuotaController>,
    store: &Store<K>,
    quotas: &Store<ResourceQuota>,
) -> Controller<QuotaController> {
    let quotas = quotas.clone();
    c.watches(store, move |s, q| match s {
        Seen::Object(o) => enqueue_ns(q, &quotas, o.namespace()),
        Seen::All => quotas.list().iter().for_each(|r| q.add(key_of(&**r))),
    })
}

impl QuotaController {
    /// A controller over these caches, recomputing everything every `resync`.
    pub fn new(client: Client, caches: QuotaCaches, resync: Duration) -> Self {
        QuotaController {
            client,
            c: caches,
            resync,
            queue: WorkQueue::new(),
        }
    }

    /// Watches and reconciles until `shutdown`.
    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        let quotas = &self.c.quotas;
        let mut c = Controller::new("resourcequota", self.clone(), self.queue.clone(), &shutdown)
            .owns(quotas, self.resync, |_| true);
        c = watch_ns(c, &self.c.pods, quotas);
        c = watch_ns(c, &self.c.services, quotas);
        c = watch_ns(c, &self.c.rcs, quotas);
        c = watch_ns(c, &self.c.secrets, quotas);
        c = watch_ns(c, &self.c.configmaps, quotas);
        c.run(workers).await;
    }

    /// `status.used` of `rq` from the caches.
    pub fn used(&self, rq: &ResourceQuota) -> BTreeMap<String, Quantity> {
        let ns = rq.namespace();
        let mut objects: Vec<(&'static ResourceInfo, Value)> = Vec::new();
        collect(&self.c.pods, "pods", ns, &mut objects);
        collect(&self.c.services, "services", ns, &mut objects);
        collect(&self.c.rcs, "replicationcontrollers", ns, &mut objects);
        collect(&self.c.secrets, "secrets", ns, &mut objects);
        collect(&self.c.configmaps, "configmaps", ns, &mut objects);
        let now = jiff::Timestamp::now().as_second();
        used(rq, objects.iter().map(|(r, o)| (*r, o)), now)
    }
}

/// The objects of `store` in namespace `ns`, as the JSON the quota functions read.
fn collect<K: Object + Serialize>(
    store: &Store<K>,
    plural: &str,
    ns: &str,
    out: &mut Vec<(&'static ResourceInfo, Value)>,
) {
    let Some(res) = xkube_api::resources::find("", "v1", plural) else {
        return;
    };
    for o in store.filter(|o| o.namespace() == ns) {
        if let Ok(v) = serde_json::to_value(&*o) {
            out.push((res, v));
        }
    }
}

impl Reconciler for QuotaController {
    type Error = Error;

    /// Brings one quota's status up to date.
    #[tracing::instrument(skip(self), fields(controller = "resourcequota"))]
    async fn reconcile(&self, key: &str) -> Result<Requeue> {
        let (ns, name) = split_key(key);
        let Some(rq) = self.c.quotas.get(ns, name) else {
            return Ok(None);
        };
        let hard = rq
            .spec
            .as_ref()
            .and_then(|s| s.hard.clone())
            .unwrap_or_default();
        let used = self.used(&rq);
        let want = ResourceQuotaStatus {
            hard: Some(hard.clone()),
            used: Some(used.clone()),
        };
        if rq.status.as_ref() == Some(&want) {
            return Ok(None);
        }
        let api: Api<ResourceQuota> = Api::namespaced(self.client.clone(), ns);
        let patch = Patch::Merge(json!({"status": {"hard": hard, "used": used}}));
        match api.patch_status(name, &patch).await {
            Ok(_) => Ok(None),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(Error::api(format!("update status of quota {key}"))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(plural: &str) -> &'static ResourceInfo {
        xkube_api::resources::find("", "v1", plural).expect("resource")
    }

    #[test]
    fn used_lists_only_the_hard_resources_in_kubernetes_formats() {
        let pods = [
            json!({"metadata": {"name": "a"},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}]},
                "status": {"phase": "Running"}}),
            json!({"metadata": {"name": "b"},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "750m", "memory": "64Mi"}}}]},
                "status": {"phase": "Succeeded"}}),
        ];
        let services = [
            json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}}),
            json!({"metadata": {"name": "t"}, "spec": {"ports": [{"port": 80}]}}),
        ];
        let objects: Vec<(&ResourceInfo, &Value)> = pods
            .iter()
            .map(|p| (res("pods"), p))
            .chain(services.iter().map(|s| (res("services"), s)))
            .collect();
        let mut hard = BTreeMap::new();
        for k in [
            "pods",
            "services",
            "services.nodeports",
            "requests.cpu",
            "memory",
            "secrets",
        ] {
            hard.insert(k.to_string(), Quantity("10".into()));
        }
        let rq = ResourceQuota {
            spec: Some(k8s_openapi::api::core::v1::ResourceQuotaSpec {
                hard: Some(hard),
                ..Default::default()
            }),
            ..Default::default()
        };
        let used = used(&rq, objects.iter().copied(), 0);
        let get = |k: &str| used.get(k).map(|q| q.0.clone()).unwrap_or_default();
        assert_eq!(get("pods"), "1", "finished pods do not count");
        assert_eq!(get("services"), "2");
        // As the admission counts them: one per node port, not one per service.
        assert_eq!(get("services.nodeports"), "2");
        assert_eq!(get("requests.cpu"), "250m");
        assert_eq!(get("memory"), "64Mi");
        assert_eq!(get("secrets"), "0");
        assert_eq!(used.len(), 6);
    }

    /// The bug sharing fixed: the controller ignored `spec.scopes` and charged every pod to
    /// a `BestEffort` quota.
    #[test]
    fn scoped_quotas_count_only_the_pods_in_their_scopes() {
        let best_effort =
            json!({"metadata": {"name": "be"}, "spec": {"containers": [{"name": "c"}]}});
        let burstable = json!({"metadata": {"name": "bu"},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}});
        let deadline = json!({"metadata": {"name": "dl"},
            "spec": {"activeDeadlineSeconds": 60, "containers": [{"name": "c"}]}});
        let objects = [&best_effort, &burstable, &deadline].map(|p| (res("pods"), p));
        let quota = |scopes: &[&str]| ResourceQuota {
            spec: Some(k8s_openapi::api::core::v1::ResourceQuotaSpec {
                hard: Some(BTreeMap::from([(
                    "pods".to_string(),
                    Quantity("10".into()),
                )])),
                scopes: Some(scopes.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pods = |scopes: &[&str]| used(&quota(scopes), objects, 0)["pods"].0.clone();
        assert_eq!(pods(&[]), "3");
        assert_eq!(pods(&["BestEffort"]), "2");
        assert_eq!(pods(&["NotBestEffort"]), "1");
        assert_eq!(pods(&["Terminating"]), "1");
        assert_eq!(pods(&["BestEffort", "NotTerminating"]), "1");
    }
}
