//! The xkube kubelet: registers its Node and heartbeats, watches the pods bound to it and
//! drives each through an explicit state machine ([`state`]) on a [`ContainerRuntime`]
//! ([`runtime::process::ProcessRuntime`] by default), wires pods into the node's pod network
//! ([`network`]) and serves the kubelet API ([`server`]): HTTPS only ([`tls`]), every request
//! authenticated and authorized against the apiserver ([`auth`]).

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use xkube_client::{
    Api, Batch, Client, Config, ListParams, Overrides, Reflector, Store, batched, watcher,
};

pub mod auth;
pub mod dns;
pub mod env;
pub mod error;
pub mod images;
pub mod ipam;
pub mod network;
pub mod node;
pub mod pods;
pub mod probes;
pub mod runtime;
pub mod server;
pub mod state;
pub mod streaming;
pub mod tls;
pub mod volumes;

pub use auth::AuthorizationMode;
pub use error::{Error, Result};
pub use network::{PodNetworkEvent, PodNetworkEventKind};
pub use runtime::ContainerRuntime;
pub use xkube_netns::NsRef;

/// Which runtime runs containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    Process,
    Docker,
}

/// Kubelet flags (Kubernetes names where Kubernetes has the flag).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// This node's name (default: the hostname).
    #[arg(long, env = "XKUBE_NODE_NAME")]
    pub node_name: Option<String>,
    /// Kubeconfig with the apiserver address and credentials.
    #[arg(long, env = "XKUBE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Directory for pod dirs, volumes, logs and IPAM state.
    #[arg(long, env = "XKUBE_ROOT_DIR", default_value = "/var/lib/xkube/kubelet")]
    pub root_dir: PathBuf,
    /// Container runtime.
    #[arg(long, env = "XKUBE_RUNTIME", value_enum, default_value_t = RuntimeKind::Process)]
    pub runtime: RuntimeKind,
    /// Pod CIDR of this node (default: the node's spec.podCIDR from the node controller).
    #[arg(long, env = "XKUBE_POD_CIDR")]
    pub pod_cidr: Option<String>,
    /// The node's InternalIP (default: the first global IPv4 address of the node network).
    #[arg(long, env = "XKUBE_NODE_IP")]
    pub node_ip: Option<Ipv4Addr>,
    /// The cluster's pod network; traffic leaving it is masqueraded.
    #[arg(long, env = "XKUBE_CLUSTER_CIDR", default_value = xkube_api::cluster::CLUSTER_CIDR)]
    pub cluster_cidr: String,
    #[arg(long, env = "XKUBE_MAX_PODS", default_value_t = 110)]
    pub max_pods: u32,
    /// CPU capacity to report (default: the machine's).
    #[arg(long, env = "XKUBE_CPU")]
    pub cpu: Option<String>,
    /// Memory capacity to report, e.g. `8Gi` (default: the machine's).
    #[arg(long, env = "XKUBE_MEMORY")]
    pub memory: Option<String>,
    /// Extra node labels, `k=v,k2=v2`.
    #[arg(long, env = "XKUBE_NODE_LABELS", value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// Kubelet API port (0: any).
    #[arg(long, env = "XKUBE_KUBELET_PORT", default_value_t = xkube_api::cluster::KUBELET_PORT)]
    pub port: u16,
    /// The pod infra command (default: `<this xkube binary> pause`).
    #[arg(long, env = "XKUBE_PAUSE_COMMAND", num_args = 1.., value_delimiter = ' ')]
    pub pause_command: Vec<String>,
    /// Parent cgroup (relative to the cgroup v2 mount) of the pod cgroups; empty: none.
    #[arg(long, env = "XKUBE_CGROUP_ROOT", default_value = "xkube")]
    pub cgroup_root: String,
    /// Node status heartbeat period (a duration: `10s`, `1m`).
    #[arg(long, env = "XKUBE_NODE_STATUS_UPDATE_FREQUENCY", default_value = "10s", value_parser = xkube_api::duration::parse)]
    pub node_status_update_frequency: Duration,
    /// Network namespace holding the node's network (default: the kubelet's own). Lets a test
    /// or `xkube cluster` run a kubelet in-process for a node in a namespace.
    #[arg(long, env = "XKUBE_NODE_NETNS")]
    pub node_netns: Option<PathBuf>,
    /// First CrashLoopBackOff delay, seconds (Kubernetes: 10).
    #[arg(long, default_value_t = 10, hide = true)]
    pub backoff_initial_seconds: u64,
    /// Docker Engine socket (docker runtime).
    #[arg(
        long,
        env = "XKUBE_DOCKER_ENDPOINT",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub docker_endpoint: String,
    /// The pause image of the docker runtime (built locally, see deploy/).
    #[arg(
        long,
        env = "XKUBE_POD_INFRA_CONTAINER_IMAGE",
        default_value = "xkube/pause:latest"
    )]
    pub pod_infra_container_image: String,
    /// The xkube binary used by the process runtime's image mapping (default: this one).
    #[arg(long, env = "XKUBE_BINARY")]
    pub xkube_binary: Option<PathBuf>,
    /// Serving certificate of the kubelet API (PEM; default: a self-signed one generated
    /// into `<root-dir>/pki/kubelet.crt`, which the apiserver does not trust).
    #[arg(long, env = "XKUBE_TLS_CERT_FILE", requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Key of `--tls-cert-file`.
    #[arg(long, env = "XKUBE_TLS_PRIVATE_KEY_FILE", requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
    /// PEM bundle of CAs whose client certificates authenticate requests to the kubelet API
    /// (CN = user, O = groups); none: client certificates are not accepted.
    #[arg(long, env = "XKUBE_KUBELET_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,
    /// Serve kubelet API requests without credentials as `system:anonymous` (off: they get
    /// 401).
    #[arg(
        long,
        env = "XKUBE_KUBELET_ANONYMOUS_AUTH",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub anonymous_auth: bool,
    /// Check bearer tokens with TokenReviews against the apiserver.
    #[arg(
        long,
        env = "XKUBE_AUTHENTICATION_TOKEN_WEBHOOK",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub authentication_token_webhook: bool,
    /// Authorization of kubelet API requests: Webhook (SubjectAccessReviews against the
    /// apiserver) or AlwaysAllow.
    #[arg(
        long,
        env = "XKUBE_KUBELET_AUTHORIZATION_MODE",
        value_enum,
        default_value = "Webhook"
    )]
    pub authorization_mode: AuthorizationMode,
    /// Plain-HTTP port serving only /healthz, /pods and /stats without authentication
    /// (Kubernetes uses 10255); 0 disables it.
    #[arg(long, env = "XKUBE_READ_ONLY_PORT", default_value_t = 0)]
    pub read_only_port: u16,
    /// Cluster DNS server addresses written into `ClusterFirst` pods' resolv.conf (none:
    /// pods get the node's resolv.conf, as `dnsPolicy: Default`).
    #[arg(long, env = "XKUBE_CLUSTER_DNS", value_delimiter = ',')]
    pub cluster_dns: Vec<std::net::IpAddr>,
    /// The cluster's DNS domain; pods search `<ns>.svc.<domain> svc.<domain> <domain>`.
    #[arg(long, env = "XKUBE_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The node's resolver configuration, given to `dnsPolicy: Default` pods (empty: none).
    #[arg(long, env = "XKUBE_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Pull one image at a time (the docker runtime; Kubernetes' default).
    #[arg(
        long,
        env = "XKUBE_SERIALIZE_IMAGE_PULLS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub serialize_image_pulls: bool,
    /// At most this many pulls at once (with `--serialize-image-pulls=false`; default: no
    /// bound).
    #[arg(long, env = "XKUBE_MAX_PARALLEL_IMAGE_PULLS")]
    pub max_parallel_image_pulls: Option<u32>,
    /// Percent of the image filesystem in use at which unused images are removed (100:
    /// never; the docker runtime).
    #[arg(long, env = "XKUBE_IMAGE_GC_HIGH_THRESHOLD", default_value_t = 85, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_high_threshold: u8,
    /// Percent image garbage collection frees down to.
    #[arg(long, env = "XKUBE_IMAGE_GC_LOW_THRESHOLD", default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_low_threshold: u8,
    /// An unused image is kept at least this long after the kubelet first saw it.
    #[arg(long, env = "XKUBE_MINIMUM_IMAGE_TTL_DURATION", default_value = "2m", value_parser = xkube_api::duration::parse)]
    pub minimum_image_ttl_duration: Duration,
    /// How often image garbage collection runs (Kubernetes: every 5 minutes).
    #[arg(long, default_value = "5m", value_parser = xkube_api::duration::parse, hide = true)]
    pub image_gc_period: Duration,
}

impl Options {
    /// Options with the defaults (for tests and embedding).
    pub fn new(node_name: &str, root_dir: PathBuf) -> Self {
        Self {
            node_name: Some(node_name.to_owned()),
            kubeconfig: None,
            root_dir,
            runtime: RuntimeKind::Process,
            pod_cidr: None,
            node_ip: None,
            cluster_cidr: xkube_api::cluster::CLUSTER_CIDR.into(),
            max_pods: 110,
            cpu: None,
            memory: None,
            node_labels: Vec::new(),
            port: xkube_api::cluster::KUBELET_PORT,
            pause_command: Vec::new(),
            cgroup_root: "xkube".into(),
            node_status_update_frequency: Duration::from_secs(10),
            node_netns: None,
            backoff_initial_seconds: 10,
            docker_endpoint: "unix:///var/run/docker.sock".into(),
            pod_infra_container_image: "xkube/pause:latest".into(),
            xkube_binary: None,
            tls_cert_file: None,
            tls_private_key_file: None,
            client_ca_file: None,
            anonymous_auth: false,
            authentication_token_webhook: true,
            authorization_mode: AuthorizationMode::Webhook,
            read_only_port: 0,
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".into(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            serialize_image_pulls: true,
            max_parallel_image_pulls: None,
            image_gc_high_threshold: 85,
            image_gc_low_threshold: 80,
            minimum_image_ttl_duration: Duration::from_secs(120),
            image_gc_period: Duration::from_secs(300),
        }
    }

    /// The image garbage collection policy (a low threshold above the high one is refused,
    /// as Kubernetes does).
    pub fn image_gc_policy(&self) -> Result<images::GcPolicy> {
        if self.image_gc_low_threshold > self.image_gc_high_threshold {
            return Err(Error::Invalid {
                what: "--image-gc-low-threshold",
                message: format!(
                    "{} is above --image-gc-high-threshold {}",
                    self.image_gc_low_threshold, self.image_gc_high_threshold
                ),
            });
        }
        Ok(images::GcPolicy {
            high: self.image_gc_high_threshold,
            low: self.image_gc_low_threshold,
            min_age: self.minimum_image_ttl_duration,
        })
    }

    /// How many image pulls may run at once, from `--serialize-image-pulls` and
    /// `--max-parallel-image-pulls` (refused together unless the bound is 1, as Kubernetes).
    pub fn parallel_image_pulls(&self) -> Result<usize> {
        match (self.serialize_image_pulls, self.max_parallel_image_pulls) {
            (_, Some(0)) => Err(Error::Invalid {
                what: "--max-parallel-image-pulls",
                message: "it must be at least 1".into(),
            }),
            (true, Some(n)) if n > 1 => Err(Error::Invalid {
                what: "--max-parallel-image-pulls",
                message: "it needs --serialize-image-pulls=false".into(),
            }),
            (true, _) => Ok(1),
            (false, Some(n)) => Ok(n as usize),
            (false, None) => Ok(usize::from(u16::MAX)),
        }
    }
}

/// What every pod worker shares.
pub(crate) struct Ctx {
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    pub client: Client,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub network: Arc<network::PodNetwork>,
    pub root: PathBuf,
    pub node_ns: NsRef,
    pub cgroup_root: Option<PathBuf>,
    pub services: Store<Service>,
    pub backoff_initial: Duration,
    /// Writes the pods' events (repeats bump `count`).
    pub recorder: xkube_client::runtime::EventRecorder,
    /// Pods known to the kubelet API (uid -> view).
    pub views: Mutex<HashMap<String, Arc<Mutex<pods::PodView>>>>,
    /// What pods' resolv.conf is made from.
    pub dns: dns::Settings,
    /// Pull policy, credentials, one pull per image, the parallel-pull bound.
    pub images: Arc<images::ImageManager>,
}

impl Ctx {
    pub fn views(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Mutex<pods::PodView>>>> {
        self.views.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A kubelet, built from [`Options`]; subscribe to pod-network events before running it.
pub struct Kubelet {
    opts: Options,
    client: Option<Client>,
    runtime: Option<Arc<dyn ContainerRuntime>>,
    events: broadcast::Sender<PodNetworkEvent>,
}

/// Runs a kubelet until `shutdown` (pods keep running).
pub async fn run(opts: Options, shutdown: CancellationToken) -> Result<()> {
    Kubelet::new(opts).run(shutdown).await
}

fn first_global_ipv4(ns: &NsRef, skip: Option<ipam::Ipv4Cidr>) -> Option<Ipv4Addr> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::address::{AddressAttribute, AddressScope};
    ns.block_on(async {
        let h = xkube_netns::connect().ok()?;
        let mut addrs = h.address().get().execute();
        while let Ok(Some(a)) = addrs.try_next().await {
            if a.header.scope != AddressScope::Universe {
                continue;
            }
            for attr in &a.attributes {
                if let AddressAttribute::Address(std::net::IpAddr::V4(v)) = attr
                    && !v.is_loopback()
                    && !v.is_link_local()
                    && !skip.is_some_and(|c| c.contains(*v))
                {
                    return Some(*v);
                }
            }
        }
        None
    })
    .ok()
    .flatten()
}

impl Kubelet {
    pub fn new(opts: Options) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            opts,
            client: None,
            runtime: None,
            events,
        }
    }

    /// Uses this client instead of one from `--kubeconfig`.
    pub fn with_client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Uses this runtime instead of the one `--runtime` names.
    pub fn with_runtime(mut self, rt: Arc<dyn ContainerRuntime>) -> Self {
        self.runtime = Some(rt);
        self
    }

    /// Pod network events (a pod's veth added or removed), for the proxy's tc programs.
    pub fn pod_network_events(&self) -> broadcast::Receiver<PodNetworkEvent> {
        self.events.subscribe()
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let opts = self.opts;
        let node_name = opts
            .node_name
            .clone()
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_lowercase())
            })
            .ok_or_else(|| error::invalid("node name", "none given and no hostname"))?;
        let client = match self.client {
            Some(c) => c,
            None => {
                let cfg = Config::load(opts.kubeconfig.as_deref(), &Overrides::default())?;
                Client::new(&cfg)?
            }
        };
        let node_ns = NsRef(opts.node_netns.clone());
        let node_ip = match opts.node_ip {
            Some(ip) => ip,
            None => {
                let ns = node_ns.clone();
                // Not the bridge's address (a restarted kubelet finds cbr0 up).
                let skip = ipam::parse_cidr(&opts.cluster_cidr).ok();
                tokio::task::spawn_blocking(move || first_global_ipv4(&ns, skip))
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(Ipv4Addr::LOCALHOST)
            }
        };
        let xkube = opts
            .xkube_binary
            .clone()
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| PathBuf::from("xkube"));
        let runtime: Arc<dyn ContainerRuntime> = match self.runtime {
            Some(r) => r,
            None => match opts.runtime {
                RuntimeKind::Process => {
                    let pause = if opts.pause_command.is_empty() {
                        vec![xkube.to_string_lossy().into_owned(), "pause".into()]
                    } else {
                        opts.pause_command.clone()
                    };
                    Arc::new(runtime::process::ProcessRuntime::new(pause, xkube.clone()))
                }
                RuntimeKind::Docker => Arc::new(
                    runtime::docker::DockerRuntime::connect(
                        &opts.docker_endpoint,
                        &opts.pod_infra_container_image,
                    )
                    .await?,
                ),
            },
        };
        std::fs::create_dir_all(&opts.root_dir).map_err(error::io("create", &opts.root_dir))?;
        // The API ports are bound before the Node is registered: a node that is Ready (and
        // advertises its kubelet endpoint) accepts connections on them. They are served once
        // the pod state exists; until then connections wait in the backlog.
        let listener = server::bind(&node_ns, opts.port).await?;
        let read_only_listener = match opts.read_only_port {
            0 => None,
            port => Some(server::bind(&node_ns, port).await?),
        };

        // Register, then wait for a podCIDR.
        let machine =
            node::Machine::detect(opts.cpu.as_deref(), opts.memory.as_deref(), opts.max_pods);
        let mut extra = BTreeMap::new();
        for l in &opts.node_labels {
            if let Some((k, v)) = l.split_once('=') {
                extra.insert(k.to_owned(), v.to_owned());
            }
        }
        let labels = node::node_labels(&node_name, &extra);
        let since = node::now_str();
        let runtime_version = runtime.version();
        let status = |now: &str| {
            node::node_status(
                &machine,
                &node_name,
                node_ip,
                &runtime_version,
                opts.port,
                now,
                &since,
            )
        };
        let mut node = loop {
            match node::register(
                &client,
                &node_name,
                &labels,
                opts.pod_cidr.as_deref(),
                status(&node::now_str()),
            )
            .await
            {
                Ok(n) => break n,
                Err(e) => {
                    tracing::warn!(error = %e, "registering node, retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            }
        };
        let node_api = Api::<Node>::all(client.clone());
        let pod_cidr = loop {
            if let Some(c) = opts
                .pod_cidr
                .clone()
                .or_else(|| node.spec.as_ref().and_then(|s| s.pod_cidr.clone()))
                .filter(|c| !c.is_empty())
            {
                break ipam::parse_cidr(&c)?;
            }
            tracing::info!(node = %node_name, "waiting for a podCIDR");
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if let Ok(n) = node_api.get(&node_name).await {
                node = n;
            }
        };
        let cluster_cidr = ipam::parse_cidr(&opts.cluster_cidr)?;
        let net = Arc::new(network::PodNetwork::new(
            node_ns.clone(),
            pod_cidr,
            cluster_cidr,
            &network::ipam_dir(&opts.root_dir),
            self.events.clone(),
        )?);
        {
            let net = net.clone();
            tokio::task::spawn_blocking(move || net.setup_node())
                .await
                .map_err(|e| Error::Runtime(format!("network setup task: {e}")))??;
        }
        let cgroup_root = if opts.cgroup_root.is_empty() {
            None
        } else {
            match xkube_netns::cgroup::v2_root() {
                Ok(r) => {
                    let p = r.join(&opts.cgroup_root);
                    match std::fs::create_dir_all(&p) {
                        Ok(()) => {
                            // Best effort: hybrid hosts keep cpu/memory on cgroup v1.
                            let _ =
                                std::fs::write(p.join("cgroup.subtree_control"), "+cpu +memory");
                            Some(p)
                        }
                        Err(e) => {
                            tracing::warn!(path = %p.display(), error = %e, "no pod cgroups");
                            None
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no cgroup v2 mount: no pod cgroups");
                    None
                }
            }
        };

        let mut tasks = tokio::task::JoinSet::new();
        let (services, svc_task) =
            Reflector::new(Api::<Service>::all(client.clone()), ListParams::default())
                .spawn(shutdown.child_token());
        drop(svc_task);
        let images = Arc::new(images::ImageManager::new(
            runtime.clone(),
            opts.parallel_image_pulls()?,
        ));
        let gc_policy = opts.image_gc_policy()?;
        let ctx = Arc::new(Ctx {
            images,
            node_name: node_name.clone(),
            node_ip,
            client: client.clone(),
            runtime,
            network: net.clone(),
            root: opts.root_dir.clone(),
            node_ns: node_ns.clone(),
            cgroup_root,
            services,
            backoff_initial: Duration::from_secs(opts.backoff_initial_seconds),
            recorder: xkube_client::runtime::EventRecorder::new(client.clone(), "kubelet")
                .with_host(&node_name),
            views: Mutex::new(HashMap::new()),
            dns: dns::Settings {
                cluster_dns: opts.cluster_dns.clone(),
                cluster_domain: opts.cluster_domain.clone(),
                resolv_conf: (!opts.resolv_conf.as_os_str().is_empty())
                    .then(|| opts.resolv_conf.clone()),
            },
        });

        // Image garbage collection.
        {
            let ctx = ctx.clone();
            let token = shutdown.clone();
            let pinned = vec![opts.pod_infra_container_image.clone()];
            let period = opts.image_gc_period.max(Duration::from_millis(100));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let node = k8s_openapi::api::core::v1::ObjectReference {
                        kind: Some("Node".into()),
                        name: Some(ctx.node_name.clone()),
                        uid: Some(ctx.node_name.clone()),
                        ..Default::default()
                    };
                    match ctx.images.gc(&gc_policy, &pinned).await {
                        Ok(None) => {}
                        Ok(Some(r)) if r.freed < r.wanted => {
                            let msg = format!(
                                "Failed to garbage collect required amount of images. Attempted to free {} bytes, but only found {} bytes eligible to free.",
                                r.wanted, r.freed
                            );
                            tracing::warn!(usage = r.usage, removed = ?r.removed, "{msg}");
                            ctx.recorder
                                .post(node, "Warning", "FreeDiskSpaceFailed", &msg);
                        }
                        Ok(Some(r)) => tracing::info!(
                            usage = r.usage,
                            freed = r.freed,
                            removed = ?r.removed,
                            "image garbage collection"
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, "image garbage collection failed");
                            ctx.recorder.post(
                                node,
                                "Warning",
                                "ImageGCFailed",
                                &format!("image garbage collection failed: {e}"),
                            );
                        }
                    }
                }
            });
        }

        // Heartbeats.
        {
            let client = client.clone();
            let name = node_name.clone();
            let token = shutdown.clone();
            let period = opts
                .node_status_update_frequency
                .max(Duration::from_millis(100));
            let statuses: Vec<serde_json::Value> = Vec::new();
            drop(statuses);
            let machine = machine.clone();
            let rv = ctx.runtime.version();
            let since = since.clone();
            let port = opts.port;
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(period) => {}
                    }
                    let s = node::node_status(
                        &machine,
                        &name,
                        node_ip,
                        &rv,
                        port,
                        &node::now_str(),
                        &since,
                    );
                    if let Err(e) = node::heartbeat(&client, &name, s).await {
                        tracing::warn!(error = %e, "node heartbeat");
                    }
                }
            });
        }
        // Routes to the other nodes' podCIDRs.
        {
            let token = shutdown.clone();
            let net = net.clone();
            let api = node_api.clone();
            tasks.spawn(async move {
                let mut routes: HashMap<String, (ipam::Ipv4Cidr, Ipv4Addr)> = HashMap::new();
                let stream = batched(watcher(api, ListParams::default()));
                futures::pin_mut!(stream);
                loop {
                    let ev = tokio::select! {
                        _ = token.cancelled() => return,
                        ev = stream.next() => ev,
                    };
                    let Some(ev) = ev else { return };
                    let changed = match ev {
                        Ok(Batch::Applied(n)) => {
                            let name = n.metadata.name.clone().unwrap_or_default();
                            let r = node::route_of(&n)
                                .and_then(|(c, ip)| Some((ipam::parse_cidr(&c).ok()?, ip)));
                            match r {
                                Some(r) => routes.insert(name, r) != Some(r),
                                None => routes.remove(&name).is_some(),
                            }
                        }
                        Ok(Batch::Deleted(n)) => routes
                            .remove(n.metadata.name.as_deref().unwrap_or(""))
                            .is_some(),
                        Ok(Batch::Relisted(all)) => {
                            routes = all
                                .iter()
                                .filter_map(|n| {
                                    let (c, ip) = node::route_of(n)?;
                                    Some((
                                        n.metadata.name.clone()?,
                                        (ipam::parse_cidr(&c).ok()?, ip),
                                    ))
                                })
                                .collect();
                            true
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "node watch");
                            false
                        }
                    };
                    if changed {
                        let want: BTreeMap<ipam::Ipv4Cidr, Ipv4Addr> =
                            routes.values().copied().collect();
                        let net = net.clone();
                        match tokio::task::spawn_blocking(move || net.sync_routes(&want)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::warn!(error = %e, "syncing node routes"),
                            Err(e) => tracing::warn!(error = %e, "route task"),
                        }
                    }
                }
            });
        }
        // Kubelet API: HTTPS only.
        let tls = {
            let (cert, key) = (
                opts.tls_cert_file.clone(),
                opts.tls_private_key_file.clone(),
            );
            let (root, name, ca) = (
                opts.root_dir.clone(),
                node_name.clone(),
                opts.client_ca_file.clone(),
            );
            tokio::task::spawn_blocking(move || -> Result<_> {
                let (cert, key) = tls::serving_files(
                    cert.as_deref(),
                    key.as_deref(),
                    &root,
                    &name,
                    node_ip.into(),
                )?;
                tls::server_config(&cert, &key, ca.as_deref())
            })
            .await
            .map_err(|e| Error::Tls(format!("certificate task: {e}")))??
        };
        let auth = Arc::new(auth::Auth::new(
            &node_name,
            opts.anonymous_auth,
            opts.authentication_token_webhook,
            opts.authorization_mode,
            &client,
        ));
        tracing::info!(
            addr = ?listener.local_addr().ok(),
            authorization = ?opts.authorization_mode,
            anonymous = opts.anonymous_auth,
            "kubelet API listening (HTTPS)"
        );
        tasks.spawn(server::serve(
            listener,
            tokio_rustls::TlsAcceptor::from(tls),
            server::secure_app(ctx.clone(), auth),
            shutdown.clone(),
        ));
        if let Some(listener) = read_only_listener {
            tracing::info!(addr = ?listener.local_addr().ok(), "kubelet read-only port listening (plain HTTP: healthz, pods, stats)");
            let ctx = ctx.clone();
            let token = shutdown.clone();
            tasks.spawn(async move {
                if let Err(e) = server::serve_read_only(listener, ctx, token).await {
                    tracing::error!(error = %e, "kubelet read-only port");
                }
            });
        }
        // Service variables are for the services that exist when a pod starts: have them first.
        tokio::select! {
            _ = ctx.services.wait_ready() => {}
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {
                tracing::warn!("service cache not synced after 30 s; starting pods anyway");
            }
        }
        // Pods.
        let result = pods::sync_loop(ctx.clone(), shutdown.clone()).await;
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
        result
    }
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

    #[test]
    fn flags_use_kubernetes_names_and_defaults() {
        let c = Cli::try_parse_from([
            "kubelet",
            "--node-name=n1",
            "--pod-cidr=10.244.1.0/24",
            "--node-ip=198.18.0.11",
            "--node-labels=a=b,c=d",
            "--max-pods=50",
            "--runtime=process",
        ])
        .expect("flags parse");
        assert_eq!(c.opts.node_name.as_deref(), Some("n1"));
        assert_eq!(c.opts.port, 10250);
        assert_eq!(c.opts.root_dir, PathBuf::from("/var/lib/xkube/kubelet"));
        assert_eq!(c.opts.cluster_cidr, "10.244.0.0/16");
        assert_eq!(c.opts.node_labels, ["a=b", "c=d"]);
        assert_eq!(c.opts.max_pods, 50);
        assert_eq!(c.opts.node_status_update_frequency, Duration::from_secs(10));
        // Locked down by default: no anonymous access, webhook authn/authz, no read-only port.
        assert!(!c.opts.anonymous_auth);
        assert!(c.opts.authentication_token_webhook);
        assert_eq!(c.opts.authorization_mode, AuthorizationMode::Webhook);
        assert_eq!(c.opts.read_only_port, 0);
        assert_eq!(c.opts.tls_cert_file, None);
        let c = Cli::try_parse_from([
            "kubelet",
            "--anonymous-auth",
            "--authentication-token-webhook=false",
            "--authorization-mode=AlwaysAllow",
            "--read-only-port=10255",
            "--tls-cert-file=/k.crt",
            "--tls-private-key-file=/k.key",
            "--client-ca-file=/ca.crt",
        ])
        .expect("security flags parse");
        assert!(c.opts.anonymous_auth);
        assert!(!c.opts.authentication_token_webhook);
        assert_eq!(c.opts.authorization_mode, AuthorizationMode::AlwaysAllow);
        assert_eq!(c.opts.read_only_port, 10255);
        assert_eq!(c.opts.client_ca_file, Some(PathBuf::from("/ca.crt")));
        assert!(
            Cli::try_parse_from(["kubelet", "--tls-cert-file=/k.crt"]).is_err(),
            "a certificate needs its key"
        );
        let flags = Cli::try_parse_from(["kubelet"]).expect("defaults");
        assert_eq!(
            flags.opts.authorization_mode,
            Options::new("n", PathBuf::from("/r")).authorization_mode,
            "flag and library defaults agree"
        );
    }
}
