//! Upstream kubectl (v1.33 at /usr/bin/kubectl) against an in-process apiserver, using only the
//! written admin kubeconfig: no workaround flags.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use xkube_apiserver::RunningServer;
use xkube_apiserver::testing::TestServer;

const KUBECTL: &str = "/usr/bin/kubectl";

const MANIFEST: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: Pod
metadata:
  name: nginx
  namespace: demo
  labels:
    app: nginx
spec:
  containers:
  - name: nginx
    image: nginx:1.25
    ports:
    - containerPort: 80
---
apiVersion: v1
kind: ReplicationController
metadata:
  name: web
  namespace: demo
spec:
  replicas: 2
  selector:
    app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  type: NodePort
  selector:
    app: web
  ports:
  - port: 80
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: demo
type: Opaque
data:
  user: YWRtaW4=
  pass: c2VjcmV0
"#;

const ENDPOINTS: &str = r#"apiVersion: v1
kind: Endpoints
metadata:
  name: web
  namespace: demo
subsets:
- addresses:
  - ip: 10.244.0.1
  - ip: 10.244.0.2
  - ip: 10.244.0.3
  - ip: 10.244.0.4
  ports:
  - port: 80
"#;

const APPLIED: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: demo
data:
  mode: fast
"#;

const DAEMONSET: &str = r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
  namespace: default
spec:
  selector:
    matchLabels:
      app: agent
  template:
    metadata:
      labels:
        app: agent
    spec:
      nodeSelector:
        disk: ssd
      tolerations:
      - key: dedicated
        operator: Exists
      containers:
      - name: agent
        image: agent:1.0
        ports:
        - containerPort: 9100
"#;

const NODES: &str = r#"apiVersion: v1
kind: Node
metadata:
  name: fast
  labels:
    disk: ssd
---
apiVersion: v1
kind: Node
metadata:
  name: slow
  labels:
    disk: hdd
"#;

struct Kubectl {
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(KUBECTL);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", &self.home);
        c.stdin(Stdio::null()).kill_on_drop(true);
        c
    }

    /// Runs kubectl expecting failure; returns stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .expect("kubectl runs");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded: {stderr}"
        );
        stderr
    }

    /// Runs kubectl until `done` accepts its output (the controllers work asynchronously).
    async fn until(&self, args: &[&str], done: impl Fn(&str) -> bool) -> String {
        let mut out = String::new();
        for _ in 0..100 {
            out = self.ok(args).await;
            if done(&out) {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("kubectl {args:?} never showed what was expected; last output:\n{out}");
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .expect("kubectl runs");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {stdout}\n{stderr}"
        );
        stdout
    }
}

fn header(out: &str) -> Vec<&str> {
    out.lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect()
}

/// Controllers of the controller-manager running against a test server.
struct Controllers {
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<xkube_controllers::Result<()>>,
}

impl Controllers {
    /// Runs the controllers `names` (comma-separated) against `server`'s insecure port.
    fn start(server: &RunningServer, dir: &Path, names: &str) -> Self {
        let url = server.http_url().expect("http listener");
        let opts = xkube_controllers::Options {
            controllers: names.split(',').map(str::to_string).collect(),
            data_dir: dir.join("cm"),
            ..xkube_controllers::Options::default()
        };
        let client = xkube_client::Client::from_flags(None, Some(&url)).expect("client");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move { xkube_controllers::run(opts, client, s).await });
        Controllers { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("controller-manager task")
            .expect("controller-manager");
    }
}

/// A secure test apiserver and upstream kubectl configured with only its admin kubeconfig
/// (`None`, with a note, where kubectl is not installed).
async fn kubectl_and_server() -> Option<(tempfile::TempDir, RunningServer, Kubectl)> {
    if !Path::new(KUBECTL).exists() {
        eprintln!("skipping: {KUBECTL} is not installed");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::builder(dir.path().join("data"))
        .secure()
        .start()
        .await
        .expect("apiserver starts");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let k = Kubectl {
        kubeconfig: server.kubeconfig.clone().expect("kubeconfig"),
        home,
    };
    Some((dir, server, k))
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write manifest");
    p.to_string_lossy().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_kubectl_core_flows() {
    let Some((dir, server, k)) = kubectl_and_server().await else {
        return;
    };
    // kubectl describe reads a Service's endpoints from its EndpointSlices.
    let cm = Controllers::start(&server, dir.path(), "endpointslicemirroring");
    let manifest = write(dir.path(), "all.yaml", MANIFEST);
    let out = k.ok(&["create", "-f", &manifest]).await;
    for line in [
        "namespace/demo created",
        "pod/nginx created",
        "replicationcontroller/web created",
        "service/web created",
        "secret/creds created",
    ] {
        assert!(out.contains(line), "{out}");
    }

    // Typed `create` subcommands send protobuf bodies.
    let out = k
        .ok(&[
            "-n",
            "demo",
            "create",
            "secret",
            "generic",
            "gen",
            "--from-literal=user=admin",
        ])
        .await;
    assert!(out.contains("secret/gen created"), "{out}");
    let out = k
        .ok(&[
            "-n",
            "demo",
            "create",
            "configmap",
            "cfg",
            "--from-literal=a=b",
        ])
        .await;
    assert!(out.contains("configmap/cfg created"), "{out}");
    let out = k
        .ok(&[
            "-n",
            "demo",
            "create",
            "service",
            "clusterip",
            "cip",
            "--tcp=80:8080",
        ])
        .await;
    assert!(out.contains("service/cip created"), "{out}");
    let out = k.ok(&["create", "namespace", "extra"]).await;
    assert!(out.contains("namespace/extra created"), "{out}");
    let user = k
        .ok(&[
            "-n",
            "demo",
            "get",
            "secret",
            "gen",
            "-o",
            "jsonpath={.data.user}",
        ])
        .await;
    assert_eq!(user, "YWRtaW4=");

    let pods = k.ok(&["-n", "demo", "get", "pods"]).await;
    assert_eq!(
        header(&pods),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );
    assert!(
        pods.contains("nginx") && pods.contains("0/1") && pods.contains("Pending"),
        "{pods}"
    );
    let rc = k.ok(&["-n", "demo", "get", "rc"]).await;
    assert_eq!(header(&rc), ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]);
    let svc = k.ok(&["-n", "demo", "get", "svc"]).await;
    assert_eq!(
        header(&svc),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    assert!(
        svc.contains("NodePort") && svc.contains("<none>") && svc.contains("80:3"),
        "{svc}"
    );
    let secrets = k.ok(&["-n", "demo", "get", "secrets"]).await;
    assert_eq!(header(&secrets), ["NAME", "TYPE", "DATA", "AGE"]);
    assert!(
        secrets.contains("Opaque") && secrets.contains(" 2 "),
        "{secrets}"
    );
    let ns = k.ok(&["get", "namespaces"]).await;
    assert_eq!(header(&ns), ["NAME", "STATUS", "AGE"]);
    assert!(ns.contains("kube-system") && ns.contains("Active"));
    let ep = k.ok(&["get", "endpoints"]).await;
    assert_eq!(header(&ep), ["NAME", "ENDPOINTS", "AGE"]);
    assert!(ep.contains("kubernetes"), "{ep}");

    let wide = k.ok(&["-n", "demo", "get", "pods", "-o", "wide"]).await;
    assert_eq!(
        &header(&wide)[..7],
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    );
    let yaml = k
        .ok(&["-n", "demo", "get", "pod", "nginx", "-o", "yaml"])
        .await;
    assert!(
        yaml.contains("kind: Pod") && yaml.contains("restartPolicy: Always"),
        "{yaml}"
    );
    let selected = k
        .ok(&["-n", "demo", "get", "pods", "-l", "app=nginx", "-o", "name"])
        .await;
    assert_eq!(selected.trim(), "pod/nginx");
    let none = k
        .ok(&["-n", "demo", "get", "pods", "-l", "app=other", "-o", "name"])
        .await;
    assert_eq!(none.trim(), "");

    let described = k.ok(&["-n", "demo", "describe", "pod", "nginx"]).await;
    assert!(
        described.contains("Name:")
            && described.contains("nginx:1.25")
            && described.contains("QoS Class:"),
        "{described}"
    );
    let described = k.ok(&["-n", "demo", "describe", "svc", "web"]).await;
    assert!(
        described.contains("NodePort:") && described.contains("Selector:"),
        "{described}"
    );
    k.ok(&["-n", "demo", "describe", "rc", "web"]).await;
    let described = k.ok(&["describe", "svc", "kubernetes"]).await;
    assert!(
        described.contains("Endpoints:") && described.contains("127.0.0.1:"),
        "{described}"
    );
    let ep = write(dir.path(), "ep.yaml", ENDPOINTS);
    k.ok(&["create", "-f", &ep]).await;
    let ep = k.ok(&["-n", "demo", "get", "endpoints", "web"]).await;
    assert!(
        ep.contains("10.244.0.1:80,10.244.0.2:80,10.244.0.3:80 + 1 more..."),
        "{ep}"
    );
    let mut described = String::new();
    for _ in 0..20 {
        described = k.ok(&["-n", "demo", "describe", "svc", "web"]).await;
        if described.contains("+ 1 more...") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        described.contains(
            "Endpoints:                10.244.0.1:80,10.244.0.2:80,10.244.0.3:80 + 1 more..."
        ),
        "{described}"
    );

    let labeled = k
        .ok(&["-n", "demo", "label", "pod", "nginx", "tier=frontend"])
        .await;
    assert!(labeled.contains("pod/nginx labeled"), "{labeled}");
    let scaled = k
        .ok(&["-n", "demo", "scale", "rc", "web", "--replicas=3"])
        .await;
    assert!(
        scaled.contains("replicationcontroller/web scaled"),
        "{scaled}"
    );
    let rc = k
        .ok(&[
            "-n",
            "demo",
            "get",
            "rc",
            "web",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .await;
    assert_eq!(rc, "3");

    let applied = write(dir.path(), "applied.yaml", APPLIED);
    assert!(
        k.ok(&["apply", "-f", &applied])
            .await
            .contains("configmap/settings created")
    );
    let again = k.ok(&["apply", "-f", &applied]).await;
    assert!(again.contains("configmap/settings unchanged"), "{again}");
    write(dir.path(), "applied.yaml", &APPLIED.replace("fast", "slow"));
    assert!(
        k.ok(&["apply", "-f", &applied])
            .await
            .contains("configmap/settings configured")
    );

    // Server-side apply is refused (415) until it is supported; nothing is created.
    let ssa = write(dir.path(), "ssa.yaml", &APPLIED.replace("settings", "ssa"));
    let err = k.fails(&["apply", "--server-side", "-f", &ssa]).await;
    assert!(
        err.contains("Server-side apply not available on the server"),
        "{err}"
    );
    let err = k.fails(&["-n", "demo", "get", "configmap", "ssa"]).await;
    assert!(err.contains("not found"), "{err}");

    // get -w sees a change.
    let mut watch = k
        .command(&["-n", "demo", "get", "pods", "-w", "--request-timeout=0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("kubectl -w");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    k.ok(&[
        "-n",
        "demo",
        "label",
        "pod",
        "nginx",
        "tier=backend",
        "--overwrite",
    ])
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = watch.start_kill();
    let out = watch.wait_with_output().await.expect("watch output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().filter(|l| l.starts_with("nginx")).count() >= 2,
        "{text}"
    );

    for (kind, name) in [
        ("pod", "nginx"),
        ("rc", "web"),
        ("svc", "web"),
        ("secret", "creds"),
        ("configmap", "settings"),
    ] {
        let out = k.ok(&["-n", "demo", "delete", kind, name]).await;
        assert!(out.contains("deleted"), "{out}");
    }
    let out = k.ok(&["delete", "namespace", "demo"]).await;
    assert!(out.contains("namespace \"demo\" deleted"), "{out}");
    cm.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_kubectl_applies_and_lists_daemonsets() {
    let Some((dir, server, k)) = kubectl_and_server().await else {
        return;
    };
    // The DaemonSet controller, so that status and pods are real.
    let cm = Controllers::start(&server, dir.path(), "daemonset");

    let nodes = write(dir.path(), "nodes.yaml", NODES);
    k.ok(&["create", "-f", &nodes]).await;
    let ds = write(dir.path(), "ds.yaml", DAEMONSET);
    let out = k.ok(&["apply", "-f", &ds]).await;
    assert!(out.contains("daemonset.apps/agent created"), "{out}");
    let out = k.ok(&["apply", "-f", &ds]).await;
    assert!(out.contains("daemonset.apps/agent unchanged"), "{out}");

    // One pod, on the node the selector picks, bound by the controller.
    let pods = k
        .until(&["get", "pods", "-l", "app=agent", "-o", "wide"], |o| {
            o.lines().count() == 2
        })
        .await;
    assert!(pods.contains(" fast "), "{pods}");
    let listed = k
        .until(&["get", "ds"], |o| {
            o.lines().nth(1).is_some_and(|l| {
                l.split_whitespace().collect::<Vec<_>>()[1..6] == ["1", "1", "0", "1", "0"]
            })
        })
        .await;
    assert_eq!(
        header(&listed),
        [
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "NODE",
            "SELECTOR",
            "AGE"
        ]
    );
    assert!(listed.contains("disk=ssd"), "{listed}");
    let wide = k.ok(&["get", "daemonsets.apps", "-o", "wide"]).await;
    assert_eq!(
        &header(&wide)[9..],
        ["CONTAINERS", "IMAGES", "SELECTOR"],
        "{wide}"
    );
    assert!(
        wide.contains("agent:1.0") && wide.contains("app=agent"),
        "{wide}"
    );
    let all = k.ok(&["get", "all"]).await;
    assert!(all.contains("daemonset.apps/agent"), "{all}");
    let described = k.ok(&["describe", "ds", "agent"]).await;
    assert!(
        described.contains("Desired Number of Nodes Scheduled: 1")
            && described.contains("SuccessfulCreate"),
        "{described}"
    );

    // A changed manifest is patched: a new generation, the pod replaced with the new image.
    let first = k
        .ok(&["get", "pods", "-l", "app=agent", "-o", "name"])
        .await;
    std::fs::write(&ds, DAEMONSET.replace("agent:1.0", "agent:2.0")).expect("rewrite");
    let out = k.ok(&["apply", "-f", &ds]).await;
    assert!(out.contains("daemonset.apps/agent configured"), "{out}");
    let spec = k
        .ok(&[
            "get",
            "ds",
            "agent",
            "-o",
            "jsonpath={.metadata.generation} {.spec.template.spec.containers[*].image} {.spec.template.spec.containers[0].ports[0].containerPort}",
        ])
        .await;
    assert_eq!(spec, "2 agent:2.0 9100");
    k.until(
        &[
            "get",
            "ds",
            "agent",
            "-o",
            "jsonpath={.status.observedGeneration}",
        ],
        |o| o == "2",
    )
    .await;
    // The old pod is not ready, so the rolling update replaces it at once; without a kubelet
    // it stays Terminating, and the new one waits for it to go.
    let terminating = k
        .until(
            &[
                "get",
                "pods",
                "-l",
                "app=agent",
                "-o",
                "jsonpath={.items[*].metadata.deletionTimestamp}",
            ],
            |o| !o.is_empty(),
        )
        .await;
    assert!(!terminating.is_empty());
    let old = first.trim().trim_start_matches("pod/").to_string();
    k.ok(&["delete", "pod", &old, "--grace-period=0", "--force"])
        .await;
    let images = k
        .until(
            &[
                "get",
                "pods",
                "-l",
                "app=agent",
                "-o",
                "jsonpath={.items[*].spec.containers[0].image}",
            ],
            |o| o == "agent:2.0",
        )
        .await;
    assert_eq!(images, "agent:2.0");

    // Validation errors come back as kubectl prints them.
    let bad = write(
        dir.path(),
        "bad.yaml",
        &DAEMONSET
            .replace("name: agent\n  namespace", "name: bad\n  namespace")
            .replace(
                "      labels:\n        app: agent",
                "      labels:\n        app: other",
            ),
    );
    let err = k.fails(&["apply", "-f", &bad]).await;
    assert!(
        err.contains("The DaemonSet \"bad\" is invalid: spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`"),
        "{err}"
    );

    let out = k.ok(&["delete", "ds", "agent"]).await;
    assert!(out.contains("daemonset.apps \"agent\" deleted"), "{out}");
    cm.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_kubectl_patch_with_a_non_object_is_an_error_and_changes_nothing() {
    let Some((dir, server, k)) = kubectl_and_server().await else {
        return;
    };
    let cm = write(
        dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: \"1\"\n  b: two\n",
    );
    k.ok(&["create", "-f", &cm]).await;
    let get = || async {
        let out = k.ok(&["get", "configmap", "x", "-o", "json"]).await;
        serde_json::from_str::<serde_json::Value>(&out).expect("kubectl prints JSON")
    };
    let before = get().await;
    assert_eq!(before["data"], serde_json::json!({"a": "1", "b": "two"}));
    for ty in ["merge", "strategic"] {
        for patch in ["\"str\"", "42", "[1,2]", "null"] {
            let err = k
                .fails(&["patch", "configmap", "x", "--type", ty, "-p", patch])
                .await;
            assert!(
                !err.trim().is_empty(),
                "--type {ty} -p {patch}: no error printed"
            );
            if patch == "\"str\"" {
                assert!(
                    err.contains(
                        "cannot unmarshal string into Go value of type map[string]interface {}"
                    ),
                    "--type {ty} -p {patch}: {err}"
                );
            }
        }
    }
    let err = k
        .fails(&[
            "patch",
            "configmap",
            "x",
            "--type",
            "json",
            "-p",
            r#"{"op":"remove"}"#,
        ])
        .await;
    assert!(!err.trim().is_empty());
    let err = k
        .fails(&[
            "patch",
            "configmap",
            "x",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"name":"y"}}"#,
        ])
        .await;
    assert!(
        err.contains("the name of the object (y) does not match the name on the URL (x)"),
        "{err}"
    );
    let after = get().await;
    for field in ["data", "metadata"] {
        assert_eq!(after[field], before[field], "{field} changed");
    }
    server.stop().await;
}

/// Stands in for the kubelets: every pod of `ns` runs and is ready (the deployment tests
/// need available pods, not containers).
fn pods_become_ready(server: &RunningServer, ns: &str) -> tokio::task::JoinHandle<()> {
    use xkube_client::{Api, ListParams, Object, Patch};
    let url = server.http_url().expect("http listener");
    let client = xkube_client::Client::from_flags(None, Some(&url)).expect("client");
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, ns);
    tokio::spawn(async move {
        // Bounded: 5 minutes of 100 ms rounds at most.
        for _ in 0..3000 {
            if let Ok(list) = api.list(&ListParams::default()).await {
                for p in list.items {
                    if xkube_api::pod::is_ready(&p) || p.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    let now = xkube_api::meta::format_time(jiff::Timestamp::now());
                    let status = serde_json::json!({"status": {"phase": "Running",
                        "conditions": [{"type": "Ready", "status": "True",
                                        "lastTransitionTime": now}]}});
                    let _ = api.patch_status(p.name(), &Patch::Merge(status)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_kubectl_deployment_rollout_history_undo_and_cascade() {
    let Some((dir, server, k)) = kubectl_and_server().await else {
        return;
    };
    let cm = Controllers::start(
        &server,
        dir.path(),
        "replicaset,deployment,garbagecollector",
    );
    let kubelet = pods_become_ready(&server, "default");

    let out = k
        .ok(&[
            "create",
            "deployment",
            "web",
            "--image=registry.local/web:v1",
            "--replicas=3",
        ])
        .await;
    assert_eq!(out.trim(), "deployment.apps/web created");
    let out = k
        .ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    assert!(
        out.contains("deployment \"web\" successfully rolled out"),
        "{out}"
    );
    let out = k.ok(&["get", "deploy", "web"]).await;
    assert_eq!(
        header(&out),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["web", "3/3", "3", "3"], "{out}");
    let out = k.ok(&["describe", "deployment", "web"]).await;
    for want in [
        "3 desired | 3 updated | 3 total | 3 available | 0 unavailable",
        "StrategyType:           RollingUpdate",
        "RollingUpdateStrategy:  25% max unavailable, 25% max surge",
        "NewReplicaSet:   web-",
        "(3/3 replicas created)",
        "ScalingReplicaSet",
    ] {
        assert!(out.contains(want), "describe lacks {want:?}:\n{out}");
    }
    let out = k.ok(&["get", "all"]).await;
    assert!(
        out.contains("deployment.apps/web") && out.contains("replicaset.apps/web-"),
        "{out}"
    );

    // A new image, another revision; then back to the first.
    let out = k
        .ok(&[
            "set",
            "image",
            "deployment/web",
            "web=registry.local/web:v2",
        ])
        .await;
    assert_eq!(out.trim(), "deployment.apps/web image updated");
    k.ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    let out = k.ok(&["get", "rs", "-l", "app=web"]).await;
    assert_eq!(header(&out), ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]);
    assert_eq!(out.lines().count(), 3, "a ReplicaSet per template: {out}");
    let out = k.ok(&["rollout", "history", "deployment/web"]).await;
    let revisions: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(revisions, ["1", "2"], "{out}");
    let out = k.ok(&["rollout", "undo", "deployment/web"]).await;
    assert_eq!(out.trim(), "deployment.apps/web rolled back");
    k.ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    let image = k
        .ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .await;
    assert_eq!(image, "registry.local/web:v1");
    let out = k.ok(&["rollout", "history", "deployment/web"]).await;
    assert!(out.lines().any(|l| l.starts_with("3 ")), "{out}");

    // Pause, resume, restart, scale.
    assert_eq!(
        k.ok(&["rollout", "pause", "deployment/web"]).await.trim(),
        "deployment.apps/web paused"
    );
    assert_eq!(
        k.ok(&["rollout", "resume", "deployment/web"]).await.trim(),
        "deployment.apps/web resumed"
    );
    assert_eq!(
        k.ok(&["rollout", "restart", "deployment/web"]).await.trim(),
        "deployment.apps/web restarted"
    );
    k.ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    assert_eq!(
        k.ok(&["scale", "deployment", "web", "--replicas=1"])
            .await
            .trim(),
        "deployment.apps/web scaled"
    );
    k.until(&["get", "deploy", "web"], |o| {
        o.lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("1/1"))
    })
    .await;

    // Deleting it takes its ReplicaSets and pods along.
    k.ok(&["delete", "deployment", "web"]).await;
    k.until(&["get", "rs,pods", "-l", "app=web", "-o", "name"], |o| {
        o.trim().is_empty()
    })
    .await;
    kubelet.abort();
    cm.stop().await;
    server.stop().await;
}
