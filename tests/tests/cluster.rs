//! `xkube cluster down` leaves nothing behind: namespaces, links, cgroups, eBPF pins, iptables
//! rules, mounts and processes named after the cluster are compared before `up` and after
//! `down`, for each runtime.

use std::time::Duration;

use xkube_e2e::{Cluster, Footprint};

#[test]
fn privileged_cluster_down_leaves_nothing_behind() {
    down_leaves_nothing("process");
}

/// The same with the docker runtime: the nodes' dockerd, containerd, shims and containers,
/// their mounts and exec roots go too.
#[test]
fn privileged_cluster_down_leaves_nothing_behind_docker_runtime() {
    down_leaves_nothing("docker");
}

fn down_leaves_nothing(runtime: &str) {
    let c = Cluster::up(2, &["--runtime", runtime]);
    let name = c.name.clone();
    // Something on every node: pods (veths, cgroups, volumes) and the proxies' pins.
    c.apply(
        r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: web}
spec:
  replicas: 4
  selector: {app: web}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: agnhost, image: xkube/agnhost:0.1.0, args: ["--http-port=8080"]}
"#,
    );
    c.wait("4 running pods", Duration::from_secs(90), || {
        let pods = c.get_json(&["pods"]);
        let running = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["status"]["phase"] == "Running")
            .count();
        (running == 4).then_some(())
    });
    let during = Footprint::of(&name);
    assert!(
        !during.namespaces.is_empty(),
        "the cluster made namespaces: {during:?}"
    );
    assert!(
        !during.cgroups.is_empty(),
        "the cluster made cgroups: {during:?}"
    );
    assert!(
        !during.pins.is_empty(),
        "the proxies pinned maps and links: {during:?}"
    );
    assert!(
        !during.processes.is_empty(),
        "the cluster runs processes: {during:?}"
    );
    assert!(!during.links.is_empty(), "the host link exists: {during:?}");

    drop(c); // xkube cluster down
    let after = Footprint::of(&name);
    let empty = Footprint::of("\u{0}never-matches\u{0}");
    assert_eq!(after, empty, "left behind after down: {after:?}");
    // Safe to run twice.
    let again = std::process::Command::new(xkube_e2e::xkube_bin())
        .args(["cluster", "down", "--name", &name])
        .arg("--data-root")
        .arg(std::env::temp_dir().join(format!("xkube-e2e-{name}")))
        .output()
        .expect("second cluster down");
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// Pods selected by `selector` that are Ready and not being deleted.
fn ready_pods(c: &Cluster, selector: &str) -> usize {
    c.get_json(&["pods", "-l", selector])["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .count()
}

/// SEEDS.md A5 on a real cluster (real replication controller, scheduler and kubelets):
/// `xkubectl rolling-update` prints the seed lines, finishes, and the number of ready pods of
/// the two RCs never drops below the count it promises.
#[test]
fn privileged_rolling_update_keeps_pods_available_on_a_real_cluster() {
    let c = Cluster::up(2, &[]);
    let rc = |name: &str, version: &str| {
        format!(
            r#"
apiVersion: v1
kind: ReplicationController
metadata: {{name: {name}}}
spec:
  replicas: 4
  selector: {{app: web, version: {version}}}
  template:
    metadata: {{labels: {{app: web, version: {version}}}}}
    spec:
      containers:
      - name: agnhost
        image: xkube/agnhost:0.1.0
        args: ["--http-port=8080"]
        readinessProbe:
          tcpSocket: {{port: 8080}}
          periodSeconds: 1
"#
        )
    };
    c.apply(&rc("web-v1", "v1"));
    let ready = |c: &Cluster| ready_pods(c, "app=web");
    c.wait("4 ready v1 pods", Duration::from_secs(90), || {
        (ready(&c) == 4).then_some(())
    });
    let new = std::env::temp_dir().join(format!("xkube-e2e-{}-v2.yaml", c.name));
    std::fs::write(&new, rc("web-v2", "v2")).expect("write v2 manifest");
    let xkubectl = xkube_e2e::bin_dir().join("xkubectl");
    let child = std::process::Command::new(&xkubectl)
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args([
            "rolling-update",
            "web-v1",
            "--update-period=1s",
            "--poll-interval=500ms",
            "-f",
        ])
        .arg(&new)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", xkubectl.display()));
    // Sample availability while the update runs (bounded by the child's lifetime + 5 min).
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let mut min_ready = usize::MAX;
    let child = std::sync::Arc::new(std::sync::Mutex::new(Some(child)));
    loop {
        min_ready = min_ready.min(ready(&c));
        let done = child
            .lock()
            .expect("lock")
            .as_mut()
            .and_then(|ch| ch.try_wait().ok().flatten())
            .is_some();
        if done || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child
        .lock()
        .expect("lock")
        .take()
        .expect("child")
        .wait_with_output()
        .expect("rolling-update output");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}\nminimum ready pods during the update: {min_ready}");
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "Created web-v2",
        "Scaling up web-v2 from 0 to 4, scaling down web-v1 from 4 to 0 (keep 4 pods available, don't exceed 5 pods)",
        "Update succeeded. Deleting web-v1",
        "replicationcontroller \"web-v1\" rolling updated to \"web-v2\"",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(
        min_ready >= 4,
        "ready pods dropped to {min_ready} (promised 4)"
    );
    let _ = std::fs::remove_file(&new);
}

/// Issue 19 on a real cluster (scheduler, kubelets, the controller-manager's deployment,
/// replicaset, garbage-collector and job controllers): a Deployment of 4 with maxUnavailable
/// 1 rolled to a new template keeps >= 3 ready pods (sampled), `rollout undo` returns to the
/// first template as revision 3, and deleting the Deployment removes its ReplicaSets and
/// pods; then Jobs (parallel completions, the backoff limit).
#[test]
fn privileged_deployments_and_jobs_on_a_real_cluster() {
    let c = Cluster::up(2, &[]);
    c.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  replicas: 4
  # Each new pod counts as available 2 s after it is ready: the rollout takes several
  # seconds, so the sampling below sees every step.
  minReadySeconds: 2
  selector: {matchLabels: {app: api}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 0, maxUnavailable: 1}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers:
      - name: agnhost
        image: xkube/agnhost:0.1.0
        args: ["--http-port=8080"]
        env: [{name: VERSION, value: v1}]
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 1
"#,
    );
    let status = ["rollout", "status", "deployment/api", "--timeout=180s"];
    let out = c.kubectl_ok(&status);
    assert!(out.contains("successfully rolled out"), "{out}");
    let ready = |c: &Cluster| ready_pods(c, "app=api");
    c.kubectl_ok(&["set", "env", "deployment/api", "VERSION=v2"]);
    // Sample while `kubectl rollout status` waits (bounded: its own timeout, then 5 min).
    let mut child = std::process::Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(status)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl rollout status");
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let mut min_ready = usize::MAX;
    let mut samples = 0;
    while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
        min_ready = min_ready.min(ready(&c));
        samples += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().expect("rollout status output");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}\nminimum ready pods during the rollout: {min_ready} ({samples} samples)");
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(samples >= 5, "the rollout was sampled {samples} times only");
    assert!(
        min_ready >= 3,
        "ready pods dropped to {min_ready} (maxUnavailable 1 of 4)"
    );
    let env = |c: &Cluster| {
        c.kubectl_ok(&[
            "get",
            "deployment",
            "api",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[0].value}",
        ])
    };
    assert_eq!(env(&c), "v2");

    let out = c.kubectl_ok(&["rollout", "undo", "deployment/api"]);
    assert!(out.contains("rolled back"), "{out}");
    c.kubectl_ok(&status);
    assert_eq!(env(&c), "v1");
    let history = c.kubectl_ok(&["rollout", "history", "deployment/api"]);
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|ch| ch.is_ascii_digit()))
        .collect();
    assert_eq!(revisions, ["2", "3"], "{history}");
    // Every pod runs the first template again.
    let pods = c.get_json(&["pods", "-l", "app=api"]);
    for p in pods["items"].as_array().into_iter().flatten() {
        if p["metadata"]["deletionTimestamp"].is_null() {
            assert_eq!(p["spec"]["containers"][0]["env"][0]["value"], "v1", "{p}");
        }
    }

    let start = std::time::Instant::now();
    c.kubectl_ok(&["delete", "deployment", "api"]);
    c.wait(
        "the Deployment's ReplicaSets and pods gone",
        Duration::from_secs(120),
        || {
            let rs = c.get_json(&["replicasets", "-l", "app=api"]);
            let pods = c.get_json(&["pods", "-l", "app=api"]);
            (rs["items"].as_array().is_some_and(|a| a.is_empty())
                && pods["items"].as_array().is_some_and(|a| a.is_empty()))
            .then_some(())
        },
    );
    println!(
        "deleting the Deployment of 4: ReplicaSets and pods gone after {} ms",
        start.elapsed().as_millis()
    );
    jobs_complete_in_parallel_and_fail_after_their_backoff_limit(&c);
}

/// Issue 19 on the same cluster: a Job of completions 3 / parallelism 2 completes with never
/// more than 2 pods running; one whose pod fails is retried up to backoffLimit (after the
/// 10 s back-off) and then `Failed` with reason BackoffLimitExceeded.
fn jobs_complete_in_parallel_and_fail_after_their_backoff_limit(c: &Cluster) {
    c.apply(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: three}
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: c, image: busybox, command: ["/bin/sh", "-c", "sleep 2"]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: fails}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: c, image: busybox, command: ["/bin/sh", "-c", "exit 3"]}
"#,
    );
    let running = |c: &Cluster| -> usize {
        c.get_json(&["pods", "-l", "job-name=three"])["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| matches!(p["status"]["phase"].as_str(), Some("Pending" | "Running")))
            .count()
    };
    let mut child = std::process::Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args([
            "wait",
            "--for=condition=complete",
            "job/three",
            "--timeout=120s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl wait");
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let mut max_running = 0;
    while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
        max_running = max_running.max(running(c));
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().expect("kubectl wait output");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        max_running <= 2,
        "{max_running} pods of a parallelism-2 Job ran at once"
    );
    let job = c.get_json(&["job", "three"]);
    assert_eq!(job["status"]["succeeded"], 3, "{}", job["status"]);

    c.kubectl_ok(&[
        "wait",
        "--for=condition=failed",
        "job/fails",
        "--timeout=120s",
    ]);
    let job = c.get_json(&["job", "fails"]);
    assert_eq!(
        job["status"]["failed"], 2,
        "1 try + backoffLimit 1: {}",
        job["status"]
    );
    let failed = job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Failed")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        failed["reason"], "BackoffLimitExceeded",
        "{}",
        job["status"]
    );

    // xkubectl: `create job` from flags and `logs job/x` (the pod its selector picks).
    let xkubectl = |args: &[&str]| -> String {
        let out = std::process::Command::new(xkube_e2e::bin_dir().join("xkubectl"))
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .args(args)
            .output()
            .expect("xkubectl runs");
        assert!(
            out.status.success(),
            "xkubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = xkubectl(&[
        "create",
        "job",
        "hello",
        "--image=busybox",
        "--",
        "/bin/sh",
        "-c",
        "echo hi from a job",
    ]);
    assert_eq!(out, "job \"hello\" created\n");
    c.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/hello",
        "--timeout=60s",
    ]);
    assert_eq!(xkubectl(&["logs", "job/hello"]).trim(), "hi from a job");
}

const MANY: usize = 300;

/// A workload of `kind` (`ReplicationController`, `ReplicaSet`, `Deployment`) named `name`
/// with `MANY` light pods (a shell sleeping) labelled `app: <name>`.
fn many(kind: &str, name: &str) -> String {
    let (api, selector) = match kind {
        "ReplicationController" => ("v1", format!("{{app: {name}}}")),
        _ => ("apps/v1", format!("{{matchLabels: {{app: {name}}}}}")),
    };
    format!(
        r#"
apiVersion: {api}
kind: {kind}
metadata: {{name: {name}}}
spec:
  replicas: {MANY}
  selector: {selector}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {{name: c, image: busybox, command: ["/bin/sh", "-c", "sleep 3600"]}}
"#
    )
}

fn pods_of(c: &Cluster, app: &str) -> Vec<serde_json::Value> {
    c.get_json(&["pods", "-l", &format!("app={app}")])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn wait_running(c: &Cluster, app: &str) {
    c.wait(
        &format!("{MANY} running pods of {app}"),
        Duration::from_secs(240),
        || {
            let pods = pods_of(c, app);
            (pods
                .iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .count()
                == MANY)
                .then_some(())
        },
    );
}

/// Deletes `kind/name` with `cascade` and returns how long until none of its pods is left
/// (the API lists none).
fn delete_and_time(c: &Cluster, kind: &str, name: &str, cascade: &str) -> Duration {
    let start = std::time::Instant::now();
    c.kubectl_ok(&[
        "delete",
        kind,
        name,
        &format!("--cascade={cascade}"),
        "--wait=false",
    ]);
    c.wait(
        &format!("no pod of {name} left"),
        Duration::from_secs(240),
        || pods_of(c, name).is_empty().then_some(()),
    );
    start.elapsed()
}

/// Issue 19: deleting a ReplicationController, a ReplicaSet and a Deployment of 300
/// replicas each on a real 3-node cluster (background and foreground propagation) leaves no
/// pod behind; with `--cascade=orphan` the pods stay and lose their ownerReference. The
/// times are printed (the README records them).
#[test]
fn privileged_deleting_300_replicas_cascades_or_orphans_on_a_real_cluster() {
    let c = Cluster::up(3, &[]);
    let mut report = Vec::new();
    c.apply(&many("ReplicationController", "rc-bg"));
    wait_running(&c, "rc-bg");
    report.push((
        "ReplicationController, background",
        delete_and_time(&c, "rc", "rc-bg", "background"),
    ));

    c.apply(&many("ReplicaSet", "rs-fg"));
    wait_running(&c, "rs-fg");
    let start = std::time::Instant::now();
    c.kubectl_ok(&[
        "delete",
        "rs",
        "rs-fg",
        "--cascade=foreground",
        "--wait=false",
    ]);
    // Foreground: the ReplicaSet stays, marked, while its pods go.
    let rs = c.get_json(&["rs", "rs-fg"]);
    assert_eq!(
        rs["metadata"]["finalizers"],
        serde_json::json!(["foregroundDeletion"]),
        "{rs}"
    );
    c.wait(
        "the foreground-deleted ReplicaSet gone",
        Duration::from_secs(240),
        || {
            let out = c.kubectl(&["get", "rs", "rs-fg"]);
            (!out.status.success()).then_some(())
        },
    );
    assert!(pods_of(&c, "rs-fg").is_empty(), "its pods went first");
    report.push(("ReplicaSet, foreground (owner gone last)", start.elapsed()));

    c.apply(&many("Deployment", "deploy-bg"));
    wait_running(&c, "deploy-bg");
    report.push((
        "Deployment, background",
        delete_and_time(&c, "deployment", "deploy-bg", "background"),
    ));
    let rs = c.get_json(&["rs", "-l", "app=deploy-bg"]);
    assert!(rs["items"].as_array().is_some_and(|a| a.is_empty()), "{rs}");

    c.apply(&many("ReplicationController", "rc-or"));
    wait_running(&c, "rc-or");
    let start = std::time::Instant::now();
    c.kubectl_ok(&["delete", "rc", "rc-or", "--cascade=orphan"]);
    report.push((
        "ReplicationController, orphan (owner gone)",
        start.elapsed(),
    ));
    std::thread::sleep(Duration::from_secs(3));
    let pods = pods_of(&c, "rc-or");
    assert_eq!(pods.len(), MANY, "orphaned pods stay");
    assert!(
        pods.iter().all(|p| p["metadata"]["ownerReferences"]
            .as_array()
            .is_none_or(|r| r.is_empty())),
        "orphaned pods lose their ownerReference"
    );
    c.kubectl_ok(&["delete", "pods", "-l", "app=rc-or", "--wait=false"]);
    for (what, took) in report {
        println!("deleting {MANY} replicas: {what}: {} ms", took.as_millis());
    }
}
