//! The deployment controller: one ReplicaSet per pod template a Deployment has had, the
//! current one scaled up and the old ones down by the strategy (RollingUpdate within
//! maxSurge/maxUnavailable, or Recreate), revisions and their history, pause, and the
//! `Available`/`Progressing` conditions `kubectl rollout status` reads (Kubernetes'
//! `pkg/controller/deployment`). Rollback is kubectl's: it copies an old ReplicaSet's template
//! into the Deployment, which makes that ReplicaSet the new one again with the next revision.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use xkube_api::pod::{controller_of, is_active};
use xkube_client::runtime::{
    Controller, EventRecorder, NORMAL, Reconciler, Requeue, Seen, WorkQueue, key_of, object_ref,
    split_key,
};
use xkube_client::{Api, Client, DeleteParams, Object, Patch, Store};

use crate::error::{Error, Result};
use crate::podcontrol::controller_ref;
use crate::replication::PodSelector;

/// The label that tells the ReplicaSets (and pods) of one template apart.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// A ReplicaSet's revision (and, on the Deployment, the current one).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions of a ReplicaSet that became current again (rollbacks).
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// `spec.replicas` of the Deployment when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// `spec.replicas + maxSurge` when the ReplicaSet was last scaled.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// Kubernetes' `rand.SafeEncodeString` of the FNV-1a hash of the template (and the
/// collision count): the `pod-template-hash` value and the ReplicaSet name suffix.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let alphabet = xkube_api::names::ALPHABET;
    h.to_string()
        .bytes()
        .map(|b| alphabet[usize::from(b) % alphabet.len()] as char)
        .collect()
}

/// The template without the `pod-template-hash` label (what a Deployment's template is
/// compared with).
fn without_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
    }
    t
}

/// Whether `rs` runs `d`'s current template.
pub fn runs_template(rs: &ReplicaSet, template: &PodTemplateSpec) -> bool {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .is_some_and(|t| without_hash(t) == without_hash(template))
}

/// A ReplicaSet's revision annotation (0 when missing).
pub fn revision(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(
    rs: &ReplicaSet,
    f: impl Fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> i32,
) -> i32 {
    rs.status.as_ref().map_or(0, f)
}

fn available(rs: &ReplicaSet) -> i32 {
    status_of(rs, |s| s.available_replicas.unwrap_or(0))
}

/// `intOrPercent` of `total`, rounding up (surge) or down (unavailable).
fn scaled(v: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    match v {
        None => 0,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let p = xkube_api::validation::percent(s).unwrap_or(0) as i64;
            let x = p * i64::from(total);
            (if round_up { (x + 99) / 100 } else { x / 100 }) as i32
        }
    }
}

/// `(maxSurge, maxUnavailable)` of a rolling update, as Kubernetes' `ResolveFenceposts`:
/// both 0 makes maxUnavailable 1. Recreate: `(0, replicas)`.
pub fn fenceposts(d: &Deployment) -> (i32, i32) {
    let spec = d.spec.as_ref();
    let replicas = desired(d);
    let strategy = spec.and_then(|s| s.strategy.as_ref());
    if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        return (0, replicas);
    }
    let ru = strategy.and_then(|s| s.rolling_update.as_ref());
    let surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), replicas, true);
    let unavailable = scaled(ru.and_then(|r| r.max_unavailable.as_ref()), replicas, false);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// How many pods may be unavailable for the Deployment to count as `Available` (Kubernetes'
/// `MaxUnavailable`): the rolling update's maxUnavailable, capped at replicas; 0 for
/// Recreate and for 0 replicas.
pub fn max_unavailable(d: &Deployment) -> i32 {
    let rolling = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        != Some("Recreate");
    if !rolling || desired(d) == 0 {
        return 0;
    }
    fenceposts(d).1.min(desired(d))
}

/// `spec.replicas` (default 1).
pub fn desired(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0)
}

/// The replica count the new ReplicaSet may have now under RollingUpdate (Kubernetes'
/// `NewRSNewReplicas`): up to `replicas + maxSurge` pods in all, never above `replicas`.
pub fn new_rs_replicas(d: &Deployment, all: &[Arc<ReplicaSet>], new: &ReplicaSet) -> i32 {
    let (surge, _) = fenceposts(d);
    let current: i32 = all.iter().map(|rs| spec_replicas(rs)).sum();
    let max_total = desired(d) + surge;
    if current >= max_total {
        return spec_replicas(new);
    }
    (spec_replicas(new) + max_total - current).min(desired(d))
}

/// How each old ReplicaSet is scaled down this step under RollingUpdate (Kubernetes'
/// `reconcileOldReplicaSets`): first pods that are not available, then available ones, never
/// below `replicas - maxUnavailable` available pods. Returns `(index in old, new count)`.
pub fn scale_down_old(
    d: &Deployment,
    old: &[Arc<ReplicaSet>],
    new: Option<&ReplicaSet>,
) -> Vec<(usize, i32)> {
    let (_, max_unavailable) = fenceposts(d);
    let min_available = desired(d) - max_unavailable;
    let old_count: i32 = old.iter().map(|rs| spec_replicas(rs)).sum();
    if old_count == 0 {
        return Vec::new();
    }
    let new_spec = new.map_or(0, spec_replicas);
    let new_available = new.map_or(0, available);
    let all_count = old_count + new_spec;
    let new_unavailable = (new_spec - new_available).max(0);
    let mut budget = all_count - min_available - new_unavailable;
    let mut counts: Vec<i32> = old.iter().map(|rs| spec_replicas(rs)).collect();
    // Oldest first.
    let mut order: Vec<usize> = (0..old.len()).collect();
    order.sort_by_key(|&i| {
        (
            revision(&old[i].metadata),
            old[i].metadata.creation_timestamp.clone().map(|t| t.0),
        )
    });
    // Unhealthy pods first: they cost no availability.
    for &i in &order {
        if budget <= 0 {
            break;
        }
        let unhealthy = (counts[i] - available(&old[i])).max(0);
        let n = unhealthy.min(budget);
        counts[i] -= n;
        budget -= n;
    }
    // Then available pods, keeping minAvailable.
    let available_all: i32 = old
        .iter()
        .enumerate()
        .map(|(i, rs)| available(rs).min(counts[i]))
        .sum::<i32>()
        + new_available;
    let mut spare = available_all - min_available;
    for &i in &order {
        if spare <= 0 {
            break;
        }
        let n = counts[i].min(spare);
        counts[i] -= n;
        spare -= n;
    }
    (0..old.len())
        .filter(|&i| counts[i] != spec_replicas(&old[i]))
        .map(|i| (i, counts[i]))
        .collect()
}

fn condition<'a>(status: &'a Value, ty: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
}

/// A condition, keeping `lastTransitionTime` while its status stays the same and
/// `lastUpdateTime` while nothing about it changes.
fn set_condition(
    status: &mut Value,
    prev: &Value,
    ty: &str,
    st: &str,
    reason: &str,
    msg: &str,
    now: &str,
) {
    let old = condition(prev, ty);
    let same_status = old.is_some_and(|c| c["status"] == st);
    let same = same_status && old.is_some_and(|c| c["reason"] == reason && c["message"] == msg);
    let transition = match old {
        Some(c) if same_status => c["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let update = match old {
        Some(c) if same => c["lastUpdateTime"].clone(),
        _ => json!(now),
    };
    let c = json!({"type": ty, "status": st, "reason": reason, "message": msg,
                   "lastUpdateTime": update, "lastTransitionTime": transition});
    let list = status["conditions"].as_array_mut();
    match list {
        Some(list) => {
            list.retain(|c| c["type"] != ty);
            list.push(c);
        }
        None => status["conditions"] = json!([c]),
    }
}

/// `Progressing` reason when this sync created the new ReplicaSet.
pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
/// `Progressing` reason when this sync made an old ReplicaSet the new one (a rollback).
pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
const DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// Kubernetes' `DeploymentProgressing`: more pods updated, ready or available, or fewer old
/// ones, than the previous status showed.
fn progressed(prev: &Value, new: &Value) -> bool {
    let n = |v: &Value, k: &str| v[k].as_i64().unwrap_or(0);
    let old_pods = |v: &Value| n(v, "replicas") - n(v, "updatedReplicas");
    ["updatedReplicas", "readyReplicas", "availableReplicas"]
        .iter()
        .any(|k| n(new, k) > n(prev, k))
        || old_pods(new) < old_pods(prev)
}

/// A `Progressing=True` condition with a fresh lastUpdateTime (progress restarts the
/// deadline), keeping lastTransitionTime while it was already True.
fn progress(status: &mut Value, prev: &Value, reason: &str, msg: &str, ts: &str) {
    let mut fresh = prev.clone();
    if let Some(list) = fresh["conditions"].as_array_mut() {
        list.retain(|c| c["type"] != "Progressing");
    }
    set_condition(status, &fresh, "Progressing", "True", reason, msg, ts);
    if let Some(old) = condition(prev, "Progressing").filter(|c| c["status"] == "True")
        && let Some(list) = status["conditions"].as_array_mut()
        && let Some(c) = list.iter_mut().find(|c| c["type"] == "Progressing")
    {
        c["lastTransitionTime"] = old["lastTransitionTime"].clone();
    }
}

/// The Deployment status from its ReplicaSets (pure; Kubernetes' `calculateStatus` and
/// `syncRolloutStatus`). `started` is the reason when this sync created or found the new
/// ReplicaSet ([`NEW_RS_CREATED`], [`FOUND_NEW_RS`]).
pub fn compute_status(
    d: &Deployment,
    all: &[Arc<ReplicaSet>],
    new: Option<&ReplicaSet>,
    started: Option<&str>,
    now: jiff::Timestamp,
) -> Value {
    let prev = serde_json::to_value(&d.status).unwrap_or(Value::Null);
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|rs| f(rs)).sum::<i32>();
    let replicas = sum(&|rs| status_of(rs, |s| s.replicas));
    let ready = sum(&|rs| status_of(rs, |s| s.ready_replicas.unwrap_or(0)));
    let avail = sum(&available);
    let updated = new.map_or(0, |rs| status_of(rs, |s| s.replicas));
    let want = desired(d);
    let mut status = json!({
        "observedGeneration": d.metadata.generation.unwrap_or(0),
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": avail,
        "unavailableReplicas": (sum(&spec_replicas) - avail).max(0).max(want - avail).max(0),
    });
    if let Some(c) = prev.get("conditions").filter(|c| !c.is_null()) {
        status["conditions"] = c.clone();
    }
    let ts = xkube_api::meta::format_time(now);
    if avail >= want - max_unavailable(d) {
        set_condition(
            &mut status,
            &prev,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            &ts,
        );
    } else {
        set_condition(
            &mut status,
            &prev,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            &ts,
        );
    }
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let deadline = d.spec.as_ref().and_then(|s| s.progress_deadline_seconds);
    let rs_name = new.map_or("", |rs| rs.name());
    let complete = new.is_some_and(|rs| {
        spec_replicas(rs) == want && status_of(rs, |s| s.replicas) == want && available(rs) >= want
    }) && replicas == want
        && updated == want;
    if paused {
        set_condition(
            &mut status,
            &prev,
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused",
            &ts,
        );
    } else if condition(&prev, "Progressing").is_some_and(|c| c["reason"] == "DeploymentPaused") {
        set_condition(
            &mut status,
            &prev,
            "Progressing",
            "Unknown",
            "DeploymentResumed",
            "Deployment is resumed",
            &ts,
        );
    } else if let Some(deadline) = deadline {
        let was = condition(&prev, "Progressing").map(|c| c["reason"].as_str().unwrap_or(""));
        if complete {
            set_condition(
                &mut status,
                &prev,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                &format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                &ts,
            );
        } else if let Some(reason) = started {
            let msg = match reason {
                NEW_RS_CREATED => format!("Created new replica set \"{rs_name}\""),
                _ => format!("Found new replica set \"{rs_name}\""),
            };
            progress(&mut status, &prev, reason, &msg, &ts);
        } else if progressed(&prev, &status) {
            let msg = format!("ReplicaSet \"{rs_name}\" is progressing.");
            progress(&mut status, &prev, "ReplicaSetUpdated", &msg, &ts);
        } else if was != Some("NewReplicaSetAvailable") && was != Some(DEADLINE_EXCEEDED) {
            // Kubernetes' DeploymentTimedOut: a settled Deployment never times out.
            let last_update = condition(&prev, "Progressing")
                .and_then(|c| c["lastUpdateTime"].as_str())
                .and_then(xkube_api::meta::parse_time);
            if last_update.is_some_and(|t| now.as_second() - t.as_second() > i64::from(deadline)) {
                set_condition(
                    &mut status,
                    &prev,
                    "Progressing",
                    "False",
                    DEADLINE_EXCEEDED,
                    &format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                    &ts,
                );
            }
        }
    }
    status
}

/// The deployment controller.
#[derive(Clone)]
pub struct DeploymentController {
    client: Client,
    deployments: Store<Deployment>,
    replica_sets: Store<ReplicaSet>,
    pods: Store<Pod>,
    recorder: EventRecorder,
    queue: WorkQueue<String>,
}

impl DeploymentController {
    /// A controller over these caches.
    pub fn new(
        client: Client,
        deployments: Store<Deployment>,
        replica_sets: Store<ReplicaSet>,
        pods: Store<Pod>,
        recorder: EventRecorder,
    ) -> Self {
        DeploymentController {
            client,
            deployments,
            replica_sets,
            pods,
            recorder: recorder.with_component("deployment-controller"),
            queue: WorkQueue::new(),
        }
    }

    /// Watches the caches and runs `workers` reconcilers until `shutdown`.
    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        let deployments = self.deployments.clone();
        let for_pods = self.replica_sets.clone();
        Controller::new("deployment", self.clone(), self.queue.clone(), &shutdown)
            .owns(&self.deployments, Duration::from_secs(30), |_| true)
            .watches(&self.replica_sets, move |s, q| match s {
                Seen::Object(rs) => {
                    if let Some(r) = controller_of(rs.metadata.owner_references.as_ref())
                        && r.kind == "Deployment"
                    {
                        q.add(format!("{}/{}", rs.namespace(), r.name));
                    } else {
                        // An orphan: any Deployment that might adopt it.
                        for d in deployments.filter(|d| {
                            d.namespace() == rs.namespace()
                                && selector(d).matches(rs.metadata.labels.as_ref())
                        }) {
                            q.add(key_of(&*d));
                        }
                    }
                }
                Seen::All => {
                    deployments.list().iter().for_each(|d| q.add(key_of(&**d)));
                }
            })
            // Recreate waits for the old pods to be gone.
            .watches(&self.pods, move |s, q| {
                if let Seen::Object(pod) = s
                    && let Some(r) = controller_of(pod.metadata.owner_references.as_ref())
                    && r.kind == "ReplicaSet"
                    && let Some(rs) = for_pods.get(pod.namespace(), &r.name)
                    && let Some(d) = controller_of(rs.metadata.owner_references.as_ref())
                    && d.kind == "Deployment"
                {
                    q.add(format!("{}/{}", pod.namespace(), d.name));
                }
            })
            .run(workers)
            .await;
    }

    /// The ReplicaSets `d` owns, adopting matching orphans.
    async fn claim(&self, d: &Deployment) -> Result<Vec<Arc<ReplicaSet>>> {
        let sel = selector(d);
        let mut owned = Vec::new();
        let mut may_adopt = None;
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), d.namespace());
        for rs in self
            .replica_sets
            .filter(|rs| rs.namespace() == d.namespace())
        {
            let matches = sel.matches(rs.metadata.labels.as_ref());
            match controller_of(rs.metadata.owner_references.as_ref()) {
                Some(r) if r.uid == d.uid() && matches => owned.push(rs),
                None if matches && d.metadata.deletion_timestamp.is_none() => {
                    if may_adopt.is_none() {
                        may_adopt = Some(crate::podcontrol::may_adopt(&self.client, d).await?);
                    }
                    if may_adopt == Some(false) {
                        continue;
                    }
                    let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                    refs.push(controller_ref(d));
                    let patch = Patch::Merge(json!({"metadata": {
                        "ownerReferences": refs, "resourceVersion": rs.resource_version()}}));
                    match api.patch(rs.name(), &patch).await {
                        Ok(adopted) => owned.push(Arc::new(adopted)),
                        Err(e) if e.is_not_found() || e.is_conflict() => {}
                        Err(e) => {
                            return Err(Error::api(format!("adopt replica set {}", key_of(&*rs)))(
                                e,
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(owned)
    }

    /// Sets `spec.replicas` of `rs` (and the annotations recording the Deployment's size).
    async fn scale(&self, d: &Deployment, rs: &ReplicaSet, replicas: i32) -> Result<ReplicaSet> {
        let (surge, _) = fenceposts(d);
        let from = spec_replicas(rs);
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), rs.namespace());
        // The counts come from the cache: a ReplicaSet changed since must not be scaled on
        // stale numbers (409, and the sync is retried on fresh ones).
        let patch = Patch::Merge(json!({
            "metadata": {"resourceVersion": rs.resource_version(), "annotations": {
                DESIRED_REPLICAS: desired(d).to_string(),
                MAX_REPLICAS: (desired(d) + surge).to_string()}},
            "spec": {"replicas": replicas}}));
        let out = api
            .patch(rs.name(), &patch)
            .await
            .map_err(|e| Error::api(format!("scale replica set {}", key_of(rs)))(e))?;
        if from != replicas {
            let verb = if replicas > from { "up" } else { "down" };
            self.recorder
                .record(
                    &object_ref(d),
                    NORMAL,
                    "ScalingReplicaSet",
                    &format!(
                        "Scaled {verb} replica set {} from {from} to {replicas}",
                        rs.name()
                    ),
                )
                .await;
        }
        Ok(out)
    }

    /// The ReplicaSet of `d`'s current template: the existing one (made the newest revision
    /// again after a rollback) or, unless `create` is false, a new one.
    async fn new_replica_set(
        &self,
        d: &Deployment,
        owned: &[Arc<ReplicaSet>],
        create: bool,
    ) -> Result<(Option<ReplicaSet>, Option<&'static str>)> {
        let Some(spec) = d.spec.as_ref() else {
            return Ok((None, None));
        };
        let max_rev = owned
            .iter()
            .map(|rs| revision(&rs.metadata))
            .max()
            .unwrap_or(0);
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), d.namespace());
        // The oldest match wins, as Kubernetes' FindNewReplicaSet.
        let mut matching: Vec<&Arc<ReplicaSet>> = owned
            .iter()
            .filter(|rs| runs_template(rs, &spec.template))
            .collect();
        matching.sort_by_key(|rs| rs.metadata.creation_timestamp.clone().map(|t| t.0));
        if let Some(rs) = matching.first() {
            let rev = revision(&rs.metadata);
            if rev < max_rev || rev == 0 {
                // A rollback: the old ReplicaSet becomes the newest revision.
                let mut history: Vec<String> = rs
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(REVISION_HISTORY))
                    .map(|h| h.split(',').map(str::to_string).collect())
                    .unwrap_or_default();
                if rev > 0 {
                    history.push(rev.to_string());
                }
                let mut ann = json!({REVISION: (max_rev + 1).to_string()});
                if !history.is_empty() {
                    ann[REVISION_HISTORY] = json!(history.join(","));
                }
                let patch = Patch::Merge(json!({"metadata": {"annotations": ann}}));
                let rs = api
                    .patch(rs.name(), &patch)
                    .await
                    .map_err(|e| Error::api(format!("set revision of {}", key_of(&***rs)))(e))?;
                return Ok((Some(rs), Some(FOUND_NEW_RS)));
            }
            return Ok((Some((***rs).clone()), None));
        }
        if !create {
            return Ok((None, None));
        }
        let collisions = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&spec.template, collisions);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(ObjectMeta::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut sel = spec.selector.clone();
        sel.match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut annotations: BTreeMap<String, String> = d
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| {
                k != REVISION && k != "kubectl.kubernetes.io/last-applied-configuration"
            })
            .collect();
        let (surge, _) = fenceposts(d);
        annotations.insert(REVISION.into(), (max_rev + 1).to_string());
        annotations.insert(DESIRED_REPLICAS.into(), desired(d).to_string());
        annotations.insert(MAX_REPLICAS.into(), (desired(d) + surge).to_string());
        // Recreate starts the new ReplicaSet at 0; RollingUpdate within the surge.
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{}-{hash}", d.name())),
                namespace: Some(d.namespace().into()),
                labels: Some(labels),
                annotations: Some(annotations),
                owner_references: Some(vec![controller_ref(d)]),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: spec.min_ready_seconds,
                selector: sel,
                template: Some(template),
            }),
            status: None,
        };
        match api.create(&rs).await {
            Ok(created) => {
                self.recorder
                    .record(
                        &object_ref(d),
                        NORMAL,
                        "ScalingReplicaSet",
                        &format!("Created new replica set {}", created.name()),
                    )
                    .await;
                Ok((Some(created), Some(NEW_RS_CREATED)))
            }
            Err(e) if e.is_conflict() => {
                // Ours already (the cache had not shown it yet): use it.
                let name = rs.name();
                let existing = api
                    .get_opt(name)
                    .await
                    .map_err(|e| Error::api(format!("get replica set {name}"))(e))?;
                if let Some(existing) = existing
                    && controller_of(existing.metadata.owner_references.as_ref())
                        .is_some_and(|r| r.uid == d.uid())
                    && runs_template(&existing, &spec.template)
                {
                    return Ok((Some(existing), None));
                }
                // Another ReplicaSet of that name: hash again with the next collision count.
                let dapi: Api<Deployment> = Api::namespaced(self.client.clone(), d.namespace());
                let count = collisions.unwrap_or(0) + 1;
                dapi.patch_status(
                    d.name(),
                    &Patch::Merge(json!({"status": {"collisionCount": count}})),
                )
                .await
                .map_err(|e| Error::api(format!("bump collisionCount of {}", key_of(d)))(e))?;
                Ok((None, None))
            }
            Err(e) => Err(Error::api(format!("create replica set for {}", key_of(d)))(
                e,
            )),
        }
    }

    /// Deletes old ReplicaSets without pods beyond `revisionHistoryLimit`, oldest first.
    async fn cleanup(&self, d: &Deployment, old: &[Arc<ReplicaSet>]) -> Result<()> {
        let limit = d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let mut empty: Vec<&Arc<ReplicaSet>> = old
            .iter()
            .filter(|rs| spec_replicas(rs) == 0 && status_of(rs, |s| s.replicas) == 0)
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .collect();
        if empty.len() <= limit {
            return Ok(());
        }
        empty.sort_by_key(|rs| revision(&rs.metadata));
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), d.namespace());
        for rs in &empty[..empty.len() - limit] {
            let dp = DeleteParams {
                precondition_uid: Some(rs.uid().to_string()),
                ..DeleteParams::default()
            };
            match api.delete(rs.name(), &dp).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => {
                    return Err(Error::api(format!(
                        "delete old replica set {}",
                        key_of(&***rs)
                    ))(e));
                }
            }
        }
        Ok(())
    }

    async fn update_status(
        &self,
        d: &Deployment,
        all: &[Arc<ReplicaSet>],
        new: Option<&ReplicaSet>,
        started: Option<&str>,
    ) -> Result<()> {
        let status = compute_status(d, all, new, started, jiff::Timestamp::now());
        let mut patch = json!({"status": status});
        if let Some(rs) = new {
            let rev = revision(&rs.metadata).to_string();
            let current = d
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION));
            if current != Some(&rev) {
                patch["metadata"] = json!({"annotations": {REVISION: rev}});
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), d.namespace());
                match api
                    .patch(
                        d.name(),
                        &Patch::Merge(json!({"metadata": patch["metadata"]})),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => return Ok(()),
                    Err(e) => return Err(Error::api(format!("set revision of {}", key_of(d)))(e)),
                }
            }
        }
        // collisionCount is written only where a collision is found (never from the cache).
        let mut current = serde_json::to_value(&d.status).unwrap_or(Value::Null);
        if let Some(m) = current.as_object_mut() {
            m.remove("collisionCount");
        }
        if current == status {
            return Ok(());
        }
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), d.namespace());
        match api
            .patch_status(d.name(), &Patch::Merge(json!({"status": status})))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Error::api(format!(
                "update status of deployment {}",
                key_of(d)
            ))(e)),
        }
    }

    /// Whether any pod of `old` still runs (Recreate waits for none).
    fn old_pods_running(&self, ns: &str, old: &[Arc<ReplicaSet>]) -> bool {
        let uids: Vec<&str> = old.iter().map(|rs| rs.uid()).collect();
        !self
            .pods
            .filter(|p| {
                p.namespace() == ns
                    && controller_of(p.metadata.owner_references.as_ref())
                        .is_some_and(|r| uids.contains(&r.uid.as_str()))
                    && (is_active(p) || p.metadata.deletion_timestamp.is_some())
            })
            .is_empty()
    }
}

/// A Deployment's pod selector.
fn selector(d: &Deployment) -> PodSelector {
    d.spec.as_ref().map_or_else(
        || PodSelector::from_meta(&LabelSelector::default()),
        |s| PodSelector::from_meta(&s.selector),
    )
}

impl Reconciler for DeploymentController {
    type Error = Error;

    /// Brings one Deployment one step towards its template and size.
    #[tracing::instrument(skip(self), fields(controller = "deployment"))]
    async fn reconcile(&self, key: &str) -> Result<Requeue> {
        let (ns, name) = split_key(key);
        let Some(d) = self.deployments.get(ns, name) else {
            return Ok(None);
        };
        let owned = self.claim(&d).await?;
        if d.metadata.deletion_timestamp.is_some() {
            let new = owned
                .iter()
                .find(|rs| {
                    d.spec
                        .as_ref()
                        .is_some_and(|s| runs_template(rs, &s.template))
                })
                .cloned();
            self.update_status(&d, &owned, new.as_deref(), None).await?;
            return Ok(None);
        }
        let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        let (new, started) = self.new_replica_set(&d, &owned, !paused).await?;
        // The cache may not show a ReplicaSet just created or patched.
        let mut all: Vec<Arc<ReplicaSet>> = owned
            .iter()
            .filter(|rs| new.as_ref().is_none_or(|n| n.uid() != rs.uid()))
            .cloned()
            .collect();
        let old = all.clone();
        if let Some(n) = &new {
            all.push(Arc::new(n.clone()));
        }
        let want = desired(&d);
        let recreate = d
            .spec
            .as_ref()
            .and_then(|s| s.strategy.as_ref())
            .and_then(|s| s.type_.as_deref())
            == Some("Recreate");
        let mut new_now = new.clone();
        if paused {
            // Only scaling while paused: the newest ReplicaSet takes the size.
            if let Some(n) = &new
                && spec_replicas(n) != want
                && old.iter().all(|rs| spec_replicas(rs) == 0)
            {
                new_now = Some(self.scale(&d, n, want).await?);
            }
        } else if recreate {
            let active_old: Vec<&Arc<ReplicaSet>> =
                old.iter().filter(|rs| spec_replicas(rs) > 0).collect();
            if !active_old.is_empty() {
                for rs in active_old {
                    self.scale(&d, rs, 0).await?;
                }
            } else if !self.old_pods_running(ns, &old)
                && let Some(n) = &new
                && spec_replicas(n) != want
            {
                new_now = Some(self.scale(&d, n, want).await?);
            }
        } else if let Some(n) = &new {
            // Rolling: the new ReplicaSet up within maxSurge, then the old down within
            // maxUnavailable.
            let target = if spec_replicas(n) > want {
                want
            } else {
                new_rs_replicas(&d, &all, n)
            };
            if target != spec_replicas(n) {
                new_now = Some(self.scale(&d, n, target).await?);
            }
            for (i, count) in scale_down_old(&d, &old, new_now.as_ref()) {
                self.scale(&d, &old[i], count).await?;
            }
        }
        let all: Vec<Arc<ReplicaSet>> = old
            .iter()
            .cloned()
            .chain(new_now.clone().map(Arc::new))
            .collect();
        let complete = new_now
            .as_ref()
            .is_some_and(|n| spec_replicas(n) == want && available(n) >= want)
            && old.iter().all(|rs| spec_replicas(rs) == 0);
        if complete || paused {
            self.cleanup(&d, &old).await?;
        }
        self.update_status(&d, &all, new_now.as_ref(), started)
            .await?;
        // Check the progress deadline again while rolling.
        let deadline = d.spec.as_ref().and_then(|s| s.progress_deadline_seconds);
        Ok(match deadline {
            Some(s) if !complete && !paused => {
                Some(Duration::from_secs(s.max(1) as u64 / 2 + 1).min(Duration::from_secs(30)))
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i32, surge: Value, unavailable: Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 2},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "strategy": {"type": "RollingUpdate",
                                  "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                     "progressDeadlineSeconds": 600,
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "v1"}]}}}
        }))
        .expect("deployment literal")
    }

    fn rs(name: &str, rev: i64, replicas: i32, avail: i32) -> Arc<ReplicaSet> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": name,
                             "annotations": {REVISION: rev.to_string()}},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}},
                "status": {"replicas": replicas, "readyReplicas": avail, "availableReplicas": avail}
            }))
            .expect("replica set literal"),
        )
    }

    #[test]
    fn fenceposts_round_surge_up_and_unavailable_down() {
        assert_eq!(
            fenceposts(&deployment(4, json!("25%"), json!("25%"))),
            (1, 1)
        );
        assert_eq!(
            fenceposts(&deployment(10, json!("25%"), json!("25%"))),
            (3, 2)
        );
        assert_eq!(fenceposts(&deployment(4, json!(0), json!(1))), (0, 1));
        // Both zero after rounding: one may be unavailable.
        assert_eq!(fenceposts(&deployment(1, json!(0), json!("25%"))), (0, 1));
    }

    #[test]
    fn rolling_update_of_four_with_max_unavailable_one_never_drops_below_three() {
        // maxSurge 0, maxUnavailable 1: simulate steps in which every scaled-up pod becomes
        // available before the next step, and check availability at each.
        let d = deployment(4, json!(0), json!(1));
        let mut old = rs("old", 1, 4, 4);
        let mut new = rs("new", 2, 0, 0);
        for _ in 0..20 {
            let all = vec![old.clone(), new.clone()];
            let n = new_rs_replicas(&d, &all, &new);
            new = rs("new", 2, n, available(&new));
            for (_, count) in scale_down_old(&d, std::slice::from_ref(&old), Some(&new)) {
                old = rs("old", 1, count, count.min(available(&old)));
            }
            assert!(available(&old) + available(&new) >= 3, "dropped below 3");
            // The new pods become ready.
            new = rs("new", 2, spec_replicas(&new), spec_replicas(&new));
            if spec_replicas(&new) == 4 && spec_replicas(&old) == 0 {
                return;
            }
        }
        panic!(
            "rollout did not finish: old {} new {}",
            spec_replicas(&old),
            spec_replicas(&new)
        );
    }

    #[test]
    fn surge_is_bounded_by_replicas_plus_max_surge() {
        let d = deployment(4, json!(1), json!(0));
        let old = rs("old", 1, 4, 4);
        let new = rs("new", 2, 0, 0);
        assert_eq!(new_rs_replicas(&d, &[old.clone(), new.clone()], &new), 1);
        // Nothing available can go while the new pod is not ready.
        assert!(
            scale_down_old(&d, std::slice::from_ref(&old), Some(&rs("new", 2, 1, 0))).is_empty()
        );
        assert_eq!(
            scale_down_old(&d, std::slice::from_ref(&old), Some(&rs("new", 2, 1, 1))),
            [(0, 3)]
        );
    }

    #[test]
    fn unavailable_old_pods_go_first() {
        let d = deployment(4, json!(0), json!(1));
        // Two of the old pods are not available: one of them goes (4 pods - 3 to keep
        // available), never an available one, which would leave 1 available.
        let old = rs("old", 1, 4, 2);
        let new = rs("new", 2, 0, 0);
        assert_eq!(
            scale_down_old(&d, std::slice::from_ref(&old), Some(&new)),
            [(0, 3)]
        );
        // With 4 available pods, one available pod may go.
        let healthy = rs("old", 1, 4, 4);
        assert_eq!(
            scale_down_old(&d, std::slice::from_ref(&healthy), Some(&new)),
            [(0, 3)]
        );
        // With a surplus of unavailable pods (5 of 4, 2 unavailable) two go.
        let surplus = rs("old", 1, 5, 3);
        assert_eq!(
            scale_down_old(&d, std::slice::from_ref(&surplus), Some(&new)),
            [(0, 3)]
        );
    }

    #[test]
    fn template_hash_is_stable_and_changes_with_template_and_collisions() {
        let d = deployment(1, json!(1), json!(0));
        let t = &d.spec.as_ref().expect("spec").template;
        let h = template_hash(t, None);
        assert_eq!(h, template_hash(t, None));
        assert_ne!(h, template_hash(t, Some(1)));
        assert!(
            h.bytes().all(|c| xkube_api::names::ALPHABET.contains(&c)),
            "{h}"
        );
        let mut t2 = t.clone();
        t2.spec.as_mut().expect("spec").containers[0].image = Some("v2".into());
        assert_ne!(h, template_hash(&t2, None));
    }

    #[test]
    fn status_reports_counts_and_conditions_kubectl_reads() {
        let d = deployment(4, json!(1), json!(1));
        let old = rs("old", 1, 2, 2);
        let new = rs("new", 2, 3, 2);
        let now = jiff::Timestamp::now();
        let s = compute_status(&d, &[old.clone(), new.clone()], Some(&new), None, now);
        assert_eq!(
            (
                &s["replicas"],
                &s["updatedReplicas"],
                &s["availableReplicas"],
                &s["observedGeneration"]
            ),
            (&json!(5), &json!(3), &json!(4), &json!(2))
        );
        assert_eq!(
            condition(&s, "Available").expect("available")["status"],
            "True"
        );
        assert_eq!(
            condition(&s, "Progressing").expect("progressing")["reason"],
            "ReplicaSetUpdated"
        );
        // Complete.
        let done = rs("new", 2, 4, 4);
        let s = compute_status(&d, std::slice::from_ref(&done), Some(&done), None, now);
        assert_eq!(
            condition(&s, "Progressing").expect("progressing")["reason"],
            "NewReplicaSetAvailable"
        );
    }

    #[test]
    fn recreate_is_available_only_with_every_replica() {
        let mut d = deployment(3, json!(1), json!(1));
        if let Some(s) = d.spec.as_mut() {
            s.strategy = serde_json::from_value(json!({"type": "Recreate"})).ok();
        }
        assert_eq!(max_unavailable(&d), 0);
        let rs = rs("new", 2, 3, 0);
        let s = compute_status(
            &d,
            std::slice::from_ref(&rs),
            Some(&rs),
            None,
            jiff::Timestamp::now(),
        );
        assert_eq!(
            condition(&s, "Available").expect("available")["status"],
            "False"
        );
    }

    #[test]
    fn a_settled_deployment_that_loses_a_pod_never_times_out() {
        let mut d = deployment(4, json!(1), json!(1));
        let done = rs("new", 2, 4, 4);
        let start = jiff::Timestamp::now();
        let s = compute_status(&d, std::slice::from_ref(&done), Some(&done), None, start);
        d.status = serde_json::from_value(s).ok();
        let later = start + jiff::SignedDuration::from_secs(3600);
        let crashed = rs("new", 2, 4, 3);
        let s = compute_status(
            &d,
            std::slice::from_ref(&crashed),
            Some(&crashed),
            None,
            later,
        );
        let p = condition(&s, "Progressing").expect("progressing");
        assert_eq!(
            (&p["status"], &p["reason"]),
            (&json!("True"), &json!("NewReplicaSetAvailable"))
        );
        // A new rollout restarts the clock from the ReplicaSet's creation.
        let s = compute_status(
            &d,
            std::slice::from_ref(&crashed),
            Some(&crashed),
            Some(NEW_RS_CREATED),
            later,
        );
        let p = condition(&s, "Progressing").expect("progressing");
        assert_eq!(p["reason"], NEW_RS_CREATED);
        assert_eq!(
            p["lastUpdateTime"],
            json!(xkube_api::meta::format_time(later))
        );
    }

    #[test]
    fn a_stalled_rollout_exceeds_its_progress_deadline() {
        let mut d = deployment(4, json!(1), json!(1));
        let old = rs("old", 1, 4, 4);
        let new = rs("new", 2, 1, 0);
        let start = jiff::Timestamp::now();
        let s = compute_status(&d, &[old.clone(), new.clone()], Some(&new), None, start);
        d.status = serde_json::from_value(s).ok();
        let later = start + jiff::SignedDuration::from_secs(601);
        let s = compute_status(&d, &[old, new.clone()], Some(&new), None, later);
        let p = condition(&s, "Progressing").expect("progressing");
        assert_eq!(
            (&p["status"], &p["reason"]),
            (&json!("False"), &json!("ProgressDeadlineExceeded"))
        );
    }
}
