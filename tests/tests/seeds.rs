//! SEEDS.md scenarios on a real `xkube cluster up --nodes 3` (process runtime): A2 (two
//! containers of a pod talk over localhost), A3 (pod to pod across nodes), A7 (service
//! environment variables), A13 (secret files with decoded values, the service-account token),
//! A14 (emptyDir shared by two containers), A4 (a deleted RC pod is replaced), and container
//! logs through the apiserver (`kubectl logs`).

use std::{net::SocketAddrV4, time::Duration};

use xkube_e2e::{Cluster, http_get};

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
fn privileged_seed_scenarios_on_a_real_cluster() {
    let c = Cluster::up(3, &[]);
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
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: seeds, labels: {app: seeds}}
spec:
  containers:
  - name: web
    image: xkube/agnhost
    args: ["--http-port=8080"]
    volumeMounts: [{name: scratch, mountPath: /scratch}]
  - name: client
    image: busybox
    command: ["sh", "-c", "sleep 2; curl -s http://127.0.0.1:8080/hostname; echo; echo shared > /scratch/x; env | sort; cat /etc/secret-volume/username; echo; ls /var/run/secrets/kubernetes.io/serviceaccount; sleep 3600"]
    volumeMounts:
    - {name: scratch, mountPath: /scratch}
    - {name: secret-volume, mountPath: /etc/secret-volume, readOnly: true}
  - name: reader
    image: busybox
    command: ["sh", "-c", "while [ ! -f /scratch/x ]; do sleep 0.2; done; echo reader saw $(cat /scratch/x); sleep 3600"]
    volumeMounts: [{name: scratch, mountPath: /scratch}]
  volumes:
  - {name: scratch, emptyDir: {}}
  - {name: secret-volume, secret: {secretName: mysecret}}
"#,
    );
    // A2: the client container reached the web container over localhost (the hostname is
    // the pod name).
    let client = logs(&c, "seeds", "client", "KUBERNETES_SERVICE_HOST=");
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
    // A14: emptyDir shared between containers of the pod.
    logs(&c, "seeds", "reader", "reader saw shared");

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
      - {name: agnhost, image: xkube/agnhost, args: ["--http-port=8080"]}
"#,
    );
    let pods = c.wait("3 running web pods", Duration::from_secs(90), || {
        let list = c.get_json(&["pods", "-l", "app=web"]);
        let running: Vec<(String, String, String)> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
            .map(|p| {
                (
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    p["status"]["podIP"].as_str().unwrap_or_default().to_owned(),
                    p["spec"]["nodeName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        (running.len() == 3).then_some(running)
    });
    let nodes: std::collections::BTreeSet<_> = pods.iter().map(|p| p.2.clone()).collect();
    assert!(nodes.len() >= 2, "the scheduler spreads the RC: {pods:?}");
    let (a, b) = pods
        .iter()
        .flat_map(|a| pods.iter().map(move |b| (a, b)))
        .find(|(a, b)| a.2 != b.2)
        .expect("two pods on different nodes");
    let a_node = (0..c.nodes).find(|i| c.node_name(*i) == a.2).expect("node");
    let a_ip = a.1.parse().expect("pod ip");
    let answer = http_get(
        &c.node_ns(a_node),
        SocketAddrV4::new(a_ip, 8080),
        &format!("/dial?host={}&port=8080&path=/whoami", b.1),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{} -> {}: {e}", a.0, b.0));
    assert_eq!(
        answer.trim(),
        format!("{} {}", b.0, a.1),
        "pod to pod across nodes, source address kept"
    );
    c.kubectl_ok(&["delete", "pod", &pods[0].0, "--grace-period=1"]);
    c.wait(
        "the RC to replace the deleted pod",
        Duration::from_secs(60),
        || {
            let list = c.get_json(&["pods", "-l", "app=web"]);
            let names: Vec<String> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["status"]["phase"] == "Running")
                .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
                .collect();
            (names.len() == 3 && !names.contains(&pods[0].0)).then_some(())
        },
    );
}
