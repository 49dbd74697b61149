//! Privileged end-to-end tests of the eBPF dataplane on a fixture of network namespaces:
//!
//! ```text
//!  client 198.18.0.100 ──┐
//!                        ├── fabric (bridge br0) ──┬── node1 eth0 198.18.0.11 ── cbr0 10.244.1.1 ── pod-1a 10.244.1.10
//!                        │                         └── node2 eth0 198.18.0.12 ── cbr0 10.244.2.1 ── pod-2a 10.244.2.10
//!                                                                                              └── pod-2b 10.244.2.11
//! ```
//! Each node runs its own copy of the datapath (XDP on eth0 in native mode with a pass program
//! on the fabric side, tc on eth0 egress and on pod veths, socket LB on a node cgroup), and its
//! maps are written from Kubernetes `Service`/`Endpoints` objects by the same pure function and
//! writer the agent uses. Pods are real TCP/UDP servers (threads bound inside the pod
//! namespaces) that answer with their name and the client address they saw.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use serde_json::json;
use xkube_netns::{NetNs, cgroup::Cgroup, veth_pair};
use xkube_proxy::{
    dataplane::{
        DesiredState, Ids, Ipv4Cidr, Maps, NodeContext, desired, plan, read_actual, writer,
    },
    ebpf::datapath::{self, Datapath},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const UDP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const NODE_PORT: u16 = 30080;
const UDP_NODE_PORT: u16 = 30053;
const IO_TIMEOUT: Duration = Duration::from_secs(3);

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "eBPF tests need root; CI runs them as root"
    );
}

/// A backend pod: its namespace and its servers.
struct Pod {
    name: &'static str,
    ip: Ipv4Addr,
    node: &'static str,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    _ns: NetNs,
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One node: namespace, datapath, maps and the writer state.
struct Node {
    name: &'static str,
    ns: NetNs,
    dp: Option<Datapath>,
    maps: Option<Maps>,
    written: Arc<DesiredState>,
    ids: Ids,
    ctx: NodeContext,
    pin_dir: PathBuf,
    cgroup: Cgroup,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.maps = None;
        self.dp = None;
        if let Err(e) = datapath::teardown(&self.pin_dir) {
            eprintln!("teardown {}: {e}", self.pin_dir.display());
        }
    }
}

struct Fixture {
    client: NetNs,
    // Dropped in declaration order: pods, then nodes (datapath teardown), then the fabric.
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    _fabric: NetNs,
}

/// Removes pins of fixtures whose test process died before its guards ran (pin directories
/// are named after the node namespace, `xkt-<pid>-...`).
fn reap_stale_pins() {
    let Ok(entries) = std::fs::read_dir(datapath::PIN_ROOT) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("xkt-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = datapath::teardown(&e.path());
        }
    }
}

fn node_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 11 + i)
}

fn pod_gw(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1 + i, 1)
}

impl Fixture {
    fn new() -> Self {
        require_root();
        reap_stale_pins();
        let fabric = NetNs::unique("xkt").expect("fabric namespace");
        fabric.add_bridge("br0").expect("fabric bridge");
        let client = NetNs::unique("xkt").expect("client namespace");
        veth_pair(&client, "eth0", &fabric, "c").expect("client veth");
        fabric.enslave("c", "br0").expect("enslave client");
        client
            .configure("eth0", CLIENT, 24)
            .expect("client address");
        client
            .set_tx_checksum("eth0", false)
            .expect("client tx checksum");

        let mut nodes = Vec::new();
        for (i, name) in [(0u8, "node1"), (1u8, "node2")] {
            let ns = NetNs::unique("xkt").expect("node namespace");
            let fabric_end = format!("n{i}");
            veth_pair(&ns, "eth0", &fabric, &fabric_end).expect("node veth");
            fabric.enslave(&fabric_end, "br0").expect("enslave node");
            ns.configure("eth0", node_addr(i), 24)
                .expect("node address");
            ns.set_tx_checksum("eth0", false).expect("node tx checksum");
            ns.add_bridge("cbr0").expect("pod bridge");
            ns.configure("cbr0", pod_gw(i), 24)
                .expect("pod bridge address");
            let other = 1 - i;
            ns.add_route(Ipv4Addr::new(10, 244, 1 + other, 0), 24, node_addr(other))
                .expect("route to the other node's pods");

            let pin_dir = PathBuf::from(datapath::PIN_ROOT).join(ns.name());
            let mut dp = Datapath::load(Some(&pin_dir)).expect("datapath loads");
            ns.run(|| dp.attach_uplink("eth0", xdp_mode()))
                .expect("enter node")
                .expect("attach XDP + tc to the uplink");
            fabric
                .run(|| dp.attach_xdp_pass(&fabric_end, xdp_mode()))
                .expect("enter fabric")
                .expect("attach the pass program to the fabric end");
            let cgroup = Cgroup::unique("xkt").expect("node cgroup");
            dp.attach_cgroup(cgroup.path()).expect("attach socket LB");
            let maps = Maps::from_ebpf(dp.ebpf_mut()).expect("maps");
            let mut ctx = NodeContext::new(name, node_addr(i));
            ctx.pod_cidr = Some(Ipv4Cidr::new(Ipv4Addr::new(10, 244, 1 + i, 0), 24).expect("cidr"));
            ctx.hairpin_addr = pod_gw(i);
            ctx.uplink_ifindex = ns.ifindex("eth0").expect("ifindex");
            nodes.push(Node {
                name,
                ns,
                dp: Some(dp),
                maps: Some(maps),
                written: Arc::new(DesiredState::default()),
                ids: Ids::new(),
                ctx,
                pin_dir,
                cgroup,
            });
        }
        let mut fx = Fixture {
            client,
            pods: Vec::new(),
            nodes,
            _fabric: fabric,
        };
        fx.add_pod("pod-1a", 0, 10);
        fx.add_pod("pod-2a", 1, 10);
        fx.add_pod("pod-2b", 1, 11);
        fx
    }

    fn add_pod(&mut self, name: &'static str, node: usize, host: u8) {
        let ip = Ipv4Addr::new(10, 244, 1 + node as u8, host);
        let n = &mut self.nodes[node];
        let ns = NetNs::unique("xkt").expect("pod namespace");
        let host_end = format!("veth{host}");
        veth_pair(&n.ns, &host_end, &ns, "eth0").expect("pod veth");
        n.ns.enslave(&host_end, "cbr0").expect("enslave pod");
        ns.configure("eth0", ip, 24).expect("pod address");
        ns.set_tx_checksum("eth0", false).expect("pod tx checksum");
        ns.add_route(Ipv4Addr::UNSPECIFIED, 0, pod_gw(node as u8))
            .expect("pod default route");
        let dp = n.dp.as_mut().expect("datapath");
        n.ns.run(|| dp.attach_pod(&host_end))
            .expect("enter node")
            .expect("attach tc to the pod veth");

        let stop = Arc::new(AtomicBool::new(false));
        let tcp = ns
            .run(|| TcpListener::bind((ip, TCP_PORT)))
            .expect("enter pod")
            .expect("bind TCP");
        tcp.set_nonblocking(true).expect("nonblocking");
        let udp = ns
            .run(|| UdpSocket::bind((ip, UDP_PORT)))
            .expect("enter pod")
            .expect("bind UDP");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let s1 = stop.clone();
        let tcp_thread = std::thread::spawn(move || {
            while !s1.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(format!("{name} {}\n", peer.ip()).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let s2 = stop.clone();
        let udp_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(format!("{name} {}\n", peer.ip()).as_bytes(), peer);
                }
            }
        });
        self.pods.push(Pod {
            name,
            ip,
            node: self.nodes[node].name,
            stop,
            threads: vec![tcp_thread, udp_thread],
            _ns: ns,
        });
    }

    /// Endpoints listing `pods` (by name) for the service `name`.
    fn endpoints(&self, name: &str, pods: &[&str]) -> Endpoints {
        let addresses: Vec<_> = self
            .pods
            .iter()
            .filter(|p| pods.contains(&p.name))
            .map(|p| json!({"ip": p.ip.to_string(), "nodeName": p.node}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "subsets": if addresses.is_empty() { json!([]) } else { json!([{
                "addresses": addresses,
                "ports": [
                    {"name": "http", "port": TCP_PORT, "protocol": "TCP"},
                    {"name": "dns", "port": UDP_PORT, "protocol": "UDP"}
                ]
            }]) }
        }))
        .expect("endpoints")
    }

    /// Writes the desired state for `services` + `endpoints` into every node's maps.
    fn apply(&mut self, services: &[Service], endpoints: &[Endpoints]) {
        for n in &mut self.nodes {
            let want = Arc::new(desired(services, endpoints, &n.ctx, &mut n.ids));
            let maps = n.maps.as_mut().expect("maps");
            writer::sync(maps, &mut n.written, &want).expect("sync maps");
        }
    }

    /// One HTTP-ish request from the client namespace: the pod name and the client address
    /// it saw, or the error.
    fn tcp_from_client(&self, to: SocketAddrV4) -> std::io::Result<(String, Ipv4Addr)> {
        self.client.run(|| tcp_request(to)).expect("enter client")
    }

    fn udp_from_client(&self, to: SocketAddrV4) -> std::io::Result<(String, Ipv4Addr, SocketAddr)> {
        self.client.run(|| udp_request(to)).expect("enter client")
    }
}

fn parse_answer(s: &str) -> (String, Ipv4Addr) {
    let mut f = s.split_whitespace();
    let name = f.next().unwrap_or_default().to_owned();
    let ip = f
        .next()
        .and_then(|i| i.parse().ok())
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    (name, ip)
}

fn tcp_request(to: SocketAddrV4) -> std::io::Result<(String, Ipv4Addr)> {
    let mut s = TcpStream::connect_timeout(&to.into(), IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if out.is_empty() {
        return Err(std::io::Error::other("empty answer"));
    }
    Ok(parse_answer(&out))
}

fn udp_request(to: SocketAddrV4) -> std::io::Result<(String, Ipv4Addr, SocketAddr)> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.send_to(b"q", to)?;
    let mut buf = [0u8; 128];
    let (n, from) = s.recv_from(&mut buf)?;
    let (name, ip) = parse_answer(&String::from_utf8_lossy(&buf[..n]));
    Ok((name, ip, from))
}

fn service(name: &str, extra: serde_json::Value) -> Service {
    let mut v = json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "NodePort",
            "clusterIP": VIP.to_string(),
            "selector": {"app": name},
            "ports": [
                {"name": "http", "port": 80, "targetPort": TCP_PORT, "protocol": "TCP", "nodePort": NODE_PORT}
            ]
        }
    });
    merge(&mut v, extra);
    serde_json::from_value(v).expect("service")
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

#[test]
fn privileged_e2e_nodeport_reaches_local_and_remote_backends_from_outside() {
    let mut fx = Fixture::new();
    let svc = service("web", json!({}));
    let ep = fx.endpoints("web", &["pod-1a", "pod-2a"]);
    fx.apply(&[svc], &[ep]);
    for (i, node) in [node_addr(0), node_addr(1)].into_iter().enumerate() {
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..30 {
            let (pod, saw) = fx
                .tcp_from_client(SocketAddrV4::new(node, NODE_PORT))
                .unwrap_or_else(|e| panic!("NodePort on node{} failed: {e}", i + 1));
            seen.insert(pod, saw);
        }
        println!("node{} NodePort -> {seen:?}", i + 1);
        assert_eq!(
            seen.len(),
            2,
            "both backends answer through node{}: {seen:?}",
            i + 1
        );
        for (pod, saw) in &seen {
            let local = (pod == "pod-1a") == (i == 0);
            let want = if local { CLIENT } else { node };
            assert_eq!(
                *saw,
                want,
                "{pod} via node{}: a local backend sees the client, a remote one the node (SNAT)",
                i + 1
            );
        }
    }
}

#[test]
fn privileged_e2e_cluster_ip_from_an_off_cluster_client_through_a_route_via_a_node() {
    let mut fx = Fixture::new();
    fx.client
        .add_route(Ipv4Addr::new(10, 96, 0, 0), 12, node_addr(0))
        .expect("client route to the service range via node1");
    let svc = service("web", json!({}));
    let ep = fx.endpoints("web", &["pod-1a", "pod-2a"]);
    fx.apply(&[svc], &[ep]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (pod, _) = fx
            .tcp_from_client(SocketAddrV4::new(VIP, 80))
            .expect("ClusterIP from outside through node1");
        seen.insert(pod);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn privileged_e2e_udp_service_and_client_ip_affinity() {
    let mut fx = Fixture::new();
    fx.client
        .add_route(Ipv4Addr::new(10, 96, 0, 0), 12, node_addr(0))
        .expect("client route");
    let dns: Service = serde_json::from_value(json!({
        "metadata": {"name": "dns", "namespace": "default"},
        "spec": {
            "type": "NodePort",
            "clusterIP": UDP_VIP.to_string(),
            "selector": {"app": "dns"},
            "ports": [{"name": "dns", "port": 53, "targetPort": UDP_PORT, "protocol": "UDP", "nodePort": UDP_NODE_PORT}]
        }
    }))
    .expect("service");
    let sticky = service("web", json!({"spec": {"sessionAffinity": "ClientIP"}}));
    let eps = [
        fx.endpoints("dns", &["pod-1a", "pod-2a", "pod-2b"]),
        fx.endpoints("web", &["pod-1a", "pod-2a", "pod-2b"]),
    ];
    fx.apply(&[dns, sticky], &eps);

    for to in [
        SocketAddrV4::new(UDP_VIP, 53),
        SocketAddrV4::new(node_addr(1), UDP_NODE_PORT),
    ] {
        let (pod, _, from) = fx.udp_from_client(to).expect("UDP answer");
        assert!(pod.starts_with("pod-"), "{pod}");
        assert_eq!(
            from,
            SocketAddr::V4(to),
            "the reply comes from the address the client used"
        );
    }
    let pods: std::collections::BTreeSet<_> = (0..20)
        .map(|_| {
            fx.tcp_from_client(SocketAddrV4::new(node_addr(0), NODE_PORT))
                .expect("sticky service")
                .0
        })
        .collect();
    assert_eq!(
        pods.len(),
        1,
        "ClientIP affinity keeps one backend: {pods:?}"
    );
}

#[test]
fn privileged_e2e_endpoint_changes_move_traffic_and_deleting_the_service_stops_it() {
    let mut fx = Fixture::new();
    let svc = service("web", json!({}));
    let to = SocketAddrV4::new(node_addr(0), NODE_PORT);
    fx.apply(
        std::slice::from_ref(&svc),
        &[fx.endpoints("web", &["pod-2a"])],
    );
    for _ in 0..10 {
        assert_eq!(fx.tcp_from_client(to).expect("request").0, "pod-2a");
    }
    fx.apply(
        std::slice::from_ref(&svc),
        &[fx.endpoints("web", &["pod-2b"])],
    );
    for _ in 0..10 {
        assert_eq!(fx.tcp_from_client(to).expect("request").0, "pod-2b");
    }
    // No endpoints: the node answers with a reset, the client sees a refusal at once.
    fx.apply(&[svc], &[fx.endpoints("web", &[])]);
    let err = fx.tcp_from_client(to).expect_err("no endpoints");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    // Deleted: nothing answers on the NodePort any more.
    fx.apply(&[], &[]);
    assert!(
        fx.tcp_from_client(to).is_err(),
        "deleted service still answers"
    );
    for n in &fx.nodes {
        let actual = read_actual(n.maps.as_ref().expect("maps")).expect("read maps");
        assert!(
            actual.services.is_empty() && actual.backends.is_empty(),
            "{}",
            n.name
        );
    }
}

#[test]
fn privileged_e2e_cluster_ip_from_node_processes_uses_the_socket_lb() {
    let mut fx = Fixture::new();
    let svc = service("web", json!({}));
    let ep = fx.endpoints("web", &["pod-1a", "pod-2a"]);
    let dns: Service = serde_json::from_value(json!({
        "metadata": {"name": "dns", "namespace": "default"},
        "spec": {"clusterIP": UDP_VIP.to_string(), "selector": {"app": "dns"},
                 "ports": [{"name": "dns", "port": 53, "targetPort": UDP_PORT, "protocol": "UDP"}]}
    }))
    .expect("service");
    let dns_ep = fx.endpoints("dns", &["pod-2b"]);
    fx.apply(&[svc, dns], &[ep, dns_ep]);
    let node = &fx.nodes[0];
    // This test process becomes a "host process" of node1: in its cgroup and namespace.
    let _inside = node.cgroup.enter().expect("enter the node cgroup");
    let (pods, peer, udp) = node
        .ns
        .run(|| {
            let mut pods = std::collections::BTreeSet::new();
            let mut peer = None;
            for _ in 0..20 {
                let mut s =
                    TcpStream::connect_timeout(&SocketAddrV4::new(VIP, 80).into(), IO_TIMEOUT)
                        .expect("connect to the ClusterIP from the node");
                peer = s.peer_addr().ok();
                let mut out = String::new();
                s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                s.read_to_string(&mut out).expect("answer");
                pods.insert(parse_answer(&out).0);
            }
            (pods, peer, udp_request(SocketAddrV4::new(UDP_VIP, 53)))
        })
        .expect("enter node1");
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert_eq!(
        peer,
        Some(SocketAddr::V4(SocketAddrV4::new(VIP, 80))),
        "getpeername shows the service"
    );
    let (pod, _, from) = udp.expect("UDP through the socket LB");
    assert_eq!(pod, "pod-2b");
    assert_eq!(
        from,
        SocketAddr::V4(SocketAddrV4::new(UDP_VIP, 53)),
        "recvmsg shows the service"
    );
}

#[test]
fn privileged_e2e_restarting_the_userspace_side_fails_no_requests() {
    let mut fx = Fixture::new();
    let svc = service("web", json!({}));
    let ep = fx.endpoints("web", &["pod-1a", "pod-2a"]);
    fx.apply(std::slice::from_ref(&svc), std::slice::from_ref(&ep));
    let fx = Arc::new(std::sync::Mutex::new(fx));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (client_ns_path, to) = {
        let g = fx.lock().expect("lock");
        (
            g.client.path().to_owned(),
            SocketAddrV4::new(node_addr(0), NODE_PORT),
        )
    };
    // A bounded request loop (at most 2000 requests or 20 s) in the client namespace.
    let looper = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let f = std::fs::File::open(&client_ns_path).expect("open client ns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let deadline = Instant::now() + Duration::from_secs(20);
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match tcp_request(to) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    {
        let mut g = fx.lock().expect("lock");
        for n in &mut g.nodes {
            // "Kill" the agent: drop every userspace handle. Pinned maps and links stay.
            n.maps = None;
            n.dp = None;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    {
        let mut g = fx.lock().expect("lock");
        for n in &mut g.nodes {
            // "Restart": reopen from the pins, rebuild ids from the maps, recompute.
            let dp = Datapath::load(Some(&n.pin_dir)).expect("reload from pins");
            let maps = Maps::from_pins(&n.pin_dir.join("maps")).expect("maps from pins");
            let actual = read_actual(&maps).expect("read actual");
            n.ids = Ids::from_actual(&actual);
            let want = desired(
                std::slice::from_ref(&svc),
                std::slice::from_ref(&ep),
                &n.ctx,
                &mut n.ids,
            );
            let ops = plan(&actual, &want);
            assert!(
                ops.is_empty(),
                "a restart must not rewrite anything: {ops:?}"
            );
            n.written = Arc::new(actual);
            n.maps = Some(maps);
            n.dp = Some(dp);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    looper.join().expect("request loop");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("requests during the restart: {ok} ok, {failed} failed");
    assert!(ok > 20, "the loop ran ({ok} requests)");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across the restart",
        ok + failed
    );
}

/// Native (driver) XDP by default, as the local cluster runs it; `XKUBE_TEST_XDP_MODE=skb`
/// selects generic XDP.
fn xdp_mode() -> XdpMode {
    match std::env::var("XKUBE_TEST_XDP_MODE").as_deref() {
        Ok("skb") => XdpMode::Skb,
        _ => XdpMode::Driver,
    }
}

#[test]
fn privileged_e2e_teardown_leaves_no_program_link_or_pin() {
    use aya::programs::{SchedClassifier, TcAttachType};
    let mut fx = Fixture::new();
    fx.apply(
        &[service("web", json!({}))],
        &[fx.endpoints("web", &["pod-1a"])],
    );
    let to = SocketAddrV4::new(node_addr(0), NODE_PORT);
    fx.tcp_from_client(to).expect("served before teardown");
    let tcx = |ns: &NetNs, iface: &str, at: TcAttachType| -> usize {
        ns.run(|| SchedClassifier::query_tcx(iface, at))
            .expect("enter namespace")
            .map(|(_, progs)| progs.len())
            .expect("query tcx")
    };
    for (i, n) in fx.nodes.iter_mut().enumerate() {
        assert!(n.ns.xdp_attached("eth0").expect("query xdp"));
        n.maps = None;
        n.dp = None;
        // Pinned links keep the programs attached after the agent is gone...
        assert!(n.ns.xdp_attached("eth0").expect("query xdp"));
        datapath::teardown(&n.pin_dir).expect("teardown");
        // ...and teardown removes them all.
        assert!(!n.pin_dir.exists(), "{} left behind", n.pin_dir.display());
        assert!(
            !n.ns.xdp_attached("eth0").expect("query xdp"),
            "node{} XDP",
            i + 1
        );
        assert_eq!(
            tcx(&n.ns, "eth0", TcAttachType::Egress),
            0,
            "node{} tc egress",
            i + 1
        );
        for host in [10u8, 11] {
            let veth = format!("veth{host}");
            if n.ns.ifindex(&veth).is_ok() {
                assert_eq!(
                    tcx(&n.ns, &veth, TcAttachType::Ingress),
                    0,
                    "{veth} ingress"
                );
                assert_eq!(tcx(&n.ns, &veth, TcAttachType::Egress), 0, "{veth} egress");
            }
        }
        assert!(
            !fx._fabric
                .xdp_attached(&format!("n{i}"))
                .expect("query xdp"),
            "fabric end of node{}",
            i + 1
        );
    }
    assert!(
        fx.tcp_from_client(to).is_err(),
        "NodePort still served after teardown"
    );
}

#[test]
fn privileged_e2e_the_sync_loop_repairs_a_map_entry_deleted_by_hand_within_one_sync_period() {
    use xkube_common::lb::{IPPROTO_TCP, SCOPE_DEFAULT, ServiceKey};
    use xkube_proxy::{
        metrics::ProxyMetrics,
        mode::ebpf::EbpfProxier,
        sync::{Input, SyncConfig, SyncLoop},
    };
    let mut fx = Fixture::new();
    let svc = Arc::new(service("web", json!({})));
    let ep = Arc::new(fx.endpoints("web", &["pod-1a", "pod-2a"]));
    let period = Duration::from_secs(1);
    let (maps, ctx, pin_dir) = {
        let n = &mut fx.nodes[0];
        (
            n.maps.take().expect("maps"),
            n.ctx.clone(),
            n.pin_dir.clone(),
        )
    };
    let proxier = EbpfProxier::new(maps, ctx, None).expect("eBPF mode over the node's maps");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let metrics = Arc::new(ProxyMetrics::new());
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = SyncConfig {
        min_sync_period: Duration::from_millis(10),
        sync_period: period,
    };
    let task = rt
        .spawn(SyncLoop::new(Box::new(proxier), config, metrics.clone()).run(rx, shutdown.clone()));
    rt.block_on(tx.send(Input::Relist {
        services: vec![svc],
        endpoints: vec![ep],
        slices: vec![],
    }))
    .expect("send");

    // A second handle on node1's maps, as an operator with bpftool would have.
    let mut hand = Maps::from_pins(&pin_dir.join("maps")).expect("maps from pins");
    let frontend = ServiceKey {
        addr: u32::from_ne_bytes(VIP.octets()),
        port: 80u16.to_be(),
        proto: IPPROTO_TCP,
        scope: SCOPE_DEFAULT,
        slot: 0,
        _pad: 0,
    };
    let present = |m: &Maps| m.services.get(&frontend, 0).is_ok();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !present(&hand) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(present(&hand), "the sync loop programmed the service");
    let to = SocketAddrV4::new(node_addr(0), NODE_PORT);
    fx.tcp_from_client(to).expect("served through node1");

    let bit = xkube_common::lb::frontend_filter_bit(frontend.addr);
    let filtered = |m: &Maps| {
        m.frontend_filter
            .get(&0, 0)
            .is_ok_and(|w| w[(bit >> 6) as usize] & (1 << (bit & 63)) != 0)
    };
    assert!(filtered(&hand), "the ClusterIP's filter bit is set");
    hand.services
        .remove(&frontend)
        .expect("delete the ClusterIP frontend by hand");
    hand.frontend_filter
        .set(0, [0; xkube_common::lb::FRONTEND_FILTER_WORDS], 0)
        .expect("clear the filter by hand");
    let removed_at = Instant::now();
    assert!(!present(&hand), "gone");
    // Bounded wait: one sync period plus a second of slack.
    while !(present(&hand) && filtered(&hand))
        && removed_at.elapsed() < period + Duration::from_secs(1)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        present(&hand) && filtered(&hand),
        "the full sync restored the frontend and its filter bit within one sync period"
    );
    println!("repaired after {:?}", removed_at.elapsed());
    fx.tcp_from_client(to).expect("served again");

    shutdown.cancel();
    let back = rt.block_on(task).expect("join");
    assert!(back.is_ok(), "the loop stopped cleanly");
    assert!(metrics.syncs() >= 2, "an initial and a repairing full sync");
}

#[test]
fn privileged_e2e_cleanup_of_every_mode_removes_the_ebpf_state() {
    use xkube_proxy::mode::{CleanupContext, ProxyMode, cleanup_all, cleanup_other_modes};
    let mut fx = Fixture::new();
    fx.apply(
        &[service("web", json!({}))],
        &[fx.endpoints("web", &["pod-1a"])],
    );
    let n = &mut fx.nodes[0];
    n.maps = None;
    n.dp = None;
    let ctx = CleanupContext {
        node_name: n.ns.name().to_owned(),
        bpf_root: PathBuf::from(datapath::PIN_ROOT),
    };
    assert_eq!(ctx.bpf_root.join(&ctx.node_name), n.pin_dir);
    cleanup_other_modes(ProxyMode::Ebpf, &ctx).expect("no other mode to clean");
    assert!(
        n.pin_dir.exists(),
        "starting in the eBPF mode keeps its own state"
    );
    assert!(n.ns.xdp_attached("eth0").expect("query xdp"));
    cleanup_all(&ctx).expect("cleanup");
    assert!(!n.pin_dir.exists(), "{} left behind", n.pin_dir.display());
    assert!(
        !n.ns.xdp_attached("eth0").expect("query xdp"),
        "XDP left attached"
    );
    cleanup_all(&ctx).expect("cleanup is idempotent");
}
