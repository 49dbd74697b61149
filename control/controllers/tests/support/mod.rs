//! Test support: an in-process apiserver with the controller-manager and the scheduler
//! running as tasks, and a fake kubelet that registers nodes, heartbeats and runs pods.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use xkube_apiserver::RunningServer;
use xkube_apiserver::testing::TestServer;
use xkube_client::{
    Api, Client, Config, DeleteParams, ListParams, Object, Patch, Reflector, Store,
};

/// How long a test waits for the cluster to converge before failing.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `f` until it returns `Some`, failing the test after `DEADLINE`.
pub async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    xkube_apiserver::testing::eventually(what, DEADLINE, f).await
}

/// A running control plane.
pub struct Cluster {
    /// The apiserver.
    pub server: Option<RunningServer>,
    /// A client on it.
    pub client: Client,
    /// Stops the controllers, the scheduler and the fake kubelets.
    pub shutdown: CancellationToken,
    /// The controller-manager's options (data dir etc.).
    pub opts: xkube_controllers::Options,
    /// Temporary data dir.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Options suited to tests: short periods.
    pub fn test_options(dir: &std::path::Path) -> xkube_controllers::Options {
        xkube_controllers::Options {
            node_monitor_period: Duration::from_millis(200),
            node_monitor_grace_period: Duration::from_secs(2),
            pod_eviction_timeout: Duration::from_secs(1),
            pod_gc_period: Duration::from_millis(200),
            resource_quota_sync_period: Duration::from_secs(2),
            data_dir: dir.to_path_buf(),
            ..xkube_controllers::Options::default()
        }
    }

    /// Starts an apiserver, the controller-manager (with `tweak` applied to its options)
    /// and the scheduler.
    pub async fn start(tweak: impl FnOnce(&mut xkube_controllers::Options)) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = TestServer::builder(dir.path().join("apiserver"))
            .memory()
            .start()
            .await
            .expect("apiserver starts");
        let url = server.http_url().expect("http listener");
        let client = Client::new(&Config::new(url.clone())).expect("client");
        let mut opts = Self::test_options(dir.path());
        tweak(&mut opts);
        let shutdown = CancellationToken::new();
        let cm_client =
            xkube_client::Client::from_flags(None, Some(&url)).expect("controller client");
        let (o, s) = (opts.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = xkube_controllers::run(o, cm_client, s).await {
                panic!("controller-manager failed: {e}");
            }
        });
        let sched_client =
            xkube_client::Client::from_flags(None, Some(&url)).expect("scheduler client");
        let sched_opts = xkube_scheduler::Options {
            unschedulable_retry_period: Duration::from_secs(5),
            ..xkube_scheduler::Options::default()
        };
        let s = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = xkube_scheduler::run(sched_opts, sched_client, s).await {
                panic!("scheduler failed: {e}");
            }
        });
        Cluster {
            server: Some(server),
            client,
            shutdown,
            opts,
            dir,
        }
    }

    /// Stops everything.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }

    /// Pods of `ns`.
    pub fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Lists pods of `ns` matching `selector`.
    pub async fn list_pods(&self, ns: &str, selector: &str) -> Vec<Pod> {
        self.pods(ns)
            .list(&ListParams::default().labels(selector))
            .await
            .expect("list pods")
            .items
    }
}

/// A pod literal with one container.
pub fn pod_json(name: &str, labels: serde_json::Value, cpu: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "nginx",
                 "ports": [{"name": "http", "containerPort": 8080}],
                 "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]}
    })
}

#[derive(Default)]
struct KubeletState {
    /// Nodes and whether they heartbeat.
    alive: HashMap<String, bool>,
    /// Nodes whose kubelet reports Ready=False.
    unhealthy: HashSet<String>,
    /// `ns/name` of pods whose readiness the test overrides to false.
    not_ready: HashSet<String>,
    /// Node index for pod IPs.
    index: HashMap<String, u8>,
    /// Pod IPs handed out.
    ips: HashMap<String, String>,
    next_ip: HashMap<String, u8>,
}

/// A fake kubelet for any number of nodes.
#[derive(Clone)]
pub struct FakeKubelet {
    client: Client,
    state: Arc<Mutex<KubeletState>>,
    pods: Store<Pod>,
}

fn node_json(name: &str, cpu: &str, memory: &str, idx: u8) -> serde_json::Value {
    let now = xkube_api::meta::format_time(jiff::Timestamp::now());
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
            "addresses": [{"type": "InternalIP", "address": format!("10.0.0.{idx}")},
                          {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}]
        }
    })
}

impl FakeKubelet {
    /// Starts a fake kubelet heartbeating every `heartbeat` and syncing pods until
    /// `shutdown`.
    pub async fn start(
        client: &Client,
        heartbeat: Duration,
        shutdown: &CancellationToken,
    ) -> FakeKubelet {
        let r = Reflector::new(Api::<Pod>::all(client.clone()), ListParams::default());
        let pods = r.store();
        tokio::spawn(r.run(shutdown.clone()));
        let k = FakeKubelet {
            client: client.clone(),
            state: Arc::new(Mutex::new(KubeletState::default())),
            pods,
        };
        let me = k.clone();
        let sd = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(heartbeat);
            loop {
                tokio::select! {
                    _ = sd.cancelled() => return,
                    _ = tick.tick() => me.heartbeat().await,
                }
            }
        });
        let me = k.clone();
        let sd = shutdown.clone();
        tokio::spawn(async move {
            let mut changes = me.pods.subscribe();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = sd.cancelled() => return,
                    _ = tick.tick() => {}
                    _ = changes.recv() => {}
                }
                me.sync_pods().await;
            }
        });
        k.pods.wait_ready().await;
        k
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KubeletState> {
        self.state.lock().expect("kubelet state")
    }

    /// Registers a node with this capacity.
    pub async fn add_node(&self, name: &str, cpu: &str, memory: &str) {
        let idx = {
            let mut s = self.lock();
            let n = s.index.len() as u8 + 1;
            *s.index.entry(name.to_string()).or_insert(n)
        };
        let api: Api<Node> = Api::all(self.client.clone());
        let node: Node =
            serde_json::from_value(node_json(name, cpu, memory, idx)).expect("node literal");
        let status = node.status.clone();
        api.create(&node).await.expect("node registers");
        api.patch_status(name, &Patch::Merge(json!({"status": status})))
            .await
            .expect("node status posted");
        self.lock().alive.insert(name.to_string(), true);
    }

    /// Stops heartbeating and running pods on `node`.
    pub fn stop_node(&self, node: &str) {
        self.lock().alive.insert(node.to_string(), false);
    }

    /// Makes `node`'s kubelet report Ready=False (or True again) in its heartbeats.
    pub fn set_node_ready(&self, node: &str, ready: bool) {
        let mut s = self.lock();
        if ready {
            s.unhealthy.remove(node);
        } else {
            s.unhealthy.insert(node.to_string());
        }
    }

    /// Overrides the readiness of pod `ns/name`.
    pub fn set_ready(&self, key: &str, ready: bool) {
        let mut s = self.lock();
        if ready {
            s.not_ready.remove(key);
        } else {
            s.not_ready.insert(key.to_string());
        }
    }

    async fn heartbeat(&self) {
        let nodes: Vec<(String, bool)> = {
            let s = self.lock();
            s.alive
                .iter()
                .filter(|(_, a)| **a)
                .map(|(n, _)| (n.clone(), !s.unhealthy.contains(n)))
                .collect()
        };
        let api: Api<Node> = Api::all(self.client.clone());
        for (n, ready) in nodes {
            let now = xkube_api::meta::format_time(jiff::Timestamp::now());
            let (status, reason, message) = if ready {
                ("True", "KubeletReady", "kubelet is posting ready status")
            } else {
                ("False", "KubeletNotReady", "container runtime is down")
            };
            let patch = json!({"status": {"conditions": [{"type": "Ready", "status": status,
                "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
            let _ = api.patch_status(&n, &Patch::Merge(patch)).await;
        }
    }

    async fn sync_pods(&self) {
        let pods = self.pods.list();
        for p in pods {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            let key = format!("{}/{}", p.namespace(), p.name());
            let (alive, ready, ip) = {
                let mut s = self.lock();
                let Some(alive) = s.alive.get(&node).copied() else {
                    continue;
                };
                let ready = !s.not_ready.contains(&key);
                let idx = s.index.get(&node).copied().unwrap_or(0);
                let ip = match s.ips.get(&key) {
                    Some(ip) => ip.clone(),
                    None => {
                        let c = s.next_ip.entry(node.clone()).or_insert(1);
                        *c = c.wrapping_add(1);
                        let ip = format!("10.244.{idx}.{c}");
                        s.ips.insert(key.clone(), ip.clone());
                        ip
                    }
                };
                (alive, ready, ip)
            };
            if !alive {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(self.client.clone(), p.namespace());
            if p.metadata.deletion_timestamp.is_some() {
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                };
                let _ = api.delete(p.name(), &dp).await;
                continue;
            }
            let st = p.status.as_ref();
            let phase = st.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
            if matches!(phase, "Succeeded" | "Failed") {
                continue;
            }
            let cur_ready = st
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let cur_ip = st.and_then(|s| s.pod_ip.clone()).unwrap_or_default();
            if phase == "Running" && cur_ready == ready && cur_ip == ip {
                continue;
            }
            let now = xkube_api::meta::format_time(jiff::Timestamp::now());
            let status = if ready { "True" } else { "False" };
            let patch = json!({"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "10.0.0.1",
            "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
                {"type": "Ready", "status": status, "lastTransitionTime": now},
            ]}});
            let _ = api.patch_status(p.name(), &Patch::Merge(patch)).await;
        }
    }
}
