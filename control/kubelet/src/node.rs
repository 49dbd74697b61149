//! Node registration and heartbeats: labels, capacity/allocatable, addresses, nodeInfo and the
//! conditions with the reasons Kubernetes users know.

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};
use xkube_client::{Api, Client, Patch};

use crate::error::Result;

/// Machine facts for the Node object.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    pub cpus: String,
    pub memory: String,
    pub max_pods: u32,
    pub kernel: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
    pub hostname: String,
}

fn read_trim(p: &str) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

impl Machine {
    /// Reads the machine; `cpu`/`memory` override what is found.
    pub fn detect(cpu: Option<&str>, memory: Option<&str>, max_pods: u32) -> Self {
        let cpus = cpu.map(str::to_owned).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .to_string()
        });
        let memory = memory.map(str::to_owned).unwrap_or_else(|| {
            read_trim("/proc/meminfo")
                .and_then(|m| {
                    m.lines()
                        .find_map(|l| l.strip_prefix("MemTotal:"))
                        .and_then(|v| v.split_whitespace().next().map(|k| format!("{k}Ki")))
                })
                .unwrap_or_else(|| "0".into())
        });
        let os_image = read_trim("/etc/os-release")
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("PRETTY_NAME=")
                        .map(|v| v.trim_matches('"').to_owned())
                })
            })
            .unwrap_or_else(|| "Linux".into());
        Self {
            cpus,
            memory,
            max_pods,
            kernel: read_trim("/proc/sys/kernel/osrelease").unwrap_or_default(),
            os_image,
            machine_id: read_trim("/etc/machine-id").unwrap_or_default(),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
            hostname: read_trim("/proc/sys/kernel/hostname").unwrap_or_default(),
        }
    }
}

/// `amd64`/`arm64` from Rust's arch names.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// The kubelet version reported in nodeInfo.
pub const KUBELET_VERSION: &str = concat!("v1.33.0-xkube.", env!("CARGO_PKG_VERSION"));

/// Labels of the node.
pub fn node_labels(name: &str, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), name.to_owned()),
        ("kubernetes.io/arch".to_owned(), go_arch().to_owned()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("beta.kubernetes.io/arch".to_owned(), go_arch().to_owned()),
        ("beta.kubernetes.io/os".to_owned(), "linux".to_owned()),
    ]);
    l.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    l
}

/// The four conditions, all healthy, with Kubernetes' reasons and messages.
pub fn conditions(now: &str, since: &str) -> Value {
    let c = |t: &str, s: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": msg,
               "lastHeartbeatTime": now, "lastTransitionTime": since})
    };
    json!([
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status"
        ),
    ])
}

/// The full node status.
pub fn node_status(
    m: &Machine,
    node_name: &str,
    node_ip: Ipv4Addr,
    runtime_version: &str,
    port: u16,
    now: &str,
    since: &str,
) -> Value {
    let cap = json!({"cpu": m.cpus, "memory": m.memory, "pods": m.max_pods.to_string(),
                     "ephemeral-storage": "0"});
    json!({
        "capacity": cap,
        "allocatable": cap,
        "addresses": [
            {"type": "InternalIP", "address": node_ip.to_string()},
            {"type": "Hostname", "address": node_name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "nodeInfo": {
            "machineID": m.machine_id, "systemUUID": m.machine_id, "bootID": m.boot_id,
            "kernelVersion": m.kernel, "osImage": m.os_image,
            "containerRuntimeVersion": runtime_version,
            "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": KUBELET_VERSION,
            "operatingSystem": "linux", "architecture": go_arch(),
        },
        "conditions": conditions(now, since),
        "phase": "Running",
    })
}

pub fn now_str() -> String {
    // Truncated, not rounded: a rounded-up time would lie in the future of what follows.
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Creates or updates the Node; sets `spec.podCIDR` when `pod_cidr` is given and the node has
/// none. Returns the node as stored.
pub async fn register(
    client: &Client,
    name: &str,
    labels: &BTreeMap<String, String>,
    pod_cidr: Option<&str>,
    status: Value,
) -> Result<Node> {
    let api = Api::<Node>::all(client.clone());
    if api.get_opt(name).await?.is_none() {
        let mut spec = json!({});
        if let Some(c) = pod_cidr {
            spec = json!({"podCIDR": c, "podCIDRs": [c]});
        }
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "spec": spec,
        }))
        .map_err(|e| crate::error::invalid("node", e.to_string()))?;
        match api.create(&node).await {
            Ok(_) => tracing::info!(node = name, "registered node"),
            Err(e) if e.status().is_some_and(|s| s.code == 409) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let cur = api.get(name).await?;
    let mut patch = json!({"metadata": {"labels": labels}});
    let has_cidr = cur
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .is_some_and(|c| !c.is_empty());
    if let (Some(c), false) = (pod_cidr, has_cidr) {
        patch["spec"] = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    api.patch(name, &Patch::Merge(patch)).await?;
    Ok(api
        .patch_status(name, &Patch::Merge(json!({"status": status})))
        .await?)
}

/// A heartbeat: refreshes the conditions' heartbeat times.
pub async fn heartbeat(client: &Client, name: &str, status: Value) -> Result<()> {
    Api::<Node>::all(client.clone())
        .patch_status(name, &Patch::Merge(json!({"status": status})))
        .await?;
    Ok(())
}

/// The podCIDR and InternalIP of a node, for routes.
pub fn route_of(n: &Node) -> Option<(String, Ipv4Addr)> {
    let cidr = n
        .spec
        .as_ref()?
        .pod_cidr
        .clone()
        .filter(|c| !c.is_empty())?;
    let ip = n
        .status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()?;
    Some((cidr, ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_kubernetes_reasons_addresses_and_capacity() {
        let m = Machine::detect(Some("4"), Some("8Gi"), 110);
        assert_eq!(m.cpus, "4");
        let s = node_status(
            &m,
            "n1",
            Ipv4Addr::new(198, 18, 0, 11),
            "process://0.1.0",
            10250,
            "t",
            "t0",
        );
        assert_eq!(s["capacity"]["cpu"], "4");
        assert_eq!(s["allocatable"]["memory"], "8Gi");
        assert_eq!(s["capacity"]["pods"], "110");
        assert_eq!(s["addresses"][0]["address"], "198.18.0.11");
        assert_eq!(s["addresses"][1]["type"], "Hostname");
        let ready = s["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .expect("Ready condition");
        assert_eq!(ready["reason"], "KubeletReady");
        assert_eq!(ready["message"], "kubelet is posting ready status");
        assert_eq!(s["nodeInfo"]["containerRuntimeVersion"], "process://0.1.0");
        let l = node_labels("n1", &BTreeMap::from([("zone".to_owned(), "a".to_owned())]));
        assert_eq!(l["kubernetes.io/hostname"], "n1");
        assert_eq!(l["kubernetes.io/os"], "linux");
        assert_eq!(l["zone"], "a");
    }
}
