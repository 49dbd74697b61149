//! Deployments, ReplicaSets and the garbage collector against an in-process apiserver with the
//! controller-manager, the scheduler and a fake kubelet.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use serde_json::{Value, json};
use support::{Cluster, FakeKubelet, eventually};
use xkube_client::{Api, DeleteParams, ListParams, Object, Patch, PropagationPolicy};

const REVISION: &str = "deployment.kubernetes.io/revision";

fn template(app: &str, image: &str) -> Value {
    json!({"metadata": {"labels": {"app": app}},
           "spec": {"containers": [{"name": "c", "image": image}]}})
}

fn deployment(name: &str, replicas: i32, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "strategy": {"type": "RollingUpdate",
                              "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
                 "template": template(name, image)}
    }))
    .expect("deployment literal")
}

fn ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && xkube_api::pod::is_ready(p)
}

fn image(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// Waits until the Deployment reports every replica updated and available at its latest
/// generation (what `kubectl rollout status` waits for) with `n` ready pods of `image`.
async fn wait_rolled_out(c: &Cluster, name: &str, n: i32, img: &str) -> Deployment {
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    eventually(
        &format!("deployment {name} rolled out to {img}"),
        || async {
            let d = api.get(name).await.ok()?;
            let st = d.status.clone()?;
            let done = st.observed_generation >= d.metadata.generation
                && st.updated_replicas == Some(n)
                && st.replicas == Some(n)
                && st.available_replicas == Some(n);
            let pods = c.list_pods("default", &format!("app={name}")).await;
            let live: Vec<&Pod> = pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            (done && live.len() == n as usize && live.iter().all(|p| ready(p) && image(p) == img))
                .then_some(d)
        },
    )
    .await
}

fn revision_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .cloned()
        .unwrap_or_default()
}

async fn replica_sets(c: &Cluster, app: &str) -> Vec<ReplicaSet> {
    let api: Api<ReplicaSet> = Api::namespaced(c.client.clone(), "default");
    api.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list replica sets")
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolls_keeping_availability_undoes_and_pauses() {
    let c = Cluster::start(|_| {}).await;
    let kubelet = FakeKubelet::start(&c.client, Duration::from_millis(500), &c.shutdown).await;
    for n in ["node-a", "node-b"] {
        kubelet.add_node(n, "4", "8Gi").await;
    }
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    api.create(&deployment("web", 4, "v1"))
        .await
        .expect("deployment created");
    let d = wait_rolled_out(&c, "web", 4, "v1").await;
    assert_eq!(revision_of(&d.metadata), "1");
    let progressing = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Progressing"))
        .expect("Progressing condition");
    assert_eq!(
        progressing.reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );

    // Sample ready pods while rolling to v2 with maxUnavailable 1: never fewer than 3.
    let min_ready = Arc::new(AtomicUsize::new(usize::MAX));
    let samples = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (client, min_ready, samples) = (c.client.clone(), min_ready.clone(), samples.clone());
        tokio::spawn(async move {
            let pods: Api<Pod> = Api::namespaced(client, "default");
            // Bounded: at most 30 s of 20 ms samples.
            for _ in 0..1500 {
                let list = pods
                    .list(&ListParams::default().labels("app=web"))
                    .await
                    .expect("list pods");
                let n = list.items.iter().filter(|p| ready(p)).count();
                min_ready.fetch_min(n, Ordering::Relaxed);
                samples.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let patch = json!({"spec": {"template": template("web", "v2")}});
    api.patch("web", &Patch::Merge(patch))
        .await
        .expect("new template");
    let d = wait_rolled_out(&c, "web", 4, "v2").await;
    sampler.abort();
    let min = min_ready.load(Ordering::Relaxed);
    assert!(samples.load(Ordering::Relaxed) > 5, "sampled the rollout");
    assert!(min >= 3, "ready pods dropped to {min} during the rollout");
    assert_eq!(revision_of(&d.metadata), "2");
    let rss = replica_sets(&c, "web").await;
    assert_eq!(rss.len(), 2, "one ReplicaSet per template");
    let old = rss
        .iter()
        .find(|rs| revision_of(&rs.metadata) == "1")
        .expect("revision 1 kept in the history");
    assert_eq!(old.spec.as_ref().and_then(|s| s.replicas), Some(0));
    let hash = old
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"))
        .expect("pod-template-hash label")
        .clone();
    assert_eq!(old.name(), format!("web-{hash}"));

    // `kubectl rollout undo`: the template of revision 1 (without its hash label) goes back.
    let mut t =
        serde_json::to_value(old.spec.as_ref().and_then(|s| s.template.clone())).expect("template");
    t["metadata"]["labels"]
        .as_object_mut()
        .expect("labels")
        .remove("pod-template-hash");
    let undo = json!([{"op": "replace", "path": "/spec/template", "value": t}]);
    api.patch("web", &Patch::Json(undo)).await.expect("undo");
    let d = wait_rolled_out(&c, "web", 4, "v1").await;
    assert_eq!(revision_of(&d.metadata), "3");
    let rss = replica_sets(&c, "web").await;
    assert_eq!(rss.len(), 2, "the old ReplicaSet was reused");
    let back = rss
        .iter()
        .find(|rs| rs.name() == old.name())
        .expect("revision 1's ReplicaSet");
    assert_eq!(revision_of(&back.metadata), "3");
    assert_eq!(
        back.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("deployment.kubernetes.io/revision-history"))
            .map(String::as_str),
        Some("1")
    );

    // Paused: a new template makes no ReplicaSet; resumed, it rolls.
    api.patch("web", &Patch::Merge(json!({"spec": {"paused": true}})))
        .await
        .expect("pause");
    api.patch(
        "web",
        &Patch::Merge(json!({"spec": {"template": template("web", "v3")}})),
    )
    .await
    .expect("template while paused");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        replica_sets(&c, "web").await.len(),
        2,
        "no rollout while paused"
    );
    api.patch("web", &Patch::Merge(json!({"spec": {"paused": false}})))
        .await
        .expect("resume");
    wait_rolled_out(&c, "web", 4, "v3").await;

    // Scale through the scale subresource.
    api.scale("web", 2).await.expect("scale");
    wait_rolled_out(&c, "web", 2, "v3").await;
    c.stop().await;
}

/// Polls until no pod labelled `app=<app>` is left; returns how long it took.
async fn wait_no_pods(c: &Cluster, app: &str, start: Instant) -> Duration {
    eventually(&format!("no pod of {app} left"), || async {
        c.list_pods("default", &format!("app={app}"))
            .await
            .is_empty()
            .then(|| start.elapsed())
    })
    .await
}

async fn wait_pods(c: &Cluster, app: &str, n: usize) {
    eventually(&format!("{n} pods of {app}"), || async {
        let pods = c.list_pods("default", &format!("app={app}")).await;
        (pods.iter().filter(|p| ready(p)).count() == n).then_some(())
    })
    .await
}

fn rc(name: &str, replicas: i32) -> ReplicationController {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"app": name}, "template": template(name, "i")}
    }))
    .expect("rc literal")
}

fn replica_set(name: &str, replicas: i32) -> ReplicaSet {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": template(name, "i")}
    }))
    .expect("replica set literal")
}

fn policy(p: PropagationPolicy) -> DeleteParams {
    DeleteParams {
        propagation_policy: Some(p),
        ..DeleteParams::default()
    }
}

const N: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_owners_of_300_pods_cascades_or_orphans() {
    let c = Cluster::start(|_| {}).await;
    let kubelet = FakeKubelet::start(&c.client, Duration::from_millis(500), &c.shutdown).await;
    for n in ["node-a", "node-b", "node-c"] {
        kubelet.add_node(n, "64", "256Gi").await;
    }
    let rcs: Api<ReplicationController> = Api::namespaced(c.client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(c.client.clone(), "default");
    let deps: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let mut report = Vec::new();

    // An RC in the background, a ReplicaSet in the foreground, a Deployment in the
    // background: no pod is left behind, however far the controllers had got.
    rcs.create(&rc("rc-bg", N as i32)).await.expect("rc");
    wait_pods(&c, "rc-bg", N).await;
    let t = Instant::now();
    rcs.delete("rc-bg", &policy(PropagationPolicy::Background))
        .await
        .expect("delete rc");
    report.push((
        "ReplicationController, Background",
        wait_no_pods(&c, "rc-bg", t).await,
    ));

    rss.create(&replica_set("rs-fg", N as i32))
        .await
        .expect("rs");
    wait_pods(&c, "rs-fg", N).await;
    let t = Instant::now();
    rss.delete("rs-fg", &policy(PropagationPolicy::Foreground))
        .await
        .expect("delete rs");
    // Foreground: the owner stays (with its finalizer) until its pods are gone.
    let rs = rss
        .get("rs-fg")
        .await
        .expect("owner kept while dependents go");
    assert_eq!(
        rs.metadata.finalizers,
        Some(vec!["foregroundDeletion".to_string()])
    );
    report.push(("ReplicaSet, Foreground", wait_no_pods(&c, "rs-fg", t).await));
    eventually("foreground owner gone", || async {
        rss.get_opt("rs-fg")
            .await
            .expect("get rs")
            .is_none()
            .then_some(())
    })
    .await;

    deps.create(&deployment("deploy-bg", N as i32, "i"))
        .await
        .expect("deployment");
    wait_pods(&c, "deploy-bg", N).await;
    let t = Instant::now();
    deps.delete("deploy-bg", &policy(PropagationPolicy::Background))
        .await
        .expect("delete");
    report.push((
        "Deployment, Background",
        wait_no_pods(&c, "deploy-bg", t).await,
    ));
    assert!(
        replica_sets(&c, "deploy-bg").await.is_empty(),
        "its ReplicaSet went too"
    );

    // Deleted while scaling up: the controller's late creates are collected too.
    rcs.create(&rc("rc-race", N as i32)).await.expect("rc");
    eventually("rc-race has some pods", || async {
        (!c.list_pods("default", "app=rc-race").await.is_empty()).then_some(())
    })
    .await;
    let t = Instant::now();
    rcs.delete("rc-race", &policy(PropagationPolicy::Background))
        .await
        .expect("delete");
    report.push((
        "ReplicationController mid-scale-up, Background",
        wait_no_pods(&c, "rc-race", t).await,
    ));

    // Orphan: the pods stay, without an owner reference, and nobody deletes them.
    rcs.create(&rc("rc-or", N as i32)).await.expect("rc");
    wait_pods(&c, "rc-or", N).await;
    let t = Instant::now();
    rcs.delete("rc-or", &policy(PropagationPolicy::Orphan))
        .await
        .expect("delete");
    eventually("orphaned rc gone", || async {
        rcs.get_opt("rc-or")
            .await
            .expect("get rc")
            .is_none()
            .then_some(())
    })
    .await;
    report.push(("ReplicationController, Orphan (owner gone)", t.elapsed()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pods = c.list_pods("default", "app=rc-or").await;
    assert_eq!(pods.len(), N, "orphaned pods stay");
    assert!(
        pods.iter().all(|p| p
            .metadata
            .owner_references
            .as_ref()
            .is_none_or(|r| r.is_empty())),
        "orphaned pods lose their owner reference"
    );
    for (what, took) in report {
        println!("deleting {N} replicas: {what}: {} ms", took.as_millis());
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_stops_every_old_pod_before_starting_new_ones() {
    let c = Cluster::start(|_| {}).await;
    let kubelet = FakeKubelet::start(&c.client, Duration::from_millis(500), &c.shutdown).await;
    kubelet.add_node("node-a", "4", "8Gi").await;
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let mut d = deployment("rec", 3, "v1");
    if let Some(s) = d.spec.as_mut() {
        s.strategy = serde_json::from_value(json!({"type": "Recreate"})).ok();
    }
    api.create(&d).await.expect("deployment created");
    wait_rolled_out(&c, "rec", 3, "v1").await;
    // Sample: never a v2 pod while a v1 pod exists (bounded: 30 s of 20 ms samples).
    let mixed = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (client, mixed) = (c.client.clone(), mixed.clone());
        tokio::spawn(async move {
            let pods: Api<Pod> = Api::namespaced(client, "default");
            for _ in 0..1500 {
                let list = pods
                    .list(&ListParams::default().labels("app=rec"))
                    .await
                    .expect("list pods");
                let has = |img: &str| list.items.iter().any(|p| image(p) == img);
                if has("v1") && has("v2") {
                    mixed.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // One old pod lingers after its deletion (a finalizer someone else holds): Recreate
    // must wait for it to be gone before it starts a new pod.
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let held = c.list_pods("default", "app=rec").await[0]
        .name()
        .to_string();
    pods.patch(
        &held,
        &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
    )
    .await
    .expect("hold a pod");
    api.patch(
        "rec",
        &Patch::Merge(json!({"spec": {"template": template("rec", "v2")}})),
    )
    .await
    .expect("new template");
    eventually("the held pod being deleted", || async {
        let p = pods.get(&held).await.ok()?;
        p.metadata.deletion_timestamp.is_some().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = c.list_pods("default", "app=rec").await;
    assert!(
        now.iter().all(|p| image(p) != "v2"),
        "a new pod started while an old one was still terminating"
    );
    pods.patch(
        &held,
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release the pod");
    wait_rolled_out(&c, "rec", 3, "v2").await;
    sampler.abort();
    assert_eq!(
        mixed.load(Ordering::Relaxed),
        0,
        "old and new pods ran together"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreground_owner_is_not_held_by_a_dependent_another_owner_keeps() {
    let c = Cluster::start(|_| {}).await;
    let rss: Api<ReplicaSet> = Api::namespaced(c.client.clone(), "default");
    let mut uids = Vec::new();
    for name in ["keeper", "leaver"] {
        let rs = rss
            .create(&replica_set(name, 0))
            .await
            .expect("replica set");
        uids.push(rs.uid().to_string());
    }
    // A pod both own (neither as its controller), selected by neither.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "shared", "labels": {"app": "nobody"},
                     "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "keeper", "uid": uids[0]},
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "leaver", "uid": uids[1],
             "blockOwnerDeletion": true}]},
        "spec": {"containers": [{"name": "c", "image": "i"}]}
    }))
    .expect("pod literal");
    c.pods("default").create(&pod).await.expect("pod");
    rss.delete("leaver", &policy(PropagationPolicy::Foreground))
        .await
        .expect("delete");
    // The collector drops the reference instead of deleting the kept pod, and the
    // foreground owner goes.
    eventually("the foreground owner gone", || async {
        rss.get_opt("leaver")
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
    let p = c
        .pods("default")
        .get("shared")
        .await
        .expect("the pod stays");
    let owners: Vec<String> = p
        .metadata
        .owner_references
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect();
    assert_eq!(owners, ["keeper"]);
    c.stop().await;
}
