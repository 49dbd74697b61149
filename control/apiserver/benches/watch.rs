//! Watch fan-out inside the apiserver: one write of a Pod (4.3 KB of JSON) to the store,
//! until each of 1,000 watchers served from the watch cache has its line of the stream (the
//! work between the store's event and the HTTP connections: decoding once, filtering and
//! encoding per watcher, queueing).
//!
//! `cargo bench -p xkube-apiserver --bench watch`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use xkube_api::{FieldSelector, LabelSelector};
use xkube_apiserver::watch::{Request, serve};
use xkube_apiserver::watchcache::WatchCache;
use xkube_store::{MemoryStore, Store};

const WATCHERS: u64 = 1_000;

/// A Pod as a kubelet reports it: two containers, env, mounts, probes, status.
fn pod(generation: u64) -> Value {
    let container = |name: &str| {
        json!({"name": name, "image": format!("registry.local/team/{name}:1.27.3"),
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
            "env": (0..8).map(|i| json!({"name": format!("SETTING_{i}"), "value": format!("value-{i}-{generation}")})).collect::<Vec<_>>(),
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}, {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"})
    };
    let status = |name: &str| {
        json!({"name": name, "ready": true, "restartCount": 0, "started": true,
            "image": format!("registry.local/team/{name}:1.27.3"), "imageID": format!("docker://sha256:{:064x}", generation),
            "containerID": format!("docker://{:064x}", generation + 1),
            "state": {"running": {"startedAt": "2026-12-05T18:00:00Z"}}, "lastState": {}})
    };
    let conditions: Vec<Value> = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]
        .iter()
        .map(|t| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-12-05T18:00:01Z"}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "bench", "uid": "6f1c1a2e-3a4b-4c5d-8e9f-001122334455",
            "labels": {"app": "web", "tier": "frontend", "generation": generation.to_string()},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-12-05T17:00:00Z"},
            "creationTimestamp": "2026-12-05T18:00:00Z"},
        "spec": {"containers": [container("web"), container("sidecar")], "nodeName": "node1",
            "volumes": [{"name": "config", "configMap": {"name": "web-config"}},
                {"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "schedulerName": "default-scheduler", "priority": 0,
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]},
        "status": {"phase": "Running", "hostIP": "198.18.0.11", "podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}],
            "qosClass": "Burstable", "startTime": "2026-12-05T18:00:00Z",
            "conditions": conditions,
            "containerStatuses": [status("web"), status("sidecar")]}})
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pods = xkube_api::resources::find("", "v1", "pods").expect("pods");
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let cancel = CancellationToken::new();
    let key = pods.key(Some("bench"), "web-0");
    let (cache, received, notify, mut rev) = rt.block_on(async {
        let kv = store
            .create(&key, serde_json::to_vec(&pod(0)).expect("json"))
            .await
            .expect("create");
        let cache = WatchCache::new(pods, 1024);
        tokio::spawn(
            cache
                .clone()
                .run(store.clone(), Duration::from_secs(60), cancel.clone()),
        );
        while !cache.is_ready() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let received = Arc::new(AtomicU64::new(0));
        let notify = Arc::new(Notify::new());
        for _ in 0..WATCHERS {
            let req = Request {
                namespace: Some("bench".into()),
                labels: LabelSelector::default(),
                fields: FieldSelector::default(),
                from: Some(kv.mod_revision),
                send_initial: false,
                bookmarks: false,
                timeout: Duration::from_secs(3600),
                table: None,
            };
            let mut rx = serve(&cache, req, cancel.clone());
            let (received, notify) = (received.clone(), notify.clone());
            tokio::spawn(async move {
                while let Some(line) = rx.recv().await {
                    assert!(line.ends_with(b"\n"), "one event per line");
                    if received.fetch_add(1, Ordering::AcqRel) % WATCHERS == WATCHERS - 1 {
                        notify.notify_one();
                    }
                }
            });
        }
        (cache, received, notify, kv.mod_revision)
    });
    let mut g = c.benchmark_group("watch");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    let mut generation = 0u64;
    g.bench_function(format!("fanout-{WATCHERS}-pod"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    generation += 1;
                    let body = serde_json::to_vec(&pod(generation)).expect("json");
                    let want = received.load(Ordering::Acquire) + WATCHERS;
                    let start = Instant::now();
                    let notified = notify.notified();
                    rev = store
                        .update(&key, body, rev)
                        .await
                        .expect("update")
                        .mod_revision;
                    tokio::time::timeout(Duration::from_secs(10), notified)
                        .await
                        .expect("every watcher gets the event within 10 s");
                    spent += start.elapsed();
                    assert_eq!(received.load(Ordering::Acquire), want);
                }
                spent
            })
        })
    });
    g.finish();
    cancel.cancel();
    drop(cache);
}

criterion_group!(benches, bench);
criterion_main!(benches);
