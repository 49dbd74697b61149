//! Throughput of the apiserver's HTTP API on the embedded store (and etcd when the `etcd`
//! binary is installed): create, get, list of a namespace of 100, and watch fan-out: one write
//! delivered to 100 watchers.
//!
//! `cargo bench -p xkube-apiserver --bench apiserver`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use xkube_apiserver::testing::TestServer;
use xkube_store::testing::TestStore;

const WATCHERS: u64 = 100;

struct Target {
    name: &'static str,
    base: String,
    client: reqwest::Client,
    received: Arc<AtomicU64>,
    _server: xkube_apiserver::RunningServer,
    _store: TestStore,
    _dir: tempfile::TempDir,
}

async fn target(name: &'static str, store: TestStore) -> Target {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::builder(dir.path())
        .store(store.store.clone())
        .start()
        .await
        .expect("apiserver");
    let base = server.http_url().expect("url");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}});
    client
        .post(format!("{base}/api/v1/namespaces"))
        .json(&ns)
        .send()
        .await
        .expect("ns");
    for i in 0..100 {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("l{i}")}, "data": {"k": "v"}});
        client
            .post(format!("{base}/api/v1/namespaces/bench/configmaps"))
            .json(&cm)
            .send()
            .await
            .expect("seed");
    }
    let received = Arc::new(AtomicU64::new(0));
    let list = client
        .get(format!("{base}/api/v1/namespaces/default/secrets"))
        .send()
        .await
        .expect("list");
    let v: serde_json::Value = list.json().await.expect("json");
    let rv = v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    for _ in 0..WATCHERS {
        let mut resp = client
            .get(format!(
                "{base}/api/v1/namespaces/default/secrets?watch=1&resourceVersion={rv}"
            ))
            .send()
            .await
            .expect("watch");
        let received = received.clone();
        tokio::spawn(async move {
            while let Ok(Some(chunk)) = resp.chunk().await {
                let n = chunk.iter().filter(|b| **b == b'\n').count() as u64;
                received.fetch_add(n, Ordering::Relaxed);
            }
        });
    }
    Target {
        name,
        base,
        client,
        received,
        _server: server,
        _store: store,
        _dir: dir,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut targets =
        vec![rt.block_on(async { target("embedded", TestStore::embedded().await).await })];
    if std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok()
    {
        targets.push(rt.block_on(async { target("etcd", TestStore::etcd().await).await }));
    }
    let mut g = c.benchmark_group("apiserver");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut seq = 0u64;
    for t in &targets {
        g.bench_function(format!("{}/create", t.name), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        seq += 1;
                        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{seq}")}});
                        let r = t.client.post(format!("{}/api/v1/namespaces/default/configmaps", t.base)).json(&cm).send().await.expect("create");
                        assert_eq!(r.status().as_u16(), 201);
                    }
                    start.elapsed()
                })
            })
        });
        g.bench_function(format!("{}/get", t.name), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let r = t
                            .client
                            .get(format!("{}/api/v1/namespaces/bench/configmaps/l1", t.base))
                            .send()
                            .await
                            .expect("get");
                        r.bytes().await.expect("body");
                    }
                    start.elapsed()
                })
            })
        });
        g.bench_function(format!("{}/list-100", t.name), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let r = t
                            .client
                            .get(format!(
                                "{}/api/v1/namespaces/bench/configmaps?labelSelector=",
                                t.base
                            ))
                            .send()
                            .await
                            .expect("list");
                        r.bytes().await.expect("body");
                    }
                    start.elapsed()
                })
            })
        });
        g.bench_function(format!("{}/watch-fanout-{WATCHERS}", t.name), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        seq += 1;
                        let before = t.received.load(Ordering::Relaxed);
                        let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("s{seq}")}});
                        t.client.post(format!("{}/api/v1/namespaces/default/secrets", t.base)).json(&s).send().await.expect("create");
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while t.received.load(Ordering::Relaxed) < before + WATCHERS && Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_micros(200)).await;
                        }
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
    drop(targets);
}

criterion_group!(benches, bench);
criterion_main!(benches);
