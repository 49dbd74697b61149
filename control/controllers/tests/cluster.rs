//! End to end against an in-process apiserver: the controller-manager and the scheduler run
//! as tasks, a fake kubelet registers nodes, heartbeats and runs pods.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Endpoints, Event, Namespace, Node, Pod, ReplicationController, ResourceQuota, Secret, Service,
    ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use support::{Cluster, FakeKubelet, eventually, pod_json};
use xkube_client::{Api, DeleteParams, ListParams, Object, Patch};

fn rc_json(name: &str, replicas: i32) -> ReplicationController {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ReplicationController",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"app": name},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "nginx",
                                       "ports": [{"name": "http", "containerPort": 8080}],
                                       "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}}}
    }))
    .expect("rc literal")
}

fn owned_by(p: &Pod, rc: &str) -> bool {
    p.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.name == rc && r.controller == Some(true))
}

fn running_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && xkube_api::pod::is_ready(p)
}

/// Waits until exactly `n` active pods owned by `rc` run (and are ready); returns them.
async fn wait_rc_pods(c: &Cluster, rc: &str, n: usize) -> Vec<Pod> {
    eventually(&format!("{n} running pods of rc {rc}"), || async {
        let pods: Vec<Pod> = c
            .list_pods("default", &format!("app={rc}"))
            .await
            .into_iter()
            .filter(|p| owned_by(p, rc) && p.metadata.deletion_timestamp.is_none())
            .collect();
        (pods.len() == n && pods.iter().all(running_ready)).then_some(pods)
    })
    .await
}

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rc_spreads_pods_replaces_releases_and_scales() {
    let c = Cluster::start(|_| {}).await;
    let kubelet = FakeKubelet::start(&c.client, Duration::from_millis(500), &c.shutdown).await;
    for n in ["node-a", "node-b", "node-c"] {
        kubelet.add_node(n, "4", "8Gi").await;
    }
    let rcs: Api<ReplicationController> = Api::namespaced(c.client.clone(), "default");
    rcs.create(&rc_json("web", 4)).await.expect("rc created");

    // Four pods, named <rc>-<5 chars>, spread over the three nodes.
    let pods = wait_rc_pods(&c, "web", 4).await;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &pods {
        let suffix = p
            .name()
            .strip_prefix("web-")
            .expect("pod named after its rc");
        assert!(
            suffix.len() == 5
                && suffix
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit()),
            "pod name {}",
            p.name()
        );
        *per_node.entry(node_of(p)).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "spread over every node: {per_node:?}");
    assert!(
        per_node.values().all(|n| *n <= 2),
        "no node holds more than 2: {per_node:?}"
    );

    // The scheduler said so.
    let first = &pods[0];
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let want = format!(
        "Successfully assigned default/{} to {}",
        first.name(),
        node_of(first)
    );
    eventually("Scheduled event", || async {
        let evs = events
            .list(&ListParams::default())
            .await
            .expect("events")
            .items;
        evs.iter()
            .any(|e| {
                e.reason.as_deref() == Some("Scheduled")
                    && e.message.as_deref() == Some(want.as_str())
            })
            .then_some(())
    })
    .await;

    // Status.
    eventually("rc status", || async {
        let rc = rcs.get("web").await.expect("rc");
        let s = rc.status.clone().unwrap_or_default();
        (s.replicas == 4
            && s.ready_replicas == Some(4)
            && s.available_replicas == Some(4)
            && s.observed_generation == rc.metadata.generation)
            .then_some(())
    })
    .await;

    // Delete one: replaced.
    let victim = pods[0].name().to_string();
    c.pods("default")
        .delete(&victim, &DeleteParams::default())
        .await
        .expect("delete pod");
    let pods = eventually("replacement pod", || async {
        let pods = wait_rc_pods(&c, "web", 4).await;
        pods.iter().all(|p| p.name() != victim).then_some(pods)
    })
    .await;

    // Relabel one: released (no owner reference) and replaced.
    let relabelled = pods[0].name().to_string();
    c.pods("default")
        .patch(
            &relabelled,
            &Patch::Merge(json!({"metadata": {"labels": {"app": "debug"}}})),
        )
        .await
        .expect("relabel");
    let pods = wait_rc_pods(&c, "web", 4).await;
    assert!(
        pods.iter().all(|p| p.name() != relabelled),
        "relabelled pod no longer counted"
    );
    let released = eventually("released pod", || async {
        let p = c
            .pods("default")
            .get(&relabelled)
            .await
            .expect("released pod still exists");
        (!owned_by(&p, "web")).then_some(p)
    })
    .await;
    assert!(
        released.metadata.deletion_timestamp.is_none(),
        "released, not deleted"
    );

    // Scale to 0 and to 10.
    rcs.scale("web", 0).await.expect("scale to 0");
    wait_rc_pods(&c, "web", 0).await;
    rcs.scale("web", 10).await.expect("scale to 10");
    let pods = wait_rc_pods(&c, "web", 10).await;
    let nodes: HashSet<String> = pods.iter().map(node_of).collect();
    assert_eq!(nodes.len(), 3, "ten pods on all three nodes");
    eventually("rc status after scale", || async {
        let s = rcs.get("web").await.expect("rc").status.unwrap_or_default();
        (s.replicas == 10 && s.ready_replicas == Some(10)).then_some(())
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_readiness_and_named_ports() {
    let c = Cluster::start(|_| {}).await;
    let kubelet = FakeKubelet::start(&c.client, Duration::from_millis(500), &c.shutdown).await;
    kubelet.add_node("node-a", "4", "8Gi").await;
    let svcs: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                           {"name": "admin", "port": 9000, "targetPort": 9001}]}
    }))
    .expect("service literal");
    svcs.create(&svc).await.expect("service created");
    // Pods with different container ports behind the name "http".
    for (name, port) in [("web-1", 8080), ("web-2", 8081)] {
        let mut p = pod_json(name, json!({"app": "web"}), "100m");
        p["spec"]["containers"][0]["ports"] = json!([{"name": "http", "containerPort": port}]);
        c.pods("default")
            .create(&serde_json::from_value(p).expect("pod"))
            .await
            .expect("pod created");
    }
    let eps: Api<Endpoints> = Api::namespaced(c.client.clone(), "default");
    let summary = |e: &Endpoints| {
        let mut ready = Vec::new();
        let mut not_ready = Vec::new();
        for s in e.subsets.iter().flatten() {
            let mut ports: Vec<i32> = s.ports.iter().flatten().map(|p| p.port).collect();
            ports.sort();
            for a in s.addresses.iter().flatten() {
                let pod = a
                    .target_ref
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_default();
                assert_eq!(
                    a.node_name.as_deref(),
                    Some("node-a"),
                    "nodeName on addresses"
                );
                ready.push((pod, ports.clone()));
            }
            for a in s.not_ready_addresses.iter().flatten() {
                let pod = a
                    .target_ref
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_default();
                not_ready.push((pod, ports.clone()));
            }
        }
        ready.sort();
        not_ready.sort();
        (ready, not_ready)
    };
    eventually(
        "both pods ready in endpoints with per-pod named ports",
        || async {
            let e = eps.get_opt("web").await.expect("get endpoints")?;
            let (ready, not_ready) = summary(&e);
            (ready
                == vec![
                    ("web-1".to_string(), vec![8080, 9001]),
                    ("web-2".to_string(), vec![8081, 9001]),
                ]
                && not_ready.is_empty())
            .then_some(())
        },
    )
    .await;

    kubelet.set_ready("default/web-2", false);
    eventually("web-2 moves to notReadyAddresses", || async {
        let e = eps.get_opt("web").await.expect("get endpoints")?;
        let (ready, not_ready) = summary(&e);
        (ready.len() == 1 && not_ready == vec![("web-2".to_string(), vec![8081, 9001])])
            .then_some(())
    })
    .await;
    // Condition times have second resolution: the flip back must be a later second to count
    // as a new change for the trigger time.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    kubelet.set_ready("default/web-2", true);
    eventually("web-2 ready again", || async {
        let e = eps.get_opt("web").await.expect("get endpoints")?;
        (summary(&e).0.len() == 2).then_some(())
    })
    .await;
    // The update carries the time of the readiness change that triggered it.
    let e = eps
        .get_opt("web")
        .await
        .expect("get endpoints")
        .expect("endpoints");
    let trigger: jiff::Timestamp = e
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(xkube_controllers::endpoints::LAST_CHANGE_TRIGGER_TIME))
        .unwrap_or_else(|| panic!("no trigger time annotation on {:?}", e.metadata))
        .parse()
        .expect("an RFC 3339 trigger time");
    let created = svcs
        .get("web")
        .await
        .expect("service")
        .metadata
        .creation_timestamp
        .expect("creation timestamp")
        .0;
    assert!(
        trigger > created,
        "a pod's readiness, not the Service's creation"
    );

    // Headless services get Endpoints too.
    let headless: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web-headless"},
        "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 80}]}
    }))
    .expect("headless literal");
    svcs.create(&headless).await.expect("headless created");
    eventually("headless endpoints", || async {
        let e = eps.get_opt("web-headless").await.expect("get")?;
        (summary(&e).0.len() == 2).then_some(())
    })
    .await;

    // A selector-less Service's manual Endpoints are left alone.
    let manual: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "external"},
        "spec": {"ports": [{"port": 5432}]}
    }))
    .expect("manual svc literal");
    svcs.create(&manual).await.expect("manual svc");
    let manual_ep: Endpoints = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "external"},
        "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 5432}]}]
    }))
    .expect("manual endpoints literal");
    eps.create(&manual_ep).await.expect("manual endpoints");

    // Deleting the Service deletes its Endpoints.
    svcs.delete("web", &DeleteParams::default())
        .await
        .expect("delete service");
    eventually("endpoints removed with the service", || async {
        eps.get_opt("web")
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
    // Give the controller time to (wrongly) touch the manual Endpoints, then check.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let e = eps
        .get("external")
        .await
        .expect("manual endpoints still there");
    assert_eq!(
        e.subsets
            .as_ref()
            .and_then(|s| s[0].addresses.as_ref())
            .map(|a| a[0].ip.clone())
            .as_deref(),
        Some("192.0.2.10"),
        "manual endpoints untouched"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_mirrored_into_endpoint_slices() {
    let c = Cluster::start(|_| {}).await;
    let eps: Api<Endpoints> = Api::namespaced(c.client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(c.client.clone(), "default");
    // Selector-less Services: their Endpoints are the user's (the endpoints controller deletes
    // Endpoints without a Service).
    let svcs: Api<Service> = Api::namespaced(c.client.clone(), "default");
    for name in ["web", "db"] {
        let svc: Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"ports": [{"port": 80}]}
        }))
        .expect("service literal");
        svcs.create(&svc).await.expect("service created");
    }
    let ep: Endpoints = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web"},
        "subsets": [{"addresses": [{"ip": "10.1.0.1"}, {"ip": "10.1.0.2"}], "ports": [{"port": 80}]}]
    }))
    .expect("endpoints literal");
    let ep = eps.create(&ep).await.expect("endpoints created");
    let s = eventually("the mirrored slice", || async {
        slices.get_opt("web").await.expect("get slice")
    })
    .await;
    let labels = s.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/service-name").map(String::as_str),
        Some("web")
    );
    assert_eq!(s.endpoints.len(), 2);
    assert_eq!(
        s.metadata
            .owner_references
            .as_ref()
            .map(|o| o[0].uid.as_str()),
        Some(ep.uid())
    );

    // A second subset is a second slice.
    let mut two = ep.clone();
    two.subsets = serde_json::from_value(json!([
        {"addresses": [{"ip": "10.1.0.1"}], "ports": [{"port": 80}]},
        {"addresses": [{"ip": "10.1.0.3"}], "ports": [{"port": 81}]}]))
    .expect("subsets");
    let two = eps.replace("web", &two).await.expect("two subsets");
    let second = eventually("the second slice", || async {
        slices.get_opt("web-1").await.expect("get slice")
    })
    .await;
    assert_eq!(second.ports.as_ref().map(|p| p[0].port), Some(Some(81)));

    // Back to one subset: the second slice goes, and the trigger time annotation follows the
    // Endpoints.
    let mut one = two.clone();
    one.subsets = serde_json::from_value(json!([
        {"addresses": [{"ip": "10.1.0.4"}], "ports": [{"port": 80}]}]))
    .expect("subsets");
    let trigger = xkube_controllers::endpoints::LAST_CHANGE_TRIGGER_TIME;
    one.metadata.annotations = Some(BTreeMap::from([(
        trigger.to_string(),
        "2026-12-05T08:00:00Z".to_string(),
    )]));
    eps.replace("web", &one).await.expect("one subset");
    eventually("slices follow the subsets and annotations", || async {
        let first = slices.get_opt("web").await.expect("get slice")?;
        let gone = slices.get_opt("web-1").await.expect("get slice").is_none();
        let annotated = first
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(trigger))
            == Some(&"2026-12-05T08:00:00Z".to_string());
        (gone && annotated && first.endpoints[0].addresses == ["10.1.0.4"]).then_some(())
    })
    .await;

    // A slice of another manager under a name the mirror would use is left alone.
    let foreign: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "db", "labels": {"kubernetes.io/service-name": "db",
            "endpointslice.kubernetes.io/managed-by": "someone-else"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.1.0.9"]}]
    }))
    .expect("slice literal");
    slices.create(&foreign).await.expect("foreign slice");
    // Two subsets: the mirror writes `db-1` once it has reconciled `db`, which tells the test
    // that it has also passed over the foreign `db`.
    let db: Endpoints = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "db"},
        "subsets": [{"addresses": [{"ip": "10.1.0.5"}], "ports": [{"port": 5432}]},
                    {"addresses": [{"ip": "10.1.0.6"}], "ports": [{"port": 5433}]}]
    }))
    .expect("endpoints literal");
    eps.create(&db).await.expect("db endpoints");
    eventually("db reconciled (its second slice)", || async {
        slices.get_opt("db-1").await.expect("get slice")
    })
    .await;

    // Deleting the Endpoints deletes their slices.
    eps.delete("web", &DeleteParams::default())
        .await
        .expect("delete endpoints");
    eventually("slice removed with its Endpoints", || async {
        slices
            .get_opt("web")
            .await
            .expect("get slice")
            .is_none()
            .then_some(())
    })
    .await;
    let kept = slices.get("db").await.expect("foreign slice kept");
    assert_eq!(kept.endpoints[0].addresses, ["10.1.0.9"]);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_turns_unknown_and_its_pods_move_to_other_nodes() {
    let c = Cluster::start(|_| {}).await;
    let kubelet = FakeKubelet::start(&c.client, Duration::from_millis(300), &c.shutdown).await;
    for n in ["node-a", "node-b", "node-c"] {
        kubelet.add_node(n, "4", "8Gi").await;
    }
    let nodes: Api<Node> = Api::all(c.client.clone());
    // podCIDRs: distinct /24s of 10.244.0.0/16.
    let cidrs = eventually("podCIDRs allocated", || async {
        let list = nodes
            .list(&ListParams::default())
            .await
            .expect("nodes")
            .items;
        let cidrs: HashSet<String> = list
            .iter()
            .filter_map(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.clone()))
            .collect();
        (cidrs.len() == 3).then_some(cidrs)
    })
    .await;
    assert!(
        cidrs
            .iter()
            .all(|c| c.starts_with("10.244.") && c.ends_with(".0/24")),
        "{cidrs:?}"
    );

    let rcs: Api<ReplicationController> = Api::namespaced(c.client.clone(), "default");
    rcs.create(&rc_json("app", 4)).await.expect("rc created");
    let pods = wait_rc_pods(&c, "app", 4).await;
    let dead = node_of(&pods[0]);
    let on_dead: HashSet<String> = pods
        .iter()
        .filter(|p| node_of(p) == dead)
        .map(|p| p.name().to_string())
        .collect();

    kubelet.stop_node(&dead);
    eventually("node Ready=Unknown with the unreachable taint", || async {
        let n = nodes.get(&dead).await.expect("node");
        let unknown = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "Unknown");
        let tainted = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute");
        (unknown && tainted).then_some(())
    })
    .await;

    // Its pods are evicted and the RC runs four pods on the other nodes.
    let pods = eventually("pods recreated on the healthy nodes", || async {
        let pods = wait_rc_pods(&c, "app", 4).await;
        pods.iter().all(|p| node_of(p) != dead).then_some(pods)
    })
    .await;
    assert!(pods.iter().all(|p| !on_dead.contains(p.name())));
    eventually("evicted pods gone", || async {
        let all = c.list_pods("default", "app=app").await;
        all.iter()
            .all(|p| !on_dead.contains(p.name()))
            .then_some(())
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_removes_its_contents_then_itself() {
    let c = Cluster::start(|_| {}).await;
    let kubelet = FakeKubelet::start(&c.client, Duration::from_millis(500), &c.shutdown).await;
    kubelet.add_node("node-a", "4", "8Gi").await;
    let nss: Api<Namespace> = Api::all(c.client.clone());
    let ns: Namespace = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
    )
    .expect("ns literal");
    nss.create(&ns).await.expect("namespace created");
    let rcs: Api<ReplicationController> = Api::namespaced(c.client.clone(), "team");
    rcs.create(&rc_json("db", 2)).await.expect("rc");
    let svcs: Api<Service> = Api::namespaced(c.client.clone(), "team");
    svcs.create(
        &serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
            "spec": {"selector": {"app": "db"}, "ports": [{"port": 5432}]}}),
        )
        .expect("svc"),
    )
    .await
    .expect("service");
    let team_pods: Api<Pod> = Api::namespaced(c.client.clone(), "team");
    eventually("pods running in team", || async {
        let pods = team_pods
            .list(&ListParams::default())
            .await
            .expect("pods")
            .items;
        (pods.len() == 2 && pods.iter().all(running_ready)).then_some(())
    })
    .await;

    let gone = nss
        .delete("team", &DeleteParams::default())
        .await
        .expect("delete namespace");
    assert_eq!(
        gone["status"]["phase"], "Terminating",
        "deletion answers a Terminating namespace: {gone}"
    );
    eventually("namespace and contents gone", || async {
        nss.get_opt("team")
            .await
            .expect("get ns")
            .is_none()
            .then_some(())
    })
    .await;
    for plural in [
        "pods",
        "replicationcontrollers",
        "services",
        "endpoints",
        "serviceaccounts",
        "secrets",
    ] {
        let res = xkube_api::RESOURCES
            .iter()
            .find(|r| r.plural == plural)
            .expect("resource");
        let list = Api::dynamic(c.client.clone(), res, Some("team"))
            .list(&ListParams::default())
            .await
            .expect("list");
        assert!(
            list.items.is_empty(),
            "{plural} left in the deleted namespace: {}",
            list.items.len()
        );
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_pod_reports_why_and_schedules_when_a_fitting_node_appears() {
    let c = Cluster::start(|_| {}).await;
    let kubelet = FakeKubelet::start(&c.client, Duration::from_millis(500), &c.shutdown).await;
    for n in ["small-a", "small-b", "small-c"] {
        kubelet.add_node(n, "1", "2Gi").await;
    }
    let big: Pod =
        serde_json::from_value(pod_json("big", json!({"app": "big"}), "2")).expect("pod");
    c.pods("default").create(&big).await.expect("pod created");
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let ev = eventually("FailedScheduling event", || async {
        let evs = events
            .list(&ListParams::default())
            .await
            .expect("events")
            .items;
        evs.into_iter().find(|e| {
            e.reason.as_deref() == Some("FailedScheduling")
                && e.involved_object.name.as_deref() == Some("big")
        })
    })
    .await;
    assert_eq!(
        ev.message.as_deref(),
        Some("0/3 nodes are available: 3 Insufficient cpu.")
    );
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    let p = c.pods("default").get("big").await.expect("pod");
    assert_eq!(node_of(&p), "", "still pending");

    kubelet.add_node("big-node", "4", "8Gi").await;
    let p = eventually("pod scheduled on the new node", || async {
        let p = c.pods("default").get("big").await.expect("pod");
        (!node_of(&p).is_empty()).then_some(p)
    })
    .await;
    assert_eq!(node_of(&p), "big-node");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_namespaces_get_a_default_service_account_with_a_signed_token() {
    let c = Cluster::start(|_| {}).await;
    let nss: Api<Namespace> = Api::all(c.client.clone());
    nss.create(
        &serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}),
        )
        .expect("ns"),
    )
    .await
    .expect("namespace");
    let sas: Api<ServiceAccount> = Api::namespaced(c.client.clone(), "apps");
    let (sa, secret_name) = eventually("default service account referencing its token", || async {
        let sa = sas.get_opt("default").await.expect("get sa")?;
        let name = sa.secrets.as_ref()?.first()?.name.clone()?;
        Some((sa, name))
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), "apps");
    let secret = secrets.get(&secret_name).await.expect("token secret");
    assert_eq!(
        secret.type_.as_deref(),
        Some("kubernetes.io/service-account-token")
    );
    let ann = secret.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        ann.get("kubernetes.io/service-account.name")
            .map(String::as_str),
        Some("default")
    );
    assert_eq!(
        ann.get("kubernetes.io/service-account.uid")
            .map(String::as_str),
        Some(sa.uid())
    );
    let data = secret.data.clone().unwrap_or_default();
    assert_eq!(
        data.get("namespace").map(|b| b.0.as_slice()),
        Some(&b"apps"[..])
    );
    let token =
        String::from_utf8(data.get("token").expect("token key").0.clone()).expect("utf-8 token");
    // The apiserver's own verifier accepts it.
    let verifier =
        xkube_apiserver::satoken::Verifier::from_file(&c.opts.service_account_key_path())
            .expect("verifier from the key file");
    let claims = verifier.verify(&token).expect("token verifies");
    assert_eq!(claims.sub, "system:serviceaccount:apps:default");
    assert_eq!(claims.secret_name, secret_name);
    assert_eq!(claims.service_account_uid, sa.uid());
    // The default namespace has one too.
    let def: Api<ServiceAccount> = Api::namespaced(c.client.clone(), "default");
    eventually("default/default service account", || async {
        def.get_opt("default").await.expect("get").map(|_| ())
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_usage_stays_current_and_terminated_pods_are_collected() {
    let c = Cluster::start(|o| o.terminated_pod_gc_threshold = 1).await;
    let quotas: Api<ResourceQuota> = Api::namespaced(c.client.clone(), "default");
    let rq: ResourceQuota = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "compute"},
        "spec": {"hard": {"pods": "10", "services": "5", "replicationcontrollers": "3",
                          "secrets": "10", "requests.cpu": "4", "requests.memory": "8Gi"}}
    }))
    .expect("quota literal");
    quotas.create(&rq).await.expect("quota");
    for (name, cpu) in [("q1", "250m"), ("q2", "500m")] {
        c.pods("default")
            .create(&serde_json::from_value(pod_json(name, json!({"app": "q"}), cpu)).expect("pod"))
            .await
            .expect("pod");
    }
    let svcs: Api<Service> = Api::namespaced(c.client.clone(), "default");
    svcs.create(
        &serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "q"},
            "spec": {"selector": {"app": "q"}, "ports": [{"port": 80}]}}),
        )
        .expect("svc"),
    )
    .await
    .expect("service");
    let used = |rq: &ResourceQuota| -> BTreeMap<String, String> {
        rq.status
            .as_ref()
            .and_then(|s| s.used.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    };
    eventually(
        "quota usage with two pods and the kubernetes service",
        || async {
            let u = used(&quotas.get("compute").await.expect("quota"));
            (u.get("pods").map(String::as_str) == Some("2")
                && u.get("services").map(String::as_str) == Some("2")
                && u.get("requests.cpu").map(String::as_str) == Some("750m")
                && u.get("requests.memory").map(String::as_str) == Some("128Mi")
                && u.get("replicationcontrollers").map(String::as_str) == Some("0"))
            .then_some(())
        },
    )
    .await;

    // Both pods finish: they stop counting, and pod GC keeps only one.
    for name in ["q1", "q2"] {
        c.pods("default")
            .patch_status(
                name,
                &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
            )
            .await
            .expect("pod finished");
    }
    eventually("finished pods stop counting", || async {
        let u = used(&quotas.get("compute").await.expect("quota"));
        (u.get("pods").map(String::as_str) == Some("0")
            && u.get("requests.cpu").map(String::as_str) == Some("0"))
        .then_some(())
    })
    .await;
    eventually(
        "terminated pods collected down to the threshold",
        || async {
            let pods = c.list_pods("default", "app=q").await;
            (pods.len() == 1).then_some(())
        },
    )
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_events_are_counted_on_one_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = xkube_apiserver::testing::TestServer::builder(dir.path())
        .memory()
        .start()
        .await
        .expect("apiserver");
    let client =
        xkube_client::Client::from_flags(None, server.http_url().as_deref()).expect("client");
    let rec = xkube_client::runtime::EventRecorder::new(client.clone(), "test");
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p", "namespace": "default", "uid": "u1"}}),
    )
    .expect("pod");
    let r = xkube_client::runtime::object_ref(&pod);
    let first = rec
        .try_record(&r, "Warning", "FailedScheduling", "0/1 nodes are available")
        .await
        .expect("first");
    let second = rec
        .try_record(&r, "Warning", "FailedScheduling", "0/1 nodes are available")
        .await
        .expect("second");
    rec.try_record(&r, "Warning", "FailedScheduling", "another message")
        .await
        .expect("third");
    assert_eq!(first.name(), second.name(), "same event object");
    assert_eq!(second.count, Some(2));
    assert!(
        second.last_timestamp.as_ref().map(|t| t.0) >= first.last_timestamp.as_ref().map(|t| t.0)
    );
    let evs = Api::<Event>::namespaced(client, "default")
        .list(&ListParams::default())
        .await
        .expect("events")
        .items;
    assert_eq!(evs.len(), 2, "a different message is a different event");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_created_together_never_overcommit_a_node() {
    let c = Cluster::start(|_| {}).await;
    let kubelet = FakeKubelet::start(&c.client, Duration::from_millis(500), &c.shutdown).await;
    kubelet.add_node("only", "1", "4Gi").await;
    let api = c.pods("default");
    let creates = ["p1", "p2", "p3"].map(|n| {
        let api = api.clone();
        async move {
            let p: Pod =
                serde_json::from_value(pod_json(n, json!({"app": "burst"}), "400m")).expect("pod");
            api.create(&p).await.expect("pod created");
        }
    });
    futures::future::join_all(creates).await;
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let ev = eventually("the third pod does not fit", || async {
        let evs = events
            .list(&ListParams::default())
            .await
            .expect("events")
            .items;
        evs.into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
    })
    .await;
    assert_eq!(
        ev.message.as_deref(),
        Some("0/1 nodes are available: 1 Insufficient cpu.")
    );
    let pods = eventually("two pods bound", || async {
        let pods = c.list_pods("default", "app=burst").await;
        (pods.iter().filter(|p| !node_of(p).is_empty()).count() == 2).then_some(pods)
    })
    .await;
    assert_eq!(pods.len(), 3);
    // Freeing room lets the third one in.
    let bound = pods
        .iter()
        .find(|p| !node_of(p).is_empty())
        .expect("a bound pod");
    api.delete(bound.name(), &DeleteParams::default())
        .await
        .expect("delete");
    eventually(
        "the waiting pod is scheduled once room is freed",
        || async {
            let pods = c.list_pods("default", "app=burst").await;
            (pods.len() == 2 && pods.iter().all(|p| !node_of(p).is_empty())).then_some(())
        },
    )
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_a_deleted_node_are_removed() {
    let c = Cluster::start(|_| {}).await;
    let kubelet = FakeKubelet::start(&c.client, Duration::from_millis(500), &c.shutdown).await;
    kubelet.add_node("doomed", "4", "8Gi").await;
    let mut p = pod_json("stranded", json!({"app": "s"}), "100m");
    p["spec"]["nodeName"] = json!("doomed");
    c.pods("default")
        .create(&serde_json::from_value(p).expect("pod"))
        .await
        .expect("pod bound at creation");
    eventually("pod running", || async {
        let p = c.pods("default").get("stranded").await.expect("pod");
        running_ready(&p).then_some(())
    })
    .await;
    kubelet.stop_node("doomed");
    Api::<Node>::all(c.client.clone())
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete node");
    eventually("pod of the deleted node removed", || async {
        c.pods("default")
            .get_opt("stranded")
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
    c.stop().await;
}

fn taint_keys(n: &Node) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.effect))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_node_is_tainted_avoided_and_untainted_when_it_recovers() {
    // Eviction is pushed out so that this test sees only the taints.
    let c = Cluster::start(|o| o.pod_eviction_timeout = Duration::from_secs(600)).await;
    let kubelet = FakeKubelet::start(&c.client, Duration::from_millis(200), &c.shutdown).await;
    kubelet.add_node("sick", "4", "8Gi").await;
    kubelet.add_node("well", "4", "8Gi").await;
    kubelet.set_node_ready("sick", false);
    let nodes: Api<Node> = Api::all(c.client.clone());
    let not_ready = vec![
        (
            "node.kubernetes.io/not-ready".to_string(),
            "NoExecute".to_string(),
        ),
        (
            "node.kubernetes.io/not-ready".to_string(),
            "NoSchedule".to_string(),
        ),
    ];
    eventually("not-ready taints", || async {
        let n = nodes.get("sick").await.expect("node");
        (taint_keys(&n) == not_ready).then_some(())
    })
    .await;
    for i in 0..4 {
        let p: Pod =
            serde_json::from_value(pod_json(&format!("p{i}"), json!({"app": "nr"}), "100m"))
                .expect("pod");
        c.pods("default").create(&p).await.expect("pod");
    }
    let pods = eventually("pods bound", || async {
        let pods = c.list_pods("default", "app=nr").await;
        pods.iter().all(|p| !node_of(p).is_empty()).then_some(pods)
    })
    .await;
    assert!(
        pods.iter().all(|p| node_of(p) == "well"),
        "nothing on the NotReady node"
    );
    kubelet.set_node_ready("sick", true);
    eventually("taints removed on recovery", || async {
        let n = nodes.get("sick").await.expect("node");
        taint_keys(&n).is_empty().then_some(())
    })
    .await;
    c.stop().await;
}
