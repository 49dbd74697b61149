//! deploy/daemonset/xkube-proxy.yaml on a real cluster whose nodes run the kubelet alone
//! (`xkube cluster up --kubelet-only`), once per runtime: the DaemonSet puts one proxy pod
//! (hostNetwork, privileged) on every node, and services work through them — a NodePort from
//! the outside machine (XDP on the node uplinks) and a ClusterIP from a host process of every
//! node (socket LB on the node's cgroup). Before the DaemonSet nothing answers the
//! ClusterIP; deleting the DaemonSet removes its pods.
//!
//! The manifest is applied as written except two local-cluster facts: `--cgroup` points at
//! each node's cgroup (the nodes share the machine's cgroup root) and, on the process
//! runtime, nothing else (the `xkube/xkube` image runs this xkube binary).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use xkube_e2e::{Cluster, http_get, http_get_here};

const TIMEOUT: Duration = Duration::from_secs(2);

#[test]
fn privileged_proxy_daemonset_process_runtime() {
    proxy_daemonset("process");
}

#[test]
fn privileged_proxy_daemonset_docker_runtime() {
    proxy_daemonset("docker");
}

fn proxy_daemonset(runtime: &str) {
    let c = Cluster::up(3, &["--kubelet-only", "--runtime", runtime]);
    let root = env!("CARGO_MANIFEST_DIR");
    c.apply(
        &std::fs::read_to_string(format!("{root}/../deploy/examples/web.yaml")).expect("web.yaml"),
    );
    let (vip, node_port) = c.wait("the web service", Duration::from_secs(30), || {
        let s = c.get_json(&["svc", "web"]);
        Some((
            s["spec"]["clusterIP"].as_str()?.parse::<Ipv4Addr>().ok()?,
            u16::try_from(s["spec"]["ports"][0]["nodePort"].as_u64()?).ok()?,
        ))
    });
    let port = c.get_json(&["svc", "web"])["spec"]["ports"][0]["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .expect("port");
    c.wait("3 ready web endpoints", Duration::from_secs(90), || {
        let ep = c.get_json(&["endpoints", "web"]);
        let n = ep["subsets"][0]["addresses"].as_array().map_or(0, Vec::len);
        (n == 3).then_some(())
    });
    // No proxy yet: the ClusterIP goes nowhere.
    let before = c.on_node(0, || {
        http_get_here(SocketAddrV4::new(vip, port), "/hostname", TIMEOUT)
    });
    assert!(
        before.is_err(),
        "no proxy runs, yet the ClusterIP answered: {before:?}"
    );

    let cgroups = xkube_netns::cgroup::v2_root()
        .expect("cgroup2")
        .join(format!("xkube-{}", c.name));
    let manifest = std::fs::read_to_string(format!("{root}/../deploy/daemonset/xkube-proxy.yaml"))
        .expect("the DaemonSet manifest");
    assert!(
        manifest.contains("- --cgroup=/sys/fs/cgroup\n"),
        "{manifest}"
    );
    let manifest = manifest.replace(
        "- --cgroup=/sys/fs/cgroup\n",
        &format!("- --cgroup={}/$(NODE_NAME)\n", cgroups.display()),
    );
    c.apply(&manifest);
    let pods = c.wait(
        "a ready proxy pod on every node",
        Duration::from_secs(90),
        || {
            let list = c.get_json(&["pods", "-n", "kube-system", "-l", "k8s-app=xkube-proxy"]);
            let ready: BTreeSet<String> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| {
                    p["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
                .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_owned))
                .collect();
            (ready.len() == 3).then_some(ready)
        },
    );
    let want: BTreeSet<String> = (0..3).map(|i| c.node_name(i)).collect();
    assert_eq!(pods, want, "one proxy pod per node");
    let table = c.kubectl_ok(&["get", "ds", "-n", "kube-system"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
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
        ],
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..6],
        ["xkube-proxy", "3", "3", "3", "3", "3"],
        "{table}"
    );
    for i in 0..3 {
        let pins = std::path::Path::new("/sys/fs/bpf/xkube").join(c.node_name(i));
        assert!(pins.join("maps").is_dir(), "{} pinned", pins.display());
    }

    // NodePort through every node from the outside machine, ClusterIP from every node.
    for i in 0..3 {
        let to = SocketAddrV4::new(c.node_addr(i), node_port);
        let seen: BTreeSet<String> = c.wait(
            &format!("NodePort via node{}", i + 1),
            Duration::from_secs(30),
            || {
                let r = http_get(&c.client_ns(), to, "/hostname", TIMEOUT).ok()?;
                Some(BTreeSet::from([r.trim().to_owned()]))
            },
        );
        assert!(seen.iter().all(|h| h.starts_with("web-")), "{seen:?}");
        let hostnames = c.on_node(i, || {
            (0..30)
                .filter_map(|_| {
                    http_get_here(SocketAddrV4::new(vip, port), "/hostname", TIMEOUT).ok()
                })
                .map(|h| h.trim().to_owned())
                .collect::<BTreeSet<String>>()
        });
        assert!(
            hostnames.len() >= 2 && hostnames.iter().all(|h| h.starts_with("web-")),
            "ClusterIP from node{}: {hostnames:?}",
            i + 1
        );
    }

    c.kubectl_ok(&["delete", "ds", "xkube-proxy", "-n", "kube-system"]);
    c.wait("the proxy pods gone", Duration::from_secs(60), || {
        let list = c.get_json(&["pods", "-n", "kube-system", "-l", "k8s-app=xkube-proxy"]);
        list["items"]
            .as_array()
            .is_none_or(Vec::is_empty)
            .then_some(())
    });
}
