//! SEEDS.md scenarios on a real `xkube cluster up --nodes 3`, once per runtime (`process`, and
//! `docker` with one dockerd per node started by `cluster up --runtime docker` and images
//! built locally): A1 (pod lifecycle: `create -f`, `get pods`, `describe pod` fields and the
//! Scheduled/Pulled/Created/Started events), A2 (two containers of a pod talk over
//! localhost), A3 (pod to pod by IP on the same node and across nodes), A7 (service
//! environment variables), A13 (secret files with decoded values, the service-account token),
//! A14 (emptyDir shared by two containers, hostPath), A4 (a deleted RC pod is replaced; after
//! one node's agent is killed its pods come back on the other nodes), container logs through
//! the apiserver, (docker) a missing image: ImagePullBackOff and an event while the
//! other pods keep serving, and kubectl's streaming workflows ([`workflows`]: exec -it, exec -i,
//! attach, port-forward, cp, the Python client's exec and port-forward).

use std::{net::SocketAddrV4, time::Duration};

use xkube_e2e::{Cluster, http_get};

mod workflows;

fn logs(c: &Cluster, pod: &str, container: &str, want: &str) -> String {
    c.wait(
        &format!("{want:?} in the log of {pod}/{container}"),
        Duration::from_secs(60),
        || {
            let out = c.kubectl(&["logs", pod, "-c", container]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains(want).then_some(text)
        },
    )
}

#[test]
fn privileged_seed_scenarios_process_runtime() {
    seed_scenarios("process");
}

#[test]
fn privileged_seed_scenarios_docker_runtime() {
    seed_scenarios("docker");
}

/// The node index of the node named `name`.
fn node_index(c: &Cluster, name: &str) -> usize {
    (0..c.nodes)
        .find(|i| c.node_name(*i) == name)
        .unwrap_or_else(|| panic!("no node {name}"))
}

/// SEEDS.md A1: `create -f pod-nginx.yaml`, `get pods`, `describe pod`.
fn pod_lifecycle(c: &Cluster, runtime: &str) {
    let out = c.kubectl_stdin(
        &["create", "-f", "-"],
        Some(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: nginx}
spec:
  containers:
  - name: nginx
    image: xkube/agnhost:0.1.0
    args: ["netexec", "--http-port=80"]
    ports: [{containerPort: 80}]
"#,
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pod/nginx created"
    );
    let row = c.wait("nginx 1/1 Running", Duration::from_secs(60), || {
        let table = c.kubectl_ok(&["get", "pods", "nginx"]);
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next()?.split_whitespace().collect();
        assert_eq!(
            header,
            ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
            "{table}"
        );
        let row: Vec<String> = lines
            .next()?
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        (row[1] == "1/1" && row[2] == "Running").then_some(row)
    });
    assert_eq!(row[3], "0", "{row:?}");
    let pod = c.get_json(&["pod", "nginx"]);
    let node = pod["spec"]["nodeName"]
        .as_str()
        .expect("scheduled")
        .to_owned();
    let ip = pod["status"]["podIP"].as_str().expect("pod IP").to_owned();
    let node_ip = c.node_addr(node_index(c, &node)).to_string();
    // All four events are recorded (the kubelet posts them asynchronously).
    let describe = c.wait("the pod's four events", Duration::from_secs(30), || {
        let d = c.kubectl_ok(&["describe", "pod", "nginx"]);
        ["Scheduled", "Pulled", "Created", "Started"]
            .iter()
            .all(|r| d.contains(&format!("  {r}  ")))
            .then_some(d)
    });
    let field = |name: &str| -> String {
        describe
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name:?} in:\n{describe}"))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Node"), format!("{node}/{node_ip}"), "{describe}");
    assert_eq!(field("Status"), "Running", "{describe}");
    assert_eq!(field("IP"), ip, "{describe}");
    assert_eq!(field("Labels"), "<none>", "{describe}");
    assert!(!field("Start Time").is_empty(), "{describe}");
    let container_id = field("Container ID");
    let image_id = field("Image ID");
    match runtime {
        "docker" => {
            assert!(container_id.starts_with("docker://"), "{describe}");
            assert!(image_id.starts_with("docker://sha256:"), "{describe}");
        }
        _ => assert!(container_id.starts_with("process://"), "{describe}"),
    }
    assert_eq!(field("Image"), "xkube/agnhost:0.1.0", "{describe}");
    assert_eq!(field("Port"), "80/TCP", "{describe}");
    assert_eq!(field("State"), "Running", "{describe}");
    assert_eq!(field("Ready"), "True", "{describe}");
    assert_eq!(field("Restart Count"), "0", "{describe}");
    assert_eq!(field("QoS Class"), "BestEffort", "{describe}");
    for want in [
        "/var/run/secrets/kubernetes.io/serviceaccount from default-token-",
        "Conditions:",
        "Volumes:",
        "Type:        Secret (a volume populated by a Secret)",
        &format!("Successfully assigned default/nginx to {node}"),
        "Container image \"xkube/agnhost:0.1.0\" already present on machine",
        "Created container nginx",
        "Started container nginx",
    ] {
        assert!(describe.contains(want), "{want:?} missing in:\n{describe}");
    }
    for cond in ["Initialized", "Ready", "ContainersReady", "PodScheduled"] {
        assert!(
            describe
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [cond, "True"]),
            "condition {cond} True in:\n{describe}"
        );
    }
    // The events in the order they happened.
    let events = &describe[describe.find("Events:").expect("events")..];
    let at = |r: &str| events.find(&format!("  {r}  ")).expect("event");
    assert!(
        at("Scheduled") < at("Pulled")
            && at("Pulled") < at("Created")
            && at("Created") < at("Started"),
        "{events}"
    );
    // The pod answers on its port, from its node.
    let hostname = http_get(
        &c.node_ns(node_index(c, &node)),
        SocketAddrV4::new(ip.parse().expect("ip"), 80),
        "/hostname",
        Duration::from_secs(5),
    )
    .expect("nginx answers");
    assert_eq!(hostname.trim(), "nginx");
    workflows::kubectl_workflows(c, "nginx", runtime);
    c.kubectl_ok(&["delete", "pod", "nginx", "--grace-period=1"]);
}

fn seed_scenarios(runtime: &str) {
    let c = Cluster::up(
        3,
        &[
            "--runtime",
            runtime,
            // A4's node loss within seconds rather than minutes.
            "--node-status-update-frequency",
            "1s",
            "--node-monitor-grace-period",
            "6s",
            "--pod-eviction-timeout",
            "1s",
        ],
    );
    pod_lifecycle(&c, runtime);
    // A14's hostPath: a host directory with a file in it.
    let host_dir = c.data_root.join("hostpath");
    std::fs::create_dir_all(&host_dir).expect("hostPath dir");
    std::fs::write(host_dir.join("hello"), "from the host\n").expect("hostPath file");
    // A7 needs the service to exist before the pod; A13 needs the secret.
    c.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: redis-master}
spec:
  selector: {app: redis}
  ports: [{port: 6379, targetPort: 6379}]
---
apiVersion: v1
kind: Secret
metadata: {name: mysecret}
type: Opaque
data:
  username: YWRtaW4=
  password: MWYyZDFlMmU2N2Rm
"#,
    );
    let redis_ip = c.get_json(&["svc", "redis-master"])["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_owned();
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: seeds, labels: {{app: seeds}}}}
spec:
  containers:
  - name: web
    image: xkube/agnhost:0.1.0
    args: ["--http-port=8080"]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  - name: client
    image: xkube/tools:0.1.0
    command: ["sh", "-c", "sleep 2; curl -s http://127.0.0.1:8080/hostname; echo; echo shared > /scratch/x; env | sort; cat /etc/secret-volume/username; echo; ls /var/run/secrets/kubernetes.io/serviceaccount; cat /host/hello; echo from the pod > /host/back; sleep 3600"]
    volumeMounts:
    - {{name: scratch, mountPath: /scratch}}
    - {{name: secret-volume, mountPath: /etc/secret-volume, readOnly: true}}
    - {{name: host, mountPath: /host}}
  - name: reader
    image: xkube/tools:0.1.0
    command: ["sh", "-c", "while [ ! -f /scratch/x ]; do sleep 0.2; done; echo reader saw $(cat /scratch/x); sleep 3600"]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  volumes:
  - {{name: scratch, emptyDir: {{}}}}
  - {{name: secret-volume, secret: {{secretName: mysecret}}}}
  - {{name: host, hostPath: {{path: {host}, type: Directory}}}}
"#,
        host = host_dir.display()
    ));
    // A2: the client container reached the web container over localhost (the hostname is
    // the pod name).
    // The last line the client writes (after env, the secret and the token listing): reading
    // sooner raced with its output.
    let client = logs(&c, "seeds", "client", "from the host");
    assert!(client.lines().any(|l| l.trim() == "seeds"), "{client}");
    // A7: service environment variables in the seeds' format.
    for want in [
        format!("REDIS_MASTER_SERVICE_HOST={redis_ip}"),
        "REDIS_MASTER_SERVICE_PORT=6379".to_owned(),
        format!("REDIS_MASTER_PORT=tcp://{redis_ip}:6379"),
        format!("REDIS_MASTER_PORT_6379_TCP_ADDR={redis_ip}"),
        "REDIS_MASTER_PORT_6379_TCP_PROTO=tcp".to_owned(),
        "KUBERNETES_SERVICE_HOST=10.96.0.1".to_owned(),
    ] {
        assert!(client.contains(&want), "missing {want} in:\n{client}");
    }
    // A13: secret files hold the decoded values; the token volume is mounted.
    assert!(client.lines().any(|l| l.trim() == "admin"), "{client}");
    for f in ["ca.crt", "namespace", "token"] {
        assert!(
            client.lines().any(|l| l.trim() == f),
            "{f} missing:\n{client}"
        );
    }
    // A14: emptyDir shared between containers of the pod; hostPath both ways.
    logs(&c, "seeds", "reader", "reader saw shared");
    assert!(client.contains("from the host"), "{client}");
    c.wait(
        "the pod's file in the hostPath",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(host_dir.join("back"))
                .ok()
                .filter(|t| t.trim() == "from the pod")
        },
    );

    // A3 and A4: an RC spread over the nodes; pods reach each other by IP across nodes; a
    // deleted pod is replaced.
    c.apply(
        r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: web}
spec:
  replicas: 3
  selector: {app: web}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: agnhost, image: xkube/agnhost:0.1.0, args: ["--http-port=8080"]}
"#,
    );
    let pods = c.wait("3 running web pods", Duration::from_secs(90), || {
        let running = running_web(&c);
        (running.len() == 3).then_some(running)
    });
    let nodes: std::collections::BTreeSet<_> = pods.iter().map(|p| p.2.clone()).collect();
    assert!(nodes.len() >= 2, "the scheduler spreads the RC: {pods:?}");
    let (a, b) = pods
        .iter()
        .flat_map(|a| pods.iter().map(move |b| (a, b)))
        .find(|(a, b)| a.2 != b.2)
        .expect("two pods on different nodes");
    let a_node = node_index(&c, &a.2);
    let a_ip = a.1.parse().expect("pod ip");
    // Running is not listening yet (no readiness probe): `a` asks again until `b` answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        match http_get(
            &c.node_ns(a_node),
            SocketAddrV4::new(a_ip, 8080),
            &format!("/dial?host={}&port=8080&path=/whoami", b.1),
            Duration::from_secs(5),
        ) {
            Ok(answer) => break answer,
            Err(e) if std::time::Instant::now() > deadline => panic!("{} -> {}: {e}", a.0, b.0),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert_eq!(
        answer.trim(),
        format!("{} {}", b.0, a.1),
        "pod to pod across nodes, source address kept"
    );
    // A3 on one node: a pod placed beside `a` reaches it by IP over the node's bridge.
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: beside}}
spec:
  nodeName: {node}
  containers:
  - {{name: agnhost, image: xkube/agnhost:0.1.0, args: ["--http-port=8080"]}}
"#,
        node = a.2
    ));
    let beside_ip = c.wait("pod beside running", Duration::from_secs(60), || {
        let p = c.get_json(&["pod", "beside"]);
        (p["status"]["phase"] == "Running")
            .then(|| p["status"]["podIP"].as_str().map(str::to_owned))
            .flatten()
    });
    let answer = c.wait(
        "beside -> a on the same node",
        Duration::from_secs(20),
        || {
            http_get(
                &c.node_ns(a_node),
                SocketAddrV4::new(beside_ip.parse().expect("ip"), 8080),
                &format!("/dial?host={}&port=8080&path=/whoami", a.1),
                Duration::from_secs(5),
            )
            .ok()
        },
    );
    assert_eq!(
        answer.trim(),
        format!("{} {beside_ip}", a.0),
        "pod to pod on one node"
    );
    // A1's "Controllers" line for an RC's pod.
    let d = c.kubectl_ok(&["describe", "pod", &a.0]);
    assert!(
        d.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["Controlled", "By:", "ReplicationController/web"]),
        "{d}"
    );
    // A4: a deleted pod is replaced.
    c.kubectl_ok(&["delete", "pod", &pods[0].0, "--grace-period=1"]);
    c.wait(
        "the RC to replace the deleted pod",
        Duration::from_secs(60),
        || {
            let names: Vec<String> = running_web(&c).into_iter().map(|p| p.0).collect();
            (names.len() == 3 && !names.contains(&pods[0].0)).then_some(())
        },
    );

    resource_limits(&c);
    if runtime == "docker" {
        missing_image(&c);
    }

    // A4: one node's agent dies; the node turns Unknown, its pods are evicted, and the RC
    // brings them back on the other nodes.
    let pods = running_web(&c);
    let lost = pods[0].2.clone();
    let on_lost = pods.iter().filter(|p| p.2 == lost).count();
    c.kill(&lost);
    c.wait(
        "the lost node to turn Unknown",
        Duration::from_secs(60),
        || {
            let n = c.get_json(&["node", &lost]);
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "Unknown")
                .then_some(())
        },
    );
    let after = c.wait(
        "3 running web pods, none on the lost node",
        Duration::from_secs(90),
        || {
            let now = running_web(&c);
            (now.len() == 3 && now.iter().all(|p| p.2 != lost)).then_some(now)
        },
    );
    println!(
        "A4 ({runtime}): killed the agent of {lost} ({on_lost} web pod(s) there); now {:?}",
        after.iter().map(|p| (&p.0, &p.2)).collect::<Vec<_>>()
    );
    // The replacements serve.
    let p = &after[0];
    let hostname = http_get(
        &c.node_ns(node_index(&c, &p.2)),
        SocketAddrV4::new(p.1.parse().expect("ip"), 8080),
        "/hostname",
        Duration::from_secs(5),
    )
    .expect("a replacement answers");
    assert_eq!(hostname.trim(), p.0);
}

/// Running pods of the RC `web`: (name, IP, node).
fn running_web(c: &Cluster) -> Vec<(String, String, String)> {
    let list = c.get_json(&["pods", "-l", "app=web"]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["status"]["phase"] == "Running"
                && p["status"]["podIP"].is_string()
                && p["metadata"]["deletionTimestamp"].is_null()
        })
        .map(|p| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (
                s(&p["metadata"]["name"]),
                s(&p["status"]["podIP"]),
                s(&p["spec"]["nodeName"]),
            )
        })
        .collect()
}

/// Docker runtime: a pod whose image is missing shows ImagePullBackOff with an event, and
/// the node keeps serving its other pods.
fn missing_image(c: &Cluster) {
    let web = running_web(c);
    let node = web[0].2.clone();
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: ghost}}
spec:
  nodeName: {node}
  containers:
  - {{name: c, image: "127.0.0.1:1/xkube/does-not-exist:1.0"}}
"#
    ));
    c.wait("ghost in ImagePullBackOff", Duration::from_secs(60), || {
        let p = c.get_json(&["pod", "ghost"]);
        (p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff")
            .then_some(())
    });
    let table = c.kubectl_ok(&["get", "pod", "ghost"]);
    assert!(table.contains("ImagePullBackOff"), "{table}");
    let events = c.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=ghost",
    ]);
    assert!(
        events.contains("Failed to pull image \"127.0.0.1:1/xkube/does-not-exist:1.0\""),
        "{events}"
    );
    assert!(events.contains("Back-off pulling image"), "{events}");
    let hostname = http_get(
        &c.node_ns(node_index(c, &node)),
        SocketAddrV4::new(web[0].1.parse().expect("ip"), 8080),
        "/hostname",
        Duration::from_secs(5),
    )
    .expect("the node's other pods keep serving");
    assert_eq!(hostname.trim(), web[0].0);
    c.kubectl_ok(&["delete", "pod", "ghost", "--grace-period=1"]);
}

/// A container's limits reach the cgroup it runs in (memory limit, CFS quota): on cgroup v1
/// (hybrid hosts like these VMs, both runtimes) or v2. The container prints what its own
/// cgroup says.
fn resource_limits(c: &Cluster) {
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: limited}
spec:
  containers:
  - name: c
    image: xkube/tools:0.1.0
    command:
    - sh
    - -c
    - |
      v1() { p=$(grep -E "^[0-9]+:([a-z]+,)*$1(,[a-z]+)*:" /proc/self/cgroup | cut -d: -f3); cat /sys/fs/cgroup/$1$p/$2 2>/dev/null || cat /sys/fs/cgroup/$1/$2; }
      v2() { cat /sys/fs/cgroup$(grep '^0::' /proc/self/cgroup | cut -d: -f3)/$1; }
      echo "memory=$(v1 memory memory.limit_in_bytes 2>/dev/null || v2 memory.max)"
      echo "cpu=$(v1 cpu cpu.cfs_quota_us 2>/dev/null || v2 cpu.max)"
      exec sleep 3600
    resources:
      limits: {cpu: 500m, memory: 64Mi}
      requests: {cpu: 250m, memory: 32Mi}
"#,
    );
    let out = logs(c, "limited", "c", "cpu=");
    assert!(out.contains("memory=67108864"), "{out}");
    assert!(
        out.lines()
            .any(|l| l == "cpu=50000" || l.starts_with("cpu=50000 ")),
        "{out}"
    );
    assert_eq!(
        c.get_json(&["pod", "limited"])["status"]["qosClass"],
        "Burstable"
    );
    c.kubectl_ok(&["delete", "pod", "limited", "--grace-period=1"]);
}
