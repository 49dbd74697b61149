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
      - {name: agnhost, image: xkube/agnhost, args: ["--http-port=8080"]}
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
        image: xkube/agnhost
        args: ["--http-port=8080"]
        readinessProbe:
          tcpSocket: {{port: 8080}}
          periodSeconds: 1
"#
        )
    };
    c.apply(&rc("web-v1", "v1"));
    let ready = |c: &Cluster| -> usize {
        c.get_json(&["pods", "-l", "app=web"])["items"]
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
    };
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
