//! Crash safety: the apiserver binary on the embedded store is SIGKILLed at random moments
//! during a bounded create loop; after every restart each acknowledged object is present and
//! resourceVersions only grow.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};
use xkube_store::testing::free_port;

/// Starts the apiserver binary on the embedded store in `dir`, serving insecurely on `port`.
fn spawn_apiserver(dir: &Path, port: u16, extra: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_xkube-apiserver"))
        .args([
            "--storage-backend",
            "embedded",
            "--bind-address",
            "127.0.0.1",
        ])
        .arg("--data-dir")
        .arg(dir)
        .args(["--secure-port", &free_port().to_string()])
        .args(["--insecure-port", &port.to_string()])
        .args(extra)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn apiserver")
}

async fn wait_healthy(client: &reqwest::Client, base: &str) {
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("apiserver did not become healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut acked: BTreeMap<String, i64> = BTreeMap::new();
    let mut max_rv = 0i64;
    let mut seq = 0u64;
    for round in 0..6 {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut child = spawn_apiserver(dir.path(), port, &["--compaction-interval-seconds", "0"]);
        wait_healthy(&client, &base).await;

        // Every acknowledged object is there, with the resourceVersion it was acknowledged at
        // (configmaps are never modified here), and the list revision did not go back.
        let list: Value = client
            .get(format!("{base}/api/v1/namespaces/default/configmaps"))
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        let list_rv: i64 = list["metadata"]["resourceVersion"]
            .as_str()
            .expect("rv")
            .parse()
            .expect("int");
        assert!(
            list_rv >= max_rv,
            "round {round}: list revision {list_rv} < acknowledged {max_rv}"
        );
        let present: BTreeMap<String, i64> = list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| {
                (
                    i["metadata"]["name"].as_str().expect("name").to_string(),
                    i["metadata"]["resourceVersion"]
                        .as_str()
                        .expect("rv")
                        .parse()
                        .expect("int"),
                )
            })
            .collect();
        for (name, rv) in &acked {
            assert_eq!(
                present.get(name),
                Some(rv),
                "round {round}: acknowledged {name} lost"
            );
        }

        // Bounded create loop, killed at a random moment.
        let kill_after = Duration::from_millis(rand::thread_rng().gen_range(50..400));
        let deadline = tokio::time::Instant::now() + kill_after;
        let mut inflight = Vec::new();
        while tokio::time::Instant::now() < deadline && seq < 5_000 {
            seq += 1;
            let name = format!("cm-{seq}");
            let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"n": seq.to_string()}});
            let c = client.clone();
            let url = format!("{base}/api/v1/namespaces/default/configmaps");
            inflight.push(tokio::spawn(async move {
                let r = c.post(url).json(&body).send().await.ok()?;
                if r.status().as_u16() != 201 {
                    return None;
                }
                let v: Value = r.json().await.ok()?;
                let rv: i64 = v["metadata"]["resourceVersion"].as_str()?.parse().ok()?;
                Some((name, rv))
            }));
            if inflight.len() >= 4 {
                let h = inflight.remove(0);
                if let Ok(Some((n, rv))) = h.await {
                    assert!(
                        rv > max_rv || acked.values().all(|r| *r != rv),
                        "duplicate revision {rv}"
                    );
                    max_rv = max_rv.max(rv);
                    acked.insert(n, rv);
                }
            }
        }
        child.start_kill().expect("SIGKILL");
        let _ = child.wait().await;
        for h in inflight {
            if let Ok(Some((n, rv))) = h.await {
                max_rv = max_rv.max(rv);
                acked.insert(n, rv);
            }
        }
    }
    assert!(!acked.is_empty(), "no write was acknowledged");
    eprintln!("{} creates acknowledged across 6 SIGKILLs", acked.len());

    // A final start: a new write gets a larger resourceVersion than any acknowledged one.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_apiserver(dir.path(), port, &[]);
    wait_healthy(&client, &base).await;
    let r: Value = client
        .post(format!("{base}/api/v1/namespaces/default/configmaps"))
        .json(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "last"}}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let rv: i64 = r["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("int");
    assert!(rv > max_rv, "new revision {rv} <= acknowledged {max_rv}");
    child.start_kill().expect("kill");
    let _ = child.wait().await;
}
