//! The DaemonSet controller end to end: an in-process apiserver, the controller-manager and
//! the scheduler as tasks, and a fake kubelet running the pods of its nodes.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Node, Pod, ReplicationController};
use serde_json::{Value, json};
use support::{Cluster, FakeKubelet, eventually};
use xkube_api::pod as podutil;
use xkube_client::{Api, DeleteParams, ListParams, Object, Patch};
use xkube_controllers::daemonset::TEMPLATE_HASH_LABEL;

fn ds_json(name: &str, template_spec: Value) -> DaemonSet {
    let mut spec = json!({"containers": [{"name": "c", "image": "agent:1",
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]});
    if let (Some(s), Value::Object(extra)) = (spec.as_object_mut(), template_spec) {
        s.extend(extra);
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}
    }))
    .expect("daemonset literal")
}

fn node_of(p: &Pod) -> String {
    podutil::node_name(p).to_string()
}

fn image_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn owned_by(p: &Pod, ds: &str) -> bool {
    p.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.kind == "DaemonSet" && r.name == ds && r.controller == Some(true))
}

fn running_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && podutil::phase(p) == "Running"
        && podutil::is_ready(p)
}

/// Active pods of `ds`, by node.
async fn pods_by_node(c: &Cluster, ds: &str) -> BTreeMap<String, Vec<Pod>> {
    let mut m: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for p in c.list_pods("default", &format!("app={ds}")).await {
        if owned_by(&p, ds) && p.metadata.deletion_timestamp.is_none() {
            m.entry(node_of(&p)).or_default().push(p);
        }
    }
    m
}

/// Waits until `ds` runs exactly one ready pod on each of `nodes` and nowhere else.
async fn wait_one_per_node(c: &Cluster, ds: &str, nodes: &[&str]) -> BTreeMap<String, Pod> {
    eventually(
        &format!("one ready pod of {ds} on each of {nodes:?}"),
        || async {
            let m = pods_by_node(c, ds).await;
            let ok = m.len() == nodes.len()
                && nodes.iter().all(|n| {
                    m.get(*n)
                        .is_some_and(|pods| pods.len() == 1 && running_ready(&pods[0]))
                });
            ok.then(|| {
                m.into_iter()
                    .map(|(n, mut pods)| (n, pods.remove(0)))
                    .collect()
            })
        },
    )
    .await
}

async fn wait_status(
    c: &Cluster,
    ds: &str,
    want: (i32, i32, i32, i32, i32),
    generation: i64,
) -> DaemonSet {
    let api: Api<DaemonSet> = Api::namespaced(c.client.clone(), "default");
    eventually(&format!("status {want:?} of {ds}"), || async {
        let d = api.get(ds).await.expect("get daemonset");
        let s = d.status.clone().unwrap_or_default();
        let have = (
            s.desired_number_scheduled,
            s.current_number_scheduled,
            s.number_ready,
            s.updated_number_scheduled.unwrap_or(0),
            s.number_available.unwrap_or(0),
        );
        (have == want && s.observed_generation == Some(generation)).then_some(d)
    })
    .await
}

async fn start(nodes: &[&str]) -> (Cluster, FakeKubelet) {
    let c = Cluster::start(|_| {}).await;
    let kubelet = FakeKubelet::start(&c.client, Duration::from_millis(300), &c.shutdown).await;
    for n in nodes {
        kubelet.add_node(n, "4", "8Gi").await;
    }
    (c, kubelet)
}

async fn patch_node(c: &Cluster, node: &str, patch: Value) {
    Api::<Node>::all(c.client.clone())
        .patch(node, &Patch::Merge(patch))
        .await
        .expect("patch node");
}

async fn events_of(c: &Cluster, name: &str) -> Vec<Event> {
    Api::<Event>::namespaced(c.client.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.kind.as_deref() == Some("DaemonSet")
                && e.involved_object.name.as_deref() == Some(name)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_per_node_follows_nodes_and_replaces_deleted_pods() {
    let (c, kubelet) = start(&["node-a", "node-b", "node-c"]).await;
    let dss: Api<DaemonSet> = Api::namespaced(c.client.clone(), "default");
    let created = dss
        .create(&ds_json("agent", json!({})))
        .await
        .expect("daemonset created");

    let pods = wait_one_per_node(&c, "agent", &["node-a", "node-b", "node-c"]).await;
    for p in pods.values() {
        let suffix = p.name().strip_prefix("agent-").expect("named after the ds");
        assert!(
            suffix.len() == 5
                && suffix
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit()),
            "{}",
            p.name()
        );
        let r = podutil::controller_of(p.metadata.owner_references.as_ref()).expect("owner");
        assert_eq!(
            (r.kind.as_str(), r.uid.as_str()),
            ("DaemonSet", created.uid())
        );
        let labels = p.metadata.labels.clone().unwrap_or_default();
        assert!(labels.contains_key(TEMPLATE_HASH_LABEL), "{labels:?}");
    }
    wait_status(&c, "agent", (3, 3, 3, 3, 3), 1).await;
    let first = pods["node-a"].name().to_string();
    eventually("SuccessfulCreate event", || async {
        let want = format!("Created pod: {first}");
        events_of(&c, "agent")
            .await
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("SuccessfulCreate")
                    && e.message.as_deref() == Some(want.as_str())
            })
            .then_some(())
    })
    .await;

    // A new node gets a pod.
    kubelet.add_node("node-d", "4", "8Gi").await;
    wait_one_per_node(&c, "agent", &["node-a", "node-b", "node-c", "node-d"]).await;
    wait_status(&c, "agent", (4, 4, 4, 4, 4), 1).await;

    // A deleted pod is recreated on its node.
    c.pods("default")
        .delete(&first, &DeleteParams::default())
        .await
        .expect("delete pod");
    let pods = eventually("replacement on node-a", || async {
        let pods = wait_one_per_node(&c, "agent", &["node-a", "node-b", "node-c", "node-d"]).await;
        (pods["node-a"].name() != first).then_some(pods)
    })
    .await;
    assert_eq!(node_of(&pods["node-a"]), "node-a");

    // A failed pod is deleted (with a warning) and replaced.
    let failing = pods["node-b"].name().to_string();
    c.pods("default")
        .patch_status(
            &failing,
            &Patch::Merge(json!({"status": {"phase": "Failed"}})),
        )
        .await
        .expect("pod failed");
    eventually("failed pod replaced", || async {
        let pods = wait_one_per_node(&c, "agent", &["node-a", "node-b", "node-c", "node-d"]).await;
        (pods["node-b"].name() != failing).then_some(())
    })
    .await;
    assert!(
        events_of(&c, "agent")
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("FailedDaemonPod")
                && e.type_.as_deref() == Some("Warning")),
        "FailedDaemonPod event"
    );

    // A deleted node loses its pod.
    kubelet.stop_node("node-d");
    Api::<Node>::all(c.client.clone())
        .delete("node-d", &DeleteParams::default())
        .await
        .expect("delete node");
    eventually("pod of the deleted node gone", || async {
        let all = c.list_pods("default", "app=agent").await;
        all.iter().all(|p| node_of(p) != "node-d").then_some(())
    })
    .await;
    wait_status(&c, "agent", (3, 3, 3, 3, 3), 1).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_selectors_and_taints_choose_the_nodes() {
    let (c, _kubelet) = start(&["edge-a", "edge-b", "tainted", "core"]).await;
    // The taint before the label: the controller's node cache sees them in this order, so it
    // never sees `tainted` as an untainted edge node (a NoSchedule taint that comes later
    // leaves an existing daemon pod in place, as in Kubernetes).
    patch_node(
        &c,
        "tainted",
        json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
    )
    .await;
    for n in ["edge-a", "edge-b", "tainted"] {
        patch_node(&c, n, json!({"metadata": {"labels": {"role": "edge"}}})).await;
    }
    let dss: Api<DaemonSet> = Api::namespaced(c.client.clone(), "default");
    dss.create(&ds_json("edge", json!({"nodeSelector": {"role": "edge"}})))
        .await
        .expect("edge daemonset");
    dss.create(&ds_json(
        "tolerant",
        json!({"tolerations": [{"key": "dedicated", "operator": "Exists"}]}),
    ))
    .await
    .expect("tolerant daemonset");

    // The selector keeps `core` out, the untolerated taint `tainted`.
    wait_one_per_node(&c, "edge", &["edge-a", "edge-b"]).await;
    wait_status(&c, "edge", (2, 2, 2, 2, 2), 1).await;
    // Operator Exists tolerates the taint whatever its value.
    wait_one_per_node(&c, "tolerant", &["core", "edge-a", "edge-b", "tainted"]).await;

    // A node that stops matching loses the pod; one that starts matching gets one.
    patch_node(
        &c,
        "edge-b",
        json!({"metadata": {"labels": {"role": null}}}),
    )
    .await;
    patch_node(
        &c,
        "core",
        json!({"metadata": {"labels": {"role": "edge"}}}),
    )
    .await;
    wait_one_per_node(&c, "edge", &["core", "edge-a"]).await;

    // A NoExecute taint evicts pods that do not tolerate it.
    patch_node(
        &c,
        "edge-a",
        json!({"spec": {"taints": [{"key": "maintenance", "effect": "NoExecute"}]}}),
    )
    .await;
    wait_one_per_node(&c, "edge", &["core"]).await;
    wait_one_per_node(&c, "tolerant", &["core", "edge-b", "tainted"]).await;

    // Cordoned nodes keep and get daemon pods (they tolerate `unschedulable`).
    patch_node(
        &c,
        "edge-b",
        json!({"spec": {"unschedulable": true, "taints": [
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}}),
    )
    .await;
    patch_node(
        &c,
        "edge-b",
        json!({"metadata": {"labels": {"role": "edge"}}}),
    )
    .await;
    wait_one_per_node(&c, "edge", &["core", "edge-b"]).await;
    wait_one_per_node(&c, "tolerant", &["core", "edge-b", "tainted"]).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_changes_roll_pods_node_by_node() {
    let (c, _kubelet) = start(&["node-a", "node-b", "node-c"]).await;
    let dss: Api<DaemonSet> = Api::namespaced(c.client.clone(), "default");
    dss.create(&ds_json("agent", json!({})))
        .await
        .expect("daemonset created");
    let before = wait_one_per_node(&c, "agent", &["node-a", "node-b", "node-c"]).await;
    wait_status(&c, "agent", (3, 3, 3, 3, 3), 1).await;
    let old_hash =
        before["node-a"].metadata.labels.clone().unwrap_or_default()[TEMPLATE_HASH_LABEL].clone();

    dss.patch(
        "agent",
        &Patch::Strategic(json!({"spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": "agent:2"}]}}}})),
    )
    .await
    .expect("new image");
    // maxUnavailable 1: while the pods are replaced, at least two nodes keep a ready pod.
    let mut samples = 0;
    let after = eventually("every node runs the new image", || {
        samples += 1;
        async {
            let m = pods_by_node(&c, "agent").await;
            let ready = m
                .values()
                .filter(|pods| pods.iter().any(running_ready))
                .count();
            assert!(ready >= 2, "more than one node without a ready pod: {m:?}");
            let done = m.len() == 3
                && m.values().all(|pods| {
                    pods.len() == 1 && running_ready(&pods[0]) && image_of(&pods[0]) == "agent:2"
                });
            done.then_some(m)
        }
    })
    .await;
    assert!(samples > 1, "the rollout took more than one look");
    for (node, pods) in &after {
        let p = &pods[0];
        assert_ne!(p.name(), before[node].name(), "replaced on {node}");
        let hash = p.metadata.labels.clone().unwrap_or_default()[TEMPLATE_HASH_LABEL].clone();
        assert_ne!(hash, old_hash);
    }
    wait_status(&c, "agent", (3, 3, 3, 3, 3), 2).await;
    assert!(
        events_of(&c, "agent")
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("SuccessfulDelete")),
        "SuccessfulDelete events"
    );

    // OnDelete: a template change waits until the user deletes a pod.
    dss.patch(
        "agent",
        &Patch::Merge(
            json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null},
            "template": {"spec": {"containers": [{"name": "c", "image": "agent:3"}]}}}}),
        ),
    )
    .await
    .expect("OnDelete and a new image");
    wait_status(&c, "agent", (3, 3, 3, 0, 3), 3).await;
    let pods = pods_by_node(&c, "agent").await;
    assert!(
        pods.values().flatten().all(|p| image_of(p) == "agent:2"),
        "nothing replaced by itself"
    );
    let victim = pods["node-b"][0].name().to_string();
    c.pods("default")
        .delete(&victim, &DeleteParams::default())
        .await
        .expect("delete pod");
    let pods = eventually("node-b runs the new template", || async {
        let m = wait_one_per_node(&c, "agent", &["node-a", "node-b", "node-c"]).await;
        (image_of(&m["node-b"]) == "agent:3").then_some(m)
    })
    .await;
    assert_eq!(image_of(&pods["node-a"]), "agent:2");
    assert_eq!(image_of(&pods["node-c"]), "agent:2");
    wait_status(&c, "agent", (3, 3, 3, 1, 3), 3).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_daemon_set_removes_its_pods() {
    let (c, _kubelet) = start(&["node-a", "node-b"]).await;
    let dss: Api<DaemonSet> = Api::namespaced(c.client.clone(), "default");
    dss.create(&ds_json("agent", json!({})))
        .await
        .expect("daemonset created");
    wait_one_per_node(&c, "agent", &["node-a", "node-b"]).await;
    dss.delete("agent", &DeleteParams::default())
        .await
        .expect("delete daemonset");
    eventually("daemon pods gone", || async {
        c.list_pods("default", "app=agent")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(dss.get_opt("agent").await.expect("get").is_none());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_pods_stay_on_an_unreachable_node() {
    let (c, kubelet) = start(&["solo"]).await;
    let rc: ReplicationController = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"app": "web"},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}
    }))
    .expect("rc literal");
    Api::<ReplicationController>::namespaced(c.client.clone(), "default")
        .create(&rc)
        .await
        .expect("rc");
    Api::<DaemonSet>::namespaced(c.client.clone(), "default")
        .create(&ds_json("agent", json!({})))
        .await
        .expect("daemonset");
    let daemon = wait_one_per_node(&c, "agent", &["solo"]).await["solo"].clone();
    let web = eventually("rc pod running", || async {
        c.list_pods("default", "app=web")
            .await
            .into_iter()
            .find(running_ready)
    })
    .await;

    kubelet.stop_node("solo");
    // The node controller evicts the RC's pod (the witness that eviction ran) ...
    eventually("rc pod evicted", || async {
        let p = c.pods("default").get_opt(web.name()).await.expect("get")?;
        p.metadata.deletion_timestamp.is_some().then_some(())
    })
    .await;
    // ... but leaves the daemon pod alone: it tolerates `unreachable`.
    let p = c
        .pods("default")
        .get(daemon.name())
        .await
        .expect("daemon pod still there");
    assert!(
        p.metadata.deletion_timestamp.is_none(),
        "daemon pod not evicted"
    );
    assert_eq!(
        pods_by_node(&c, "agent").await.values().flatten().count(),
        1,
        "no second daemon pod"
    );
    c.stop().await;
}
