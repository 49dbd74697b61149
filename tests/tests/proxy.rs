//! The cluster proxy suite, run once per proxy mode on `xkube cluster up --nodes 3
//! --proxy-mode <mode>` (SEEDS.md A6, A8, A9, A10; affinity, UDP, hairpin, no endpoints ->
//! refused, scaling reflected; agent SIGKILL under load). The same steps for every mode; what
//! differs is only the check of the mode's own node state (no KUBE-* rules for eBPF, the
//! seed's rule shapes for iptables). Every request is sent from inside the cluster's
//! namespaces.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use xkube_e2e::{Cluster, http_get};

const TIMEOUT: Duration = Duration::from_secs(3);

fn web_rc(name: &str, replicas: u32) -> String {
    format!(
        r#"
apiVersion: v1
kind: ReplicationController
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{app: {name}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: agnhost
        image: xkube/agnhost:0.1.0
        args: ["--http-port=8080", "--udp-port=8081"]
        ports:
        - {{name: http, containerPort: 8080}}
        - {{name: dns, containerPort: 8081, protocol: UDP}}
        readinessProbe:
          tcpSocket: {{port: 8080}}
          periodSeconds: 1
"#
    )
}

fn service(name: &str, app: &str, extra_spec: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {app}}}
  ports:
  - {{name: http, port: 80, targetPort: http, protocol: TCP}}
{extra_spec}
"#
    )
}

fn cluster_ip(c: &Cluster, svc: &str) -> Ipv4Addr {
    c.get_json(&["svc", svc])["spec"]["clusterIP"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("service {svc} has no clusterIP"))
}

fn node_port(c: &Cluster, svc: &str) -> u16 {
    c.get_json(&["svc", svc])["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("service {svc} has no nodePort"))
}

fn ready_endpoints(c: &Cluster, svc: &str) -> Vec<Ipv4Addr> {
    let ep = c.get_json(&["endpoints", svc]);
    ep["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["ip"].as_str().and_then(|i| i.parse().ok()))
        .collect()
}

fn wait_endpoints(c: &Cluster, svc: &str, n: usize) -> Vec<Ipv4Addr> {
    c.wait(
        &format!("{n} ready endpoints of {svc}"),
        Duration::from_secs(120),
        || {
            let eps = ready_endpoints(c, svc);
            (eps.len() == n).then_some(eps)
        },
    )
}

/// Pods (name, IP, node index) of app `app`.
fn pods(c: &Cluster, app: &str) -> Vec<(String, Ipv4Addr, usize)> {
    let list = c.get_json(&["pods", "-l", &format!("app={app}")]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let name = p["metadata"]["name"].as_str()?.to_owned();
            let ip = p["status"]["podIP"].as_str()?.parse().ok()?;
            let node = p["spec"]["nodeName"].as_str()?;
            let idx = (0..c.nodes).find(|i| c.node_name(*i) == node)?;
            Some((name, ip, idx))
        })
        .collect()
}

/// Hostnames (= pod names) answering `to` from `ns` over `tries` requests.
/// The backends answering `tries` requests; `None` if any request failed (while a change is
/// being programmed).
fn try_hostnames(
    ns: &xkube_netns::NetNs,
    to: SocketAddrV4,
    tries: usize,
) -> Option<BTreeSet<String>> {
    (0..tries)
        .map(|_| http_get(ns, to, "/hostname", TIMEOUT).ok())
        .collect()
}

fn hostnames(ns: &xkube_netns::NetNs, to: SocketAddrV4, tries: usize) -> BTreeSet<String> {
    (0..tries)
        .map(|_| {
            http_get(ns, to, "/hostname", TIMEOUT)
                .unwrap_or_else(|e| panic!("GET http://{to}/hostname: {e}"))
        })
        .collect()
}

#[test]
fn privileged_cluster_services_through_the_ebpf_proxy() {
    services_suite("ebpf");
}

#[test]
fn privileged_cluster_services_through_the_iptables_proxy() {
    services_suite("iptables");
}

#[test]
fn privileged_cluster_services_through_the_nftables_proxy() {
    services_suite("nftables");
}

#[test]
fn privileged_cluster_services_through_the_userspace_proxy() {
    services_suite("userspace");
}

#[test]
fn privileged_cluster_agent_sigkill_and_restart_fails_no_requests() {
    agent_restart_suite("ebpf");
}

#[test]
fn privileged_cluster_agent_sigkill_and_restart_fails_no_requests_iptables() {
    agent_restart_suite("iptables");
}

#[test]
fn privileged_cluster_agent_sigkill_and_restart_fails_no_requests_nftables() {
    agent_restart_suite("nftables");
}

/// The userspace mode's listeners die with the agent: requests in the gap fail, and every
/// request after the new agent's first sync succeeds.
#[test]
fn privileged_cluster_agent_sigkill_and_restart_userspace_recovers_after_its_first_sync() {
    agent_restart_suite("userspace");
}

/// A proxy metric of node `i` (the first sample of `name`).
fn proxy_metric(c: &Cluster, i: usize, name: &str) -> f64 {
    let text = http_get(
        &c.node_ns(i),
        SocketAddrV4::new(c.node_addr(i), 10249),
        "/metrics",
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("node{} metrics: {e}", i + 1));
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("node{}: no {name} in\n{text}", i + 1))
}

/// Keep-alive HTTP/1.1 requests for `/hostname` on one connection to `to` until `until`;
/// returns the requests answered.
fn keepalive_requests(to: SocketAddrV4, until: Instant) -> std::io::Result<usize> {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let s = std::net::TcpStream::connect_timeout(&to.into(), TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut n = 0;
    while Instant::now() < until {
        w.write_all(b"GET /hostname HTTP/1.1\r\nHost: svc\r\n\r\n")?;
        let mut len = None;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse::<usize>().ok();
            }
        }
        let mut body = vec![0u8; len.ok_or(std::io::ErrorKind::InvalidData)?];
        r.read_exact(&mut body)?;
        n += 1;
    }
    Ok(n)
}

/// The seeds' two connections (SEEDS.md B): the backend's peer is node1, not the client;
/// and bounded keep-alive load through the ClusterIP leaves no descriptor and no task behind.
fn userspace_two_connections_and_no_leaks(c: &Cluster, node_port: u16, vip: SocketAddrV4) {
    let node1_addrs = c
        .node_ns(0)
        .run(|| {
            std::process::Command::new("ip")
                .args(["-4", "-o", "addr"])
                .output()
        })
        .expect("enter node")
        .expect("ip addr");
    let node1_addrs = String::from_utf8_lossy(&node1_addrs.stdout).into_owned();
    for _ in 0..10 {
        let peer = http_get(
            &c.client_ns(),
            SocketAddrV4::new(c.node_addr(0), node_port),
            "/clientip",
            TIMEOUT,
        )
        .expect("GET /clientip through the NodePort");
        let ip = peer.trim().rsplit_once(':').map_or("", |(ip, _)| ip);
        assert!(
            node1_addrs.contains(&format!("inet {ip}/")),
            "the backend's peer {peer:?} is not an address of node1:\n{node1_addrs}"
        );
    }
    println!("userspace: backends see node1's address as the peer");

    // A dial that fails is retried on the next endpoint (250 ms, 500 ms, 1 s, 2 s): a
    // selectorless service whose Endpoints list an address nobody answers on next to a live
    // pod answers every request.
    let live = c.get_json(&["pods", "-l", "app=web"])["items"][0]["status"]["podIP"]
        .as_str()
        .expect("a web pod's IP")
        .to_owned();
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: halfdead}}
spec:
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: halfdead}}
subsets:
- addresses: [{{ip: "198.18.0.250"}}, {{ip: "{live}"}}]
  ports: [{{name: http, port: 8080}}]
"#
    ));
    let halfdead = SocketAddrV4::new(cluster_ip(c, "halfdead"), 80);
    c.wait(
        "the half-dead service to answer",
        Duration::from_secs(10),
        || http_get(&c.client_ns(), halfdead, "/hostname", TIMEOUT).ok(),
    );
    let started = Instant::now();
    for i in 0..6 {
        http_get(&c.client_ns(), halfdead, "/hostname", TIMEOUT)
            .unwrap_or_else(|e| panic!("request {i} to the half-dead service: {e}"));
    }
    println!(
        "userspace: 6 requests to a service with a dead endpoint all answered in {:?} (dials retried)",
        started.elapsed()
    );

    // Bounded: 64 clients, 10 s.
    let settle = || -> (f64, f64) {
        std::thread::sleep(Duration::from_secs(1));
        (
            proxy_metric(c, 0, "process_open_fds"),
            proxy_metric(c, 0, "xkube_runtime_alive_tasks"),
        )
    };
    let (fds_before, tasks_before) = settle();
    let until = Instant::now() + Duration::from_secs(10);
    let client = c.client_ns().path().to_owned();
    let answered: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..64)
            .map(|_| {
                let client = client.clone();
                scope.spawn(move || {
                    let ns = std::fs::File::open(&client).expect("client namespace");
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                    keepalive_requests(vip, until).expect("keep-alive requests")
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("client")).sum()
    });
    // The relays end when the clients close; give the proxy a moment.
    let mut after = settle();
    for _ in 0..5 {
        if after.0 <= fds_before + 4.0 && after.1 <= tasks_before + 4.0 {
            break;
        }
        after = settle();
    }
    println!(
        "userspace: 64 keep-alive clients x 10 s through the ClusterIP: {answered} requests; \
         node1's agent: open fds {fds_before} -> {}, tasks {tasks_before} -> {}",
        after.0, after.1
    );
    assert!(answered > 640, "the clients ran ({answered} requests)");
    assert!(
        after.0 <= fds_before + 4.0 && after.1 <= tasks_before + 4.0,
        "descriptors or tasks left behind: fds {fds_before} -> {}, tasks {tasks_before} -> {}",
        after.0,
        after.1
    );
    assert_eq!(
        proxy_metric(
            c,
            0,
            "xkube_proxy_userspace_connections_active{service=\"default/web:http\"}"
        ),
        0.0,
        "no proxied connection left open"
    );
}

/// `iptables-save` of both backends in a node's namespace.
fn iptables_save(c: &Cluster, node: usize) -> String {
    c.node_ns(node)
        .run(|| {
            ["iptables-legacy-save", "iptables-nft-save"]
                .iter()
                .map(|tool| {
                    let out = std::process::Command::new(tool).output().expect(tool);
                    String::from_utf8_lossy(&out.stdout).into_owned()
                })
                .collect::<String>()
        })
        .expect("enter node")
}

/// The node state only `mode` has: eBPF leaves no KUBE-* rule; iptables shows the seed's rule
/// shapes (SEEDS.md B) for `svc` with `endpoints` ready endpoints.
fn check_mode_state(c: &Cluster, mode: &str, svc: &str, endpoints: usize) {
    if mode == "iptables" {
        // Programming follows the Endpoints by up to --min-sync-period (1 s in this mode).
        c.wait(
            &format!("{endpoints} endpoint chains of {svc} on every node"),
            Duration::from_secs(10),
            || {
                (0..c.nodes)
                    .all(|i| {
                        let text = iptables_save(c, i);
                        let tag = format!("\"default/{svc}:http -> ");
                        kube_lines(&text)
                            .iter()
                            .filter(|l| l.starts_with("-A KUBE-SVC-") && l.contains(&tag))
                            .count()
                            == endpoints
                    })
                    .then_some(())
            },
        );
    }
    if mode == "userspace" {
        check_userspace_rules(c, svc);
        return;
    }
    if mode == "nftables" {
        check_nftables_table(c, svc, endpoints);
        return;
    }
    for i in 0..c.nodes {
        let text = iptables_save(c, i);
        let kube = kube_lines(&text);
        if mode == "ebpf" {
            assert!(kube.is_empty(), "node{} has KUBE rules: {kube:?}", i + 1);
            continue;
        }
        let cip = cluster_ip(c, svc);
        let has = |needle: &str| kube.iter().any(|l| l.contains(needle));
        // The suite's services name their port `http`.
        let comment = format!("--comment \"default/{svc}:http cluster IP\"");
        let svc_jump = kube
            .iter()
            .find(|l| l.starts_with("-A KUBE-SERVICES") && l.contains(&comment))
            .unwrap_or_else(|| {
                panic!(
                    "node{}: no cluster IP rule for {svc}:\n{}",
                    i + 1,
                    kube.join("\n")
                )
            });
        assert!(svc_jump.contains(&format!("-d {cip}/32")), "{svc_jump}");
        let chain = svc_jump.rsplit(' ').next().unwrap_or("");
        assert!(chain.starts_with("KUBE-SVC-"), "{svc_jump}");
        let to_seps: Vec<&&str> = kube
            .iter()
            .filter(|l| l.starts_with(&format!("-A {chain} ")) && l.contains("-j KUBE-SEP-"))
            .collect();
        assert_eq!(to_seps.len(), endpoints, "node{}: {to_seps:#?}", i + 1);
        let random = to_seps
            .iter()
            .filter(|l| l.contains("-m statistic --mode random --probability"))
            .count();
        assert_eq!(
            random,
            endpoints - 1,
            "the last endpoint is unconditional: {to_seps:#?}"
        );
        for want in [
            "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
            "-j MASQUERADE --random-fully",
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        ] {
            assert!(
                has(want),
                "node{}: no {want:?} in\n{}",
                i + 1,
                kube.join("\n")
            );
        }
        assert!(
            kube.iter().any(|l| l.starts_with("-A KUBE-SERVICES")
                && l.contains("! -d 127.0.0.0/8")
                && l.contains("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")),
            "node{}: the node ports jump",
            i + 1
        );
        // Hairpin and DNAT in every endpoint chain of the service.
        let seps = kube
            .iter()
            .filter(|l| {
                l.starts_with("-A KUBE-SEP-") && l.contains(&format!("\"default/{svc}:http\""))
            })
            .count();
        assert_eq!(
            seps,
            2 * endpoints,
            "node{}: hairpin + DNAT per endpoint",
            i + 1
        );
    }
}

/// `nft list table ip kube-proxy` in a node's namespace.
fn nft_table(c: &Cluster, node: usize) -> String {
    c.node_ns(node)
        .run(|| {
            let out = std::process::Command::new("nft")
                .args(["list", "table", "ip", "kube-proxy"])
                .output()
                .expect("nft");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .expect("enter node")
}

/// kube-proxy's nftables layout for `svc` with `endpoints` ready endpoints on every node: its
/// ClusterIP dispatched by `@service-ips` to `service-<hash>-default/<svc>/tcp/http`, which
/// picks one of its endpoint chains with `numgen`; each endpoint chain hairpin-masquerades and
/// DNATs; no iptables rule of any mode.
fn check_nftables_table(c: &Cluster, svc: &str, endpoints: usize) {
    let cip = cluster_ip(c, svc);
    let chain = format!("service-{}", nft_hash(&format!("default/{svc}/tcp/http")));
    // Programming follows the Endpoints by up to --min-sync-period (1 s in this mode).
    c.wait(
        &format!("{endpoints} endpoints of {svc} in every node's nftables table"),
        Duration::from_secs(10),
        || {
            (0..c.nodes)
                .all(|i| nft_table(c, i).contains(&format!("numgen random mod {endpoints} vmap")))
                .then_some(())
        },
    );
    for i in 0..c.nodes {
        let table = nft_table(c, i);
        for want in [
            format!("{cip} . tcp . 80 : goto {chain}"),
            format!("chain {chain} {{"),
            "ip daddr . meta l4proto . th dport vmap @service-ips".to_string(),
            "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports".to_string(),
            "masquerade fully-random".to_string(),
        ] {
            assert!(
                table.contains(&want),
                "node{}: no {want:?} in\n{table}",
                i + 1
            );
        }
        let body = table
            .split(&format!("chain {chain} {{"))
            .nth(1)
            .and_then(|b| b.split('}').next())
            .unwrap_or("");
        assert_eq!(
            body.matches(": goto endpoint-").count(),
            endpoints,
            "node{}: {body}",
            i + 1
        );
        let dnats = table.matches("dnat to ").count();
        assert!(dnats >= endpoints, "node{}: {dnats} DNATs", i + 1);
        let save = iptables_save(c, i);
        let kube = kube_lines(&save);
        assert!(kube.is_empty(), "node{} has KUBE rules: {kube:?}", i + 1);
    }
}

/// kube-proxy's nftables name hash: base32(sha256(base))[..8] + "-" + base.
fn nft_hash(base: &str) -> String {
    xkube_proxy::mode::nftables::rules::hash_and_truncate(base)
}

/// The userspace mode's redirections for `svc` (seed 003): its ClusterIP redirected to the
/// proxy port from containers and DNATed from the host, the same for its NodePort on local
/// addresses, the proxy port accepted in filter, and no iptables-mode chain.
fn check_userspace_rules(c: &Cluster, svc: &str) {
    let cip = cluster_ip(c, svc);
    let comment = format!("-m comment --comment \"default/{svc}:http\"");
    for i in 0..c.nodes {
        let text = iptables_save(c, i);
        let kube = kube_lines(&text);
        let find = |prefix: &str, needle: &str| -> String {
            kube.iter()
                .find(|l| l.starts_with(prefix) && l.contains(needle) && l.contains(&comment))
                .map(|l| (*l).to_owned())
                .unwrap_or_else(|| {
                    panic!(
                        "node{}: no {prefix} rule for {svc}:\n{}",
                        i + 1,
                        kube.join("\n")
                    )
                })
        };
        let container = find(
            &format!("-A KUBE-PORTALS-CONTAINER -d {cip}/32 -p tcp"),
            "--dport 80 -j REDIRECT --to-ports ",
        );
        let port = container.rsplit(' ').next().unwrap_or("");
        let node = c.node_addr(i);
        find(
            &format!("-A KUBE-PORTALS-HOST -d {cip}/32 -p tcp"),
            &format!("--dport 80 -j DNAT --to-destination {node}:{port}"),
        );
        find(
            "-A KUBE-NODEPORT-CONTAINER -p tcp",
            &format!("-j REDIRECT --to-ports {port}"),
        );
        find(
            "-A KUBE-NODEPORT-HOST -p tcp",
            &format!("-j DNAT --to-destination {node}:{port}"),
        );
        find(
            "-A KUBE-NODEPORT-NON-LOCAL -p tcp",
            &format!("--dport {port} -j ACCEPT"),
        );
        for jump in [
            "-A PREROUTING -m comment --comment \"handle ClusterIPs; NOTE: this must be before the NodePort rules\" -j KUBE-PORTALS-CONTAINER",
            "-A OUTPUT -m addrtype --dst-type LOCAL -m comment --comment \"handle service NodePorts; NOTE: this must be the last rule in the chain\" -j KUBE-NODEPORT-HOST",
        ] {
            assert!(kube.contains(&jump), "node{}: no {jump:?}", i + 1);
        }
        assert!(
            !kube
                .iter()
                .any(|l| l.contains("KUBE-SVC-") || l.contains("KUBE-SEP-")),
            "node{}: iptables-mode chains left",
            i + 1
        );
    }
}

fn services_suite(mode: &str) {
    let c = Cluster::up(3, &["--proxy-mode", mode]);
    c.apply(&web_rc("web", 3));
    c.apply(&service("web", "web", "  type: NodePort"));
    wait_endpoints(&c, "web", 3);
    let vip = SocketAddrV4::new(cluster_ip(&c, "web"), 80);
    let all: BTreeSet<String> = pods(&c, "web").into_iter().map(|p| p.0).collect();
    assert_eq!(all.len(), 3);

    // A6: ClusterIP from host processes of every node (socket LB on the node cgroup), once
    // the node has programmed all three endpoints (within --min-sync-period).
    for i in 0..c.nodes {
        let mut seen = BTreeSet::new();
        c.wait(
            &format!("node{} host processes to reach every backend", i + 1),
            Duration::from_secs(10),
            || {
                seen = c.on_node(i, || -> BTreeSet<String> {
                    (0..30)
                        .filter_map(|_| xkube_e2e::http_get_here(vip, "/hostname", TIMEOUT).ok())
                        .collect()
                });
                (seen == all).then_some(())
            },
        );
    }

    // A6: ClusterIP from pods on every node (agnhost /dial makes the pod connect).
    for (name, ip, node) in pods(&c, "web") {
        let path = format!("/dial?host={}&port=80&path=/hostname", vip.ip());
        let answer = http_get(
            &c.node_ns(node),
            SocketAddrV4::new(ip, 8080),
            &path,
            TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("pod {name} -> ClusterIP: {e}"));
        assert!(all.contains(answer.trim()), "{name} got {answer:?}");
    }

    // Issue 19: cluster DNS from a pod, through this proxy mode (kube-dns is a ClusterIP).
    dns_from_a_pod(&c, mode, &pods(&c, "web")[0].0);

    // A8: NodePort on every node's address from the external client; local and remote
    // backends answer, each connection with the node address the client used.
    let np = node_port(&c, "web");
    for i in 0..c.nodes {
        let seen = hostnames(&c.client_ns(), SocketAddrV4::new(c.node_addr(i), np), 40);
        assert_eq!(seen, all, "NodePort on node{}", i + 1);
    }

    // A10: an off-cluster client reaches the ClusterIP through a route via node1.
    c.client_ns()
        .add_route(Ipv4Addr::new(10, 96, 0, 0), 12, c.node_addr(0))
        .expect("client route to the service range via node1");
    assert_eq!(
        hostnames(&c.client_ns(), vip, 40),
        all,
        "ClusterIP from outside"
    );
    if mode == "userspace" {
        userspace_two_connections_and_no_leaks(&c, np, vip);
    }

    // A9: a LoadBalancer service whose ingress IP (assigned in status, no cloud) is routed to
    // node2 by the client.
    c.apply(&service("lb", "web", "  type: LoadBalancer"));
    let lb_ip = Ipv4Addr::new(198, 18, 1, 10);
    c.kubectl_ok(&[
        "patch",
        "svc",
        "lb",
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(r#"{{"status":{{"loadBalancer":{{"ingress":[{{"ip":"{lb_ip}"}}]}}}}}}"#),
    ]);
    wait_endpoints(&c, "lb", 3);
    c.client_ns()
        .add_route(Ipv4Addr::new(198, 18, 1, 0), 24, c.node_addr(1))
        .expect("client route to the LB range via node2");
    let via_lb = c.wait(
        "the LoadBalancer IP to answer",
        Duration::from_secs(10),
        || {
            http_get(
                &c.client_ns(),
                SocketAddrV4::new(lb_ip, 80),
                "/hostname",
                TIMEOUT,
            )
            .ok()
        },
    );
    assert!(all.contains(via_lb.trim()), "{via_lb}");

    // ClientIP affinity sticks.
    c.apply(&service("sticky", "web", "  sessionAffinity: ClientIP"));
    wait_endpoints(&c, "sticky", 3);
    let sticky = SocketAddrV4::new(cluster_ip(&c, "sticky"), 80);
    c.wait(
        "the sticky service to answer",
        Duration::from_secs(10),
        || http_get(&c.client_ns(), sticky, "/hostname", TIMEOUT).ok(),
    );
    assert_eq!(hostnames(&c.client_ns(), sticky, 20).len(), 1, "affinity");

    // A UDP service: the reply comes from the service address.
    c.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: dns}
spec:
  selector: {app: web}
  ports:
  - {name: dns, port: 53, targetPort: dns, protocol: UDP}
"#,
    );
    wait_endpoints(&c, "dns", 3);
    let dns = SocketAddrV4::new(cluster_ip(&c, "dns"), 53);
    let (answer, from) = c.wait("a UDP answer", Duration::from_secs(10), || {
        c.client_ns()
            .run(|| -> std::io::Result<(String, std::net::SocketAddr)> {
                let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                s.set_read_timeout(Some(TIMEOUT))?;
                s.send_to(b"hostname", dns)?;
                let mut buf = [0u8; 256];
                let (n, from) = s.recv_from(&mut buf)?;
                Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
            })
            .expect("enter client")
            .ok()
    });
    assert!(all.contains(answer.trim()), "{answer}");
    assert_eq!(
        from,
        std::net::SocketAddr::V4(dns),
        "UDP reply from the service address"
    );

    // A UDP flow follows its endpoint: a client that keeps its source port keeps one
    // conntrack flow; when the pod answering it is deleted, its next datagram reaches a live
    // pod (the stale flow is deleted) instead of the dead address.
    let sock = c
        .client_ns()
        .run(|| {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
            s.set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            s
        })
        .expect("enter client");
    let ask = || -> Option<String> {
        sock.send_to(b"hostname", dns).ok()?;
        let mut buf = [0u8; 256];
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
    };
    let first = c.wait("a UDP answer on one flow", Duration::from_secs(10), ask);
    let gone_ip = pods(&c, "web")
        .into_iter()
        .find(|p| p.0 == first)
        .map(|p| p.1)
        .expect("the answering pod");
    c.kubectl_ok(&["delete", "pod", &first, "--wait=false"]);
    c.wait(
        "the deleted pod to leave the endpoints",
        Duration::from_secs(30),
        || (!ready_endpoints(&c, "dns").contains(&gone_ip)).then_some(()),
    );
    let next = c.wait(
        "an answer from a live pod on the same flow",
        Duration::from_secs(15),
        || ask().filter(|h| *h != first),
    );
    println!("{mode}: UDP flow moved from {first} to {next} after the pod's deletion");

    // Hairpin: the only pod of a service reaches itself through that service.
    c.apply(&web_rc("solo", 1));
    c.apply(&service("solo", "solo", ""));
    wait_endpoints(&c, "solo", 1);
    let solo_vip = cluster_ip(&c, "solo");
    let (solo, solo_ip, solo_node) = pods(&c, "solo").remove(0);
    let path = format!("/dial?host={solo_vip}&port=80&path=/hostname");
    let answer = c.wait("the pod to reach itself", Duration::from_secs(10), || {
        http_get(
            &c.node_ns(solo_node),
            SocketAddrV4::new(solo_ip, 8080),
            &path,
            TIMEOUT,
        )
        .ok()
        .filter(|a| a.trim() == solo)
    });
    assert_eq!(
        answer.trim(),
        solo,
        "a pod reaches itself through its service"
    );

    // Endpoints follow scaling: 3 -> 2 pods, traffic only to the 2.
    c.kubectl_ok(&["scale", "rc", "web", "--replicas=2"]);
    wait_endpoints(&c, "web", 2);
    let started = Instant::now();
    c.wait(
        "traffic only to the 2 remaining pods",
        Duration::from_secs(15),
        // Requests may fail while the removed pod is gone and the rules not yet updated
        // (within --min-sync-period).
        || (try_hostnames(&c.client_ns(), vip, 20)?.len() == 2).then_some(()),
    );
    println!(
        "scale-down reflected in traffic after {:?}",
        started.elapsed()
    );

    // The proxies read EndpointSlices (mirrored from the Endpoints with the controller's
    // trigger time): every node measured the programming latency of the scale-down (a change
    // its watch saw; the first list's changes are not measured).
    for i in 0..c.nodes {
        let metrics = c
            .node_ns(i)
            .run(|| {
                xkube_e2e::http_get_here(
                    SocketAddrV4::new(c.node_addr(i), 10249),
                    "/metrics",
                    TIMEOUT,
                )
            })
            .expect("enter node")
            .unwrap_or_else(|e| panic!("node{} metrics: {e}", i + 1));
        let count = metrics
            .lines()
            .find_map(|l| l.strip_prefix("kubeproxy_network_programming_duration_seconds_count "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(
            count > 0.0,
            "node{}: no network programming latency measured:\n{metrics}",
            i + 1
        );
    }

    // The mode's own state on every node.
    check_mode_state(&c, mode, "web", 2);

    // A service without endpoints refuses connections (no black hole).
    c.apply(&service("empty", "nobody", ""));
    let empty = SocketAddrV4::new(cluster_ip(&c, "empty"), 80);
    let refused = c.wait(
        "the empty service to be programmed",
        Duration::from_secs(10),
        || {
            c.on_node(0, || {
                let refused = |e: &std::io::Error| {
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::PermissionDenied
                            | std::io::ErrorKind::ConnectionReset
                    )
                };
                match std::net::TcpStream::connect_timeout(&empty.into(), TIMEOUT) {
                    // iptables REJECTs (ICMP port unreachable: refused); the socket LB refuses
                    // the connect() itself (EPERM); the userspace proxy accepts and resets.
                    // A timeout would mean a black hole.
                    Err(e) if refused(&e) => Some(e),
                    Ok(mut s) if mode == "userspace" => {
                        use std::io::Read as _;
                        s.set_read_timeout(Some(TIMEOUT)).ok()?;
                        match s.read(&mut [0u8; 1]) {
                            Err(e) if refused(&e) => Some(e),
                            _ => None,
                        }
                    }
                    _ => None,
                }
            })
        },
    );
    println!("{mode}: empty service from node1: {refused}");

    // Deleting the Service stops its traffic.
    c.kubectl_ok(&["delete", "svc", "web"]);
    c.wait(
        "the deleted service to stop answering",
        Duration::from_secs(5),
        || {
            http_get(&c.client_ns(), vip, "/hostname", Duration::from_millis(500))
                .is_err()
                .then_some(())
        },
    );

    job_runs_to_completion(&c);
}

/// What `xkube agnhost dig` printed: the status, the name answered, when the answer came
/// (unix seconds), and the answer records as (type, rdata).
#[derive(Debug)]
struct Dig {
    status: String,
    name: String,
    when: f64,
    records: Vec<(String, String)>,
}

impl Dig {
    /// The rdata of the records of type `t`, sorted.
    fn data(&self, t: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .records
            .iter()
            .filter(|r| r.0 == t)
            .map(|r| r.1.clone())
            .collect();
        v.sort();
        v
    }
}

/// `kubectl exec <pod> -- xkube agnhost dig <args>`: the pod's resolver configuration
/// (resolv.conf written by the kubelet) decides the server and the search path. The process
/// runtime runs pods from the host's filesystem, so the binary is this build's.
fn dig(c: &Cluster, pod: &str, args: &[&str]) -> Dig {
    let bin = xkube_e2e::xkube_bin();
    let mut argv = vec![
        "exec",
        pod,
        "--",
        bin.to_str().expect("utf-8 binary path"),
        "agnhost",
        "dig",
    ];
    argv.extend_from_slice(args);
    // dig exits 1 only when no server answered (a lost datagram, a busy kube-dns pod on the
    // 2-core CI machine): ask again, at most 3 times; answers themselves are not retried.
    let mut attempt = 0;
    let out = loop {
        attempt += 1;
        let out = c.kubectl(&argv);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        if attempt == 3 {
            let report = dns_lag_report(c, pod, None);
            panic!(
                "kubectl {argv:?} failed {attempt} times: {}{}{report}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let mut d = Dig {
        status: String::new(),
        name: String::new(),
        when: 0.0,
        records: Vec::new(),
    };
    for line in out.lines() {
        if let Some(w) = line.strip_prefix(";; when: ") {
            d.when = w.trim().parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
        } else if line.starts_with(";;") {
        } else if let Some(s) = line.strip_prefix("status: ") {
            d.status = s.to_owned();
        } else if let Some(n) = line.strip_prefix("name: ") {
            d.name = n.to_owned();
        } else {
            // name ttl class type rdata...
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(
                f.len() >= 5,
                "dig {args:?}: unexpected line {line:?} in\n{out}"
            );
            d.records.push((f[3].to_owned(), f[4..].join(" ")));
        }
    }
    assert!(!d.status.is_empty(), "dig {args:?}: no status in\n{out}");
    d
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Issue 19's DNS acceptance from a pod (`client`, a pod of `web`): `my-svc` (short name,
/// through the search path) and `my-svc.other-ns` resolve to their ClusterIPs, a headless
/// service to its ready pod IPs, SRV for a named port, an unknown name is NXDOMAIN, over UDP
/// and TCP; after a scale-down the headless answer drops the pod within a second of the pod
/// leaving the EndpointSlice (seen by a watch; the time from the scale is printed too).
fn dns_from_a_pod(c: &Cluster, mode: &str, client: &str) {
    c.apply(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: other-ns}
---
apiVersion: v1
kind: Service
metadata: {name: my-svc, namespace: other-ns}
spec:
  ports:
  - {name: http, port: 80, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: peers}
spec:
  clusterIP: None
  selector: {app: peers}
  ports:
  - {name: http, port: 8080, targetPort: http, protocol: TCP}
"#,
    );
    c.apply(&service("my-svc", "web", ""));
    c.apply(&web_rc("peers", 2));
    let my_svc = cluster_ip(c, "my-svc").to_string();
    let other = c.get_json(&["svc", "my-svc", "-n", "other-ns"])["spec"]["clusterIP"]
        .as_str()
        .expect("other-ns/my-svc has a ClusterIP")
        .to_owned();
    let mut peers: Vec<String> = wait_endpoints(c, "peers", 2)
        .iter()
        .map(ToString::to_string)
        .collect();
    peers.sort();

    // The short name through the pod's search path (UDP); kube-dns's cache follows the
    // watch, so the first answers may come before it saw the new objects.
    let short = c.wait("my-svc to resolve", Duration::from_secs(10), || {
        let d = dig(c, client, &["my-svc"]);
        (d.status == "NOERROR").then_some(d)
    });
    assert_eq!(short.name, "my-svc.default.svc.cluster.local.", "{short:?}");
    assert_eq!(short.data("A"), [my_svc], "{short:?}");
    let d = dig(c, client, &["--tcp", "my-svc.other-ns"]);
    assert_eq!(
        (d.status.as_str(), d.name.as_str()),
        ("NOERROR", "my-svc.other-ns.svc.cluster.local."),
        "{d:?}"
    );
    assert_eq!(d.data("A"), [other], "{d:?}");
    let d = c.wait(
        "the headless service's pods",
        Duration::from_secs(10),
        || {
            let d = dig(c, client, &["peers"]);
            (d.data("A") == peers).then_some(d)
        },
    );
    assert_eq!(d.name, "peers.default.svc.cluster.local.", "{d:?}");
    let d = dig(c, client, &["--type", "SRV", "_http._tcp.my-svc"]);
    assert_eq!(
        d.data("SRV"),
        ["0 100 80 my-svc.default.svc.cluster.local."],
        "{d:?}"
    );
    let d = dig(c, client, &["--tcp", "--type", "SRV", "_http._tcp.peers"]);
    let want: Vec<String> = peers
        .iter()
        .map(|ip| {
            format!(
                "0 50 8080 {}.peers.default.svc.cluster.local.",
                ip.replace('.', "-")
            )
        })
        .collect();
    assert_eq!(d.data("SRV"), want, "{d:?}");
    let d = dig(c, client, &["nosuch.default.svc.cluster.local."]);
    assert_eq!(
        (d.status.as_str(), d.records.len()),
        ("NXDOMAIN", 0),
        "{d:?}"
    );

    // Scale-down: a watch on the service's EndpointSlices timestamps the change, then the
    // headless name is polled (bounded) until every answer lacks the removed pod.
    let mut watch = std::process::Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args([
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=peers",
            "-w",
            "-o",
            "json",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl get endpointslices -w");
    let stdout = watch.stdout.take().expect("watch stdout");
    let (tx, rx) = std::sync::mpsc::channel::<(f64, Vec<String>)>();
    let reader = std::thread::spawn(move || {
        for v in serde_json::Deserializer::from_reader(stdout).into_iter::<serde_json::Value>() {
            let Ok(v) = v else { break };
            let mut ready: Vec<String> = v["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["conditions"]["ready"].as_bool() != Some(false))
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            ready.sort();
            if tx.send((unix_now(), ready)).is_err() {
                break;
            }
        }
    });
    // The watch is up once it printed the current slice.
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the EndpointSlice watch to print the current slice");
    assert_eq!(first.1, peers, "the slice before the scale-down");
    let scaled_at = unix_now();
    c.kubectl_ok(&["scale", "rc", "peers", "--replicas=1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut left: Option<(f64, String)> = None;
    // The first answer of the final run of answers without the pod, and the last answer that
    // still named it: DNS dropped it between the two.
    let mut dropped: Option<f64> = None;
    let mut last_with = scaled_at;
    let mut clean = 0;
    let mut stale = String::new();
    let mut watch_ended = false;
    // Six answers in a row (kube-dns has two replicas behind its ClusterIP).
    while clean < 6 {
        if Instant::now() >= deadline {
            if stale.is_empty() {
                stale = dns_lag_report(c, client, left.as_ref().map(|l| l.1.as_str()));
            }
            panic!(
                "{mode}: the headless answer still names a removed pod 30 s after the scale; {stale}"
            );
        }
        if !watch_ended && let Ok(Some(st)) = watch.try_wait() {
            watch_ended = true;
            println!("{mode}: kubectl get endpointslices -w ended: {st}");
        }
        while let Ok((at, ready)) = rx.try_recv() {
            println!("{mode}: slice watch at {at:.3}: {ready:?}");
            if left.is_none() && ready.len() == 1 {
                let gone = peers
                    .iter()
                    .find(|ip| !ready.contains(ip))
                    .expect("a removed pod")
                    .clone();
                left = Some((at, gone));
            }
        }
        let d = dig(c, client, &["peers"]);
        match &left {
            // An answer without the pod.
            Some((_, gone)) if d.status == "NOERROR" && !d.data("A").contains(gone) => {
                dropped.get_or_insert(d.when);
                clean += 1;
            }
            // A query that got no NOERROR answer proves nothing either way.
            Some(_) if d.status != "NOERROR" => {
                println!("{mode}: dig peers: {} (not counted)", d.status);
            }
            _ => {
                last_with = d.when;
                dropped = None;
                clean = 0;
                // Still named 2 s after the slice lost it: ask each kube-dns replica (once)
                // which of them is behind, for the failure message.
                if stale.is_empty() && d.when - scaled_at > 2.0 {
                    stale = dns_lag_report(c, client, left.as_ref().map(|l| l.1.as_str()));
                    println!("{mode}: 2 s after the scale: {stale}");
                }
            }
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let _ = reader.join();
    let (left_at, gone) = left.expect("the slice lost a pod");
    let dropped = dropped.expect("an answer without the pod");
    let after_slice = dropped - left_at;
    println!(
        "{mode}: DNS dropped {gone} at most {:.0} ms after the EndpointSlice watch showed it \
         gone (the last answer naming it came {:.0} ms after; {:.0} ms after the scale)",
        after_slice * 1e3,
        (last_with - left_at) * 1e3,
        (dropped - scaled_at) * 1e3,
    );
    assert!(
        after_slice < 1.0,
        "{mode}: the headless answer dropped {gone} {after_slice:.3} s after the EndpointSlice; \
         {stale}"
    );
}

/// Why a removed pod is still answered (or DNS does not answer): every pod, the kube-dns
/// Endpoints, the events, the peers Endpoints and EndpointSlices as the apiserver has them,
/// each kube-dns replica's answer when asked directly (with its log when it still names
/// `gone`), and the tails of the cluster's logs. With `XKUBE_E2E_SAVE_LOGS=<dir>` the whole
/// log directory is copied there too (the cluster and its logs go when the test ends).
fn dns_lag_report(c: &Cluster, client: &str, gone: Option<&str>) -> String {
    let mut out = Vec::new();
    for (what, args) in [
        ("pods", &["pods", "-A", "-o", "wide"][..]),
        (
            "kube-dns endpoints",
            &["endpoints", "-n", "kube-system", "kube-dns", "-o", "yaml"][..],
        ),
        ("events", &["events", "-A"][..]),
        ("endpoints", &["endpoints", "peers", "-o", "yaml"][..]),
        (
            "slices",
            &[
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=peers",
                "-o",
                "yaml",
            ][..],
        ),
    ] {
        let o = c.kubectl(&[&["get"], args].concat());
        out.push(format!(
            "{what}:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let pods = c.get_json(&["pods", "-n", "kube-system", "-l", "k8s-app=kube-dns"]);
    for p in pods["items"].as_array().into_iter().flatten() {
        let pod = p["metadata"]["name"].as_str().unwrap_or("?");
        let ip = p["status"]["podIP"].as_str().unwrap_or("?");
        let bin = xkube_e2e::xkube_bin();
        let o = c.kubectl(&[
            "exec",
            client,
            "--",
            bin.to_str().expect("utf-8 binary path"),
            "agnhost",
            "dig",
            "--short",
            "--server",
            ip,
            "peers",
        ]);
        let answer = String::from_utf8_lossy(&o.stdout);
        let mut line = format!(
            "{pod} ({ip}) asked directly: {}{}",
            answer.trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
        if gone.is_some_and(|g| answer.lines().any(|a| a.trim() == g)) {
            let logs = c.kubectl(&["logs", "-n", "kube-system", pod, "--tail", "30"]);
            line.push_str(&format!(
                " BEHIND; its log:\n{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            ));
        }
        out.push(line);
    }
    out.push(c.logs());
    if let Some(dir) = std::env::var_os("XKUBE_E2E_SAVE_LOGS") {
        let _ = std::process::Command::new("cp")
            .arg("-r")
            .arg(c.data_root.join(&c.name).join("logs"))
            .arg(dir)
            .status();
    }
    out.join("\n")
}

/// Issue 19: a Job as a user runs one with upstream kubectl: `create job`, `wait
/// --for=condition=complete`, `logs job/x` (kubectl finds the pod by the Job's generated
/// selector), `describe job` (its Pods Statuses line counts the pods by that selector), and
/// `delete job` (kubectl asks for Background propagation: the pod goes too).
fn job_runs_to_completion(c: &Cluster) {
    c.kubectl_ok(&[
        "create",
        "job",
        "hello",
        "--image=busybox",
        "--",
        "/bin/sh",
        "-c",
        "echo hello from a job",
    ]);
    c.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/hello",
        "--timeout=90s",
    ]);
    let logs = c.kubectl_ok(&["logs", "job/hello"]);
    assert_eq!(logs.trim(), "hello from a job");
    let describe = c.kubectl_ok(&["describe", "job", "hello"]);
    assert!(
        describe
            .lines()
            .any(|l| l == "Pods Statuses:    0 Active (0 Ready) / 1 Succeeded / 0 Failed"),
        "{describe}"
    );
    let row = c.kubectl_ok(&["get", "job", "hello", "--no-headers"]);
    assert!(
        row.split_whitespace()
            .take(3)
            .eq(["hello", "Complete", "1/1"]),
        "{row}"
    );
    c.kubectl_ok(&["delete", "job", "hello"]);
    c.wait("the job's pod to go", Duration::from_secs(30), || {
        c.get_json(&["pods", "-l", "job-name=hello"])["items"]
            .as_array()
            .is_some_and(|i| i.is_empty())
            .then_some(())
    });
}

/// Requests to `to` from the client namespace on a thread, paced at 500/s at most (requests
/// to a remote backend are SNATed and agnhost closes first, so each holds a SNAT port through
/// the backend's 60 s TIME_WAIT: 4,536 ports per backend). Bounded: 30,000 requests or 90 s.
struct RequestLoop {
    stop: Arc<AtomicBool>,
    started: Instant,
    thread: std::thread::JoinHandle<Vec<(f64, Option<String>)>>,
}

impl RequestLoop {
    fn start(c: &Cluster, to: SocketAddrV4) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let client_path = c.client_ns().path().to_owned();
        let started = Instant::now();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let ns = std::fs::File::open(&client_path).expect("client namespace");
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let deadline = Instant::now() + Duration::from_secs(90);
                let mut next = Instant::now();
                let mut out = Vec::new();
                for _ in 0..30_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    next += Duration::from_millis(2);
                    let at = started.elapsed().as_secs_f64();
                    let r = xkube_e2e::http_get_here(to, "/hostname", TIMEOUT);
                    out.push((at, r.err().map(|e| e.to_string())));
                }
                out
            })
        };
        Self {
            stop,
            started,
            thread,
        }
    }

    fn at(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Every request: when it started (seconds since the loop started) and its error.
    fn stop(self) -> Vec<(f64, Option<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("request loop")
    }
}

/// Waits until node `i`'s proxy answers /healthz (after its first sync).
fn wait_proxy_healthy(c: &Cluster, i: usize) {
    c.wait(
        "the agent's proxy to be healthy",
        Duration::from_secs(60),
        || {
            http_get(
                &c.node_ns(i),
                SocketAddrV4::new(c.node_addr(i), 10256),
                "/healthz",
                TIMEOUT,
            )
            .ok()
        },
    );
}

fn agent_restart_suite(mode: &str) {
    let c = Cluster::up(3, &["--proxy-mode", mode]);
    c.apply(&web_rc("web", 2));
    c.apply(&service("web", "web", "  type: NodePort"));
    wait_endpoints(&c, "web", 2);
    let np = node_port(&c, "web");
    let to = SocketAddrV4::new(c.node_addr(0), np);
    // Programmed within the mode's --min-sync-period of the Endpoints.
    c.wait("the NodePort to answer", Duration::from_secs(10), || {
        try_hostnames(&c.client_ns(), to, 5)
    });

    let looper = RequestLoop::start(&c, to);
    std::thread::sleep(Duration::from_secs(1));
    let killed_at = looper.at();
    c.restart(&c.node_name(0), true);
    let restarted_at = looper.at();
    wait_proxy_healthy(&c, 0);
    let healthy_at = looper.at();
    std::thread::sleep(Duration::from_secs(1));
    let all = looper.stop();
    let errors: Vec<String> = all
        .iter()
        .filter_map(|(t, e)| e.as_ref().map(|e| format!("{t:.3}s: {e}")))
        .collect();
    let (ok, failed) = (all.len() - errors.len(), errors.len());
    println!(
        "{mode}: NodePort requests via node1 across its agent's SIGKILL + restart: {ok} ok, {failed} failed \
         (killed at {killed_at:.3}s, restarted at {restarted_at:.3}s, healthy at {healthy_at:.3}s); \
         errors: {:#?}",
        &errors[..errors.len().min(10)]
    );
    assert!(ok > 50, "the loop ran ({ok} requests)");
    if mode == "userspace" {
        // Listeners live in the agent: requests between the kill and the new agent's first
        // sync may fail; none after it.
        let late: Vec<&(f64, Option<String>)> = all
            .iter()
            .filter(|(t, e)| e.is_some() && *t > healthy_at)
            .collect();
        let gap = all
            .iter()
            .filter(|(_, e)| e.is_some())
            .map(|(t, _)| *t)
            .fold(None, |acc: Option<(f64, f64)>, t| {
                Some(acc.map_or((t, t), |(a, b)| (a.min(t), b.max(t))))
            });
        println!("userspace: failures between {gap:?} (s since the loop started)");
        assert!(
            late.is_empty(),
            "requests failed after the first sync: {late:?}"
        );
        return;
    }
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
}

/// Whether node `i` holds eBPF state of the proxy (pins, XDP on the uplink).
fn ebpf_state(c: &Cluster, i: usize) -> Vec<String> {
    let mut found = Vec::new();
    let pins = std::path::Path::new("/sys/fs/bpf/xkube").join(c.node_name(i));
    if pins.exists() {
        found.push(format!("pins at {}", pins.display()));
    }
    let link = c
        .node_ns(i)
        .run(|| {
            std::process::Command::new("ip")
                .args(["-d", "link", "show", "eth0"])
                .output()
        })
        .expect("enter node")
        .expect("ip link");
    let text = String::from_utf8_lossy(&link.stdout);
    if text.contains("xdp") {
        found.push(format!("XDP on eth0: {text}"));
    }
    found
}

fn kube_rules(c: &Cluster, i: usize) -> usize {
    kube_lines(&iptables_save(c, i)).len()
}

/// Lines of `iptables-save` output naming one of kube-proxy's KUBE-* chains (the kubelet's own
/// pod masquerade chain is XKUBE-*).
fn kube_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| {
            l.split_whitespace()
                .any(|t| t.trim_start_matches(':').starts_with("KUBE-"))
        })
        .collect()
}

/// Switching node1 ebpf -> iptables -> ebpf under load: each switch leaves no state of the
/// other mode, and requests fail only while the node has neither mode's state (the new agent
/// removes the old mode, then programs its own in its first sync).
#[test]
fn privileged_cluster_switching_a_live_node_between_ebpf_iptables_and_nftables() {
    let c = Cluster::up(3, &["--proxy-mode", "ebpf"]);
    c.apply(&web_rc("web", 2));
    c.apply(&service("web", "web", "  type: NodePort"));
    wait_endpoints(&c, "web", 2);
    let to = SocketAddrV4::new(c.node_addr(0), node_port(&c, "web"));
    // Programmed within the mode's --min-sync-period of the Endpoints.
    c.wait("the NodePort to answer", Duration::from_secs(10), || {
        try_hostnames(&c.client_ns(), to, 5)
    });
    assert!(!ebpf_state(&c, 0).is_empty(), "ebpf mode has its state");
    assert_eq!(kube_rules(&c, 0), 0);

    let looper = RequestLoop::start(&c, to);
    let mut windows = Vec::new();
    for mode in ["iptables", "nftables", "ebpf"] {
        std::thread::sleep(Duration::from_secs(1));
        let from = looper.at();
        c.restart_with(&c.node_name(0), false, &["--proxy-mode", mode]);
        wait_proxy_healthy(&c, 0);
        let until = looper.at();
        windows.push((mode, from, until));
        let nft = nft_table(&c, 0);
        match mode {
            "iptables" => {
                let left = ebpf_state(&c, 0);
                assert!(
                    left.is_empty(),
                    "eBPF state left after the switch: {left:?}"
                );
                assert!(kube_rules(&c, 0) > 0, "iptables rules written");
                assert!(nft.is_empty(), "an nftables table: {nft}");
            }
            "nftables" => {
                assert_eq!(kube_rules(&c, 0), 0, "iptables rules left after the switch");
                assert!(nft.contains("chain services {"), "nftables table written");
                assert!(ebpf_state(&c, 0).is_empty(), "eBPF state");
            }
            _ => {
                assert_eq!(kube_rules(&c, 0), 0, "iptables rules left after the switch");
                assert!(
                    nft.is_empty(),
                    "nftables table left after the switch: {nft}"
                );
                assert!(!ebpf_state(&c, 0).is_empty(), "eBPF state back");
            }
        }
        // Served by the new mode.
        assert_eq!(
            hostnames(&c.client_ns(), to, 20).len(),
            2,
            "{mode} serves both backends"
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let all = looper.stop();
    let ok = all.iter().filter(|(_, e)| e.is_none()).count();
    assert!(ok > 500, "the loop ran ({ok} requests)");
    for (mode, from, until) in &windows {
        let failed: Vec<&(f64, Option<String>)> = all
            .iter()
            .filter(|(t, e)| e.is_some() && t >= from && t <= until)
            .collect();
        let gap = match (failed.first(), failed.last()) {
            (Some(a), Some(b)) => format!("{:.1} ms", (b.0 - a.0) * 1000.0),
            _ => "none".into(),
        };
        println!(
            "switch to {mode}: {} failed requests, failure window {gap} (restart to healthy: {:.0} ms); first errors: {:?}",
            failed.len(),
            (until - from) * 1000.0,
            failed.iter().take(3).collect::<Vec<_>>()
        );
    }
    let outside: Vec<&(f64, Option<String>)> = all
        .iter()
        .filter(|(t, e)| e.is_some() && !windows.iter().any(|(_, f, u)| t >= f && t <= u))
        .collect();
    assert!(
        outside.is_empty(),
        "requests failed outside the switches: {outside:?}"
    );
}
