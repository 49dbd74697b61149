//! New connections per second through a ClusterIP with 10,000 other services present, next to
//! the same workload straight to the pod IP (no proxy), in one run on one cluster.
//!
//! `sudo cargo bench -p xkube-e2e --bench connrate` — brings up a 2-node cluster, one agnhost
//! pod, 10,000 extra ClusterIP services (each with an Endpoints object), then from a host
//! process of node1 (its namespace and cgroup: the socket-LB path) opens `CONNS` sequential
//! connections (connect, HTTP GET, read, close) to the ClusterIP and to the pod IP,
//! alternating rounds. Prints a Markdown table.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use xkube_e2e::{Cluster, http_get_here};

const SERVICES: usize = 10_000;
const CONNS: usize = 2_000;
const ROUNDS: usize = 3;

fn main() {
    let c = Cluster::up(2, &[]);
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: target, labels: {app: target}}
spec:
  nodeName: NODE2
  containers:
  - name: agnhost
    image: xkube/agnhost:0.1.0
    args: ["--http-port=8080"]
    ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: target}
spec:
  selector: {app: target}
  ports: [{port: 80, targetPort: 8080}]
"#
        .replace("NODE2", &c.node_name(1))
        .as_str(),
    );
    // 10k services with endpoints, created through kubectl in chunks of 500.
    let started = Instant::now();
    for chunk in 0..(SERVICES / 500) {
        let mut items = Vec::new();
        for i in chunk * 500..(chunk + 1) * 500 {
            items.push(serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("filler-{i}")},
                "spec": {"ports": [{"port": 80, "targetPort": 8080}]}
            }));
            items.push(serde_json::json!({
                "apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": format!("filler-{i}")},
                "subsets": [{"addresses": [{"ip": format!("10.244.200.{}", i % 250 + 1)}],
                             "ports": [{"port": 8080}]}]
            }));
        }
        // A multi-document YAML stream (JSON documents are YAML).
        let docs: Vec<String> = items.iter().map(|i| i.to_string()).collect();
        let out = c.kubectl_stdin(&["create", "-f", "-"], Some(&docs.join("\n---\n")));
        assert!(
            out.status.success(),
            "creating filler services: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "created {SERVICES} services + endpoints in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let svc = c.get_json(&["svc", "target"]);
    let vip: Ipv4Addr = svc["spec"]["clusterIP"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("clusterIP");
    let pod_ip: Ipv4Addr = c.wait("the target pod's IP", Duration::from_secs(60), || {
        c.get_json(&["pod", "target"])["status"]["podIP"]
            .as_str()
            .and_then(|s| s.parse().ok())
    });
    let via_vip = SocketAddrV4::new(vip, 80);
    let direct = SocketAddrV4::new(pod_ip, 8080);
    // Programmed when node1's proxy reports the filler services in its metrics.
    c.wait(
        "node1's proxy to program every service",
        Duration::from_secs(180),
        || {
            let m = c
                .node_ns(0)
                .run(|| {
                    http_get_here(
                        SocketAddrV4::new(c.node_addr(0), 10249),
                        "/metrics",
                        Duration::from_secs(5),
                    )
                })
                .ok()?
                .ok()?;
            let n = m
                .lines()
                .filter(|l| l.starts_with("xkube_proxy_service_packets_total"))
                .count();
            (n > SERVICES).then_some(())
        },
    );
    let (vip_rate, direct_rate) = c.on_node(0, || {
        let measure = |to: SocketAddrV4| -> f64 {
            let t = Instant::now();
            for _ in 0..CONNS {
                http_get_here(to, "/hostname", Duration::from_secs(3))
                    .unwrap_or_else(|e| panic!("GET {to}: {e}"));
            }
            CONNS as f64 / t.elapsed().as_secs_f64()
        };
        // Warm up both paths, then alternate rounds so drift hits both alike.
        measure(via_vip);
        measure(direct);
        let mut v = Vec::new();
        let mut d = Vec::new();
        for _ in 0..ROUNDS {
            v.push(measure(via_vip));
            d.push(measure(direct));
        }
        let median = |mut x: Vec<f64>| {
            x.sort_by(f64::total_cmp);
            x[x.len() / 2]
        };
        (median(v), median(d))
    });
    println!(
        "| path (node1 host process -> pod on node2, {SERVICES} services present) | new connections/s (median of {ROUNDS} x {CONNS}) |"
    );
    println!("|---|---:|");
    println!("| ClusterIP via the eBPF socket LB | {vip_rate:.0} |");
    println!("| pod IP directly (no proxy) | {direct_rate:.0} |");
    println!("| ratio | {:.2} |", vip_rate / direct_rate);
}
