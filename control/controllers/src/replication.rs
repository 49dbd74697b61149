//! The replication controller: exactly `spec.replicas` active pods per
//! ReplicationController, adopting matching orphans, releasing pods whose labels no longer
//! match, and keeping `status` current.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ReplicationController, ReplicationControllerStatus};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use xkube_client::{Api, Client, Object, Patch, Store};

use crate::error::{Error, Result};
use crate::podcontrol::{self, BURST_REPLICAS, Claim, PodControl, ReleaseConflict};
use xkube_api::pod::{self as podutil, controller_of, is_active, rc_selector, selector_matches};
use xkube_client::runtime::{
    Controller, EventRecorder, Reconciler, Requeue, Seen, WorkQueue, key_of, split_key,
};

/// `<rc>-<5 random characters>`, as Kubernetes' `generateName`.
pub fn pod_name(rc: &str) -> String {
    xkube_api::names::generate(&format!("{rc}-"))
}

/// `spec.replicas` (default 1).
pub fn desired_replicas(rc: &ReplicationController) -> usize {
    rc.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as usize
}

/// Sorts pods out for `rc` (pure): its owned pods are the active ones.
pub fn claim_pods(rc: &ReplicationController, pods: &[Arc<Pod>]) -> Claim {
    let selector = rc_selector(rc);
    podcontrol::claim(
        rc,
        pods,
        |p| selector_matches(&selector, p.metadata.labels.as_ref()),
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

/// The status an RC should show given its active owned pods (pure).
pub fn compute_status(
    rc: &ReplicationController,
    owned: &[Arc<Pod>],
    now: jiff::Timestamp,
) -> ReplicationControllerStatus {
    let min_ready = rc
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0) as i64;
    let template_labels = rc
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let ready = owned.iter().filter(|p| podutil::is_ready(p)).count() as i32;
    let available = owned
        .iter()
        .filter(|p| podutil::is_available(p, min_ready, now))
        .count() as i32;
    let fully_labeled = owned
        .iter()
        .filter(|p| {
            let l = p.metadata.labels.as_ref();
            template_labels
                .iter()
                .all(|(k, v)| l.and_then(|l| l.get(k)) == Some(v))
        })
        .count() as i32;
    let prev = rc.status.clone().unwrap_or_default();
    ReplicationControllerStatus {
        replicas: owned.len() as i32,
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        fully_labeled_replicas: Some(fully_labeled),
        observed_generation: rc.metadata.generation.or(prev.observed_generation),
        conditions: prev.conditions,
    }
}

/// The pod an RC creates from its template.
pub fn pod_from_template(rc: &ReplicationController, name: &str) -> Pod {
    let template = rc
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    podcontrol::pod_from_template(&template, rc, name)
}

/// The replication controller.
#[derive(Clone)]
pub struct ReplicationManager {
    client: Client,
    rcs: Store<ReplicationController>,
    pods: Store<Pod>,
    pod_control: PodControl,
    queue: WorkQueue<String>,
}

impl ReplicationManager {
    /// A controller over these caches.
    pub fn new(
        client: Client,
        rcs: Store<ReplicationController>,
        pods: Store<Pod>,
        recorder: EventRecorder,
    ) -> Self {
        ReplicationManager {
            pod_control: PodControl::new(
                client.clone(),
                recorder.with_component("replication-controller"),
            ),
            client,
            rcs,
            pods,
            queue: WorkQueue::new(),
        }
    }

    /// Watches the caches and runs `workers` reconcilers until `shutdown`.
    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        let rcs = self.rcs.clone();
        Controller::new("replication", self.clone(), self.queue.clone(), &shutdown)
            .owns(&self.rcs, Duration::from_secs(30), |_| true)
            .watches(&self.pods, move |s, q| match s {
                Seen::Object(pod) => {
                    // The owner, and any RC that might adopt it.
                    if let Some(r) = controller_of(pod.metadata.owner_references.as_ref())
                        && r.kind == "ReplicationController"
                    {
                        q.add(format!("{}/{}", pod.namespace(), r.name));
                    }
                    for rc in rcs.filter(|rc| {
                        rc.namespace() == pod.namespace()
                            && selector_matches(&rc_selector(rc), pod.metadata.labels.as_ref())
                    }) {
                        q.add(key_of(&*rc));
                    }
                }
                Seen::All => rcs.list().iter().for_each(|rc| q.add(key_of(&**rc))),
            })
            .run(workers)
            .await;
    }

    async fn update_status(&self, rc: &ReplicationController, owned: &[Arc<Pod>]) -> Result<()> {
        let status = compute_status(rc, owned, jiff::Timestamp::now());
        if rc.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let api: Api<ReplicationController> = Api::namespaced(self.client.clone(), rc.namespace());
        let body = serde_json::to_value(&status).map_err(|source| Error::Encode {
            what: "replication controller status",
            source,
        })?;
        match api
            .patch_status(rc.name(), &Patch::Merge(json!({"status": body})))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Error::api(format!("update status of rc {}", key_of(rc)))(e)),
        }
    }
}

impl Reconciler for ReplicationManager {
    type Error = Error;

    /// Brings one RC to its desired state.
    #[tracing::instrument(skip(self), fields(controller = "replication"))]
    async fn reconcile(&self, key: &str) -> Result<Requeue> {
        let (ns, name) = split_key(key);
        let Some(rc) = self.rcs.get(ns, name) else {
            self.pod_control.expectations.forget(key);
            return Ok(None);
        };
        let pods = self.pods.filter(|p| p.namespace() == ns);
        let claim = claim_pods(&rc, &pods);
        let owned = self
            .pod_control
            .adopt_and_release(&*rc, &claim, ReleaseConflict::Fail)
            .await?;

        let mut requeue = None;
        if rc.metadata.deletion_timestamp.is_none()
            && self.pod_control.expectations.satisfied(key, &self.pods)
        {
            let want = desired_replicas(&rc);
            let have = owned.len();
            if have < want {
                let n = (want - have).min(BURST_REPLICAS);
                let pods: Vec<Pod> = (0..n)
                    .map(|_| pod_from_template(&rc, &pod_name(rc.name())))
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
        Ok(requeue)
    }
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
        assert_eq!(s.replicas, 2);
        assert_eq!(s.ready_replicas, Some(1));
        assert_eq!(s.available_replicas, Some(1));
        assert_eq!(s.fully_labeled_replicas, Some(2));
        assert_eq!(s.observed_generation, Some(3));
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
