//! The proxy agent (`xkube proxy`, also inside `xkube agent`): Services and EndpointSlices
//! from the apiserver (list + watch, parsed on arrival, no object cache; kube-proxy reads
//! slices only, and the controller-manager mirrors every Endpoints object into slices) and this node's
//! Node object
//! (a reflector), fed to the
//! mode-independent [sync loop](crate::sync) which drives the mode chosen by `--proxy-mode`
//! through the [`Proxier`](crate::mode::Proxier) seam. Metrics on `:10249/metrics`, health on
//! `:10256/healthz`.
//!
//! Starting in one mode removes every other mode's state once its own first sync succeeded
//! (make before break); `--cleanup` removes every mode's state and exits.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt as _, stream::BoxStream};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use xkube_client::{Api, Batch, Change, Client, ListParams, Reflector, Store, batched, watcher};

pub use crate::mode::{ProxyMode, ebpf::XdpAttach};
use crate::{
    Error, Result,
    metrics::ProxyMetrics,
    mode::{
        CleanupContext, ModeMetrics, NodeInfo, Proxier, cleanup_all, cleanup_other_modes,
        ebpf::{EbpfOptions, EbpfProxier},
        iptables::{IptablesOptions, IptablesProxier},
        nftables::NftablesProxier,
        userspace::{UserspaceOptions, UserspaceProxier},
    },
    model::{Ipv4Cidr, ServiceName},
    sync::{Input, SyncConfig, SyncLoop},
};

/// A duration flag: Go-style (`1s`, `500ms`, `1m30s`) or ISO 8601, parsed by jiff.
pub fn parse_period(s: &str) -> std::result::Result<Duration, String> {
    let d: jiff::SignedDuration = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    Duration::try_from(d).map_err(|e| format!("{s:?}: {e}"))
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
    #[arg(long, env = "XKUBE_CLUSTER_CIDR", default_value = xkube_api::cluster::CLUSTER_CIDR)]
    pub cluster_cidr: Ipv4Cidr,
    /// Prometheus metrics address.
    #[arg(long, default_value = xkube_api::cluster::PROXY_METRICS_ADDRESS)]
    pub metrics_bind_address: SocketAddr,
    /// Health check address.
    #[arg(long, default_value = xkube_api::cluster::PROXY_HEALTHZ_ADDRESS)]
    pub healthz_bind_address: SocketAddr,
    /// Remove every mode's state of this node (programs, links, pins, maps, chains) and exit.
    #[arg(long)]
    pub cleanup: bool,
    #[command(flatten)]
    pub sync: SyncOptions,
    #[command(flatten)]
    pub ebpf: EbpfOptions,
    /// The iptables backend is shared with the userspace mode, which writes iptables
    /// redirections too.
    #[command(flatten)]
    pub iptables: IptablesOptions,
    #[command(flatten)]
    pub userspace: UserspaceOptions,
}

/// kube-proxy's sync timing flags.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct SyncOptions {
    /// The minimum interval between syncs; changes within it are coalesced. Default: the
    /// mode's (eBPF 10ms, its partial syncs cost microseconds; iptables 1s, as kube-proxy).
    #[arg(long, env = "XKUBE_MIN_SYNC_PERIOD", value_parser = parse_period)]
    pub min_sync_period: Option<Duration>,
    /// The longest interval between syncs; the eBPF mode's are full syncs, which re-read the
    /// kernel's state and repair drift (the iptables mode's full syncs are hourly).
    #[arg(long, env = "XKUBE_SYNC_PERIOD", default_value = "30s", value_parser = parse_period)]
    pub sync_period: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            min_sync_period: None,
            sync_period: SyncConfig::default().sync_period,
        }
    }
}

impl Options {
    fn cleanup_context(&self) -> CleanupContext {
        CleanupContext {
            node_name: self.node_name.clone(),
            bpf_root: self.ebpf.bpf_root.clone(),
        }
    }
}

/// Runs the proxy until `shutdown`; the mode's state keeps working afterwards where it can
/// (the eBPF dataplane is pinned).
pub async fn run(opts: Options, client: Client, shutdown: CancellationToken) -> Result<()> {
    if opts.sync.min_sync_period > Some(opts.sync.sync_period) {
        return Err(Error::Flag {
            flag: "min-sync-period",
            reason: "longer than --sync-period".into(),
        });
    }
    if opts.cleanup {
        cleanup_all(&opts.cleanup_context())?;
        info!(node = %opts.node_name, "removed the state of every proxy mode");
        return Ok(());
    }
    // Services and EndpointSlices are watched without a cache: the change tracker parses each
    // object on arrival and keeps only what the model needs (a reflector would hold every
    // object).
    let mut svc_watch = batched(watcher(
        Api::<Service>::all(client.clone()),
        ListParams::default(),
    ))
    .boxed();
    let mut ep_watch = batched(watcher(
        Api::<EndpointSlice>::all(client.clone()),
        ListParams::default(),
    ))
    .boxed();
    let nodes: Store<Node> = spawn(
        Api::all(client.clone()),
        ListParams::default().fields(&format!("metadata.name={}", opts.node_name)),
        &shutdown,
    );
    let node_changes = nodes.subscribe();
    // The first list of each: the first sync must see everything (a sync from a partial list
    // would remove the services not listed yet).
    let (mut first_svcs, mut first_eps) = (None, None);
    while first_svcs.is_none() || first_eps.is_none() {
        tokio::select! {
            e = svc_watch.next() => match e {
                Some(Ok(Batch::Relisted(v))) => first_svcs = Some(v),
                Some(Ok(_)) => {}
                Some(Err(err)) => debug!(error = %err, "watching services"),
                None => return Ok(()),
            },
            e = ep_watch.next() => match e {
                Some(Ok(Batch::Relisted(v))) => first_eps = Some(v),
                Some(Ok(_)) => {}
                Some(Err(err)) => debug!(error = %err, "watching endpointslices"),
                None => return Ok(()),
            },
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    // The kubelet registers the Node and posts its addresses; the controller-manager assigns
    // the pod CIDR. Wait for a usable Node object.
    let mut waited = 0u32;
    let node = loop {
        if let Some(n) = nodes.get("", &opts.node_name) {
            match node_info(&opts, &n) {
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
    info!(node = %node.name, addrs = ?node.addrs, pod_cidr = ?node.pod_cidr, mode = opts.proxy_mode.name(), "proxy starting");

    let proxier: Box<dyn Proxier> = match opts.proxy_mode {
        ProxyMode::Ebpf => Box::new(EbpfProxier::start(&opts.ebpf, &node, &shutdown)?),
        ProxyMode::Iptables => Box::new(IptablesProxier::new(&opts.iptables, &node)?),
        ProxyMode::Nftables => Box::new(NftablesProxier::new(opts.iptables.masquerade_all, &node)?),
        ProxyMode::Userspace => Box::new(UserspaceProxier::new(
            &opts.userspace,
            opts.iptables.iptables_backend,
            &node,
        )?),
    };
    let mode_metrics = proxier.metrics();
    let metrics = Arc::new(ProxyMetrics::new());
    let http = tokio::spawn(serve_http(
        opts.metrics_bind_address,
        opts.healthz_bind_address,
        metrics.clone(),
        mode_metrics,
        opts.sync.sync_period * 2,
        shutdown.clone(),
    ));

    let (tx, rx) = mpsc::channel(4096);
    let _ = tx
        .send(Input::Relist {
            services: first_svcs.into_iter().flatten().map(Arc::new).collect(),
            endpoints: Vec::new(),
            slices: first_eps.into_iter().flatten().map(Arc::new).collect(),
        })
        .await;
    let forward = tokio::spawn(forward_changes(
        opts.clone(),
        (svc_watch, ep_watch),
        nodes.clone(),
        node_changes,
        node,
        tx,
        shutdown.clone(),
    ));
    let config = SyncConfig {
        min_sync_period: opts
            .sync
            .min_sync_period
            .unwrap_or_else(|| proxier.timing().min_sync_period)
            .min(opts.sync.sync_period),
        sync_period: opts.sync.sync_period,
    };
    // The other modes' state goes once this mode serves: a node switched from one mode to
    // another keeps serving through the switch (both translate new connections the same way;
    // whichever sees a packet first translates it).
    let (mode, ctx) = (opts.proxy_mode, opts.cleanup_context());
    let res = SyncLoop::new(proxier, config, metrics)
        .after_first_sync(Box::new(move || {
            cleanup_other_modes(mode, &ctx)?;
            info!(mode = mode.name(), "state of the other proxy modes removed");
            Ok(())
        }))
        .run(rx, shutdown.clone())
        .await;
    shutdown.cancel();
    let _ = forward.await;
    let _ = http.await;
    match res {
        Ok(_proxier) => {
            info!("proxy stopped; the dataplane keeps running");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

type Watches = (
    BoxStream<'static, xkube_client::Result<Batch<Service>>>,
    BoxStream<'static, xkube_client::Result<Batch<EndpointSlice>>>,
);

/// Turns watch events and Node changes into sync loop inputs.
async fn forward_changes(
    opts: Options,
    (mut svc, mut ep): Watches,
    nodes: Store<Node>,
    mut node_rx: broadcast::Receiver<Change<Node>>,
    mut node: NodeInfo,
    tx: mpsc::Sender<Input>,
    shutdown: CancellationToken,
) {
    use broadcast::error::RecvError;
    loop {
        let input = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = svc.next() => match e {
                Some(Ok(Batch::Applied(s))) => Some(Input::ServiceApplied(Arc::new(s))),
                Some(Ok(Batch::Deleted(s))) => Some(Input::ServiceDeleted(ServiceName::of_service(&s))),
                Some(Ok(Batch::Relisted(v))) => Some(Input::ServicesRelisted(v.into_iter().map(Arc::new).collect())),
                Some(Err(err)) => { debug!(error = %err, "watching services"); None }
                None => return,
            },
            e = ep.next() => match e {
                Some(Ok(Batch::Applied(e))) => Some(Input::SliceApplied(Arc::new(e))),
                Some(Ok(Batch::Deleted(e))) => Some(Input::SliceDeleted(Arc::new(e))),
                Some(Ok(Batch::Relisted(v))) => Some(Input::SlicesRelisted(v.into_iter().map(Arc::new).collect())),
                Some(Err(err)) => { debug!(error = %err, "watching endpointslices"); None }
                None => return,
            },
            r = node_rx.recv() => match r {
                Err(RecvError::Closed) => return,
                _ => match nodes.get("", &opts.node_name).map(|n| node_info(&opts, &n)) {
                    Some(Ok(n)) if n != node => { node = n.clone(); Some(Input::Node(n)) }
                    Some(Err(e)) => { warn!(error = %e, "node object unusable; keeping the previous node facts"); None }
                    _ => None,
                },
            },
        };
        if let Some(i) = input
            && tx.send(i).await.is_err()
        {
            return;
        }
    }
}

fn spawn<K: xkube_client::Object + k8s_openapi::Resource>(
    api: Api<K>,
    lp: ListParams,
    shutdown: &CancellationToken,
) -> Store<K> {
    Reflector::new(api, lp).spawn(shutdown.child_token()).0
}

/// The node's facts from its Node object: InternalIP/ExternalIP addresses, podCIDR.
fn node_info(opts: &Options, node: &Node) -> Result<NodeInfo> {
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
    if addrs.is_empty() {
        return Err(Error::NodeConfig {
            node: opts.node_name.clone(),
            reason: "no InternalIP address in status.addresses".into(),
        });
    }
    let pod_cidr: Option<Ipv4Cidr> = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .and_then(|c| c.parse().ok());
    Ok(NodeInfo {
        name: opts.node_name.clone(),
        addrs,
        pod_cidr,
        cluster_cidr: opts.cluster_cidr,
    })
}

async fn serve_http(
    metrics_addr: SocketAddr,
    healthz: SocketAddr,
    metrics: Arc<ProxyMetrics>,
    mode_metrics: Arc<dyn ModeMetrics>,
    max_age: Duration,
    shutdown: CancellationToken,
) {
    use axum::{Router, http::StatusCode, routing::get};
    let m1 = metrics.clone();
    let metrics_app = Router::new().route(
        "/metrics",
        get(move || {
            let m = m1.clone();
            let mode = mode_metrics.clone();
            async move {
                let mut out = String::new();
                mode.render(&mut out);
                m.render(&mut out);
                out
            }
        }),
    );
    let health_app = Router::new().route(
        "/healthz",
        get(move || {
            let m = metrics.clone();
            async move {
                if m.healthy(max_age) {
                    (StatusCode::OK, "ok\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not synced recently\n")
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
    tokio::join!(serve(metrics_addr, metrics_app), serve(healthz, health_app));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_parse_go_style() {
        assert_eq!(parse_period("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_period("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_period("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_period("-1s").is_err());
        assert!(parse_period("soon").is_err());
    }
}
