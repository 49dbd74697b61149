//! The node lifecycle controller: podCIDR allocation, Ready=Unknown and the unreachable
//! taints for nodes whose kubelet stopped posting status, eviction of their pods, and removal
//! of pods bound to deleted nodes.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xkube_api::net::Ipv4Cidr;

use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use xkube_client::{Api, Client, DeleteParams, Object, Patch, Store};

use crate::error::{Error, Result};
use xkube_api::pod as podutil;
use xkube_client::runtime::{EventRecorder, NORMAL, object_ref};

/// Taint of nodes whose kubelet stopped posting status.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint of nodes whose kubelet reports NotReady.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";

/// A /24-per-node allocator over a cluster CIDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrAllocator {
    cluster: Ipv4Cidr,
    node_prefix: u8,
}

impl CidrAllocator {
    /// Parses `10.244.0.0/16`; nodes get `/node_prefix` subnets.
    pub fn new(cluster_cidr: &str, node_prefix: u8) -> Result<Self> {
        let cluster: Ipv4Cidr = cluster_cidr.parse().map_err(|_| {
            Error::Config(format!(
                "invalid --cluster-cidr {cluster_cidr:?}: want an IPv4 CIDR such as 10.244.0.0/16"
            ))
        })?;
        if cluster.prefix_len() > node_prefix || node_prefix > 30 {
            return Err(Error::Config(format!(
                "--cluster-cidr {cluster_cidr} is smaller than a /{node_prefix} node subnet"
            )));
        }
        Ok(CidrAllocator {
            cluster,
            node_prefix,
        })
    }

    /// Number of node subnets.
    pub fn capacity(&self) -> u64 {
        1u64 << (self.node_prefix - self.cluster.prefix_len())
    }

    /// The first subnet not in `used`.
    pub fn next_free(&self, used: &BTreeSet<String>) -> Option<String> {
        (0..self.capacity())
            .filter_map(|i| self.cluster.subnet(self.node_prefix, i))
            .map(|s| s.to_string())
            .find(|s| !used.contains(s))
    }
}

/// The `Ready` condition of a node.
pub fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
}

/// What the controller observed of a node's heartbeats.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The last `lastHeartbeatTime` seen (as posted).
    pub heartbeat: Option<String>,
    /// When (controller clock) it was seen to change.
    pub seen_at: Instant,
    /// When (controller clock) the node was first seen not Ready, if it is not.
    pub not_ready_since: Option<Instant>,
}

/// The health of a node as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Heartbeats are current and the kubelet says Ready.
    Ready,
    /// Heartbeats are current and the kubelet says not Ready.
    NotReady,
    /// No heartbeat within the grace period.
    Unreachable,
}

/// Updates `obs` with the node's current heartbeat and decides its health (pure apart from
/// the clock passed in).
pub fn observe(
    node: &Node,
    obs: Option<&Observed>,
    now: Instant,
    grace: Duration,
) -> (Observed, Health) {
    let cond = ready_condition(node);
    let hb = cond.and_then(|c| {
        c.last_heartbeat_time
            .as_ref()
            .map(|t| xkube_api::meta::format_time(t.0))
    });
    let mut o = match obs {
        Some(o) if o.heartbeat == hb => o.clone(),
        Some(o) => Observed {
            heartbeat: hb,
            seen_at: now,
            not_ready_since: o.not_ready_since,
        },
        None => Observed {
            heartbeat: hb,
            seen_at: now,
            not_ready_since: None,
        },
    };
    let health = if now.saturating_duration_since(o.seen_at) > grace {
        Health::Unreachable
    } else if cond.is_some_and(|c| c.status == "True") {
        Health::Ready
    } else if cond.is_none() {
        // Registered but never posted status: give it the grace period.
        Health::Ready
    } else if cond.is_some_and(|c| c.status == "Unknown") {
        // We marked it Unknown and it has not posted since.
        Health::Unreachable
    } else {
        Health::NotReady
    };
    if health == Health::Ready {
        o.not_ready_since = None;
    } else if o.not_ready_since.is_none() {
        o.not_ready_since = Some(now);
    }
    (o, health)
}

/// The taints a node should carry for its health, keeping every other taint.
pub fn desired_taints(node: &Node, health: Health) -> Vec<Taint> {
    let mut taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.key != TAINT_UNREACHABLE && t.key != TAINT_NOT_READY)
        .collect();
    let key = match health {
        Health::Ready => return taints,
        Health::NotReady => TAINT_NOT_READY,
        Health::Unreachable => TAINT_UNREACHABLE,
    };
    let existing: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.key == key)
        .collect();
    for effect in ["NoSchedule", "NoExecute"] {
        let t = existing
            .iter()
            .find(|t| t.effect == effect)
            .cloned()
            .unwrap_or_else(|| Taint {
                key: key.into(),
                effect: effect.into(),
                time_added: (effect == "NoExecute").then(|| Time(jiff::Timestamp::now())),
                value: None,
            });
        taints.push(t);
    }
    taints
}

fn same_taints(a: &[Taint], b: &[Taint]) -> bool {
    let k = |v: &[Taint]| {
        let mut s: Vec<(String, String, Option<String>)> = v
            .iter()
            .map(|t| (t.key.clone(), t.effect.clone(), t.value.clone()))
            .collect();
        s.sort();
        s
    };
    k(a) == k(b)
}

/// Settings of the node lifecycle controller.
#[derive(Debug, Clone)]
pub struct NodeLifecycleConfig {
    /// `--cluster-cidr` allocator; `None` disables podCIDR allocation.
    pub cidrs: Option<CidrAllocator>,
    /// `--node-monitor-period`.
    pub monitor_period: Duration,
    /// `--node-monitor-grace-period`.
    pub grace_period: Duration,
    /// `--pod-eviction-timeout`.
    pub pod_eviction_timeout: Duration,
}

/// The node lifecycle controller.
#[derive(Clone)]
pub struct NodeLifecycleController {
    client: Client,
    nodes: Store<Node>,
    pods: Store<Pod>,
    recorder: EventRecorder,
    cfg: NodeLifecycleConfig,
    observed: Arc<Mutex<HashMap<String, Observed>>>,
}

impl NodeLifecycleController {
    /// A controller over these caches.
    pub fn new(
        client: Client,
        nodes: Store<Node>,
        pods: Store<Pod>,
        recorder: EventRecorder,
        cfg: NodeLifecycleConfig,
    ) -> Self {
        NodeLifecycleController {
            client,
            nodes,
            pods,
            recorder: recorder.with_component("node-controller"),
            cfg,
            observed: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Checks every node each monitor period until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        self.nodes.wait_ready().await;
        self.pods.wait_ready().await;
        let mut tick = tokio::time::interval(self.cfg.monitor_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A node without a podCIDR gets one at once, not at the next tick: its kubelet
        // cannot wire pods before.
        let mut changes = self.nodes.subscribe();
        let wants_cidr = |n: &Node| {
            n.spec
                .as_ref()
                .and_then(|s| s.pod_cidr.as_deref())
                .is_none_or(str::is_empty)
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                r = changes.recv() => match r {
                    Ok(xkube_client::Change::Applied(n))
                        if self.cfg.cidrs.is_some() && wants_cidr(&n) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    _ => continue,
                },
            }
            if let Err(e) = self.monitor().await {
                tracing::warn!(error = %e, "node monitor pass failed");
            }
        }
    }

    /// One pass over every node and orphaned pod.
    #[tracing::instrument(skip(self), fields(controller = "nodelifecycle"))]
    pub async fn monitor(&self) -> Result<()> {
        let nodes = self.nodes.list();
        let now = Instant::now();
        let mut first_err = None;
        let mut used: BTreeSet<String> = nodes
            .iter()
            .filter_map(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.clone()))
            .collect();
        let mut names = BTreeSet::new();
        let mut sorted = nodes.clone();
        sorted.sort_by(|a, b| a.name().cmp(b.name()));
        for node in &sorted {
            names.insert(node.name().to_string());
            if let Err(e) = self.sync_node(node, now, &mut used).await {
                tracing::warn!(node = node.name(), error = %e, "node sync failed");
                first_err.get_or_insert(e);
            }
        }
        {
            let mut obs = self.observed.lock().unwrap_or_else(|e| e.into_inner());
            obs.retain(|n, _| names.contains(n));
        }
        if let Err(e) = self.remove_orphans(&names).await {
            first_err.get_or_insert(e);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn sync_node(
        &self,
        node: &Node,
        now: Instant,
        used: &mut BTreeSet<String>,
    ) -> Result<()> {
        let name = node.name().to_string();
        let api: Api<Node> = Api::all(self.client.clone());
        // podCIDR.
        if let Some(alloc) = &self.cfg.cidrs
            && node
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidr.as_deref())
                .is_none_or(str::is_empty)
        {
            match alloc.next_free(used) {
                Some(cidr) => {
                    api.patch(
                        &name,
                        &Patch::Merge(json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})),
                    )
                    .await
                    .map_err(Error::api(format!("set podCIDR of node {name}")))?;
                    tracing::info!(node = %name, %cidr, "allocated podCIDR");
                    self.recorder
                        .record(
                            &object_ref(node),
                            NORMAL,
                            "CIDRAssignmentSucceeded",
                            &format!("Node {name} got CIDR {cidr}"),
                        )
                        .await;
                    used.insert(cidr);
                }
                None => {
                    self.recorder
                        .record(
                            &object_ref(node),
                            xkube_client::runtime::WARNING,
                            "CIDRNotAvailable",
                            &format!("Node {name} status is now: CIDRNotAvailable"),
                        )
                        .await;
                }
            }
        }
        // Health.
        let prev = self
            .observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
            .cloned();
        let (obs, health) = observe(node, prev.as_ref(), now, self.cfg.grace_period);
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), obs.clone());
        if health == Health::Unreachable
            && ready_condition(node).is_none_or(|c| c.status != "Unknown")
        {
            self.mark_unknown(node).await?;
        }
        let want = desired_taints(node, health);
        let have = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if !same_taints(&want, &have) {
            api.patch(&name, &Patch::Merge(json!({"spec": {"taints": want}})))
                .await
                .map_err(Error::api(format!("taint node {name}")))?;
        }
        // Eviction.
        if health != Health::Ready
            && let Some(since) = obs.not_ready_since
            && now.saturating_duration_since(since) >= self.cfg.pod_eviction_timeout
        {
            self.evict_pods(node, health).await?;
        }
        Ok(())
    }

    async fn mark_unknown(&self, node: &Node) -> Result<()> {
        let name = node.name();
        let now = Time(jiff::Timestamp::now());
        let mut conds: Vec<NodeCondition> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let never = conds.iter().all(|c| c.last_heartbeat_time.is_none());
        let message = if never {
            "Kubelet never posted node status."
        } else {
            "Kubelet stopped posting node status."
        };
        if !conds.iter().any(|c| c.type_ == "Ready") {
            conds.push(NodeCondition {
                type_: "Ready".into(),
                ..NodeCondition::default()
            });
        }
        for c in &mut conds {
            if c.status != "Unknown" {
                c.status = "Unknown".into();
                c.last_transition_time = Some(now.clone());
            }
            c.reason = Some("NodeStatusUnknown".into());
            c.message = Some(message.into());
        }
        let api: Api<Node> = Api::all(self.client.clone());
        api.patch_status(
            name,
            &Patch::Merge(json!({"status": {"conditions": conds}})),
        )
        .await
        .map_err(Error::api(format!("mark node {name} Unknown")))?;
        tracing::warn!(node = name, "node stopped posting status: Ready=Unknown");
        self.recorder
            .record(
                &object_ref(node),
                NORMAL,
                "NodeNotReady",
                &format!("Node {name} status is now: NodeNotReady"),
            )
            .await;
        Ok(())
    }

    async fn evict_pods(&self, node: &Node, health: Health) -> Result<()> {
        let name = node.name();
        let pods = self.pods.filter(|p| podutil::node_name(p) == name);
        for pod in pods {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), pod.namespace());
            if let Some(ts) = &pod.metadata.deletion_timestamp {
                // Nobody will finish the deletion on an unreachable node: force it once the
                // grace period (at most the eviction timeout) has passed since it was marked.
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .unwrap_or(0)
                    .max(0);
                let marked = ts.0 - jiff::SignedDuration::from_secs(grace);
                let wait = grace.min(self.cfg.pod_eviction_timeout.as_secs() as i64);
                if health == Health::Unreachable
                    && marked + jiff::SignedDuration::from_secs(wait) <= jiff::Timestamp::now()
                {
                    let dp = DeleteParams {
                        grace_period_seconds: Some(0),
                        ..DeleteParams::default()
                    };
                    match api.delete(pod.name(), &dp).await {
                        Ok(_) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => {
                            return Err(Error::api(format!("force delete pod {}", pod.name()))(e));
                        }
                    }
                }
                continue;
            }
            // Daemon pods belong to their node (they tolerate not-ready and unreachable); the
            // DaemonSet controller would only recreate them there.
            if podutil::controller_of(pod.metadata.owner_references.as_ref())
                .is_some_and(|r| r.kind == "DaemonSet")
            {
                continue;
            }
            match api.delete(pod.name(), &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(
                        node = name,
                        pod = pod.name(),
                        "evicted pod from unhealthy node"
                    );
                    self.recorder
                        .record(
                            &object_ref(node),
                            NORMAL,
                            "NodeControllerEviction",
                            &format!("Marking for deletion Pod {} from Node {name}", pod.name()),
                        )
                        .await;
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(Error::api(format!("evict pod {}", pod.name()))(e)),
            }
        }
        Ok(())
    }

    /// Pods bound to nodes that do not exist (confirmed by a GET) are deleted.
    async fn remove_orphans(&self, nodes: &BTreeSet<String>) -> Result<()> {
        let orphans = self.pods.filter(|p| {
            let n = podutil::node_name(p);
            !n.is_empty() && !nodes.contains(n)
        });
        let node_api: Api<Node> = Api::all(self.client.clone());
        let mut checked: HashMap<String, bool> = HashMap::new();
        for pod in orphans {
            let n = podutil::node_name(&pod).to_string();
            let gone = match checked.get(&n) {
                Some(g) => *g,
                None => {
                    let g = node_api
                        .get_opt(&n)
                        .await
                        .map_err(Error::api(format!("get node {n}")))?
                        .is_none();
                    checked.insert(n.clone(), g);
                    g
                }
            };
            if !gone {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(self.client.clone(), pod.namespace());
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            match api.delete(pod.name(), &dp).await {
                Ok(_) => {
                    tracing::info!(pod = %xkube_client::runtime::key_of(&*pod), node = %n, "deleted pod of a deleted node")
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(Error::api(format!("delete orphaned pod {}", pod.name()))(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ready: &str, hb: &str, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": ready, "lastHeartbeatTime": hb}]}
        }))
        .expect("node literal")
    }

    #[test]
    fn allocates_consecutive_slash_24s_skipping_used_ones() {
        let a = CidrAllocator::new("10.244.0.0/16", 24).expect("valid");
        assert_eq!(a.capacity(), 256);
        let mut used = BTreeSet::new();
        assert_eq!(a.next_free(&used).as_deref(), Some("10.244.0.0/24"));
        used.insert("10.244.0.0/24".to_string());
        used.insert("10.244.1.0/24".to_string());
        assert_eq!(a.next_free(&used).as_deref(), Some("10.244.2.0/24"));
        let tiny = CidrAllocator::new("10.0.0.0/24", 24).expect("valid");
        used.insert("10.0.0.0/24".to_string());
        assert_eq!(tiny.next_free(&used), None, "exhausted");
        assert!(CidrAllocator::new("10.0.0.0/25", 24).is_err());
        assert!(CidrAllocator::new("nonsense", 24).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn silent_node_turns_unreachable_after_the_grace_period_and_recovers() {
        let grace = Duration::from_secs(40);
        let n = node("True", "2024-01-01T00:00:00Z", json!(null));
        let t0 = Instant::now();
        let (o, h) = observe(&n, None, t0, grace);
        assert_eq!(h, Health::Ready);
        let (o, h) = observe(&n, Some(&o), t0 + Duration::from_secs(39), grace);
        assert_eq!(h, Health::Ready, "within grace");
        let (o, h) = observe(&n, Some(&o), t0 + Duration::from_secs(41), grace);
        assert_eq!(h, Health::Unreachable);
        assert!(o.not_ready_since.is_some());
        let fresh = node("True", "2024-01-01T00:01:00Z", json!(null));
        let (o, h) = observe(&fresh, Some(&o), t0 + Duration::from_secs(42), grace);
        assert_eq!(h, Health::Ready, "a new heartbeat recovers");
        assert!(o.not_ready_since.is_none());
    }

    #[test]
    fn taints_follow_health_and_keep_user_taints() {
        let n = node(
            "True",
            "2024-01-01T00:00:00Z",
            json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
        );
        let t = desired_taints(&n, Health::Unreachable);
        let keys: Vec<(&str, &str)> = t
            .iter()
            .map(|t| (t.key.as_str(), t.effect.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("dedicated", "NoSchedule"),
                (TAINT_UNREACHABLE, "NoSchedule"),
                (TAINT_UNREACHABLE, "NoExecute")
            ]
        );
        let tainted = node(
            "True",
            "2024-01-01T00:00:00Z",
            serde_json::to_value(&t).expect("taints"),
        );
        assert_eq!(
            desired_taints(&tainted, Health::Ready).len(),
            1,
            "recovery removes ours only"
        );
        assert!(
            desired_taints(&tainted, Health::NotReady)
                .iter()
                .any(|t| t.key == TAINT_NOT_READY)
        );
    }
}
