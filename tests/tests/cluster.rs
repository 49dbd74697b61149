//! `xkube cluster down` leaves nothing behind: namespaces, links, cgroups, eBPF pins, iptables
//! rules and processes named after the cluster are compared before `up` and after `down`.

use std::time::Duration;

use xkube_e2e::{Cluster, Footprint};

#[test]
fn privileged_cluster_down_leaves_nothing_behind() {
    let c = Cluster::up(2, &[]);
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
