//! `xkubectl` (the built binary) against an in-process apiserver over TLS, using only the
//! admin kubeconfig the apiserver writes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use xkube_apiserver::RunningServer;
use xkube_apiserver::testing::TestServer;
use xkube_client::{
    Api, Client, Config, DeleteParams, DynamicObject, ListParams, Object, Overrides, Patch,
};

const BIN: &str = env!("CARGO_BIN_EXE_xkubectl");

struct Cluster {
    server: RunningServer,
    kubeconfig: PathBuf,
    client: Client,
    /// Stops the controllers.
    controllers: tokio_util::sync::CancellationToken,
    _dir: tempfile::TempDir,
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::builder(dir.path())
        .memory()
        .secure()
        .start()
        .await
        .expect("apiserver starts");
    let kubeconfig = server.kubeconfig.clone().expect("kubeconfig written");
    let cfg = Config::load(Some(&kubeconfig), &Overrides::default()).expect("kubeconfig loads");
    let client = Client::new(&cfg).expect("client");
    // The controllers that `delete --cascade` and `rollout` rely on (not the replication
    // controller: tests below play it themselves).
    let controllers = tokio_util::sync::CancellationToken::new();
    let opts = xkube_controllers::Options {
        controllers: ["garbagecollector", "replicaset", "deployment"]
            .map(String::from)
            .to_vec(),
        data_dir: dir.path().join("cm"),
        ..xkube_controllers::Options::default()
    };
    let cm_client = Client::new(&cfg).expect("controller client");
    let stop = controllers.clone();
    tokio::spawn(async move { xkube_controllers::run(opts, cm_client, stop).await });
    Cluster {
        server,
        kubeconfig,
        client,
        controllers,
        _dir: dir,
    }
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self) -> String {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        self.stdout
    }
    fn fails(self) -> String {
        assert_eq!(self.code, 1, "command must fail with 1: {self:?}");
        self.stderr
    }
}

async fn run_with(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Out {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("xkubectl starts");
    if let Some(text) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut si = child.stdin.take().expect("stdin");
        si.write_all(text.as_bytes()).await.expect("write stdin");
        drop(si);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("xkubectl finishes in time")
        .expect("xkubectl runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Cluster {
    async fn stop(self) {
        self.controllers.cancel();
        self.server.stop().await;
    }
    async fn k(&self, args: &[&str]) -> Out {
        run_with(&self.kubeconfig, args, None).await
    }
    fn api(&self, plural: &str, ns: Option<&str>) -> Api<DynamicObject> {
        let res = xkube_api::resources::find("", "v1", plural).expect("registered");
        Api::<DynamicObject>::dynamic(self.client.clone(), res, ns)
    }
}

fn header(out: &str) -> Vec<&str> {
    out.lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect()
}

fn row<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{out}"))
        .split_whitespace()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_describe_label_scale_delete() {
    let c = cluster().await;
    let out = c
        .k(&[
            "create",
            "-f",
            &fixture("namespace.yaml"),
            "-f",
            &fixture("pod.yaml"),
            "-f",
            &fixture("rc.yaml"),
            "-f",
            &fixture("service.yaml"),
            "-f",
            &fixture("secret.yaml"),
        ])
        .await
        .ok();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "namespace \"demo\" created",
            "pod \"nginx\" created",
            "replicationcontroller \"web\" created",
            "service \"web\" created",
            "secret \"creds\" created",
        ]
    );

    // get, each kind with the seed columns.
    let pods = c.k(&["get", "pods", "-n", "demo"]).await.ok();
    assert_eq!(
        header(&pods),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );
    let r = row(&pods, "nginx");
    assert_eq!(&r[1..4], ["0/1", "Pending", "0"]);
    assert!(r[4].ends_with('s'), "age like 3s: {pods}");
    let wide = c
        .k(&["get", "po", "nginx", "-n", "demo", "-o", "wide"])
        .await
        .ok();
    assert_eq!(
        &header(&wide)[..7],
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    );
    let rc = c.k(&["get", "rc", "-n", "demo"]).await.ok();
    assert_eq!(header(&rc), ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]);
    assert_eq!(&row(&rc, "web")[1..4], ["2", "0", "0"]);
    let svc = c.k(&["get", "svc", "web", "--namespace=demo"]).await.ok();
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
    let r = row(&svc, "web");
    assert_eq!(r[1], "NodePort");
    assert!(r[2].starts_with("10."), "{svc}");
    assert_eq!(r[3], "<none>");
    assert!(r[4].starts_with("80:3") && r[4].ends_with("/TCP"), "{svc}");
    let secrets = c.k(&["get", "secrets", "-n", "demo"]).await.ok();
    assert_eq!(header(&secrets), ["NAME", "TYPE", "DATA", "AGE"]);
    assert_eq!(&row(&secrets, "creds")[1..3], ["Opaque", "2"]);
    let ns = c.k(&["get", "namespaces"]).await.ok();
    assert_eq!(header(&ns), ["NAME", "STATUS", "AGE"]);
    assert_eq!(row(&ns, "demo")[1], "Active");
    assert_eq!(row(&ns, "kube-system")[1], "Active");
    let ep = c.k(&["get", "endpoints"]).await.ok();
    assert_eq!(header(&ep), ["NAME", "ENDPOINTS", "AGE"]);
    assert!(row(&ep, "kubernetes")[1].contains("127.0.0.1:"), "{ep}");

    // Several kinds at once are prefixed with their kind.
    let multi = c.k(&["get", "rc,svc", "-n", "demo"]).await.ok();
    assert!(
        multi.contains("replicationcontroller/web") && multi.contains("service/web"),
        "{multi}"
    );

    // -A adds the NAMESPACE column; -l filters; -o name / yaml / json.
    let all = c.k(&["get", "pods", "-A"]).await.ok();
    assert_eq!(header(&all)[..2], ["NAMESPACE", "NAME"]);
    assert_eq!(row(&all, "demo")[1], "nginx");
    let sel = c
        .k(&["get", "svc", "-A", "-l", "app=web", "-o", "name"])
        .await
        .ok();
    assert_eq!(sel, "service/web\n");
    let none = c.k(&["get", "pods", "-n", "demo", "-l", "app=nope"]).await;
    assert_eq!(none.code, 0);
    assert_eq!(none.stderr.trim(), "No resources found in demo namespace.");
    let yaml = c
        .k(&["get", "pod/nginx", "-n", "demo", "-o", "yaml"])
        .await
        .ok();
    let v: Value = serde_yaml::from_str(&yaml).expect("yaml output parses");
    assert_eq!(
        (v["kind"].as_str(), v["metadata"]["name"].as_str()),
        (Some("Pod"), Some("nginx"))
    );
    assert_eq!(v["spec"]["restartPolicy"], "Always");
    let ip = c
        .k(&[
            "get",
            "svc",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .await
        .ok();
    assert_eq!(ip, r[2], "jsonpath prints the cluster IP of the table");
    let names = c
        .k(&["get", "ns", "-o", "jsonpath={.items[*].metadata.name}"])
        .await
        .ok();
    assert!(names.split(' ').any(|n| n == "demo"), "{names}");
    let list = c
        .k(&["get", "secrets", "-n", "demo", "-o", "json"])
        .await
        .ok();
    let v: Value = serde_json::from_str(&list).expect("json output parses");
    assert_eq!(v["kind"], "List");
    assert!(v["items"].as_array().is_some_and(|i| {
        i.iter()
            .any(|s| s["metadata"]["name"] == "creds" && s["kind"] == "Secret")
    }));

    // describe shapes.
    c.api("events", Some("demo"))
        .create(&DynamicObject(json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "nginx.1", "namespace": "demo"},
            "involvedObject": {"kind": "Pod", "name": "nginx", "namespace": "demo"},
            "reason": "Scheduled", "type": "Normal", "message": "Successfully assigned demo/nginx to node-1",
            "source": {"component": "default-scheduler"}, "count": 1,
            "firstTimestamp": xkube_api::meta::format_time(jiff::Timestamp::now()),
            "lastTimestamp": xkube_api::meta::format_time(jiff::Timestamp::now()),
        })))
        .await
        .expect("event");
    // What a kubelet would report.
    c.api("pods", Some("demo"))
        .patch_status(
            "nginx",
            &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.244.1.5",
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{"name": "nginx", "image": "nginx:1.25", "imageID": "docker://sha256:1",
                    "containerID": "docker://abc", "ready": true, "restartCount": 0,
                    "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}]}})),
        )
        .await
        .expect("pod status");
    let d = c.k(&["describe", "pod", "nginx", "-n", "demo"]).await.ok();
    for want in [
        "Name:",
        "Namespace:",
        "Node:",
        "Labels:",
        "app=nginx",
        "Status:",
        "Running",
        "IP:",
        "10.244.1.5",
        "Containers:",
        "  nginx:",
        "Container ID:",
        "docker://abc",
        "Image:",
        "nginx:1.25",
        "Port:",
        "80/TCP",
        "State:",
        "Started:",
        "Ready:",
        "True",
        "Restart Count:",
        "Mounts:",
        "Conditions:",
        "PodScheduled",
        "Volumes:",
        "QoS Class:",
        "BestEffort",
        "Events:",
        "Scheduled",
        "default-scheduler",
        "Successfully assigned demo/nginx to node-1",
    ] {
        assert!(d.contains(want), "describe pod lacks {want:?}:\n{d}");
    }
    let d = c.k(&["describe", "svc", "web", "-n", "demo"]).await.ok();
    for want in [
        "Name:",
        "Namespace:",
        "Labels:",
        "Selector:",
        "app=web",
        "Type:",
        "NodePort",
        "IP:",
        "Port:",
        "<unset>  80/TCP",
        "TargetPort:",
        "NodePort:",
        "Endpoints:",
        "Session Affinity:",
        "None",
        "Events:",
    ] {
        assert!(d.contains(want), "describe svc lacks {want:?}:\n{d}");
    }
    let d = c.k(&["describe", "rc", "web", "-n", "demo"]).await.ok();
    for want in [
        "Name:",
        "Selector:",
        "app=web",
        "Replicas:",
        "0 current / 2 desired",
        "Pods Status:",
        "Pod Template:",
        "Image:",
    ] {
        assert!(d.contains(want), "describe rc lacks {want:?}:\n{d}");
    }
    let d = c
        .k(&["describe", "secret", "creds", "-n", "demo"])
        .await
        .ok();
    assert!(
        d.contains("Type:")
            && d.contains("Opaque")
            && d.contains("user:  5 bytes")
            && d.contains("pass:  6 bytes"),
        "{d}"
    );
    let d = c.k(&["describe", "namespace", "demo"]).await.ok();
    assert!(
        d.contains("Name:")
            && d.contains("Status:")
            && d.contains("Active")
            && d.contains("No resource quota."),
        "{d}"
    );
    let d = c.k(&["describe", "endpoints", "kubernetes"]).await.ok();
    assert!(
        d.contains("Subsets:")
            && d.contains("Addresses:")
            && d.contains("127.0.0.1")
            && d.contains("https"),
        "{d}"
    );
    c.api("nodes", None)
        .create(&DynamicObject(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1",
            "labels": {"kubernetes.io/hostname": "node-1"}},
            "status": {"capacity": {"cpu": "2", "pods": "110"}, "nodeInfo": {"kubeletVersion": "v1.33.0"},
                       "addresses": [{"type": "InternalIP", "address": "198.18.0.11"}],
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}]}})))
        .await
        .expect("node");
    let nodes = c.k(&["get", "nodes"]).await.ok();
    assert_eq!(&header(&nodes)[..2], ["NAME", "STATUS"]);
    let d = c.k(&["describe", "node", "node-1"]).await.ok();
    for want in [
        "Name:",
        "Labels:",
        "kubernetes.io/hostname=node-1",
        "Conditions:",
        "KubeletReady",
        "kubelet is posting ready status",
        "Addresses:",
        "198.18.0.11",
        "Capacity:",
        "System Info:",
        "Kubelet Version:",
        "Non-terminated Pods:",
    ] {
        assert!(d.contains(want), "describe node lacks {want:?}:\n{d}");
    }

    // label and annotate.
    assert_eq!(
        c.k(&["label", "pods", "nginx", "-n", "demo", "unhealthy=true"])
            .await
            .ok(),
        "pod \"nginx\" labeled\n"
    );
    let e = c
        .k(&["label", "pods", "nginx", "-n", "demo", "unhealthy=false"])
        .await
        .fails();
    assert!(
        e.contains("'unhealthy' already has a value (true), and --overwrite is false"),
        "{e}"
    );
    c.k(&[
        "label",
        "pod/nginx",
        "-n",
        "demo",
        "unhealthy=false",
        "--overwrite",
    ])
    .await
    .ok();
    let p = c.api("pods", Some("demo")).get("nginx").await.expect("pod");
    assert_eq!(p.0["metadata"]["labels"]["unhealthy"], "false");
    c.k(&["label", "pods", "nginx", "-n", "demo", "unhealthy-"])
        .await
        .ok();
    let p = c.api("pods", Some("demo")).get("nginx").await.expect("pod");
    assert!(
        p.0["metadata"]["labels"].get("unhealthy").is_none(),
        "{}",
        p.0["metadata"]
    );
    assert_eq!(
        c.k(&[
            "annotate",
            "svc",
            "web",
            "-n",
            "demo",
            "description=front door"
        ])
        .await
        .ok(),
        "service \"web\" annotated\n"
    );
    let s = c
        .api("services", Some("demo"))
        .get("web")
        .await
        .expect("svc");
    assert_eq!(s.0["metadata"]["annotations"]["description"], "front door");

    // scale.
    assert_eq!(
        c.k(&["scale", "rc", "web", "--replicas=3", "-n", "demo"])
            .await
            .ok(),
        "replicationcontroller \"web\" scaled\n"
    );
    let rc = c
        .api("replicationcontrollers", Some("demo"))
        .get("web")
        .await
        .expect("rc");
    assert_eq!(rc.0["spec"]["replicas"], 3);
    let e = c
        .k(&[
            "scale",
            "--replicas=1",
            "--current-replicas=2",
            "rc/web",
            "-n",
            "demo",
        ])
        .await
        .fails();
    assert!(e.contains("Expected replicas to be 2, was 3"), "{e}");

    // delete by name, by label, by file, with cascade.
    assert_eq!(
        c.k(&["delete", "rc", "web", "-n", "demo", "--cascade=orphan"])
            .await
            .ok(),
        "replicationcontroller \"web\" deleted\n"
    );
    // The garbage collector releases the pods, then the RC goes.
    let mut gone = false;
    for _ in 0..100 {
        if c.api("replicationcontrollers", Some("demo"))
            .get_opt("web")
            .await
            .expect("get")
            .is_none()
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "orphan-deleted rc removed once its pods are released");
    assert_eq!(
        c.k(&["delete", "svc", "-l", "app=web", "-n", "demo"])
            .await
            .ok(),
        "service \"web\" deleted\n"
    );
    assert_eq!(
        c.k(&[
            "delete",
            "-f",
            &fixture("secret.yaml"),
            "-f",
            &fixture("pod.yaml")
        ])
        .await
        .ok(),
        "secret \"creds\" deleted\npod \"nginx\" deleted\n"
    );
    let e = c.k(&["delete", "pod", "nginx", "-n", "demo"]).await.fails();
    assert_eq!(
        e.trim(),
        "Error from server (NotFound): pods \"nginx\" not found"
    );
    c.k(&["delete", "pod", "nginx", "-n", "demo", "--ignore-not-found"])
        .await
        .ok();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_twice_is_unchanged_and_edits_are_configured() {
    let c = cluster().await;
    let dir = fixture("app");
    let out = c.k(&["apply", "-f", &dir]).await.ok();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "configmap \"listed-a\" created",
            "configmap \"listed-b\" created",
            "configmap \"settings\" created",
            "service \"front\" created",
        ],
        "directory order, List expanded, README skipped"
    );
    let cm = c
        .api("configmaps", Some("default"))
        .get("settings")
        .await
        .expect("cm");
    let last = cm.0["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .expect("last-applied annotation stored");
    let last: Value = serde_json::from_str(last).expect("annotation is JSON");
    assert_eq!(last["data"]["mode"], "fast");
    let again = c.k(&["apply", "-f", &dir]).await.ok();
    assert_eq!(
        again.lines().collect::<Vec<_>>(),
        [
            "configmap \"listed-a\" unchanged",
            "configmap \"listed-b\" unchanged",
            "configmap \"settings\" unchanged",
            "service \"front\" unchanged",
        ]
    );
    // Upstream kubectl agrees: same last-applied bytes, nothing to patch.
    let settings = fixture("app/settings.yaml");
    let up = tokio::process::Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["apply", "-f", &settings])
        .output()
        .await
        .expect("upstream kubectl runs");
    assert_eq!(
        String::from_utf8_lossy(&up.stdout),
        "configmap/settings unchanged\nservice/front unchanged\n",
        "{up:?}"
    );
    // A live change by someone else survives an apply that does not mention it; a field
    // removed from the file is removed from the object.
    c.api("configmaps", Some("default"))
        .patch(
            "settings",
            &Patch::Merge(json!({"metadata": {"labels": {"extra": "x"}}})),
        )
        .await
        .expect("patch");
    let edited = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  labels:\n    tier: config\ndata:\n  mode: slow\n";
    let out = run_with(&c.kubeconfig, &["apply", "-f", "-"], Some(edited))
        .await
        .ok();
    assert_eq!(out, "configmap \"settings\" configured\n");
    let cm = c
        .api("configmaps", Some("default"))
        .get("settings")
        .await
        .expect("cm");
    assert_eq!(cm.0["data"], json!({"mode": "slow"}));
    assert_eq!(
        cm.0["metadata"]["labels"],
        json!({"tier": "config", "extra": "x"})
    );
    let out = run_with(&c.kubeconfig, &["apply", "-f", "-"], Some(edited))
        .await
        .ok();
    assert_eq!(out, "configmap \"settings\" unchanged\n");
    // create of something existing fails with the server's reason.
    let e = c
        .k(&["create", "-f", &fixture("app/settings.yaml")])
        .await
        .fails();
    assert!(
        e.contains("Error from server (AlreadyExists): error when creating")
            && e.contains("configmaps \"settings\" already exists"),
        "{e}"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_changes() {
    let c = cluster().await;
    let mut child = tokio::process::Command::new(BIN)
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["get", "pods", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("xkubectl get -w starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // Give the watch a moment to connect, then create a pod.
    let pods = c.api("pods", Some("default"));
    let creator = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        pods.create(&DynamicObject(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "watched"}, "spec": {"containers": [{"name": "c", "image": "x"}]}})))
            .await
            .expect("create watched");
        tokio::time::sleep(Duration::from_millis(300)).await;
        pods.patch_status(
            "watched",
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .expect("status");
    };
    let reader = async {
        let mut seen = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            seen.push(l.clone());
            if l.starts_with("watched") && l.contains("Running") {
                return seen;
            }
        }
        panic!("watch ended early: {seen:?}");
    };
    let (_, seen) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(creator, reader)
    })
    .await
    .expect("the watch prints the change in time");
    assert!(
        seen[0].starts_with("NAME") && seen[0].contains("STATUS"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("watched") && l.contains("Pending")),
        "{seen:?}"
    );
    child.kill().await.expect("stop the watch");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expose_run_proxy_and_info_commands() {
    let c = cluster().await;
    assert_eq!(
        c.k(&["run", "nginx", "--image=nginx", "--port=80"])
            .await
            .ok(),
        "pod \"nginx\" created\n"
    );
    let p = c
        .api("pods", Some("default"))
        .get("nginx")
        .await
        .expect("pod");
    assert_eq!(p.0["metadata"]["labels"]["run"], "nginx");
    assert_eq!(
        c.k(&["run", "web", "--image=nginx", "--replicas=3", "--port=8080"])
            .await
            .ok(),
        "replicationcontroller \"web\" created\n"
    );
    let rc = c
        .api("replicationcontrollers", Some("default"))
        .get("web")
        .await
        .expect("rc");
    assert_eq!(rc.0["spec"]["replicas"], 3);
    assert_eq!(rc.0["spec"]["selector"], json!({"run": "web"}));
    assert_eq!(
        c.k(&[
            "expose",
            "rc",
            "web",
            "--port=80",
            "--target-port=8080",
            "--type=NodePort"
        ])
        .await
        .ok(),
        "service \"web\" exposed\n"
    );
    let s = c
        .api("services", Some("default"))
        .get("web")
        .await
        .expect("svc");
    assert_eq!(s.0["spec"]["selector"], json!({"run": "web"}));
    assert_eq!(s.0["spec"]["ports"][0]["targetPort"], 8080);
    assert!(
        s.0["spec"]["ports"][0]["nodePort"]
            .as_i64()
            .is_some_and(|p| (30000..=32767).contains(&p))
    );
    assert_eq!(
        c.k(&["expose", "pod", "nginx", "--name=nginx-svc"])
            .await
            .ok(),
        "service \"nginx-svc\" exposed\n"
    );
    let s = c
        .api("services", Some("default"))
        .get("nginx-svc")
        .await
        .expect("svc");
    assert_eq!(
        s.0["spec"]["ports"][0]["port"], 80,
        "port taken from the container"
    );

    let v = c.k(&["version"]).await.ok();
    assert!(
        v.contains("Client Version: v1.") && v.contains("Server Version: v1."),
        "{v}"
    );
    let av = c.k(&["api-versions"]).await.ok();
    assert!(av.lines().any(|l| l == "v1"), "{av}");
    let ci = c.k(&["cluster-info"]).await.ok();
    assert!(
        ci.starts_with("Kubernetes control plane is running at https://127.0.0.1:"),
        "{ci}"
    );
    let view = c.k(&["config", "view"]).await.ok();
    assert!(
        view.contains("DATA+OMITTED") && view.contains("current-context: xkube"),
        "{view}"
    );

    // KUBECONFIG with two files merged: clusters and contexts in one, users in the other.
    let admin: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&c.kubeconfig).expect("read kubeconfig"))
            .expect("kubeconfig yaml");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("clusters.yaml");
    let b = dir.path().join("users.yaml");
    let mut first = admin.clone();
    first.as_object_mut().expect("map").remove("users");
    let second = json!({"apiVersion": "v1", "kind": "Config", "users": admin["users"],
        "current-context": "ignored-because-the-first-file-wins"});
    std::fs::write(&a, serde_yaml::to_string(&first).expect("yaml")).expect("write a");
    std::fs::write(&b, serde_yaml::to_string(&second).expect("yaml")).expect("write b");
    let out = tokio::process::Command::new(BIN)
        .args(["get", "ns", "kube-system", "-o", "name"])
        .env(
            "KUBECONFIG",
            format!("{}:{}:/nonexistent/skipped", a.display(), b.display()),
        )
        .output()
        .await
        .expect("xkubectl runs");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "namespace/kube-system\n"
    );

    // proxy: GET /api through it, with the kubeconfig's client certificate.
    let mut child = tokio::process::Command::new(BIN)
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["proxy", "--port=0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("proxy starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("proxy announces itself")
        .expect("read")
        .expect("a line");
    let addr = first
        .strip_prefix("Starting to serve on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client");
    let api: Value = http
        .get(format!("http://{addr}/api"))
        .send()
        .await
        .expect("GET /api through the proxy")
        .json()
        .await
        .expect("json");
    assert_eq!(api["versions"], json!(["v1"]), "{api}");
    let pods: Value = http
        .get(format!("http://{addr}/api/v1/namespaces/default/pods"))
        .send()
        .await
        .expect("list through the proxy")
        .json()
        .await
        .expect("json");
    assert!(
        pods["items"].as_array().is_some_and(|i| !i.is_empty()),
        "{pods}"
    );
    child.kill().await.expect("stop the proxy");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_with_kubernetes_messages() {
    let c = cluster().await;
    let e = c
        .k(&["create", "-f", "/nonexistent/missing.yaml"])
        .await
        .fails();
    assert_eq!(
        e.trim(),
        "error: the path \"/nonexistent/missing.yaml\" does not exist"
    );
    let e = c
        .k(&["create", "-f", &fixture("malformed.yaml")])
        .await
        .fails();
    assert!(
        e.starts_with("error: error parsing") && e.contains("malformed.yaml"),
        "{e}"
    );
    let e = c
        .k(&["create", "-f", &fixture("unknown-kind.yaml")])
        .await
        .fails();
    assert!(
        e.contains("no matches for kind \"Widget\" in version \"v1\""),
        "{e}"
    );
    let e = c.k(&["get", "widgets"]).await.fails();
    assert_eq!(
        e.trim(),
        "error: the server doesn't have a resource type \"widgets\""
    );
    let e = c.k(&["get", "pod", "nope"]).await.fails();
    assert_eq!(
        e.trim(),
        "Error from server (NotFound): pods \"nope\" not found"
    );
    let e = c.k(&["describe", "svc", "nope"]).await.fails();
    assert!(
        e.contains("Error from server (NotFound): services \"nope\" not found"),
        "{e}"
    );
    let e = run_with(
        &c.kubeconfig,
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata:\n  name: Bad_Name\nspec:\n  containers:\n  - name: c\n    image: x\n"),
    )
    .await
    .fails();
    assert!(
        e.contains("Error from server (Invalid)")
            && e.contains("metadata.name: Invalid value: \"Bad_Name\""),
        "{e}"
    );
    let e = c
        .k(&["create", "-f", &fixture("pod.yaml"), "-n", "other"])
        .await
        .fails();
    assert!(
        e.contains(
            "the namespace from the provided object \"demo\" does not match the namespace \"other\""
        ),
        "{e}"
    );
    // Usage errors exit with clap's code (2).
    let u = c.k(&["scale", "rc", "x"]).await;
    assert_eq!(u.code, 2, "{u:?}");
    let u = c.k(&["frobnicate"]).await;
    assert_eq!(u.code, 2, "{u:?}");
    // A server that is not there.
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = dir.path().join("kc");
    std::fs::write(&kc, "clusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:1\ncontexts:\n- name: x\n  context: {cluster: c}\ncurrent-context: x\n").expect("write");
    let e = run_with(&kc, &["get", "pods"], None).await.fails();
    assert!(
        e.contains("The connection to the server 127.0.0.1:1 was refused"),
        "{e}"
    );
    c.stop().await;
}

/// A stand-in replication controller for the test (there is no controller-manager yet): keeps
/// each controller's pod count, marks new pods Ready and reports status.
async fn fake_rc_controller(client: Client, ns: &str, stop: tokio_util::sync::CancellationToken) {
    let res_rc = xkube_api::resources::find("", "v1", "replicationcontrollers").expect("rc");
    let res_pod = xkube_api::resources::find("", "v1", "pods").expect("pods");
    let rcs = Api::<DynamicObject>::dynamic(client.clone(), res_rc, Some(ns));
    let pods = Api::<DynamicObject>::dynamic(client.clone(), res_pod, Some(ns));
    while !stop.is_cancelled() {
        let Ok(list) = rcs.list(&ListParams::default()).await else {
            continue;
        };
        for rc in list.items {
            let rc = rc.0;
            let name = xkube_api::meta::name(&rc).to_string();
            let want = rc["spec"]["replicas"].as_i64().unwrap_or(1);
            let sel: Vec<String> = xkube_api::meta::string_map(&rc["spec"]["selector"])
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let Ok(mine) = pods
                .list(&ListParams::default().labels(&sel.join(",")))
                .await
            else {
                continue;
            };
            let mut have: Vec<String> = mine.items.iter().map(|p| p.name().to_string()).collect();
            for _ in (have.len() as i64)..want {
                let pod = json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"generateName": format!("{name}-"), "labels": rc["spec"]["template"]["metadata"]["labels"]},
                    "spec": rc["spec"]["template"]["spec"]});
                if let Ok(p) = pods.create(&DynamicObject(pod)).await {
                    let _ = pods
                        .patch_status(
                            p.name(),
                            &Patch::Merge(json!({"status": {"phase": "Running",
                                "conditions": [{"type": "Ready", "status": "True"}]}})),
                        )
                        .await;
                    have.push(p.name().to_string());
                }
            }
            while (have.len() as i64) > want {
                if let Some(n) = have.pop() {
                    let _ = pods
                        .delete(
                            &n,
                            &DeleteParams {
                                grace_period_seconds: Some(0),
                                ..DeleteParams::default()
                            },
                        )
                        .await;
                }
            }
            let _ = rcs
                .patch_status(
                    &name,
                    &Patch::Merge(json!({"status": {"replicas": have.len(), "readyReplicas": have.len(),
                        "availableReplicas": have.len(), "observedGeneration": rc["metadata"]["generation"]}})),
                )
                .await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_prints_the_seed_lines_and_keeps_pods_available() {
    let c = cluster().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let ctrl = tokio::spawn(fake_rc_controller(
        c.client.clone(),
        "default",
        stop.clone(),
    ));
    c.k(&["create", "-f", &fixture("rc-demo-v0.1.yaml")])
        .await
        .ok();
    let pods = c.api("pods", Some("default"));
    let ready = |list: &[DynamicObject]| {
        list.iter()
            .filter(|p| {
                p.0["metadata"]["deletionTimestamp"].is_null()
                    && p.0["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            })
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let l = pods
            .list(&ListParams::default().labels("app=rc-demo-nginx"))
            .await
            .expect("list");
        if ready(&l.items) == 4 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fake controller starts 4 pods"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Sample availability during the update.
    let monitor_stop = tokio_util::sync::CancellationToken::new();
    let monitor = {
        let pods = pods.clone();
        let stop = monitor_stop.clone();
        tokio::spawn(async move {
            let mut min = usize::MAX;
            while !stop.is_cancelled() {
                if let Ok(l) = pods
                    .list(&ListParams::default().labels("app=rc-demo-nginx"))
                    .await
                {
                    min = min.min(ready(&l.items));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            min
        })
    };
    let out = c
        .k(&[
            "rolling-update",
            "rc-demo-nginx-v0.1",
            "--update-period=200ms",
            "--poll-interval=50ms",
            "-f",
            &fixture("rc-demo-v0.2.yaml"),
        ])
        .await
        .ok();
    monitor_stop.cancel();
    let min = monitor.await.expect("monitor");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "Created rc-demo-nginx-v0.2",
            "Scaling up rc-demo-nginx-v0.2 from 0 to 4, scaling down rc-demo-nginx-v0.1 from 4 to 0 (keep 4 pods available, don't exceed 5 pods)",
            "Scaling rc-demo-nginx-v0.2 up to 1",
            "Scaling rc-demo-nginx-v0.1 down to 3",
            "Scaling rc-demo-nginx-v0.2 up to 2",
            "Scaling rc-demo-nginx-v0.1 down to 2",
            "Scaling rc-demo-nginx-v0.2 up to 3",
            "Scaling rc-demo-nginx-v0.1 down to 1",
            "Scaling rc-demo-nginx-v0.2 up to 4",
            "Scaling rc-demo-nginx-v0.1 down to 0",
            "Update succeeded. Deleting rc-demo-nginx-v0.1",
            "replicationcontroller \"rc-demo-nginx-v0.1\" rolling updated to \"rc-demo-nginx-v0.2\"",
        ]
    );
    assert!(
        min >= 4,
        "available pods dropped to {min} during the update"
    );
    let rcs = c.api("replicationcontrollers", Some("default"));
    assert!(
        rcs.get_opt("rc-demo-nginx-v0.1")
            .await
            .expect("get")
            .is_none()
    );
    let new = rcs.get("rc-demo-nginx-v0.2").await.expect("new rc");
    assert_eq!(new.0["spec"]["replicas"], 4);
    let l = pods
        .list(&ListParams::default().labels("ver=v0.2"))
        .await
        .expect("list");
    assert_eq!(l.items.len(), 4);

    // --image: a new controller with a deployment key, old pods relabelled.
    let out = c
        .k(&[
            "rolling-update",
            "rc-demo-nginx-v0.2",
            "rc-demo-nginx-v0.3",
            "--image=nginx:1.12",
            "--update-period=100ms",
            "--poll-interval=50ms",
        ])
        .await
        .ok();
    assert!(out.starts_with("Created rc-demo-nginx-v0.3\n"), "{out}");
    assert!(out.ends_with("replicationcontroller \"rc-demo-nginx-v0.2\" rolling updated to \"rc-demo-nginx-v0.3\"\n"), "{out}");
    let new = rcs.get("rc-demo-nginx-v0.3").await.expect("v0.3");
    assert_eq!(
        new.0["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.12"
    );
    assert!(new.0["spec"]["selector"]["deployment"].is_string());
    stop.cancel();
    ctrl.await.expect("fake controller");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_stream_the_pod_log_subresource() {
    // The apiserver does not serve pods/log yet: a stand-in serves the subresource the way
    // Kubernetes does (plain text, query parameters) and answers 404 Status otherwise.
    async fn log(
        axum::extract::Path((ns, pod)): axum::extract::Path<(String, String)>,
        axum::extract::RawQuery(q): axum::extract::RawQuery,
    ) -> (http::StatusCode, String) {
        if ns == "default" && pod == "p" {
            (
                http::StatusCode::OK,
                format!("query={}\nline 1\nline 2\n", q.unwrap_or_default()),
            )
        } else {
            (
                http::StatusCode::NOT_FOUND,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                       "reason": "NotFound", "message": format!("pods \"{pod}\" not found")})
                .to_string(),
            )
        }
    }
    let app = axum::Router::new().route(
        "/api/v1/namespaces/{ns}/pods/{pod}/log",
        axum::routing::get(log),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let srv = tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = dir.path().join("kc");
    std::fs::write(
        &kc,
        format!("clusters:\n- name: c\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: x\n  context: {{cluster: c}}\ncurrent-context: x\n"),
    )
    .expect("kubeconfig");
    let out = run_with(
        &kc,
        &["logs", "p", "-c", "app", "--tail=2", "--timestamps"],
        None,
    )
    .await
    .ok();
    assert_eq!(
        out,
        "query=container=app&tailLines=2&timestamps=true\nline 1\nline 2\n"
    );
    let out = run_with(&kc, &["logs", "pod/p", "side"], None).await.ok();
    assert!(out.starts_with("query=container=side\n"), "{out}");
    let e = run_with(&kc, &["logs", "nope"], None).await.fails();
    assert_eq!(
        e.trim(),
        "Error from server (NotFound): pods \"nope\" not found"
    );
    srv.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_status_history_undo_pause_restart_and_set_image() {
    let c = cluster().await;
    // Stand in for the kubelets: pods of the deployment run and are ready (bounded).
    let res = xkube_api::resources::find("", "v1", "pods").expect("pods");
    let pods = Api::<DynamicObject>::dynamic(c.client.clone(), res, Some("default"));
    let kubelet = tokio::spawn(async move {
        for _ in 0..3000 {
            for p in pods
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
            {
                if p.0["status"]["phase"] == "Running"
                    || !p.0["metadata"]["deletionTimestamp"].is_null()
                {
                    continue;
                }
                let st = json!({"status": {"phase": "Running", "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
                let _ = pods.patch_status(p.name(), &Patch::Merge(st)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let manifest = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - {name: web, image: "web:v1"}
"#;
    run_with(&c.kubeconfig, &["create", "-f", "-"], Some(manifest))
        .await
        .ok();
    let out = c
        .k(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await
        .ok();
    assert!(
        out.ends_with("deployment \"web\" successfully rolled out\n"),
        "{out}"
    );
    assert_eq!(
        c.k(&["set", "image", "deployment/web", "web=web:v2"])
            .await
            .ok(),
        "deployment \"web\" image updated\n"
    );
    let e = c
        .k(&["set", "image", "deployment/web", "nope=web:v3"])
        .await
        .fails();
    assert!(e.contains("unable to find container named \"nope\""), "{e}");
    c.k(&["rollout", "status", "deployment", "web", "--timeout=60s"])
        .await
        .ok();
    let out = c.k(&["rollout", "history", "deployment/web"]).await.ok();
    assert_eq!(
        out,
        "deployment \"web\"\nREVISION  CHANGE-CAUSE\n1         <none>\n2         <none>\n"
    );
    let out = c
        .k(&["rollout", "history", "deployment/web", "--revision=1"])
        .await
        .ok();
    assert!(out.contains("image: web:v1"), "{out}");
    assert_eq!(
        c.k(&["rollout", "undo", "deployment/web"]).await.ok(),
        "deployment \"web\" rolled back\n"
    );
    c.k(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await
        .ok();
    let out = c
        .k(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .await
        .ok();
    assert_eq!(out, "web:v1");
    assert_eq!(
        c.k(&["rollout", "pause", "deployment/web"]).await.ok(),
        "deployment \"web\" paused\n"
    );
    let e = c.k(&["rollout", "pause", "deployment/web"]).await.fails();
    assert!(e.contains("already paused"), "{e}");
    let e = c.k(&["rollout", "undo", "deployment/web"]).await.fails();
    assert!(e.contains("cannot rollback a paused deployment"), "{e}");
    assert_eq!(
        c.k(&["rollout", "resume", "deployment/web"]).await.ok(),
        "deployment \"web\" resumed\n"
    );
    assert_eq!(
        c.k(&["rollout", "restart", "deployment/web"]).await.ok(),
        "deployment \"web\" restarted\n"
    );
    c.k(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await
        .ok();
    let e = c.k(&["rollout", "status", "rc/web"]).await.fails();
    assert!(e.contains("only deployments"), "{e}");
    kubelet.abort();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_deployment_job_and_cronjob_from_flags() {
    let c = cluster().await;
    assert_eq!(
        c.k(&[
            "create",
            "deployment",
            "web",
            "--image=registry.local/web:v1",
            "--replicas=2",
            "--port=8080"
        ])
        .await
        .ok(),
        "deployment \"web\" created\n"
    );
    let out = c
        .k(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].name} {.spec.template.spec.containers[0].ports[0].containerPort}"])
        .await
        .ok();
    assert_eq!(out, "2 web 8080");
    assert_eq!(
        c.k(&[
            "create",
            "cronjob",
            "tick",
            "--image=busybox",
            "--schedule=*/5 * * * *",
            "--",
            "echo",
            "tick"
        ])
        .await
        .ok(),
        "cronjob \"tick\" created\n"
    );
    assert_eq!(
        c.k(&["create", "job", "now", "--from=cronjob/tick"])
            .await
            .ok(),
        "job \"now\" created\n"
    );
    let out = c.k(&["get", "job", "now", "-o", "json"]).await.ok();
    let job: Value = serde_json::from_str(&out).expect("job json");
    assert_eq!(
        job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    assert_eq!(job["metadata"]["ownerReferences"][0]["name"], "tick");
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["command"],
        json!(["echo", "tick"])
    );
    assert_eq!(
        c.k(&[
            "create",
            "job",
            "hello",
            "--image=busybox",
            "--",
            "/bin/sh",
            "-c",
            "echo hi"
        ])
        .await
        .ok(),
        "job \"hello\" created\n"
    );
    let e = c.k(&["create", "job", "bad"]).await.fails();
    assert!(
        e.contains("either --image or --from must be specified"),
        "{e}"
    );
    let e = c
        .k(&["create", "job", "bad", "--from=deployment/web"])
        .await
        .fails();
    assert!(e.contains("from must be an existing cronjob"), "{e}");
    // Files still work, and flags and files do not mix.
    let e = c.k(&["create", "-f", "x.yaml", "job", "j"]).await;
    assert_ne!(e.code, 0, "{e:?}");
    c.stop().await;
}
