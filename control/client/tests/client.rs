//! The client library against a real in-process apiserver: TLS with the written admin
//! kubeconfig, CRUD, selectors, patches, subresources, watch resume and 410, and a reflector
//! that stays consistent across apiserver restarts.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ReplicationController, Service};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use xkube_apiserver::testing::TestServer;
use xkube_apiserver::{Listen, Options, RunningServer, StorageBackend};
use xkube_client::{
    Api, Change, Client, Config, DeleteParams, DynamicObject, Event, ListParams, Object, Overrides,
    Patch, PropagationPolicy, Reflector, WatchEvent, watcher,
};

fn pod(name: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
    }))
    .expect("pod literal")
}

async fn plain_server(dir: &std::path::Path) -> (RunningServer, Client) {
    let server = TestServer::builder(dir)
        .memory()
        .start()
        .await
        .expect("apiserver starts");
    let url = server.http_url().expect("http listener");
    let client = Client::new(&Config::new(url)).expect("client");
    (server, client)
}

async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn tls_kubeconfig_crud_selectors_patches_and_subresources() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::builder(dir.path())
        .memory()
        .secure()
        .start()
        .await
        .expect("apiserver starts");
    let kc = server.kubeconfig.clone().expect("admin kubeconfig written");
    let cfg = Config::load(Some(&kc), &Overrides::default()).expect("kubeconfig loads");
    assert!(
        cfg.server.starts_with("https://127.0.0.1:"),
        "{}",
        cfg.server
    );
    assert!(cfg.identity_pem.is_some() && cfg.root_certs_pem.is_some());
    let client = Client::new(&cfg).expect("client");

    // Without the client certificate the server refuses us.
    let anon = Client::new(&Config {
        identity_pem: None,
        ..cfg.clone()
    })
    .expect("anonymous client");
    let err = Api::<Pod>::namespaced(anon, "default")
        .list(&ListParams::default())
        .await
        .expect_err("401 without credentials");
    assert_eq!(err.status().map(|s| s.code), Some(401), "{err}");
    // With a CA that is not the cluster's, the handshake fails.
    let wrong_ca = Client::new(&Config {
        root_certs_pem: None,
        ..cfg.clone()
    })
    .expect("client with public roots");
    assert!(
        Api::<Pod>::namespaced(wrong_ca, "default")
            .get("x")
            .await
            .is_err_and(|e| e.status().is_none()),
        "an untrusted server certificate must fail the request"
    );

    let v = client.version().await.expect("version");
    assert!(v["gitVersion"].is_string(), "{v}");
    assert!(
        client
            .api_versions()
            .await
            .expect("api versions")
            .contains(&"v1".to_string())
    );

    let ns_api = Api::<Namespace>::all(client.clone());
    ns_api
        .create(&serde_json::from_value(json!({"metadata": {"name": "t1"}})).expect("ns"))
        .await
        .expect("create namespace");
    let pods = Api::<Pod>::namespaced(client.clone(), "t1");
    let a = pods
        .create(&pod("a", json!({"app": "web", "tier": "fe"})))
        .await
        .expect("create a");
    assert_eq!(a.namespace(), "t1");
    assert!(!a.resource_version().is_empty() && !a.uid().is_empty());
    pods.create(&pod("b", json!({"app": "db"})))
        .await
        .expect("create b");
    let err = pods
        .create(&pod("a", json!({})))
        .await
        .expect_err("duplicate");
    assert!(err.is_conflict(), "{err}");
    assert_eq!(err.to_string(), "pods \"a\" already exists");

    let web = pods
        .list(&ListParams::default().labels("app in (web),tier"))
        .await
        .expect("list by labels");
    assert_eq!(
        web.items.iter().map(Object::name).collect::<Vec<_>>(),
        ["a"]
    );
    let by_name = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .expect("list by field across namespaces");
    assert_eq!(by_name.items.len(), 1);
    assert_eq!(by_name.items[0].namespace(), "t1");

    // Patches of the three kinds.
    let p = pods
        .patch(
            "a",
            &Patch::Merge(json!({"metadata": {"labels": {"m": "1"}}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("m"))
            .map(String::as_str),
        Some("1")
    );
    let p = pods
        .patch(
            "a",
            &Patch::Json(
                json!([{"op": "add", "path": "/metadata/annotations", "value": {"x": "y"}}]),
            ),
        )
        .await
        .expect("json patch");
    assert!(p.metadata.annotations.is_some_and(|a| a["x"] == "y"));
    let p = pods
        .patch(
            "a",
            &Patch::Strategic(json!({"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}})),
        )
        .await
        .expect("strategic patch");
    let spec = p.spec.expect("spec");
    assert_eq!(spec.containers.len(), 1);
    assert_eq!(spec.containers[0].image.as_deref(), Some("nginx:2"));

    // Replace with a stale resourceVersion conflicts.
    let mut stale = a.clone();
    stale.metadata.labels = None;
    let err = pods.replace("a", &stale).await.expect_err("stale replace");
    assert!(err.is_conflict(), "{err}");

    // Status subresource.
    let mut st = pods.get_status("b").await.expect("get status");
    st.status.get_or_insert_default().phase = Some("Running".into());
    let st = pods.replace_status("b", &st).await.expect("replace status");
    assert_eq!(st.status.and_then(|s| s.phase).as_deref(), Some("Running"));
    let st = pods
        .patch_status(
            "b",
            &Patch::Merge(json!({"status": {"podIP": "10.244.0.9"}})),
        )
        .await
        .expect("patch status");
    assert_eq!(
        st.status.and_then(|s| s.pod_ip).as_deref(),
        Some("10.244.0.9")
    );

    // Binding.
    Api::<Node>::all(client.clone())
        .create(&serde_json::from_value(json!({"metadata": {"name": "n1"}})).expect("node"))
        .await
        .expect("create node");
    pods.bind("a", "n1").await.expect("bind");
    let bound = pods.get("a").await.expect("get a");
    assert_eq!(bound.spec.and_then(|s| s.node_name).as_deref(), Some("n1"));

    // Scale subresource.
    let rcs = Api::<ReplicationController>::namespaced(client.clone(), "t1");
    rcs.create(
        &serde_json::from_value(json!({"metadata": {"name": "rc"}, "spec": {"replicas": 1,
            "selector": {"app": "r"}, "template": {"metadata": {"labels": {"app": "r"}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}))
        .expect("rc"),
    )
    .await
    .expect("create rc");
    let sc = rcs.scale("rc", 3).await.expect("scale");
    assert_eq!(sc.spec.and_then(|s| s.replicas), Some(3));
    assert_eq!(
        rcs.get_scale("rc")
            .await
            .expect("get scale")
            .spec
            .and_then(|s| s.replicas),
        Some(3)
    );

    // Dynamic access through the registry.
    let svc_info = xkube_api::resources::find("", "v1", "services").expect("services registered");
    let svcs = Api::<DynamicObject>::dynamic(client.clone(), svc_info, Some("default"));
    let k = svcs.get("kubernetes").await.expect("built-in service");
    assert_eq!(k.0["spec"]["ports"][0]["port"], 443);
    let typed = Api::<Service>::default_namespaced(client.clone());
    assert_eq!(
        typed.get("kubernetes").await.expect("typed").name(),
        "kubernetes"
    );

    // Delete with propagation, then 404.
    rcs.delete(
        "rc",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Orphan),
            ..DeleteParams::default()
        },
    )
    .await
    .expect("delete rc");
    // A bound pod is deleted gracefully (the kubelet finishes it) unless the grace is 0.
    let graceful = pods
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete a");
    assert!(
        graceful["metadata"]["deletionTimestamp"].is_string(),
        "{graceful}"
    );
    pods.delete(
        "a",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .expect("force delete a");
    let err = pods.get("a").await.expect_err("gone");
    assert!(err.is_not_found(), "{err}");
    assert_eq!(err.to_string(), "pods \"a\" not found");
    assert!(pods.get_opt("a").await.expect("get_opt").is_none());
    server.stop().await;
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version_and_reports_410_for_compacted_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::builder(dir.path())
        .memory()
        .options(|o| o.watch_cache_size = 5)
        .start()
        .await
        .expect("apiserver starts");
    let client = Client::new(&Config::new(server.http_url().expect("url"))).expect("client");
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let first = pods.create(&pod("p0", json!({}))).await.expect("p0");
    let rv0 = first.resource_version().to_string();
    let p1 = pods
        .create(&pod("p1", json!({"w": "1"})))
        .await
        .expect("p1");
    pods.create(&pod("p2", json!({}))).await.expect("p2");

    // Resume from p0's version: exactly p1 and p2, then live events.
    let mut s = pods
        .watch(&ListParams::default(), &rv0)
        .await
        .expect("watch")
        .boxed();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("event decodes");
        match ev {
            WatchEvent::Added(p) => seen.push(p.name().to_string()),
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(seen, ["p1", "p2"]);
    pods.delete("p1", &DeleteParams::default())
        .await
        .expect("delete p1");
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("event decodes");
        match ev {
            WatchEvent::Deleted(p) => {
                assert_eq!(p.name(), "p1");
                break;
            }
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    drop(s);

    // A label-filtered watch from p1's creation sees nothing but the deletion of p1.
    let mut s = pods
        .watch(&ListParams::default().labels("w=1"), p1.resource_version())
        .await
        .expect("filtered watch")
        .boxed();
    let ev = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("decodes")
        {
            WatchEvent::Bookmark(_) => continue,
            ev => break ev,
        }
    };
    assert!(
        matches!(ev, WatchEvent::Deleted(ref p) if p.name() == "p1"),
        "{ev:?}"
    );
    drop(s);

    // Push p0's version out of the 5-event window: the watch answers 410.
    for i in 0..8 {
        pods.create(&pod(&format!("q{i}"), json!({})))
            .await
            .expect("q");
    }
    let mut s = pods
        .watch(&ListParams::default(), &rv0)
        .await
        .expect("watch opens")
        .boxed();
    let ev = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("event in time")
        .expect("stream open")
        .expect("decodes");
    assert!(
        matches!(ev, WatchEvent::Error(ref st) if st.code == 410),
        "{ev:?}"
    );

    // The watcher streams its list (Init, one InitApply per object, InitDone), then follows.
    let mut w = watcher(pods.clone(), ListParams::default()).boxed();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("event")
    };
    assert_eq!(next().await, Event::Init);
    let mut items = Vec::new();
    loop {
        match next().await {
            Event::InitApply(p) => items.push(p),
            Event::InitDone => break,
            other => panic!("the list, then InitDone; got {other:?}"),
        }
    }
    assert_eq!(items.len(), 10, "p0, p2 and q0..q7");
    pods.create(&pod("late", json!({}))).await.expect("late");
    let ev = next().await;
    assert!(
        matches!(ev, Event::Applied(ref p) if p.name() == "late"),
        "{ev:?}"
    );
    server.stop().await;
}

fn options(dir: &std::path::Path) -> Options {
    Options {
        data_dir: dir.to_path_buf(),
        storage_backend: Some(StorageBackend::Memory),
        bind_address: Ipv4Addr::LOCALHOST.into(),
        secure_port: 0,
        bookmark_interval_seconds: 1,
        compaction_interval_seconds: 0,
        ..Options::default()
    }
}

async fn start_on(
    dir: &std::path::Path,
    addr: SocketAddr,
    store: Arc<dyn xkube_store::Store>,
) -> RunningServer {
    // The port was just released by the previous server; retry briefly if the kernel still
    // holds it.
    for _ in 0..50 {
        match xkube_apiserver::start(
            options(dir),
            Listen {
                secure: None,
                insecure: Some(addr),
            },
            Some(store.clone()),
            CancellationToken::new(),
        )
        .await
        {
            Ok(s) => return s,
            Err(e) => {
                tracing::debug!(error = %e, "rebinding");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("could not restart the apiserver on {addr}");
}

#[tokio::test]
async fn reflector_stays_consistent_across_apiserver_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = xkube_store::open(&xkube_store::StoreSpec::Memory)
        .await
        .expect("memory store");
    let a = start_on(
        dir.path(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        store.clone(),
    )
    .await;
    let addr = a.insecure_addr.expect("bound");
    let client = Client::new(&Config::new(format!("http://{addr}"))).expect("client");
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    for n in ["a", "b", "c"] {
        pods.create(&pod(n, json!({"app": "x"})))
            .await
            .expect("create");
    }
    pods.create(&pod("other", json!({"app": "y"})))
        .await
        .expect("create other");

    let cancel = CancellationToken::new();
    let reflector = Reflector::new(
        Api::<Pod>::all(client.clone()),
        ListParams::default().labels("app=x"),
    );
    let store_r = reflector.store();
    let mut changes = store_r.subscribe();
    let (_, task) = reflector.spawn(cancel.clone());
    tokio::time::timeout(Duration::from_secs(10), store_r.wait_ready())
        .await
        .expect("reflector lists");
    assert_eq!(store_r.len(), 3);
    let got = store_r.get("default", "a").expect("a cached");
    assert_eq!(got.name(), "a");
    assert!(
        store_r.get("default", "other").is_none(),
        "selector applies"
    );

    pods.create(&pod("d", json!({"app": "x"})))
        .await
        .expect("create d");
    eventually("d in the cache", || {
        let s = store_r.clone();
        async move { s.get("default", "d").is_some() }
    })
    .await;

    // Stop the apiserver: the watch breaks. Change the state through another apiserver on
    // the same store, then bring the first address back.
    a.stop().await;
    let b = start_on(
        dir.path(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        store.clone(),
    )
    .await;
    let cb = Client::new(&Config::new(b.http_url().expect("url"))).expect("client b");
    let pods_b = Api::<Pod>::namespaced(cb, "default");
    pods_b
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete a");
    pods_b
        .patch(
            "b",
            &Patch::Merge(json!({"metadata": {"labels": {"app": "z"}}})),
        )
        .await
        .expect("relabel b out of the selector");
    pods_b
        .patch(
            "c",
            &Patch::Merge(json!({"metadata": {"annotations": {"v": "2"}}})),
        )
        .await
        .expect("modify c");
    pods_b
        .create(&pod("e", json!({"app": "x"})))
        .await
        .expect("create e");
    b.stop().await;
    // While the server is down the cache keeps serving the last state.
    assert!(store_r.get("default", "a").is_some());
    let a2 = start_on(dir.path(), addr, store.clone()).await;

    eventually("the cache to match the server", || {
        let s = store_r.clone();
        let pods = pods.clone();
        async move {
            let Ok(list) = pods.list(&ListParams::default().labels("app=x")).await else {
                return false;
            };
            let mut want: Vec<(String, String)> = list
                .items
                .iter()
                .map(|p| (p.name().to_string(), p.resource_version().to_string()))
                .collect();
            let mut have: Vec<(String, String)> = s
                .list()
                .iter()
                .map(|p| (p.name().to_string(), p.resource_version().to_string()))
                .collect();
            want.sort();
            have.sort();
            want == have
        }
    })
    .await;
    let names = {
        let mut n: Vec<String> = store_r
            .list()
            .iter()
            .map(|p| p.name().to_string())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names, ["c", "d", "e"]);
    let c = store_r.get("default", "c").expect("c");
    assert!(
        c.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a["v"] == "2")
    );

    // The change channel announced the deletions (a; b left the selector) and a resync.
    let mut deleted = Vec::new();
    let mut resynced = 0;
    while let Ok(ch) = changes.try_recv() {
        match ch {
            Change::Deleted(p) => deleted.push(p.name().to_string()),
            Change::Resynced => resynced += 1,
            Change::Applied(_) => {}
        }
    }
    deleted.sort();
    assert_eq!(deleted, ["a", "b"]);
    assert!(
        resynced >= 2,
        "initial list and the relist after the restart"
    );

    // And it keeps following live changes after the restart.
    pods.delete("d", &DeleteParams::default())
        .await
        .expect("delete d");
    eventually("d removed from the cache", || {
        let s = store_r.clone();
        async move { s.get("default", "d").is_none() }
    })
    .await;
    cancel.cancel();
    task.await.expect("reflector task ends");
    a2.stop().await;
}

#[tokio::test]
async fn api_errors_carry_kubernetes_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, client) = plain_server(dir.path()).await;
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let bad: Pod = serde_json::from_value(json!({"metadata": {"name": "Bad_Name"},
        "spec": {"containers": [{"name": "c", "image": "x"}]}}))
    .expect("pod");
    let err = pods.create(&bad).await.expect_err("invalid name");
    let st = err.status().expect("status");
    assert_eq!((st.code, st.reason.as_str()), (422, "Invalid"));
    assert!(
        st.message
            .contains("metadata.name: Invalid value: \"Bad_Name\""),
        "{}",
        st.message
    );
    let err = client
        .get_json("/api/v1/widgets")
        .await
        .expect_err("unknown resource");
    assert_eq!(err.status().map(|s| s.code), Some(404));
    server.stop().await;
}

#[tokio::test]
async fn bearer_tokens_and_basic_auth_from_kubeconfig_users() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "s3cr3t-token,alice,1001,\"devs\"\n").expect("token file");
    let basic = dir.path().join("basic.csv");
    std::fs::write(&basic, "pa55word,bob,1002\n").expect("basic file");
    let server = TestServer::builder(dir.path().join("data"))
        .memory()
        .secure()
        .options(|o| {
            o.token_auth_file = Some(tokens.clone());
            o.basic_auth_file = Some(basic.clone());
            // This test is about authentication; RBAC is tested in the apiserver's tests.
            o.authorization_mode = vec![xkube_apiserver::AuthorizationMode::AlwaysAllow];
        })
        .start()
        .await
        .expect("apiserver starts");
    let addr = server.secure_addr.expect("tls address");
    let ca = server.ca_cert.clone().expect("ca");
    let kc = dir.path().join("users.kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{addr}\n    certificate-authority: {}\nusers:\n- name: alice\n  user:\n    token: s3cr3t-token\n- name: bob\n  user:\n    username: bob\n    password: pa55word\n- name: mallory\n  user:\n    token: wrong\ncontexts:\n- name: a\n  context: {{cluster: c, user: alice}}\n- name: b\n  context: {{cluster: c, user: bob, namespace: kube-system}}\n- name: m\n  context: {{cluster: c, user: mallory}}\ncurrent-context: a\n",
            ca.display()
        ),
    )
    .expect("kubeconfig");
    for ctx in ["a", "b"] {
        let cfg = Config::load(
            Some(&kc),
            &Overrides {
                context: Some(ctx.into()),
                ..Overrides::default()
            },
        )
        .expect("resolves");
        let client = Client::new(&cfg).expect("client");
        let ns = client.default_namespace().to_string();
        Api::<Pod>::namespaced(client, &ns)
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("context {ctx} authenticates: {e}"));
    }
    let cfg = Config::load(
        Some(&kc),
        &Overrides {
            context: Some("m".into()),
            ..Overrides::default()
        },
    )
    .expect("resolves");
    let err = Api::<Pod>::namespaced(Client::new(&cfg).expect("client"), "default")
        .list(&ListParams::default())
        .await
        .expect_err("a wrong token is refused");
    assert_eq!(err.status().map(|s| s.code), Some(401), "{err}");
    // insecure-skip-tls-verify works without the CA.
    let cfg = Config::load(
        Some(&kc),
        &Overrides {
            insecure_skip_tls_verify: true,
            ..Overrides::default()
        },
    )
    .expect("resolves");
    let cfg = Config {
        root_certs_pem: None,
        ..cfg
    };
    Api::<Pod>::namespaced(Client::new(&cfg).expect("client"), "default")
        .list(&ListParams::default())
        .await
        .expect("insecure-skip-tls-verify accepts the self-signed chain");
    server.stop().await;
}
