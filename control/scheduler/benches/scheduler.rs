//! Scheduler benchmarks against an in-process apiserver with 100 fake (status-only) nodes:
//!
//! - `schedule_1000_pods_on_100_nodes`: 1,000 pending pods exist, the scheduler starts, and
//!   the time until all are bound is measured (criterion reports pods/s as elements/s);
//! - `rc_create_to_all_bound/<n>`: with the controller-manager's replication controller and
//!   the scheduler running, the time from creating an RC of n replicas until all its pods
//!   are bound.
//!
//! Run: `cargo bench -p xkube-scheduler --bench scheduler`.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ReplicationController};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use xkube_apiserver::RunningServer;
use xkube_apiserver::testing::TestServer;
use xkube_client::{
    Api, Client, Config, DeleteParams, ListParams, Object, Patch, Reflector, Store,
};

const NODES: usize = 100;
const PODS: usize = 1000;

struct Env {
    _dir: tempfile::TempDir,
    _server: RunningServer,
    client: Client,
    url: String,
    pods: Store<Pod>,
    _stop: CancellationToken,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::builder(dir.path())
        .memory()
        .start()
        .await
        .expect("apiserver");
    let url = server.http_url().expect("url");
    let client = Client::new(&Config::new(url.clone())).expect("client");
    let nodes: Api<Node> = Api::all(client.clone());
    let now = xkube_api::meta::format_time(jiff::Timestamp::now());
    for i in 0..NODES {
        let name = format!("node-{i:03}");
        let status = json!({
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": now}]
        });
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": status,
        }))
        .expect("node");
        nodes.create(&node).await.expect("node created");
        nodes
            .patch_status(&name, &Patch::Merge(json!({"status": status})))
            .await
            .expect("node status");
    }
    let stop = CancellationToken::new();
    let r = Reflector::new(Api::<Pod>::all(client.clone()), ListParams::default());
    let pods = r.store();
    tokio::spawn(r.run(stop.clone()));
    pods.wait_ready().await;
    Env {
        _dir: dir,
        _server: server,
        client,
        url,
        pods,
        _stop: stop,
    }
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "c", "image": "pause",
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}
    }))
    .expect("pod")
}

async fn namespace(c: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .expect("ns");
    Api::<Namespace>::all(c.clone())
        .create(&ns)
        .await
        .expect("namespace");
}

async fn drop_namespace(e: &Env, name: &str) {
    Api::<Namespace>::all(e.client.clone())
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete namespace");
    while !e.pods.filter(|p| p.namespace() == name).is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_bound(e: &Env, ns: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let bound = e
            .pods
            .filter(|p| {
                p.namespace() == ns && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
            })
            .len();
        if bound >= n {
            return;
        }
        assert!(Instant::now() < deadline, "only {bound}/{n} pods bound");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let e = rt.block_on(env());
    let mut iteration = 0usize;

    let mut g = c.benchmark_group("scheduler");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(30));
    g.throughput(Throughput::Elements(PODS as u64));
    g.bench_function("schedule_1000_pods_on_100_nodes", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    iteration += 1;
                    let ns = format!("bench-{iteration}");
                    namespace(&e.client, &ns).await;
                    let api: Api<Pod> = Api::namespaced(e.client.clone(), &ns);
                    futures::stream::iter(0..PODS)
                        .for_each_concurrent(32, |i| {
                            let api = api.clone();
                            async move {
                                api.create(&pod(&format!("p-{i:04}")))
                                    .await
                                    .expect("pod created");
                            }
                        })
                        .await;
                    while e.pods.filter(|p| p.namespace() == ns).len() < PODS {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let stop = CancellationToken::new();
                    let client =
                        xkube_client::Client::from_flags(None, Some(&e.url)).expect("client");
                    let start = Instant::now();
                    let s = stop.clone();
                    let task = tokio::spawn(async move {
                        xkube_scheduler::run(xkube_scheduler::Options::default(), client, s).await
                    });
                    wait_bound(&e, &ns, PODS).await;
                    total += start.elapsed();
                    stop.cancel();
                    let _ = task.await;
                    drop_namespace(&e, &ns).await;
                }
                total
            })
        })
    });
    g.finish();

    // RC create -> all bound, with the replication controller and the scheduler running.
    let stop = CancellationToken::new();
    {
        let cm = xkube_controllers::Options {
            controllers: vec!["replication".into()],
            ..xkube_controllers::Options::default()
        };
        let client = xkube_client::Client::from_flags(None, Some(&e.url)).expect("client");
        let s = stop.clone();
        rt.spawn(async move { xkube_controllers::run(cm, client, s).await });
        let client = xkube_client::Client::from_flags(None, Some(&e.url)).expect("client");
        let s = stop.clone();
        rt.spawn(async move {
            xkube_scheduler::run(xkube_scheduler::Options::default(), client, s).await
        });
    }
    let mut g = c.benchmark_group("rc_create_to_all_bound");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(20));
    for n in [10usize, 100] {
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        iteration += 1;
                        let ns = format!("rc-{iteration}");
                        namespace(&e.client, &ns).await;
                        let rc: ReplicationController = serde_json::from_value(json!({
                            "apiVersion": "v1", "kind": "ReplicationController",
                            "metadata": {"name": "web"},
                            "spec": {"replicas": n, "selector": {"app": "web"},
                                     "template": {"metadata": {"labels": {"app": "web"}},
                                                  "spec": {"containers": [{"name": "c", "image": "pause",
                                                           "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}
                        }))
                        .expect("rc");
                        let start = Instant::now();
                        Api::<ReplicationController>::namespaced(e.client.clone(), &ns)
                            .create(&rc)
                            .await
                            .expect("rc created");
                        wait_bound(&e, &ns, n).await;
                        total += start.elapsed();
                        drop_namespace(&e, &ns).await;
                    }
                    total
                })
            })
        });
    }
    g.finish();
    stop.cancel();
}

criterion_group!(benches, bench);
criterion_main!(benches);
