//! The replication controller: exactly `spec.replicas` active pods per
//! ReplicationController, adopting matching orphans, releasing pods whose labels no longer
//! match, and keeping `status` current.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::{Pod, ReplicationController, ReplicationControllerStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use rand::Rng;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use xkube_client::{Api, Client, DeleteParams, Object, Patch, Store};

use crate::error::{Error, Result};
use crate::informer::{Seen, key_of, on_change, split_key};
use crate::podutil::{self, controller_of, is_active, selector_matches};
use crate::queue::{Requeue, WorkQueue, run_workers};
use crate::recorder::{EventRecorder, NORMAL, WARNING, object_ref};

/// Most pods created or deleted by one reconcile (Kubernetes' burstReplicas).
pub const BURST_REPLICAS: usize = 500;
/// How long unobserved creates/deletes hold back further changes.
pub const EXPECTATIONS_TTL: Duration = Duration::from_secs(60);

const NAME_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// `<rc>-<5 random lowercase alphanumerics>`.
pub fn pod_name(rc: &str) -> String {
    let mut rng = rand::thread_rng();
    let suffix: String = (0..5)
        .map(|_| NAME_CHARS[rng.gen_range(0..NAME_CHARS.len())] as char)
        .collect();
    format!("{rc}-{suffix}")
}

/// The selector of an RC: `spec.selector`, defaulting to the template's labels.
pub fn rc_selector(rc: &ReplicationController) -> BTreeMap<String, String> {
    let spec = rc.spec.as_ref();
    spec.and_then(|s| s.selector.clone())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            spec.and_then(|s| s.template.as_ref())
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.clone())
        })
        .unwrap_or_default()
}

/// `spec.replicas` (default 1).
pub fn desired_replicas(rc: &ReplicationController) -> usize {
    rc.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as usize
}

/// What the controller does with the pods of a namespace for one RC.
#[derive(Debug, Default, PartialEq)]
pub struct Claim {
    /// Active pods owned by the RC and matching its selector.
    pub owned: Vec<Arc<Pod>>,
    /// Matching orphans to adopt.
    pub adopt: Vec<Arc<Pod>>,
    /// Owned pods whose labels no longer match: release them.
    pub release: Vec<Arc<Pod>>,
}

/// Sorts pods out for `rc` (pure).
pub fn claim_pods(rc: &ReplicationController, pods: &[Arc<Pod>]) -> Claim {
    let selector = rc_selector(rc);
    let uid = rc.uid();
    let deleting = rc.metadata.deletion_timestamp.is_some();
    let mut c = Claim::default();
    for p in pods {
        if p.namespace() != rc.namespace() {
            continue;
        }
        let matches = selector_matches(&selector, p.metadata.labels.as_ref());
        match controller_of(p.metadata.owner_references.as_ref()) {
            Some(r) if r.uid == uid => {
                if !matches {
                    c.release.push(p.clone());
                } else if is_active(p) {
                    c.owned.push(p.clone());
                }
            }
            Some(_) => {}
            None => {
                if matches && is_active(p) && !deleting {
                    c.adopt.push(p.clone());
                }
            }
        }
    }
    c
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
        .filter(|p| {
            podutil::is_ready(p)
                && (min_ready == 0
                    || podutil::ready_since(p)
                        .is_some_and(|t| now.as_second() - t.as_second() >= min_ready))
        })
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
    let tmeta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(rc.namespace().to_string()),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            owner_references: Some(vec![owner_ref(rc)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

fn owner_ref(rc: &ReplicationController) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "ReplicationController".into(),
        name: rc.name().to_string(),
        uid: rc.uid().to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Creates and deletes not yet observed in the cache, per RC.
#[derive(Debug, Default)]
pub struct Expectations {
    inner: Mutex<HashMap<String, Pending>>,
}

#[derive(Debug, Default)]
struct Pending {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    since: Option<Instant>,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records creates and deletes about to be sent for `key`.
    pub fn expect(&self, key: &str, creates: &[String], deletes: &[String]) {
        let mut m = self.lock();
        let p = m.entry(key.to_string()).or_default();
        p.creates.extend(creates.iter().cloned());
        p.deletes.extend(deletes.iter().cloned());
        p.since = Some(Instant::now());
    }

    /// A create or delete that failed will never be observed.
    pub fn lower(&self, key: &str, create: Option<&str>, delete: Option<&str>) {
        let mut m = self.lock();
        if let Some(p) = m.get_mut(key) {
            if let Some(c) = create {
                p.creates.remove(c);
            }
            if let Some(d) = delete {
                p.deletes.remove(d);
            }
        }
    }

    /// Drops everything about `key`.
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Checks the cache: whether every expected create has appeared and every expected
    /// delete has happened (or the expectations expired).
    pub fn satisfied(&self, key: &str, pods: &Store<Pod>) -> bool {
        let mut m = self.lock();
        let Some(p) = m.get_mut(key) else {
            return true;
        };
        let (ns, _) = split_key(key);
        p.creates.retain(|n| pods.get(ns, n).is_none());
        p.deletes.retain(|n| {
            pods.get(ns, n)
                .is_some_and(|pod| pod.metadata.deletion_timestamp.is_none())
        });
        let expired = p.since.is_some_and(|s| s.elapsed() > EXPECTATIONS_TTL);
        if p.creates.is_empty() && p.deletes.is_empty() || expired {
            m.remove(key);
            return true;
        }
        false
    }
}

/// The replication controller.
#[derive(Clone)]
pub struct ReplicationManager {
    client: Client,
    rcs: Store<ReplicationController>,
    pods: Store<Pod>,
    recorder: EventRecorder,
    expectations: Arc<Expectations>,
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
            client,
            rcs,
            pods,
            recorder: recorder.with_component("replication-controller"),
            expectations: Arc::new(Expectations::default()),
            queue: WorkQueue::new(),
        }
    }

    /// Watches the caches and runs `workers` reconcilers until `shutdown`.
    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        let q = self.queue.clone();
        let rcs = self.rcs.clone();
        on_change(
            &self.rcs,
            &shutdown,
            Some(Duration::from_secs(30)),
            move |s| match s {
                Seen::Object(rc) => q.add(key_of(&*rc)),
                Seen::All => rcs.list().iter().for_each(|rc| q.add(key_of(&**rc))),
            },
        );
        let q = self.queue.clone();
        let rcs = self.rcs.clone();
        on_change(&self.pods, &shutdown, None, move |s| match s {
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
        });
        self.rcs.wait_ready().await;
        self.pods.wait_ready().await;
        let me = self.clone();
        run_workers(
            "replication",
            self.queue.clone(),
            workers,
            shutdown,
            move |key: String| {
                let me = me.clone();
                async move { me.reconcile(&key).await }
            },
        )
        .await;
    }

    /// Brings one RC to its desired state.
    #[tracing::instrument(skip(self), fields(controller = "replication"))]
    pub async fn reconcile(&self, key: &str) -> Result<Requeue> {
        let (ns, name) = split_key(key);
        let Some(rc) = self.rcs.get(ns, name) else {
            self.expectations.forget(key);
            return Ok(None);
        };
        let pods = self.pods.filter(|p| p.namespace() == ns);
        let claim = claim_pods(&rc, &pods);
        let pod_api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        for p in &claim.release {
            let refs: Vec<OwnerReference> = p
                .metadata
                .owner_references
                .iter()
                .flatten()
                .filter(|r| r.uid != rc.uid())
                .cloned()
                .collect();
            let patch = Patch::Merge(json!({"metadata": {
                "ownerReferences": refs, "resourceVersion": p.resource_version()}}));
            match pod_api.patch(p.name(), &patch).await {
                Ok(_) => {
                    tracing::info!(pod = p.name(), "released pod whose labels no longer match")
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(Error::api(format!("release pod {ns}/{}", p.name()))(e)),
            }
        }
        let mut owned = claim.owned.clone();
        for p in &claim.adopt {
            let mut refs = p.metadata.owner_references.clone().unwrap_or_default();
            refs.push(owner_ref(&rc));
            let patch = Patch::Merge(json!({"metadata": {
                "ownerReferences": refs, "resourceVersion": p.resource_version()}}));
            match pod_api.patch(p.name(), &patch).await {
                Ok(adopted) => {
                    tracing::info!(pod = p.name(), "adopted orphan pod");
                    owned.push(Arc::new(adopted));
                }
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(Error::api(format!("adopt pod {ns}/{}", p.name()))(e)),
            }
        }

        let mut requeue = None;
        if rc.metadata.deletion_timestamp.is_none() && self.expectations.satisfied(key, &self.pods)
        {
            let want = desired_replicas(&rc);
            let have = owned.len();
            if have < want {
                let n = (want - have).min(BURST_REPLICAS);
                self.create_pods(key, &rc, n).await?;
                if want - have > n {
                    requeue = Some(Duration::from_millis(100));
                }
            } else if have > want {
                let victims = pods_to_delete(&owned, (have - want).min(BURST_REPLICAS));
                self.delete_pods(key, &rc, &victims).await?;
            }
        }
        self.update_status(&rc, &owned).await?;
        Ok(requeue)
    }

    async fn create_pods(&self, key: &str, rc: &ReplicationController, n: usize) -> Result<()> {
        let ns = rc.namespace();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let names: Vec<String> = (0..n).map(|_| pod_name(rc.name())).collect();
        self.expectations.expect(key, &names, &[]);
        // Slow start: batches of 1, 2, 4, ... so a failing create (quota, admission) stops
        // early instead of failing n times.
        let mut first_err = None;
        let mut start = 0;
        let mut batch = 1;
        while start < names.len() {
            let end = (start + batch).min(names.len());
            let results = join_all(names[start..end].iter().map(|name| {
                let pod = pod_from_template(rc, name);
                let api = api.clone();
                async move { (name, api.create(&pod).await) }
            }))
            .await;
            let mut failed = false;
            for (name, r) in results {
                match r {
                    Ok(_) => {
                        self.recorder
                            .record(
                                &object_ref(rc),
                                NORMAL,
                                "SuccessfulCreate",
                                &format!("Created pod: {name}"),
                            )
                            .await;
                    }
                    Err(e) => {
                        self.expectations.lower(key, Some(name), None);
                        failed = true;
                        self.recorder
                            .record(
                                &object_ref(rc),
                                WARNING,
                                "FailedCreate",
                                &format!("Error creating: {e}"),
                            )
                            .await;
                        first_err.get_or_insert(Error::api(format!("create pod {ns}/{name}"))(e));
                    }
                }
            }
            if failed {
                for name in &names[end..] {
                    self.expectations.lower(key, Some(name), None);
                }
                break;
            }
            start = end;
            batch *= 2;
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn delete_pods(
        &self,
        key: &str,
        rc: &ReplicationController,
        victims: &[Arc<Pod>],
    ) -> Result<()> {
        let ns = rc.namespace();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let names: Vec<String> = victims.iter().map(|p| p.name().to_string()).collect();
        self.expectations.expect(key, &[], &names);
        let results = join_all(names.iter().map(|name| {
            let api = api.clone();
            async move { (name, api.delete(name, &DeleteParams::default()).await) }
        }))
        .await;
        let mut first_err = None;
        for (name, r) in results {
            match r {
                Ok(_) => {
                    self.recorder
                        .record(
                            &object_ref(rc),
                            NORMAL,
                            "SuccessfulDelete",
                            &format!("Deleted pod: {name}"),
                        )
                        .await;
                }
                Err(e) if e.is_not_found() => self.expectations.lower(key, None, Some(name)),
                Err(e) => {
                    self.expectations.lower(key, None, Some(name));
                    first_err.get_or_insert(Error::api(format!("delete pod {ns}/{name}"))(e));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
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

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    if v.is_null() {
                        a.remove(&k);
                    } else {
                        merge(a.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn expectations_hold_until_creates_and_deletes_are_observed() {
        let mut w: xkube_client::Writer<Pod> = xkube_client::Writer::new();
        let store = w.store();
        let e = Expectations::default();
        assert!(e.satisfied("default/web", &store), "nothing pending");
        e.expect(
            "default/web",
            &["web-aaaaa".into(), "web-bbbbb".into()],
            &["old".into()],
        );
        w.apply(xkube_client::Event::Restarted(vec![
            (*pod("old", json!({}))).clone(),
        ]));
        assert!(!e.satisfied("default/web", &store), "creates not seen yet");
        w.apply(xkube_client::Event::Applied(
            (*pod("web-aaaaa", json!({}))).clone(),
        ));
        e.lower("default/web", Some("web-bbbbb"), None);
        assert!(
            !e.satisfied("default/web", &store),
            "the delete is not seen yet"
        );
        w.apply(xkube_client::Event::Deleted(
            (*pod("old", json!({}))).clone(),
        ));
        assert!(e.satisfied("default/web", &store));
    }

    #[test]
    fn names_are_rc_dash_five_lowercase_alphanumerics() {
        let n = pod_name("frontend");
        let suffix = n.strip_prefix("frontend-").expect("prefix");
        assert_eq!(suffix.len(), 5);
        assert!(
            suffix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
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
