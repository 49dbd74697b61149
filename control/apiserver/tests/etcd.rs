//! The apiserver on the etcd backend (a real `etcd` the test starts and stops): CRUD,
//! conflicts, watch and allocation work the same as on the embedded store.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use xkube_store::testing::TestStore;

#[tokio::test]
async fn rest_and_watch_on_etcd() {
    let store = TestStore::etcd().await;
    let shared = store.store.clone();
    let api = start_with(move |b| b.store(shared)).await;
    let pods = "/api/v1/namespaces/default/pods";
    let (_, list) = api.get(pods).await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let mut w = api
        .http
        .get(api.url(&format!("{pods}?watch=1&resourceVersion={rv}")))
        .send()
        .await
        .expect("watch");
    let (code, created) = api.post(pods, &pod("e", json!({"app": "e"}))).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(api.post(pods, &pod("e", json!({}))).await.0, 409);
    let mut stale = created.clone();
    stale["metadata"]["labels"] = json!({"app": "f"});
    assert_eq!(api.put(&format!("{pods}/e"), &stale).await.0, 200);
    assert_eq!(api.put(&format!("{pods}/e"), &stale).await.0, 409);
    assert_eq!(api.delete(&format!("{pods}/e")).await.0, 200);
    let ev = read_changes(&mut w, 3, Duration::from_secs(10)).await;
    let types: Vec<&str> = ev.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, vec!["ADDED", "MODIFIED", "DELETED"]);
    let svcs = "/api/v1/namespaces/default/services";
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                     "spec": {"clusterIP": "10.96.0.77", "ports": [{"port": 80}]}});
    assert_eq!(api.post(svcs, &svc).await.0, 201);
    let mut dup = svc.clone();
    dup["metadata"]["name"] = json!("t");
    assert_eq!(api.post(svcs, &dup).await.0, 422);
    drop(w);
    api.stop().await;
    drop(store);
}
