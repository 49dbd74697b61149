//! The resourcequota controller: `status.used` (and `status.hard`) of every ResourceQuota
//! kept current for pods, services, replicationcontrollers, secrets, configmaps and the
//! cpu/memory requests and limits of the namespace's active pods.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, Pod, ReplicationController, ResourceQuota, ResourceQuotaStatus, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use xkube_client::{Api, Client, Object, Patch, Store};

use crate::error::{Error, Result};
use crate::informer::{Seen, enqueue_on_change, key_of, on_change, split_key};
use crate::podutil;
use crate::quantity::{format_bytes, format_cpu, pod_resources};
use crate::queue::{Reconciler, Requeue, WorkQueue, run_reconciler};

/// Counts in one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Active (not finished) pods.
    pub pods: i64,
    /// Services.
    pub services: i64,
    /// NodePort and LoadBalancer services.
    pub services_nodeports: i64,
    /// LoadBalancer services.
    pub services_loadbalancers: i64,
    /// ReplicationControllers.
    pub replicationcontrollers: i64,
    /// Secrets.
    pub secrets: i64,
    /// ConfigMaps.
    pub configmaps: i64,
    /// Sum of cpu requests of active pods, millicores.
    pub requests_cpu: i64,
    /// Sum of memory requests of active pods, bytes.
    pub requests_memory: i64,
    /// Sum of cpu limits, millicores.
    pub limits_cpu: i64,
    /// Sum of memory limits, bytes.
    pub limits_memory: i64,
}

/// Adds up the pods of a namespace (pure).
pub fn pod_usage(pods: &[Arc<Pod>], u: &mut Usage) {
    for p in pods.iter().filter(|p| !podutil::is_terminal(p)) {
        u.pods += 1;
        let r = pod_resources(p);
        u.requests_cpu += r.cpu_request;
        u.requests_memory += r.memory_request;
        u.limits_cpu += r.cpu_limit;
        u.limits_memory += r.memory_limit;
    }
}

/// `status.used` for the resources named in `hard` (pure).
pub fn used_for(hard: &BTreeMap<String, Quantity>, u: &Usage) -> BTreeMap<String, Quantity> {
    let mut out = BTreeMap::new();
    for k in hard.keys() {
        let v = match k.as_str() {
            "pods" | "count/pods" => u.pods.to_string(),
            "services" | "count/services" => u.services.to_string(),
            "services.nodeports" => u.services_nodeports.to_string(),
            "services.loadbalancers" => u.services_loadbalancers.to_string(),
            "replicationcontrollers" | "count/replicationcontrollers" => {
                u.replicationcontrollers.to_string()
            }
            "secrets" | "count/secrets" => u.secrets.to_string(),
            "configmaps" | "count/configmaps" => u.configmaps.to_string(),
            "cpu" | "requests.cpu" => format_cpu(u.requests_cpu),
            "memory" | "requests.memory" => format_bytes(u.requests_memory),
            "limits.cpu" => format_cpu(u.limits_cpu),
            "limits.memory" => format_bytes(u.limits_memory),
            _ => continue,
        };
        out.insert(k.clone(), Quantity(v));
    }
    out
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

fn watch_ns<K: Object>(
    store: &Store<K>,
    q: &WorkQueue<String>,
    quotas: &Store<ResourceQuota>,
    shutdown: &CancellationToken,
) {
    let q = q.clone();
    let quotas = quotas.clone();
    on_change(store, shutdown, None, move |s| match s {
        Seen::Object(o) => enqueue_ns(&q, &quotas, o.namespace()),
        Seen::All => quotas.list().iter().for_each(|r| q.add(key_of(&**r))),
    });
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
        enqueue_on_change(
            &self.c.quotas,
            &self.queue,
            &shutdown,
            Some(self.resync),
            |_| true,
        );
        watch_ns(&self.c.pods, &self.queue, &self.c.quotas, &shutdown);
        watch_ns(&self.c.services, &self.queue, &self.c.quotas, &shutdown);
        watch_ns(&self.c.rcs, &self.queue, &self.c.quotas, &shutdown);
        watch_ns(&self.c.secrets, &self.queue, &self.c.quotas, &shutdown);
        watch_ns(&self.c.configmaps, &self.queue, &self.c.quotas, &shutdown);
        self.c.quotas.wait_ready().await;
        self.c.pods.wait_ready().await;
        run_reconciler("resourcequota", self.queue.clone(), workers, shutdown, self).await;
    }

    /// The usage of a namespace from the caches.
    pub fn usage(&self, ns: &str) -> Usage {
        let mut u = Usage::default();
        pod_usage(&self.c.pods.filter(|p| p.namespace() == ns), &mut u);
        for s in self.c.services.filter(|s| s.namespace() == ns) {
            u.services += 1;
            match s.spec.as_ref().and_then(|s| s.type_.as_deref()) {
                Some("NodePort") => u.services_nodeports += 1,
                Some("LoadBalancer") => {
                    u.services_nodeports += 1;
                    u.services_loadbalancers += 1;
                }
                _ => {}
            }
        }
        u.replicationcontrollers = self.c.rcs.filter(|r| r.namespace() == ns).len() as i64;
        u.secrets = self.c.secrets.filter(|r| r.namespace() == ns).len() as i64;
        u.configmaps = self.c.configmaps.filter(|r| r.namespace() == ns).len() as i64;
        u
    }
}

impl Reconciler for QuotaController {
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
        let used = used_for(&hard, &self.usage(ns));
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

    #[test]
    fn used_lists_only_the_hard_resources_in_kubernetes_formats() {
        let pods: Vec<Arc<Pod>> = vec![
            Arc::new(serde_json::from_value(json!({
                "metadata": {"name": "a"},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}]},
                "status": {"phase": "Running"}}))
            .expect("pod")),
            Arc::new(serde_json::from_value(json!({
                "metadata": {"name": "b"},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "750m", "memory": "64Mi"}}}]},
                "status": {"phase": "Succeeded"}}))
            .expect("pod")),
        ];
        let mut u = Usage {
            services: 2,
            ..Usage::default()
        };
        pod_usage(&pods, &mut u);
        let mut hard = BTreeMap::new();
        for k in ["pods", "services", "requests.cpu", "memory", "secrets"] {
            hard.insert(k.to_string(), Quantity("10".into()));
        }
        let used = used_for(&hard, &u);
        let get = |k: &str| used.get(k).map(|q| q.0.clone()).unwrap_or_default();
        assert_eq!(get("pods"), "1", "finished pods do not count");
        assert_eq!(get("services"), "2");
        assert_eq!(get("requests.cpu"), "250m");
        assert_eq!(get("memory"), "64Mi");
        assert_eq!(get("secrets"), "0");
        assert_eq!(used.len(), 5);
    }
}
