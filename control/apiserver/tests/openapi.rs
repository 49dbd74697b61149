//! The OpenAPI documents as upstream kubectl (v1.33 at /usr/bin/kubectl) uses them: `explain`,
//! server-side field validation on `create` and `apply`, and the documents' HTTP behaviour;
//! and objects as Kubernetes returns them on create.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use xkube_apiserver::RunningServer;
use xkube_apiserver::testing::TestServer;

const KUBECTL: &str = "/usr/bin/kubectl";

const POD_WITH_UNKNOWN_FIELD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: strict
  namespace: default
spec:
  containers:
  - name: c
    image: nginx
    foo: bar
"#;

struct Kubectl {
    kubeconfig: PathBuf,
    home: PathBuf,
}

/// What a kubectl run printed and how it ended.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    async fn run(&self, args: &[&str]) -> Run {
        let mut c = tokio::process::Command::new(KUBECTL);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", &self.home)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(60), c.output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .expect("kubectl runs");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    async fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args).await;
        assert_eq!(
            r.code,
            Some(0),
            "kubectl {args:?} failed: {}\n{}",
            r.stdout,
            r.stderr
        );
        r
    }

    async fn fails(&self, args: &[&str]) -> Run {
        let r = self.run(args).await;
        assert_eq!(
            r.code,
            Some(1),
            "kubectl {args:?} did not fail with 1: {}\n{}",
            r.stdout,
            r.stderr
        );
        r
    }
}

/// A secure test apiserver and upstream kubectl with only its admin kubeconfig (`None`, with a
/// note, where kubectl is not installed).
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
async fn kubectl_explain_prints_the_generated_field_docs() {
    let Some((_dir, server, k)) = kubectl_and_server().await else {
        return;
    };
    let out = k.ok(&["explain", "pod.spec.containers.ports"]).await.stdout;
    assert!(out.contains("KIND:       Pod"), "{out}");
    assert!(out.contains("VERSION:    v1"), "{out}");
    assert!(out.contains("FIELD: ports <[]ContainerPort>"), "{out}");
    assert!(out.contains("containerPort\t<integer> -required-"), "{out}");
    assert!(
        out.contains("Number of port to expose on the pod's IP address."),
        "{out}"
    );
    assert!(out.contains("protocol\t<string>"), "{out}");

    let out = k.ok(&["explain", "deployment.spec.strategy"]).await.stdout;
    assert!(out.contains("GROUP:      apps"), "{out}");
    assert!(out.contains("KIND:       Deployment"), "{out}");
    assert!(
        out.contains("rollingUpdate\t<RollingUpdateDeployment>"),
        "{out}"
    );
    assert!(out.contains("type\t<string>"), "{out}");

    let out = k.ok(&["explain", "svc", "--recursive"]).await.stdout;
    assert!(out.contains("KIND:       Service"), "{out}");
    for field in [
        "clusterIP\t<string>",
        "targetPort\t<IntOrString>",
        "loadBalancer\t<LoadBalancerStatus>",
    ] {
        assert!(out.contains(field), "{field} missing:\n{out}");
    }

    // A list kind and a cluster-scoped kind of another group.
    let out = k.ok(&["explain", "clusterrole.rules"]).await.stdout;
    assert!(
        out.contains("GROUP:      rbac.authorization.k8s.io"),
        "{out}"
    );
    assert!(out.contains("verbs\t<[]string> -required-"), "{out}");

    let err = k.fails(&["explain", "pod.spec.nothere"]).await.stderr;
    assert!(err.contains(r#"field "nothere" does not exist"#), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_strict_validation_rejects_unknown_fields_with_the_server_field_path() {
    let Some((dir, server, k)) = kubectl_and_server().await else {
        return;
    };
    let pod = write(dir.path(), "pod.yaml", POD_WITH_UNKNOWN_FIELD);
    for args in [
        vec!["apply", "--validate=strict", "-f", &pod],
        vec!["create", "--validate=strict", "-f", &pod],
        vec!["apply", "--validate=true", "-f", &pod],
        vec!["create", "-f", &pod],
    ] {
        let err = k.fails(&args).await.stderr;
        assert!(
            err.contains(r#"strict decoding error: unknown field "spec.containers[0].foo""#),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("Error from server (BadRequest)"),
            "{args:?}: {err}"
        );
    }
    let err = k.fails(&["get", "pod", "strict"]).await.stderr;
    assert!(err.contains("not found"), "{err}");

    // Warn: created, with the server's warning.
    let r = k.ok(&["apply", "--validate=warn", "-f", &pod]).await;
    assert!(r.stdout.contains("pod/strict created"), "{}", r.stdout);
    assert!(
        r.stderr
            .contains(r#"Warning: unknown field "spec.containers[0].foo""#),
        "{}",
        r.stderr
    );
    // Ignore: no warning.
    let other = write(
        dir.path(),
        "other.yaml",
        &POD_WITH_UNKNOWN_FIELD.replace("name: strict", "name: lenient"),
    );
    let r = k.ok(&["create", "--validate=false", "-f", &other]).await;
    assert!(r.stdout.contains("pod/lenient created"), "{}", r.stdout);
    assert!(!r.stderr.contains("unknown field"), "{}", r.stderr);

    // A later apply of the same object patches it and still validates strictly.
    let changed = POD_WITH_UNKNOWN_FIELD
        .replace("foo: bar", "foo: baz")
        .replace("namespace: default", "namespace: default\n  labels: {a: b}");
    let changed = write(dir.path(), "pod.yaml", &changed);
    let err = k
        .fails(&["apply", "--validate=strict", "-f", &changed])
        .await
        .stderr;
    assert!(
        err.contains(r#"unknown field "spec.containers[0].foo""#),
        "{err}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_side_apply_fails_clearly() {
    let Some((dir, server, k)) = kubectl_and_server().await else {
        return;
    };
    let cm = write(
        dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: default\ndata:\n  a: b\n",
    );
    let r = k.fails(&["apply", "--server-side", "-f", &cm]).await;
    assert!(
        r.stderr
            .contains("Server-side apply not available on the server"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    let err = k.fails(&["get", "configmap", "ssa"]).await.stderr;
    assert!(err.contains("not found"), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn the_documents_are_json_with_etags_and_hashed_urls() {
    let api = common::start().await;
    let index = api
        .http
        .get(api.url("/openapi/v3"))
        .send()
        .await
        .expect("index");
    assert_eq!(index.status(), 200);
    let index: Value = index.json().await.expect("index is JSON");
    let url = index["paths"]["api/v1"]["serverRelativeURL"]
        .as_str()
        .expect("api/v1 URL")
        .to_string();
    let hash = url.split("hash=").nth(1).expect("hash").to_string();
    assert_eq!(hash.len(), 128, "{url}");

    let resp = api
        .http
        .get(api.url(&url))
        .header("accept", "application/json")
        .send()
        .await
        .expect("api/v1");
    assert_eq!(resp.status(), 200);
    let etag = resp.headers()["etag"].to_str().expect("etag").to_string();
    assert_eq!(etag, format!("\"{hash}\""));
    let doc: Value = resp.json().await.expect("api/v1 is JSON");
    assert_eq!(doc["openapi"], "3.0.0");
    let pod = &doc["components"]["schemas"]["io.k8s.api.core.v1.Pod"];
    assert_eq!(
        pod["x-kubernetes-group-version-kind"],
        json!([{"group": "", "version": "v1", "kind": "Pod"}])
    );
    let again = api
        .http
        .get(api.url(&url))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("revalidate");
    assert_eq!(again.status(), 304);

    // v2: JSON when JSON is acceptable at all, 406 for protobuf alone.
    let pb = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
    let resp = api
        .http
        .get(api.url("/openapi/v2"))
        .header("accept", format!("{pb}, application/json"))
        .send()
        .await
        .expect("v2");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v2: Value = resp.json().await.expect("v2 is JSON");
    assert_eq!(v2["swagger"], "2.0");
    assert_eq!(
        v2["definitions"]["io.k8s.api.apps.v1.DeploymentList"]["x-kubernetes-group-version-kind"]
            [0]["kind"],
        "DeploymentList"
    );
    let resp = api
        .http
        .get(api.url("/openapi/v2"))
        .header("accept", pb)
        .send()
        .await
        .expect("v2 protobuf");
    assert_eq!(resp.status(), 406);

    let (code, _) = api.get("/openapi/v3/apis/nothere/v1").await;
    assert_eq!(code, 404);
    api.stop().await;
}

#[tokio::test]
async fn created_objects_carry_the_status_kubernetes_returns() {
    let api = common::start().await;
    let ns = "/api/v1/namespaces/default";
    let template = json!({
        "metadata": {"labels": {"app": "a"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
    });
    let selector = json!({"matchLabels": {"app": "a"}});
    let cases = [
        (
            "/api/v1/namespaces".to_string(),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shapes"}}),
            json!({"phase": "Active"}),
        ),
        (
            format!("{ns}/services"),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                   "spec": {"ports": [{"port": 80}]},
                   "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}),
            json!({"loadBalancer": {}}),
        ),
        (
            "/api/v1/nodes".to_string(),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}}),
            json!({
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
                "nodeInfo": {"architecture": "", "bootID": "", "containerRuntimeVersion": "",
                             "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "",
                             "machineID": "", "operatingSystem": "", "osImage": "",
                             "systemUUID": ""},
            }),
        ),
        (
            format!("{ns}/resourcequotas"),
            json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"},
                   "spec": {"hard": {"pods": "1"}}, "status": {"used": {"pods": "7"}}}),
            json!({}),
        ),
        (
            format!("{ns}/pods"),
            common::pod("p", json!({})),
            json!({"phase": "Pending", "qosClass": "BestEffort"}),
        ),
        (
            format!("{ns}/replicationcontrollers"),
            json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "rc"},
                   "spec": {"replicas": 0, "template": template}}),
            json!({"replicas": 0}),
        ),
        (
            "/apis/apps/v1/namespaces/default/deployments".to_string(),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                   "spec": {"replicas": 0, "selector": selector, "template": template}}),
            json!({}),
        ),
        (
            "/apis/apps/v1/namespaces/default/replicasets".to_string(),
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "rs"},
                   "spec": {"replicas": 0, "selector": selector, "template": template}}),
            json!({"replicas": 0}),
        ),
        (
            "/apis/batch/v1/namespaces/default/jobs".to_string(),
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
                   "spec": {"template": {"spec": {"restartPolicy": "Never",
                            "containers": [{"name": "c", "image": "busybox"}]}}}}),
            json!({}),
        ),
    ];
    for (path, body, status) in cases {
        let (code, created) = api.post(&path, &body).await;
        assert_eq!(code, 201, "{path}: {created}");
        assert_eq!(created["status"], status, "{path} create: {created}");
        assert!(
            created["metadata"].get("managedFields").is_none(),
            "{created}"
        );
        let name = created["metadata"]["name"].as_str().expect("name");
        let (code, got) = api.get(&format!("{path}/{name}")).await;
        assert_eq!(code, 200, "{got}");
        assert_eq!(got["status"], status, "{path} get: {got}");
    }

    // A status update keeps the Service's loadBalancer object.
    let (_, svc) = api.get(&format!("{ns}/services/s")).await;
    let mut svc = svc;
    svc["status"] = json!({"conditions": []});
    let (code, updated) = api.put(&format!("{ns}/services/s/status"), &svc).await;
    assert_eq!(code, 200, "{updated}");
    assert_eq!(updated["status"]["loadBalancer"], json!({}), "{updated}");
    api.stop().await;
}
