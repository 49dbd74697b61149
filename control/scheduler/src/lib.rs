//! The xkube scheduler: watches unscheduled pods and nodes through the API, filters nodes
//! with [`predicates`], ranks them with [`priorities`], and binds pods through
//! `pods/{name}/binding`, emitting `Scheduled` and `FailedScheduling` events.
//!
//! Pods it has just bound are *assumed* on their node until the cache shows the binding, so
//! consecutive decisions never double-book a node. Pods that fit nowhere wait in an
//! unschedulable set and are retried when nodes change, when a bound pod goes away, and
//! periodically.

pub mod predicates;
pub mod priorities;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Node, Pod, ReplicationController, Service};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use xkube_api::pod as podutil;
use xkube_client::{Api, Client, Object, Patch, Store};

use crate::predicates::{Failure, NodeInfo, PredicateContext};
use xkube_client::runtime::{
    EventRecorder, NORMAL, Seen, WARNING, WorkQueue, key_of, object_ref, on_change, reflect,
    split_key,
};

/// Errors of the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid flags.
    #[error("{0}")]
    Config(String),
}

/// Result of the scheduler.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn parse_label_priority(s: &str) -> std::result::Result<(String, bool), String> {
    match s.split_once('=') {
        None => Ok((s.to_string(), true)),
        Some((l, p)) => p.parse::<bool>().map(|b| (l.to_string(), b)).map_err(|_| {
            format!("invalid --node-label-priority {s:?}: want label or label=true|false")
        }),
    }
}

/// Flags of `xkube scheduler`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Where the apiserver is.
    #[command(flatten)]
    pub connection: xkube_client::ConnectionFlags,
    /// Pods whose `spec.schedulerName` is this are ours.
    #[arg(long, default_value = "default-scheduler")]
    pub scheduler_name: String,
    /// CheckNodeLabelPresence: labels a node must have (repeatable / comma separated).
    #[arg(long, value_delimiter = ',')]
    pub node_labels_present: Vec<String>,
    /// CheckNodeLabelPresence: labels a node must not have.
    #[arg(long, value_delimiter = ',')]
    pub node_labels_absent: Vec<String>,
    /// CheckServiceAffinity: labels (e.g. `zone`) on which pods of one service stay together.
    #[arg(long, value_delimiter = ',')]
    pub service_affinity_labels: Vec<String>,
    /// CalculateNodeLabelPriority: `label` (prefer nodes with it) or `label=false` (prefer
    /// nodes without it).
    #[arg(long, value_parser = parse_label_priority)]
    pub node_label_priority: Vec<(String, bool)>,
    /// Bindings in flight at once.
    #[arg(long, default_value_t = 16)]
    pub bind_concurrency: usize,
    /// How often unschedulable pods are retried even when nothing changed.
    #[arg(long, default_value = "30s", value_parser = xkube_api::duration::parse)]
    pub unschedulable_retry_period: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connection: xkube_client::ConnectionFlags::default(),
            scheduler_name: "default-scheduler".into(),
            node_labels_present: Vec::new(),
            node_labels_absent: Vec::new(),
            service_affinity_labels: Vec::new(),
            node_label_priority: Vec::new(),
            bind_concurrency: 16,
            unschedulable_retry_period: Duration::from_secs(30),
        }
    }
}

#[derive(Default)]
struct Queues {
    unschedulable: HashSet<String>,
    assumed: HashMap<String, (String, Arc<Pod>)>,
    node_fingerprints: HashMap<String, String>,
}

/// The scheduler.
#[derive(Clone)]
pub struct Scheduler {
    opts: Arc<Options>,
    client: Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    services: Store<Service>,
    rcs: Store<ReplicationController>,
    replica_sets: Store<ReplicaSet>,
    recorder: EventRecorder,
    active: WorkQueue<String>,
    q: Arc<Mutex<Queues>>,
    bind_slots: Arc<Semaphore>,
    round_robin: Arc<AtomicUsize>,
}

/// Scheduling-relevant fields of a node: a change re-queues unschedulable pods.
fn fingerprint(n: &Node) -> String {
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    json!({
        "labels": n.metadata.labels,
        "alloc": n.status.as_ref().and_then(|s| s.allocatable.clone().or(s.capacity.clone())),
        "taints": n.spec.as_ref().and_then(|s| s.taints.clone()),
        "unsched": n.spec.as_ref().and_then(|s| s.unschedulable),
        "ready": ready,
    })
    .to_string()
}

/// What one scheduling attempt decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Bind to this node.
    Node(String),
    /// Nowhere fits; the FailedScheduling message.
    Unschedulable(String),
}

impl Scheduler {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn responsible(&self, pod: &Pod) -> bool {
        let name = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("default-scheduler");
        name == self.opts.scheduler_name
            && podutil::node_name(pod).is_empty()
            && podutil::is_active(pod)
    }

    fn flush_unschedulable(&self) {
        let keys: Vec<String> = self.lock().unschedulable.drain().collect();
        for k in keys {
            self.active.add(k);
        }
    }

    fn on_pod(&self, seen: Seen<Pod>) {
        match seen {
            Seen::Object(pod) => {
                let key = key_of(&*pod);
                let current = self.pods.get(pod.namespace(), pod.name());
                match current {
                    None => {
                        let mut q = self.lock();
                        q.unschedulable.remove(&key);
                        q.assumed.remove(&key);
                        drop(q);
                        if !podutil::node_name(&pod).is_empty() {
                            // Resources were freed.
                            self.flush_unschedulable();
                        }
                    }
                    Some(cur)
                        if !podutil::node_name(&cur).is_empty() || !podutil::is_active(&cur) =>
                    {
                        let mut q = self.lock();
                        q.unschedulable.remove(&key);
                        let was_assumed = q.assumed.remove(&key).is_some();
                        drop(q);
                        if !was_assumed
                            && !podutil::is_active(&cur)
                            && !podutil::node_name(&cur).is_empty()
                        {
                            self.flush_unschedulable();
                        }
                    }
                    Some(cur) if self.responsible(&cur) => {
                        let q = self.lock();
                        let waiting =
                            q.unschedulable.contains(&key) || q.assumed.contains_key(&key);
                        drop(q);
                        if !waiting {
                            self.active.add(key);
                        }
                    }
                    Some(_) => {}
                }
            }
            Seen::All => {
                let pending = self.pods.filter(|p| self.responsible(p));
                let q = self.lock();
                let keys: Vec<String> = pending
                    .iter()
                    .map(|p| key_of(&**p))
                    .filter(|k| !q.unschedulable.contains(k) && !q.assumed.contains_key(k))
                    .collect();
                drop(q);
                keys.into_iter().for_each(|k| self.active.add(k));
            }
        }
    }

    fn on_node(&self, seen: Seen<Node>) {
        let changed = match seen {
            Seen::Object(n) => {
                let fp = self.nodes.get("", n.name()).map(|cur| fingerprint(&cur));
                let mut q = self.lock();
                match fp {
                    Some(fp) => {
                        q.node_fingerprints
                            .insert(n.name().to_string(), fp.clone())
                            .as_ref()
                            != Some(&fp)
                    }
                    None => q.node_fingerprints.remove(n.name()).is_some(),
                }
            }
            Seen::All => true,
        };
        if changed {
            self.flush_unschedulable();
        }
    }

    /// Snapshot of every node with the pods bound or assumed to it.
    pub fn snapshot(&self) -> Vec<NodeInfo> {
        let mut infos: BTreeMap<String, NodeInfo> = self
            .nodes
            .list()
            .into_iter()
            .map(|n| (n.name().to_string(), NodeInfo::new(n)))
            .collect();
        let assumed: Vec<(String, Arc<Pod>)> = self.lock().assumed.values().cloned().collect();
        for p in self
            .pods
            .filter(|p| !podutil::node_name(p).is_empty() && !podutil::is_terminal(p))
        {
            if let Some(info) = infos.get_mut(podutil::node_name(&p)) {
                info.add_pod(p);
            }
        }
        for (node, p) in assumed {
            if let Some(info) = infos.get_mut(&node) {
                info.add_pod(p);
            }
        }
        infos.into_values().collect()
    }

    fn peer_selectors(&self, pod: &Pod) -> Vec<BTreeMap<String, String>> {
        let labels = pod.metadata.labels.as_ref();
        let mut out: Vec<BTreeMap<String, String>> = self
            .services
            .filter(|s| s.namespace() == pod.namespace())
            .iter()
            .filter_map(|s| s.spec.as_ref().and_then(|s| s.selector.clone()))
            .filter(|sel| podutil::selector_matches(sel, labels))
            .collect();
        out.extend(
            self.rcs
                .filter(|r| r.namespace() == pod.namespace())
                .iter()
                .map(|rc| xkube_api::pod::rc_selector(rc))
                .filter(|sel| podutil::selector_matches(sel, labels)),
        );
        // ReplicaSets (and so Deployments) by their matchLabels; a selector with
        // matchExpressions does not take part in spreading.
        out.extend(
            self.replica_sets
                .filter(|r| r.namespace() == pod.namespace())
                .iter()
                .filter_map(|rs| rs.spec.as_ref())
                .filter(|s| {
                    s.selector
                        .match_expressions
                        .as_ref()
                        .is_none_or(|e| e.is_empty())
                })
                .filter_map(|s| s.selector.match_labels.clone())
                .filter(|sel| podutil::selector_matches(sel, labels)),
        );
        out
    }

    fn predicate_context(&self, pod: &Pod) -> PredicateContext {
        let mut ctx = PredicateContext {
            labels_present: self.opts.node_labels_present.clone(),
            labels_absent: self.opts.node_labels_absent.clone(),
            service_affinity: BTreeMap::new(),
        };
        if !self.opts.service_affinity_labels.is_empty() {
            let labels = pod.metadata.labels.as_ref();
            let svc_selectors: Vec<BTreeMap<String, String>> = self
                .services
                .filter(|s| s.namespace() == pod.namespace())
                .iter()
                .filter_map(|s| s.spec.as_ref().and_then(|s| s.selector.clone()))
                .filter(|sel| podutil::selector_matches(sel, labels))
                .collect();
            let mut peers = self.pods.filter(|p| {
                p.namespace() == pod.namespace()
                    && p.name() != pod.name()
                    && !podutil::node_name(p).is_empty()
                    && svc_selectors
                        .iter()
                        .any(|s| podutil::selector_matches(s, p.metadata.labels.as_ref()))
            });
            peers.sort_by(|a, b| a.name().cmp(b.name()));
            ctx.service_affinity = predicates::service_affinity_constraints(
                pod,
                &self.opts.service_affinity_labels,
                &peers,
                |n| {
                    self.nodes
                        .get("", n)
                        .and_then(|n| n.metadata.labels.clone())
                },
            );
        }
        ctx
    }

    /// Filters and ranks `nodes` for `pod` (no I/O).
    pub fn decide(&self, pod: &Pod, nodes: &[NodeInfo]) -> Decision {
        let ctx = self.predicate_context(pod);
        let mut failures: Vec<Vec<Failure>> = Vec::new();
        let mut feasible: Vec<&NodeInfo> = Vec::new();
        for info in nodes {
            let f = predicates::check(pod, info, &ctx);
            if f.is_empty() {
                feasible.push(info);
            } else {
                failures.push(f);
            }
        }
        if feasible.is_empty() {
            return Decision::Unschedulable(predicates::failure_message(nodes.len(), &failures));
        }
        let selectors = self.peer_selectors(pod);
        let counts: Vec<i64> = feasible
            .iter()
            .map(|i| priorities::matching_pods(pod, i, &selectors))
            .collect();
        let spread = priorities::spread_scores(&counts);
        let scores: Vec<i64> = feasible
            .iter()
            .zip(&spread)
            .map(|(info, s)| {
                let mut total = priorities::least_requested(pod, info)
                    + priorities::balanced_allocation(pod, info)
                    + s;
                for (label, presence) in &self.opts.node_label_priority {
                    total += priorities::node_label(info, label, *presence);
                }
                total
            })
            .collect();
        let best = scores.iter().copied().max().unwrap_or(0);
        let top: Vec<&&NodeInfo> = feasible
            .iter()
            .zip(&scores)
            .filter(|(_, s)| **s == best)
            .map(|(i, _)| i)
            .collect();
        let pick = self.round_robin.fetch_add(1, Ordering::Relaxed) % top.len().max(1);
        Decision::Node(top[pick].name().to_string())
    }

    #[tracing::instrument(skip(self), fields(component = "scheduler"))]
    async fn schedule_one(&self, key: &str) {
        let (ns, name) = split_key(key);
        let Some(pod) = self.pods.get(ns, name) else {
            return;
        };
        if !self.responsible(&pod) || self.lock().assumed.contains_key(key) {
            return;
        }
        let nodes = self.snapshot();
        match self.decide(&pod, &nodes) {
            Decision::Node(node) => {
                self.lock()
                    .assumed
                    .insert(key.to_string(), (node.clone(), pod.clone()));
                let me = self.clone();
                let key = key.to_string();
                let permit = self.bind_slots.clone().acquire_owned().await;
                tokio::spawn(async move {
                    let _permit = permit;
                    me.bind(&key, &pod, &node).await;
                });
            }
            Decision::Unschedulable(message) => {
                tracing::info!(pod = key, %message, "unschedulable");
                self.lock().unschedulable.insert(key.to_string());
                self.recorder
                    .record(&object_ref(&*pod), WARNING, "FailedScheduling", &message)
                    .await;
                self.set_unschedulable_condition(&pod, &message).await;
            }
        }
    }

    async fn bind(&self, key: &str, pod: &Pod, node: &str) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), pod.namespace());
        match api.bind(pod.name(), node).await {
            Ok(()) => {
                tracing::debug!(pod = key, node, "bound");
                let msg = format!("Successfully assigned {key} to {node}");
                self.recorder
                    .record(&object_ref(pod), NORMAL, "Scheduled", &msg)
                    .await;
            }
            Err(e) => {
                self.lock().assumed.remove(key);
                if e.is_not_found() || e.is_conflict() {
                    // Deleted, or bound by someone else: the watch tells the rest.
                    tracing::debug!(pod = key, error = %e, "binding not needed any more");
                    return;
                }
                tracing::warn!(pod = key, node, error = %e, "binding failed");
                self.recorder
                    .record(
                        &object_ref(pod),
                        WARNING,
                        "FailedScheduling",
                        &format!("Binding rejected: {e}"),
                    )
                    .await;
                self.active.add_rate_limited(key.to_string());
            }
        }
    }

    async fn set_unschedulable_condition(&self, pod: &Pod, message: &str) {
        let conds = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        if conds.iter().any(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.message.as_deref() == Some(message)
        }) {
            return;
        }
        let mut conds: Vec<_> = conds
            .into_iter()
            .filter(|c| c.type_ != "PodScheduled")
            .collect();
        conds.push(k8s_openapi::api::core::v1::PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some(message.into()),
            last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::now(),
            )),
            ..Default::default()
        });
        let api: Api<Pod> = Api::namespaced(self.client.clone(), pod.namespace());
        if let Err(e) = api
            .patch_status(
                pod.name(),
                &Patch::Merge(json!({"status": {"conditions": conds}})),
            )
            .await
        {
            tracing::debug!(pod = pod.name(), error = %e, "could not set PodScheduled=False");
        }
    }
}

/// Runs the scheduler until `shutdown`.
pub async fn run(opts: Options, client: Client, shutdown: CancellationToken) -> Result<()> {
    if opts.bind_concurrency == 0 {
        return Err(Error::Config(
            "--bind-concurrency must be at least 1".into(),
        ));
    }
    let s = Scheduler {
        bind_slots: Arc::new(Semaphore::new(opts.bind_concurrency)),
        opts: Arc::new(opts),
        pods: reflect::<Pod>(&client, &shutdown),
        nodes: reflect::<Node>(&client, &shutdown),
        services: reflect::<Service>(&client, &shutdown),
        rcs: reflect::<ReplicationController>(&client, &shutdown),
        replica_sets: reflect::<ReplicaSet>(&client, &shutdown),
        recorder: EventRecorder::new(client.clone(), "default-scheduler"),
        client,
        active: WorkQueue::new(),
        q: Arc::new(Mutex::new(Queues::default())),
        round_robin: Arc::new(AtomicUsize::new(0)),
    };
    let me = s.clone();
    on_change(&s.pods, &shutdown, None, move |seen| me.on_pod(seen));
    let me = s.clone();
    on_change(&s.nodes, &shutdown, None, move |seen| me.on_node(seen));
    s.pods.wait_ready().await;
    s.nodes.wait_ready().await;
    s.services.wait_ready().await;
    s.rcs.wait_ready().await;
    s.replica_sets.wait_ready().await;
    tracing::info!(name = %s.opts.scheduler_name, "scheduler running");
    let mut retry = tokio::time::interval(s.opts.unschedulable_retry_period);
    retry.tick().await;
    loop {
        let key = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = retry.tick() => { s.flush_unschedulable(); continue; }
            k = s.active.get() => match k { Some(k) => k, None => break },
        };
        s.schedule_one(&key).await;
        s.active.done(&key);
    }
    s.active.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        opts: Options,
    }

    use xkube_client::{Config, Writer};

    fn scheduler(nodes: Vec<Node>, pods: Vec<Pod>, services: Vec<Service>) -> Scheduler {
        fn store<K: Object>(items: Vec<K>) -> Store<K> {
            let mut w = Writer::new();
            w.relist(items);
            w.store()
        }
        let client = Client::new(&Config::new("http://127.0.0.1:9")).expect("client");
        Scheduler {
            opts: Arc::new(Options::default()),
            recorder: EventRecorder::new(client.clone(), "test"),
            client,
            pods: store(pods),
            nodes: store(nodes),
            services: store(services),
            rcs: store(Vec::new()),
            replica_sets: store(Vec::new()),
            active: WorkQueue::new(),
            q: Arc::new(Mutex::new(Queues::default())),
            bind_slots: Arc::new(Semaphore::new(1)),
            round_robin: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn node(name: &str, cpu: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .expect("node")
    }

    fn pod(name: &str, node: Option<&str>, cpu: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c",
                     "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]},
            "status": {"phase": if node.is_some() { "Running" } else { "Pending" }}
        }))
        .expect("pod")
    }

    #[test]
    fn spreads_pods_of_a_service_to_the_node_without_peers() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}}
        }))
        .expect("svc");
        let s = scheduler(
            vec![node("a", "4"), node("b", "4"), node("c", "4")],
            vec![pod("w1", Some("a"), "100m"), pod("w2", Some("b"), "100m")],
            vec![svc],
        );
        let p = pod("new", None, "100m");
        assert_eq!(s.decide(&p, &s.snapshot()), Decision::Node("c".into()));
    }

    #[test]
    fn spreads_pods_of_a_replica_set_without_a_service() {
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "web-5d8f", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}}
        }))
        .expect("rs");
        // b is the busiest node (a pod of another app), but holds no peer: without the
        // ReplicaSet's selector, least-requested alone would pick a or c.
        let mut other = pod("db", Some("b"), "1");
        other.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
        let mut s = scheduler(
            vec![node("a", "4"), node("b", "4"), node("c", "4")],
            vec![
                pod("w1", Some("a"), "100m"),
                pod("w2", Some("c"), "100m"),
                other,
            ],
            Vec::new(),
        );
        let p = pod("new", None, "100m");
        assert_ne!(s.decide(&p, &s.snapshot()), Decision::Node("b".into()));
        let mut w = xkube_client::Writer::new();
        w.relist(vec![rs]);
        s.replica_sets = w.store();
        let p = pod("new", None, "100m");
        assert_eq!(s.decide(&p, &s.snapshot()), Decision::Node("b".into()));
    }

    #[test]
    fn assumed_pods_hold_resources_until_the_cache_shows_them() {
        let s = scheduler(vec![node("a", "1")], Vec::new(), Vec::new());
        let p1 = pod("p1", None, "600m");
        let d = s.decide(&p1, &s.snapshot());
        assert_eq!(d, Decision::Node("a".into()));
        s.lock()
            .assumed
            .insert("default/p1".into(), ("a".into(), Arc::new(p1)));
        let p2 = pod("p2", None, "600m");
        assert_eq!(
            s.decide(&p2, &s.snapshot()),
            Decision::Unschedulable("0/1 nodes are available: 1 Insufficient cpu.".into())
        );
    }

    #[test]
    fn flags_parse_with_kubernetes_style_names() {
        let cli = Cli::parse_from([
            "s",
            "--service-affinity-labels=zone,rack",
            "--node-label-priority=ssd",
            "--node-label-priority=spot=false",
            "--unschedulable-retry-period=10s",
        ]);
        assert_eq!(cli.opts.scheduler_name, "default-scheduler");
        assert_eq!(cli.opts.service_affinity_labels, ["zone", "rack"]);
        assert_eq!(
            cli.opts.node_label_priority,
            [("ssd".to_string(), true), ("spot".to_string(), false)]
        );
        assert_eq!(cli.opts.unschedulable_retry_period, Duration::from_secs(10));
        assert!(Cli::try_parse_from(["s", "--node-label-priority=a=maybe"]).is_err());
    }
}
