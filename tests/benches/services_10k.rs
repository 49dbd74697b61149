//! Programming 10,000 Services with Endpoints created through the API on a 2-node cluster:
//! from the first create until both nodes' proxies have programmed every service (seen in
//! their metrics: one `xkube_proxy_service_packets_total` series per service port).
//!
//! `sudo cargo bench -p xkube-e2e --bench services_10k` (the cluster runs `$XKUBE_BIN`, or the
//! workspace's debug build; build xkube with `--release` and point `XKUBE_BIN` at it for the
//! release figure). Two runs, each on a fresh cluster: Services and Endpoints go in through
//! `kubectl create -f -` in chunks of 500, 8 kubectl processes at a time; then through the
//! API directly (xkube's Rust client, 16 requests in flight), so that the clients' own CPU
//! (kubectl spends more than the apiserver per object on this 2-core machine) does not set
//! the figure. Bounded: the wait for programming gives up after 15 minutes.

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use xkube_client::Api;
use xkube_e2e::{Cluster, http_get_here};

const SERVICES: usize = 10_000;
const CHUNK: usize = 500;
const PARALLEL: usize = 8;

/// Filler `i`: a Service and its Endpoints.
fn filler(i: usize) -> (serde_json::Value, serde_json::Value) {
    (
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("filler-{i}")},
            "spec": {"ports": [{"port": 80, "targetPort": 8080}]}
        }),
        serde_json::json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": format!("filler-{i}")},
            "subsets": [{"addresses": [{"ip": format!("10.244.200.{}", i % 250 + 1)}],
                         "ports": [{"port": 8080}]}]
        }),
    )
}

/// Creates fillers `chunk * CHUNK ..` with one `kubectl create -f -`.
fn create_chunk(c: &Cluster, chunk: usize) {
    let mut docs = Vec::with_capacity(2 * CHUNK);
    for i in chunk * CHUNK..(chunk + 1) * CHUNK {
        let (svc, ep) = filler(i);
        docs.push(svc.to_string());
        docs.push(ep.to_string());
    }
    let out = c.kubectl_stdin(&["create", "-f", "-"], Some(&docs.join("\n---\n")));
    assert!(
        out.status.success(),
        "creating filler services: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates every filler through the API, `IN_FLIGHT` requests at a time.
fn create_through_the_api(c: &Cluster) {
    const IN_FLIGHT: usize = 16;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let config =
        xkube_client::Config::load(Some(&c.kubeconfig), &Default::default()).expect("kubeconfig");
    let client = xkube_client::Client::new(&config).expect("client");
    rt.block_on(async {
        let mut workers = Vec::new();
        for w in 0..IN_FLIGHT {
            let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
            let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
            workers.push(tokio::spawn(async move {
                for i in (w..SERVICES).step_by(IN_FLIGHT) {
                    let (svc, ep) = filler(i);
                    let svc: Service = serde_json::from_value(svc).expect("service");
                    let ep: Endpoints = serde_json::from_value(ep).expect("endpoints");
                    svcs.create(&svc).await.expect("create service");
                    eps.create(&ep).await.expect("create endpoints");
                }
            }));
        }
        for w in workers {
            w.await.expect("worker");
        }
    });
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

/// One run on a fresh cluster: the creation and programming times, as a table row.
fn run(client: &str, create: impl FnOnce(&Cluster)) -> String {
    let c = Cluster::up(2, &[]);
    // The kubernetes Service and the cluster DNS (if any) are there before the fillers.
    let base = c.wait("node1's proxy to sync", Duration::from_secs(60), || {
        programmed(&c, 0)
    });
    let started = Instant::now();
    create(&c);
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
    assert!(
        done.iter().all(Option::is_some),
        "both agents programmed every service"
    );
    format!(
        "| {client} | {SERVICES} | {:.1} s | {} | {} |",
        created.as_secs_f64(),
        fmt(done[0]),
        fmt(done[1])
    )
}

fn main() {
    // PARALLEL kubectl processes, each creating every PARALLEL-th chunk (as load generators
    // do; one serial kubectl waits for every create's commit in turn).
    let kubectl = run("kubectl create -f -, 8 processes", |c| {
        std::thread::scope(|scope| {
            for w in 0..PARALLEL {
                scope.spawn(move || {
                    for chunk in (w..SERVICES / CHUNK).step_by(PARALLEL) {
                        create_chunk(c, chunk);
                    }
                });
            }
        });
    });
    let api = run(
        "the API (Rust client), 16 in flight",
        create_through_the_api,
    );
    println!(
        "| client | services + endpoints | created through the API | node1 programmed | node2 programmed |"
    );
    println!("|---|---:|---:|---:|---:|");
    println!("{kubectl}\n{api}");
}
