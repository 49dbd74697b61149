//! The proxy agent (`xkube proxy`, also inside `xkube agent`): Services, Endpoints and this
//! node's Node object from the apiserver (list + watch into reflector caches), the pure
//! desired-state function, and the one writer task that owns the eBPF maps.
//!
//! On start it loads the datapath with the maps and links pinned under
//! `<bpf-root>/<node>/` (reusing what an earlier run left: a restart drops no traffic), attaches
//! the socket LB to the node's cgroup, XDP + tc to the uplink, and tc to every pod veth on the
//! pod bridge as pods come and go. Metrics on `:10249/metrics`, health on `:10256/healthz`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use futures::TryStreamExt as _;
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use xkube_client::{Api, Client, ListParams, Reflector, Store};
use xkube_common::lb::{IPPROTO_TCP, IPPROTO_UDP, ServiceCounters};

use crate::{
    Error, Result,
    dataplane::{
        Desired, Ids, Ipv4Cidr, Maps, NodeContext, Writer, WriterConfig, WriterStatus, desired,
        desired::ServiceIdent, writer::read_counters,
    },
    ebpf::datapath::{self, Datapath, PIN_ROOT},
};

/// How services are implemented on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyMode {
    /// eBPF: socket LB, tc and XDP programs (the default).
    Ebpf,
}

/// XDP attach mode for the uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttach {
    /// Native (driver) mode; needs driver support (veth has it).
    Driver,
    /// Generic (skb) mode: works everywhere, slower.
    Skb,
}

impl From<XdpAttach> for XdpMode {
    fn from(m: XdpAttach) -> Self {
        match m {
            XdpAttach::Driver => XdpMode::Driver,
            XdpAttach::Skb => XdpMode::Skb,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// The Node this proxy serves (kube-proxy's --hostname-override).
    #[arg(long = "hostname-override", env = "XKUBE_NODE_NAME")]
    pub node_name: String,
    /// Which proxy mode to use.
    #[arg(long, env = "XKUBE_PROXY_MODE", value_enum, default_value_t = ProxyMode::Ebpf)]
    pub proxy_mode: ProxyMode,
    /// The cluster's pod network; sources inside it are never SNATed.
    #[arg(long, env = "XKUBE_CLUSTER_CIDR", default_value = "10.244.0.0/16")]
    pub cluster_cidr: Ipv4Cidr,
    /// The node's uplink interface (XDP + tc egress).
    #[arg(long, env = "XKUBE_UPLINK", default_value = "eth0")]
    pub uplink: String,
    /// XDP attach mode on the uplink.
    #[arg(long, value_enum, default_value_t = XdpAttach::Driver)]
    pub xdp_mode: XdpAttach,
    /// cgroup v2 directory whose processes get socket-level load balancing (default: the
    /// agent's own cgroup, which holds the node's pods in `xkube agent`).
    #[arg(long, env = "XKUBE_PROXY_CGROUP")]
    pub cgroup: Option<PathBuf>,
    /// The pod bridge: tc programs attach to every veth on it.
    #[arg(long, default_value = "cbr0")]
    pub pod_bridge: String,
    /// Root of the pinned maps and links (per node below it).
    #[arg(long, default_value = PIN_ROOT)]
    pub bpf_root: PathBuf,
    /// Prometheus metrics address.
    #[arg(long, default_value = "0.0.0.0:10249")]
    pub metrics_bind_address: SocketAddr,
    /// Health check address.
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: SocketAddr,
    /// Remove every program, link, pin and map of this node and exit.
    #[arg(long)]
    pub cleanup: bool,
}

impl Options {
    /// Where this node's maps and links are pinned.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpf_root.join(&self.node_name)
    }
}

/// What the metrics and health endpoints show.
#[derive(Default)]
struct Shared {
    /// service id -> "namespace/name:port/proto"
    names: BTreeMap<u16, String>,
    status: WriterStatus,
    synced: bool,
    /// Time from a change in the caches to the writer having applied it, last value.
    programming: Option<Duration>,
    pod_links: usize,
}

/// Runs the proxy until `shutdown`; the dataplane keeps running afterwards (pinned).
pub async fn run(opts: Options, client: Client, shutdown: CancellationToken) -> Result<()> {
    let pin_dir = opts.pin_dir();
    if opts.cleanup {
        datapath::teardown(&pin_dir)?;
        info!(dir = %pin_dir.display(), "removed every eBPF program, link, pin and map");
        return Ok(());
    }
    let services: Store<Service> =
        spawn(Api::all(client.clone()), ListParams::default(), &shutdown);
    let endpoints: Store<Endpoints> =
        spawn(Api::all(client.clone()), ListParams::default(), &shutdown);
    let nodes: Store<Node> = spawn(
        Api::all(client.clone()),
        ListParams::default().fields(&format!("metadata.name={}", opts.node_name)),
        &shutdown,
    );
    tokio::select! {
        _ = async { tokio::join!(services.wait_ready(), endpoints.wait_ready()) } => {}
        _ = shutdown.cancelled() => return Ok(()),
    }
    // The kubelet registers the Node and posts its addresses; the controller-manager assigns
    // the pod CIDR. Wait for a usable Node object.
    let mut waited = 0u32;
    let ctx = loop {
        if let Some(n) = nodes.get("", &opts.node_name) {
            match node_context(&opts, &n) {
                Ok(c) if c.pod_cidr.is_some() => break c,
                Ok(_) if waited.is_multiple_of(50) => {
                    info!(node = %opts.node_name, "waiting for the node's podCIDR")
                }
                Err(e) if waited.is_multiple_of(50) => {
                    info!(error = %e, "waiting for a usable Node object")
                }
                _ => {}
            }
        }
        waited += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    };
    info!(node = %opts.node_name, addr = %ctx.node_addr, pod_cidr = ?ctx.pod_cidr, "proxy starting");

    let mut dp = Datapath::load(Some(&pin_dir))?;
    dp.attach_uplink(&opts.uplink, opts.xdp_mode.into())?;
    let cgroup = match &opts.cgroup {
        Some(c) => c.clone(),
        None => own_cgroup()?,
    };
    dp.attach_cgroup(&cgroup)?;
    info!(uplink = %opts.uplink, cgroup = %cgroup.display(), "datapath attached");

    let maps = Maps::from_pins(&pin_dir.join("maps"))?;
    let writer = Writer::new(maps, WriterConfig::default())?;
    let mut ids = Ids::from_actual(writer.actual());
    let mut status_rx = writer.subscribe();
    let (desired_tx, desired_rx) = watch::channel(None::<Arc<Desired>>);
    let writer_task = tokio::spawn(writer.run(desired_rx));
    let counters = Maps::from_pins(&pin_dir.join("maps"))?;
    let shared = Arc::new(Mutex::new(Shared::default()));
    let dp = Arc::new(Mutex::new(dp));

    let http = tokio::spawn(serve_http(
        opts.metrics_bind_address,
        opts.healthz_bind_address,
        shared.clone(),
        counters,
        shutdown.clone(),
    ));
    let veths = tokio::spawn(watch_pod_veths(
        opts.pod_bridge.clone(),
        dp.clone(),
        shared.clone(),
        shutdown.clone(),
    ));

    let mut svc_changes = services.subscribe();
    let mut ep_changes = endpoints.subscribe();
    let mut node_changes = nodes.subscribe();
    let mut ctx = ctx;
    let mut dirty = true;
    let mut pending_since: Option<Instant> = Some(Instant::now());
    loop {
        if dirty {
            // Coalesce bursts: one recompute per 10 ms at most.
            tokio::time::sleep(Duration::from_millis(10)).await;
            while svc_changes.try_recv().is_ok() || ep_changes.try_recv().is_ok() {}
            let svcs: Vec<Service> = services.list().iter().map(|s| (**s).clone()).collect();
            let eps: Vec<Endpoints> = endpoints.list().iter().map(|e| (**e).clone()).collect();
            let state = desired(&svcs, &eps, &ctx, &mut ids);
            let d = Desired::new(state, &ids);
            debug!(generation = d.generation, "desired state computed");
            if let Ok(mut s) = shared.lock() {
                s.names = service_names(&svcs, &ids);
            }
            let _ = desired_tx.send(Some(Arc::new(d)));
            dirty = false;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = svc_changes.recv() => { note(&r); dirty = true; pending_since.get_or_insert_with(Instant::now); }
            r = ep_changes.recv() => { note(&r); dirty = true; pending_since.get_or_insert_with(Instant::now); }
            r = node_changes.recv() => {
                note(&r);
                if let Some(n) = nodes.get("", &opts.node_name) {
                    match node_context(&opts, &n) {
                        Ok(c) if c != ctx => { ctx = c; dirty = true; pending_since.get_or_insert_with(Instant::now); }
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "node object unusable; keeping the previous node config"),
                    }
                }
            }
            r = status_rx.changed() => {
                if r.is_err() { break; }
                let st = status_rx.borrow_and_update().clone();
                ids.release_applied(st.applied_generation);
                if let Ok(mut s) = shared.lock() {
                    if st.applied_generation == ids.generation() {
                        s.synced = true;
                        if let Some(t) = pending_since.take() {
                            s.programming = Some(t.elapsed());
                        }
                    }
                    s.status = st;
                }
            }
        }
    }
    drop(desired_tx);
    match writer_task.await {
        Ok(Ok(_maps)) => {}
        Ok(Err(e)) => warn!(error = %e, "writer stopped with an error"),
        Err(e) => warn!(error = %e, "writer task failed"),
    }
    let _ = http.await;
    let _ = veths.await;
    info!("proxy stopped; the dataplane keeps running from its pins");
    Ok(())
}

fn note<T>(r: &std::result::Result<T, tokio::sync::broadcast::error::RecvError>) {
    if let Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) = r {
        debug!(
            missed = n,
            "change notifications lagged; recomputing from the caches"
        );
    }
}

fn spawn<K: xkube_client::Object + k8s_openapi::Resource>(
    api: Api<K>,
    lp: ListParams,
    shutdown: &CancellationToken,
) -> Store<K> {
    Reflector::new(api, lp).spawn(shutdown.child_token()).0
}

/// The node's context from its Node object: InternalIP, podCIDR, the bridge address.
fn node_context(opts: &Options, node: &Node) -> Result<NodeContext> {
    let addrs: Vec<Ipv4Addr> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let primary = *addrs.first().ok_or_else(|| Error::NodeConfig {
        node: opts.node_name.clone(),
        reason: "no InternalIP address in status.addresses".into(),
    })?;
    let pod_cidr: Option<Ipv4Cidr> = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .and_then(|c| c.parse().ok());
    let mut ctx = NodeContext::new(opts.node_name.clone(), primary);
    ctx.node_addrs = addrs;
    ctx.pod_cidr = pod_cidr;
    ctx.cluster_cidr = opts.cluster_cidr;
    ctx.hairpin_addr = pod_cidr
        .map(|c| Ipv4Addr::from(u32::from(c.network()) + 1))
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    ctx.uplink_ifindex = ifindex(&opts.uplink)?;
    Ok(ctx)
}

fn ifindex(iface: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(iface).map_err(|e| Error::Uplink {
        iface: iface.to_owned(),
        reason: e.to_string(),
    })
}

/// The cgroup v2 directory of this process.
fn own_cgroup() -> Result<PathBuf> {
    xkube_netns::cgroup::own().map_err(|e| Error::NodeConfig {
        node: String::new(),
        reason: format!("this process's cgroup: {e}"),
    })
}

fn service_names(svcs: &[Service], ids: &Ids) -> BTreeMap<u16, String> {
    let mut out = BTreeMap::new();
    for s in svcs {
        let (Some(spec), Some(name)) = (s.spec.as_ref(), s.metadata.name.as_deref()) else {
            continue;
        };
        let ns = s.metadata.namespace.as_deref().unwrap_or("default");
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|i| i.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        for p in spec.ports.iter().flatten() {
            let proto = match p.protocol.as_deref() {
                Some("UDP") => IPPROTO_UDP,
                _ => IPPROTO_TCP,
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            if let Some(id) = ids.service(&ServiceIdent {
                cluster_ip: ip,
                port,
                proto,
            }) {
                let pname = p.name.clone().unwrap_or_else(|| port.to_string());
                let proto = if proto == IPPROTO_UDP { "udp" } else { "tcp" };
                out.insert(id, format!("{ns}/{name}:{pname}/{proto}"));
            }
        }
    }
    out
}

/// Attaches the pod programs to every veth on the pod bridge, and removes the links of veths
/// that went away. Polls the bridge's ports once a second (the proxy does not depend on the
/// kubelet to tell it about pods).
async fn watch_pod_veths(
    bridge: String,
    dp: Arc<Mutex<Datapath>>,
    shared: Arc<Mutex<Shared>>,
    shutdown: CancellationToken,
) {
    let mut attached: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ports = match bridge_ports(&bridge).await {
            Ok(p) => p,
            Err(e) => {
                debug!(bridge = %bridge, error = %e, "listing pod bridge ports");
                continue;
            }
        };
        for p in ports.difference(&attached).cloned().collect::<Vec<_>>() {
            let r = dp.lock().map_err(|_| ()).map(|mut d| d.attach_pod(&p));
            match r {
                Ok(Ok(())) => {
                    debug!(veth = %p, "pod programs attached");
                    attached.insert(p);
                }
                Ok(Err(e)) => warn!(veth = %p, error = %e, "attaching pod programs"),
                Err(()) => return,
            }
        }
        for p in attached.difference(&ports).cloned().collect::<Vec<_>>() {
            if let Ok(mut d) = dp.lock()
                && let Err(e) = d.detach_pod(&p)
            {
                debug!(veth = %p, error = %e, "removing pod links");
            }
            attached.remove(&p);
        }
        if let Ok(mut s) = shared.lock() {
            s.pod_links = attached.len();
        }
    }
}

/// Names of the links enslaved to `bridge` (excluding the bridge itself).
async fn bridge_ports(bridge: &str) -> std::result::Result<BTreeSet<String>, String> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut links = handle.link().get().execute();
    let mut all = Vec::new();
    while let Some(l) = links.try_next().await.map_err(|e| e.to_string())? {
        all.push(l);
    }
    let name_of = |l: &rtnetlink::packet_route::link::LinkMessage| {
        l.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
    };
    let Some(br) = all
        .iter()
        .find(|l| name_of(l).as_deref() == Some(bridge))
        .map(|l| l.header.index)
    else {
        return Ok(BTreeSet::new());
    };
    Ok(all
        .iter()
        .filter(|l| {
            l.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(c) if *c == br))
        })
        .filter_map(name_of)
        .collect())
}

async fn serve_http(
    metrics: SocketAddr,
    healthz: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    counters: Maps,
    shutdown: CancellationToken,
) {
    use axum::{Router, http::StatusCode, routing::get};
    let counters = Arc::new(Mutex::new(counters));
    let s1 = shared.clone();
    let metrics_app = Router::new().route(
        "/metrics",
        get(move || {
            let shared = s1.clone();
            let counters = counters.clone();
            async move { render_metrics(&shared, &counters) }
        }),
    );
    let s2 = shared.clone();
    let health_app = Router::new().route(
        "/healthz",
        get(move || {
            let shared = s2.clone();
            async move {
                let synced = shared.lock().map(|s| s.synced).unwrap_or(false);
                if synced {
                    (StatusCode::OK, "ok\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not synced yet\n")
                }
            }
        }),
    );
    let serve = |addr: SocketAddr, app: Router| {
        let token = shutdown.clone();
        async move {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    if let Err(e) = axum::serve(l, app)
                        .with_graceful_shutdown(token.cancelled_owned())
                        .await
                    {
                        warn!(%addr, error = %e, "HTTP server");
                    }
                }
                Err(e) => warn!(%addr, error = %e, "binding HTTP server"),
            }
        }
    };
    tokio::join!(serve(metrics, metrics_app), serve(healthz, health_app));
}

fn render_metrics(shared: &Mutex<Shared>, counters: &Mutex<Maps>) -> String {
    use std::fmt::Write as _;
    let Ok(s) = shared.lock() else {
        return String::new();
    };
    let sums: BTreeMap<u16, ServiceCounters> = counters
        .lock()
        .ok()
        .and_then(|m| read_counters(&m, s.names.keys().copied()).ok())
        .unwrap_or_default();
    let mut out = String::new();
    for (metric, help, get) in [
        (
            "xkube_proxy_service_packets_total",
            "Packets translated per service port (tc and XDP paths).",
            (|c: &ServiceCounters| c.packets) as fn(&ServiceCounters) -> u64,
        ),
        (
            "xkube_proxy_service_bytes_total",
            "Bytes translated per service port (tc and XDP paths).",
            |c| c.bytes,
        ),
        (
            "xkube_proxy_service_connections_total",
            "New connections per service port (socket LB connects/sends, new conntrack flows).",
            |c| c.connections,
        ),
        (
            "xkube_proxy_service_rejected_total",
            "Connections rejected because the service had no endpoints.",
            |c| c.rejected,
        ),
    ] {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
        for (id, name) in &s.names {
            let v = sums.get(id).map(get).unwrap_or(0);
            let _ = writeln!(out, "{metric}{{service=\"{name}\"}} {v}");
        }
    }
    let st = &s.status;
    let _ = writeln!(
        out,
        "# HELP xkube_proxy_sync_total Successful map syncs.\n# TYPE xkube_proxy_sync_total counter\nxkube_proxy_sync_total {}",
        st.syncs
    );
    let _ = writeln!(
        out,
        "# HELP xkube_proxy_sync_errors_total Failed map syncs.\n# TYPE xkube_proxy_sync_errors_total counter\nxkube_proxy_sync_errors_total {}",
        st.errors
    );
    if let Some(last) = &st.last_sync {
        let _ = writeln!(
            out,
            "# HELP xkube_proxy_sync_duration_seconds Plan + apply time of the last sync.\n# TYPE xkube_proxy_sync_duration_seconds gauge\nxkube_proxy_sync_duration_seconds {:.6}",
            last.total.as_secs_f64()
        );
    }
    if let Some(p) = s.programming {
        let _ = writeln!(
            out,
            "# HELP xkube_proxy_network_programming_duration_seconds From a Service/Endpoints change seen to the maps written, last change.\n# TYPE xkube_proxy_network_programming_duration_seconds gauge\nxkube_proxy_network_programming_duration_seconds {:.6}",
            p.as_secs_f64()
        );
    }
    let _ = writeln!(
        out,
        "# HELP xkube_proxy_pod_interfaces Pod veths with the tc programs attached.\n# TYPE xkube_proxy_pod_interfaces gauge\nxkube_proxy_pod_interfaces {}",
        s.pod_links
    );
    out
}
