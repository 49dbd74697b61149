//! `xkube dns`: the cluster DNS server, serving the cluster domain (`cluster.local`) as the
//! Kubernetes DNS specification says, from a watch-fed cache of Services, EndpointSlices and
//! Pods, over UDP and TCP with EDNS0 (hickory-server).
//!
//! - [`records`]: objects -> records (pure).
//! - [`table`]: the record table queries read, updated per changed Service.
//! - [`feed`]: reflectors and the index of slices by Service, feeding the table.
//! - [`handler`]: the zones as hickory zone handlers in a catalog, measured per query.
//! - [`metrics`]: Prometheus text on `--metrics-bind` (`/metrics`; `/healthz`, `/ready`).
//!
//! Names outside the served zones go to the `--upstream` resolvers when some are given
//! (reverse names no Service or pod holds fall through to them too, as CoreDNS's `fallthrough
//! in-addr.arpa ip6.arpa`); without upstreams they are answered REFUSED (the server is
//! authoritative for its zones only and offers no recursion).
//!
//! The server answers once the caches have listed and the table is built: queries that
//! arrive before wait in the socket's buffer rather than being told NXDOMAIN for names that
//! exist.

pub mod error;
pub mod feed;
pub mod handler;
pub mod metrics;
pub mod records;
pub mod table;

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::proto::rr::Name;
use hickory_server::resolver::config::NameServerConfig;
use hickory_server::store::forwarder::{ForwardConfig, ForwardZoneHandler};
use hickory_server::zone_handler::{Catalog, ZoneHandler};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use xkube_client::Client;
use xkube_client::runtime::reflect;

pub use error::{Error, Result};
use handler::{Measured, Records, TableZone};
use metrics::Metrics;
pub use table::PodsMode;
use table::Table;

/// Flags of `xkube dns` (CoreDNS's defaults where it has them).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Where the apiserver is (in a pod: the in-cluster config from `KUBERNETES_SERVICE_HOST`
    /// and the service-account token).
    #[command(flatten)]
    pub connection: xkube_client::ConnectionFlags,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local", env = "XKUBE_CLUSTER_DOMAIN")]
    pub cluster_domain: String,
    /// Address (UDP and TCP) queries are served on; port 0 picks one for both.
    #[arg(long, default_value = "0.0.0.0:53", env = "XKUBE_DNS_BIND")]
    pub bind: SocketAddr,
    /// Address of the Prometheus metrics (`/metrics`), `/healthz` and `/ready`.
    #[arg(long, default_value = "0.0.0.0:9153", env = "XKUBE_DNS_METRICS_BIND")]
    pub metrics_bind: SocketAddr,
    /// Resolvers (port 53, UDP then TCP) that names outside the cluster domain are forwarded
    /// to; none: such names are REFUSED.
    #[arg(long, value_delimiter = ',', env = "XKUBE_DNS_UPSTREAM")]
    pub upstream: Vec<IpAddr>,
    /// TTL of every answer, and of negative answers (the SOA minimum).
    #[arg(long, default_value_t = 5)]
    pub ttl: u32,
    /// Pod records (`a-b-c-d.<ns>.pod.<domain>`): disabled, insecure (any well-formed name)
    /// or verified (pods that exist).
    #[arg(long, value_enum, default_value_t = PodsMode::Insecure)]
    pub pods: PodsMode,
    /// How often the whole table is recomputed from the caches (level-triggered safety net).
    #[arg(long, default_value = "5m", value_parser = xkube_api::duration::parse)]
    pub resync_period: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connection: xkube_client::ConnectionFlags::default(),
            cluster_domain: "cluster.local".into(),
            bind: SocketAddr::from(([0, 0, 0, 0], 53)),
            metrics_bind: SocketAddr::from(([0, 0, 0, 0], 9153)),
            upstream: Vec::new(),
            ttl: 5,
            pods: PodsMode::Insecure,
            resync_period: Duration::from_secs(300),
        }
    }
}

/// A serving DNS server.
pub struct Running {
    /// Bound UDP address.
    pub udp: SocketAddr,
    /// Bound TCP address (same port as UDP).
    pub tcp: SocketAddr,
    /// Bound metrics address.
    pub metrics_addr: SocketAddr,
    /// The counters behind `/metrics`.
    pub metrics: Arc<Metrics>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Waits until every task ended (after the shutdown token was cancelled).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Binds UDP and TCP on `addr`, on one port when `addr`'s port is 0.
async fn bind_dns(addr: SocketAddr) -> Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..8 {
        let udp = UdpSocket::bind(addr).await.map_err(|source| Error::Io {
            op: "binding UDP",
            addr,
            source,
        })?;
        let bound = udp.local_addr().map_err(|source| Error::Io {
            op: "reading the UDP address",
            addr,
            source,
        })?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // An ephemeral UDP port whose TCP twin is taken: pick another.
            Err(e) if addr.port() == 0 => last = Some((bound, e)),
            Err(source) => {
                return Err(Error::Io {
                    op: "binding TCP",
                    addr: bound,
                    source,
                });
            }
        }
    }
    let (addr, source) = last.unwrap_or_else(|| (addr, std::io::Error::other("no port")));
    Err(Error::Io {
        op: "binding TCP",
        addr,
        source,
    })
}

/// The catalog: the cluster zone and the reverse zones from the table, and the upstream
/// forwarder for the root zone (and reverse names the table lacks) when there is one.
fn catalog(
    opts: &Options,
    zone: &Name,
    records: &Records,
    metrics: &Arc<Metrics>,
) -> Result<Catalog> {
    let forwarder: Option<Arc<dyn ZoneHandler>> = if opts.upstream.is_empty() {
        None
    } else {
        let config = ForwardConfig {
            name_servers: opts
                .upstream
                .iter()
                .map(|ip| NameServerConfig::udp_and_tcp(*ip))
                .collect(),
            options: None,
        };
        let f = ForwardZoneHandler::builder_tokio(config)
            .build()
            .map_err(|e| Error::Config(format!("--upstream: {e}")))?;
        Some(Arc::new(f))
    };
    let mut c = Catalog::new();
    let cluster = TableZone::new(zone, records.clone(), metrics.clone(), false);
    c.upsert(zone.into(), vec![Arc::new(cluster)]);
    for rev in reverse_zones() {
        let z = TableZone::new(&rev, records.clone(), metrics.clone(), forwarder.is_some());
        let mut handlers: Vec<Arc<dyn ZoneHandler>> = vec![Arc::new(z)];
        handlers.extend(forwarder.clone());
        c.upsert(rev.into(), handlers);
    }
    if let Some(f) = forwarder {
        c.upsert(Name::root().into(), vec![f]);
    }
    Ok(c)
}

fn reverse_zones() -> [Name; 2] {
    // Literals that always parse.
    let parse = |s| Name::from_str(s).unwrap_or_else(|_| Name::root());
    [parse("in-addr.arpa."), parse("ip6.arpa.")]
}

/// Starts serving with `client`: reflectors, the table feed, the DNS listeners (answering
/// once the table is built) and the metrics endpoint; everything stops on `shutdown`.
pub async fn serve(
    opts: &Options,
    client: Client,
    shutdown: &CancellationToken,
) -> Result<Running> {
    let zone = records::Zone::new(&opts.cluster_domain, opts.ttl).map_err(Error::Config)?;
    let origin = zone.origin.clone();
    let serial = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1);
    let records = Records::new(Table::new(zone, opts.pods, &reverse_zones(), serial));
    let metrics = Arc::new(Metrics::new());
    let catalog = catalog(opts, &origin, &records, &metrics)?;

    let (udp, tcp) = bind_dns(opts.bind).await?;
    let udp_addr = udp.local_addr().map_err(|source| Error::Io {
        op: "reading the UDP address",
        addr: opts.bind,
        source,
    })?;
    let tcp_addr = tcp.local_addr().map_err(|source| Error::Io {
        op: "reading the TCP address",
        addr: opts.bind,
        source,
    })?;
    let metrics_listener = TcpListener::bind(opts.metrics_bind)
        .await
        .map_err(|source| Error::Io {
            op: "binding metrics",
            addr: opts.metrics_bind,
            source,
        })?;
    let metrics_addr = metrics_listener.local_addr().map_err(|source| Error::Io {
        op: "reading the metrics address",
        addr: opts.metrics_bind,
        source,
    })?;

    let feed = feed::Feed::new(
        records,
        metrics.clone(),
        reflect::<Service>(&client, shutdown),
        reflect::<EndpointSlice>(&client, shutdown),
        reflect::<Pod>(&client, shutdown),
        opts.resync_period,
    );
    let mut ready = feed.ready();
    let mut tasks = JoinSet::new();
    tasks.spawn(feed.run(shutdown.clone()));
    tasks.spawn(serve_metrics(
        metrics_listener,
        metrics.clone(),
        ready.clone(),
        shutdown.clone(),
    ));
    let handler = Measured {
        catalog,
        metrics: metrics.clone(),
    };
    let token = shutdown.clone();
    tasks.spawn(async move {
        tokio::select! {
            _ = token.cancelled() => return,
            r = ready.wait_for(|r| *r) => if r.is_err() { return },
        }
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64);
        tracing::info!(udp = %udp_addr, tcp = %tcp_addr, "serving DNS");
        token.cancelled().await;
        if let Err(e) = server.shutdown_gracefully().await {
            tracing::warn!(error = %e, "DNS server shutdown");
        }
    });
    Ok(Running {
        udp: udp_addr,
        tcp: tcp_addr,
        metrics_addr,
        metrics,
        tasks,
    })
}

async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: tokio::sync::watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    use axum::{Router, http::StatusCode, routing::get};
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    let mut out = String::new();
                    m.render(&mut out);
                    out
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(move || {
                let ready = *ready.borrow();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced\n")
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "metrics server");
    }
}

/// `xkube dns`: builds the client from the connection flags and serves until `shutdown`.
pub async fn run(opts: Options, shutdown: CancellationToken) -> Result<()> {
    let client = opts.connection.client()?;
    let running = serve(&opts, client, &shutdown).await?;
    tracing::info!(
        domain = %opts.cluster_domain,
        dns = %running.udp,
        metrics = %running.metrics_addr,
        upstreams = opts.upstream.len(),
        "xkube dns started"
    );
    running.wait().await;
    Ok(())
}
