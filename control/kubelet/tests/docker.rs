//! The docker runtime end to end: the test starts its own dockerd (own socket, data and exec
//! roots; no bridge, no iptables, no registry), imports locally built images (a root
//! filesystem of host tools: sh, sleep, socat, ...), and runs pods through the kubelet with
//! `--runtime docker`: pause container owning the namespaces, app containers joined to it,
//! `k8s_` names, pod network wired into the pause container, ImagePullBackOff for a missing
//! image.

mod common;

use std::{sync::Arc, time::Duration};

use common::{Cluster, dockerd::Dockerd, phase, pod_ip, waiting_reason};
use serde_json::json;
use xkube_client::DeleteParams;
use xkube_cluster::docker;
use xkube_kubelet::{ContainerRuntime, runtime::docker::DockerRuntime};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_runtime_runs_pods_in_a_pause_container_with_k8s_names() {
    let (dockerd, docker) = Dockerd::start("kt").await;
    // The tools image doubles as the pause container (its command sleeps).
    let tar = docker::rootfs_tar(None, dockerd.dir.path()).expect("image root");
    for repo in ["xkube/pause", "xkube/tools"] {
        docker::import_rootfs(&docker, &tar, repo)
            .await
            .expect("image imported");
    }
    let rt: Arc<dyn ContainerRuntime> = Arc::new(
        DockerRuntime::connect(
            &dockerd.engine.socket.to_string_lossy(),
            "xkube/pause:latest",
        )
        .await
        .expect("docker runtime connects"),
    );
    assert!(rt.version().starts_with("docker://20."), "{}", rt.version());
    let rt2 = rt.clone();
    let c = Cluster::start_custom(
        1,
        |o| o.cluster_dns = vec!["10.96.0.10".parse().expect("ip")],
        move |_| Some(rt2.clone()),
    )
    .await;

    c.create_pod(0, json!({
        "metadata": {"name": "duo"},
        "spec": {"terminationGracePeriodSeconds": 2, "containers": [
            {"name": "server", "image": "xkube/tools:0.1.0",
             "command": ["socat", "TCP-LISTEN:8080,reuseaddr,fork", "SYSTEM:echo hello-from-server"]},
            {"name": "client", "image": "xkube/tools:0.1.0", "command": ["sh", "-c",
             "for i in $(seq 1 100); do socat -T2 - TCP:127.0.0.1:8080 </dev/null && break; sleep 0.1; done; hostname; exec sleep 3600"]},
        ]},
    })).await;
    c.create_pod(
        0,
        json!({
            "metadata": {"name": "ghost"},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": "127.0.0.1:1/xkube/does-not-exist:1.0"}]},
        }),
    )
    .await;
    let p = c.wait_running("duo").await;
    let ip = pod_ip(&p);
    assert!(ip.starts_with("10.244.1."), "{ip}");
    let log = c.wait_log(0, "duo", "client", "duo").await;
    assert!(log.contains("hello-from-server"), "{log}");
    // Kubernetes container names, and the containers share the pause container's network.
    let names: Vec<String> = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
        .collect();
    let uid = p.metadata.uid.clone().expect("uid");
    for want in [
        format!("/k8s_POD_duo_default_{uid}_0"),
        format!("/k8s_server_duo_default_{uid}_0"),
        format!("/k8s_client_duo_default_{uid}_0"),
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    let (code, out) = c.exec(0, "duo", "server", &["cat", "/proc/net/fib_trie"]);
    assert!(code == 200 && out.contains(&ip), "{out}");
    // Every container has the pod's resolv.conf, not Docker's own (the containers join the
    // pause container's network, whose file Docker writes from the engine's resolvers).
    for container in ["server", "client"] {
        let (code, out) = c.exec(0, "duo", container, &["cat", "/etc/resolv.conf"]);
        assert_eq!(code, 200);
        assert!(
            out.starts_with(
                "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local"
            ) && out.ends_with("options ndots:5\n"),
            "{container}: {out}"
        );
    }
    let id = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find_map(|c| c.container_id.clone()))
        .expect("container id");
    assert!(id.starts_with("docker://"), "{id}");

    // A missing image: ErrImagePull then ImagePullBackOff, with events, never a hang.
    let ghost = c
        .wait_pod("ghost", "ImagePullBackOff", |p| {
            waiting_reason(p).is_some_and(|r| r == "ImagePullBackOff")
        })
        .await;
    assert_eq!(phase(&ghost), "Pending");

    // hostNetwork would mean dockerd's namespace (the machine's), not the node's: refused.
    c.create_pod(
        0,
        json!({
            "metadata": {"name": "hostie"},
            "spec": {"hostNetwork": true, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": "xkube/tools:0.1.0"}]},
        }),
    )
    .await;
    let mut refused = false;
    for _ in 0..300 {
        let evs = xkube_client::Api::<k8s_openapi::api::core::v1::Event>::namespaced(
            c.client.clone(),
            "default",
        )
        .list(&xkube_client::ListParams::default())
        .await
        .expect("events");
        refused = evs.items.iter().any(|e| {
            e.involved_object.name.as_deref() == Some("hostie")
                && e.reason.as_deref() == Some("FailedCreatePodSandBox")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.contains("dockerd's network namespace"))
        });
        if refused {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "hostNetwork pod refused with an event");
    let hostie = c.pods("default").get("hostie").await.expect("pod");
    assert_eq!(phase(&hostie), "Pending");

    for n in ["duo", "ghost", "hostie"] {
        c.pods("default")
            .delete(n, &DeleteParams::default())
            .await
            .expect("delete");
    }
    for n in ["duo", "ghost", "hostie"] {
        c.wait_gone(n).await;
    }
    c.assert_clean(0).await;
    let left = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await
        .expect("list");
    assert!(left.is_empty(), "containers left: {left:?}");
    drop(c);
    drop(dockerd);
}

/// Image garbage collection with thresholds that always apply (high 0, low 0) and a 5 s
/// minimum age: an image no container uses goes once it is 5 s old; the image of a running
/// pod and the pinned pause image stay. (Images are named on 127.0.0.1:1, so a wrongly
/// removed one could never be pulled from outside.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_image_gc_removes_unused_images_and_keeps_used_and_pinned_ones() {
    let (dockerd, docker) = Dockerd::start("kg").await;
    let tar = docker::rootfs_tar(None, dockerd.dir.path()).expect("image root");
    docker::import_rootfs(&docker, &tar, "xkube/tools")
        .await
        .expect("image imported");
    let rt: Arc<dyn ContainerRuntime> = Arc::new(
        // The tools image doubles as the (pinned) pause image.
        DockerRuntime::connect(
            &dockerd.engine.socket.to_string_lossy(),
            "xkube/tools:latest",
        )
        .await
        .expect("docker runtime connects"),
    );
    let rt2 = rt.clone();
    let c = Cluster::start_custom(
        1,
        |o| {
            o.pod_infra_container_image = "xkube/tools:latest".into();
            o.image_gc_high_threshold = 0;
            o.image_gc_low_threshold = 0;
            o.minimum_image_ttl_duration = Duration::from_secs(5);
            o.image_gc_period = Duration::from_millis(500);
        },
        move |_| Some(rt2.clone()),
    )
    .await;
    // Imports record their creation second: a second later, a new image ID.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    docker::import_rootfs(&docker, &tar, "127.0.0.1:1/example/used")
        .await
        .expect("used imported");
    c.create_pod(
        0,
        json!({
            "metadata": {"name": "user"},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": "127.0.0.1:1/example/used:0.1.0",
                                     "command": ["sleep", "3600"]}]},
        }),
    )
    .await;
    c.wait_running("user").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    docker::import_rootfs(&docker, &tar, "127.0.0.1:1/example/spare")
        .await
        .expect("spare imported");
    let spare_at = std::time::Instant::now();
    let mut gone = false;
    for _ in 0..200 {
        if docker
            .inspect_image("127.0.0.1:1/example/spare:latest")
            .await
            .is_err()
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the unused image is still there after 20 s");
    println!(
        "the unused image went within {:?} of its import",
        spare_at.elapsed()
    );
    for kept in ["127.0.0.1:1/example/used:0.1.0", "xkube/tools:latest"] {
        docker
            .inspect_image(kept)
            .await
            .unwrap_or_else(|e| panic!("{kept} was removed: {e}"));
    }
    assert_eq!(phase(&c.wait_running("user").await), "Running");
    drop(c);
    drop(dockerd);
}
