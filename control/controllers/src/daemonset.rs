//! The DaemonSet controller: one pod of `spec.template` on every eligible node, replaced when
//! the template changes, and `status` kept current.
//!
//! A node is eligible when it matches the template's `nodeSelector` and required node
//! affinity (and `nodeName`, if set) and the pod tolerates every NoSchedule/NoExecute taint of
//! the node. Daemon pods get Kubernetes' extra tolerations (`not-ready` and `unreachable`
//! NoExecute; `disk-pressure`, `memory-pressure`, `pid-pressure` and `unschedulable`
//! NoSchedule; `network-unavailable` for host-network pods), so cordoned nodes still run them.
//! A pod whose node gained an untolerated NoSchedule taint keeps running (it only counts as
//! misscheduled); an untolerated NoExecute taint, a node that stopped matching, or a deleted
//! node removes it.
//!
//! **Binding.** Pods are created with `spec.nodeName` set to their node, as Kubernetes did
//! before 1.12, not with a `metadata.name` node affinity left to the scheduler. The scheduler
//! therefore never sees daemon pods, and node resources are not checked for them.
//!
//! **Updates.** Each pod carries the `controller-revision-hash` label: a hash of the
//! template. With `RollingUpdate` (the default) pods of an older template are deleted node by
//! node, at most `maxUnavailable` nodes (an integer or a percentage of the desired nodes,
//! rounded up; default 1) without an available pod at a time, and replaced by the normal
//! create path once the old pod is gone. `maxSurge` is not implemented (treated as 0).
//! With `OnDelete` a pod is only replaced (from the current template) when it is deleted.
//! No ControllerRevision objects are written, so `revisionHistoryLimit` has no effect.
//!
//! Pods are named `<ds>-<5 random lowercase alphanumerics>` and carry a controller
//! ownerReference; matching orphans are adopted and owned pods whose labels stop matching are
//! released, as for ReplicationControllers. Failed and succeeded pods are deleted (and so
//! recreated). Events: `SuccessfulCreate`, `SuccessfulDelete`, `FailedCreate`,
//! `FailedDaemonPod`.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use xkube_api::LabelSelector;
use xkube_api::placement::{
    find_untolerated_taint, matches_node_selector_and_affinity, node_taints,
};
use xkube_client::{Api, Client, Object, Patch, Store};

use crate::error::{Error, Result};
use crate::podcontrol::{self, BURST_REPLICAS, Claim, PodControl, ReleaseConflict};
use xkube_api::pod::{self as podutil, controller_of, is_available, is_terminal};
use xkube_client::runtime::{
    Controller, EventRecorder, Reconciler, Requeue, Seen, WARNING, WorkQueue, key_of, object_ref,
    split_key,
};

/// Label with the hash of the template a pod was made from.
pub const TEMPLATE_HASH_LABEL: &str = "controller-revision-hash";

use xkube_api::names::ALPHABET as HASH_CHARS;

/// `<ds>-<5 random characters>`, the prefix cut to 58 characters like Kubernetes'
/// `generateName`.
pub fn pod_name(ds: &str) -> String {
    xkube_api::names::generate(&format!("{ds}-"))
}

/// The pod selector of a DaemonSet; `None` when it is empty or invalid (it selects nothing).
pub fn ds_selector(ds: &DaemonSet) -> Option<LabelSelector> {
    let sel = &ds.spec.as_ref()?.selector;
    LabelSelector::from_meta(sel).ok().filter(|s| !s.is_empty())
}

fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Hash of the pod template, encoded like Kubernetes' revision hashes (FNV-32a of the
/// template, its decimal digits mapped onto `bcdfghjklmnpqrstvwxz2456789`).
pub fn template_hash(ds: &DaemonSet) -> String {
    let template = ds.spec.as_ref().map(|s| &s.template);
    // Serializing a k8s-openapi value cannot fail (no maps with non-string keys).
    let bytes = serde_json::to_vec(&template).unwrap_or_default();
    fnv32a(&bytes)
        .to_string()
        .bytes()
        .map(|b| HASH_CHARS[usize::from(b) % HASH_CHARS.len()] as char)
        .collect()
}

/// Whether `pod` was made from the template with hash `hash`.
pub fn is_updated(pod: &Pod, hash: &str) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(TEMPLATE_HASH_LABEL))
        .is_some_and(|h| h == hash)
}

fn toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Toleration::default()
    }
}

/// The tolerations of a daemon pod: the template's plus Kubernetes' daemon tolerations
/// (`AddOrUpdateDaemonPodTolerations`), without duplicates.
pub fn daemon_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut out = spec.tolerations.clone().unwrap_or_default();
    let mut extra = vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        extra.push(toleration(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    for t in extra {
        let same = |o: &Toleration| {
            o.key == t.key
                && o.operator.as_deref().unwrap_or("Equal") == "Exists"
                && o.effect == t.effect
        };
        match out.iter_mut().find(|o| same(o)) {
            Some(o) => *o = t,
            None => out.push(t),
        }
    }
    out
}

/// Whether a node matches the pod spec's `nodeName`, `nodeSelector` and required node
/// affinity.
pub fn node_matches(spec: &PodSpec, node: &Node) -> bool {
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty())
        && n != node.name()
    {
        return false;
    }
    matches_node_selector_and_affinity(spec, node)
}

/// Where a DaemonSet's pod belongs (Kubernetes' `NodeShouldRunDaemonPod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// A daemon pod should run on the node (created when missing).
    pub should_run: bool,
    /// A daemon pod already on the node may stay (it tolerates the NoExecute taints).
    pub should_continue: bool,
}

/// Whether the DaemonSet's pod should run (and may keep running) on `node`.
pub fn placement(ds: &DaemonSet, node: &Node) -> Placement {
    let none = Placement {
        should_run: false,
        should_continue: false,
    };
    let Some(spec) = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return none;
    };
    if !node_matches(spec, node) {
        return none;
    }
    let tols = daemon_tolerations(spec);
    let untolerated = |effects: &[&str]| {
        find_untolerated_taint(node_taints(node), &tols, |t| {
            effects.contains(&t.effect.as_str())
        })
        .is_some()
    };
    if untolerated(&["NoSchedule", "NoExecute"]) {
        return Placement {
            should_run: false,
            should_continue: !untolerated(&["NoExecute"]),
        };
    }
    Placement {
        should_run: true,
        should_continue: true,
    }
}

/// The pod the DaemonSet runs on `node`, bound to it through `spec.nodeName`.
pub fn pod_from_template(ds: &DaemonSet, node: &str, name: &str, hash: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut pod = podcontrol::pod_from_template(&template, ds, name);
    pod.metadata
        .labels
        .get_or_insert_default()
        .insert(TEMPLATE_HASH_LABEL.into(), hash.into());
    let spec = pod.spec.get_or_insert_default();
    spec.tolerations = Some(daemon_tolerations(spec));
    spec.node_name = Some(node.into());
    pod
}

/// Sorts pods out for `ds` (pure): its owned pods include terminating ones, but not
/// finished pods that are already being deleted.
pub fn claim_pods(ds: &DaemonSet, selector: &LabelSelector, pods: &[Arc<Pod>]) -> Claim {
    podcontrol::claim(
        ds,
        pods,
        |p| selector.matches(&p.metadata.labels.clone().unwrap_or_default()),
        |p| !(is_terminal(p) && podutil::is_terminating(p)),
    )
}

/// Owned pods by node name (`""` for pods without a node), each list oldest first.
pub fn pods_by_node(owned: &[Arc<Pod>]) -> BTreeMap<String, Vec<Arc<Pod>>> {
    let mut m: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
    for p in owned {
        m.entry(podutil::node_name(p).to_string())
            .or_default()
            .push(p.clone());
    }
    for pods in m.values_mut() {
        pods.sort_by(|a, b| {
            let t = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            t(a).cmp(&t(b)).then_with(|| a.name().cmp(b.name()))
        });
    }
    m
}

/// What one sync should change.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Nodes that need a daemon pod.
    pub create_on: Vec<String>,
    /// Pods to delete (surplus, misplaced, failed or on unknown nodes).
    pub delete: Vec<Arc<Pod>>,
    /// Failed pods among `delete` (reported as `FailedDaemonPod`).
    pub failed: Vec<Arc<Pod>>,
}

/// The creates and deletes that make the DaemonSet run exactly one pod per eligible node
/// (Kubernetes' `manage` without surge).
pub fn manage(
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    by_node: &BTreeMap<String, Vec<Arc<Pod>>>,
) -> Plan {
    let mut plan = Plan::default();
    for node in nodes {
        let pods = by_node
            .get(node.name())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let place = placement(ds, node);
        let exists = !pods.is_empty();
        if place.should_run && !exists {
            plan.create_on.push(node.name().to_string());
        } else if place.should_continue {
            let mut running = Vec::new();
            for p in pods.iter().filter(|p| !podutil::is_terminating(p)) {
                match podutil::phase(p) {
                    "Failed" => {
                        plan.failed.push(p.clone());
                        plan.delete.push(p.clone());
                    }
                    "Succeeded" => plan.delete.push(p.clone()),
                    _ => running.push(p.clone()),
                }
            }
            // Keep the oldest; the others are surplus.
            plan.delete.extend(running.into_iter().skip(1));
        } else {
            plan.delete
                .extend(pods.iter().filter(|p| !podutil::is_terminating(p)).cloned());
        }
    }
    // Pods on nodes that are gone, or on no node at all.
    for (node, pods) in by_node {
        if !nodes.iter().any(|n| n.name() == node) {
            plan.delete
                .extend(pods.iter().filter(|p| !podutil::is_terminating(p)).cloned());
        }
    }
    plan
}

fn min_ready_seconds(ds: &DaemonSet) -> i64 {
    ds.spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0)
        .into()
}

/// Whether the DaemonSet replaces pods of older templates itself (`RollingUpdate`).
pub fn rolls(ds: &DaemonSet) -> bool {
    ds.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

/// Nodes that should run the DaemonSet's pod.
pub fn desired_nodes(ds: &DaemonSet, nodes: &[Arc<Node>]) -> usize {
    nodes.iter().filter(|n| placement(ds, n).should_run).count()
}

/// `maxUnavailable` resolved against `desired` nodes (percentages round up); at least 1 when
/// anything is desired, as Kubernetes does without surge.
pub fn max_unavailable(ds: &DaemonSet, desired: usize) -> usize {
    let v = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.clone())
        .unwrap_or(IntOrString::Int(1));
    let n = match v {
        IntOrString::Int(n) => n.max(0) as usize,
        IntOrString::String(s) => xkube_api::validation::percent(&s)
            .map(|p| (p as usize * desired).div_ceil(100))
            .unwrap_or(1),
    };
    if desired > 0 && n == 0 { 1 } else { n }
}

/// Old-template pods to delete now so that at most `maxUnavailable` nodes lack an available
/// pod (Kubernetes' `rollingUpdate` without surge). Old pods that are not available are
/// always replaced.
pub fn rolling_update(
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    by_node: &BTreeMap<String, Vec<Arc<Pod>>>,
    hash: &str,
    now: jiff::Timestamp,
) -> Vec<Arc<Pod>> {
    let max = max_unavailable(ds, desired_nodes(ds, nodes));
    let min_ready = min_ready_seconds(ds);
    let mut unavailable = 0usize;
    let mut replace = Vec::new();
    let mut candidates = Vec::new();
    for pods in by_node.values() {
        let live: Vec<&Arc<Pod>> = pods
            .iter()
            .filter(|p| !podutil::is_terminating(p))
            .collect();
        let new: Vec<&&Arc<Pod>> = live.iter().filter(|p| is_updated(p, hash)).collect();
        let old: Vec<&&Arc<Pod>> = live.iter().filter(|p| !is_updated(p, hash)).collect();
        match (new.as_slice(), old.as_slice()) {
            // No pod, both kinds, or surplus: the manage pass handles it.
            ([], []) | ([_], [_]) => unavailable += 1,
            ([n], []) => {
                if !is_available(n, min_ready, now) {
                    unavailable += 1;
                }
            }
            ([], [o]) => {
                if !is_available(o, min_ready, now) {
                    replace.push((**o).clone());
                } else if unavailable < max {
                    candidates.push((**o).clone());
                }
            }
            _ => unavailable += 1,
        }
    }
    let room = max.saturating_sub(unavailable).min(candidates.len());
    replace.extend(candidates.into_iter().take(room));
    replace
}

/// The status a DaemonSet should show (Kubernetes' `updateDaemonSetStatus`);
/// `observed` says whether this sync acted on the current generation.
pub fn compute_status(
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    by_node: &BTreeMap<String, Vec<Arc<Pod>>>,
    hash: &str,
    now: jiff::Timestamp,
    observed: bool,
) -> DaemonSetStatus {
    let min_ready = min_ready_seconds(ds);
    let (mut desired, mut current, mut misscheduled) = (0, 0, 0);
    let (mut ready, mut available, mut updated) = (0, 0, 0);
    for node in nodes {
        let pods = by_node
            .get(node.name())
            .map(Vec::as_slice)
            .unwrap_or_default();
        if placement(ds, node).should_run {
            desired += 1;
            let Some(pod) = pods.first() else {
                continue;
            };
            current += 1;
            if podutil::is_ready(pod) {
                ready += 1;
                if is_available(pod, min_ready, now) {
                    available += 1;
                }
            }
            if is_updated(pod, hash) {
                updated += 1;
            }
        } else if !pods.is_empty() {
            misscheduled += 1;
        }
    }
    let prev = ds.status.clone().unwrap_or_default();
    DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: current,
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_available: Some(available),
        number_unavailable: Some(desired - available),
        updated_number_scheduled: Some(updated),
        observed_generation: if observed {
            ds.metadata.generation.or(prev.observed_generation)
        } else {
            prev.observed_generation
        },
        collision_count: prev.collision_count,
        conditions: prev.conditions,
    }
}

/// What a node change can change for DaemonSets: its labels and taints.
fn node_fingerprint(node: &Node) -> u64 {
    let mut h = DefaultHasher::new();
    node.metadata.labels.hash(&mut h);
    for t in node_taints(node) {
        (&t.key, &t.value, &t.effect).hash(&mut h);
    }
    h.finish()
}

/// The DaemonSet controller.
#[derive(Clone)]
pub struct DaemonSetController {
    client: Client,
    daemonsets: Store<DaemonSet>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    recorder: EventRecorder,
    pod_control: PodControl,
    queue: WorkQueue<String>,
}

impl DaemonSetController {
    /// A controller over these caches.
    pub fn new(
        client: Client,
        daemonsets: Store<DaemonSet>,
        pods: Store<Pod>,
        nodes: Store<Node>,
        recorder: EventRecorder,
    ) -> Self {
        let recorder = recorder.with_component("daemonset-controller");
        DaemonSetController {
            pod_control: PodControl::new(client.clone(), recorder.clone()),
            client,
            daemonsets,
            pods,
            nodes,
            recorder,
            queue: WorkQueue::new(),
        }
    }

    /// Watches the caches and runs `workers` reconcilers until `shutdown`.
    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        let all = {
            let q = self.queue.clone();
            let dss = self.daemonsets.clone();
            move || dss.list().iter().for_each(|ds| q.add(key_of(&**ds)))
        };
        let dss = self.daemonsets.clone();
        let every = all.clone();
        let nodes = self.nodes.clone();
        let mut seen: HashMap<String, u64> = HashMap::new();
        Controller::new("daemonset", self.clone(), self.queue.clone(), &shutdown)
            .owns(&self.daemonsets, Duration::from_secs(30), |_| true)
            .watches(&self.pods, move |s, q| match s {
                Seen::Object(pod) => match controller_of(pod.metadata.owner_references.as_ref()) {
                    Some(r) if r.kind == "DaemonSet" => {
                        q.add(format!("{}/{}", pod.namespace(), r.name))
                    }
                    Some(_) => {}
                    // An orphan: any DaemonSet that might adopt it.
                    None => {
                        let labels = pod.metadata.labels.clone().unwrap_or_default();
                        for ds in dss.filter(|ds| {
                            ds.namespace() == pod.namespace()
                                && ds_selector(ds).is_some_and(|s| s.matches(&labels))
                        }) {
                            q.add(key_of(&*ds));
                        }
                    }
                },
                Seen::All => every(),
            })
            // Heartbeats change nodes all the time; only labels, taints, arrivals and departures
            // matter here.
            .watches(&self.nodes, move |s, _| match s {
                Seen::Object(node) => {
                    let name = node.name().to_string();
                    let now = nodes.get("", &name).map(|n| node_fingerprint(&n));
                    let changed = match now {
                        Some(f) => seen.insert(name, f) != Some(f),
                        None => seen.remove(&name).is_some(),
                    };
                    if changed {
                        all();
                    }
                }
                Seen::All => {
                    seen = nodes
                        .list()
                        .iter()
                        .map(|n| (n.name().to_string(), node_fingerprint(n)))
                        .collect();
                    all();
                }
            })
            .run(workers)
            .await;
    }

    async fn update_status(&self, ds: &DaemonSet, status: DaemonSetStatus) -> Result<()> {
        if ds.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), ds.namespace());
        let body = serde_json::to_value(&status).map_err(|source| Error::Encode {
            what: "daemon set status",
            source,
        })?;
        match api
            .patch_status(ds.name(), &Patch::Merge(json!({"status": body})))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Error::api(format!(
                "update status of daemonset {}",
                key_of(ds)
            ))(e)),
        }
    }
}

impl Reconciler for DaemonSetController {
    type Error = Error;

    /// Brings one DaemonSet to its desired state.
    #[tracing::instrument(skip(self), fields(controller = "daemonset"))]
    async fn reconcile(&self, key: &str) -> Result<Requeue> {
        let (ns, name) = split_key(key);
        let Some(ds) = self.daemonsets.get(ns, name) else {
            self.pod_control.expectations.forget(key);
            return Ok(None);
        };
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let Some(selector) = ds_selector(&ds) else {
            tracing::warn!(
                daemonset = key,
                "empty or invalid selector: selects no pods"
            );
            return Ok(None);
        };
        let hash = template_hash(&ds);
        let pods = self.pods.filter(|p| p.namespace() == ns);
        let claim = claim_pods(&ds, &selector, &pods);
        let owned = self
            .pod_control
            .adopt_and_release(&*ds, &claim, ReleaseConflict::Skip)
            .await?;
        let nodes = self.nodes.list();
        let by_node = pods_by_node(&owned);

        let mut requeue = None;
        let mut synced = Ok(());
        let observed = self.pod_control.expectations.satisfied(key, &self.pods);
        if observed {
            let mut plan = manage(&ds, &nodes, &by_node);
            for p in &plan.failed {
                self.recorder
                    .record(
                        &object_ref(&*ds),
                        WARNING,
                        "FailedDaemonPod",
                        &format!(
                            "Found failed daemon pod {ns}/{} on node {}, will try to kill it",
                            p.name(),
                            podutil::node_name(p)
                        ),
                    )
                    .await;
            }
            if plan.create_on.is_empty() && plan.delete.is_empty() && rolls(&ds) {
                plan.delete = rolling_update(&ds, &nodes, &by_node, &hash, jiff::Timestamp::now());
            }
            if plan.create_on.len() > BURST_REPLICAS {
                plan.create_on.truncate(BURST_REPLICAS);
                requeue = Some(Duration::from_millis(100));
            }
            let pods: Vec<Pod> = plan
                .create_on
                .iter()
                .map(|n| pod_from_template(&ds, n, &pod_name(ds.name()), &hash))
                .collect();
            let created = self.pod_control.create(key, &*ds, &pods).await;
            let deleted = self.pod_control.delete(key, &*ds, &plan.delete).await;
            synced = created.and(deleted);
        }
        // The status describes the cache as this sync found it; the pod events of its own
        // creates and deletes queue the next sync, which counts them.
        let status = compute_status(
            &ds,
            &nodes,
            &by_node,
            &hash,
            jiff::Timestamp::now(),
            observed,
        );
        let min_ready = min_ready_seconds(&ds);
        if min_ready > 0 && status.number_ready != status.number_available.unwrap_or(0) {
            requeue = requeue.or(Some(Duration::from_secs(min_ready as u64)));
        }
        self.update_status(&ds, status).await?;
        synced?;
        Ok(requeue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::merge;
    use serde_json::Value;

    fn ds(extra: Value) -> DaemonSet {
        let mut v = json!({
            "metadata": {"name": "agent", "namespace": "default", "uid": "ds-uid", "generation": 2},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "updateStrategy": {"type": "RollingUpdate",
                                        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
                     "template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"containers": [{"name": "c", "image": "agent:1"}]}}}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).expect("daemonset literal")
    }

    fn node(name: &str, extra: Value) -> Arc<Node> {
        let mut v = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
        merge(&mut v, extra);
        Arc::new(serde_json::from_value(v).expect("node literal"))
    }

    fn pod(name: &str, node: &str, hash: &str, extra: Value) -> Arc<Pod> {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"app": "agent", TEMPLATE_HASH_LABEL: hash},
                         "creationTimestamp": "2024-01-01T00:00:00Z",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                                              "name": "agent", "uid": "ds-uid", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "agent:1"}], "nodeName": node},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        });
        merge(&mut v, extra);
        Arc::new(serde_json::from_value(v).expect("pod literal"))
    }

    fn names(v: &[Arc<Pod>]) -> Vec<String> {
        v.iter().map(|p| p.name().to_string()).collect()
    }

    #[test]
    fn names_are_ds_dash_five_lowercase_alphanumerics_with_a_bounded_prefix() {
        let n = pod_name("agent");
        let suffix = n.strip_prefix("agent-").expect("prefix");
        assert_eq!(suffix.len(), 5);
        assert!(
            suffix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_eq!(pod_name(&"x".repeat(100)).len(), 63);
    }

    #[test]
    fn template_hash_is_stable_and_follows_the_template() {
        let a = ds(json!({}));
        let h = template_hash(&a);
        assert_eq!(h, template_hash(&a.clone()));
        assert!(h.chars().all(|c| HASH_CHARS.contains(&(c as u8))), "{h}");
        let b = ds(
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "agent:2"}]}}}}),
        );
        assert_ne!(h, template_hash(&b));
        let relabelled =
            ds(json!({"metadata": {"labels": {"x": "y"}}, "spec": {"minReadySeconds": 5}}));
        assert_eq!(h, template_hash(&relabelled), "only the template counts");
    }

    #[test]
    fn placement_honours_node_selector_affinity_and_taints() {
        let plain = ds(json!({}));
        let run = |d: &DaemonSet, n: &Node| placement(d, n);
        assert!(run(&plain, &node("a", json!({}))).should_run);

        let selective =
            ds(json!({"spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}}}}}));
        assert!(!run(&selective, &node("a", json!({}))).should_run);
        assert!(
            run(
                &selective,
                &node("a", json!({"metadata": {"labels": {"disk": "ssd"}}}))
            )
            .should_run
        );

        let affine = ds(
            json!({"spec": {"template": {"spec": {"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}}}}}}}),
        );
        assert!(
            run(
                &affine,
                &node("a", json!({"metadata": {"labels": {"zone": "z1"}}}))
            )
            .should_run
        );
        assert!(run(&affine, &node("b", json!({}))).should_run);
        assert!(!run(&affine, &node("c", json!({}))).should_run);

        let no_schedule = node(
            "t",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
        );
        let no_execute = node(
            "t",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoExecute"}]}}),
        );
        assert_eq!(
            run(&plain, &no_schedule),
            Placement {
                should_run: false,
                should_continue: true
            },
            "an existing pod stays on a NoSchedule node"
        );
        assert_eq!(
            run(&plain, &no_execute),
            Placement {
                should_run: false,
                should_continue: false
            }
        );
        let equal = ds(json!({"spec": {"template": {"spec": {"tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "db"}]}}}}));
        assert!(run(&equal, &no_execute).should_run);
        let wrong_value = ds(json!({"spec": {"template": {"spec": {"tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "web"}]}}}}));
        assert!(!run(&wrong_value, &no_schedule).should_run);
        let exists_all =
            ds(json!({"spec": {"template": {"spec": {"tolerations": [{"operator": "Exists"}]}}}}));
        assert!(run(&exists_all, &no_execute).should_run);
        let wrong_effect = ds(json!({"spec": {"template": {"spec": {"tolerations": [
            {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}}}}));
        assert!(run(&wrong_effect, &no_schedule).should_run);
        assert!(!run(&wrong_effect, &no_execute).should_continue);

        // Daemon pods tolerate cordoned, not-ready and unreachable nodes.
        for (key, effect) in [
            ("node.kubernetes.io/unschedulable", "NoSchedule"),
            ("node.kubernetes.io/not-ready", "NoExecute"),
            ("node.kubernetes.io/unreachable", "NoExecute"),
        ] {
            let n = node(
                "x",
                json!({"spec": {"unschedulable": true,
                "taints": [{"key": key, "effect": effect}]}}),
            );
            assert!(run(&plain, &n).should_run, "{key}");
        }
    }

    #[test]
    fn daemon_pods_are_bound_labelled_owned_and_tolerant() {
        let d = ds(json!({"spec": {"template": {"spec": {"tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}}}}));
        let p = pod_from_template(&d, "n1", "agent-abcde", "hash1");
        assert_eq!(podutil::node_name(&p), "n1");
        let labels = p.metadata.labels.clone().expect("labels");
        assert_eq!(labels.get("app").map(String::as_str), Some("agent"));
        assert_eq!(
            labels.get(TEMPLATE_HASH_LABEL).map(String::as_str),
            Some("hash1")
        );
        let r = controller_of(p.metadata.owner_references.as_ref()).expect("controller ref");
        assert_eq!(
            (r.api_version.as_str(), r.kind.as_str(), r.uid.as_str()),
            ("apps/v1", "DaemonSet", "ds-uid")
        );
        let tols = p
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .expect("tolerations");
        let not_ready: Vec<&Toleration> = tols
            .iter()
            .filter(|t| t.key.as_deref() == Some("node.kubernetes.io/not-ready"))
            .collect();
        assert_eq!(not_ready.len(), 1, "replaced, not duplicated");
        assert_eq!(not_ready[0].toleration_seconds, None, "tolerated forever");
        assert!(
            tols.iter()
                .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unschedulable"))
        );
    }

    #[test]
    fn manage_creates_missing_deletes_surplus_misplaced_failed_and_orphaned() {
        let d = ds(json!({"spec": {"template": {"spec": {"nodeSelector": {"role": "edge"}}}}}));
        let edge = json!({"metadata": {"labels": {"role": "edge"}}});
        let nodes = vec![
            node("empty", edge.clone()),
            node("double", edge.clone()),
            node("failed", edge.clone()),
            node("leaving", edge.clone()),
            node("plain", json!({})),
        ];
        let owned = vec![
            pod("d-old", "double", "h", json!({})),
            pod(
                "d-new",
                "double",
                "h",
                json!({"metadata": {"creationTimestamp": "2024-02-01T00:00:00Z"}}),
            ),
            pod("f", "failed", "h", json!({"status": {"phase": "Failed"}})),
            pod(
                "l",
                "leaving",
                "h",
                json!({"metadata": {"deletionTimestamp": "2024-02-01T00:00:00Z"}}),
            ),
            pod("misplaced", "plain", "h", json!({})),
            pod("gone", "deleted-node", "h", json!({})),
            pod("unbound", "", "h", json!({"spec": {"nodeName": null}})),
        ];
        let plan = manage(&d, &nodes, &pods_by_node(&owned));
        assert_eq!(
            plan.create_on,
            ["empty"],
            "a node with a terminating pod waits for it"
        );
        let mut deleted = names(&plan.delete);
        deleted.sort();
        assert_eq!(deleted, ["d-new", "f", "gone", "misplaced", "unbound"]);
        assert_eq!(names(&plan.failed), ["f"]);
    }

    #[test]
    fn rolling_update_replaces_at_most_max_unavailable_nodes() {
        let d = ds(json!({}));
        let hash = template_hash(&d);
        let nodes: Vec<Arc<Node>> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| node(n, json!({})))
            .collect();
        let now = jiff::Timestamp::now();
        let old: Vec<Arc<Pod>> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| pod(&format!("p-{n}"), n, "old", json!({})))
            .collect();
        let victims = rolling_update(&d, &nodes, &pods_by_node(&old), &hash, now);
        assert_eq!(victims.len(), 1, "maxUnavailable 1");

        // One node is already being replaced: nothing more until it is available.
        let mut mid = old[1..].to_vec();
        mid.push(pod(
            "p-a2",
            "a",
            &hash,
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        ));
        assert!(rolling_update(&d, &nodes, &pods_by_node(&mid), &hash, now).is_empty());
        // An unavailable old pod is replaced regardless.
        mid[0] = pod(
            "p-b",
            "b",
            "old",
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        );
        assert_eq!(
            names(&rolling_update(&d, &nodes, &pods_by_node(&mid), &hash, now)),
            ["p-b"]
        );

        let half =
            ds(json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": "50%"}}}}));
        assert_eq!(max_unavailable(&half, 3), 2, "percentages round up");
        let victims = rolling_update(
            &half,
            &nodes,
            &pods_by_node(&old),
            &template_hash(&half),
            now,
        );
        assert_eq!(victims.len(), 2);

        let updated: Vec<Arc<Pod>> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| pod(&format!("p-{n}"), n, &hash, json!({})))
            .collect();
        assert!(rolling_update(&d, &nodes, &pods_by_node(&updated), &hash, now).is_empty());
        assert!(!rolls(&ds(
            json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}})
        )));
    }

    #[test]
    fn status_counts_desired_current_ready_updated_and_misscheduled() {
        let d = ds(json!({"spec": {"template": {"spec": {"nodeSelector": {"role": "edge"}}}}}));
        let hash = template_hash(&d);
        let edge = json!({"metadata": {"labels": {"role": "edge"}}});
        let nodes = vec![
            node("a", edge.clone()),
            node("b", edge.clone()),
            node("c", edge),
            node("plain", json!({})),
        ];
        let owned = vec![
            pod("pa", "a", &hash, json!({})),
            pod(
                "pb",
                "b",
                "old",
                json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
            pod("px", "plain", &hash, json!({})),
        ];
        let s = compute_status(
            &d,
            &nodes,
            &pods_by_node(&owned),
            &hash,
            jiff::Timestamp::now(),
            true,
        );
        assert_eq!(
            (
                s.desired_number_scheduled,
                s.current_number_scheduled,
                s.number_ready
            ),
            (3, 2, 1)
        );
        assert_eq!(s.number_available, Some(1));
        assert_eq!(s.number_unavailable, Some(2));
        assert_eq!(s.updated_number_scheduled, Some(1));
        assert_eq!(s.number_misscheduled, 1);
        assert_eq!(s.observed_generation, Some(2));
        let s = compute_status(
            &d,
            &nodes,
            &pods_by_node(&owned),
            &hash,
            jiff::Timestamp::now(),
            false,
        );
        assert_eq!(
            s.observed_generation, None,
            "not observed while expectations are pending"
        );
    }

    #[test]
    fn claims_owned_adopts_orphans_and_releases_relabelled_pods() {
        let d = ds(json!({}));
        let sel = ds_selector(&d).expect("selector");
        let pods = vec![
            pod("owned", "a", "h", json!({})),
            pod(
                "orphan",
                "a",
                "h",
                json!({"metadata": {"ownerReferences": null}}),
            ),
            pod(
                "relabelled",
                "a",
                "h",
                json!({"metadata": {"labels": {"app": "other"}}}),
            ),
            pod(
                "done",
                "a",
                "h",
                json!({"status": {"phase": "Succeeded"},
                "metadata": {"deletionTimestamp": "2024-02-01T00:00:00Z"}}),
            ),
            pod(
                "foreign",
                "a",
                "h",
                json!({"metadata": {"ownerReferences": [{"apiVersion": "v1",
                "kind": "ReplicationController", "name": "x", "uid": "other", "controller": true}]}}),
            ),
        ];
        let c = claim_pods(&d, &sel, &pods);
        assert_eq!(names(&c.owned), ["owned"]);
        assert_eq!(names(&c.adopt), ["orphan"]);
        assert_eq!(names(&c.release), ["relabelled"]);
        let empty = ds(json!({"spec": {"selector": {"matchLabels": null}}}));
        assert!(
            ds_selector(&empty).is_none(),
            "an empty selector selects nothing"
        );
    }
}
