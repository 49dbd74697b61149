//! Pod start-up latency on a real cluster, per runtime, in one run: `xkube cluster up
//! --nodes 1 --runtime <process|docker>` (the docker run starts the node's own dockerd), then
//! 100 pods created one after the other (each waited for: latency) and 100 created at once
//! (burst). A pod's latency is created (the API accepted it) -> Running and Ready as seen
//! through a watch, so it includes scheduling, the sandbox, the pod network and the
//! container start.
//!
//! `sudo cargo bench -p xkube-e2e --bench pod_startup` (`XKUBE_BENCH_PODS=N` to change 100).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use xkube_client::{Api, Batch, DeleteParams, ListParams, batched, watcher};
use xkube_e2e::Cluster;

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"bench": "startup"}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [
            {"name": "c", "image": "xkube/tools:0.1.0", "command": ["sleep", "3600"]}]},
    }))
    .expect("pod")
}

fn ready(p: &Pod) -> bool {
    let st = p.status.as_ref();
    st.and_then(|s| s.phase.as_deref()) == Some("Running")
        && st
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Creates `n` pods (`burst`: all at once) and returns each one's created -> Ready latency.
async fn run(api: &Api<Pod>, prefix: &str, n: usize, burst: bool) -> Vec<Duration> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    // With XKUBE_BENCH_VERBOSE: when each pod was first seen bound to the node.
    let verbose = std::env::var_os("XKUBE_BENCH_VERBOSE").is_some();
    let bound_at: std::sync::Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let bound = bound_at.clone();
    let stream = batched(watcher(
        api.clone(),
        ListParams::default().labels("bench=startup"),
    ));
    let watch = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            let pods = match ev {
                Ok(Batch::Applied(p)) => vec![p],
                Ok(Batch::Relisted(all)) => all,
                _ => continue,
            };
            for p in pods.iter().filter(|p| ready(p)) {
                let _ = tx.send((p.metadata.name.clone().unwrap_or_default(), Instant::now()));
            }
            if verbose {
                for p in &pods {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                        bound
                            .lock()
                            .expect("bound")
                            .entry(name)
                            .or_insert_with(Instant::now);
                    }
                }
            }
        }
    });
    let mut created: HashMap<String, Instant> = HashMap::new();
    let mut running: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut recv = |running: &mut HashMap<String, Instant>| {
        assert!(Instant::now() < deadline, "pods never ran");
        if let Ok((n, at)) = rx.try_recv() {
            running.entry(n).or_insert(at);
            true
        } else {
            false
        }
    };
    for i in 0..n {
        let name = format!("{prefix}-{i}");
        let t = Instant::now();
        api.create(&pod(&name))
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
        created.insert(name.clone(), t);
        while !burst && !running.contains_key(&name) {
            if !recv(&mut running) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    while created.keys().any(|k| !running.contains_key(k)) {
        if !recv(&mut running) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    watch.abort();
    let mut lat: Vec<Duration> = created
        .iter()
        .map(|(k, t)| running[k].saturating_duration_since(*t))
        .collect();
    lat.sort();
    if std::env::var_os("XKUBE_BENCH_VERBOSE").is_some() {
        let mut each: Vec<(&String, Duration)> = created
            .iter()
            .map(|(k, t)| (k, running[k].saturating_duration_since(*t)))
            .collect();
        each.sort_by_key(|e| std::cmp::Reverse(e.1));
        println!("slowest: {:?}", &each[..each.len().min(5)]);
        let bound = bound_at.lock().expect("bound");
        let mut sched: Vec<Duration> = created
            .iter()
            .filter_map(|(k, t)| bound.get(k).map(|b| b.saturating_duration_since(*t)))
            .collect();
        sched.sort();
        if !sched.is_empty() {
            println!(
                "created -> bound: p50 {:?}, max {:?} ({} pods seen bound)",
                pct(&sched, 0.5),
                sched.last().copied().unwrap_or_default(),
                sched.len()
            );
        }
    }
    for k in created.keys() {
        api.delete(k, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete {k}: {e}"));
    }
    // Wait for the deletions to finish before the next round.
    let gone_by = Instant::now() + Duration::from_secs(300);
    loop {
        let left = api
            .list(&ListParams::default().labels("bench=startup"))
            .await
            .map(|l| l.items.len())
            .unwrap_or(usize::MAX);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < gone_by, "{left} pods not deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
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
    let mut rows = Vec::new();
    for runtime in ["process", "docker"] {
        let c = Cluster::up(1, &["--runtime", runtime]);
        let config = xkube_client::Config::load(Some(&c.kubeconfig), &Default::default())
            .expect("kubeconfig");
        let client = xkube_client::Client::new(&config).expect("client");
        let api: Api<Pod> = Api::namespaced(client, "default");
        rt.block_on(async {
            for (label, burst) in [("sequential", false), ("burst", true)] {
                let lat = run(&api, label, n, burst).await;
                rows.push(format!(
                    "| {runtime} | {label} | {n} | {:.1} | {:.1} | {:.1} |",
                    pct(&lat, 0.50).as_secs_f64() * 1e3,
                    pct(&lat, 0.99).as_secs_f64() * 1e3,
                    lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
                ));
                println!("{}", rows.last().expect("row"));
            }
        });
        drop(c);
    }
    println!("\n| runtime | pods created | pods | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
