//! Privileged end-to-end tests of the kubelet with the process runtime: an in-process
//! apiserver, kubelets whose nodes live in network namespaces, pods written straight to the
//! API with spec.nodeName (no scheduler). Seeds A1, A2, A3, A7, A13, A14 and the lifecycle.

mod common;

use std::{sync::Arc, time::Duration};

use common::{Cluster, condition, phase, pod_ip, waiting_reason};
use k8s_openapi::api::core::v1::{Event, Node, Pod, Secret, Service, ServiceAccount};
use serde_json::json;
use xkube_client::{Api, DeleteParams, ListParams};
use xkube_kubelet::PodNetworkEventKind;

fn sh_pod(name: &str, script: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", script]}],
        },
    })
}

fn container_status(p: &Pod, name: &str) -> k8s_openapi::api::core::v1::ContainerStatus {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == name).cloned())
        .unwrap_or_else(|| panic!("no status for container {name}: {p:#?}"))
}

async fn events_of(c: &Cluster, pod: &str) -> Vec<Event> {
    Api::<Event>::namespaced(c.client.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(pod))
        .collect()
}

async fn wait_event(c: &Cluster, pod: &str, reason: &str) -> Event {
    for _ in 0..300 {
        if let Some(e) = events_of(c, pod)
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason))
        {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no {reason} event for {pod}: {:#?}",
        events_of(c, pod).await
    );
}

async fn delete(c: &Cluster, name: &str) {
    c.pods("default")
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a1_pod_lifecycle_statuses_conditions_ip_events_logs_and_cleanup() {
    let mut c = Cluster::start_with(1, |o| {
        o.cluster_dns = vec!["10.96.0.10".parse().expect("ip")];
    })
    .await;
    let node = c.nodes[0].name.clone();
    let mut net_events = c.nodes[0].events.take().expect("event receiver");

    // The node registered itself with the seeds' facts.
    let n = Api::<Node>::all(c.client.clone())
        .get(&node)
        .await
        .expect("node");
    let labels = n.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("kubernetes.io/hostname"), Some(&node));
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    let st = n.status.clone().expect("node status");
    let ready = st
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    assert_eq!(ready.reason.as_deref(), Some("KubeletReady"));
    assert_eq!(
        ready.message.as_deref(),
        Some("kubelet is posting ready status")
    );
    for t in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert!(
            st.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == t && c.status == "False"),
            "{t} missing: {st:#?}"
        );
    }
    assert!(
        st.capacity
            .as_ref()
            .is_some_and(|c| c.contains_key("cpu") && c.contains_key("memory"))
    );
    let info = st.node_info.clone().expect("nodeInfo");
    assert!(
        info.container_runtime_version.starts_with("process://"),
        "{info:?}"
    );
    assert!(!info.kernel_version.is_empty());
    assert_eq!(
        st.addresses
            .as_ref()
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone()),
        Some(c.nodes[0].ip.to_string())
    );
    assert_eq!(c.kubelet_get(0, "/healthz"), (200, "ok".to_owned()));

    c.create_pod(
        0,
        sh_pod("nginx", "echo hello from $HOSTNAME; exec sleep 3600"),
    )
    .await;
    let p = c.wait_running("nginx").await;
    let s = p.status.clone().expect("status");
    let ip: std::net::Ipv4Addr = pod_ip(&p).parse().expect("pod IP");
    assert!(
        ip.octets()[..3] == [10, 244, 1] && ip.octets()[3] > 1,
        "podIP {ip} in 10.244.1.0/24"
    );
    assert_eq!(
        s.host_ip.as_deref(),
        Some(c.nodes[0].ip.to_string().as_str())
    );
    assert!(s.start_time.is_some(), "startTime");
    for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(condition(&p, t), "True", "condition {t}");
    }
    assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
    let cs = container_status(&p, "c");
    assert!(cs.ready && cs.restart_count == 0);
    assert!(
        cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some(),
        "{cs:?}"
    );
    assert!(
        cs.container_id
            .as_deref()
            .is_some_and(|id| id.starts_with("process://")),
        "{cs:?}"
    );
    for reason in ["Pulled", "Created", "Started"] {
        let e = wait_event(&c, "nginx", reason).await;
        assert_eq!(
            e.involved_object.field_path.as_deref(),
            Some("spec.containers{c}")
        );
        assert_eq!(
            e.source.as_ref().and_then(|s| s.host.clone()),
            Some(node.clone())
        );
    }
    // The network hook reported the pod's veth.
    let ev = tokio::time::timeout(Duration::from_secs(5), net_events.recv())
        .await
        .expect("pod network event")
        .expect("event channel open");
    assert_eq!(ev.kind, PodNetworkEventKind::Added);
    assert_eq!(ev.ip, ip);
    assert!(
        c.links(0).contains(&ev.host_veth),
        "{} on the node",
        ev.host_veth
    );
    // Logs, /pods, stats, exec (hostname = pod name, address = pod IP).
    let log = c.wait_log(0, "nginx", "c", "hello from nginx").await;
    assert_eq!(log, "hello from nginx\n");
    let (code, pods) = c.kubelet_get(0, "/pods");
    assert!(code == 200 && pods.contains("\"nginx\""), "{code} {pods}");
    let (code, stats) = c.kubelet_get(0, "/stats/summary");
    assert!(code == 200 && stats.contains(&node), "{stats}");
    let (code, out) = c.exec(0, "nginx", "c", &["hostname"]);
    assert_eq!((code, out.trim()), (200, "nginx"));
    let (code, out) = c.exec(0, "nginx", "c", &["cat", "/proc/net/fib_trie"]);
    assert!(code == 200 && out.contains(&ip.to_string()), "{out}");
    // The pod's resolv.conf (ClusterFirst), bind-mounted in the container only.
    let (code, out) = c.exec(0, "nginx", "c", &["cat", "/etc/resolv.conf"]);
    assert_eq!(code, 200);
    let host = xkube_kubelet::dns::ResolvConf::parse(
        &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    );
    let mut search: Vec<&str> = vec![
        "default.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
    ];
    for s in &host.searches {
        if !search.contains(&s.as_str()) {
            search.push(s);
        }
    }
    let search = search.join(" ");
    assert_eq!(
        out,
        format!("nameserver 10.96.0.10\nsearch {search}\noptions ndots:5\n")
    );
    assert!(
        !std::fs::read_to_string("/etc/resolv.conf")
            .unwrap_or_default()
            .contains("10.96.0.10"),
        "the node's own file is untouched"
    );
    let (code, _) = c.kubelet_get(0, "/containerLogs/default/nope/c");
    assert_eq!(code, 404);
    // tailLines.
    let (_, tail) = c.kubelet_get(0, "/containerLogs/default/nginx/c?tailLines=0");
    assert_eq!(tail, "");

    // Graceful deletion: SIGTERM, the pod object disappears, nothing is left behind.
    delete(&c, "nginx").await;
    c.wait_gone("nginx").await;
    wait_event(&c, "nginx", "Killing").await;
    let ev = tokio::time::timeout(Duration::from_secs(5), net_events.recv())
        .await
        .expect("pod network removal event")
        .expect("event channel open");
    assert_eq!((ev.kind, ev.ip), (PodNetworkEventKind::Removed, ip));
    c.assert_clean(0).await;
    // The address is free again in the persisted IPAM state.
    let ipam = std::fs::read_to_string(c.nodes[0].root.join("ipam/pool-10.244.1.0-24.json"))
        .expect("IPAM state on disk");
    let ipam: serde_json::Value = serde_json::from_str(&ipam).expect("IPAM state is JSON");
    assert_eq!(ipam["allocated"], json!({}), "{ip} still allocated: {ipam}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a2_two_containers_share_localhost_and_hostname() {
    let c = Cluster::start(1).await;
    c.create_pod(0, json!({
        "metadata": {"name": "duo"},
        "spec": {"terminationGracePeriodSeconds": 2, "containers": [
            {"name": "server", "image": "busybox",
             "command": ["socat", "TCP-LISTEN:8080,reuseaddr,fork", "SYSTEM:echo hello-from-server"]},
            {"name": "client", "image": "busybox", "command": ["sh", "-c",
             "for i in $(seq 1 100); do socat -T2 - TCP:127.0.0.1:8080 </dev/null && break; sleep 0.1; done; hostname; exec sleep 3600"]},
        ]},
    })).await;
    c.wait_running("duo").await;
    let log = c.wait_log(0, "duo", "client", "duo").await;
    assert!(log.contains("hello-from-server"), "client log: {log:?}");
    delete(&c, "duo").await;
    c.wait_gone("duo").await;
    c.assert_clean(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a3_pod_to_pod_by_ip_on_one_node_and_across_nodes() {
    let c = Cluster::start(2).await;
    let server = |name: &str| {
        json!({
            "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 2, "containers": [{"name": "c", "image": "busybox",
                "command": ["socat", "TCP-LISTEN:8080,reuseaddr,fork", "SYSTEM:echo $(hostname) $SOCAT_PEERADDR"]}]},
        })
    };
    c.create_pod(0, server("a")).await;
    c.create_pod(0, server("b")).await;
    c.create_pod(1, server("x")).await;
    let a = pod_ip(&c.wait_running("a").await);
    let b = pod_ip(&c.wait_running("b").await);
    let x = pod_ip(&c.wait_running("x").await);
    assert!(
        x.starts_with("10.244.2."),
        "pod on node 2 gets node 2's podCIDR: {x}"
    );
    // Routes to the other node's podCIDR via its node IP appear from the Node watch.
    for _ in 0..100 {
        let (_, out) = c.exec(
            0,
            "b",
            "c",
            &["sh", "-c", &format!("socat -T2 - TCP:{x}:8080 </dev/null")],
        );
        if out.starts_with("x ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // host-gw routes (protocol 0x58 = 88) and the masquerade chain in each node's namespace.
    for (i, other) in [
        (0usize, "10.244.2.0/24 via 198.18.0.12"),
        (1, "10.244.1.0/24 via 198.18.0.11"),
    ] {
        let out = std::process::Command::new("ip")
            .args(["-n", c.nodes[i].ns.name(), "route", "show", "proto", "88"])
            .output()
            .expect("ip route");
        let routes = String::from_utf8_lossy(&out.stdout);
        assert!(routes.contains(other), "node {i} routes: {routes}");
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                c.nodes[i].ns.name(),
                "iptables",
                "-t",
                "nat",
                "-S",
            ])
            .output()
            .expect("iptables -S");
        let rules = String::from_utf8_lossy(&out.stdout);
        assert!(
            rules.contains(
                "-A POSTROUTING -m comment --comment \"xkube pod masquerade\" -j XKUBE-POSTROUTING"
            ) && rules.contains(&format!(
                "-A XKUBE-POSTROUTING -s {} ! -d 10.244.0.0/16",
                c.nodes[i].pod_cidr
            )) && rules.contains("-j MASQUERADE"),
            "node {i} nat rules: {rules}"
        );
    }
    let (_, same) = c.exec(
        0,
        "b",
        "c",
        &["sh", "-c", &format!("socat -T2 - TCP:{a}:8080 </dev/null")],
    );
    assert_eq!(
        same.trim(),
        format!("a {b}"),
        "same node, pod b -> pod a by IP"
    );
    let (_, across) = c.exec(
        0,
        "b",
        "c",
        &["sh", "-c", &format!("socat -T2 - TCP:{x}:8080 </dev/null")],
    );
    // Across nodes the server sees the client pod's own address: no masquerade inside the
    // cluster CIDR.
    assert_eq!(
        across.trim(),
        format!("x {b}"),
        "node 1 pod b -> node 2 pod x"
    );
    let (_, back) = c.exec(
        1,
        "x",
        "c",
        &["sh", "-c", &format!("socat -T2 - TCP:{a}:8080 </dev/null")],
    );
    assert_eq!(
        back.trim(),
        format!("a {x}"),
        "node 2 pod x -> node 1 pod a"
    );
    for p in ["a", "b", "x"] {
        delete(&c, p).await;
    }
    for p in ["a", "b", "x"] {
        c.wait_gone(p).await;
    }
    c.assert_clean(0).await;
    c.assert_clean(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a7_service_environment_variables_and_field_refs() {
    let c = Cluster::start(1).await;
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "redis-master"},
        "spec": {"ports": [{"port": 6379, "protocol": "TCP"}], "selector": {"app": "redis"}},
    }))
    .expect("service literal");
    let svc = Api::<Service>::namespaced(c.client.clone(), "default")
        .create(&svc)
        .await
        .expect("create service");
    let cip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("cluster IP allocated");
    // The kubelet's service cache must have seen it before the pod starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut pod = sh_pod("envy", "env | sort; exec sleep 3600");
    pod["spec"]["containers"][0]["env"] = json!([
        {"name": "MY_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "MY_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "MY_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "GREETING", "value": "hi $(MY_POD_NAME)"},
    ]);
    c.create_pod(0, pod).await;
    let p = c.wait_running("envy").await;
    let log = c
        .wait_log(0, "envy", "c", "REDIS_MASTER_SERVICE_HOST")
        .await;
    for want in [
        format!("REDIS_MASTER_SERVICE_HOST={cip}"),
        "REDIS_MASTER_SERVICE_PORT=6379".to_owned(),
        format!("REDIS_MASTER_PORT=tcp://{cip}:6379"),
        format!("REDIS_MASTER_PORT_6379_TCP=tcp://{cip}:6379"),
        "REDIS_MASTER_PORT_6379_TCP_PROTO=tcp".to_owned(),
        "REDIS_MASTER_PORT_6379_TCP_PORT=6379".to_owned(),
        format!("REDIS_MASTER_PORT_6379_TCP_ADDR={cip}"),
        "KUBERNETES_SERVICE_HOST=".to_owned(),
        "MY_POD_NAME=envy".to_owned(),
        "MY_POD_NAMESPACE=default".to_owned(),
        format!("MY_POD_IP={}", pod_ip(&p)),
        "GREETING=hi envy".to_owned(),
    ] {
        assert!(
            log.lines().any(|l| l.starts_with(&want)),
            "missing {want:?} in:\n{log}"
        );
    }
    delete(&c, "envy").await;
    c.wait_gone("envy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a13_a14_secret_files_token_empty_dir_and_host_path() {
    let c = Cluster::start(1).await;
    let secrets = Api::<Secret>::namespaced(c.client.clone(), "default");
    let s = |v| serde_json::from_value::<Secret>(v).expect("secret literal");
    secrets
        .create(&s(
            json!({"metadata": {"name": "mysecret"}, "type": "Opaque",
            "data": {"username": "YWRtaW4=", "password": "MWYyZDFlMmU2N2Rm"}}),
        ))
        .await
        .expect("create secret");
    secrets
        .create(&s(json!({"metadata": {"name": "default-token-abcde",
                "annotations": {"kubernetes.io/service-account.name": "default"}},
            "type": "kubernetes.io/service-account-token",
            "data": {"token": "dG9rLTEyMw==", "ca.crt": "LS0tLS1DQS0tLS0t"}})))
        .await
        .expect("create token secret");
    // The kubelet finds the token through the account's `secrets` (the serviceaccount
    // controller's work, done by hand here), with gets only.
    Api::<ServiceAccount>::namespaced(c.client.clone(), "default")
        .create(
            &serde_json::from_value(json!({"metadata": {"name": "default"},
                "secrets": [{"name": "default-token-abcde"}]}))
            .expect("service account literal"),
        )
        .await
        .expect("create service account");
    let host_dir = c.dir.path().join("host-data");
    std::fs::create_dir_all(&host_dir).expect("host dir");
    std::fs::write(host_dir.join("from-host"), "host-file").expect("host file");
    let base = format!("/tmp/xkube-kubelet-test-{}", std::process::id());
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    c.create_pod(0, json!({
        "metadata": {"name": "vols"},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "serviceAccountName": "default",
            "volumes": [
                {"name": "secret-volume", "secret": {"secretName": "mysecret"}},
                {"name": "cache", "emptyDir": {}},
                {"name": "host", "hostPath": {"path": host_dir.to_string_lossy()}},
            ],
            "containers": [
                {"name": "writer", "image": "busybox", "command": ["sh", "-c",
                    format!("echo shared > {base}/cache/note; echo from-pod > {base}/host/from-pod; exec sleep 3600")],
                 "volumeMounts": [{"name": "cache", "mountPath": format!("{base}/cache")},
                                  {"name": "host", "mountPath": format!("{base}/host")}]},
                {"name": "reader", "image": "busybox", "command": ["sh", "-c", format!(
                    "for i in $(seq 1 100); do [ -f {base}/cache/note ] && break; sleep 0.1; done; \
                     echo user=$(cat {base}/secret/username) pass=$(cat {base}/secret/password); \
                     echo token=$(cat {sa}/token) ns=$(cat {sa}/namespace) ca=$(cat {sa}/ca.crt); \
                     echo note=$(cat {base}/cache/note) host=$(cat {base}/host/from-host); exec sleep 3600")],
                 "volumeMounts": [{"name": "cache", "mountPath": format!("{base}/cache")},
                                  {"name": "host", "mountPath": format!("{base}/host")},
                                  {"name": "secret-volume", "mountPath": format!("{base}/secret"), "readOnly": true}]},
            ],
        },
    })).await;
    c.wait_running("vols").await;
    let log = c.wait_log(0, "vols", "reader", "note=").await;
    assert!(
        log.contains("user=admin pass=1f2d1e2e67df"),
        "secret files: {log}"
    );
    assert!(
        log.contains("token=tok-123 ns=default ca=-----CA-----"),
        "token mount: {log}"
    );
    assert!(
        log.contains("note=shared host=host-file"),
        "emptyDir + hostPath: {log}"
    );
    assert_eq!(
        std::fs::read_to_string(host_dir.join("from-pod")).expect("pod wrote to hostPath"),
        "from-pod\n"
    );
    // The mounts are private to the containers: the host sees no note at the container path.
    assert!(!std::path::Path::new(&format!("{base}/cache/note")).exists());
    // The secret is read-only inside the container.
    let (_, out) = c.exec(
        0,
        "vols",
        "reader",
        &[
            "sh",
            "-c",
            &format!("echo x > {base}/secret/username && echo writable || echo read-only"),
        ],
    );
    assert!(out.contains("read-only"), "{out}");
    let pod_dir = c.nodes[0].root.join("pods").join(
        c.pods("default")
            .get("vols")
            .await
            .expect("pod")
            .metadata
            .uid
            .expect("uid"),
    );
    assert!(pod_dir.join("volumes/empty-dir/cache/note").exists());
    delete(&c, "vols").await;
    c.wait_gone("vols").await;
    c.assert_clean(0).await;
    assert!(!pod_dir.exists(), "emptyDir removed with the pod");
    assert!(host_dir.join("from-pod").exists(), "hostPath content stays");
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_policies_and_crash_loop_back_off() {
    let c = Cluster::start(1).await;
    c.create_pod(0, sh_pod("crashy", "echo boom; exit 3")).await;
    let mut never = sh_pod("once", "exit 0");
    never["spec"]["restartPolicy"] = json!("Never");
    c.create_pod(0, never).await;
    let mut fail = sh_pod("failed", "exit 2");
    fail["spec"]["restartPolicy"] = json!("Never");
    c.create_pod(0, fail).await;
    let mut onf = sh_pod("onfailure", "exit 0");
    onf["spec"]["restartPolicy"] = json!("OnFailure");
    c.create_pod(0, onf).await;

    let p = c
        .wait_pod("crashy", "CrashLoopBackOff after restarts", |p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .is_some_and(|c| {
                    c.restart_count >= 2
                        && c.state
                            .as_ref()
                            .and_then(|s| s.waiting.as_ref())
                            .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))
                })
        })
        .await;
    let cs = container_status(&p, "c");
    let last = cs
        .last_state
        .and_then(|s| s.terminated)
        .expect("lastState.terminated");
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    assert_eq!(phase(&p), "Running", "a restarting pod stays Running");
    wait_event(&c, "crashy", "BackOff").await;
    assert!(c.logs(0, "crashy", "c").contains("boom"));

    let p = c
        .wait_pod("once", "Succeeded", |p| phase(p) == "Succeeded")
        .await;
    let t = container_status(&p, "c")
        .state
        .and_then(|s| s.terminated)
        .expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    let p = c
        .wait_pod("failed", "Failed", |p| phase(p) == "Failed")
        .await;
    let t = container_status(&p, "c")
        .state
        .and_then(|s| s.terminated)
        .expect("terminated");
    assert_eq!(t.exit_code, 2);
    assert_eq!(container_status(&p, "c").restart_count, 0);
    c.wait_pod("onfailure", "Succeeded", |p| phase(p) == "Succeeded")
        .await;
    // Finished pods release their sandbox (network) but keep their logs.
    for p in ["crashy", "once", "failed", "onfailure"] {
        delete(&c, p).await;
    }
    for p in ["crashy", "once", "failed", "onfailure"] {
        c.wait_gone(p).await;
    }
    c.assert_clean(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn probes_liveness_restarts_and_readiness_gates_ready() {
    let c = Cluster::start(1).await;
    let http =
        "socat TCP-LISTEN:8080,reuseaddr,fork SYSTEM:'read l; echo HTTP/1.0 200 OK; echo; echo ok'";
    c.create_pod(0, json!({
        "metadata": {"name": "probed"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [
            {"name": "web", "image": "busybox", "command": ["sh", "-c", http],
             "ports": [{"name": "http", "containerPort": 8080}],
             "readinessProbe": {"httpGet": {"port": "http", "path": "/"}, "periodSeconds": 1},
             "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}},
            {"name": "sick", "image": "busybox", "command": ["sleep", "3600"],
             "livenessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 2}},
        ]},
    })).await;
    c.create_pod(
        0,
        json!({
            "metadata": {"name": "unready"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [
                {"name": "c", "image": "busybox", "command": ["sleep", "3600"],
                 "readinessProbe": {"tcpSocket": {"port": 9999}, "periodSeconds": 1}},
            ]},
        }),
    )
    .await;
    let p = c
        .wait_pod("probed", "liveness restarts of the sick container", |p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.name == "sick" && c.restart_count >= 1))
        })
        .await;
    assert_eq!(
        container_status(&p, "web").restart_count,
        0,
        "healthy container untouched"
    );
    let e = wait_event(&c, "probed", "Killing").await;
    assert!(
        e.message
            .as_deref()
            .is_some_and(|m| m.contains("failed liveness probe")),
        "{e:?}"
    );
    c.wait_pod("probed", "web ready via httpGet", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.name == "web" && c.ready))
    })
    .await;
    let p = c
        .wait_pod("unready", "Running", |p| phase(p) == "Running")
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p2 = c.pods("default").get("unready").await.expect("pod");
    assert_eq!(
        condition(&p2, "Ready"),
        "False",
        "failing readiness probe: {p:#?}"
    );
    assert!(!container_status(&p2, "c").ready);
    for n in ["probed", "unready"] {
        delete(&c, n).await;
    }
    for n in ["probed", "unready"] {
        c.wait_gone(n).await;
    }
    c.assert_clean(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_deletion_sends_sigterm_then_sigkill_after_the_grace_period() {
    let c = Cluster::start(1).await;
    let mark = c.dir.path().join("term-marks");
    std::fs::create_dir_all(&mark).expect("mark dir");
    let polite = format!(
        "trap 'echo got-term > {}/polite; exit 0' TERM; while :; do sleep 0.1; done",
        mark.display()
    );
    let stubborn = "trap '' TERM; while :; do sleep 0.1; done";
    let mut p1 = sh_pod("polite", &polite);
    p1["spec"]["terminationGracePeriodSeconds"] = json!(30);
    c.create_pod(0, p1).await;
    let mut p2 = sh_pod("stubborn", stubborn);
    p2["spec"]["terminationGracePeriodSeconds"] = json!(2);
    c.create_pod(0, p2).await;
    c.wait_running("polite").await;
    c.wait_running("stubborn").await;
    delete(&c, "polite").await;
    delete(&c, "stubborn").await;
    // Both go: the first on SIGTERM, the second by SIGKILL after its 2 s grace period.
    c.wait_gone("polite").await;
    c.wait_gone("stubborn").await;
    assert_eq!(
        std::fs::read_to_string(mark.join("polite")).expect("SIGTERM handler ran"),
        "got-term\n"
    );
    c.assert_clean(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubelet_restart_keeps_pods_running_with_the_same_ips() {
    let mut c = Cluster::start(1).await;
    c.create_pod(0, sh_pod("keeper", "exec sleep 3600")).await;
    let mut once = sh_pod("done", "echo ran");
    once["spec"]["restartPolicy"] = json!("Never");
    c.create_pod(0, once).await;
    c.wait_pod("done", "Succeeded", |p| phase(p) == "Succeeded")
        .await;
    let before = c.wait_running("keeper").await;
    let ip = pod_ip(&before);
    let id = container_status(&before, "c")
        .container_id
        .expect("container id");
    c.stop_kubelet(0).await;
    // The container process survives the kubelet.
    let pid: u32 = id
        .trim_start_matches("process://")
        .split('.')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("pid in the container id");
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "container died with the kubelet"
    );
    let mut node = c.nodes.remove(0);
    c.start_kubelet(&mut node);
    c.nodes.insert(0, node);
    // A second pod gets a different address: the first one's is still allocated.
    c.create_pod(0, sh_pod("second", "exec sleep 3600")).await;
    let second = c.wait_running("second").await;
    assert_ne!(pod_ip(&second), ip);
    // A finished pod stays finished: its container does not run again.
    let done = c.pods("default").get("done").await.expect("pod");
    assert_eq!(phase(&done), "Succeeded");
    assert_eq!(container_status(&done, "c").restart_count, 0);
    assert_eq!(
        c.logs(0, "done", "c"),
        "ran\n",
        "the completed container ran once"
    );
    let after = c.pods("default").get("keeper").await.expect("pod");
    assert_eq!(
        pod_ip(&after),
        ip,
        "pod IP is stable across kubelet restarts"
    );
    let cs = container_status(&after, "c");
    assert_eq!(
        cs.container_id.as_deref(),
        Some(id.as_str()),
        "same container adopted"
    );
    assert_eq!(cs.restart_count, 0);
    assert_eq!(phase(&after), "Running");
    // The adopted pod is fully managed: exec and deletion work.
    let (code, out) = c.exec(0, "keeper", "c", &["hostname"]);
    assert_eq!((code, out.trim()), (200, "keeper"));
    for n in ["keeper", "second", "done"] {
        delete(&c, n).await;
    }
    for n in ["keeper", "second", "done"] {
        c.wait_gone(n).await;
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "container stopped"
    );
    c.assert_clean(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_network_pod_uses_the_node_address() {
    let c = Cluster::start_with(1, |o| {
        o.cluster_dns = vec!["10.96.0.10".parse().expect("ip")];
    })
    .await;
    let mut p = sh_pod(
        "hostnet",
        "exec socat TCP-LISTEN:18080,reuseaddr,fork SYSTEM:'echo on-host'",
    );
    p["spec"]["hostNetwork"] = json!(true);
    c.create_pod(0, p).await;
    let p = c.wait_running("hostnet").await;
    assert_eq!(pod_ip(&p), c.nodes[0].ip.to_string());
    // Reachable on the node address inside the node namespace.
    let addr = std::net::SocketAddr::from((c.nodes[0].ip, 18080));
    let mut got = String::new();
    for _ in 0..50 {
        got = c.nodes[0]
            .ns
            .run(move || {
                use std::io::Read;
                let mut s =
                    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                        Ok(s) => s,
                        Err(_) => return String::new(),
                    };
                let mut b = String::new();
                let _ = s.read_to_string(&mut b);
                b
            })
            .expect("enter node namespace");
        if got.contains("on-host") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got.trim(), "on-host");
    // ClusterFirst on the host network falls back to the node's resolvers (Default).
    let (code, out) = c.exec(0, "hostnet", "c", &["cat", "/etc/resolv.conf"]);
    assert_eq!(code, 200);
    let node = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert_eq!(
        out,
        xkube_kubelet::dns::ResolvConf::parse(&node).render(),
        "the node's resolv.conf, not the cluster DNS"
    );
    delete(&c, "hostnet").await;
    c.wait_gone("hostnet").await;
    c.assert_clean(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_image_backs_off_with_events_while_other_pods_run() {
    // The fake runtime fails to pull `fake/missing`; the kubelet logic is the same for docker.
    let fake = std::sync::Arc::new(xkube_kubelet::runtime::fake::FakeRuntime::new());
    let rt: std::sync::Arc<dyn xkube_kubelet::ContainerRuntime> = fake.clone();
    let c = Cluster::start_custom(1, |_| {}, move |_| Some(rt.clone())).await;
    let host = |name: &str, image: &str| {
        json!({
            "metadata": {"name": name},
            "spec": {"hostNetwork": true, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": image}]},
        })
    };
    c.create_pod(0, host("ghost", "fake/missing")).await;
    c.create_pod(0, host("fine", "fake/sleeper")).await;
    let p = c
        .wait_pod("ghost", "ImagePullBackOff", |p| {
            waiting_reason(p).is_some_and(|r| r == "ImagePullBackOff")
        })
        .await;
    assert_eq!(phase(&p), "Pending");
    let failed = wait_event(&c, "ghost", "Failed").await;
    assert!(
        failed
            .message
            .as_deref()
            .is_some_and(|m| m.contains("Failed to pull image \"fake/missing\"")),
        "{failed:?}"
    );
    let backoff = wait_event(&c, "ghost", "BackOff").await;
    assert!(
        backoff
            .message
            .as_deref()
            .is_some_and(|m| m.contains("Back-off pulling image"))
    );
    // The other pod is unaffected.
    let fine = c.wait_running("fine").await;
    assert_eq!(pod_ip(&fine), c.nodes[0].ip.to_string());
    // A crash reported by the runtime restarts the container.
    let id = container_status(&fine, "c").container_id.expect("id");
    fake.crash(&id, 1);
    c.wait_pod("fine", "restarted", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.restart_count == 1))
    })
    .await;
    for n in ["ghost", "fine"] {
        delete(&c, n).await;
    }
    for n in ["ghost", "fine"] {
        c.wait_gone(n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follow_logs_stream_until_the_pod_goes_and_previous_shows_the_last_attempt() {
    let c = Arc::new(Cluster::start(1).await);
    c.create_pod(
        0,
        sh_pod(
            "talker",
            "echo line-1; sleep 1; echo line-2; exec sleep 3600",
        ),
    )
    .await;
    c.wait_running("talker").await;
    let follower = {
        let c = c.clone();
        tokio::task::spawn_blocking(move || {
            c.kubelet_get(0, "/containerLogs/default/talker/c?follow=true")
        })
    };
    c.wait_log(0, "talker", "c", "line-2").await;
    delete(&c, "talker").await;
    let (code, body) = tokio::time::timeout(Duration::from_secs(60), follower)
        .await
        .expect("the follow stream ends with the pod")
        .expect("follower thread");
    assert_eq!(code, 200);
    assert_eq!(body, "line-1\nline-2\n", "followed log");
    c.wait_gone("talker").await;

    // `previous=true` is the attempt before a restart.
    let mut p = sh_pod("counter", "echo run; sleep 0.2; exit 1");
    p["spec"]["restartPolicy"] = json!("OnFailure");
    c.create_pod(0, p).await;
    c.wait_pod("counter", "a restart", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.restart_count >= 1))
    })
    .await;
    let (code, prev) = c.kubelet_get(0, "/containerLogs/default/counter/c?previous=true");
    assert_eq!((code, prev.as_str()), (200, "run\n"));
    delete(&c, "counter").await;
    c.wait_gone("counter").await;
    c.assert_clean(0).await;
}

/// The kubelet API is HTTPS only and refuses requests without credentials; client
/// certificates of the configured CA authenticate; the read-only port serves no exec or logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubelet_api_is_https_only_and_refuses_anonymous_requests() {
    let c = Cluster::start_with(1, |o| o.read_only_port = 10255).await;
    c.create_pod(
        0,
        json!({"metadata": {"name": "locked"}, "spec": {"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "busybox",
                "command": ["sh", "-c", "echo locked-log; exec sleep 3600"]}]}}),
    )
    .await;
    c.wait_running("locked").await;
    c.wait_log(0, "locked", "c", "locked-log").await;

    for (method, path) in [
        ("GET", "/pods"),
        ("GET", "/healthz"),
        ("GET", "/stats/summary"),
        ("POST", "/exec/default/locked/c?command=id"),
        ("POST", "/run/default/locked/c?cmd=id"),
        ("GET", "/containerLogs/default/locked/c"),
        ("GET", "/no/such/path"),
    ] {
        let (code, body) = c.kubelet_request_with(0, method, path, c.anonymous_tls.clone(), None);
        assert_eq!(
            (code, body.as_str()),
            (401, "Unauthorized"),
            "anonymous {method} {path}"
        );
    }
    // A bearer token the apiserver cannot review is no credential either.
    let (code, _) = c.kubelet_request_with(
        0,
        "POST",
        "/exec/default/locked/c?command=id",
        c.anonymous_tls.clone(),
        Some("not-a-token"),
    );
    assert_eq!(code, 401);
    // A client certificate of another CA does not get through the handshake.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = xkube_apiserver::pki::Pki::ensure(other_dir.path(), &["127.0.0.1".into()])
        .expect("other CA");
    let stranger = other
        .ca()
        .expect("CA")
        .issue_client("stranger", &["system:masters"])
        .expect("client cert");
    let stranger_tls = common::client_tls(&c.pki, Some(&stranger));
    let (code, _) = c.kubelet_request_with(0, "GET", "/pods", stranger_tls, None);
    assert_eq!(code, 0, "no HTTP answer to an untrusted client certificate");
    // Plain HTTP on the API port: no kubelet answers.
    let raw = c.kubelet_plain_http(0, "/pods");
    assert!(
        !raw.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {:?}",
        String::from_utf8_lossy(&raw)
    );
    // The test's client certificate works.
    let (code, pods) = c.kubelet_get(0, "/pods");
    assert!(code == 200 && pods.contains("\"locked\""), "{code} {pods}");
    let (code, out) = c.exec(0, "locked", "c", &["echo", "in-pod"]);
    assert_eq!((code, out.as_str()), (200, "in-pod\n"));

    // The read-only port: pods, healthz and stats in plain HTTP, nothing else.
    let node = &c.nodes[0];
    let ro = |method: &'static str, path: &'static str| {
        let addr = (node.ip, 10255);
        node.ns
            .run(move || {
                let mut s = std::net::TcpStream::connect_timeout(
                    &addr.into(),
                    std::time::Duration::from_secs(5),
                )
                .expect("connect to the read-only port");
                use std::io::{Read as _, Write as _};
                s.write_all(
                    format!("{method} {path} HTTP/1.0\r\nHost: k\r\nContent-Length: 0\r\n\r\n")
                        .as_bytes(),
                )
                .expect("send");
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                common::http_response(&out)
            })
            .expect("enter node namespace")
    };
    let (code, body) = ro("GET", "/pods");
    assert!(code == 200 && body.contains("\"locked\""), "{code} {body}");
    assert_eq!(ro("GET", "/healthz"), (200, "ok".into()));
    assert_eq!(ro("GET", "/stats/summary").0, 200);
    assert_eq!(ro("POST", "/exec/default/locked/c?command=id").0, 404);
    assert_eq!(ro("POST", "/run/default/locked/c?cmd=id").0, 404);
    assert_eq!(ro("GET", "/containerLogs/default/locked/c").0, 404);

    delete(&c, "locked").await;
    c.wait_gone("locked").await;
}

/// The process runtime runs host programs: an image that maps to none, without a command, is
/// refused with a message that says so (waiting reason and event, as `kubectl describe`
/// shows them), and nothing is pulled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_runtime_says_why_an_image_without_a_host_program_is_refused() {
    let c = Cluster::start(1).await;
    c.create_pod(
        0,
        json!({
            "metadata": {"name": "nginx"},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": "nginx:1.27"}]},
        }),
    )
    .await;
    let p = c
        .wait_pod("nginx", "CreateContainerConfigError", |p| {
            waiting_reason(p).is_some_and(|r| r == "CreateContainerConfigError")
        })
        .await;
    let msg = container_status(&p, "c")
        .state
        .and_then(|s| s.waiting)
        .and_then(|w| w.message)
        .unwrap_or_default();
    assert!(
        msg.contains("runs host programs rather than images") && msg.contains("docker runtime"),
        "{msg}"
    );
    let ev = wait_event(&c, "nginx", "Failed").await;
    assert!(
        ev.message
            .as_deref()
            .is_some_and(|m| m.contains("runs host programs")),
        "{ev:?}"
    );
    assert!(
        events_of(&c, "nginx")
            .await
            .iter()
            .all(|e| e.reason.as_deref() != Some("Pulling")),
        "the process runtime pulls nothing"
    );
}
