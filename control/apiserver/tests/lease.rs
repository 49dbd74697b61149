//! `coordination.k8s.io/v1` Leases (node heartbeats in `kube-node-lease`).

mod common;

use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_leases_are_served_with_discovery_and_table() {
    let api = common::start().await;
    let (code, groups) = api.get("/apis").await;
    assert_eq!(code, 200);
    assert!(
        groups["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .any(|g| g["name"] == "coordination.k8s.io"
                && g["preferredVersion"]["groupVersion"] == "coordination.k8s.io/v1"),
        "{groups}"
    );
    let path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "n1"},
        "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40,
                 "renewTime": "2026-01-01T00:00:00.000000Z"}});
    let (code, body) = api.post(path, &lease).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["spec"]["holderIdentity"], "n1");
    let (code, body) = api
        .patch(
            &format!("{path}/n1"),
            "application/merge-patch+json",
            &json!({"spec": {"renewTime": "2026-01-01T00:00:10.000000Z"}}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["spec"]["renewTime"], "2026-01-01T00:00:10.000000Z");
    let resp = api
        .http
        .get(api.url(path))
        .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .send()
        .await
        .expect("table");
    let table: serde_json::Value = resp.json().await.expect("json");
    let names: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["Name", "Holder", "Age"]);
    assert_eq!(table["rows"][0]["cells"][1], "n1");
    api.stop().await;
}
