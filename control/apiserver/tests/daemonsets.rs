//! apps/v1 DaemonSets through HTTP: REST, status subresource, generation, validation,
//! watch, tables, cascading deletion and discovery.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const DS: &str = "/apis/apps/v1/namespaces/default/daemonsets";

fn daemon_set(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "agent", "image": "agent:1"},
                                                      {"name": "sidecar", "image": "sidecar:1"}]}}}
    })
}

#[tokio::test]
async fn daemon_set_crud_defaults_generation_and_status_subresource() {
    let api = start().await;
    let (code, created) = api.post(DS, &daemon_set("agent")).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["apiVersion"], "apps/v1");
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(
        created["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
    );
    assert_eq!(created["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(
        created["spec"]["template"]["spec"]["restartPolicy"],
        "Always"
    );
    assert_eq!(
        created["status"],
        json!({"currentNumberScheduled": 0, "numberMisscheduled": 0,
               "desiredNumberScheduled": 0, "numberReady": 0})
    );

    let (code, got) = api.get(&format!("{DS}/agent")).await;
    assert_eq!(code, 200);
    assert_eq!(got["metadata"]["uid"], created["metadata"]["uid"]);
    let (code, list) = api.get(DS).await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "DaemonSetList");
    assert_eq!(list["apiVersion"], "apps/v1");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    let (_, all) = api.get("/apis/apps/v1/daemonsets").await;
    assert_eq!(all["items"][0]["metadata"]["name"], "agent");
    let (code, missing) = api.get(&format!("{DS}/nope")).await;
    assert_eq!(code, 404);
    assert_eq!(missing["message"], "daemonsets.apps \"nope\" not found");
    let (code, dup) = api.post(DS, &daemon_set("agent")).await;
    assert_eq!(code, 409);
    assert_eq!(dup["message"], "daemonsets.apps \"agent\" already exists");

    // A template change bumps the generation; strategic merge keys containers by name.
    let (code, patched) = api
        .patch(
            &format!("{DS}/agent"),
            "application/strategic-merge-patch+json",
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "agent:2"}]}}}}),
        )
        .await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(patched["metadata"]["generation"], 2);
    let containers = &patched["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers[0]["image"], "agent:2");
    assert_eq!(containers[1]["image"], "sidecar:1");
    // Metadata changes do not.
    let (code, labelled) = api
        .patch(
            &format!("{DS}/agent"),
            "application/merge-patch+json",
            &json!({"metadata": {"labels": {"team": "infra"}}}),
        )
        .await;
    assert_eq!(code, 200, "{labelled}");
    assert_eq!(labelled["metadata"]["generation"], 2);

    // The status subresource writes only status; the main endpoint ignores status.
    let mut st = labelled.clone();
    st["status"] = json!({"currentNumberScheduled": 3, "numberMisscheduled": 0,
        "desiredNumberScheduled": 3, "numberReady": 2, "observedGeneration": 2});
    st["spec"]["minReadySeconds"] = json!(30);
    let (code, after) = api.put(&format!("{DS}/agent/status"), &st).await;
    assert_eq!(code, 200, "{after}");
    assert_eq!(after["status"]["numberReady"], 2);
    assert!(after["spec"]["minReadySeconds"].is_null(), "{after}");
    assert_eq!(after["metadata"]["generation"], 2);
    let (code, after) = api
        .patch(
            &format!("{DS}/agent/status"),
            "application/merge-patch+json",
            &json!({"status": {"numberAvailable": 2}}),
        )
        .await;
    assert_eq!(code, 200, "{after}");
    assert_eq!(after["status"]["numberAvailable"], 2);
    assert_eq!(after["status"]["numberReady"], 2);
    let mut main = after.clone();
    main["status"]["numberReady"] = json!(0);
    main["spec"]["minReadySeconds"] = json!(5);
    let (code, after) = api.put(&format!("{DS}/agent"), &main).await;
    assert_eq!(code, 200, "{after}");
    assert_eq!(after["status"]["numberReady"], 2, "status kept");
    assert_eq!(after["spec"]["minReadySeconds"], 5);
    assert_eq!(after["metadata"]["generation"], 3);

    // The selector is immutable.
    let (code, s) = api
        .patch(
            &format!("{DS}/agent"),
            "application/merge-patch+json",
            &json!({"spec": {"selector": {"matchLabels": {"app": "other"}},
                    "template": {"metadata": {"labels": {"app": "other"}}}}}),
        )
        .await;
    assert_eq!(code, 422, "{s}");
    assert_eq!(
        s["message"],
        "DaemonSet.apps \"agent\" is invalid: spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"other\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
    );

    let (code, _) = api.delete(&format!("{DS}/agent")).await;
    assert_eq!(code, 200);
    assert_eq!(api.get(&format!("{DS}/agent")).await.0, 404);
    api.stop().await;
}

#[tokio::test]
async fn daemon_set_validation_is_422_with_kubernetes_messages() {
    let api = start().await;
    let mut ds = daemon_set("agent");
    ds["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
    let (code, s) = api.post(DS, &ds).await;
    assert_eq!(code, 422, "{s}");
    assert_eq!(s["reason"], "Invalid");
    assert_eq!(s["details"]["group"], "apps");
    assert_eq!(s["details"]["kind"], "DaemonSet");
    assert_eq!(
        s["message"],
        "DaemonSet.apps \"agent\" is invalid: spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`"
    );
    assert_eq!(
        s["details"]["causes"][0]["field"],
        "spec.template.metadata.labels"
    );

    let mut ds = daemon_set("agent");
    ds["spec"].as_object_mut().map(|m| m.remove("selector"));
    let (code, s) = api.post(DS, &ds).await;
    assert_eq!(code, 422, "{s}");
    assert!(
        s["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("DaemonSet.apps \"agent\" is invalid: [spec.selector: Required value, "),
        "{s}"
    );

    let mut ds = daemon_set("agent");
    ds["spec"]["updateStrategy"] = json!({"type": "Recreate"});
    ds["spec"]["template"]["spec"]["restartPolicy"] = json!("OnFailure");
    let (code, s) = api.post(DS, &ds).await;
    assert_eq!(code, 422, "{s}");
    assert_eq!(
        s["message"],
        "DaemonSet.apps \"agent\" is invalid: [spec.template.spec.restartPolicy: Unsupported value: \"OnFailure\": supported values: \"Always\", spec.updateStrategy.type: Unsupported value: \"Recreate\": supported values: \"OnDelete\", \"RollingUpdate\"]"
    );

    // Unknown fields are decoded away with a warning, or rejected when strict.
    let mut ds = daemon_set("agent");
    ds["spec"]["bogus"] = json!(1);
    let (code, s) = api.post(&format!("{DS}?fieldValidation=Strict"), &ds).await;
    assert_eq!(code, 400, "{s}");
    assert_eq!(
        s["message"],
        "strict decoding error: unknown field \"spec.bogus\""
    );
    assert_eq!(api.get(&format!("{DS}/agent")).await.0, 404);
    api.stop().await;
}

#[tokio::test]
async fn daemon_sets_watch_and_tables() {
    let api = start().await;
    let mut w = api
        .http
        .get(api.url(&format!("{DS}?watch=1")))
        .send()
        .await
        .expect("watch");
    assert_eq!(w.status().as_u16(), 200);
    let mut ds = daemon_set("agent");
    ds["spec"]["template"]["spec"]["nodeSelector"] = json!({"disk": "ssd"});
    ds["spec"]["selector"]["matchExpressions"] =
        json!([{"key": "tier", "operator": "NotIn", "values": ["db"]}]);
    assert_eq!(api.post(DS, &ds).await.0, 201);
    api.patch(
        &format!("{DS}/agent/status"),
        "application/merge-patch+json",
        &json!({"status": {"desiredNumberScheduled": 2, "currentNumberScheduled": 2,
                           "numberReady": 1, "updatedNumberScheduled": 2, "numberAvailable": 1}}),
    )
    .await;
    api.delete(&format!("{DS}/agent")).await;
    let events = read_changes(&mut w, 3, Duration::from_secs(5)).await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["ADDED", "MODIFIED", "DELETED"]);
    assert_eq!(events[1]["object"]["kind"], "DaemonSet");
    assert_eq!(events[1]["object"]["status"]["numberReady"], 1);

    assert_eq!(api.post(DS, &ds).await.0, 201);
    api.patch(
        &format!("{DS}/agent/status"),
        "application/merge-patch+json",
        &json!({"status": {"desiredNumberScheduled": 2, "currentNumberScheduled": 2,
                           "numberReady": 1, "updatedNumberScheduled": 2, "numberAvailable": 1}}),
    )
    .await;
    let table: Value = api
        .http
        .get(api.url(DS))
        .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .send()
        .await
        .expect("table")
        .json()
        .await
        .expect("json");
    let cols: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        cols,
        [
            "Name",
            "Desired",
            "Current",
            "Ready",
            "Up-to-date",
            "Available",
            "Node Selector",
            "Age",
            "Containers",
            "Images",
            "Selector"
        ]
    );
    let cells = table["rows"][0]["cells"].as_array().expect("cells");
    assert_eq!(
        cells[..7],
        [
            json!("agent"),
            json!(2),
            json!(2),
            json!(1),
            json!(2),
            json!(1),
            json!("disk=ssd")
        ]
    );
    assert_eq!(cells[8], "agent,sidecar");
    assert_eq!(cells[9], "agent:1,sidecar:1");
    assert_eq!(cells[10], "app=agent,tier notin (db)");
    drop(w);
    api.stop().await;
}

#[tokio::test]
async fn deleting_a_daemon_set_is_background_unless_a_policy_says_otherwise() {
    let api = start().await;
    for name in ["bg", "dflt", "or"] {
        let (code, ds) = api.post(DS, &daemon_set(name)).await;
        assert_eq!(code, 201, "{ds}");
    }
    // apps/v1 defaults to Background: gone at once (the garbage collector takes the pods).
    for q in ["bg?propagationPolicy=Background", "dflt"] {
        assert_eq!(api.delete(&format!("{DS}/{q}")).await.0, 200);
    }
    assert_eq!(api.get(&format!("{DS}/bg")).await.0, 404);
    assert_eq!(api.get(&format!("{DS}/dflt")).await.0, 404);
    // Orphan waits for the collector's finalizer.
    let (code, _) = api
        .delete(&format!("{DS}/or?propagationPolicy=Orphan"))
        .await;
    assert_eq!(code, 202, "accepted: the deletion goes on after the answer");
    let (code, ds) = api.get(&format!("{DS}/or")).await;
    assert_eq!(code, 200);
    assert_eq!(ds["metadata"]["finalizers"], json!(["orphan"]));
    api.stop().await;
}

#[tokio::test]
async fn discovery_serves_the_apps_group() {
    let api = start().await;
    let (_, groups) = api.get("/apis").await;
    let apps = groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["name"] == "apps")
        .cloned()
        .unwrap_or_else(|| panic!("apps group missing: {groups}"));
    assert_eq!(
        apps["preferredVersion"],
        json!({"groupVersion": "apps/v1", "version": "v1"})
    );
    let (code, group) = api.get("/apis/apps").await;
    assert_eq!(code, 200);
    assert_eq!(group["kind"], "APIGroup");
    assert_eq!(
        group["versions"],
        json!([{"groupVersion": "apps/v1", "version": "v1"}])
    );
    assert_eq!(api.get("/apis/nonesuch").await.0, 404);

    let (code, list) = api.get("/apis/apps/v1").await;
    assert_eq!(code, 200);
    assert_eq!(list["groupVersion"], "apps/v1");
    let res = list["resources"].as_array().expect("resources");
    let ds = res
        .iter()
        .find(|r| r["name"] == "daemonsets")
        .unwrap_or_else(|| panic!("daemonsets missing: {list}"));
    assert_eq!(ds["kind"], "DaemonSet");
    assert_eq!(ds["namespaced"], true);
    assert_eq!(ds["shortNames"], json!(["ds"]));
    assert_eq!(ds["categories"], json!(["all"]));
    assert_eq!(ds["singularName"], "daemonset");
    let status = res
        .iter()
        .find(|r| r["name"] == "daemonsets/status")
        .unwrap_or_else(|| panic!("daemonsets/status missing: {list}"));
    assert_eq!(status["kind"], "DaemonSet");
    assert_eq!(status["verbs"], json!(["get", "patch", "update"]));

    let (_, index) = api.get("/openapi/v3").await;
    assert!(
        index["paths"]["apis/apps/v1"]["serverRelativeURL"].is_string(),
        "{index}"
    );
    let (code, doc) = api.get("/openapi/v3/apis/apps/v1").await;
    assert_eq!(code, 200);
    assert_eq!(
        doc["components"]["schemas"]["io.k8s.api.apps.v1.DaemonSet"]["x-kubernetes-group-version-kind"],
        json!([{"group": "apps", "version": "v1", "kind": "DaemonSet"}])
    );
    assert!(
        doc["paths"]["/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}"]["patch"].is_object(),
        "{doc}"
    );
    api.stop().await;
}
