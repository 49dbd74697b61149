//! Assembling and running the apiserver: store, allocators, watch caches, built-in objects,
//! PKI, listeners (TLS on the secure port, plain HTTP on 127.0.0.1 for the insecure port).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use futures::FutureExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use xkube_api::ResourceInfo;
use xkube_store::{Store, StoreSpec};

use crate::admission;
use crate::alloc::{Allocators, IpRange, PortRange};
use crate::auth::{Authenticator, Authorizer};
use crate::error::{Error, Result};
use crate::http::App;
use crate::limits;
use crate::metrics::Metrics;
use crate::options::{AuthorizationMode, Options, StorageBackend};
use crate::pki::{self, Pki};
use crate::registry::{Registry, WriteOptions};
use crate::watchcache::WatchCache;

/// Where to listen.
#[derive(Debug, Clone, Copy)]
pub struct Listen {
    /// TLS address (authentication and authorization apply).
    pub secure: Option<SocketAddr>,
    /// Plain HTTP address (no authentication; keep it on loopback).
    pub insecure: Option<SocketAddr>,
}

impl Listen {
    /// The listeners the flags ask for.
    pub fn from_options(o: &Options) -> Self {
        Listen {
            secure: Some(SocketAddr::new(o.bind_address, o.secure_port)),
            insecure: (o.insecure_port != 0)
                .then(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), o.insecure_port)),
        }
    }
}

/// A started apiserver.
pub struct RunningServer {
    /// Bound TLS address.
    pub secure_addr: Option<SocketAddr>,
    /// Bound plain HTTP address.
    pub insecure_addr: Option<SocketAddr>,
    /// The admin kubeconfig written for the secure address.
    pub kubeconfig: Option<PathBuf>,
    /// The cluster CA certificate.
    pub ca_cert: Option<PathBuf>,
    /// The store the server uses.
    pub store: Arc<dyn Store>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl RunningServer {
    /// Base URL of the plain HTTP listener (`http://127.0.0.1:port`).
    pub fn http_url(&self) -> Option<String> {
        self.insecure_addr.map(|a| format!("http://{a}"))
    }

    /// Stops serving and waits for the tasks to end.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    self.tasks.abort_all();
                    break;
                }
                r = self.tasks.join_next() => if r.is_none() { break },
            }
        }
    }

    /// Waits until the server's token is cancelled, then stops.
    pub async fn wait(self) {
        self.cancel.cancelled().await;
        self.stop().await;
    }
}

async fn open_store(o: &Options) -> Result<Arc<dyn Store>> {
    let spec = match o.backend() {
        StorageBackend::Memory => StoreSpec::Memory,
        StorageBackend::Embedded => StoreSpec::Embedded {
            dir: o.data_dir.clone(),
        },
        StorageBackend::Etcd => {
            if o.etcd_servers.is_empty() {
                return Err(Error::Config(
                    "--storage-backend=etcd needs --etcd-servers".into(),
                ));
            }
            StoreSpec::Etcd {
                endpoints: o.etcd_servers.clone(),
                prefix: o.etcd_prefix.clone(),
            }
        }
    };
    Ok(xkube_store::open(&spec).await?)
}

/// How the apiserver answers one request of a connection: bodies declared too large are
/// refused before a byte is read (413 for every verb and route), and a handler that panics
/// still answers (500) rather than dropping the connection.
async fn serve_request(
    router: Router,
    req: http::Request<hyper::body::Incoming>,
) -> axum::response::Response {
    // A client waiting for `100 Continue` sends nothing; any other is writing the body, which
    // is drained so that it reads this answer.
    if limits::declared_too_large(req.headers()) {
        let (parts, body) = req.into_parts();
        if !limits::expects_continue(&parts.headers) {
            limits::drain(body);
        }
        return limits::too_large_response();
    }
    let served = router.oneshot(req.map(|b| axum::body::Body::new(limits::Draining::new(b))));
    match std::panic::AssertUnwindSafe(served).catch_unwind().await {
        Ok(Ok(r)) => r,
        Ok(Err(never)) => match never {},
        Err(_) => {
            tracing::error!("request handler panicked");
            limits::status_response(&xkube_api::StatusError::internal(
                "the request handler failed",
            ))
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        addr: addr.to_string(),
        source,
    })
}

fn ignore_exists(
    r: std::result::Result<crate::registry::Written, xkube_api::StatusError>,
) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.reason == "AlreadyExists" => Ok(()),
        Err(e) => Err(Error::Config(format!(
            "creating a built-in object: {}",
            e.message
        ))),
    }
}

async fn ensure_builtins(
    reg: &Arc<Registry>,
    first_ip: Ipv4Addr,
    endpoint: SocketAddr,
) -> Result<()> {
    let find = |p| {
        xkube_api::resources::find("", "v1", p)
            .ok_or_else(|| Error::Config(format!("resource {p} is not registered")))
    };
    let namespaces = find("namespaces")?;
    let opts = WriteOptions::default();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        if reg.get(namespaces, None, ns).await.is_err() {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            ignore_exists(reg.create(namespaces, None, obj, &opts).await)?;
        }
    }
    let services = find("services")?;
    match reg.get(services, Some("default"), "kubernetes").await {
        // The secure port may differ from the last start: keep targetPort in step.
        Ok((svc, _)) if svc["spec"]["ports"][0]["targetPort"] != json!(endpoint.port()) => {
            let mut s = svc.clone();
            s["spec"]["ports"][0]["targetPort"] = json!(endpoint.port());
            reg.update(
                services,
                Some("default"),
                "kubernetes",
                s,
                None,
                &opts,
                None,
            )
            .await
            .map_err(|e| {
                Error::Config(format!("updating the kubernetes service: {}", e.message))
            })?;
        }
        Ok(_) => {}
        Err(_) => {
            let svc = json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {"clusterIP": first_ip.to_string(),
                         "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": endpoint.port()}]},
            });
            ignore_exists(reg.create(services, Some("default"), svc, &opts).await)?;
        }
    }
    ensure_rbac_bootstrap(reg).await?;
    // The kubernetes Service's Endpoints and EndpointSlice, both written here as Kubernetes'
    // endpoint reconciler does (the Endpoints say `skip-mirror`: the mirroring controller
    // leaves them alone, and the proxies find the apiserver without a controller-manager).
    let subsets = json!([{"addresses": [{"ip": endpoint.ip().to_string()}],
                          "ports": [{"name": "https", "port": endpoint.port(), "protocol": "TCP"}]}]);
    let ep = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": subsets,
    });
    ensure_default_object(reg, find("endpoints")?, ep, &["subsets"]).await?;
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [endpoint.ip().to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": endpoint.port(), "protocol": "TCP"}],
    });
    let slices = xkube_api::resources::find("discovery.k8s.io", "v1", "endpointslices")
        .ok_or_else(|| Error::Config("resource endpointslices is not registered".into()))?;
    ensure_default_object(reg, slices, slice, &["endpoints", "ports"]).await
}

/// Creates `want` in the default namespace, or replaces it when one of its `fields` differs.
async fn ensure_default_object(
    reg: &Arc<Registry>,
    res: &'static ResourceInfo,
    want: Value,
    fields: &[&str],
) -> Result<()> {
    let name = want["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match reg.get(res, Some("default"), &name).await {
        Ok((cur, _)) if fields.iter().all(|f| cur[*f] == want[*f]) => Ok(()),
        Ok(_) => reg
            .update(
                res,
                Some("default"),
                &name,
                want,
                None,
                &WriteOptions::default(),
                None,
            )
            .await
            .map(drop)
            .map_err(|e| Error::Config(format!("updating {} {name}: {}", res.plural, e.message))),
        Err(_) => ignore_exists(
            reg.create(res, Some("default"), want, &WriteOptions::default())
                .await,
        ),
    }
}

/// Creates Kubernetes' bootstrap ClusterRoles and ClusterRoleBindings, and adds the missing
/// bootstrap rules and subjects to those still annotated
/// `rbac.authorization.kubernetes.io/autoupdate: "true"` (Kubernetes' RBAC post-start hook);
/// others are the operator's to change.
async fn ensure_rbac_bootstrap(reg: &Arc<Registry>) -> Result<()> {
    let find = |p| {
        xkube_api::resources::find(xkube_api::rbac::GROUP, "v1", p)
            .ok_or_else(|| Error::Config(format!("resource {p} is not registered")))
    };
    let to_value = |v: std::result::Result<Value, serde_json::Error>| {
        v.map_err(|e| Error::Config(format!("encoding the bootstrap policy: {e}")))
    };
    let mut objects = Vec::new();
    let roles = find("clusterroles")?;
    for r in xkube_api::rbac::bootstrap_cluster_roles() {
        objects.push((roles, to_value(serde_json::to_value(r))?, "rules"));
    }
    let bindings = find("clusterrolebindings")?;
    for b in xkube_api::rbac::bootstrap_cluster_role_bindings() {
        objects.push((bindings, to_value(serde_json::to_value(b))?, "subjects"));
    }
    let opts = WriteOptions::default();
    for (res, mut obj, field) in objects {
        obj["apiVersion"] = json!(res.api_version());
        obj["kind"] = json!(res.kind);
        let name = xkube_api::meta::name(&obj).to_string();
        match reg.get(res, None, &name).await {
            Err(e) if e.code == 404 => ignore_exists(reg.create(res, None, obj, &opts).await)?,
            Err(e) => {
                return Err(Error::Config(format!(
                    "reading {} {name}: {}",
                    res.plural, e.message
                )));
            }
            Ok((cur, _)) => {
                let auto = cur["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"]
                    == "true";
                // Kubernetes' reconciliation adds what is missing and keeps what an operator
                // added (a break-glass subject on cluster-admin survives restarts).
                let mut merged = cur[field].as_array().cloned().unwrap_or_default();
                for item in obj[field].as_array().into_iter().flatten() {
                    if !merged.contains(item) {
                        merged.push(item.clone());
                    }
                }
                if auto && cur[field] != Value::Array(merged.clone()) {
                    let mut next = cur.clone();
                    next[field] = Value::Array(merged);
                    xkube_api::meta::remove(&mut next, "resourceVersion");
                    reg.update(res, None, &name, next, None, &opts, None)
                        .await
                        .map_err(|e| {
                            Error::Config(format!(
                                "reconciling {} {name}: {}",
                                res.plural, e.message
                            ))
                        })?;
                }
            }
        }
    }
    Ok(())
}

/// Starts an apiserver with `opts` on `listen`, on `store` (or the store the flags select).
/// Returns once it serves; `cancel` stops it.
pub async fn start(
    opts: Options,
    listen: Listen,
    store: Option<Arc<dyn Store>>,
    cancel: CancellationToken,
) -> Result<RunningServer> {
    let ips = IpRange::parse(&opts.service_cluster_ip_range)?;
    let ports = PortRange::parse(&opts.service_node_port_range)?;
    let chain = admission::parse_chain(&opts.admission_control)?;
    let (authn, abac) = {
        let o = opts.clone();
        tokio::task::spawn_blocking(move || -> Result<_> {
            let authn = Authenticator::load(
                o.token_auth_file.as_deref(),
                o.basic_auth_file.as_deref(),
                o.anonymous_auth,
            )?;
            let abac = match &o.authorization_policy_file {
                Some(p) if o.authorization_mode.contains(&AuthorizationMode::Abac) => {
                    Some(crate::auth::load_abac(p)?)
                }
                _ => None,
            };
            Ok((authn, abac))
        })
        .await
        .map_err(|e| Error::Config(format!("loading auth files failed: {e}")))??
    };
    let data_dir = opts.data_dir.clone();
    tokio::fs::create_dir_all(&data_dir)
        .await
        .map_err(Error::io("create", &data_dir))?;
    let sa_verifier = {
        let path = opts.service_account_key_path();
        let create = opts.service_account_key_file.is_none();
        tokio::task::spawn_blocking(move || -> Result<_> {
            let key = |e: crate::satoken::KeyError| Error::Config(e.to_string());
            if create {
                // Created, or created by the controller-manager first: both write it whole
                // (a temporary file linked into place).
                crate::satoken::create_key_if_missing(&path).map_err(key)?;
            }
            crate::satoken::Verifier::from_file(&path).map_err(key)
        })
        .await
        .map_err(|e| Error::Config(format!("loading the service account key failed: {e}")))??
    };
    let store = match store {
        Some(s) => s,
        None => open_store(&opts).await?,
    };
    let alloc = Allocators::new(store.clone(), ips, ports);
    alloc.repair().await?;

    let mut tasks = JoinSet::new();
    let mut caches = HashMap::new();
    let bookmark = Duration::from_secs(opts.bookmark_interval_seconds.max(1));
    for res in xkube_api::RESOURCES.iter().filter(|r| r.persisted()) {
        let cache = WatchCache::new(res, opts.watch_cache_size);
        tasks.spawn(cache.clone().run(store.clone(), bookmark, cancel.clone()));
        caches.insert(res.plural, cache);
    }
    // Serve only once every watch cache holds its first list (bounded wait).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !caches.values().all(|c: &Arc<WatchCache>| c.is_ready()) {
        if tokio::time::Instant::now() > deadline {
            tracing::warn!("watch caches are not ready after 30s; serving anyway");
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let authz = Authorizer::new(&opts.authorization_mode, abac, &caches)?;
    let registry = Arc::new(Registry {
        store: store.clone(),
        alloc,
        caches,
    });

    // Listeners first: the built-in Endpoints publish the bound port.
    let secure_listener = match listen.secure {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let insecure_listener = match listen.insecure {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let secure_addr = secure_listener.as_ref().and_then(|l| l.local_addr().ok());
    let insecure_addr = insecure_listener.as_ref().and_then(|l| l.local_addr().ok());
    let advertise_ip = opts
        .advertise_address
        .unwrap_or_else(|| match opts.bind_address {
            a if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            a => a,
        });
    let port = secure_addr.or(insecure_addr).map_or(0, |a| a.port());
    let endpoint = SocketAddr::new(advertise_ip, port);
    ensure_builtins(&registry, ips.first(), endpoint).await?;

    let mut kubeconfig = None;
    let mut ca_cert = None;
    let tls = match secure_addr {
        Some(addr) => {
            let extra = [opts.bind_address, advertise_ip];
            let first_ip = IpAddr::V4(ips.first());
            let dir = data_dir.clone();
            let client_ca = opts.client_ca_file.clone();
            let host = if addr.ip().is_unspecified() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                addr.ip()
            };
            let server_url = format!("https://{}", SocketAddr::new(host, addr.port()));
            let kc_path = data_dir.join("admin.kubeconfig");
            let kc = kc_path.clone();
            let (cfg, pki) = tokio::task::spawn_blocking(move || -> Result<_> {
                let sans = pki::default_sans(first_ip, &extra);
                let pki = Pki::ensure(&dir, &sans)?;
                pki.write_kubeconfig(&kc, &server_url)?;
                let cfg = pki::server_config(&pki, client_ca.as_deref())?;
                Ok((cfg, pki))
            })
            .await
            .map_err(|e| Error::Tls(format!("certificate task failed: {e}")))??;
            kubeconfig = Some(kc_path);
            ca_cert = Some(pki.ca_cert.clone());
            Some(tokio_rustls::TlsAcceptor::from(cfg))
        }
        None => None,
    };

    let kubelet = {
        let o = opts.clone();
        let extra = [opts.bind_address, advertise_ip];
        let first_ip = IpAddr::V4(ips.first());
        tokio::task::spawn_blocking(move || kubelet_client(&o, first_ip, &extra))
            .await
            .map_err(|e| Error::Tls(format!("kubelet client task failed: {e}")))??
    };
    let app = Arc::new(App {
        registry: registry.clone(),
        authn,
        authz,
        admission: chain,
        quota_locks: Default::default(),
        sa_verifier: Some(sa_verifier),
        sa_lookup: opts.service_account_lookup,
        kubelet,
        metrics: Metrics::default(),
        advertise: endpoint.to_string(),
        shutdown: cancel.clone(),
    });
    let router = Router::new().fallback(crate::http::handle).with_state(app);
    let handler = move |req| serve_request(router.clone(), req);
    if let Some(l) = secure_listener {
        tracing::info!(addr = ?secure_addr, "serving securely");
        tasks.spawn(xkube_serve::accept_loop(
            l,
            tls,
            handler.clone(),
            cancel.clone(),
        ));
    }
    if let Some(l) = insecure_listener {
        tracing::info!(addr = ?insecure_addr, "serving insecurely on loopback");
        tasks.spawn(xkube_serve::accept_loop(
            l,
            None,
            handler.clone(),
            cancel.clone(),
        ));
    }
    tasks.spawn(event_gc(registry.clone(), opts.event_ttl, cancel.clone()));
    if opts.compaction_interval_seconds > 0 {
        tasks.spawn(compactor(
            store.clone(),
            Duration::from_secs(opts.compaction_interval_seconds),
            cancel.clone(),
        ));
    }
    Ok(RunningServer {
        secure_addr,
        insecure_addr,
        kubeconfig,
        ca_cert,
        store,
        cancel,
        tasks,
    })
}

/// The client of the kubelets from `--kubelet-client-certificate/-key` and
/// `--kubelet-certificate-authority`, defaulting to the generated PKI (made if missing).
/// Blocking.
fn kubelet_client(
    o: &Options,
    first_service_ip: IpAddr,
    extra_sans: &[IpAddr],
) -> Result<crate::logs::KubeletClient> {
    let generated = || -> Result<Pki> {
        Pki::ensure(
            &o.data_dir,
            &pki::default_sans(first_service_ip, extra_sans),
        )
    };
    let (cert, key) = match (&o.kubelet_client_certificate, &o.kubelet_client_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => {
            let p = generated()?;
            (p.kubelet_client_cert, p.kubelet_client_key)
        }
        _ => {
            return Err(Error::Config(
                "--kubelet-client-certificate and --kubelet-client-key go together".into(),
            ));
        }
    };
    let ca = match &o.kubelet_certificate_authority {
        Some(ca) => ca.clone(),
        None => generated()?.ca_cert,
    };
    crate::logs::KubeletClient::new(&ca, &cert, &key)
}

/// Compacts the store every `every`, keeping one interval of history (as Kubernetes does).
async fn compactor(store: Arc<dyn Store>, every: Duration, cancel: CancellationToken) {
    let mut last: Option<i64> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Some(rev) = last
            && let Err(e) = store.compact(rev).await
        {
            tracing::warn!(error = %e, "compaction failed");
        }
        last = store.current_revision().await.ok();
    }
}

/// Deletes events older than `ttl` (by last timestamp), like Kubernetes' event TTL. Reads
/// the events watch cache; each delete is conditional on the cached resourceVersion.
async fn event_gc(registry: Arc<Registry>, ttl: Duration, cancel: CancellationToken) {
    let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
    let Some(events) = xkube_api::resources::find("", "v1", "events") else {
        return;
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let Some((cached, _)) = registry
            .caches
            .get(events.plural)
            .and_then(|c| c.list(&events.key_prefix(None)))
        else {
            continue;
        };
        let now = jiff::Timestamp::now();
        for ev in cached {
            let at = ["lastTimestamp", "eventTime", "firstTimestamp"]
                .iter()
                .find_map(|k| ev[*k].as_str())
                .or_else(|| ev["metadata"]["creationTimestamp"].as_str())
                .and_then(xkube_api::meta::parse_time);
            let expired =
                at.is_some_and(|t| now.as_second() - t.as_second() > ttl.as_secs() as i64);
            let Ok(rev) = xkube_api::meta::resource_version(&ev).parse() else {
                continue;
            };
            if expired {
                let ns = ev["metadata"]["namespace"].as_str();
                let key = events.key(ns, xkube_api::meta::name(&ev));
                let _ = registry.store.delete(&key, Some(rev)).await;
            }
        }
    }
}

/// Runs the apiserver the flags describe until `shutdown` is cancelled.
pub async fn run(opts: Options, shutdown: CancellationToken) -> Result<()> {
    let listen = Listen::from_options(&opts);
    let server = start(opts, listen, None, shutdown.child_token()).await?;
    if let Some(k) = &server.kubeconfig {
        tracing::info!(kubeconfig = %k.display(), "admin kubeconfig written");
    }
    shutdown.cancelled().await;
    server.stop().await;
    Ok(())
}
