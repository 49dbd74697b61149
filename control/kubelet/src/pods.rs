//! The pod sync loop: a watch on the pods bound to this node feeds one worker task per pod;
//! each worker drives its pod through [`PodLifecycle`] and its containers through
//! [`ContainerRecord`], and writes the status back.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, ObjectReference, Pod, Secret};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use xkube_api::quantity;
use xkube_client::{Api, Batch, DeleteParams, ListParams, Patch, batched, watcher};

use crate::{
    Ctx, dns, env,
    error::{Error, Result, io},
    images::{self, Plan, PullPolicy},
    network::{PodNetworkEvent, PodNetworkEventKind, host_veth_name},
    probes::{Prober, Verdict, run_check},
    runtime::{ContainerConfig, ContainerStatus, Mount, Sandbox, SandboxConfig, StartError},
    state::{
        Backoff, ContainerRecord, ContainerState, Decision, Phase, PodEvent, PodLifecycle,
        RestartPolicy, Termination, pod_phase,
    },
    volumes::{self, Volumes},
};

/// What the kubelet API shows of a pod.
#[derive(Debug, Clone)]
pub struct PodView {
    pub pod: Pod,
    pub pod_dir: PathBuf,
    /// container name -> (runtime id, current attempt).
    pub containers: HashMap<String, (Option<String>, u32)>,
    /// The running sandbox (its network namespace is where port-forward connects).
    pub sandbox: Option<Sandbox>,
}

impl PodView {
    /// The log file of `container` (`previous`: the attempt before the current one).
    pub fn log_path(&self, container: &str, previous: bool) -> Option<PathBuf> {
        let (_, attempt) = self.containers.get(container)?;
        let a = if previous {
            attempt.checked_sub(1)?
        } else {
            *attempt
        };
        Some(log_path(&self.pod_dir, container, a))
    }
}

pub fn log_path(pod_dir: &Path, container: &str, attempt: u32) -> PathBuf {
    pod_dir
        .join("logs")
        .join(container)
        .join(format!("{attempt}.log"))
}

/// The per-pod state a restarted kubelet needs (`<pod dir>/state.json`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Persisted {
    sandbox: Option<Sandbox>,
    ip: Option<Ipv4Addr>,
    start_time: Option<String>,
    volumes: BTreeMap<String, PathBuf>,
    tmpfs: Vec<PathBuf>,
    containers: BTreeMap<String, PersistedContainer>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct PersistedContainer {
    id: Option<String>,
    attempt: u32,
    restart_count: i32,
    started_at: Option<String>,
}

fn pods_dir(root: &Path) -> PathBuf {
    root.join("pods")
}

fn ts(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Watches this node's pods and runs one worker per pod until `shutdown`. Pods keep running
/// when the kubelet stops; a restarted kubelet adopts them from their pod dirs.
pub(crate) async fn sync_loop(ctx: Arc<Ctx>, shutdown: CancellationToken) -> Result<()> {
    let api = Api::<Pod>::all(ctx.client.clone());
    let lp = ListParams::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let stream = batched(watcher(api, lp));
    futures::pin_mut!(stream);
    let mut workers: HashMap<String, watch::Sender<Option<Arc<Pod>>>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut tasks = tokio::task::JoinSet::new();
    let mut first_list = true;
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(uid) = done_rx.recv() => {
                workers.remove(&uid);
                continue;
            }
            ev = stream.next() => ev,
        };
        let Some(ev) = ev else { break };
        let mut apply =
            |pod: Pod, workers: &mut HashMap<String, watch::Sender<Option<Arc<Pod>>>>| {
                let Some(uid) = pod.metadata.uid.clone() else {
                    return;
                };
                let pod = Arc::new(pod);
                match workers.get(&uid) {
                    Some(tx) => {
                        let _ = tx.send(Some(pod));
                    }
                    None => {
                        let (tx, rx) = watch::channel(Some(pod.clone()));
                        workers.insert(uid.clone(), tx);
                        let ctx = ctx.clone();
                        let token = shutdown.child_token();
                        let done = done_tx.clone();
                        tasks.spawn(async move {
                            let w = Worker::new(ctx, pod, rx).await;
                            w.run(token).await;
                            let _ = done.send(uid);
                        });
                    }
                }
            };
        match ev {
            Ok(Batch::Applied(p)) => apply(p, &mut workers),
            Ok(Batch::Deleted(p)) => {
                if let Some(tx) = p.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                    let _ = tx.send(None);
                }
            }
            Ok(Batch::Relisted(all)) => {
                let uids: std::collections::HashSet<String> =
                    all.iter().filter_map(|p| p.metadata.uid.clone()).collect();
                for (uid, tx) in &workers {
                    if !uids.contains(uid) {
                        let _ = tx.send(None);
                    }
                }
                if first_list {
                    first_list = false;
                    cleanup_orphans(&ctx, &uids).await;
                }
                for p in all {
                    apply(p, &mut workers);
                }
            }
            Err(e) => tracing::debug!(error = %e, "pod watch"),
        }
    }
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Pods that vanished while the kubelet was down: stop what is left and free their addresses.
async fn cleanup_orphans(ctx: &Arc<Ctx>, live: &std::collections::HashSet<String>) {
    let dir = pods_dir(&ctx.root);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let uid = e.file_name().to_string_lossy().into_owned();
        if live.contains(&uid) {
            continue;
        }
        let pod_dir = e.path();
        let st = load_state(&pod_dir);
        tracing::info!(uid, "cleaning up a pod deleted while the kubelet was down");
        for c in st.containers.values() {
            if let Some(id) = &c.id {
                let _ = ctx.runtime.stop_container(id, Duration::from_secs(1)).await;
            }
        }
        if let Some(sb) = &st.sandbox {
            let _ = ctx.runtime.stop_sandbox(sb).await;
        }
        let _ = detach(ctx, &uid).await;
        if let Some(cg) = st.sandbox.as_ref().and_then(|s| s.cgroup.clone()) {
            remove_cgroup(&cg).await;
        }
        let vols = Volumes {
            paths: HashMap::new(),
            tmpfs: volumes::mounted_below(&pod_dir),
        };
        volumes::cleanup(&vols, &pod_dir);
        let _ = std::fs::remove_dir_all(&pod_dir);
    }
    let keep = live.clone();
    let net = ctx.network.clone();
    let _ = tokio::task::spawn_blocking(move || net.release_others(&|o| keep.contains(o))).await;
}

fn load_state(pod_dir: &Path) -> Persisted {
    std::fs::read(pod_dir.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

async fn detach(ctx: &Arc<Ctx>, uid: &str) -> Result<Option<Ipv4Addr>> {
    let net = ctx.network.clone();
    let u = uid.to_owned();
    tokio::task::spawn_blocking(move || net.detach(&u))
        .await
        .map_err(|e| Error::Runtime(format!("detach task: {e}")))?
}

/// On a hybrid host (memory and cpu controllers on cgroup v1), the pod's limits go to v1
/// directories that mirror its v2 cgroup; the runtime puts the pod's processes in those too.
fn limit_v1_mirrors(v2: &Path, cpu_max: Option<&str>, mem: Option<u64>) -> Result<()> {
    use xkube_netns::cgroup::V1Controller;
    for (ctl, dir) in xkube_netns::cgroup::v1_mirrors(v2) {
        std::fs::create_dir_all(&dir).map_err(io("create cgroup", &dir))?;
        let writes: Vec<(&str, String)> = match ctl {
            V1Controller::Memory => mem
                .map(|m| ("memory.limit_in_bytes", m.to_string()))
                .into_iter()
                .collect(),
            // cpu.max is "<quota> <period>".
            V1Controller::Cpu => cpu_max
                .and_then(|c| c.split_once(' '))
                .map(|(quota, period)| {
                    vec![
                        ("cpu.cfs_period_us", period.to_owned()),
                        ("cpu.cfs_quota_us", quota.to_owned()),
                    ]
                })
                .unwrap_or_default(),
        };
        for (file, value) in writes {
            std::fs::write(dir.join(file), value).map_err(io("write", &dir.join(file)))?;
        }
    }
    Ok(())
}

/// Kills whatever is left in a pod cgroup and removes it, with its cgroup v1 mirrors.
async fn remove_cgroup(cg: &Path) {
    for (_, dir) in xkube_netns::cgroup::v1_mirrors(cg) {
        remove_empty_cgroup(&dir, cg).await;
    }
    remove_v2_cgroup(cg).await;
}

async fn remove_empty_cgroup(dir: &Path, v2: &Path) {
    // Its processes are also in the v2 cgroup, which `cgroup.kill` empties.
    let _ = std::fs::write(v2.join("cgroup.kill"), "1");
    for _ in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    tracing::warn!(path = %dir.display(), "pod cgroup (v1) left behind");
}

async fn remove_v2_cgroup(cg: &Path) {
    let _ = std::fs::write(cg.join("cgroup.kill"), "1");
    for _ in 0..100 {
        let empty = std::fs::read_to_string(cg.join("cgroup.procs"))
            .map(|s| s.trim().is_empty())
            .unwrap_or(true);
        if empty {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..50 {
        match std::fs::remove_dir(cg) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    tracing::warn!(path = %cg.display(), "pod cgroup left behind");
}

/// A quantity read with `f` ([`quantity::cpu_millis`], [`quantity::bytes`]) when it is not
/// negative.
fn unsigned(q: &str, f: fn(&str) -> Option<i64>) -> Option<u64> {
    f(q).and_then(|v| u64::try_from(v).ok())
}

/// Pod-level `cpu.max` and `memory.max` from the containers' limits (only when every
/// container has the limit).
pub fn pod_limits(containers: &[Container]) -> (Option<String>, Option<u64>) {
    let limit = |c: &Container, k: &str| -> Option<String> {
        c.resources
            .as_ref()?
            .limits
            .as_ref()?
            .get(k)
            .map(|q| q.0.clone())
    };
    let cpu: Option<u64> = containers
        .iter()
        .map(|c| limit(c, "cpu").and_then(|q| unsigned(&q, quantity::cpu_millis)))
        .sum();
    let mem: Option<u64> = containers
        .iter()
        .map(|c| limit(c, "memory").and_then(|q| unsigned(&q, quantity::bytes)))
        .sum();
    (
        cpu.filter(|_| !containers.is_empty())
            .map(|m| format!("{} 100000", (m * 100).max(1000))),
        mem.filter(|_| !containers.is_empty()),
    )
}

/// A container's CPU and memory limits and CPU request.
pub fn container_resources(c: &Container) -> crate::runtime::Resources {
    let get = |limits: bool, k: &str| -> Option<String> {
        let r = c.resources.as_ref()?;
        let m = if limits { &r.limits } else { &r.requests };
        m.as_ref()?.get(k).map(|q| q.0.clone())
    };
    let cpu_limit_millis = get(true, "cpu").and_then(|q| unsigned(&q, quantity::cpu_millis));
    crate::runtime::Resources {
        cpu_limit_millis,
        cpu_request_millis: get(false, "cpu")
            .and_then(|q| unsigned(&q, quantity::cpu_millis))
            .or(cpu_limit_millis),
        memory_limit: get(true, "memory").and_then(|q| unsigned(&q, quantity::bytes)),
    }
}

struct Worker {
    ctx: Arc<Ctx>,
    uid: String,
    pod: Arc<Pod>,
    rx: watch::Receiver<Option<Arc<Pod>>>,
    gone_from_api: bool,
    pod_dir: PathBuf,
    lifecycle: PodLifecycle,
    policy: RestartPolicy,
    records: Vec<ContainerRecord>,
    attempts: HashMap<String, u32>,
    /// Container name -> the ID of the image it was started from.
    image_ids: HashMap<String, String>,
    sandbox: Option<Sandbox>,
    ip: Option<Ipv4Addr>,
    start_time: Option<String>,
    volumes: Volumes,
    readiness: HashMap<String, Prober>,
    liveness: HashMap<String, Prober>,
    since: HashMap<&'static str, (bool, String)>,
    last_status: Option<Value>,
    view: Arc<Mutex<PodView>>,
    retry_sandbox_at: Option<Instant>,
    sandbox_error: Option<String>,
}

fn containers_of(pod: &Pod) -> &[Container] {
    pod.spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or(&[])
}

impl Worker {
    async fn new(ctx: Arc<Ctx>, pod: Arc<Pod>, rx: watch::Receiver<Option<Arc<Pod>>>) -> Self {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let pod_dir = pods_dir(&ctx.root).join(&uid);
        let backoff = Backoff::new(ctx.backoff_initial, Duration::from_secs(300));
        let records: Vec<ContainerRecord> = containers_of(&pod)
            .iter()
            .map(|c| ContainerRecord::new(&c.name, backoff.clone()))
            .collect();
        let policy =
            RestartPolicy::parse(pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()));
        let mut readiness = HashMap::new();
        let mut liveness = HashMap::new();
        for c in containers_of(&pod) {
            if let Some(p) = c.readiness_probe.as_ref().and_then(|p| Prober::new(c, p)) {
                readiness.insert(c.name.clone(), p);
            }
            if let Some(p) = c.liveness_probe.as_ref().and_then(|p| Prober::new(c, p)) {
                liveness.insert(c.name.clone(), p);
            }
        }
        let view = Arc::new(Mutex::new(PodView {
            pod: (*pod).clone(),
            pod_dir: pod_dir.clone(),
            containers: HashMap::new(),
            sandbox: None,
        }));
        ctx.views().insert(uid.clone(), view.clone());
        let mut w = Self {
            ctx,
            uid,
            pod,
            rx,
            gone_from_api: false,
            pod_dir,
            lifecycle: PodLifecycle::Pending,
            policy,
            records,
            attempts: HashMap::new(),
            image_ids: HashMap::new(),
            sandbox: None,
            ip: None,
            start_time: None,
            volumes: Volumes::default(),
            readiness,
            liveness,
            since: HashMap::new(),
            last_status: None,
            view,
            retry_sandbox_at: None,
            sandbox_error: None,
        };
        w.adopt().await;
        w
    }

    fn ns(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }

    fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or("")
    }

    /// Takes over a sandbox and containers a previous kubelet left running.
    /// A pod that already finished (Succeeded/Failed) stays finished: its containers are not
    /// run again by a restarted kubelet.
    fn adopt_finished(&mut self, st: &Persisted) -> bool {
        let Some(status) = self.pod.status.clone() else {
            return false;
        };
        let phase = match status.phase.as_deref() {
            Some("Succeeded") => Phase::Succeeded,
            Some("Failed") => Phase::Failed,
            _ => return false,
        };
        let parse = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
            t.as_ref()
                .and_then(|t| t.0.to_string().parse().ok())
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        };
        for cs in status.container_statuses.iter().flatten() {
            let Some(r) = self.records.iter_mut().find(|r| r.name == cs.name) else {
                continue;
            };
            r.ever_started = true;
            r.restart_count = cs.restart_count;
            if let Some(t) = cs.state.as_ref().and_then(|s| s.terminated.as_ref()) {
                r.state = ContainerState::Terminated(Termination {
                    container_id: t.container_id.clone().unwrap_or_default(),
                    exit_code: t.exit_code,
                    signal: t.signal,
                    reason: t.reason.clone().unwrap_or_default(),
                    started_at: parse(&t.started_at),
                    finished_at: parse(&t.finished_at),
                });
            }
        }
        self.ip = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok());
        self.start_time = status.start_time.as_ref().map(|t| t.0.to_string());
        for (name, pc) in &st.containers {
            self.attempts.insert(name.clone(), pc.attempt);
            self.view_mut()
                .containers
                .insert(name.clone(), (pc.id.clone(), pc.attempt));
        }
        self.lifecycle = PodLifecycle::Finished(phase);
        true
    }

    async fn adopt(&mut self) {
        let st = load_state(&self.pod_dir);
        let Some(sb) = st.sandbox.clone() else {
            self.adopt_finished(&st);
            return;
        };
        if !self.ctx.runtime.sandbox_alive(&sb).await {
            return;
        }
        tracing::info!(pod = %self.name(), "adopting running pod");
        self.view_mut().sandbox = Some(sb.clone());
        self.sandbox = Some(sb);
        self.ip = st.ip;
        self.start_time = st.start_time.clone();
        self.volumes = Volumes {
            paths: st.volumes.clone().into_iter().collect(),
            tmpfs: st.tmpfs.clone(),
        };
        self.lifecycle = PodLifecycle::Running;
        let now = Instant::now();
        for r in &mut self.records {
            let Some(pc) = st.containers.get(&r.name) else {
                continue;
            };
            self.attempts.insert(r.name.clone(), pc.attempt);
            r.restart_count = pc.restart_count;
            self.view
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .containers
                .insert(r.name.clone(), (pc.id.clone(), pc.attempt));
            let Some(id) = &pc.id else { continue };
            r.ever_started = true;
            let started_at = pc
                .started_at
                .as_deref()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(jiff::Timestamp::now);
            match self.ctx.runtime.container_status(id).await {
                ContainerStatus::Running => {
                    r.state = ContainerState::Running {
                        container_id: id.clone(),
                        started_at,
                        since: now,
                    };
                    if let Some(p) = self.readiness.get_mut(&r.name) {
                        p.reset(now);
                    }
                    if let Some(p) = self.liveness.get_mut(&r.name) {
                        p.reset(now);
                    }
                }
                _ => {
                    r.state = ContainerState::Running {
                        container_id: id.clone(),
                        started_at,
                        since: now,
                    };
                }
            }
        }
        if let (Some(ip), false) = (
            self.ip,
            self.sandbox.as_ref().is_some_and(|s| s.host_network),
        ) {
            self.ctx.network.announce(PodNetworkEvent {
                namespace: self.ns().to_owned(),
                name: self.name().to_owned(),
                uid: self.uid.clone(),
                host_veth: host_veth_name(&self.uid),
                ip,
                kind: PodNetworkEventKind::Added,
            });
        }
    }

    fn persist(&self) {
        self.view_mut().sandbox = self.sandbox.clone();
        let st = Persisted {
            sandbox: self.sandbox.clone(),
            ip: self.ip,
            start_time: self.start_time.clone(),
            volumes: self.volumes.paths.clone().into_iter().collect(),
            tmpfs: self.volumes.tmpfs.clone(),
            containers: self
                .records
                .iter()
                .map(|r| {
                    let started_at = match &r.state {
                        ContainerState::Running { started_at, .. } => Some(ts(*started_at)),
                        _ => None,
                    };
                    (
                        r.name.clone(),
                        PersistedContainer {
                            id: match &r.state {
                                ContainerState::Running { container_id, .. } => {
                                    Some(container_id.clone())
                                }
                                _ => None,
                            },
                            attempt: self.attempts.get(&r.name).copied().unwrap_or(0),
                            restart_count: r.restart_count,
                            started_at,
                        },
                    )
                })
                .collect(),
        };
        let p = self.pod_dir.join("state.json");
        let tmp = self.pod_dir.join("state.json.tmp");
        let r = serde_json::to_vec(&st)
            .map_err(|e| crate::error::invalid("pod state", e.to_string()))
            .and_then(|b| std::fs::write(&tmp, b).map_err(io("write", &tmp)))
            .and_then(|()| std::fs::rename(&tmp, &p).map_err(io("rename", &p)));
        if let Err(e) = r {
            tracing::warn!(error = %e, "persisting pod state");
        }
    }

    fn event(&self, type_: &str, reason: &str, message: String, container: Option<&str>) {
        let pod = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(self.ns().to_string()),
            name: Some(self.name().to_string()),
            uid: Some(self.uid.clone()),
            field_path: container.map(|c| format!("spec.containers{{{c}}}")),
            ..ObjectReference::default()
        };
        self.ctx.recorder.post(pod, type_, reason, &message);
    }

    async fn run(mut self, token: CancellationToken) {
        loop {
            let mut wake = match self.step().await {
                Some(w) => w,
                None => break,
            };
            if !self.push_status().await {
                // Try again soon rather than at the next planned wake-up.
                wake = wake.min(Instant::now() + Duration::from_secs(1));
            }
            tokio::select! {
                _ = token.cancelled() => return,
                ch = self.rx.changed() => {
                    if ch.is_err() {
                        // The sync loop is gone (shutting down).
                        return;
                    }
                    let latest = self.rx.borrow_and_update().clone();
                    match latest {
                        Some(p) => self.pod = p,
                        None => self.gone_from_api = true,
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        self.ctx.views().remove(&self.uid);
    }

    fn deletion_grace(&self) -> Option<Duration> {
        if self.gone_from_api {
            return Some(Duration::from_secs(1));
        }
        self.pod.metadata.deletion_timestamp.as_ref()?;
        let secs = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        Some(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
    }

    fn transition(&mut self, ev: PodEvent) {
        let cur = std::mem::replace(&mut self.lifecycle, PodLifecycle::Terminated);
        let name = cur.name();
        match cur.clone().on(ev, Instant::now()) {
            Ok(next) => {
                tracing::debug!(pod = %self.name(), from = name, to = next.name(), "pod transition");
                self.lifecycle = next;
            }
            Err(e) => {
                tracing::warn!(pod = %self.name(), error = %e, "ignored pod event");
                self.lifecycle = cur;
            }
        }
    }

    /// One round of work; the instant to come back, or `None` when the worker is done.
    async fn step(&mut self) -> Option<Instant> {
        let now = Instant::now();
        if let Some(grace) = self.deletion_grace()
            && !matches!(
                self.lifecycle,
                PodLifecycle::Terminating { .. } | PodLifecycle::Terminated
            )
        {
            self.transition(PodEvent::DeletionRequested { grace });
        }
        match self.lifecycle.clone() {
            PodLifecycle::Pending => {
                if self.retry_sandbox_at.is_some_and(|t| t > now) {
                    return self.retry_sandbox_at;
                }
                match self.create_sandbox().await {
                    Ok(()) => {
                        self.sandbox_error = None;
                        self.transition(PodEvent::SandboxReady);
                        self.persist();
                        Some(Instant::now())
                    }
                    Err(e) => {
                        tracing::warn!(pod = %self.name(), error = %e, "creating pod sandbox");
                        self.event(
                            "Warning",
                            "FailedCreatePodSandBox",
                            format!("Failed to create pod sandbox: {e}"),
                            None,
                        );
                        self.sandbox_error = Some(e.to_string());
                        self.teardown_sandbox().await;
                        let t = Instant::now() + Duration::from_secs(2);
                        self.retry_sandbox_at = Some(t);
                        Some(t)
                    }
                }
            }
            PodLifecycle::Running => {
                let wake = self.sync_containers().await;
                let phase = pod_phase(&self.records);
                if matches!(phase, Phase::Succeeded | Phase::Failed) {
                    self.teardown_sandbox().await;
                    self.transition(PodEvent::ContainersFinished(phase));
                    self.persist();
                    return Some(Instant::now() + Duration::from_secs(3600));
                }
                Some(wake)
            }
            PodLifecycle::Finished(_) => Some(Instant::now() + Duration::from_secs(3600)),
            PodLifecycle::Terminating { deadline } => {
                self.terminate(deadline).await;
                self.transition(PodEvent::AllStopped);
                Some(Instant::now())
            }
            PodLifecycle::Terminated => {
                // Local state goes first: once the object is gone, nothing of the pod is left.
                if let Err(e) = std::fs::remove_dir_all(&self.pod_dir)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(error = %e, "removing pod dir");
                }
                if !self.gone_from_api {
                    let api = Api::<Pod>::namespaced(self.ctx.client.clone(), self.ns());
                    let dp = DeleteParams {
                        grace_period_seconds: Some(0),
                        ..Default::default()
                    };
                    match api.delete(self.name(), &dp).await {
                        Ok(_) => {}
                        Err(e) if e.status().is_some_and(|s| s.code == 404) => {}
                        Err(e) => {
                            tracing::warn!(pod = %self.name(), error = %e, "deleting pod object");
                            return Some(Instant::now() + Duration::from_secs(1));
                        }
                    }
                }
                None
            }
        }
    }

    fn host_network(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
    }

    async fn create_sandbox(&mut self) -> Result<()> {
        // The pod's start is when the kubelet takes it on, before its sandbox.
        self.start_time.get_or_insert_with(node_now);
        std::fs::create_dir_all(&self.pod_dir).map_err(io("create pod dir", &self.pod_dir))?;
        let cgroup = match &self.ctx.cgroup_root {
            Some(root) => {
                let p = root.join(format!("pod{}", self.uid));
                std::fs::create_dir_all(&p).map_err(io("create cgroup", &p))?;
                let (cpu, mem) = pod_limits(containers_of(&self.pod));
                if let Some(c) = &cpu
                    && let Err(e) = std::fs::write(p.join("cpu.max"), c)
                {
                    tracing::debug!(error = %e, "cpu.max (cpu controller not on cgroup v2?)");
                }
                if let Some(m) = mem
                    && let Err(e) = std::fs::write(p.join("memory.max"), m.to_string())
                {
                    tracing::debug!(error = %e, "memory.max (memory controller not on cgroup v2?)");
                }
                limit_v1_mirrors(&p, cpu.as_deref(), mem)?;
                Some(p)
            }
            None => None,
        };
        let host_network = self.host_network();
        let cfg = SandboxConfig {
            uid: self.uid.clone(),
            name: self.name().to_owned(),
            namespace: self.ns().to_owned(),
            hostname: self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.hostname.clone())
                .unwrap_or_else(|| self.name().to_owned()),
            host_network,
            host_netns: self.ctx.node_ns.0.clone(),
            cgroup,
            pod_dir: self.pod_dir.clone(),
        };
        let sb = self.ctx.runtime.run_sandbox(&cfg).await?;
        self.sandbox = Some(sb.clone());
        self.persist();
        if host_network {
            self.ip = Some(self.ctx.node_ip);
        } else {
            let net = self.ctx.network.clone();
            let uid = self.uid.clone();
            let netns = sb.netns.clone();
            let (ip, veth) = tokio::task::spawn_blocking(move || net.attach(&uid, &netns))
                .await
                .map_err(|e| Error::Runtime(format!("attach task: {e}")))??;
            self.ip = Some(ip);
            self.ctx.network.announce(PodNetworkEvent {
                namespace: self.ns().to_owned(),
                name: self.name().to_owned(),
                uid: self.uid.clone(),
                host_veth: veth,
                ip,
                kind: PodNetworkEventKind::Added,
            });
        }
        self.volumes = volumes::prepare(&self.ctx.client, &self.pod, &self.pod_dir).await?;
        let host_dns = dns::host(&self.ctx.dns);
        dns::write(
            &self.pod_dir,
            &dns::for_pod(&self.pod, &self.ctx.dns, &host_dns),
        )?;
        Ok(())
    }

    /// Stops the sandbox and frees its network, cgroup and volumes (logs stay).
    async fn teardown_sandbox(&mut self) {
        self.view_mut().sandbox = None;
        if let Some(sb) = self.sandbox.take() {
            if let Err(e) = self.ctx.runtime.stop_sandbox(&sb).await {
                tracing::warn!(error = %e, "stopping sandbox");
            }
            if !sb.host_network {
                match detach(&self.ctx, &self.uid).await {
                    Ok(Some(ip)) => self.ctx.network.announce(PodNetworkEvent {
                        namespace: self.ns().to_owned(),
                        name: self.name().to_owned(),
                        uid: self.uid.clone(),
                        host_veth: host_veth_name(&self.uid),
                        ip,
                        kind: PodNetworkEventKind::Removed,
                    }),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "detaching pod network"),
                }
            }
            if let Some(cg) = &sb.cgroup {
                remove_cgroup(cg).await;
            }
        } else if !self.host_network() {
            let _ = detach(&self.ctx, &self.uid).await;
        }
        if let Some(root) = &self.ctx.cgroup_root {
            remove_cgroup(&root.join(format!("pod{}", self.uid))).await;
        }
        volumes::cleanup(&self.volumes, &self.pod_dir);
        self.volumes = Volumes::default();
    }

    /// Graceful termination: SIGTERM to every container, SIGKILL at `deadline`, then the
    /// sandbox.
    async fn terminate(&mut self, deadline: Instant) {
        let grace = deadline.saturating_duration_since(Instant::now());
        let mut stops = Vec::new();
        for r in &self.records {
            if let ContainerState::Running { container_id, .. } = &r.state {
                self.event(
                    "Normal",
                    "Killing",
                    format!("Stopping container {}", r.name),
                    Some(&r.name),
                );
                let rt = self.ctx.runtime.clone();
                let id = container_id.clone();
                stops.push(async move { rt.stop_container(&id, grace).await });
            }
        }
        for r in futures::future::join_all(stops).await {
            if let Err(e) = r {
                tracing::warn!(error = %e, "stopping container");
            }
        }
        let now = Instant::now();
        for i in 0..self.records.len() {
            if let ContainerState::Running {
                container_id,
                started_at,
                ..
            } = self.records[i].state.clone()
            {
                let (exit_code, signal, finished_at) =
                    match self.ctx.runtime.container_status(&container_id).await {
                        ContainerStatus::Exited {
                            exit_code,
                            signal,
                            finished_at,
                        } => (exit_code, signal, finished_at),
                        _ => (137, Some(9), jiff::Timestamp::now()),
                    };
                let t = Termination {
                    container_id,
                    exit_code,
                    signal,
                    reason: Termination::reason_for(exit_code).into(),
                    started_at,
                    finished_at,
                };
                self.records[i].on_exited(t, RestartPolicy::Never, now);
            }
        }
        self.teardown_sandbox().await;
    }

    async fn sync_containers(&mut self) -> Instant {
        let mut wake = Instant::now() + Duration::from_secs(1);
        let Some(sb) = self.sandbox.clone() else {
            return wake;
        };
        if !self.ctx.runtime.sandbox_alive(&sb).await {
            // The infra process died: start over with a fresh sandbox.
            tracing::warn!(pod = %self.name(), "sandbox died, recreating");
            self.event(
                "Normal",
                "SandboxChanged",
                "Pod sandbox changed, it will be killed and re-created.".into(),
                None,
            );
            for r in &mut self.records {
                if let ContainerState::Running { container_id, .. } = &r.state {
                    let _ = self
                        .ctx
                        .runtime
                        .stop_container(container_id, Duration::from_secs(1))
                        .await;
                }
            }
            self.teardown_sandbox().await;
            self.lifecycle = PodLifecycle::Pending;
            return Instant::now();
        }
        let specs: Vec<Container> = containers_of(&self.pod).to_vec();
        let now = Instant::now();
        for (i, spec) in specs.iter().enumerate() {
            if i >= self.records.len() {
                break;
            }
            // Observe exits.
            if let ContainerState::Running {
                container_id,
                started_at,
                ..
            } = self.records[i].state.clone()
            {
                let st = self.ctx.runtime.container_status(&container_id).await;
                let term = match st {
                    ContainerStatus::Running => None,
                    ContainerStatus::Exited {
                        exit_code,
                        signal,
                        finished_at,
                    } => Some(Termination {
                        container_id: container_id.clone(),
                        exit_code,
                        signal,
                        reason: Termination::reason_for(exit_code).into(),
                        started_at,
                        finished_at,
                    }),
                    ContainerStatus::Unknown => Some(Termination {
                        container_id: container_id.clone(),
                        exit_code: 137,
                        signal: None,
                        reason: "ContainerStatusUnknown".into(),
                        started_at,
                        finished_at: jiff::Timestamp::now(),
                    }),
                };
                if let Some(t) = term {
                    let delay = self.records[i].on_exited(t, self.policy, now);
                    if let Some(d) = delay.filter(|d| !d.is_zero()) {
                        self.event(
                            "Warning",
                            "BackOff",
                            format!(
                                "Back-off restarting failed container {} in pod {}_{}({})",
                                spec.name,
                                self.name(),
                                self.ns(),
                                self.uid
                            ),
                            Some(&spec.name),
                        );
                        tracing::debug!(container = %spec.name, ?d, "back-off");
                    }
                    self.persist();
                }
            }
            match self.records[i].decide(now) {
                Decision::Start => {
                    self.start_container(i, spec, &sb).await;
                    wake = wake.min(Instant::now() + Duration::from_millis(200));
                }
                Decision::WaitUntil(t) => wake = wake.min(t),
                Decision::Keep => {
                    if let Some(t) = self.probe(i, spec).await {
                        wake = wake.min(t);
                    }
                }
                Decision::Done => {}
            }
        }
        wake
    }

    async fn probe(&mut self, i: usize, spec: &Container) -> Option<Instant> {
        let ContainerState::Running { container_id, .. } = self.records[i].state.clone() else {
            return None;
        };
        let netns = self.sandbox.as_ref().map(|s| s.netns.clone());
        let ip = IpAddr::V4(self.ip.unwrap_or(Ipv4Addr::LOCALHOST));
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        if let Some(p) = self.liveness.get(&spec.name).cloned()
            && p.due(now)
        {
            let ok = run_check(
                &p.check,
                p.timeout,
                &self.ctx.runtime,
                &container_id,
                netns.clone(),
                ip,
            )
            .await;
            let mut p = p;
            let verdict = p.record(ok.is_ok(), Instant::now());
            self.liveness.insert(spec.name.clone(), p);
            if let Err(why) = &ok {
                self.event(
                    "Warning",
                    "Unhealthy",
                    format!("Liveness probe failed: {why}"),
                    Some(&spec.name),
                );
            }
            if verdict == Some(Verdict::Failure) {
                self.event(
                    "Normal",
                    "Killing",
                    format!(
                        "Container {} failed liveness probe, will be restarted",
                        spec.name
                    ),
                    Some(&spec.name),
                );
                let grace = Duration::from_secs(
                    self.pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                        .and_then(|g| u64::try_from(g).ok())
                        .unwrap_or(30),
                );
                if let Err(e) = self.ctx.runtime.stop_container(&container_id, grace).await {
                    tracing::warn!(error = %e, "stopping unhealthy container");
                }
                return Some(Instant::now());
            }
        }
        if let Some(p) = self.liveness.get(&spec.name) {
            next = p
                .next_at_hint()
                .map(|t| next.map_or(t, |n: Instant| n.min(t)));
        }
        match self.readiness.get(&spec.name).cloned() {
            Some(mut p) => {
                if p.due(now) {
                    let ok = run_check(
                        &p.check,
                        p.timeout,
                        &self.ctx.runtime,
                        &container_id,
                        netns,
                        ip,
                    )
                    .await;
                    match p.record(ok.is_ok(), Instant::now()) {
                        Some(Verdict::Success) => self.records[i].ready = true,
                        Some(Verdict::Failure) => {
                            if self.records[i].ready {
                                self.event(
                                    "Warning",
                                    "Unhealthy",
                                    format!(
                                        "Readiness probe failed: {}",
                                        ok.err().unwrap_or_default()
                                    ),
                                    Some(&spec.name),
                                );
                            }
                            self.records[i].ready = false;
                        }
                        None => {}
                    }
                }
                if let Some(t) = p.next_at_hint() {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
                self.readiness.insert(spec.name.clone(), p);
            }
            None => self.records[i].ready = true,
        }
        next
    }

    /// The image of container `name` by its pull policy, with the events Kubernetes posts
    /// (`Pulling`, `Pulled` with the durations and size, `ErrImageNeverPull`); its ID.
    async fn ensure_image(
        &mut self,
        name: &str,
        image: &str,
        policy: PullPolicy,
    ) -> Result<String, StartError> {
        let images = self.ctx.images.clone();
        match images.plan(image, policy).await? {
            Plan::Present(info) => {
                self.event(
                    "Normal",
                    "Pulled",
                    format!("Container image \"{image}\" already present on machine"),
                    Some(name),
                );
                Ok(info.id)
            }
            Plan::NeverPull => {
                let message =
                    format!("Container image \"{image}\" is not present with pull policy of Never");
                self.event("Warning", "ErrImageNeverPull", message.clone(), Some(name));
                Err(StartError {
                    reason: "ErrImageNeverPull",
                    message,
                })
            }
            Plan::Pull => {
                self.event(
                    "Normal",
                    "Pulling",
                    format!("Pulling image \"{image}\""),
                    Some(name),
                );
                let secrets = self.pull_secrets(name).await;
                let started = Instant::now();
                let pulled = images
                    .pull(image, images::credentials_for(image, &secrets))
                    .await?;
                self.event(
                    "Normal",
                    "Pulled",
                    format!(
                        "Successfully pulled image \"{image}\" in {} ({} including waiting). Image size: {} bytes.",
                        images::go_duration(pulled.took),
                        images::go_duration(started.elapsed()),
                        pulled.info.size
                    ),
                    Some(name),
                );
                Ok(pulled.info.id)
            }
        }
    }

    /// The pod's `imagePullSecrets` that can be read; the others get a warning event, as the
    /// kubelet posts one, and the pull goes on without them.
    async fn pull_secrets(&self, container: &str) -> Vec<Secret> {
        let names: Vec<String> = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.as_ref())
            .into_iter()
            .flatten()
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), self.ns());
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for n in names {
            match api.get_opt(&n).await {
                Ok(Some(s)) => found.push(s),
                Ok(None) => missing.push(n),
                Err(e) => missing.push(format!("{n} ({e})")),
            }
        }
        if !missing.is_empty() {
            self.event(
                "Warning",
                "FailedToRetrieveImagePullSecret",
                format!(
                    "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                    missing.join(", ")
                ),
                Some(container),
            );
        }
        found
    }

    async fn start_container(&mut self, i: usize, spec: &Container, sb: &Sandbox) {
        let name = spec.name.clone();
        let image = spec.image.clone().unwrap_or_default();
        let now = Instant::now();
        let pulled = self.ensure_image(&name, &image, PullPolicy::of(spec)).await;
        if let Ok(id) = &pulled {
            self.image_ids.insert(name.clone(), id.clone());
        }
        if let Err(e) = pulled {
            if e.reason != "ErrImageNeverPull" {
                self.event(
                    "Warning",
                    "Failed",
                    format!("Failed to pull image \"{image}\": {}", e.message),
                    Some(&name),
                );
            }
            self.records[i].on_start_failed(e.reason, e.message, now);
            // Kubernetes reports the back-off reason after the first failure.
            let repeated = self.records[i].backoff_failures() > 1;
            if let ContainerState::Waiting { reason, .. } = &mut self.records[i].state
                && *reason == "ErrImagePull"
                && repeated
            {
                *reason = "ImagePullBackOff".into();
                self.event(
                    "Normal",
                    "BackOff",
                    format!("Back-off pulling image \"{image}\""),
                    Some(&name),
                );
            }
            return;
        }
        let attempt = if self.records[i].ever_started {
            self.attempts.get(&name).copied().unwrap_or(0) + 1
        } else {
            self.attempts.get(&name).copied().unwrap_or(0)
        };
        let cfg = match self.container_config(spec, attempt).await {
            Ok(c) => c,
            Err(e) => {
                self.event("Warning", "Failed", format!("Error: {e}"), Some(&name));
                self.records[i].on_start_failed("CreateContainerConfigError", e.to_string(), now);
                return;
            }
        };
        match self.ctx.runtime.start_container(sb, &cfg).await {
            Ok(id) => {
                self.attempts.insert(name.clone(), attempt);
                self.event(
                    "Normal",
                    "Created",
                    format!("Created container {name}"),
                    Some(&name),
                );
                self.event(
                    "Normal",
                    "Started",
                    format!("Started container {name}"),
                    Some(&name),
                );
                let now = Instant::now();
                self.records[i].on_started(id.clone(), jiff::Timestamp::now(), now);
                if let Some(p) = self.readiness.get_mut(&name) {
                    p.reset(now);
                }
                if let Some(p) = self.liveness.get_mut(&name) {
                    p.reset(now);
                }
                self.view_mut().containers.insert(name, (Some(id), attempt));
                self.persist();
            }
            Err(e) => {
                self.attempts.insert(name.clone(), attempt);
                self.view_mut()
                    .containers
                    .insert(name.clone(), (None, attempt));
                self.event(
                    "Warning",
                    "Failed",
                    format!("Error: {}", e.message),
                    Some(&name),
                );
                self.records[i].on_start_failed(e.reason, e.message, now);
            }
        }
    }

    fn view_mut(&self) -> std::sync::MutexGuard<'_, PodView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The container's volume mounts and the pod's resolv.conf on `/etc/resolv.conf` (unless
    /// the container mounts something there itself, or the pod dir has no resolv.conf: a pod
    /// set up before the kubelet wrote one).
    fn mounts(&self, spec: &Container) -> Result<Vec<Mount>> {
        let mut mounts = volumes::mounts_for(spec, &self.volumes)?;
        let resolv = self.pod_dir.join("resolv.conf");
        let target = Path::new(dns::RESOLV_CONF);
        if resolv.is_file() && !mounts.iter().any(|m| m.container_path == target) {
            mounts.push(Mount {
                host_path: resolv,
                container_path: target.to_path_buf(),
                read_only: false,
            });
        }
        Ok(mounts)
    }

    async fn container_config(&self, spec: &Container, attempt: u32) -> Result<ContainerConfig> {
        let ns = self.ns().to_owned();
        let mut src = env::Sources {
            pod_ip: self.ip.map(|i| i.to_string()).unwrap_or_default(),
            host_ip: self.ctx.node_ip.to_string(),
            node_name: self.ctx.node_name.clone(),
            ..Default::default()
        };
        let mut secret_names = Vec::new();
        let mut cm_names = Vec::new();
        for e in spec.env.iter().flatten() {
            if let Some(vf) = &e.value_from {
                if let Some(s) = &vf.secret_key_ref {
                    secret_names.push(s.name.clone());
                }
                if let Some(c) = &vf.config_map_key_ref {
                    cm_names.push(c.name.clone());
                }
            }
        }
        for f in spec.env_from.iter().flatten() {
            if let Some(s) = &f.secret_ref {
                secret_names.push(s.name.clone());
            }
            if let Some(c) = &f.config_map_ref {
                cm_names.push(c.name.clone());
            }
        }
        for n in secret_names {
            if let Some(s) = Api::<Secret>::namespaced(self.ctx.client.clone(), &ns)
                .get_opt(&n)
                .await?
            {
                let d = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect();
                src.secrets.insert(n, d);
            }
        }
        for n in cm_names {
            if let Some(c) = Api::<ConfigMap>::namespaced(self.ctx.client.clone(), &ns)
                .get_opt(&n)
                .await?
            {
                src.config_maps.insert(n, c.data.unwrap_or_default());
            }
        }
        let links = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.enable_service_links)
            .unwrap_or(true);
        let services = self.ctx.services.list();
        let svc_refs: Vec<&k8s_openapi::api::core::v1::Service> = services
            .iter()
            .map(|s| s.as_ref())
            .filter(|s| {
                links
                    || (s.metadata.namespace.as_deref() == Some("default")
                        && s.metadata.name.as_deref() == Some("kubernetes"))
            })
            .collect();
        let svc_env = env::service_env(&ns, &svc_refs);
        let mut vars = env::container_env(&self.pod, spec, &svc_env, &src);
        if !vars.iter().any(|(k, _)| k == "HOSTNAME") {
            vars.push(("HOSTNAME".into(), self.name().to_owned()));
        }
        let lookup = |n: &str| {
            vars.iter()
                .rev()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        let command: Vec<String> = spec
            .command
            .iter()
            .flatten()
            .map(|s| env::expand(s, &lookup))
            .collect();
        let args: Vec<String> = spec
            .args
            .iter()
            .flatten()
            .map(|s| env::expand(s, &lookup))
            .collect();
        Ok(ContainerConfig {
            name: spec.name.clone(),
            attempt,
            image: spec.image.clone().unwrap_or_default(),
            command,
            args,
            env: vars.clone(),
            working_dir: spec.working_dir.clone(),
            mounts: self.mounts(spec)?,
            log_path: log_path(&self.pod_dir, &spec.name, attempt),
            resources: container_resources(spec),
            privileged: spec
                .security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false),
            stdin: spec.stdin.unwrap_or(false),
            stdin_once: spec.stdin_once.unwrap_or(false),
            tty: spec.tty.unwrap_or(false),
        })
    }

    fn condition(&mut self, t: &'static str, ok: bool, reason: Option<&str>) -> Value {
        let now = node_now();
        let e = self.since.entry(t).or_insert((ok, now.clone()));
        if e.0 != ok {
            *e = (ok, now);
        }
        let mut c = json!({"type": t, "status": if ok { "True" } else { "False" },
                           "lastProbeTime": null, "lastTransitionTime": e.1});
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        c
    }

    fn build_status(&mut self) -> Value {
        let phase = match &self.lifecycle {
            PodLifecycle::Finished(p) => *p,
            _ => pod_phase(&self.records),
        };
        let specs: Vec<Container> = containers_of(&self.pod).to_vec();
        let mut statuses = Vec::new();
        for (r, spec) in self.records.iter().zip(&specs) {
            let term_json = |t: &Termination| {
                let mut v = json!({"exitCode": t.exit_code, "reason": t.reason,
                    "startedAt": ts(t.started_at), "finishedAt": ts(t.finished_at),
                    "containerID": t.container_id});
                if let Some(s) = t.signal {
                    v["signal"] = json!(s);
                }
                v
            };
            let state = match &r.state {
                ContainerState::Waiting {
                    reason, message, ..
                } => {
                    let mut w = json!({"reason": reason});
                    if let Some(m) = message {
                        w["message"] = json!(m);
                    }
                    json!({"waiting": w})
                }
                ContainerState::Running { started_at, .. } => {
                    json!({"running": {"startedAt": ts(*started_at)}})
                }
                ContainerState::Terminated(t) => json!({"terminated": term_json(t)}),
            };
            let last = match (&r.state, &r.last_termination) {
                (ContainerState::Terminated(_), _) | (_, None) => json!({}),
                (_, Some(t)) => json!({"terminated": term_json(t)}),
            };
            let mut s = json!({
                "name": r.name, "image": spec.image.clone().unwrap_or_default(),
                "imageID": self.image_ids.get(&r.name).cloned().unwrap_or_default(),
                "ready": r.ready && matches!(r.state, ContainerState::Running { .. }),
                "started": matches!(r.state, ContainerState::Running { .. }),
                "restartCount": r.restart_count, "state": state, "lastState": last,
            });
            if let Some(id) = r.container_id() {
                s["containerID"] = json!(id);
            }
            statuses.push(s);
        }
        let all_ready = !self.records.is_empty()
            && self
                .records
                .iter()
                .all(|r| r.ready && matches!(r.state, ContainerState::Running { .. }));
        let finished = matches!(self.lifecycle, PodLifecycle::Finished(_));
        let not_ready_reason = if finished {
            Some("PodCompleted")
        } else if all_ready {
            None
        } else {
            Some("ContainersNotReady")
        };
        let conditions = json!([
            self.condition("PodReadyToStartContainers", self.sandbox.is_some(), None),
            self.condition("Initialized", true, None),
            self.condition("Ready", all_ready, not_ready_reason),
            self.condition("ContainersReady", all_ready, not_ready_reason),
            self.condition("PodScheduled", true, None),
        ]);
        let mut st = json!({
            "phase": phase.as_str(),
            "conditions": conditions,
            "hostIP": self.ctx.node_ip.to_string(),
            "hostIPs": [{"ip": self.ctx.node_ip.to_string()}],
            "containerStatuses": statuses,
            "qosClass": self.pod.spec.as_ref().map_or("BestEffort", xkube_api::qos::class),
        });
        if let Some(ip) = self.ip.filter(|_| self.sandbox.is_some() || finished) {
            st["podIP"] = json!(ip.to_string());
            st["podIPs"] = json!([{"ip": ip.to_string()}]);
        }
        if let Some(t) = &self.start_time {
            st["startTime"] = json!(t);
        }
        if let Some(e) = &self.sandbox_error {
            st["message"] = json!(e);
        }
        st
    }

    /// Writes the status if it changed; false when that failed.
    async fn push_status(&mut self) -> bool {
        if self.gone_from_api || matches!(self.lifecycle, PodLifecycle::Terminated) {
            return true;
        }
        let st = self.build_status();
        {
            let mut v = self.view_mut();
            v.pod = (*self.pod).clone();
            if let Ok(s) = serde_json::from_value(st.clone()) {
                v.pod.status = Some(s);
            }
        }
        if self.last_status.as_ref() == Some(&st) {
            return true;
        }
        let api = Api::<Pod>::namespaced(self.ctx.client.clone(), self.ns());
        match api
            .patch_status(self.name(), &Patch::Merge(json!({"status": st})))
            .await
        {
            Ok(_) => {
                self.last_status = Some(st);
                true
            }
            Err(e) if e.status().is_some_and(|s| s.code == 404) => true,
            Err(e) => {
                tracing::warn!(pod = %self.name(), error = %e, "updating pod status");
                false
            }
        }
    }
}

fn node_now() -> String {
    crate::node::now_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn containers(v: Value) -> Vec<Container> {
        serde_json::from_value(v).expect("containers")
    }

    #[test]
    fn container_resources_map_limits_and_requests() {
        let cs = containers(json!([
            {"name": "a", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"},
                                        "requests": {"cpu": "250m"}}},
            {"name": "b", "resources": {"limits": {"cpu": "2"}}},
            {"name": "c"},
        ]));
        let r: Vec<_> = cs.iter().map(container_resources).collect();
        assert_eq!(
            r[0],
            crate::runtime::Resources {
                cpu_limit_millis: Some(500),
                cpu_request_millis: Some(250),
                memory_limit: Some(64 << 20),
            }
        );
        assert_eq!(
            r[1].cpu_request_millis,
            Some(2000),
            "request defaults to the limit"
        );
        assert_eq!(r[2], crate::runtime::Resources::default());
    }

    #[test]
    fn pod_limits_need_every_container_limited() {
        let both = containers(json!([
            {"name": "a", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "64Mi"}}},
        ]));
        assert_eq!(
            pod_limits(&both),
            (Some("150000 100000".into()), Some(128 << 20))
        );
        let one = containers(json!([
            {"name": "a", "resources": {"limits": {"cpu": "500m"}}},
            {"name": "b"},
        ]));
        assert_eq!(pod_limits(&one), (None, None));
    }

    #[test]
    fn negative_quantities_are_no_limit() {
        assert_eq!(unsigned("-1", quantity::cpu_millis), None);
        assert_eq!(unsigned("0.5", quantity::cpu_millis), Some(500));
        assert_eq!(unsigned("0.5Mi", quantity::bytes), Some(1 << 19));
    }

    #[test]
    fn log_paths_follow_attempts() {
        let v = PodView {
            pod: Pod::default(),
            pod_dir: PathBuf::from("/r/pods/u"),
            containers: HashMap::from([("c".to_owned(), (None, 2))]),
            sandbox: None,
        };
        assert_eq!(
            v.log_path("c", false),
            Some(PathBuf::from("/r/pods/u/logs/c/2.log"))
        );
        assert_eq!(
            v.log_path("c", true),
            Some(PathBuf::from("/r/pods/u/logs/c/1.log"))
        );
        assert_eq!(v.log_path("x", false), None);
    }
}
