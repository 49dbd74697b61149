//! `xkube bench`: every proxy mode side by side on one local cluster (DESIGN.md section 7).
//!
//! Per-packet figures first: a private copy of the eBPF programs run with
//! `BPF_PROG_TEST_RUN` ([`xkube_proxy::ebpf::perpacket`]). Then one 2-node `xkube cluster up`
//! runs the binary that runs the bench (the report says which build). Two backends (agnhost)
//! are pinned to node1 and node2, each behind its own NodePort Service; a client pod runs on
//! node1. For each service count (ascending; the other services are real Services with
//! Endpoints, created through the API) the bench runs rounds; in each round the nodes' agents
//! are restarted into every mode in turn (`none`: proxies disabled, straight to the pod IPs)
//! and the load generator ([`load`]) measures keep-alive and new-connection request/response
//! and UDP over the routes of [`report::Route`]: from the client pod and from a host process
//! of node1 (each inside its namespace and cgroup) and from the external client. A cell
//! merges its rounds. Node CPU is read around a NodePort run, agent memory from `/proc`; in
//! the last round, programming latency (Service created -> first connection) and endpoint
//! changes -> applied are sampled, and the first restart per mode is the full-resync figure.
//! Everything is bounded in time and count, and the cluster is removed at the end, also on
//! failure.

pub mod load;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod stats;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use clap::Parser as _;
use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use xkube_client::Api;
use xkube_cluster::AgentProxy;
use xkube_proxy::{agent::ProxyMode, ebpf::perpacket};

use crate::{
    load::{Load, Workload},
    report::{Cell, Cost, EndpointChange, Machine, Programming, Results, Resync, Route},
    stats::{CpuSample, Summary},
};

/// Modes `xkube bench` knows; `none` is straight to the pod IP.
pub const MODES: [&str; 5] = ["none", "ebpf", "iptables", "nftables", "userspace"];

/// The services every run has: `default/kubernetes`, the two backends' and `bench-ep`.
pub const BENCH_SERVICES: usize = 4;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchOptions {
    /// Modes to measure, comma-separated: none (straight to the pod IP, no proxy on the
    /// nodes), ebpf, iptables, nftables, userspace.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,ebpf,iptables,nftables,userspace"
    )]
    pub modes: Vec<String>,
    /// Service counts, comma-separated (the bench's own 4 services included: a count below
    /// 4 means 4).
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    pub services: Vec<usize>,
    /// Where results.json, report.md and the plots go.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// A smoke run: services 4 and 100, 0.5 s per workload, 3 programming samples.
    #[arg(long)]
    pub quick: bool,
    /// Seconds per workload run (default 2, --quick 0.5).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Rounds per service count: each round restarts the nodes into every mode in turn and
    /// runs every workload once; a cell merges its rounds (default 3, --quick 1).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Concurrent clients of the N-client workloads.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Programming samples per mode and service count (default 20, --quick 3).
    #[arg(long)]
    pub programming_samples: Option<usize>,
    /// The local cluster's name (removed at the end).
    #[arg(long, default_value = "xkbench")]
    pub name: String,
    #[arg(long, default_value = xkube_cluster::DEFAULT_DATA_ROOT)]
    pub data_root: PathBuf,
}

impl BenchOptions {
    fn duration(&self) -> Duration {
        match (self.duration, self.quick) {
            (Some(s), _) => Duration::from_secs(s),
            (None, true) => Duration::from_millis(500),
            (None, false) => Duration::from_secs(2),
        }
    }

    fn rounds(&self) -> usize {
        self.rounds.unwrap_or(if self.quick { 1 } else { 3 }).max(1)
    }

    fn services(&self) -> Vec<usize> {
        let mut s: Vec<usize> = if self.quick && self.services == [1, 1000, 10000] {
            vec![BENCH_SERVICES, 100]
        } else {
            self.services
                .iter()
                .map(|n| (*n).max(BENCH_SERVICES))
                .collect()
        };
        s.sort_unstable();
        s.dedup();
        s
    }

    fn samples(&self) -> usize {
        self.programming_samples
            .unwrap_or(if self.quick { 3 } else { 20 })
    }
}

/// Checks the modes (a mode the proxy does not have is refused) and returns them.
pub fn parse_modes(modes: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for m in modes {
        let m = m.trim().to_ascii_lowercase();
        if !MODES.contains(&m.as_str()) {
            bail!(
                "mode {m:?} does not exist (yet): xkube bench measures {}",
                MODES.join(", ")
            );
        }
        if !out.contains(&m) {
            out.push(m);
        }
    }
    if out.is_empty() {
        bail!("no mode to measure");
    }
    Ok(out)
}

fn proxy_mode(m: &str) -> Option<ProxyMode> {
    match m {
        "ebpf" => Some(ProxyMode::Ebpf),
        "iptables" => Some(ProxyMode::Iptables),
        "nftables" => Some(ProxyMode::Nftables),
        "userspace" => Some(ProxyMode::Userspace),
        _ => None,
    }
}

fn machine(binary: &Path) -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let backend = std::process::Command::new("iptables")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let nft = std::process::Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    Machine {
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        nft_version: nft,
        cpu_model,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        iptables_backend: backend,
        binary: binary.display().to_string(),
        build: if binary.components().any(|c| c.as_os_str() == "release") {
            "release".into()
        } else if cfg!(debug_assertions) {
            "debug".into()
        } else {
            "release".into()
        },
    }
}

/// A progress bar on a terminal; a log line per phase otherwise (CI logs).
fn bar(len: u64, what: &str) -> ProgressBar {
    use std::io::IsTerminal as _;
    if !std::io::stderr().is_terminal() {
        eprintln!("xkube bench: {what}");
    }
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{spinner} {msg:48} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_message(what.to_string());
    b
}

/// A new message on `b` (and a log line when stderr is no terminal).
fn step(b: &ProgressBar, msg: String) {
    use std::io::IsTerminal as _;
    if !std::io::stderr().is_terminal() {
        eprintln!("xkube bench:   {msg}");
    }
    b.set_message(msg);
}

/// The cluster under test and what the bench made in it.
struct Bench {
    opts: BenchOptions,
    names: xkube_cluster::NameOptions,
    state: xkube_cluster::State,
    rt: tokio::runtime::Runtime,
    client: xkube_client::Client,
    /// node1's and node2's backend: pod IP, ClusterIP, NodePort.
    backends: [(Ipv4Addr, Ipv4Addr, u16); 2],
    /// The client pod on node1: its network namespace and cgroup.
    pod: (PathBuf, PathBuf),
    /// The ClusterIP of `bench-ep` (endpoint changes) and which backend it points at now.
    ep_service: Ipv4Addr,
    ep_at: usize,
    /// What the agents' proxies run now (none: restart them at the next switch).
    mode: Option<AgentProxy>,
    agent_pids: Vec<u32>,
    fillers: usize,
    /// Every round's runs, per cell.
    runs: BTreeMap<(String, usize, Route, Workload), load::Raw>,
    /// NodePort cost per (mode, services): requests, CPU seconds, agent RSS (last round).
    cost_runs: BTreeMap<(String, usize), (u64, f64, Vec<u64>)>,
}

/// Runs the bench (root); the cluster is removed at the end, also on failure.
pub fn run(opts: BenchOptions) -> anyhow::Result<Results> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("xkube bench needs root (network namespaces, eBPF, iptables)");
    }
    let modes = parse_modes(&opts.modes)?;
    let binary = std::env::current_exe().context("the running xkube binary")?;
    let names = xkube_cluster::NameOptions {
        name: opts.name.clone(),
        data_root: opts.data_root.clone(),
    };
    let first = modes
        .iter()
        .find_map(|m| proxy_mode(m))
        .unwrap_or(ProxyMode::Ebpf);
    let per_packet = if modes.iter().any(|m| m == "ebpf") {
        per_packet(&opts)?
    } else {
        Vec::new()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let up = {
        #[derive(clap::Parser)]
        struct Up {
            #[command(flatten)]
            up: xkube_cluster::UpOptions,
        }
        let data_root = opts.data_root.display().to_string();
        let bin = binary.display().to_string();
        Up::try_parse_from([
            "up",
            "--name",
            &opts.name,
            "--nodes",
            "2",
            "--proxy-mode",
            first.name(),
            "--data-root",
            &data_root,
            "--xkube",
            &bin,
        ])?
        .up
    };
    let spin = bar(1, "cluster up (2 nodes)");
    let state = rt.block_on(xkube_cluster::up(&up));
    spin.finish();
    let state = match state {
        Ok(s) => s,
        Err(e) => {
            let _ = xkube_cluster::down(&names);
            return Err(anyhow!("cluster up: {e}"));
        }
    };
    let res = (|| {
        let config = xkube_client::Config::load(Some(&state.kubeconfig), &Default::default())
            .map_err(|e| anyhow!("kubeconfig: {e}"))?;
        let client = xkube_client::Client::new(&config).map_err(|e| anyhow!("client: {e}"))?;
        let agent_pids = state
            .nodes
            .iter()
            .filter_map(|n| {
                state
                    .processes
                    .iter()
                    .find(|p| p.role == n.name)
                    .map(|p| p.pid)
            })
            .collect();
        let mut b = Bench {
            opts: opts.clone(),
            names: names.clone(),
            state: state.clone(),
            rt,
            client,
            backends: [(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, 0); 2],
            pod: (PathBuf::new(), PathBuf::new()),
            ep_service: Ipv4Addr::UNSPECIFIED,
            ep_at: 0,
            mode: Some(AgentProxy::Mode(first)),
            agent_pids,
            fillers: 0,
            runs: BTreeMap::new(),
            cost_runs: BTreeMap::new(),
        };
        b.measure(&modes, machine(&binary))
    })();
    if let Err(e) = xkube_cluster::down(&names) {
        tracing::warn!(error = %e, "removing the bench cluster");
    }
    let mut results = res?;
    results.per_packet = per_packet;
    results.targets = report::targets(&results);
    report::write(&opts.out, &results)?;
    Ok(results)
}

impl Bench {
    fn node_ns(&self, i: usize) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.state.nodes[i].namespace)
    }

    fn client_ns(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(format!("xkc-{}-client", self.opts.name))
    }

    fn load(&self) -> Load {
        Load {
            clients: self.opts.clients,
            duration: self.opts.duration(),
            max_ops: 2_000_000,
            timeout: Duration::from_secs(2),
        }
    }

    fn measure(&mut self, modes: &[String], machine: Machine) -> anyhow::Result<Results> {
        self.backends()?;
        let services = self.opts.services();
        let mut r = Results {
            machine,
            quick: self.opts.quick,
            modes: modes.to_vec(),
            services: services.clone(),
            ..Default::default()
        };
        let rounds = self.opts.rounds();
        for (i, n) in services.iter().enumerate() {
            if self.fillers_up_to(n.saturating_sub(BENCH_SERVICES))? || i == 0 {
                // Every mode starts from a fresh agent whose first sync saw every service.
                self.mode = None;
            }
            // Rounds interleave the modes, so that a slow drift of the machine (its other
            // load, the control plane still digesting the new services) spreads over all.
            for round in 0..rounds {
                for mode in modes {
                    if let Some(took) = self.switch(mode)?
                        && round == 0
                    {
                        self.resync(mode, *n, took, &mut r)?;
                    }
                    self.workloads(mode, *n, round, rounds)?;
                    if mode != "none" && round + 1 == rounds {
                        self.programming(mode, *n, &mut r)?;
                        self.endpoint_change(mode, *n, &mut r)?;
                    }
                }
            }
        }
        for ((mode, services, route, workload), raw) in &self.runs {
            r.cells.push(Cell {
                mode: mode.clone(),
                services: *services,
                route: *route,
                workload: *workload,
                summary: raw.summary(),
            });
        }
        for ((mode, services), (requests, cpu, rss)) in &self.cost_runs {
            r.costs.push(Cost {
                mode: mode.clone(),
                services: *services,
                requests: *requests,
                cpu_seconds: *cpu,
                cpu_per_1000: stats::cpu_per_1000(*cpu, *requests),
                requests_per_cpu_second: if *cpu > 0.0 {
                    *requests as f64 / cpu
                } else {
                    0.0
                },
                agent_rss_kib: rss.clone(),
            });
        }
        // In the order of the run: services, then modes.
        let order = |m: &str| modes.iter().position(|x| x == m).unwrap_or(usize::MAX);
        r.cells
            .sort_by_key(|c| (c.services, order(&c.mode), c.route, c.workload));
        r.costs.sort_by_key(|c| (c.services, order(&c.mode)));
        Ok(r)
    }

    /// Waits (at most 15 s) until the machine's CPUs are mostly idle over a quarter second,
    /// so that a run does not start while the control plane or an agent is still busy (not
    /// in a `--quick` run).
    fn settle(&self) {
        if self.opts.quick {
            return;
        }
        let sample = || -> Option<(u64, u64)> {
            let stat = std::fs::read_to_string("/proc/stat").ok()?;
            let cpu: Vec<u64> = stat
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            // idle + iowait
            let idle = cpu.get(3)? + cpu.get(4).copied().unwrap_or(0);
            Some((cpu.iter().sum(), idle))
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let Some((t0, i0)) = sample() else { return };
            std::thread::sleep(Duration::from_millis(250));
            let Some((t1, i1)) = sample() else { return };
            let total = t1.saturating_sub(t0).max(1);
            let busy = 1.0 - i1.saturating_sub(i0) as f64 / total as f64;
            if busy < 0.25 {
                return;
            }
        }
    }

    /// The two backends and their NodePort services.
    fn backends(&mut self) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "default");
        let svcs: Api<Service> = Api::namespaced(self.client.clone(), "default");
        let spin = bar(2, "backends on node1 and node2");
        for i in 0..2 {
            let node = self.state.nodes[i].name.clone();
            let name = format!("bench-n{}", i + 1);
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": {"app": name}},
                "spec": {"nodeName": node, "containers": [{
                    "name": "agnhost", "image": "xkube/agnhost:0.1.0",
                    "args": ["--http-port=8080", "--udp-port=8081"],
                    "ports": [{"name": "http", "containerPort": 8080},
                              {"name": "dns", "containerPort": 8081, "protocol": "UDP"}],
                    "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}
            }))?;
            let svc: Service = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"type": "NodePort", "selector": {"app": name}, "ports": [
                    {"name": "http", "port": 80, "targetPort": "http"},
                    {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"}]}
            }))?;
            self.rt
                .block_on(pods.create(&pod))
                .map_err(|e| anyhow!("pod {name}: {e}"))?;
            let svc = self
                .rt
                .block_on(svcs.create(&svc))
                .map_err(|e| anyhow!("service {name}: {e}"))?;
            let spec = svc.spec.unwrap_or_default();
            let cip: Ipv4Addr = spec.cluster_ip.unwrap_or_default().parse()?;
            let np = spec
                .ports
                .unwrap_or_default()
                .iter()
                .find(|p| p.name.as_deref() == Some("http"))
                .and_then(|p| p.node_port)
                .ok_or_else(|| anyhow!("{name}: no NodePort"))?;
            let ip: Ipv4Addr = self
                .ready(&name)?
                .status
                .and_then(|s| s.pod_ip)
                .unwrap_or_default()
                .parse()?;
            self.backends[i] = (ip, cip, u16::try_from(np)?);
            spin.inc(1);
        }
        spin.finish();
        self.client_pod()?;
        self.ep_service()
    }

    /// Waits until pod `name` is Ready; returns it.
    fn ready(&self, name: &str) -> anyhow::Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "default");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = self
                .rt
                .block_on(pods.get(name))
                .map_err(|e| anyhow!("pod {name}: {e}"))?;
            let status = p.status.clone().unwrap_or_default();
            let ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready && status.pod_ip.is_some() {
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!("pod {name} not ready within 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The client pod on node1 (the pod paths run in its network namespace and cgroup).
    fn client_pod(&mut self) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "default");
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bench-client"},
            "spec": {"nodeName": self.state.nodes[0].name, "containers": [{
                "name": "agnhost", "image": "xkube/agnhost:0.1.0",
                "args": ["--http-port=8080"],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}
        }))?;
        self.rt
            .block_on(pods.create(&pod))
            .map_err(|e| anyhow!("pod bench-client: {e}"))?;
        let pod = self.ready("bench-client")?;
        let uid = pod.metadata.uid.unwrap_or_default();
        let cgroup = self.state.nodes[0].cgroup.join(format!("pod{uid}"));
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs"))
            .with_context(|| format!("the client pod's cgroup {}", cgroup.display()))?;
        let pid: u32 = procs
            .lines()
            .find_map(|l| l.trim().parse().ok())
            .ok_or_else(|| anyhow!("no process in {}", cgroup.display()))?;
        self.pod = (PathBuf::from(format!("/proc/{pid}/ns/net")), cgroup);
        Ok(())
    }

    /// `bench-ep`: a Service whose only endpoint the endpoint-change samples move between
    /// the two backends.
    fn ep_service(&mut self) -> anyhow::Result<()> {
        let svcs: Api<Service> = Api::namespaced(self.client.clone(), "default");
        let eps: Api<Endpoints> = Api::namespaced(self.client.clone(), "default");
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bench-ep"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))?;
        let svc = self
            .rt
            .block_on(svcs.create(&svc))
            .map_err(|e| anyhow!("service bench-ep: {e}"))?;
        self.ep_service = svc
            .spec
            .and_then(|s| s.cluster_ip)
            .unwrap_or_default()
            .parse()?;
        self.rt
            .block_on(eps.create(&ep_endpoints(self.backends[0].0)))
            .map_err(|e| anyhow!("endpoints bench-ep: {e}"))?;
        self.ep_at = 0;
        Ok(())
    }

    /// Creates filler Services with Endpoints until there are `n`, 16 requests in flight.
    fn fillers_up_to(&mut self, n: usize) -> anyhow::Result<bool> {
        if n <= self.fillers {
            return Ok(false);
        }
        let spin = bar(
            (n - self.fillers) as u64,
            "creating Services with Endpoints",
        );
        let (from, client) = (self.fillers, self.client.clone());
        let pb = spin.clone();
        self.rt.block_on(async move {
            let mut tasks = Vec::new();
            for w in 0..16 {
                let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
                let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
                let pb = pb.clone();
                tasks.push(tokio::spawn(async move {
                    for i in (from + w..n).step_by(16) {
                        let svc: Service = serde_json::from_value(serde_json::json!({
                            "metadata": {"name": format!("filler-{i}")},
                            "spec": {"ports": [{"port": 80, "targetPort": 8080}]}}))?;
                        let ep: Endpoints = serde_json::from_value(serde_json::json!({
                            "metadata": {"name": format!("filler-{i}")},
                            "subsets": [{"addresses": [{"ip": format!("10.244.200.{}", i % 250 + 1)}],
                                         "ports": [{"port": 8080}]}]}))?;
                        svcs.create(&svc).await.map_err(|e| anyhow!("filler {i}: {e}"))?;
                        eps.create(&ep).await.map_err(|e| anyhow!("filler {i}: {e}"))?;
                        pb.inc(1);
                    }
                    anyhow::Ok(())
                }));
            }
            for t in tasks {
                t.await??;
            }
            anyhow::Ok(())
        })?;
        spin.finish();
        self.fillers = n;
        Ok(true)
    }

    /// Restarts both agents into `mode` (`none`: their proxies disabled, every mode's state
    /// removed) and waits until both serve; returns the time from the restart to serving when
    /// it restarted them into a proxy mode.
    fn switch(&mut self, mode: &str) -> anyhow::Result<Option<Duration>> {
        let want = proxy_mode(mode).map_or(AgentProxy::Disabled, AgentProxy::Mode);
        let started = Instant::now();
        let restarted = self.mode != Some(want);
        if restarted {
            let spin = bar(2, &format!("switching the nodes to {mode}"));
            for (i, n) in self.state.nodes.clone().iter().enumerate() {
                self.agent_pids[i] =
                    xkube_cluster::restart_agent(&self.names, &n.name, false, want)
                        .map_err(|e| anyhow!("restart {}: {e}", n.name))?;
                spin.inc(1);
            }
            spin.finish();
            self.mode = Some(want);
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        if want == AgentProxy::Disabled {
            // The pods answer on their own addresses.
            let pod = SocketAddrV4::new(self.backends[1].0, 8080);
            while !load::get_ok(&self.node_ns(0), pod, "/hostname", Duration::from_secs(1)) {
                if Instant::now() > deadline {
                    bail!("the backend on node2 does not answer on its pod IP");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            return Ok(None);
        }
        // Both proxies healthy (a sync since start) and the bench services answering.
        for i in 0..2 {
            let to = SocketAddrV4::new(self.state.nodes[i].addr, 10256);
            while !load::get_ok(&self.node_ns(i), to, "/healthz", Duration::from_secs(1)) {
                if Instant::now() > deadline {
                    bail!("node{}'s proxy not healthy in {mode} within 300 s", i + 1);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let nodeport = SocketAddrV4::new(self.state.nodes[0].addr, self.backends[1].2);
        while load::run(&self.client_ns(), Workload::Rr1, nodeport, self.probe())
            .map_or(true, |s| s.ok == 0)
        {
            if Instant::now() > deadline {
                bail!("the NodePort does not answer in {mode}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(restarted.then(|| started.elapsed()))
    }

    /// node1's proxy metrics (Prometheus text).
    fn proxy_metrics(&self) -> String {
        let to = SocketAddrV4::new(self.state.nodes[0].addr, 10249);
        load::get(&self.node_ns(0), to, "/metrics", Duration::from_secs(2)).unwrap_or_default()
    }

    /// Records a restart into `mode` with every service present and node1's full syncs since.
    fn resync(
        &mut self,
        mode: &str,
        n: usize,
        took: Duration,
        r: &mut Results,
    ) -> anyhow::Result<()> {
        let full = metrics::sum_count(
            &self.proxy_metrics(),
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
        );
        let (mean, syncs) = metrics::mean_ms_between(None, full);
        r.resyncs.push(Resync {
            mode: mode.to_string(),
            services: n,
            restart_to_serving_s: took.as_secs_f64(),
            proxy_full_sync_mean_ms: mean,
            proxy_full_syncs: syncs,
        });
        Ok(())
    }

    /// Moves `bench-ep`'s endpoint to the other backend `samples` times; each sample is the
    /// time from the update request until a new connection from node1's host reaches it.
    fn endpoint_change(&mut self, mode: &str, n: usize, r: &mut Results) -> anyhow::Result<()> {
        const PROGRAMMING: &str = "kubeproxy_network_programming_duration_seconds";
        let eps: Api<Endpoints> = Api::namespaced(self.client.clone(), "default");
        let samples = self.opts.samples();
        let spin = bar(
            samples as u64,
            &format!("{mode}, {n} services: endpoint changes"),
        );
        let before = metrics::sum_count(&self.proxy_metrics(), PROGRAMMING);
        let mut h = stats::histogram();
        let mut errors = 0;
        let started = Instant::now();
        let to = SocketAddrV4::new(self.ep_service, 80);
        for _ in 0..samples {
            let next = 1 - self.ep_at;
            let want = format!("bench-n{}", next + 1);
            let mut ep = ep_endpoints(self.backends[next].0);
            let current = self
                .rt
                .block_on(eps.get("bench-ep"))
                .map_err(|e| anyhow!("bench-ep: {e}"))?;
            ep.metadata.resource_version = current.metadata.resource_version;
            let t0 = Instant::now();
            self.rt
                .block_on(eps.replace("bench-ep", &ep))
                .map_err(|e| anyhow!("bench-ep: {e}"))?;
            self.ep_at = next;
            let deadline = t0 + Duration::from_secs(30);
            let ok = {
                let _inside = xkube_netns::cgroup::enter(&self.state.nodes[0].cgroup)
                    .map_err(|e| anyhow!("entering node1's cgroup: {e}"))?;
                loop {
                    let got = load::get(
                        &self.node_ns(0),
                        to,
                        "/hostname",
                        Duration::from_millis(200),
                    );
                    if got.is_ok_and(|b| b.trim() == want) {
                        break true;
                    }
                    if Instant::now() > deadline {
                        break false;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            };
            if ok {
                stats::record(&mut h, t0.elapsed());
            } else {
                errors += 1;
            }
            spin.inc(1);
        }
        spin.finish();
        // The proxy observes the change at its next sync; give the last one that long.
        std::thread::sleep(Duration::from_millis(200));
        let (proxy_mean_ms, proxy_observations) = metrics::mean_ms_between(
            before,
            metrics::sum_count(&self.proxy_metrics(), PROGRAMMING),
        );
        r.endpoint_changes.push(EndpointChange {
            mode: mode.to_string(),
            services: n,
            outside: Summary::new(&h, errors, started.elapsed()),
            proxy_mean_ms,
            proxy_observations,
        });
        Ok(())
    }

    /// One request, for readiness checks.
    fn probe(&self) -> Load {
        Load {
            clients: 1,
            duration: Duration::from_secs(2),
            max_ops: 1,
            timeout: Duration::from_secs(1),
        }
    }

    /// Runs `w` from node1's host (namespace and cgroup).
    fn run_on_node1(&self, w: Workload, to: SocketAddrV4) -> anyhow::Result<load::Raw> {
        let _inside = xkube_netns::cgroup::enter(&self.state.nodes[0].cgroup)
            .map_err(|e| anyhow!("entering node1's cgroup: {e}"))?;
        Ok(load::run_raw(&self.node_ns(0), w, to, self.load())?)
    }

    /// Runs `w` from the client pod on node1 (its namespace and cgroup).
    fn run_in_pod(&self, w: Workload, to: SocketAddrV4) -> anyhow::Result<load::Raw> {
        let _inside = xkube_netns::cgroup::enter(&self.pod.1)
            .map_err(|e| anyhow!("entering the client pod's cgroup: {e}"))?;
        Ok(load::run_raw(&self.pod.0, w, to, self.load())?)
    }

    fn cpu(&self) -> CpuSample {
        let cgroup_usec = self
            .state
            .nodes
            .iter()
            .filter_map(|n| std::fs::read_to_string(n.cgroup.join("cpu.stat")).ok())
            .filter_map(|s| stats::cgroup_usage_usec(&s))
            .sum();
        let softirq_ticks = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| stats::softirq_ticks(&s))
            .unwrap_or(0);
        CpuSample {
            cgroup_usec,
            softirq_ticks,
        }
    }

    fn workloads(
        &mut self,
        mode: &str,
        n: usize,
        round: usize,
        rounds: usize,
    ) -> anyhow::Result<()> {
        let none = mode == "none";
        let target = |i: usize, udp: bool| -> SocketAddrV4 {
            let (pod, cip, _) = self.backends[i];
            match (none, udp) {
                (true, false) => SocketAddrV4::new(pod, 8080),
                (true, true) => SocketAddrV4::new(pod, 8081),
                (false, false) => SocketAddrV4::new(cip, 80),
                (false, true) => SocketAddrV4::new(cip, 53),
            }
        };
        let mut plan: Vec<(Route, Workload)> = vec![
            (Route::PodToRemote, Workload::Rr1),
            (Route::PodToRemote, Workload::RrN),
            (Route::PodToRemote, Workload::Crr),
            (Route::PodToLocal, Workload::Rr1),
            (Route::PodToLocal, Workload::Crr),
            (Route::HostToRemote, Workload::Rr1),
            (Route::HostToRemote, Workload::RrN),
            (Route::HostToRemote, Workload::Crr),
            (Route::HostToRemote, Workload::Udp),
            (Route::HostToLocal, Workload::Rr1),
            (Route::HostToLocal, Workload::Crr),
        ];
        if !none {
            plan.extend([
                (Route::NodePortLocal, Workload::Rr1),
                (Route::NodePortRemote, Workload::Rr1),
                (Route::NodePortRemote, Workload::RrN),
                (Route::NodePortRemote, Workload::Crr),
            ]);
        }
        let spin = bar(
            plan.len() as u64,
            &format!(
                "{mode}, {n} services: workloads, round {}/{rounds}",
                round + 1
            ),
        );
        for (route, w) in plan {
            step(
                &spin,
                format!("{mode}, {n} services: {} {}", w.name(), route.describe()),
            );
            let udp = w == Workload::Udp;
            self.settle();
            let raw = match route {
                Route::PodToLocal => self.run_in_pod(w, target(0, udp))?,
                Route::PodToRemote => self.run_in_pod(w, target(1, udp))?,
                Route::HostToLocal => self.run_on_node1(w, target(0, udp))?,
                Route::HostToRemote => self.run_on_node1(w, target(1, udp))?,
                Route::NodePortLocal | Route::NodePortRemote => {
                    let backend = usize::from(route == Route::NodePortRemote);
                    let to = SocketAddrV4::new(self.state.nodes[0].addr, self.backends[backend].2);
                    let cost = route == Route::NodePortRemote && w == Workload::RrN;
                    let before = self.cpu();
                    let raw = load::run_raw(&self.client_ns(), w, to, self.load())?;
                    if cost {
                        let cpu = stats::cpu_seconds(&before, &self.cpu(), 100);
                        let rss = self.agent_pids.iter().map(|p| rss_kib(*p)).collect();
                        let c = self.cost_runs.entry((mode.to_string(), n)).or_insert((
                            0,
                            0.0,
                            Vec::new(),
                        ));
                        c.0 += raw.hist.len();
                        c.1 += cpu;
                        c.2 = rss;
                    }
                    raw
                }
            };
            let summary = raw.summary();
            if summary.ok == 0 {
                bail!(
                    "{mode}, {n} services, {} {}: every operation failed ({} errors)",
                    w.name(),
                    route.describe(),
                    summary.errors
                );
            }
            match self.runs.entry((mode.to_string(), n, route, w)) {
                std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().merge(&raw)?,
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(raw);
                }
            }
            spin.inc(1);
        }
        spin.finish();
        Ok(())
    }

    /// Service created -> first successful connection from node1's host, `samples` times.
    fn programming(&mut self, mode: &str, n: usize, r: &mut Results) -> anyhow::Result<()> {
        let svcs: Api<Service> = Api::namespaced(self.client.clone(), "default");
        let eps: Api<Endpoints> = Api::namespaced(self.client.clone(), "default");
        let samples = self.opts.samples();
        let spin = bar(
            samples as u64,
            &format!("{mode}, {n} services: programming"),
        );
        let mut h = stats::histogram();
        let mut errors = 0;
        let started = Instant::now();
        let backend = self.backends[1].0;
        for k in 0..samples {
            let name = format!("prog-{mode}-{n}-{k}");
            let svc: Service = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))?;
            let ep: Endpoints = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "subsets": [{"addresses": [{"ip": backend.to_string()}],
                             "ports": [{"name": "http", "port": 8080}]}]}))?;
            let t0 = Instant::now();
            let created = self
                .rt
                .block_on(svcs.create(&svc))
                .map_err(|e| anyhow!("{name}: {e}"))?;
            self.rt
                .block_on(eps.create(&ep))
                .map_err(|e| anyhow!("{name}: {e}"))?;
            let cip: Ipv4Addr = created
                .spec
                .and_then(|s| s.cluster_ip)
                .unwrap_or_default()
                .parse()?;
            let to = SocketAddrV4::new(cip, 80);
            let once = Load {
                clients: 1,
                duration: Duration::from_secs(1),
                max_ops: 1,
                // The resolution of the sample: a SYN to an address not programmed yet is
                // lost, and the next attempt starts after this.
                timeout: Duration::from_millis(50),
            };
            let deadline = t0 + Duration::from_secs(60);
            let ok = {
                let _inside = xkube_netns::cgroup::enter(&self.state.nodes[0].cgroup)
                    .map_err(|e| anyhow!("entering node1's cgroup: {e}"))?;
                loop {
                    if load::run(&self.node_ns(0), Workload::Crr, to, once).is_ok_and(|s| s.ok == 1)
                    {
                        break true;
                    }
                    if Instant::now() > deadline {
                        break false;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            };
            if ok {
                stats::record(&mut h, t0.elapsed());
            } else {
                errors += 1;
            }
            let _ = self
                .rt
                .block_on(svcs.delete(&name, &xkube_client::DeleteParams::default()));
            spin.inc(1);
        }
        spin.finish();
        r.programming.push(Programming {
            mode: mode.to_string(),
            services: n,
            summary: Summary::new(&h, errors, started.elapsed()),
        });
        Ok(())
    }
}

/// `bench-ep`'s Endpoints: one address, stamped with the time of the change (the proxy's
/// network programming latency starts there).
fn ep_endpoints(ip: Ipv4Addr) -> Endpoints {
    let mut ep = Endpoints::default();
    ep.metadata.name = Some("bench-ep".into());
    ep.metadata.annotations = Some(
        [(
            "endpoints.kubernetes.io/last-change-trigger-time".to_string(),
            jiff::Timestamp::now().to_string(),
        )]
        .into(),
    );
    ep.subsets = Some(vec![k8s_openapi::api::core::v1::EndpointSubset {
        addresses: Some(vec![k8s_openapi::api::core::v1::EndpointAddress {
            ip: ip.to_string(),
            ..Default::default()
        }]),
        ports: Some(vec![k8s_openapi::api::core::v1::EndpointPort {
            name: Some("http".into()),
            port: 8080,
            ..Default::default()
        }]),
        ..Default::default()
    }]);
    ep
}

/// Per-packet figures of the eBPF programs for each service count (and 100k frontends in a
/// full run), before the cluster exists.
fn per_packet(opts: &BenchOptions) -> anyhow::Result<Vec<perpacket::Row>> {
    let mut sizes: Vec<u32> = opts
        .services()
        .iter()
        .map(|n| u32::try_from(*n).unwrap_or(u32::MAX))
        .collect();
    if !opts.quick && !sizes.contains(&100_000) {
        sizes.push(100_000);
    }
    let calls = if opts.quick { 2_000 } else { 20_000 };
    let spin = bar(sizes.len() as u64, "per packet (eBPF, BPF_PROG_TEST_RUN)");
    let mut rows = Vec::new();
    for n in sizes {
        step(&spin, format!("per packet: {n} frontends"));
        rows.push(
            perpacket::measure(perpacket::Size::frontends(n), calls)
                .map_err(|e| anyhow!("per packet, {n} frontends: {e}"))?,
        );
        spin.inc(1);
    }
    spin.finish();
    Ok(rows)
}

/// Resident memory of `pid`, KiB (0 when gone).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_modes_are_refused_with_the_known_ones() {
        assert_eq!(
            parse_modes(&["EBPF".into(), "none".into(), "ebpf".into()]).expect("modes"),
            ["ebpf", "none"]
        );
        let e = parse_modes(&["ipvs".into()]).expect_err("no such mode");
        assert!(e.to_string().contains("\"ipvs\" does not exist"), "{e}");
        assert!(
            e.to_string()
                .contains("none, ebpf, iptables, nftables, userspace"),
            "{e}"
        );
    }
}
