//! `xkube demo probe`: the eBPF build chain end to end on two throwaway network namespaces.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::programs::XdpMode;
use clap::Subcommand;
use xkube_netns::{NetNs, veth_pair};
use xkube_proxy::ebpf::probe::Probe;

#[derive(Subcommand)]
pub enum Demo {
    /// On a cluster made by `xkube cluster up`: wait for Service `web` to have ready
    /// endpoints, then call it through the eBPF proxy — NodePort on every node from the
    /// external client, ClusterIP from a node's host process — and show the proxy metrics.
    Service {
        /// Cluster name.
        #[arg(long, default_value = "xk")]
        name: String,
        #[arg(long, default_value = xkube_cluster::DEFAULT_DATA_ROOT)]
        data_root: std::path::PathBuf,
        /// The Service to call.
        #[arg(long, default_value = "web")]
        service: String,
        /// Requests per target (bounded).
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1000))]
        requests: u32,
    },
    /// Attach the XDP probe to a veth in a throwaway namespace, send UDP and TCP to it and
    /// show the counters and the program's log lines.
    Probe {
        /// Datagrams and connections to send (bounded).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        count: u32,
    },
}

impl Demo {
    pub fn run(self) -> Result<()> {
        match self {
            Demo::Probe { count } => probe(count),
            Demo::Service {
                name,
                data_root,
                service,
                requests,
            } => service_demo(&name, &data_root, &service, requests),
        }
    }
}

/// Collects aya-log records for printing.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl log::Log for Lines {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut l) = self.0.lock() {
            l.push(format!("{} {}", record.level(), record.args()));
        }
    }
    fn flush(&self) {}
}

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 1);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 2);

fn probe(count: u32) -> Result<()> {
    let stale = xkube_netns::reap_stale("xkdemo").context("removing stale demo namespaces")?;
    if !stale.is_empty() {
        println!("removed {} stale demo namespace(s)", stale.len());
    }
    let client = NetNs::unique("xkdemo").context("creating the client namespace")?;
    let node = NetNs::unique("xkdemo").context("creating the node namespace")?;
    veth_pair(&client, "eth0", &node, "uplink").context("creating the veth pair")?;
    client.configure("eth0", CLIENT_IP, 30)?;
    node.configure("uplink", NODE_IP, 30)?;
    println!(
        "namespaces: client {} ({CLIENT_IP}) <-veth-> node {} ({NODE_IP})",
        client.name(),
        node.name()
    );

    let mut probe = Probe::load().context("loading xkube_probe (verifier)")?;
    let lines = Lines::default();
    let mut logger = probe.logger(lines.clone())?;
    node.run(|| probe.attach("uplink", XdpMode::Skb))??;
    println!(
        "attached XDP program xkube_probe to uplink in {}",
        node.name()
    );

    let udp = node.run(|| UdpSocket::bind((NODE_IP, 7000)))??;
    udp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let tcp = node.run(|| TcpListener::bind((NODE_IP, 7001)))??;
    let server = std::thread::spawn(move || -> std::io::Result<u32> {
        let mut served = 0;
        for _ in 0..count {
            let (mut s, _) = tcp.accept()?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf)?;
            s.write_all(&buf)?;
            served += 1;
        }
        Ok(served)
    });
    client.run(|| -> Result<()> {
        let s = UdpSocket::bind((CLIENT_IP, 0))?;
        for i in 0..count {
            s.send_to(&i.to_be_bytes(), (NODE_IP, 7000))?;
        }
        for i in 0..count {
            let mut c =
                TcpStream::connect_timeout(&(NODE_IP, 7001).into(), Duration::from_secs(5))?;
            c.write_all(&i.to_be_bytes())?;
            let mut back = [0u8; 4];
            c.read_exact(&mut back)?;
        }
        Ok(())
    })??;
    let mut buf = [0u8; 16];
    for _ in 0..count {
        udp.recv_from(&mut buf)
            .context("UDP datagram through the probe")?;
    }
    let served = server
        .join()
        .map_err(|_| anyhow::anyhow!("TCP server thread panicked"))??;

    let c = probe.counters()?;
    logger.flush();
    println!("sent {count} UDP datagrams and {served} TCP request/responses through the probe");
    println!(
        "xkube_probe counters: frames={} ipv4={} tcp={} udp={} bytes={}",
        c.frames, c.ipv4, c.tcp, c.udp, c.bytes
    );
    for l in lines.0.lock().map(|l| l.clone()).unwrap_or_default() {
        println!("ebpf log: {l}");
    }
    if c.udp < u64::from(count) || c.tcp < u64::from(served) {
        bail!("the probe missed packets: {c:?}");
    }
    println!("ok: the eBPF chain works (build -> verifier -> attach -> maps -> log)");
    Ok(())
}

fn http_get(to: std::net::SocketAddrV4, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
        .unwrap_or(out))
}

fn service_demo(name: &str, data_root: &std::path::Path, svc: &str, requests: u32) -> Result<()> {
    let state_path = data_root.join(name).join("state.json");
    let state: xkube_cluster::State = serde_json::from_str(
        &std::fs::read_to_string(&state_path)
            .with_context(|| format!("no cluster {name:?} ({})", state_path.display()))?,
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config = xkube_client::Config::load(Some(&state.kubeconfig), &Default::default())?;
    let client = xkube_client::Client::new(&config)?;
    let services: xkube_client::Api<k8s_openapi::api::core::v1::Service> =
        xkube_client::Api::namespaced(client.clone(), "default");
    let endpoints: xkube_client::Api<k8s_openapi::api::core::v1::Endpoints> =
        xkube_client::Api::namespaced(client, "default");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (cluster_ip, node_port, ready) = loop {
        let (s, e) = rt.block_on(async { (services.get(svc).await, endpoints.get(svc).await) });
        if let (Ok(s), Ok(e)) = (s, e) {
            let spec = s.spec.unwrap_or_default();
            let ready: usize = e
                .subsets
                .unwrap_or_default()
                .iter()
                .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
                .sum();
            let ip: Option<Ipv4Addr> = spec.cluster_ip.as_deref().and_then(|i| i.parse().ok());
            let port = spec.ports.as_ref().and_then(|p| p.first());
            if let (Some(ip), Some(p), true) = (ip, port, ready > 0) {
                break (ip, (p.port as u16, p.node_port.map(|n| n as u16)), ready);
            }
        }
        if std::time::Instant::now() > deadline {
            bail!("service {svc} has no ready endpoints after 120 s (kubectl get pods,ep)");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!(
        "service {svc}: ClusterIP {cluster_ip}:{}, {ready} ready endpoint(s)",
        node_port.0
    );
    let client_ns = NetNs::borrowed(&format!("xkc-{name}-client"))?;
    if let Some(np) = node_port.1 {
        for n in &state.nodes {
            let to = std::net::SocketAddrV4::new(n.addr, np);
            let answers = client_ns.run(|| {
                (0..requests)
                    .map(|_| http_get(to, "/whoami").unwrap_or_else(|e| format!("FAILED: {e}")))
                    .collect::<Vec<_>>()
            })?;
            println!("external client -> NodePort {to} (XDP on {}):", n.name);
            for a in answers {
                println!("    {a}   (pod name, client address the pod saw)");
            }
        }
    }
    if let Some(n) = state.nodes.first() {
        let _inside = xkube_netns::cgroup::enter(&n.cgroup)?;
        let ns = NetNs::borrowed(&n.namespace)?;
        let to = std::net::SocketAddrV4::new(cluster_ip, node_port.0);
        let answers = ns.run(|| {
            (0..requests)
                .map(|_| http_get(to, "/whoami").unwrap_or_else(|e| format!("FAILED: {e}")))
                .collect::<Vec<_>>()
        })?;
        println!("host process on {} -> ClusterIP {to} (socket LB):", n.name);
        for a in answers {
            println!("    {a}");
        }
        let metrics =
            ns.run(|| http_get(std::net::SocketAddrV4::new(n.addr, 10249), "/metrics"))??;
        println!(
            "proxy metrics on {} (:10249/metrics, service {svc}):",
            n.name
        );
        for l in metrics.lines().filter(|l| l.contains(&format!("/{svc}:"))) {
            println!("    {l}");
        }
    }
    println!(
        "the cluster stays up: kubectl --kubeconfig {} get pods -o wide; xkube cluster down --name {name}",
        state.kubeconfig.display()
    );
    Ok(())
}
