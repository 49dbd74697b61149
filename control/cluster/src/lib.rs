//! `xkube cluster up|down|status`: a real multi-node cluster on one machine, built from network
//! namespaces (DESIGN.md section 6).
//!
//! ```text
//! host ── xk<name>h (198.18.0.1/24) ──┐
//!                                      fabric ns: bridge br0
//!   control plane ns (198.18.0.2): xkube server (apiserver :6443 + controllers + scheduler)
//!   node ns i      (198.18.0.(10+i)): xkube agent (kubelet + proxy), pods on cbr0
//!                  (--runtime docker: also the node's own dockerd, see `docker`)
//!   client ns      (198.18.0.100): the "outside machine"
//! ```
//! The host reaches the fabric through one veth and a /24 route; no route for service or pod
//! ranges exists in the host namespace and the fabric has no way out. Names derive from the
//! cluster name, so `up` first removes a stale cluster of the same name and `down` finds
//! everything again; the state file records what was made.

use std::{
    fs::{File, OpenOptions},
    net::Ipv4Addr,
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use xkube_netns::{NetNs, cgroup, sysctl, veth_pair};

pub mod dns;
pub mod docker;
pub mod exec;
pub mod registry;

pub const FABRIC_PREFIX: u8 = 24;
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CONTROL_PLANE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
pub const DEFAULT_DATA_ROOT: &str = "/var/lib/xkube/clusters";
pub const APISERVER_PORT: u16 = xkube_api::cluster::APISERVER_PORT;

/// The address of node `i` (0-based).
pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 11 + i as u8)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("network setup: {0}")]
    Net(#[from] xkube_netns::Error),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("timed out after {secs} s waiting for {what}; see the logs in {logs}")]
    Timeout {
        what: String,
        secs: u64,
        logs: PathBuf,
    },
    #[error("state file {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Runtime {
    Process,
    Docker,
}

#[derive(clap::Args, Debug, Clone)]
pub struct UpOptions {
    /// Cluster name (namespaces, links and data are named after it; at most 8 characters).
    #[arg(long, default_value = "xk")]
    pub name: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=20))]
    pub nodes: u8,
    /// Container runtime of the nodes.
    #[arg(long, value_enum, default_value_t = Runtime::Process)]
    pub runtime: Runtime,
    /// Service proxy mode of the nodes.
    #[arg(long, value_enum, default_value_t = xkube_proxy::agent::ProxyMode::Ebpf)]
    pub proxy_mode: xkube_proxy::agent::ProxyMode,
    /// Where cluster data (control-plane store, kubeconfig, logs) lives.
    #[arg(long, default_value = DEFAULT_DATA_ROOT)]
    pub data_root: PathBuf,
    /// The xkube binary to run inside the namespaces (default: this one).
    #[arg(long)]
    pub xkube: Option<PathBuf>,
    /// Seconds to wait for the control plane and the nodes.
    #[arg(long, default_value_t = 90)]
    pub timeout: u64,
    /// Run only the kubelet on the nodes (no proxy): deploy the proxy yourself, e.g. as the
    /// DaemonSet in deploy/daemonset/.
    #[arg(long, conflicts_with = "proxy_mode")]
    pub kubelet_only: bool,
    /// How long a node may miss heartbeats before the control plane marks it Unknown.
    #[arg(long, default_value = "40s")]
    pub node_monitor_grace_period: String,
    /// How long pods stay on an Unknown node before they are evicted.
    #[arg(long, default_value = "5m")]
    pub pod_eviction_timeout: String,
    /// The nodes' heartbeat period (a duration, as the kubelet's flag).
    #[arg(long, default_value = "10s", value_parser = xkube_api::duration::parse)]
    pub node_status_update_frequency: Duration,
    /// Deploy cluster DNS (deploy/dns/kube-dns.yaml: Service kube-system/kube-dns at
    /// 10.96.0.10 and the kube-dns Deployment of `xkube dns` pods); the kubelets point pods
    /// at it either way.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub dns: bool,
    /// Run a registry (CNCF Distribution) on the fabric at 198.18.0.3:5000, trusted by every
    /// node's engine over plain HTTP (that address only); push to it with a node's engine.
    #[arg(long)]
    pub registry: bool,
    /// An htpasswd file (bcrypt entries, `htpasswd -B`): the registry then asks for basic
    /// auth, and pods pull with an imagePullSecret.
    #[arg(long, requires = "registry")]
    pub registry_htpasswd: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct NameOptions {
    /// Cluster name.
    #[arg(long, default_value = "xk")]
    pub name: String,
    #[arg(long, default_value = DEFAULT_DATA_ROOT)]
    pub data_root: PathBuf,
}

/// What `up` made, recorded for `down` and `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    pub namespaces: Vec<String>,
    pub host_link: String,
    pub cgroups: Vec<PathBuf>,
    pub processes: Vec<Proc>,
    pub nodes: Vec<NodeState>,
    pub kubeconfig: PathBuf,
    pub bpf_pins: Vec<PathBuf>,
    /// The nodes' Docker Engines (`--runtime docker`).
    #[serde(default)]
    pub engines: Vec<docker::Engine>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proc {
    pub role: String,
    pub pid: u32,
    pub log: PathBuf,
    /// The command line, to restart it.
    #[serde(default)]
    pub argv: Vec<String>,
    #[serde(default)]
    pub netns: String,
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub namespace: String,
    pub addr: Ipv4Addr,
    pub cgroup: PathBuf,
}

/// Names derived from the cluster name.
pub struct Names {
    pub cluster: String,
}

impl Names {
    pub fn new(cluster: &str) -> Result<Self> {
        if cluster.is_empty()
            || cluster.len() > 8
            || !cluster
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(Error::Invalid(format!(
                "cluster name {cluster:?}: 1-8 lowercase letters or digits (it is part of \
                 interface names, which are limited to 15 bytes)"
            )));
        }
        Ok(Self {
            cluster: cluster.to_owned(),
        })
    }
    pub fn fabric(&self) -> String {
        format!("xkc-{}-fabric", self.cluster)
    }
    pub fn control_plane(&self) -> String {
        format!("xkc-{}-cp", self.cluster)
    }
    pub fn client(&self) -> String {
        format!("xkc-{}-client", self.cluster)
    }
    pub fn registry(&self) -> String {
        format!("xkc-{}-reg", self.cluster)
    }
    pub fn node_ns(&self, i: usize) -> String {
        format!("xkc-{}-node{}", self.cluster, i + 1)
    }
    pub fn node(&self, i: usize) -> String {
        format!("{}-node{}", self.cluster, i + 1)
    }
    pub fn host_link(&self) -> String {
        format!("xk{}h", self.cluster)
    }
    pub fn cgroup_root(&self) -> Result<PathBuf> {
        Ok(cgroup::v2_root()?.join(format!("xkube-{}", self.cluster)))
    }
    pub fn data_dir(&self, root: &Path) -> PathBuf {
        root.join(&self.cluster)
    }
}

fn say(msg: impl AsRef<str>) {
    println!("{}", msg.as_ref());
}

/// Brings a cluster up and returns its state. A stale cluster of the same name is removed
/// first. On failure everything made so far is removed again.
pub async fn up(opts: &UpOptions) -> Result<State> {
    let names = Names::new(&opts.name)?;
    let data = names.data_dir(&opts.data_root);
    if data.join("state.json").exists()
        || Path::new(xkube_netns::NETNS_DIR)
            .join(names.fabric())
            .exists()
    {
        say(format!("removing the previous cluster {:?}", opts.name));
        down(&NameOptions {
            name: opts.name.clone(),
            data_root: opts.data_root.clone(),
        })?;
    }
    // A new cluster starts from an empty store and fresh node directories.
    if data.exists() {
        unmount_under(&data);
        std::fs::remove_dir_all(&data).map_err(io("remove", &data))?;
    }
    let mut state = State {
        name: opts.name.clone(),
        host_link: names.host_link(),
        ..Default::default()
    };
    match build(opts, &names, &data, &mut state).await {
        Ok(()) => Ok(state),
        Err(e) => {
            let _ = save(&data, &state);
            let _ = teardown(&state, &data);
            Err(e)
        }
    }
}

fn save(data: &Path, state: &State) -> Result<()> {
    std::fs::create_dir_all(data).map_err(io("create directory", data))?;
    let path = data.join("state.json");
    let text = serde_json::to_string_pretty(state).map_err(|source| Error::State {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, text).map_err(io("write", &path))
}

async fn build(opts: &UpOptions, names: &Names, data: &Path, state: &mut State) -> Result<()> {
    let n = usize::from(opts.nodes);
    let xkube = match &opts.xkube {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(io("locate", Path::new("xkube")))?,
    };
    let logs = data.join("logs");
    std::fs::create_dir_all(&logs).map_err(io("create directory", &logs))?;

    say(format!(
        "[1/6] network: fabric, control plane, {n} node(s), client (198.18.0.0/24)"
    ));
    if let Some(other) = host_link_with(HOST_ADDR) {
        return Err(Error::Invalid(format!(
            "another cluster's fabric is attached to this host ({other} has {HOST_ADDR}); \
             one cluster at a time: `xkube cluster down` it first"
        )));
    }
    let fabric = named(names.fabric(), state)?;
    fabric.add_bridge("br0")?;
    let host = NetNs::current();
    veth_pair(&host, &names.host_link(), &fabric, "host")?;
    fabric.enslave("host", "br0")?;
    host.configure(&names.host_link(), HOST_ADDR, FABRIC_PREFIX)?;
    let attach = |ns: &NetNs, port: &str, addr: Ipv4Addr| -> Result<()> {
        veth_pair(ns, "eth0", &fabric, port)?;
        fabric.enslave(port, "br0")?;
        ns.configure("eth0", addr, FABRIC_PREFIX)?;
        // Senders on veth must compute full checksums for the XDP dataplane
        // (docs/decisions.md).
        ns.set_tx_checksum("eth0", false)?;
        Ok(())
    };
    let cp = named(names.control_plane(), state)?;
    attach(&cp, "cp", CONTROL_PLANE_ADDR)?;
    let client = named(names.client(), state)?;
    attach(&client, "client", CLIENT_ADDR)?;
    if opts.registry {
        let reg = named(names.registry(), state)?;
        attach(&reg, "reg", registry::REGISTRY_ADDR)?;
        let mut cmd = registry::command(data, opts.registry_htpasswd.as_deref())?;
        let log = logs.join("registry.log");
        let pid = spawn_in(reg.path(), None, &mut cmd, &log, "registry")?;
        state.processes.push(Proc {
            role: "registry".into(),
            pid,
            log: log.clone(),
            argv: argv(&cmd),
            netns: reg.name().to_owned(),
            cgroup: None,
        });
        save(data, state)?;
        registry::wait(Duration::from_secs(opts.timeout), &log)?;
        say(format!(
            "      registry: {}{} (push with a node's engine: docker -H unix://<data>/<node>-docker.sock push {}/IMAGE)",
            registry::host(),
            if opts.registry_htpasswd.is_some() {
                ", basic auth"
            } else {
                ""
            },
            registry::host()
        ));
    }
    let cg_root = names.cgroup_root()?;
    std::fs::create_dir_all(&cg_root).map_err(io("create cgroup", &cg_root))?;
    state.cgroups.push(cg_root.clone());
    let mut nodes = Vec::new();
    // Native XDP_TX on a node uplink needs an XDP program on the fabric end of the veth.
    let fabric_pins = PathBuf::from(xkube_proxy::ebpf::datapath::PIN_ROOT)
        .join(format!("{}-fabric", names.cluster));
    state.bpf_pins.push(fabric_pins.clone());
    for i in 0..n {
        let ns = named(names.node_ns(i), state)?;
        let port = format!("n{}", i + 1);
        attach(&ns, &port, node_addr(i))?;
        fabric
            .run(|| {
                xkube_proxy::ebpf::datapath::attach_pass(
                    &fabric_pins,
                    &port,
                    aya::programs::XdpMode::Driver,
                )
            })?
            .map_err(|e| Error::Invalid(format!("XDP pass program on fabric port {port}: {e}")))?;
        sysctl::set(&ns, "net/ipv4/ip_forward", "1")?;
        if !opts.kubelet_only && opts.proxy_mode != xkube_proxy::agent::ProxyMode::Ebpf {
            netfilter_mode_node(&ns)?;
        }
        // Named like the node, so a DaemonSet can find its node's cgroup from `spec.nodeName`.
        let cg = cg_root.join(names.node(i));
        std::fs::create_dir_all(&cg).map_err(io("create cgroup", &cg))?;
        // Child cgroups (pods) need the controllers delegated.
        let _ = std::fs::write(cg_root.join("cgroup.subtree_control"), "+cpu +memory +pids");
        state.cgroups.insert(0, cg.clone());
        state.nodes.push(NodeState {
            name: names.node(i),
            namespace: ns.name().to_owned(),
            addr: node_addr(i),
            cgroup: cg,
        });
        state
            .bpf_pins
            .push(PathBuf::from(xkube_proxy::ebpf::datapath::PIN_ROOT).join(names.node(i)));
        nodes.push(ns);
    }
    save(data, state)?;

    say("[2/6] control plane: xkube server (apiserver on 198.18.0.2:6443, controllers, scheduler)");
    let cp_data = data.join("control-plane");
    let kubeconfig = cp_data.join("admin.kubeconfig");
    let _ = std::fs::remove_file(&kubeconfig);
    let mut cmd = Command::new(&xkube);
    cmd.args(["server", "--data-dir"]).arg(&cp_data).args([
        "--bind-address",
        &CONTROL_PLANE_ADDR.to_string(),
        "--secure-port",
        &APISERVER_PORT.to_string(),
        "--node-monitor-grace-period",
        &opts.node_monitor_grace_period,
        "--pod-eviction-timeout",
        &opts.pod_eviction_timeout,
    ]);
    let log = logs.join("control-plane.log");
    let pid = spawn_in(cp.path(), None, &mut cmd, &log, "control plane")?;
    state.processes.push(Proc {
        role: "control-plane".into(),
        pid,
        log: log.clone(),
        argv: argv(&cmd),
        netns: cp.name().to_owned(),
        cgroup: None,
    });
    state.kubeconfig = kubeconfig.clone();
    save(data, state)?;
    wait_for(
        opts.timeout,
        "the apiserver's admin kubeconfig",
        &logs,
        || async { kubeconfig.exists() },
    )
    .await?;
    let client_api = {
        let config = xkube_client::Config::load(Some(&kubeconfig), &Default::default())
            .map_err(|e| Error::Invalid(format!("reading {}: {e}", kubeconfig.display())))?;
        xkube_client::Client::new(&config)
            .map_err(|e| Error::Invalid(format!("client for {}: {e}", kubeconfig.display())))?
    };
    wait_for(opts.timeout, "the apiserver to answer", &logs, || {
        let c = client_api.clone();
        async move {
            c.request(reqwest::Method::GET, "/readyz")
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await?;

    if opts.runtime == Runtime::Docker {
        start_engines(opts, &xkube, &nodes, data, state).await?;
    }

    // Each node's own identities, from the cluster CA the apiserver made.
    let pki = xkube_apiserver::pki::Pki::layout(&cp_data);
    let server_url = format!("https://{CONTROL_PLANE_ADDR}:{APISERVER_PORT}");
    let mut certs = Vec::new();
    for node in &state.nodes {
        let files = NodeCerts::layout(data, &node.name);
        files.issue(&pki, &server_url, &node.name, node.addr)?;
        certs.push(files);
    }

    if opts.kubelet_only {
        say(format!(
            "[3/6] nodes: xkube kubelet (no proxy) on {n} node(s)"
        ));
    } else {
        say(format!(
            "[3/6] nodes: xkube agent (kubelet + {:?} proxy) on {n} node(s)",
            opts.proxy_mode
        )
        .to_lowercase());
    }
    for (i, ns) in nodes.iter().enumerate() {
        let node = &state.nodes[i];
        let mut cmd = Command::new(&xkube);
        cmd.arg(if opts.kubelet_only {
            "kubelet"
        } else {
            "agent"
        })
        .arg("--kubeconfig")
        .arg(&certs[i].kubelet_kubeconfig)
        .arg("--tls-cert-file")
        .arg(&certs[i].serving_cert)
        .arg("--tls-private-key-file")
        .arg(&certs[i].serving_key)
        .arg("--client-ca-file")
        .arg(&pki.ca_cert)
        .args([
            "--node-name",
            &node.name,
            "--node-ip",
            &node.addr.to_string(),
        ])
        .arg("--root-dir")
        .arg(data.join(&node.name))
        .arg("--runtime")
        .arg(match opts.runtime {
            Runtime::Process => "process",
            Runtime::Docker => "docker",
        })
        .arg("--cgroup-root")
        .arg(&node.cgroup);
        cmd.arg("--node-status-update-frequency").arg(format!(
            "{}ms",
            opts.node_status_update_frequency.as_millis()
        ));
        // Without cluster DNS (--dns false) pods keep the node's resolvers (Kubernetes'
        // ClusterFirst falls back to Default without --cluster-dns).
        if opts.dns {
            cmd.arg("--cluster-dns")
                .arg(dns::service_ip().to_string())
                .arg("--cluster-domain")
                .arg(dns::CLUSTER_DOMAIN);
        }
        if !opts.kubelet_only {
            cmd.arg("--proxy-kubeconfig")
                .arg(&certs[i].proxy_kubeconfig)
                .arg("--proxy-mode")
                .arg(opts.proxy_mode.name());
        }
        if let Some(engine) = state.engines.get(i) {
            cmd.arg("--docker-endpoint").arg(engine.endpoint());
        }
        let log = logs.join(format!("{}.log", node.name));
        let pid = spawn_in(ns.path(), Some(&node.cgroup), &mut cmd, &log, &node.name)?;
        state.processes.push(Proc {
            role: node.name.clone(),
            pid,
            log,
            argv: argv(&cmd),
            netns: ns.name().to_owned(),
            cgroup: Some(node.cgroup.clone()),
        });
    }
    save(data, state)?;

    say("[4/6] waiting for the nodes to be Ready");
    let nodes_api: xkube_client::Api<k8s_openapi::api::core::v1::Node> =
        xkube_client::Api::all(client_api.clone());
    let want = n;
    wait_for(opts.timeout, "every node to be Ready", &logs, || {
        let api = nodes_api.clone();
        async move {
            api.list(&Default::default()).await.is_ok_and(|l| {
                l.items
                    .iter()
                    .filter(|n| {
                        n.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                    })
                    .count()
                    >= want
            })
        }
    })
    .await?;

    if opts.dns {
        say(format!(
            "[5/6] cluster DNS: Service kube-system/kube-dns ({}), Deployment kube-dns",
            dns::service_ip()
        ));
        dns::deploy(&client_api).await?;
        if opts.kubelet_only {
            // Its pods reach the apiserver through the `kubernetes` Service: they become
            // ready once a proxy is deployed.
            say("      (no proxy yet: kube-dns becomes available once one runs)");
        } else {
            let c = client_api.clone();
            wait_for(
                opts.timeout,
                "the kube-dns Deployment to be available",
                &logs,
                || {
                    let c = c.clone();
                    async move { dns::available(&c).await }
                },
            )
            .await?;
        }
    } else {
        say("[5/6] cluster DNS: not deployed (--dns false)");
    }

    say(format!(
        "[6/6] cluster {:?} is up: kubeconfig {}\n      xkubectl --kubeconfig {1} get nodes   (or kubectl)\n      client namespace: ip netns exec {} ...",
        opts.name,
        kubeconfig.display(),
        names.client()
    ));
    Ok(())
}

/// The credentials `cluster up` issues a node from the cluster CA, under the node's data dir
/// (the kubelet's root dir).
#[derive(Debug, Clone)]
pub struct NodeCerts {
    /// The kubelet's kubeconfig: user `system:node:<node>` in group `system:nodes` (what the
    /// Node authorizer recognises).
    pub kubelet_kubeconfig: PathBuf,
    /// The proxy's kubeconfig: user `system:kube-proxy` (bound to `system:node-proxier`).
    pub proxy_kubeconfig: PathBuf,
    /// The kubelet API's serving certificate (`system:node:<node>`, SANs: node IP and name).
    pub serving_cert: PathBuf,
    /// Its key.
    pub serving_key: PathBuf,
}

impl NodeCerts {
    /// The files of node `node` under the cluster data dir `data`.
    pub fn layout(data: &Path, node: &str) -> Self {
        let dir = data.join(node);
        NodeCerts {
            kubelet_kubeconfig: dir.join("kubelet.kubeconfig"),
            proxy_kubeconfig: dir.join("proxy.kubeconfig"),
            serving_cert: dir.join("pki/kubelet-serving.crt"),
            serving_key: dir.join("pki/kubelet-serving.key"),
        }
    }

    /// Issues the files from `pki`'s CA for node `node` at `addr`; the kubeconfigs point at
    /// `server`.
    pub fn issue(
        &self,
        pki: &xkube_apiserver::pki::Pki,
        server: &str,
        node: &str,
        addr: Ipv4Addr,
    ) -> Result<()> {
        let failed = |what: &str, e: xkube_apiserver::Error| {
            Error::Invalid(format!("issuing the {what} of node {node}: {e}"))
        };
        let user = format!("system:node:{node}");
        pki.issue_kubeconfig(&self.kubelet_kubeconfig, server, &user, &["system:nodes"])
            .map_err(|e| failed("kubelet kubeconfig", e))?;
        pki.issue_kubeconfig(&self.proxy_kubeconfig, server, "system:kube-proxy", &[])
            .map_err(|e| failed("proxy kubeconfig", e))?;
        pki.ca()
            .and_then(|ca| ca.issue_serving(&user, &[addr.to_string(), node.to_owned()]))
            .and_then(|c| c.write(&self.serving_cert, &self.serving_key))
            .map_err(|e| failed("kubelet serving certificate", e))
    }
}

/// Starts a dockerd in every node's namespace and cgroup and loads the images into each.
async fn start_engines(
    opts: &UpOptions,
    xkube: &Path,
    nodes: &[NetNs],
    data: &Path,
    state: &mut State,
) -> Result<()> {
    let logs = data.join("logs");
    say(format!(
        "      docker: one dockerd per node, images xkube/{{tools,pause,agnhost,xkube}} built from {}",
        xkube.display()
    ));
    let names = Names::new(&opts.name)?;
    for (i, ns) in nodes.iter().enumerate() {
        let node = state.nodes[i].clone();
        let engine = docker::Engine::new(data, &names.cluster, &node.name);
        std::fs::create_dir_all(&engine.exec_root)
            .map_err(io("create directory", &engine.exec_root))?;
        let mut cmd = engine.command("dockerd");
        if opts.registry {
            cmd.args(["--insecure-registry", &registry::host()]);
        }
        let log = logs.join(format!("{}-docker.log", node.name));
        let pid = spawn_in(ns.path(), Some(&node.cgroup), &mut cmd, &log, "dockerd")?;
        state.processes.push(Proc {
            role: format!("{}-docker", node.name),
            pid,
            log,
            argv: argv(&cmd),
            netns: ns.name().to_owned(),
            cgroup: Some(node.cgroup.clone()),
        });
        state.engines.push(engine);
        save(data, state)?;
    }
    let work = data.join("images");
    std::fs::create_dir_all(&work).map_err(io("create directory", &work))?;
    let rootfs = {
        let (xkube, work) = (xkube.to_owned(), work.clone());
        tokio::task::spawn_blocking(move || docker::rootfs_tar(Some(&xkube), &work))
            .await
            .map_err(|e| Error::Invalid(format!("image root task: {e}")))??
    };
    let timeout = Duration::from_secs(opts.timeout);
    let loads = state.engines.iter().enumerate().map(|(i, engine)| {
        let (rootfs, work) = (&rootfs, work.join(format!("node{}", i + 1)));
        async move {
            let client = engine.wait(timeout).await?;
            docker::load_images(&client, rootfs, &work).await
        }
    });
    for r in futures::future::join_all(loads).await {
        r?;
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn argv(cmd: &Command) -> Vec<String> {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

pub(crate) fn load_state(opts: &NameOptions) -> Result<(State, PathBuf)> {
    let names = Names::new(&opts.name)?;
    let data = names.data_dir(&opts.data_root);
    let path = data.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|_| {
        Error::Invalid(format!(
            "no cluster named {:?} (no {})",
            opts.name,
            path.display()
        ))
    })?;
    let state = serde_json::from_str(&text).map_err(|source| Error::State {
        path: path.clone(),
        source,
    })?;
    Ok((state, data))
}

/// Restarts the process with role `role` (the control plane or a node's agent): SIGKILL when
/// `kill`, else SIGTERM and a grace period; then the same command in the same namespace and
/// cgroup. Returns the new pid.
/// With `proxy_mode`, a node's agent comes back in that mode (switching a live node; the new
/// agent removes the old mode's state once its own first sync succeeded).
pub fn restart(
    opts: &NameOptions,
    role: &str,
    kill: bool,
    proxy_mode: Option<xkube_proxy::agent::ProxyMode>,
) -> Result<u32> {
    restart_agent(
        opts,
        role,
        kill,
        proxy_mode.map_or(AgentProxy::Keep, AgentProxy::Mode),
    )
}

/// The proxy of a node's agent after [`restart_agent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentProxy {
    /// As before the restart.
    Keep,
    /// In this mode (enabled if it was disabled).
    Mode(xkube_proxy::agent::ProxyMode),
    /// No proxy (`xkube agent --disable-proxy`): every mode's state removed, no Service served.
    Disabled,
}

/// [`restart`], and a node's agent may come back with its proxy disabled or enabled again.
pub fn restart_agent(opts: &NameOptions, role: &str, kill: bool, proxy: AgentProxy) -> Result<u32> {
    const DISABLE: &str = "--disable-proxy";
    let (mut state, data) = load_state(opts)?;
    let p = state
        .processes
        .iter_mut()
        .find(|p| p.role == role)
        .ok_or_else(|| Error::Invalid(format!("no process {role:?} in cluster {:?}", opts.name)))?;
    let proxy_mode = match proxy {
        AgentProxy::Keep => None,
        AgentProxy::Mode(m) => {
            p.argv.retain(|a| a != DISABLE);
            Some(m)
        }
        AgentProxy::Disabled => {
            if !p.argv.iter().any(|a| a == "--proxy-mode") {
                return Err(Error::Invalid(format!("{role:?} runs no proxy")));
            }
            if !p.argv.iter().any(|a| a == DISABLE) {
                p.argv.push(DISABLE.to_owned());
            }
            None
        }
    };
    if let Some(mode) = proxy_mode {
        if mode != xkube_proxy::agent::ProxyMode::Ebpf {
            netfilter_mode_node(&NetNs::borrowed(&p.netns)?)?;
        }
        let at = p
            .argv
            .iter()
            .position(|a| a == "--proxy-mode")
            .ok_or_else(|| Error::Invalid(format!("{role:?} runs no proxy")))?;
        match p.argv.get_mut(at + 1) {
            Some(v) => *v = mode.name().to_owned(),
            None => {
                return Err(Error::Invalid(format!(
                    "{role:?}: --proxy-mode without a value"
                )));
            }
        }
    }
    let pid = p.pid as i32;
    signal_all(
        &[pid],
        if kill {
            nix::sys::signal::Signal::SIGKILL
        } else {
            nix::sys::signal::Signal::SIGTERM
        },
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (prog, args) = p
        .argv
        .split_first()
        .ok_or_else(|| Error::Invalid(format!("no command recorded for {role:?}")))?;
    let mut cmd = Command::new(prog);
    cmd.args(args);
    let ns = Path::new(xkube_netns::NETNS_DIR).join(&p.netns);
    let log = p.log.clone();
    let out = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log)
        .map_err(io("open", &log))?;
    p.pid = spawn_in_with(&ns, p.cgroup.as_deref(), &mut cmd, out, role)?;
    let new = p.pid;
    save(&data, &state)?;
    Ok(new)
}

/// What a node of the iptables and userspace modes needs besides its agent (idempotent).
fn netfilter_mode_node(ns: &NetNs) -> Result<()> {
    // A host process's packet to a service address needs a route before nat OUTPUT
    // translates it (real nodes have a default route). Via the control plane, which
    // forwards nothing: a packet no rule translated is dropped inside the cluster's
    // namespaces. The eBPF mode translates at connect() and needs none.
    if let Err(e) = ns.add_route(Ipv4Addr::new(10, 96, 0, 0), 12, CONTROL_PLANE_ADDR) {
        // A node switched from such a mode before has it already.
        if !e.to_string().contains("File exists") {
            return Err(e.into());
        }
    }
    // A packet from the external client for a service not programmed yet would leave by the
    // interface it came in on, and the node would redirect the client to the control plane
    // for that address (a route exception that outlives the service's programming): nodes
    // send no ICMP redirects.
    for conf in ["all", "eth0"] {
        sysctl::set(ns, &format!("net/ipv4/conf/{conf}/send_redirects"), "0")?;
    }
    Ok(())
}

/// The name of a host link that already has `addr`, if any.
fn host_link_with(addr: Ipv4Addr) -> Option<String> {
    let host = NetNs::current();
    host.block_on(async {
        use futures::TryStreamExt as _;
        use rtnetlink::packet_route::address::AddressAttribute;
        let h = xkube_netns::connect().ok()?;
        let mut addrs = h.address().get().execute();
        while let Ok(Some(a)) = addrs.try_next().await {
            let has = a.attributes.iter().any(
                |at| matches!(at, AddressAttribute::Address(std::net::IpAddr::V4(v)) if *v == addr),
            );
            if has {
                let idx = a.header.index;
                let mut links = h.link().get().match_index(idx).execute();
                if let Ok(Some(l)) = links.try_next().await {
                    return l.attributes.iter().find_map(|at| match at {
                        rtnetlink::packet_route::link::LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    });
                }
                return Some(format!("link {idx}"));
            }
        }
        None
    })
    .ok()
    .flatten()
}

/// Creates the named namespace and records it; the namespace outlives this process (the
/// returned handle does not remove it; `down` does).
fn named(name: String, state: &mut State) -> Result<NetNs> {
    let name = NetNs::create(&name)?.keep();
    state.namespaces.push(name.clone());
    Ok(NetNs::borrowed(&name)?)
}

/// Starts `cmd` detached (own session) inside the network namespace at `netns` and, when
/// given, the cgroup `cgroup`; output goes to `log`. Returns the pid.
fn spawn_in(
    netns: &Path,
    cgroup: Option<&Path>,
    cmd: &mut Command,
    log: &Path,
    what: &str,
) -> Result<u32> {
    let out = File::create(log).map_err(io("create", log))?;
    spawn_in_with(netns, cgroup, cmd, out, what)
}

fn spawn_in_with(
    netns: &Path,
    cgroup: Option<&Path>,
    cmd: &mut Command,
    out: File,
    what: &str,
) -> Result<u32> {
    let ns = File::open(netns).map_err(io("open", netns))?;
    let procs = match cgroup {
        Some(c) => Some(
            OpenOptions::new()
                .write(true)
                .open(c.join("cgroup.procs"))
                .map_err(io("open", &c.join("cgroup.procs")))?,
        ),
        None => None,
    };
    let err = out.try_clone().map_err(|source| Error::Spawn {
        what: what.to_owned(),
        source,
    })?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    enter_in_child(cmd, &ns, procs.as_ref(), true);
    let child = cmd.spawn().map_err(|source| Error::Spawn {
        what: what.to_owned(),
        source,
    })?;
    Ok(child.id())
}

/// Makes `cmd`'s child enter the network namespace `ns` and (given its `cgroup.procs`) a
/// cgroup before it execs, in a session of its own when `new_session`. The files must stay
/// open until the child is spawned.
pub(crate) fn enter_in_child(
    cmd: &mut Command,
    ns: &File,
    procs: Option<&File>,
    new_session: bool,
) {
    let ns_fd = ns.as_raw_fd();
    let procs_fd = procs.map(|f| f.as_raw_fd());
    // SAFETY: only async-signal-safe calls (setsid, setns, write) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if new_session {
                nix::libc::setsid();
            }
            if nix::libc::setns(ns_fd, nix::libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = procs_fd {
                // "0" moves the writing process.
                if nix::libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

async fn wait_for<F, Fut>(secs: u64, what: &str, logs: &Path, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(Error::Timeout {
        what: what.to_owned(),
        secs,
        logs: logs.to_owned(),
    })
}

/// Removes a cluster: processes, eBPF pins, namespaces, the host link, cgroups, state. Safe to
/// run twice and on half-built clusters.
pub fn down(opts: &NameOptions) -> Result<()> {
    let names = Names::new(&opts.name)?;
    let data = names.data_dir(&opts.data_root);
    let path = data.join("state.json");
    let state = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|source| Error::State {
            path: path.clone(),
            source,
        })?,
        // No state: clean up by name (a run killed before it wrote its state).
        Err(_) => State {
            name: opts.name.clone(),
            host_link: names.host_link(),
            namespaces: vec![
                names.fabric(),
                names.control_plane(),
                names.client(),
                names.registry(),
            ]
            .into_iter()
            .chain((0..20).map(|i| names.node_ns(i)))
            .collect(),
            cgroups: (0..20)
                .filter_map(|i| names.cgroup_root().ok().map(|r| r.join(names.node(i))))
                .chain(names.cgroup_root().ok())
                .collect(),
            bpf_pins: (0..20)
                .map(|i| PathBuf::from(xkube_proxy::ebpf::datapath::PIN_ROOT).join(names.node(i)))
                .chain([PathBuf::from(xkube_proxy::ebpf::datapath::PIN_ROOT)
                    .join(format!("{}-fabric", names.cluster))])
                .collect(),
            ..Default::default()
        },
    };
    teardown(&state, &data)
}

fn teardown(state: &State, data: &Path) -> Result<()> {
    // 1. Processes: SIGTERM, then SIGKILL after a grace period. Also anything still in the
    //    node cgroups (pods).
    let mut pids: Vec<i32> = state.processes.iter().map(|p| p.pid as i32).collect();
    for cg in &state.cgroups {
        pids.extend(cgroup_pids(cg));
    }
    // Docker's containers go first, through their engines, so runc removes their cgroups
    // and mounts.
    if !state.engines.is_empty() {
        std::thread::scope(|s| {
            s.spawn(|| {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(futures::future::join_all(
                        state.engines.iter().map(|e| e.remove_all_containers()),
                    ));
                }
            });
        });
    }
    signal_all(&pids, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for cg in &state.cgroups {
        pids.extend(cgroup_pids(cg));
    }
    signal_all(&pids, nix::sys::signal::Signal::SIGKILL);
    // 2. eBPF: every pinned program, link and map of the nodes.
    for pin in &state.bpf_pins {
        if pin.exists() {
            xkube_proxy::ebpf::datapath::teardown(pin)
                .map_err(|e| Error::Invalid(format!("removing {}: {e}", pin.display())))?;
        }
    }
    // 3. Namespaces (their links go with them), then the host end of the fabric link.
    for name in &state.namespaces {
        if let Ok(ns) = NetNs::existing(name) {
            drop(ns);
        }
    }
    let host = NetNs::current();
    let _ = host.block_on(async {
        let h = xkube_netns::connect()?;
        if let Ok(idx) = xkube_netns::link_index(&h, &state.host_link).await {
            let _ = h.link().del(idx).execute().await;
        }
        Ok::<_, xkube_netns::Error>(())
    });
    // 4. Volumes the kubelets mounted (secret and token tmpfs) under the cluster's data, and
    //    the engines' mounts (image layers, container namespaces) under their roots.
    unmount_under(data);
    let run = docker::run_dir(&state.name);
    unmount_under(&run);
    let _ = std::fs::remove_dir_all(&run);
    // 5. cgroups, innermost first (pods are below the node cgroups), and their cgroup v1
    //    mirrors on hybrid hosts (where the kubelets put the pods' memory and cpu limits).
    for cg in &state.cgroups {
        for (_, mirror) in cgroup::v1_mirrors(cg) {
            remove_cgroup_tree(&mirror);
        }
        remove_cgroup_tree(cg);
    }
    let state_file = data.join("state.json");
    let _ = std::fs::remove_file(&state_file);
    Ok(())
}

/// Unmounts (lazily) every mount point below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        if let Err(e) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(path = %p.display(), error = %e, "unmounting");
        }
    }
}

fn cgroup_pids(cg: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(cg) else {
        return out;
    };
    if let Ok(text) = std::fs::read_to_string(cg.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    for e in entries.flatten() {
        if e.path().is_dir() {
            out.extend(cgroup_pids(&e.path()));
        }
    }
    out
}

fn remove_cgroup_tree(cg: &Path) {
    if let Ok(entries) = std::fs::read_dir(cg) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(cg);
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(true)
}

fn signal_all(pids: &[i32], sig: nix::sys::signal::Signal) {
    for p in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), sig);
    }
}

/// `xkube cluster load-image`: copies each image (a name in the Docker Engine at
/// `docker_host`, or a `docker save` / OCI archive file) into every node's engine.
pub async fn load_image(opts: &NameOptions, images: &[String], docker_host: &str) -> Result<()> {
    let (state, _) = load_state(opts)?;
    if state.engines.is_empty() {
        return Err(Error::Invalid(format!(
            "cluster {:?} runs the process runtime, whose nodes run host programs rather than \
             images: load-image needs a `cluster up --runtime docker` cluster",
            state.name
        )));
    }
    for image in images {
        let archive = if Path::new(image).is_file() {
            let raw = std::fs::read(image).map_err(io("read", Path::new(image)))?;
            docker::docker_archive(raw)?
        } else {
            docker::save_from(docker_host, image).await?
        };
        let loads = state.engines.iter().zip(&state.nodes).map(|(e, n)| {
            let archive = &archive;
            async move {
                let client = e.wait(Duration::from_secs(10)).await?;
                let said = docker::load_archive(&client, archive).await?;
                Ok::<_, Error>((n.name.clone(), said))
            }
        });
        for r in futures::future::join_all(loads).await {
            let (node, said) = r?;
            say(format!("{node}: {}", said.join("; ")));
        }
    }
    Ok(())
}

/// A short report of a cluster's state for `xkube cluster status`.
pub fn status(opts: &NameOptions) -> Result<String> {
    let (state, _) = load_state(opts)?;
    let mut out = String::new();
    let _ = writeln_str(
        &mut out,
        format!(
            "cluster {:?}: kubeconfig {}",
            state.name,
            state.kubeconfig.display()
        ),
    );
    for p in &state.processes {
        let _ = writeln_str(
            &mut out,
            format!(
                "  {:<16} pid {:<8} {}  log {}",
                p.role,
                p.pid,
                if alive(p.pid as i32) {
                    "running"
                } else {
                    "NOT RUNNING"
                },
                p.log.display()
            ),
        );
    }
    for n in &state.nodes {
        let _ = writeln_str(
            &mut out,
            format!("  node {} {} netns {}", n.name, n.addr, n.namespace),
        );
    }
    Ok(out)
}

fn writeln_str(out: &mut String, line: String) -> std::fmt::Result {
    use std::fmt::Write as _;
    writeln!(out, "{line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_credentials_are_issued_from_the_cluster_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cp = dir.path().join("control-plane");
        let pki = xkube_apiserver::pki::Pki::ensure(&cp, &["127.0.0.1".into()]).expect("PKI");
        let certs = NodeCerts::layout(dir.path(), "xk-node1");
        certs
            .issue(&pki, "https://198.18.0.2:6443", "xk-node1", node_addr(0))
            .expect("issued");
        assert_eq!(
            certs.kubelet_kubeconfig,
            dir.path().join("xk-node1/kubelet.kubeconfig")
        );
        for kc in [&certs.kubelet_kubeconfig, &certs.proxy_kubeconfig] {
            let cfg = xkube_client::Config::load(Some(kc), &Default::default())
                .unwrap_or_else(|e| panic!("{}: {e}", kc.display()));
            assert_eq!(cfg.server, "https://198.18.0.2:6443");
        }
        let serving = xkube_apiserver::pki::load_certs(&certs.serving_cert).expect("serving");
        let (cn, groups) = xkube_apiserver::pki::client_identity(&serving[0]).expect("subject");
        assert_eq!((cn.as_str(), groups.len()), ("system:node:xk-node1", 0));
        xkube_apiserver::pki::load_key(&certs.serving_key).expect("key");
    }
}
