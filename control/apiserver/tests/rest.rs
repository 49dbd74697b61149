//! REST semantics through HTTP against an in-process apiserver on the embedded store.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn crud_conflicts_and_not_found_use_kubernetes_statuses() {
    let api = start().await;
    let (code, created) = api
        .post(
            "/api/v1/namespaces/default/pods",
            &pod("web", json!({"app": "web"})),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    assert!(!created["metadata"]["uid"].as_str().unwrap_or("").is_empty());
    assert!(created["metadata"]["creationTimestamp"].is_string());
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(created["spec"]["restartPolicy"], "Always");
    assert_eq!(created["status"]["phase"], "Pending");
    let rv: i64 = created["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("number");

    let (code, again) = api
        .post("/api/v1/namespaces/default/pods", &pod("web", json!({})))
        .await;
    assert_eq!(code, 409);
    assert_eq!(again["reason"], "AlreadyExists");
    assert_eq!(again["message"], "pods \"web\" already exists");

    let (code, missing) = api.get("/api/v1/namespaces/default/pods/nope").await;
    assert_eq!(code, 404);
    assert_eq!(missing["message"], "pods \"nope\" not found");
    assert_eq!(missing["kind"], "Status");

    // Update with the current resourceVersion works and bumps it; a stale one is a conflict.
    let mut upd = created.clone();
    upd["spec"]["containers"][0]["image"] = json!("nginx:2");
    let (code, updated) = api.put("/api/v1/namespaces/default/pods/web", &upd).await;
    assert_eq!(code, 200, "{updated}");
    let rv2: i64 = updated["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("number");
    assert!(rv2 > rv);
    assert_eq!(updated["metadata"]["generation"], 2);
    let (code, conflict) = api.put("/api/v1/namespaces/default/pods/web", &upd).await;
    assert_eq!(code, 409);
    assert_eq!(conflict["reason"], "Conflict");
    assert!(
        conflict["message"]
            .as_str()
            .expect("msg")
            .contains("the object has been modified")
    );

    // Status subresource changes only status; the main endpoint ignores status.
    let mut st = updated.clone();
    st["status"]["phase"] = json!("Running");
    st["spec"]["nodeName"] = json!("ignored");
    let (code, after) = api
        .put("/api/v1/namespaces/default/pods/web/status", &st)
        .await;
    assert_eq!(code, 200, "{after}");
    assert_eq!(after["status"]["phase"], "Running");
    assert!(after["spec"]["nodeName"].is_null());

    let (code, _) = api.delete("/api/v1/namespaces/default/pods/web").await;
    assert_eq!(code, 200);
    let (code, _) = api.get("/api/v1/namespaces/default/pods/web").await;
    assert_eq!(code, 404);
    api.stop().await;
}

#[tokio::test]
async fn validation_errors_are_422_with_causes() {
    let api = start().await;
    let (code, s) = api
        .post(
            "/api/v1/namespaces/default/services",
            &service("x", json!({"ports": [{"port": 0}]})),
        )
        .await;
    assert_eq!(code, 422, "{s}");
    assert_eq!(s["reason"], "Invalid");
    assert_eq!(
        s["message"],
        "Service \"x\" is invalid: spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
    );
    assert_eq!(s["details"]["causes"][0]["field"], "spec.ports[0].port");

    let (code, s) = api
        .post(
            "/api/v1/namespaces/default/pods",
            &pod("Bad_Name", json!({})),
        )
        .await;
    assert_eq!(code, 422);
    assert!(s["message"].as_str().expect("msg").starts_with("Pod \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"));

    let rc = json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "r"},
        "spec": {"selector": {"app": "a"}, "template": {"metadata": {"labels": {"app": "b"}},
                 "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    let (code, s) = api
        .post("/api/v1/namespaces/default/replicationcontrollers", &rc)
        .await;
    assert_eq!(code, 422);
    assert!(
        s["message"]
            .as_str()
            .expect("msg")
            .contains("`selector` does not match template `labels`")
    );
    api.stop().await;
}

#[tokio::test]
async fn bad_input_gets_4xx_and_the_server_keeps_serving() {
    let api = start().await;
    let (code, s) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/namespaces/default/pods",
            "application/json",
            Some("{not json".into()),
        )
        .await;
    assert_eq!(code, 400, "{s}");
    let (code, _) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/namespaces/default/pods",
            "application/yaml",
            Some("a: [".into()),
        )
        .await;
    assert_eq!(code, 400);
    let (code, s) = api
        .post(
            "/api/v1/namespaces/default/pods",
            &json!({"apiVersion": "v1", "kind": "Widget", "metadata": {"name": "w"}}),
        )
        .await;
    assert_eq!(code, 400);
    assert!(
        s["message"]
            .as_str()
            .expect("msg")
            .contains("no kind \"Widget\"")
    );
    let (code, _) = api.get("/api/v1/namespaces/default/widgets").await;
    assert_eq!(code, 404);
    let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"},
                     "data": {"x": "a".repeat(4 * 1024 * 1024)}});
    let (code, s) = api
        .post("/api/v1/namespaces/default/configmaps", &big)
        .await;
    assert_eq!(code, 413, "{s}");
    assert_eq!(s["reason"], "RequestEntityTooLarge");
    let (code, _) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/namespaces/default/pods",
            "text/plain",
            Some("x".into()),
        )
        .await;
    assert_eq!(code, 415);
    let (code, s) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/namespaces/default/pods?fieldValidation=Strict",
            "application/json",
            Some(
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                          "spec": {"containers": [{"name": "c", "image": "i", "bogus": 1}]}})
                .to_string(),
            ),
        )
        .await;
    assert_eq!(code, 400);
    assert_eq!(
        s["message"],
        "strict decoding error: unknown field \"spec.containers[0].bogus\""
    );
    // YAML bodies work.
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fromyaml\ndata:\n  k: v\n";
    let (code, cm) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/namespaces/default/configmaps",
            "application/yaml",
            Some(yaml.into()),
        )
        .await;
    assert_eq!(code, 201, "{cm}");
    assert_eq!(api.get("/healthz").await.0, 200);
    api.stop().await;
}

#[tokio::test]
async fn selectors_generate_name_and_tables() {
    let api = start().await;
    for (n, app, tier) in [("a", "web", "fe"), ("b", "web", "be"), ("c", "db", "be")] {
        let (code, _) = api
            .post(
                "/api/v1/namespaces/default/pods",
                &pod(n, json!({"app": app, "tier": tier})),
            )
            .await;
        assert_eq!(code, 201);
    }
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["metadata"]["name"].as_str().expect("name").to_string())
            .collect()
    };
    let (_, l) = api
        .get("/api/v1/namespaces/default/pods?labelSelector=app%3Dweb")
        .await;
    assert_eq!(names(&l), vec!["a", "b"]);
    let (_, l) = api
        .get("/api/v1/namespaces/default/pods?labelSelector=tier%20in%20(be),app!%3Dweb")
        .await;
    assert_eq!(names(&l), vec!["c"]);
    let (_, l) = api
        .get("/api/v1/pods?fieldSelector=metadata.name%3Db")
        .await;
    assert_eq!(names(&l), vec!["b"]);
    let (_, l) = api
        .get(
            "/api/v1/namespaces/default/pods?fieldSelector=status.phase%3DPending,spec.nodeName%3D",
        )
        .await;
    assert_eq!(names(&l).len(), 3);
    let (code, s) = api.get("/api/v1/pods?fieldSelector=spec.bogus%3D1").await;
    assert_eq!(code, 400);
    assert_eq!(s["message"], "field label not supported: spec.bogus");

    let gen_pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "gen-"},
                         "spec": {"containers": [{"name": "c", "image": "i"}]}});
    let (code, g) = api.post("/api/v1/namespaces/default/pods", &gen_pod).await;
    assert_eq!(code, 201);
    let name = g["metadata"]["name"].as_str().expect("name");
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

    let resp = api
        .http
        .get(api.url("/api/v1/namespaces/default/pods"))
        .header(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .send()
        .await
        .expect("table");
    let t: Value = resp.json().await.expect("json");
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .expect("cols")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(&cols[..5], &["Name", "Ready", "Status", "Restarts", "Age"]);
    assert_eq!(t["rows"].as_array().expect("rows").len(), 4);
    assert_eq!(t["rows"][0]["cells"][1], "0/1");
    api.stop().await;
}

#[tokio::test]
async fn patches_merge_json_and_strategic() {
    let api = start().await;
    let mut p = pod("p", json!({"app": "x"}));
    p["spec"]["containers"] =
        json!([{"name": "a", "image": "nginx:1"}, {"name": "b", "image": "busybox"}]);
    assert_eq!(api.post("/api/v1/namespaces/default/pods", &p).await.0, 201);
    let (code, v) = api
        .patch(
            "/api/v1/namespaces/default/pods/p",
            "application/merge-patch+json",
            &json!({"metadata": {"labels": {"new": "1"}}}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["metadata"]["labels"], json!({"app": "x", "new": "1"}));
    let (code, v) = api
        .patch(
            "/api/v1/namespaces/default/pods/p",
            "application/strategic-merge-patch+json",
            &json!({"spec": {"containers": [{"name": "b", "image": "busybox:2"}]}}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["spec"]["containers"][0]["image"], "nginx:1");
    assert_eq!(v["spec"]["containers"][1]["image"], "busybox:2");
    let (code, v) = api
        .patch(
            "/api/v1/namespaces/default/pods/p",
            "application/json-patch+json",
            &json!([{"op": "remove", "path": "/metadata/labels/new"}]),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["metadata"]["labels"], json!({"app": "x"}));
    let (code, _) = api
        .patch(
            "/api/v1/namespaces/default/pods/p",
            "application/merge-patch+json",
            &json!({"metadata": {"resourceVersion": "1"}, "spec": {"activeDeadlineSeconds": 5}}),
        )
        .await;
    assert_eq!(code, 409);
    let (code, _) = api
        .patch(
            "/api/v1/namespaces/default/pods/p",
            "text/plain",
            &json!({}),
        )
        .await;
    assert_eq!(code, 415);

    // Scale subresource of a ReplicationController.
    let rc = json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "r"},
        "spec": {"template": {"metadata": {"labels": {"app": "r"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    let (code, created) = api
        .post("/api/v1/namespaces/default/replicationcontrollers", &rc)
        .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["spec"]["replicas"], 1);
    assert_eq!(created["spec"]["selector"], json!({"app": "r"}));
    let (code, s) = api
        .patch(
            "/api/v1/namespaces/default/replicationcontrollers/r/scale",
            "application/merge-patch+json",
            &json!({"spec": {"replicas": 3}}),
        )
        .await;
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["kind"], "Scale");
    let (_, rc) = api
        .get("/api/v1/namespaces/default/replicationcontrollers/r")
        .await;
    assert_eq!(rc["spec"]["replicas"], 3);
    assert_eq!(rc["metadata"]["generation"], 2);
    api.stop().await;
}

#[tokio::test]
async fn cluster_ip_and_node_port_allocation() {
    let api = start().await;
    let svcs = "/api/v1/namespaces/default/services";
    let (code, s) = api
        .post(
            svcs,
            &service(
                "a",
                json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]}),
            ),
        )
        .await;
    assert_eq!(code, 201, "{s}");
    assert_eq!(s["spec"]["clusterIP"], "10.96.0.50");
    let (code, s) = api
        .post(
            svcs,
            &service(
                "b",
                json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]}),
            ),
        )
        .await;
    assert_eq!(code, 422);
    assert_eq!(
        s["message"],
        "Service \"b\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.96.0.50\"}: failed to allocate IP 10.96.0.50: provided IP is already allocated"
    );
    let (code, s) = api
        .post(
            svcs,
            &service(
                "c",
                json!({"clusterIP": "192.168.0.1", "ports": [{"port": 80}]}),
            ),
        )
        .await;
    assert_eq!(code, 422);
    assert!(s["message"].as_str().expect("msg").contains("the provided IP (192.168.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/12"));
    // Freed on delete.
    assert_eq!(api.delete(&format!("{svcs}/a")).await.0, 200);
    let (code, _) = api
        .post(
            svcs,
            &service(
                "b",
                json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]}),
            ),
        )
        .await;
    assert_eq!(code, 201);

    let (code, np) = api
        .post(
            svcs,
            &service("np", json!({"type": "NodePort", "ports": [{"port": 80}]})),
        )
        .await;
    assert_eq!(code, 201);
    let port = np["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .expect("nodePort");
    assert!((30000..=32767).contains(&port));
    let (code, s) = api
        .post(
            svcs,
            &service(
                "np2",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}),
            ),
        )
        .await;
    assert_eq!(code, 422);
    assert!(
        s["message"]
            .as_str()
            .expect("msg")
            .ends_with("provided port is already allocated"),
        "{s}"
    );
    let (code, s) = api
        .post(
            svcs,
            &service(
                "np3",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}),
            ),
        )
        .await;
    assert_eq!(code, 422);
    assert_eq!(
        s["message"],
        "Service \"np3\" is invalid: spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767"
    );
    let (code, _) = api
        .post(
            svcs,
            &service(
                "lb",
                json!({"type": "LoadBalancer", "ports": [{"port": 81, "nodePort": 30100}]}),
            ),
        )
        .await;
    assert_eq!(code, 201);

    // The built-in kubernetes Service holds the first IP of the range.
    let (_, k) = api
        .get("/api/v1/namespaces/default/services/kubernetes")
        .await;
    assert_eq!(k["spec"]["clusterIP"], "10.96.0.1");
    assert_eq!(k["spec"]["ports"][0]["port"], 443);
    let (code, ep) = api
        .get("/api/v1/namespaces/default/endpoints/kubernetes")
        .await;
    assert_eq!(code, 200);
    assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "127.0.0.1");

    // Allocations survive a restart on the same data dir.
    let dir = api.stop().await;
    let server = xkube_apiserver::testing::TestServer::builder(dir.path())
        .start()
        .await
        .expect("restarts");
    let api2 = Api {
        base: server.http_url().expect("url"),
        server,
        http: reqwest::Client::new(),
        dir,
    };
    let (code, s) = api2
        .post(
            svcs,
            &service(
                "d",
                json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]}),
            ),
        )
        .await;
    assert_eq!(code, 422, "{s}");
    let (code, _) = api2
        .post(
            svcs,
            &service(
                "np4",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30100}]}),
            ),
        )
        .await;
    assert_eq!(code, 422);
    let (_, k) = api2.get(&format!("{svcs}/kubernetes")).await;
    let port = api2.server.insecure_addr.expect("addr").port();
    assert_eq!(
        k["spec"]["ports"][0]["targetPort"], port,
        "kubernetes targetPort follows the port"
    );
    let (_, l) = api2.get(svcs).await;
    assert_eq!(l["items"].as_array().expect("items").len(), 4);
    api2.stop().await;
}

#[tokio::test]
async fn watch_streams_events_resumes_and_expires() {
    let api = start_with(|b| b.options(|o| o.watch_cache_size = 5)).await;
    let pods = "/api/v1/namespaces/default/pods";
    let (_, list) = api.get(pods).await;
    let rv0 = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let mut w = api
        .http
        .get(api.url(&format!(
            "{pods}?watch=1&resourceVersion={rv0}&allowWatchBookmarks=true"
        )))
        .send()
        .await
        .expect("watch");
    assert_eq!(w.status().as_u16(), 200);
    let (_, created) = api.post(pods, &pod("w", json!({"a": "1"}))).await;
    let (_, patched) = api
        .patch(
            &format!("{pods}/w"),
            "application/merge-patch+json",
            &json!({"metadata": {"labels": {"a": "2"}}}),
        )
        .await;
    api.delete(&format!("{pods}/w")).await;
    let events = read_changes(&mut w, 3, Duration::from_secs(5)).await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, vec!["ADDED", "MODIFIED", "DELETED"]);
    assert_eq!(
        events[0]["object"]["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
    // A bookmark arrives within the (1 s) bookmark interval.
    let more = read_events(&mut w, 1, Duration::from_secs(4)).await;
    assert_eq!(
        more.first().map(|e| e["type"].clone()),
        Some(json!("BOOKMARK"))
    );

    // Resume from the MODIFIED revision: only the DELETED follows.
    let rv_mod = patched["metadata"]["resourceVersion"].as_str().expect("rv");
    let mut w2 = api
        .http
        .get(api.url(&format!("{pods}?watch=1&resourceVersion={rv_mod}")))
        .send()
        .await
        .expect("watch");
    let ev = read_events(&mut w2, 1, Duration::from_secs(5)).await;
    assert_eq!(ev[0]["type"], "DELETED");

    // Selectors: a watcher of a=1 sees the object leave its selection as DELETED.
    let mut w3 = api
        .http
        .get(api.url(&format!("{pods}?watch=1&labelSelector=a%3D1")))
        .send()
        .await
        .expect("watch");
    api.post(pods, &pod("s", json!({"a": "1"}))).await;
    api.patch(
        &format!("{pods}/s"),
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"a": "3"}}}),
    )
    .await;
    let ev = read_events(&mut w3, 2, Duration::from_secs(5)).await;
    let types: Vec<&str> = ev.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, vec!["ADDED", "DELETED"]);

    // More writes than the 5-event window: the first revision is gone -> ERROR 410.
    for i in 0..8 {
        api.post(pods, &pod(&format!("x{i}"), json!({}))).await;
    }
    let mut old = api
        .http
        .get(api.url(&format!("{pods}?watch=1&resourceVersion={rv0}")))
        .send()
        .await
        .expect("watch");
    let ev = read_events(&mut old, 1, Duration::from_secs(5)).await;
    assert_eq!(ev[0]["type"], "ERROR");
    assert_eq!(ev[0]["object"]["code"], 410);
    assert_eq!(ev[0]["object"]["reason"], "Expired");
    assert!(
        ev[0]["object"]["message"]
            .as_str()
            .expect("msg")
            .starts_with("too old resource version")
    );

    // Without a resourceVersion: synthetic ADDED for the current state.
    let mut fresh = api
        .http
        .get(api.url(&format!("{pods}?watch=true")))
        .send()
        .await
        .expect("watch");
    let ev = read_events(&mut fresh, 9, Duration::from_secs(5)).await;
    assert_eq!(ev.len(), 9);
    assert!(ev.iter().all(|e| e["type"] == "ADDED"));
    drop((w, w2, w3, old, fresh));
    api.stop().await;
}

#[tokio::test]
async fn many_watchers_share_one_cache() {
    let api = start().await;
    let pods = "/api/v1/namespaces/default/pods";
    let mut watchers = Vec::new();
    for _ in 0..50 {
        watchers.push(
            api.http
                .get(api.url(&format!("{pods}?watch=1")))
                .send()
                .await
                .expect("watch"),
        );
    }
    for i in 0..5 {
        api.post(pods, &pod(&format!("f{i}"), json!({}))).await;
    }
    for w in watchers.iter_mut() {
        let ev = read_events(w, 5, Duration::from_secs(10)).await;
        assert_eq!(ev.len(), 5);
    }
    api.stop().await;
}

#[tokio::test]
async fn delete_propagation_marks_owners_for_the_garbage_collector() {
    let api = start().await;
    let rcs = "/api/v1/namespaces/default/replicationcontrollers";
    let pods = "/api/v1/namespaces/default/pods";
    let rc = |name: &str| {
        json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": name},
        "spec": {"replicas": 1, "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    };
    for name in ["bg", "or", "fg", "dflt"] {
        let (_, r) = api.post(rcs, &rc(name)).await;
        let uid = r["metadata"]["uid"].clone();
        let mut p = pod(&format!("{name}-pod"), json!({"app": name}));
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "ReplicationController",
            "name": name, "uid": uid, "controller": true}]);
        assert_eq!(api.post(pods, &p).await.0, 201);
    }
    // Background: the owner goes now; its pod is the garbage collector's (not running here).
    let (code, _) = api
        .delete(&format!("{rcs}/bg?propagationPolicy=Background"))
        .await;
    assert_eq!(code, 200);
    assert_eq!(api.get(&format!("{rcs}/bg")).await.0, 404);
    assert_eq!(api.get(&format!("{pods}/bg-pod")).await.0, 200);
    // Orphan, Foreground, and an RC's default (Orphan): marked with the collector's
    // finalizer; the object stays until the finalizer is removed.
    for (name, query, finalizer) in [
        ("or", "?propagationPolicy=Orphan", "orphan"),
        ("fg", "?propagationPolicy=Foreground", "foregroundDeletion"),
        ("dflt", "", "orphan"),
    ] {
        // 202 Accepted: the deletion goes on after the answer.
        let (code, body) = api.delete(&format!("{rcs}/{name}{query}")).await;
        assert_eq!(code, 202, "{body}");
        let (code, o) = api.get(&format!("{rcs}/{name}")).await;
        assert_eq!(code, 200, "{name}");
        assert_eq!(o["metadata"]["finalizers"], json!([finalizer]), "{name}");
        assert!(o["metadata"]["deletionTimestamp"].is_string(), "{name}");
        // A second DELETE answers the object being deleted.
        assert_eq!(api.delete(&format!("{rcs}/{name}")).await.0, 202);
        let patch = json!({"metadata": {"finalizers": []}});
        let (code, body) = api
            .patch(
                &format!("{rcs}/{name}"),
                "application/merge-patch+json",
                &patch,
            )
            .await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(api.get(&format!("{rcs}/{name}")).await.0, 404, "{name}");
    }
    // Pods own nothing: the policy does not keep them.
    let (code, _) = api
        .delete(&format!("{pods}/or-pod?propagationPolicy=Foreground"))
        .await;
    assert_eq!(code, 200);
    assert_eq!(api.get(&format!("{pods}/or-pod")).await.0, 404);
    api.stop().await;
}

#[tokio::test]
async fn namespaces_terminate_and_admission_guards_them() {
    let api = start().await;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tmp"}});
    assert_eq!(api.post("/api/v1/namespaces", &ns).await.0, 201);
    assert_eq!(
        api.post("/api/v1/namespaces/tmp/pods", &pod("p", json!({})))
            .await
            .0,
        201
    );
    let (code, s) = api
        .post("/api/v1/namespaces/missing/pods", &pod("p", json!({})))
        .await;
    assert_eq!(
        (code, s["message"].clone()),
        (404, json!("namespaces \"missing\" not found"))
    );
    let (code, s) = api.delete("/api/v1/namespaces/default").await;
    assert_eq!(code, 403);
    assert_eq!(
        s["message"],
        "namespaces \"default\" is forbidden: this namespace may not be deleted"
    );
    let (code, t) = api.delete("/api/v1/namespaces/tmp").await;
    assert_eq!(code, 200);
    assert_eq!(t["status"]["phase"], "Terminating");
    for _ in 0..100 {
        if api.get("/api/v1/namespaces/tmp").await.0 == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(api.get("/api/v1/namespaces/tmp").await.0, 404);
    assert_eq!(api.get("/api/v1/namespaces/tmp/pods/p").await.0, 404);
    api.stop().await;
}

#[tokio::test]
async fn namespace_with_a_custom_finalizer_stays_terminating_until_it_is_removed() {
    let api = start().await;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": "held"},
                    "spec": {"finalizers": ["kubernetes", "example.com/wait"]}});
    assert_eq!(api.post("/api/v1/namespaces", &ns).await.0, 201);
    assert_eq!(
        api.post("/api/v1/namespaces/held/pods", &pod("p", json!({})))
            .await
            .0,
        201
    );
    assert_eq!(api.delete("/api/v1/namespaces/held").await.0, 200);
    // The contents go and the `kubernetes` finalizer with them; the custom one holds it.
    let mut held = json!(null);
    for _ in 0..100 {
        let (_, n) = api.get("/api/v1/namespaces/held").await;
        if n["spec"]["finalizers"] == json!(["example.com/wait"]) {
            held = n;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(held["status"]["phase"], "Terminating", "{held}");
    assert_eq!(api.get("/api/v1/namespaces/held/pods/p").await.0, 404);
    // Its owner removes the finalizer through the finalize subresource: the namespace goes.
    let mut done = held.clone();
    done["spec"]["finalizers"] = json!([]);
    let (code, s) = api.put("/api/v1/namespaces/held/finalize", &done).await;
    assert_eq!(code, 200, "{s}");
    assert_eq!(api.get("/api/v1/namespaces/held").await.0, 404);
    api.stop().await;
}

#[tokio::test]
async fn pod_binding_and_graceful_deletion() {
    let api = start().await;
    let pods = "/api/v1/namespaces/default/pods";
    api.post(pods, &pod("b", json!({}))).await;
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "b"},
                         "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}});
    let (code, s) = api.post(&format!("{pods}/b/binding"), &binding).await;
    assert_eq!(code, 201, "{s}");
    let (_, p) = api.get(&format!("{pods}/b")).await;
    assert_eq!(p["spec"]["nodeName"], "node-1");
    let (code, s) = api.post(&format!("{pods}/b/binding"), &binding).await;
    assert_eq!(code, 409);
    assert!(
        s["message"]
            .as_str()
            .expect("msg")
            .contains("already assigned to node")
    );
    // Bound pods terminate gracefully; a zero grace period finishes the deletion.
    let (code, t) = api.delete(&format!("{pods}/b")).await;
    assert_eq!(code, 202);
    assert!(t["metadata"]["deletionTimestamp"].is_string());
    let (code, _) = api.delete(&format!("{pods}/b?gracePeriodSeconds=0")).await;
    assert_eq!(code, 200);
    assert_eq!(api.get(&format!("{pods}/b")).await.0, 404);
    api.stop().await;
}

/// A DELETE without preconditions must not lose a race with a concurrent writer: the
/// kubelet writes a pod's status while users delete it (Kubernetes retries internally).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plain_delete_racing_status_writers_never_conflicts() {
    let api = std::sync::Arc::new(start().await);
    let pods = "/api/v1/namespaces/default/pods";
    let binding = |n: &str| {
        json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": n},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}})
    };
    const PODS: usize = 20;
    for i in 0..PODS {
        let n = format!("race-{i}");
        assert_eq!(api.post(pods, &pod(&n, json!({}))).await.0, 201);
        let (code, s) = api.post(&format!("{pods}/{n}/binding"), &binding(&n)).await;
        assert_eq!(code, 201, "{s}");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..PODS {
        let (api, stop) = (api.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let path = format!("{pods}/race-{i}/status");
            let mut writes = 0u32;
            // Bounded: at most 2,000 writes per pod, and the deletes stop it sooner.
            while writes < 2_000 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = json!({"status": {"message": format!("write {writes}")}});
                let (code, s) = api
                    .patch(&path, "application/merge-patch+json", &body)
                    .await;
                assert_eq!(code, 200, "{s}");
                writes += 1;
            }
            writes
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..PODS {
        let (code, s) = api.delete(&format!("{pods}/race-{i}")).await;
        assert_eq!(
            code, 202,
            "delete race-{i} while its status is written: {s}"
        );
        assert!(s["metadata"]["deletionTimestamp"].is_string(), "{s}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        assert!(w.await.expect("writer") > 0);
    }
    // A pinned resourceVersion is still a precondition: a stale one is a conflict.
    let (_, cur) = api.get(&format!("{pods}/race-0")).await;
    let stale: i64 = cur["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse::<i64>()
        .expect("number")
        - 1;
    let (code, s) = api
        .send(
            reqwest::Method::DELETE,
            &format!("{pods}/race-0"),
            "application/json",
            Some(json!({"preconditions": {"resourceVersion": stale.to_string()}}).to_string()),
        )
        .await;
    assert_eq!(code, 409, "{s}");
    assert!(
        s["message"]
            .as_str()
            .is_some_and(|m| m.contains("Precondition failed")),
        "{s}"
    );
    std::sync::Arc::into_inner(api)
        .expect("one owner")
        .stop()
        .await;
}

/// `kubectl scale` and `rolling-update` PATCH the scale subresource while the replication
/// controller writes the status: the patch is applied to the current object and retried, as
/// Kubernetes' patcher does, unless the patch itself pins a resourceVersion.
#[tokio::test]
async fn a_scale_patch_racing_status_writers_never_conflicts() {
    let api = std::sync::Arc::new(start().await);
    let rcs = "/api/v1/namespaces/default/replicationcontrollers";
    let rc = json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "r"},
        "spec": {"replicas": 0, "template": {"metadata": {"labels": {"app": "r"}},
                 "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    let (code, s) = api.post(rcs, &rc).await;
    assert_eq!(code, 201, "{s}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (api, stop) = (api.clone(), stop.clone());
        tokio::spawn(async move {
            let mut writes = 0u32;
            // Bounded: at most 5,000 writes, and the scaling below stops it sooner.
            while writes < 5_000 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = json!({"status": {"fullyLabeledReplicas": writes % 7}});
                let (code, s) = api
                    .patch(
                        &format!("{rcs}/r/status"),
                        "application/merge-patch+json",
                        &body,
                    )
                    .await;
                assert_eq!(code, 200, "{s}");
                writes += 1;
            }
            writes
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    for n in 1..=40 {
        let (code, s) = api
            .patch(
                &format!("{rcs}/r/scale"),
                "application/merge-patch+json",
                &json!({"spec": {"replicas": n}}),
            )
            .await;
        assert_eq!(code, 200, "scale to {n} while the status is written: {s}");
        assert_eq!(s["spec"]["replicas"], n, "{s}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.await.expect("writer") > 0);
    // A resourceVersion in the patch is a precondition: a stale one is a conflict and
    // changes nothing.
    let (_, cur) = api.get(&format!("{rcs}/r")).await;
    let stale = cur["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse::<i64>()
        .expect("number")
        - 1;
    let (code, s) = api
        .patch(
            &format!("{rcs}/r/scale"),
            "application/merge-patch+json",
            &json!({"metadata": {"resourceVersion": stale.to_string()}, "spec": {"replicas": 1}}),
        )
        .await;
    assert_eq!(code, 409, "{s}");
    let (_, after) = api.get(&format!("{rcs}/r")).await;
    assert_eq!(after, cur);
    // A negative count is refused with the field path.
    let (code, s) = api
        .patch(
            &format!("{rcs}/r/scale"),
            "application/merge-patch+json",
            &json!({"spec": {"replicas": -1}}),
        )
        .await;
    assert_eq!(code, 422, "{s}");
    assert_eq!(s["details"]["causes"][0]["field"], "spec.replicas", "{s}");
    std::sync::Arc::into_inner(api)
        .expect("one owner")
        .stop()
        .await;
}

#[tokio::test]
async fn discovery_health_and_metrics() {
    let api = start().await;
    let (_, v) = api.get("/api").await;
    assert_eq!(v["versions"], json!(["v1"]));
    let (_, v) = api.get("/api/v1").await;
    let names: Vec<&str> = v["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for n in [
        "pods",
        "pods/status",
        "pods/binding",
        "replicationcontrollers/scale",
        "services",
        "endpoints",
        "nodes",
        "events",
        "secrets",
        "configmaps",
        "serviceaccounts",
        "resourcequotas",
        "limitranges",
        "namespaces",
    ] {
        assert!(names.contains(&n), "{n} missing");
    }
    assert_eq!(api.get("/apis").await.1["kind"], "APIGroupList");
    assert_eq!(api.get("/version").await.1["major"], "1");
    for p in ["/healthz", "/readyz", "/livez"] {
        assert_eq!(api.get(p).await.0, 200);
    }
    api.get("/api/v1/namespaces/default/pods/none").await;
    let text = api
        .http
        .get(api.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("apiserver_request_total{code=\"404\",resource=\"pods\",verb=\"GET\"} 1"),
        "{text}"
    );
    assert!(text.contains(
        "apiserver_request_duration_seconds_bucket{resource=\"pods\",verb=\"GET\",le=\"+Inf\"}"
    ));
    api.stop().await;
}

#[tokio::test]
async fn events_expire_after_the_event_ttl() {
    let api = start_with(|b| b.options(|o| o.event_ttl = Duration::from_secs(6))).await;
    let ev = |name: &str, last: &str| {
        json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": name},
               "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
               "reason": "Test", "message": "m", "type": "Normal", "lastTimestamp": last})
    };
    let events = "/api/v1/namespaces/default/events";
    assert_eq!(
        api.post(events, &ev("old", "2020-01-01T00:00:00Z")).await.0,
        201
    );
    let now = xkube_api::meta::format_time(jiff::Timestamp::now());
    assert_eq!(api.post(events, &ev("new", &now)).await.0, 201);
    let mut gone = false;
    for _ in 0..50 {
        if api.get(&format!("{events}/old")).await.0 == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "expired event was not collected");
    assert_eq!(api.get(&format!("{events}/new")).await.0, 200);
    // Field selectors kubectl describe uses.
    let (code, l) = api
        .get(&format!(
            "{events}?fieldSelector=involvedObject.name%3Dp,involvedObject.kind%3DPod"
        ))
        .await;
    assert_eq!(code, 200);
    assert_eq!(l["items"].as_array().expect("items").len(), 1);
    api.stop().await;
}

#[tokio::test]
async fn endpoint_slices_are_served_in_the_discovery_group() {
    let api = start().await;
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.1.0.1"]}]});
    let slices = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";
    let (code, created) = api.post(slices, &slice).await;
    assert_eq!(code, 201, "{created}");
    let (code, s) = api.get(&format!("{slices}/web")).await;
    assert_eq!(code, 200);
    assert_eq!(s["endpoints"][0]["addresses"][0], "10.1.0.1");
    let (_, groups) = api.get("/apis").await;
    assert!(
        groups["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .any(|g| g["name"] == "discovery.k8s.io"),
        "{groups}"
    );
    api.stop().await;
}
