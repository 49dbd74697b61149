//! Programming 10,000 Services with Endpoints created through the API on a 2-node cluster:
//! from the first create until both nodes' proxies have programmed every service (seen in
//! their metrics: one `xkube_proxy_service_packets_total` series per service port).
//!
//! `sudo cargo bench -p xkube-e2e --bench services_10k` (the cluster runs `$XKUBE_BIN`, or the
//! workspace's debug build; build xkube with `--release` and point `XKUBE_BIN` at it for the
//! release figure). Services and Endpoints go in through `kubectl create -f -` in chunks of 500,
//! 8 clients at a time.
//! Bounded: the wait for programming gives up after 15 minutes.

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use xkube_e2e::{Cluster, http_get_here};

const SERVICES: usize = 10_000;
const CHUNK: usize = 500;
const PARALLEL: usize = 8;

/// Creates fillers `chunk * CHUNK ..` (a Service and its Endpoints each).
fn create_chunk(c: &Cluster, chunk: usize) {
    let mut docs = Vec::with_capacity(2 * CHUNK);
    for i in chunk * CHUNK..(chunk + 1) * CHUNK {
        docs.push(
            serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("filler-{i}")},
                "spec": {"ports": [{"port": 80, "targetPort": 8080}]}
            })
            .to_string(),
        );
        docs.push(
            serde_json::json!({
                "apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": format!("filler-{i}")},
                "subsets": [{"addresses": [{"ip": format!("10.244.200.{}", i % 250 + 1)}],
                             "ports": [{"port": 8080}]}]
            })
            .to_string(),
        );
    }
    let out = c.kubectl_stdin(&["create", "-f", "-"], Some(&docs.join("\n---\n")));
    assert!(
        out.status.success(),
        "creating filler services: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Service ports node `i`'s proxy has programmed.
fn programmed(c: &Cluster, i: usize) -> Option<usize> {
    let m = c
        .node_ns(i)
        .run(|| {
            http_get_here(
                SocketAddrV4::new(c.node_addr(i), 10249),
                "/metrics",
                Duration::from_secs(10),
            )
        })
        .ok()?
        .ok()?;
    Some(
        m.lines()
            .filter(|l| l.starts_with("xkube_proxy_service_packets_total{"))
            .count(),
    )
}

fn main() {
    let c = Cluster::up(2, &[]);
    // The kubernetes Service and the cluster DNS (if any) are there before the fillers.
    let base = c.wait("node1's proxy to sync", Duration::from_secs(60), || {
        programmed(&c, 0)
    });
    let started = Instant::now();
    // PARALLEL clients, each creating every PARALLEL-th chunk (as load generators do; one
    // serial kubectl waits for every create's commit in turn).
    std::thread::scope(|scope| {
        for w in 0..PARALLEL {
            let c = &c;
            scope.spawn(move || {
                for chunk in (w..SERVICES / CHUNK).step_by(PARALLEL) {
                    create_chunk(c, chunk);
                }
            });
        }
    });
    let created = started.elapsed();
    let mut done = [None, None];
    let deadline = Instant::now() + Duration::from_secs(900);
    while done.iter().any(Option::is_none) && Instant::now() < deadline {
        for (i, d) in done.iter_mut().enumerate() {
            if d.is_none() && programmed(&c, i).is_some_and(|n| n >= base + SERVICES) {
                *d = Some(started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let fmt = |d: Option<Duration>| {
        d.map_or("not within 15 min".to_owned(), |d| {
            format!("{:.1} s", d.as_secs_f64())
        })
    };
    println!(
        "| services + endpoints | created through the API | node1 programmed | node2 programmed |"
    );
    println!("|---:|---:|---:|---:|");
    println!(
        "| {SERVICES} | {:.1} s | {} | {} |",
        created.as_secs_f64(),
        fmt(done[0]),
        fmt(done[1])
    );
    assert!(
        done.iter().all(Option::is_some),
        "both agents programmed every service"
    );
}
