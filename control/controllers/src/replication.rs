//! The replication controllers: exactly `spec.replicas` active pods per
//! ReplicationController (core/v1) and per ReplicaSet (apps/v1), adopting matching orphans,
//! releasing pods whose labels no longer match, and keeping `status` current. Both kinds run
//! the same [`ReplicaManager`] through the [`Replicated`] trait; they differ only in how the
//! selector is written (a label map, a `LabelSelector`).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use xkube_api::selector::LabelSelector;
use xkube_client::{Api, Client, Object, Patch, Store};

use crate::error::{Error, Result};
use crate::podcontrol::{self, BURST_REPLICAS, Claim, Owner, PodControl, ReleaseConflict};
use xkube_api::pod::{self as podutil, controller_of, is_active, rc_selector};
use xkube_client::runtime::{
    Controller, EventRecorder, Reconciler, Requeue, Seen, WorkQueue, key_of, split_key,
};

/// `<owner>-<5 random characters>`, as Kubernetes' `generateName`.
pub fn pod_name(owner: &str) -> String {
    xkube_api::names::generate(&format!("{owner}-"))
}

/// Which pods an owner selects; an empty selector selects none.
#[derive(Debug, Clone)]
pub struct PodSelector(Option<LabelSelector>);

impl PodSelector {
    /// A selector from a label map (ReplicationControllers).
    pub fn from_map(map: BTreeMap<String, String>) -> Self {
        if map.is_empty() {
            return PodSelector(None);
        }
        Self::from_meta(
            &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some(map),
                match_expressions: None,
            },
        )
    }

    /// A selector from a `LabelSelector` (apps/v1); empty or invalid selects none.
    pub fn from_meta(sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> Self {
        let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty());
        PodSelector(
            (!empty)
                .then(|| LabelSelector::from_meta(sel).ok())
                .flatten(),
        )
    }

    /// Whether the selector selects an object with `labels`.
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.0
            .as_ref()
            .is_some_and(|s| s.matches(labels.unwrap_or(&EMPTY)))
    }
}

/// A kind that keeps `spec.replicas` pods of a template (ReplicationController, ReplicaSet).
pub trait Replicated: Owner + Clone + Send + Sync + 'static {
    /// The controller's name in logs and events (`replication-controller`).
    const COMPONENT: &'static str;
    /// `spec.replicas` (default 1).
    fn replicas(&self) -> usize;
    /// `spec.minReadySeconds`.
    fn min_ready_seconds(&self) -> i64;
    /// The pod template.
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// The selector.
    fn pod_selector(&self) -> PodSelector;
    /// `status`, as JSON.
    fn status_json(&self) -> Value;
}

/// `Replicated` for a kind whose spec has `replicas`, `minReadySeconds` and an optional
/// `template` (the fields have the same names in both kinds); `$selector` maps the object to
/// its [`PodSelector`].
macro_rules! replicated {
    ($kind:ty, $component:literal, $selector:expr) => {
        impl Replicated for $kind {
            const COMPONENT: &'static str = $component;
            fn replicas(&self) -> usize {
                self.spec
                    .as_ref()
                    .and_then(|s| s.replicas)
                    .unwrap_or(1)
                    .max(0) as usize
            }
            fn min_ready_seconds(&self) -> i64 {
                self.spec
                    .as_ref()
                    .and_then(|s| s.min_ready_seconds)
                    .unwrap_or(0) as i64
            }
            fn template(&self) -> Option<&PodTemplateSpec> {
                self.spec.as_ref().and_then(|s| s.template.as_ref())
            }
            fn pod_selector(&self) -> PodSelector {
                let f: fn(&$kind) -> PodSelector = $selector;
                f(self)
            }
            fn status_json(&self) -> Value {
                serde_json::to_value(&self.status).unwrap_or(Value::Null)
            }
        }
    };
}

replicated!(ReplicationController, "replication-controller", |rc| {
    PodSelector::from_map(rc_selector(rc))
});
replicated!(ReplicaSet, "replicaset-controller", |rs| {
    rs.spec
        .as_ref()
        .map_or(PodSelector(None), |s| PodSelector::from_meta(&s.selector))
});

/// `spec.replicas` (default 1).
pub fn desired_replicas<K: Replicated>(owner: &K) -> usize {
    owner.replicas()
}

/// Sorts pods out for `owner` (pure): its owned pods are the active ones.
pub fn claim_pods<K: Replicated>(owner: &K, pods: &[Arc<Pod>]) -> Claim {
    let selector = owner.pod_selector();
    podcontrol::claim(
        owner,
        pods,
        |p| selector.matches(p.metadata.labels.as_ref()),
        is_active,
    )
}

fn phase_rank(p: &Pod) -> u8 {
    match podutil::phase(p) {
        "Pending" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    }
}

/// Orders pods from the first to delete to the last: unscheduled before scheduled, pending
/// before unknown before running, not ready before ready, ready for less time first, more
/// restarts first, newest first (Kubernetes' ActivePods order).
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let scheduled = |p: &Pod| !podutil::node_name(p).is_empty();
    let restarts = |p: &Pod| -> i32 {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .map(|c| c.restart_count)
            .max()
            .unwrap_or(0)
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    scheduled(a)
        .cmp(&scheduled(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| podutil::is_ready(a).cmp(&podutil::is_ready(b)))
        .then_with(|| {
            // Ready for less time first.
            match (podutil::ready_since(a), podutil::ready_since(b)) {
                (Some(x), Some(y)) => y.cmp(&x),
                _ => Ordering::Equal,
            }
        })
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| created(b).cmp(&created(a)))
}

/// The `excess` pods to delete on scale-down.
pub fn pods_to_delete(pods: &[Arc<Pod>], excess: usize) -> Vec<Arc<Pod>> {
    let mut v = pods.to_vec();
    v.sort_by(|a, b| deletion_order(a, b));
    v.truncate(excess);
    v
}

/// The replica counts an owner's status shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaCounts {
    /// Active owned pods.
    pub replicas: i32,
    /// Of those, ready.
    pub ready: i32,
    /// Ready for at least minReadySeconds.
    pub available: i32,
    /// Carrying every label of the template.
    pub fully_labeled: i32,
}

/// The counts `owner` should show given its active owned pods (pure).
pub fn count_replicas<K: Replicated>(
    owner: &K,
    owned: &[Arc<Pod>],
    now: jiff::Timestamp,
) -> ReplicaCounts {
    let min_ready = owner.min_ready_seconds();
    let template_labels = owner
        .template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let count = |f: &dyn Fn(&Pod) -> bool| owned.iter().filter(|p| f(p)).count() as i32;
    ReplicaCounts {
        replicas: owned.len() as i32,
        ready: count(&|p| podutil::is_ready(p)),
        available: count(&|p| podutil::is_available(p, min_ready, now)),
        fully_labeled: count(&|p| {
            let l = p.metadata.labels.as_ref();
            template_labels
                .iter()
                .all(|(k, v)| l.and_then(|l| l.get(k)) == Some(v))
        }),
    }
}

/// The status `owner` should show given its active owned pods (pure): the counts, the
/// observed generation, and the conditions it has.
pub fn compute_status<K: Replicated>(owner: &K, owned: &[Arc<Pod>], now: jiff::Timestamp) -> Value {
    let c = count_replicas(owner, owned, now);
    let prev = owner.status_json();
    let mut status = json!({
        "replicas": c.replicas,
        "readyReplicas": c.ready,
        "availableReplicas": c.available,
        "fullyLabeledReplicas": c.fully_labeled,
    });
    if let Some(g) = owner
        .metadata()
        .generation
        .or(prev["observedGeneration"].as_i64())
    {
        status["observedGeneration"] = json!(g);
    }
    if !prev["conditions"].is_null() {
        status["conditions"] = prev["conditions"].clone();
    }
    status
}

/// The pod an owner creates from its template.
pub fn pod_from_template<K: Replicated>(owner: &K, name: &str) -> Pod {
    let template = owner.template().cloned().unwrap_or_default();
    podcontrol::pod_from_template(&template, owner, name)
}

/// The controller of one [`Replicated`] kind.
#[derive(Clone)]
pub struct ReplicaManager<K> {
    client: Client,
    owners: Store<K>,
    pods: Store<Pod>,
    pod_control: PodControl,
    queue: WorkQueue<String>,
}

/// The ReplicationController controller.
pub type ReplicationManager = ReplicaManager<ReplicationController>;
/// The ReplicaSet controller.
pub type ReplicaSetController = ReplicaManager<ReplicaSet>;

impl<K: Replicated> ReplicaManager<K> {
    /// A controller over these caches.
    pub fn new(
        client: Client,
        owners: Store<K>,
        pods: Store<Pod>,
        recorder: EventRecorder,
    ) -> Self {
        ReplicaManager {
            pod_control: PodControl::new(client.clone(), recorder.with_component(K::COMPONENT)),
            client,
            owners,
            pods,
            queue: WorkQueue::new(),
        }
    }

    /// Watches the caches and runs `workers` reconcilers until `shutdown`.
    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        let owners = self.owners.clone();
        Controller::new(K::COMPONENT, self.clone(), self.queue.clone(), &shutdown)
            .owns(&self.owners, Duration::from_secs(30), |_| true)
            .watches(&self.pods, move |s, q| match s {
                Seen::Object(pod) => {
                    // The owner, and any owner of this kind that might adopt it.
                    if let Some(r) = controller_of(pod.metadata.owner_references.as_ref())
                        && r.kind == <K as k8s_openapi::Resource>::KIND
                    {
                        q.add(format!("{}/{}", pod.namespace(), r.name));
                    }
                    for o in owners.filter(|o| {
                        o.namespace() == pod.namespace()
                            && o.pod_selector().matches(pod.metadata.labels.as_ref())
                    }) {
                        q.add(key_of(&*o));
                    }
                }
                Seen::All => owners.list().iter().for_each(|o| q.add(key_of(&**o))),
            })
            .run(workers)
            .await;
    }

    async fn update_status(&self, owner: &K, owned: &[Arc<Pod>]) -> Result<()> {
        let status = compute_status(owner, owned, jiff::Timestamp::now());
        if owner.status_json() == status {
            return Ok(());
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), owner.namespace());
        match api
            .patch_status(owner.name(), &Patch::Merge(json!({"status": status})))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Error::api(format!(
                "update status of {} {}",
                <K as k8s_openapi::Resource>::KIND,
                key_of(owner)
            ))(e)),
        }
    }
}

impl<K: Replicated> Reconciler for ReplicaManager<K> {
    type Error = Error;

    /// Brings one owner to its desired state.
    #[tracing::instrument(skip(self), fields(controller = K::COMPONENT))]
    async fn reconcile(&self, key: &str) -> Result<Requeue> {
        let (ns, name) = split_key(key);
        let Some(rc) = self.owners.get(ns, name) else {
            self.pod_control.expectations.forget(key);
            return Ok(None);
        };
        let pods = self.pods.filter(|p| p.namespace() == ns);
        let claim = claim_pods(&*rc, &pods);
        let owned = self
            .pod_control
            .adopt_and_release(&*rc, &claim, ReleaseConflict::Fail)
            .await?;

        let mut requeue = None;
        if rc.metadata().deletion_timestamp.is_none()
            && self.pod_control.expectations.satisfied(key, &self.pods)
        {
            let want = desired_replicas(&*rc);
            let have = owned.len();
            if have < want {
                let n = (want - have).min(BURST_REPLICAS);
                let pods: Vec<Pod> = (0..n)
                    .map(|_| pod_from_template(&*rc, &pod_name(rc.name())))
                    .collect();
                self.pod_control.create(key, &*rc, &pods).await?;
                if want - have > n {
                    requeue = Some(Duration::from_millis(100));
                }
            } else if have > want {
                let victims = pods_to_delete(&owned, (have - want).min(BURST_REPLICAS));
                self.pod_control.delete(key, &*rc, &victims).await?;
            }
        }
        self.update_status(&rc, &owned).await?;
        // Ready pods become available minReadySeconds later without any event: look again
        // then (Kubernetes' enqueueAfter(minReadySeconds)).
        let until_available = next_available(&*rc, &owned, jiff::Timestamp::now());
        Ok(match (requeue, until_available) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }
}

/// How long until the next ready-but-not-yet-available pod of `owner` becomes available
/// (pure); `None` when there is none.
pub fn next_available<K: Replicated>(
    owner: &K,
    owned: &[Arc<Pod>],
    now: jiff::Timestamp,
) -> Option<Duration> {
    let min_ready = owner.min_ready_seconds();
    if min_ready <= 0 {
        return None;
    }
    owned
        .iter()
        .filter(|p| podutil::is_ready(p) && !podutil::is_available(p, min_ready, now))
        .filter_map(|p| podutil::ready_since(p))
        .map(|since| {
            let left = min_ready - (now.as_second() - since.as_second());
            // Whole seconds, as availability is judged; at least one.
            Duration::from_secs(left.max(1) as u64)
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::merge;
    use serde_json::Value;

    fn rc(replicas: i32) -> ReplicationController {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "rc-uid", "generation": 3},
            "spec": {"replicas": replicas, "selector": {"app": "web"},
                     "template": {"metadata": {"labels": {"app": "web", "tier": "fe"}},
                                  "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}
        }))
        .expect("rc literal")
    }

    fn pod(name: &str, extra: Value) -> Arc<Pod> {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "web", "tier": "fe"},
                         "creationTimestamp": "2024-01-01T00:00:00Z",
                         "ownerReferences": [{"apiVersion": "v1", "kind": "ReplicationController",
                                              "name": "web", "uid": "rc-uid", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "nginx"}], "nodeName": "n1"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        });
        merge(&mut v, extra);
        Arc::new(serde_json::from_value(v).expect("pod literal"))
    }

    #[test]
    fn names_are_rc_dash_five_characters_of_kubernetes_alphabet() {
        let n = pod_name("frontend");
        let suffix = n.strip_prefix("frontend-").expect("prefix");
        assert_eq!(suffix.len(), 5);
        assert!(
            suffix
                .bytes()
                .all(|c| xkube_api::names::ALPHABET.contains(&c)),
            "{n}"
        );
    }

    #[test]
    fn claims_owned_adopts_orphans_and_releases_relabelled_pods() {
        let rc = rc(3);
        let pods = vec![
            pod("owned", json!({})),
            pod("orphan", json!({"metadata": {"ownerReferences": null}})),
            pod(
                "relabelled",
                json!({"metadata": {"labels": {"app": "other"}}}),
            ),
            pod(
                "foreign",
                json!({"metadata": {"ownerReferences": [{"apiVersion": "v1",
                "kind": "ReplicationController", "name": "x", "uid": "other", "controller": true}]}}),
            ),
            pod("done", json!({"status": {"phase": "Succeeded"}})),
            pod(
                "other-ns",
                json!({"metadata": {"namespace": "kube-system"}}),
            ),
        ];
        let c = claim_pods(&rc, &pods);
        let names = |v: &[Arc<Pod>]| v.iter().map(|p| p.name().to_string()).collect::<Vec<_>>();
        assert_eq!(names(&c.owned), ["owned"]);
        assert_eq!(names(&c.adopt), ["orphan"]);
        assert_eq!(names(&c.release), ["relabelled"]);
    }

    #[test]
    fn scale_down_deletes_unscheduled_then_not_ready_then_newest() {
        let pods = vec![
            pod("old-ready", json!({})),
            pod(
                "new-ready",
                json!({"metadata": {"creationTimestamp": "2024-06-01T00:00:00Z"}}),
            ),
            pod(
                "not-ready",
                json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
            pod(
                "unscheduled",
                json!({"spec": {"nodeName": null}, "status": {"phase": "Pending", "conditions": null}}),
            ),
        ];
        let order: Vec<String> = pods_to_delete(&pods, 4)
            .iter()
            .map(|p| p.name().to_string())
            .collect();
        assert_eq!(
            order,
            ["unscheduled", "not-ready", "new-ready", "old-ready"]
        );
        assert_eq!(pods_to_delete(&pods, 1).len(), 1);
    }

    #[test]
    fn status_counts_replicas_ready_available_and_generation() {
        let rc = rc(3);
        let pods = vec![
            pod("a", json!({})),
            pod(
                "b",
                json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
        ];
        let s = compute_status(&rc, &pods, jiff::Timestamp::now());
        assert_eq!(
            s,
            json!({"replicas": 2, "readyReplicas": 1, "availableReplicas": 1,
                   "fullyLabeledReplicas": 2, "observedGeneration": 3})
        );
    }

    #[test]
    fn ready_pods_are_looked_at_again_when_they_become_available() {
        let mut rc = rc(2);
        if let Some(s) = rc.spec.as_mut() {
            s.min_ready_seconds = Some(10);
        }
        let now: jiff::Timestamp = "2026-01-01T00:00:04Z".parse().expect("time");
        let ready_at = |t: &str| {
            pod(
                t,
                json!({"status": {"conditions": [{"type": "Ready", "status": "True",
                                                  "lastTransitionTime": t}]}}),
            )
        };
        let pods = vec![
            ready_at("2026-01-01T00:00:00Z"),
            ready_at("2026-01-01T00:00:02Z"),
        ];
        assert_eq!(
            next_available(&rc, &pods, now),
            Some(Duration::from_secs(6))
        );
        let later: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().expect("time");
        assert_eq!(next_available(&rc, &pods, later), None, "all available");
    }

    #[test]
    fn template_pods_carry_labels_and_a_controller_reference() {
        let rc = rc(1);
        let p = pod_from_template(&rc, "web-abcde");
        assert_eq!(
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("tier"))
                .map(String::as_str),
            Some("fe")
        );
        let r = controller_of(p.metadata.owner_references.as_ref()).expect("controller ref");
        assert_eq!(
            (r.kind.as_str(), r.uid.as_str()),
            ("ReplicationController", "rc-uid")
        );
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn selector_defaults_to_template_labels() {
        let mut rc = rc(1);
        if let Some(s) = rc.spec.as_mut() {
            s.selector = None;
        }
        assert_eq!(rc_selector(&rc).len(), 2);
    }
}
