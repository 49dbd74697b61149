//! Pod start-up latency with the process runtime: created (the API accepted the pod, already
//! bound to the node) -> Running and Ready as seen through a watch, for 100 pods created one
//! after the other (latency) and 100 created at once (burst). Needs root.
//!
//! `cargo bench -p xkube-kubelet --bench pod_startup` (`XKUBE_BENCH_PODS=N` to change 100).

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::{Cluster, condition, phase};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use xkube_client::{Batch, DeleteParams, ListParams, batched, watcher};

fn pod(name: &str) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "labels": {"bench": "startup"}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [
            {"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]},
    })
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Creates `n` pods (`burst`: all at once) and returns each one's created -> Running latency.
async fn run(c: &Cluster, prefix: &str, n: usize, burst: bool) -> Vec<Duration> {
    let api = c.pods("default");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let stream = batched(watcher(
        api.clone(),
        ListParams::default().labels("bench=startup"),
    ));
    let watch = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            let pods: Vec<Pod> = match ev {
                Ok(Batch::Applied(p)) => vec![p],
                Ok(Batch::Relisted(all)) => all,
                _ => continue,
            };
            for p in pods {
                if phase(&p) == "Running" && condition(&p, "Ready") == "True" {
                    let _ = tx.send((p.metadata.name.unwrap_or_default(), Instant::now()));
                }
            }
        }
    });
    let mut created: HashMap<String, Instant> = HashMap::new();
    let mut running: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    for i in 0..n {
        let name = format!("{prefix}-{i}");
        let t = Instant::now();
        c.create_pod(0, pod(&name)).await;
        created.insert(name.clone(), t);
        if !burst {
            while !running.contains_key(&name) {
                assert!(Instant::now() < deadline, "{name} never ran");
                if let Ok(Some((n, at))) =
                    tokio::time::timeout(Duration::from_secs(1), rx.recv()).await
                {
                    running.entry(n).or_insert(at);
                }
            }
        }
    }
    while created.keys().any(|k| !running.contains_key(k)) {
        assert!(Instant::now() < deadline, "pods never ran");
        if let Ok(Some((n, at))) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            running.entry(n).or_insert(at);
        }
    }
    watch.abort();
    let mut lat: Vec<Duration> = created
        .iter()
        .map(|(k, t)| running[k].saturating_duration_since(*t))
        .collect();
    lat.sort();
    for k in created.keys() {
        api.delete(k, &DeleteParams::default())
            .await
            .expect("delete");
    }
    for k in created.keys() {
        c.wait_gone(k).await;
    }
    lat
}

fn main() {
    let n: usize = std::env::var("XKUBE_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test --benches`) is a dry run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("pod_startup: run with `cargo bench` (needs root)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let c = Cluster::start_with(1, |o| o.max_pods = 250).await;
        for (label, burst) in [("sequential", false), ("burst", true)] {
            let t = Instant::now();
            let lat = run(&c, label, n, burst).await;
            let total = t.elapsed();
            println!(
                "pod start-up ({label}, {n} pods, process runtime): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (run incl. deletion {:.1} s)",
                pct(&lat, 0.50).as_secs_f64() * 1e3,
                pct(&lat, 0.99).as_secs_f64() * 1e3,
                lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
                total.as_secs_f64(),
            );
        }
        c.assert_clean(0).await;
    });
}
