//! A test cluster: an in-process apiserver and kubelets (process runtime) whose node networks
//! live in test-owned network namespaces joined by a fabric bridge at 198.18.0.0/24. Drop
//! stops the kubelets and kills and removes every pod process, cgroup, mount and namespace.
//! The kubelet APIs serve HTTPS with certificates of a test CA and accept its client
//! certificates; the test talks to them as `test-admin` (authorization AlwaysAllow: the
//! in-process apiserver answers no SubjectAccessReviews here).

#![allow(dead_code)]

pub mod dockerd;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use tokio_util::sync::CancellationToken;
use xkube_apiserver::{
    RunningServer,
    pki::{self, Pki},
    testing::TestServer,
};
use xkube_client::{Api, Client, Config};
use xkube_kubelet::{Kubelet, Options, PodNetworkEvent};
use xkube_netns::NetNs;

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn assert_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "kubelet integration tests need root (network namespaces, cgroups, mounts); CI runs as root"
    );
}

pub struct NodeFix {
    pub name: String,
    pub ns: NetNs,
    pub ip: Ipv4Addr,
    pub pod_cidr: String,
    pub root: PathBuf,
    pub cgroup: PathBuf,
    pub opts: Options,
    pub token: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<xkube_kubelet::Result<()>>>,
    pub events: Option<tokio::sync::broadcast::Receiver<PodNetworkEvent>>,
    /// A runtime to use instead of the process runtime.
    pub runtime: Option<std::sync::Arc<dyn xkube_kubelet::ContainerRuntime>>,
}

pub struct Cluster {
    pub server: Option<RunningServer>,
    /// The CA of the kubelets' serving and client certificates.
    pub pki: Pki,
    /// TLS as `test-admin` (client certificate of `pki`), verifying the kubelets.
    pub admin_tls: Arc<rustls::ClientConfig>,
    /// TLS without a client certificate, verifying the kubelets.
    pub anonymous_tls: Arc<rustls::ClientConfig>,
    pub client: Client,
    pub fabric: NetNs,
    pub nodes: Vec<NodeFix>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, |_| {}).await
    }

    pub async fn start_with(n: usize, tweak: impl Fn(&mut Options)) -> Self {
        Self::start_custom(n, tweak, |_| None).await
    }

    /// `runtime_for(i)`: a runtime for node `i` instead of the process runtime.
    pub async fn start_custom(
        n: usize,
        tweak: impl Fn(&mut Options),
        runtime_for: impl Fn(usize) -> Option<std::sync::Arc<dyn xkube_kubelet::ContainerRuntime>>,
    ) -> Self {
        assert_root();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("tempdir");
        let server = TestServer::builder(dir.path().join("api"))
            .memory()
            .start()
            .await
            .expect("apiserver starts");
        let client =
            Client::new(&Config::new(server.http_url().expect("http listener"))).expect("client");
        let fabric = NetNs::unique("xkl-fab").expect("fabric namespace");
        fabric.add_bridge("br0").expect("fabric bridge");
        let pki =
            Pki::ensure(&dir.path().join("kubelet-ca"), &["127.0.0.1".into()]).expect("test CA");
        let admin = pki
            .ca()
            .expect("CA")
            .issue_client("test-admin", &["system:masters"])
            .expect("admin client certificate");
        let admin_tls = client_tls(&pki, Some(&admin));
        let anonymous_tls = client_tls(&pki, None);
        let mut c = Self {
            server: Some(server),
            pki,
            admin_tls,
            anonymous_tls,
            client,
            fabric,
            nodes: Vec::new(),
            dir,
        };
        for i in 0..n {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let name = format!("kt-{}-{seq}", std::process::id());
            let ns = NetNs::unique("xkl-node").expect("node namespace");
            let port = format!("n{}", i);
            xkube_netns::veth_pair(&c.fabric, &port, &ns, "eth0").expect("uplink");
            c.fabric.enslave(&port, "br0").expect("enslave uplink");
            let ip = Ipv4Addr::new(198, 18, 0, 11 + u8::try_from(i).expect("few nodes"));
            ns.configure("eth0", ip, 24).expect("node address");
            let root = c.dir.path().join(&name);
            let cgroup_rel = format!("xkube-test-{name}");
            let cgroup = xkube_netns::cgroup::v2_root()
                .expect("cgroup v2 mounted")
                .join(&cgroup_rel);
            let pod_cidr = format!("10.244.{}.0/24", i + 1);
            let mut opts = Options::new(&name, root.clone());
            opts.pod_cidr = Some(pod_cidr.clone());
            opts.node_ip = Some(ip);
            opts.node_netns = Some(ns.path().to_owned());
            opts.pause_command = vec!["sleep".into(), "infinity".into()];
            opts.cgroup_root = cgroup_rel;
            opts.backoff_initial_seconds = 1;
            opts.node_status_update_frequency = Duration::from_secs(2);
            let serving = c
                .pki
                .ca()
                .expect("CA")
                .issue_serving(
                    &format!("system:node:{name}"),
                    &[ip.to_string(), name.clone()],
                )
                .expect("serving certificate");
            let (crt, key) = (root.join("serving.crt"), root.join("serving.key"));
            serving
                .write(&crt, &key)
                .expect("write serving certificate");
            opts.tls_cert_file = Some(crt);
            opts.tls_private_key_file = Some(key);
            opts.client_ca_file = Some(c.pki.ca_cert.clone());
            opts.authorization_mode = xkube_kubelet::AuthorizationMode::AlwaysAllow;
            tweak(&mut opts);
            let mut node = NodeFix {
                name,
                ns,
                ip,
                pod_cidr,
                root,
                cgroup,
                opts,
                token: CancellationToken::new(),
                task: None,
                events: None,
                runtime: None,
            };
            node.runtime = runtime_for(i);
            c.start_kubelet(&mut node);
            c.nodes.push(node);
        }
        for node in &c.nodes {
            let api = Api::<k8s_openapi::api::core::v1::Node>::all(c.client.clone());
            api.wait_for(&node.name, Duration::from_secs(30), |n| {
                n.and_then(|n| n.status.as_ref())
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .await
            .expect("node registers and is Ready");
        }
        c
    }

    pub fn start_kubelet(&self, node: &mut NodeFix) {
        node.token = CancellationToken::new();
        let mut k = Kubelet::new(node.opts.clone()).with_client(self.client.clone());
        if let Some(rt) = &node.runtime {
            k = k.with_runtime(rt.clone());
        }
        node.events = Some(k.pod_network_events());
        let token = node.token.clone();
        node.task = Some(tokio::spawn(k.run(token)));
    }

    /// Stops a kubelet (its pods keep running).
    pub async fn stop_kubelet(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.token.cancel();
        if let Some(t) = node.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("kubelet stops within 30 s")
                .expect("kubelet task does not panic")
                .expect("kubelet ends cleanly");
        }
    }

    pub fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Creates `pod` (JSON) bound to node `i` in `default`.
    pub async fn create_pod(&self, i: usize, mut pod: serde_json::Value) -> Pod {
        pod["spec"]["nodeName"] = serde_json::json!(self.nodes[i].name);
        let p: Pod = serde_json::from_value(pod).expect("pod literal");
        self.pods("default").create(&p).await.expect("create pod")
    }

    pub async fn wait_pod(&self, name: &str, what: &str, cond: impl FnMut(&Pod) -> bool) -> Pod {
        let mut cond = cond;
        match self
            .pods("default")
            .wait_for(name, Duration::from_secs(60), |p| p.is_some_and(&mut cond))
            .await
        {
            Ok(Some(p)) => p,
            other => {
                let cur = self.pods("default").get_opt(name).await;
                panic!("pod {name}: timed out waiting for {what} ({other:?}); now: {cur:#?}")
            }
        }
    }

    pub async fn wait_running(&self, name: &str) -> Pod {
        self.wait_pod(name, "Running and Ready", |p| {
            phase(p) == "Running" && condition(p, "Ready") == "True"
        })
        .await
    }

    pub async fn wait_gone(&self, name: &str) {
        self.pods("default")
            .wait_for(name, Duration::from_secs(60), |p| p.is_none())
            .await
            .unwrap_or_else(|e| panic!("pod {name} was not deleted: {e}"));
    }

    /// GET on the kubelet API of node `i` (from inside the node's namespace).
    pub fn kubelet_get(&self, i: usize, path: &str) -> (u16, String) {
        self.kubelet_request(i, "GET", path)
    }

    /// A request to the kubelet API of node `i` as `test-admin`.
    pub fn kubelet_request(&self, i: usize, method: &str, path: &str) -> (u16, String) {
        self.kubelet_request_with(i, method, path, self.admin_tls.clone(), None)
    }

    /// A request to the kubelet API of node `i` over HTTPS with `tls` (and a bearer token),
    /// sent from inside the node's namespace. Status 0: no HTTP answer.
    pub fn kubelet_request_with(
        &self,
        i: usize,
        method: &str,
        path: &str,
        tls: Arc<rustls::ClientConfig>,
        bearer: Option<&str>,
    ) -> (u16, String) {
        let node = &self.nodes[i];
        let addr = (node.ip, node.opts.port);
        let auth = bearer
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req =
            format!("{method} {path} HTTP/1.0\r\nHost: kubelet\r\n{auth}Content-Length: 0\r\n\r\n");
        let name = rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::V4(node.ip).into());
        node.ns
            .run(move || {
                let s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))
                    .expect("connect to kubelet API");
                s.set_read_timeout(Some(Duration::from_secs(30)))
                    .expect("timeout");
                let conn = rustls::ClientConnection::new(tls, name).expect("TLS client");
                let mut s = rustls::StreamOwned::new(conn, s);
                if s.write_all(req.as_bytes()).is_err() {
                    return (0, String::new());
                }
                let mut out = Vec::new();
                // A peer closing without close_notify still delivered what it sent.
                let _ = s.read_to_end(&mut out);
                http_response(&out)
            })
            .expect("enter node namespace")
    }

    /// The same request in plain HTTP to the TLS port: the raw bytes that came back.
    pub fn kubelet_plain_http(&self, i: usize, path: &str) -> Vec<u8> {
        let node = &self.nodes[i];
        let addr = (node.ip, node.opts.port);
        let req = format!("GET {path} HTTP/1.0\r\nHost: kubelet\r\n\r\n");
        node.ns
            .run(move || {
                let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))
                    .expect("connect to kubelet API");
                s.set_read_timeout(Some(Duration::from_secs(15)))
                    .expect("timeout");
                let _ = s.write_all(req.as_bytes());
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                out
            })
            .expect("enter node namespace")
    }

    /// Logs of a container through the kubelet API.
    pub fn logs(&self, i: usize, pod: &str, container: &str) -> String {
        let (code, body) =
            self.kubelet_get(i, &format!("/containerLogs/default/{pod}/{container}"));
        assert_eq!(code, 200, "logs of {pod}/{container}: {body}");
        body
    }

    /// Waits until the container's log contains `needle`.
    pub async fn wait_log(&self, i: usize, pod: &str, container: &str, needle: &str) -> String {
        for _ in 0..300 {
            let l = self.logs(i, pod, container);
            if l.contains(needle) {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "log of {pod}/{container} never contained {needle:?}: {:?}",
            self.logs(i, pod, container)
        );
    }

    /// Runs a command in a container through the kubelet API.
    pub fn exec(&self, i: usize, pod: &str, container: &str, cmd: &[&str]) -> (u16, String) {
        let q: String = cmd
            .iter()
            .map(|c| format!("command={}", url_encode(c)))
            .collect::<Vec<_>>()
            .join("&");
        self.kubelet_request(i, "POST", &format!("/exec/default/{pod}/{container}?{q}"))
    }

    /// Link names in node `i`'s namespace.
    pub fn links(&self, i: usize) -> Vec<String> {
        self.nodes[i]
            .ns
            .block_on(async {
                use futures::TryStreamExt;
                let h = xkube_netns::connect().expect("netlink");
                let mut names = Vec::new();
                let mut l = h.link().get().execute();
                while let Some(m) = l.try_next().await.expect("dump links") {
                    for a in m.attributes {
                        if let rtnetlink::packet_route::link::LinkAttribute::IfName(n) = a {
                            names.push(n);
                        }
                    }
                }
                names
            })
            .expect("enter node namespace")
    }

    /// Pod cgroups left under node `i`'s cgroup root.
    pub fn pod_cgroups(&self, i: usize) -> Vec<String> {
        std::fs::read_dir(&self.nodes[i].cgroup)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts node `i` runs no pod: no pod veth, no pod cgroup, no pod dir.
    pub async fn assert_clean(&self, i: usize) {
        for _ in 0..100 {
            let veths = self
                .links(i)
                .into_iter()
                .filter(|l| l.starts_with("veth"))
                .count();
            if veths == 0 && self.pod_cgroups(i).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let links = self.links(i);
        assert!(
            !links.iter().any(|l| l.starts_with("veth")),
            "pod veths left on {}: {links:?}",
            self.nodes[i].name
        );
        assert!(
            self.pod_cgroups(i).is_empty(),
            "pod cgroups left: {:?}",
            self.pod_cgroups(i)
        );
        let pods = self.nodes[i].root.join("pods");
        let left: Vec<_> = std::fs::read_dir(&pods)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "pod dirs left: {left:?}");
    }
}

pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

pub fn condition(p: &Pod, t: &str) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == t))
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

/// Waiting reason of the pod's first container (`ImagePullBackOff`, ...).
pub fn waiting_reason(p: &Pod) -> Option<String> {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
}

pub fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

fn kill_cgroup_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.path().is_dir() {
            kill_cgroup_tree(&e.path());
        }
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..200 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.token.cancel();
        }
        // Pods outlive a stopped kubelet by design: kill whatever a failed test left.
        for n in &self.nodes {
            kill_cgroup_tree(&n.cgroup);
            if let Ok(m) = std::fs::read_to_string("/proc/self/mounts") {
                for p in m.lines().filter_map(|l| l.split_whitespace().nth(1)) {
                    if Path::new(p).starts_with(&n.root) {
                        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
                    }
                }
            }
        }
    }
}

/// A rustls client trusting `pki`'s CA, presenting `identity` when given.
pub fn client_tls(pki: &Pki, identity: Option<&pki::Issued>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in pki::load_certs(&pki.ca_cert).expect("CA certificate") {
        roots.add(c).expect("root");
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_root_certificates(roots);
    let cfg = match identity {
        Some(id) => {
            let certs = rustls_pemfile::certs(&mut id.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("certificate");
            let key = rustls_pemfile::private_key(&mut id.key_pem.as_bytes())
                .expect("key pem")
                .expect("a key");
            b.with_client_auth_cert(certs, key).expect("client auth")
        }
        None => b.with_no_client_auth(),
    };
    Arc::new(cfg)
}

/// Status code and body of a raw HTTP/1.x response (0 when there is none).
pub fn http_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .strip_prefix("HTTP/1.")
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_owned())
}
