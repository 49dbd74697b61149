//! Predicates: whether a pod fits a node, with Kubernetes' failure reasons.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Volume};
use xkube_api::placement;
use xkube_api::pod as podutil;
use xkube_api::quantity::{self, pod_resources};
use xkube_client::Object;

/// Default cpu request (millicores) counted for priorities when a pod asks for none.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Default memory request (bytes) counted for priorities when a pod asks for none.
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// A host port in use: protocol, host IP, port.
pub type HostPort = (String, String, i32);

/// A node and what is already placed on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node.
    pub node: Arc<Node>,
    /// Pods bound or assumed to it.
    pub pods: Vec<Arc<Pod>>,
    /// Sum of cpu requests (millicores).
    pub requested_cpu: i64,
    /// Sum of memory requests (bytes).
    pub requested_memory: i64,
    /// Sum of cpu requests with defaults for pods asking for none.
    pub nonzero_cpu: i64,
    /// Sum of memory requests with defaults for pods asking for none.
    pub nonzero_memory: i64,
    /// Host ports in use.
    pub used_ports: HashSet<HostPort>,
}

/// Allocatable cpu (millicores), memory (bytes) and pods of a node (capacity when no
/// allocatable is posted).
pub fn allocatable(node: &Node) -> (i64, i64, i64) {
    let st = node.status.as_ref();
    let alloc = st.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
    let get = |k: &str, f: fn(&str) -> Option<i64>| {
        alloc
            .and_then(|m| m.get(k))
            .and_then(|q| f(&q.0))
            .unwrap_or(0)
    };
    let pods = alloc
        .and_then(|m| m.get("pods"))
        .and_then(|q| quantity::Quantity::parse(&q.0))
        .and_then(|q| i64::try_from(q.value()).ok())
        .unwrap_or(110);
    (
        get("cpu", quantity::cpu_millis),
        get("memory", quantity::bytes),
        pods,
    )
}

/// Requests of a pod with Kubernetes' non-zero defaults (for priorities).
pub fn nonzero_requests(pod: &Pod) -> (i64, i64) {
    let mut cpu = 0;
    let mut mem = 0;
    if let Some(spec) = pod.spec.as_ref() {
        for c in &spec.containers {
            let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
            let lim = c.resources.as_ref().and_then(|r| r.limits.as_ref());
            let pick = |k: &str| {
                req.and_then(|m| m.get(k))
                    .or_else(|| lim.and_then(|m| m.get(k)))
            };
            cpu += pick("cpu")
                .and_then(|q| quantity::cpu_millis(&q.0))
                .unwrap_or(DEFAULT_MILLI_CPU_REQUEST);
            mem += pick("memory")
                .and_then(|q| quantity::bytes(&q.0))
                .unwrap_or(DEFAULT_MEMORY_REQUEST);
        }
    }
    (cpu, mem)
}

/// Host ports a pod asks for.
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            p.host_port.filter(|hp| *hp > 0).map(|hp| {
                (
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    p.host_ip
                        .clone()
                        .filter(|ip| !ip.is_empty())
                        .unwrap_or_else(|| "0.0.0.0".into()),
                    hp,
                )
            })
        })
        .collect()
}

impl NodeInfo {
    /// A node with nothing on it.
    pub fn new(node: Arc<Node>) -> Self {
        NodeInfo {
            node,
            pods: Vec::new(),
            requested_cpu: 0,
            requested_memory: 0,
            nonzero_cpu: 0,
            nonzero_memory: 0,
            used_ports: HashSet::new(),
        }
    }

    /// Accounts for a pod placed on the node.
    pub fn add_pod(&mut self, pod: Arc<Pod>) {
        let r = pod_resources(&pod);
        self.requested_cpu += r.cpu_request;
        self.requested_memory += r.memory_request;
        let (c, m) = nonzero_requests(&pod);
        self.nonzero_cpu += c;
        self.nonzero_memory += m;
        self.used_ports.extend(host_ports(&pod));
        self.pods.push(pod);
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.node.name()
    }
}

/// Why a pod does not fit a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    /// `spec.unschedulable`.
    Unschedulable,
    /// The node's Ready condition is not True.
    NotReady,
    /// `spec.nodeName` names another node.
    NodeName,
    /// nodeSelector or required node affinity does not match.
    NodeSelector,
    /// A NoSchedule/NoExecute taint the pod does not tolerate.
    Taint(String, String),
    /// A requested host port is taken.
    HostPorts,
    /// Not enough cpu.
    InsufficientCpu,
    /// Not enough memory.
    InsufficientMemory,
    /// The node holds its maximum number of pods.
    TooManyPods,
    /// A volume conflicts with one already mounted on the node.
    DiskConflict,
    /// Required labels missing or forbidden labels present.
    NodeLabels,
    /// The node is not in the service's affinity group.
    ServiceAffinity,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unschedulable => write!(f, "node(s) were unschedulable"),
            Failure::NotReady => write!(f, "node(s) were not ready"),
            Failure::NodeName => write!(f, "node(s) didn't match the requested node name"),
            Failure::NodeSelector => write!(f, "node(s) didn't match Pod's node affinity/selector"),
            Failure::Taint(k, v) => write!(f, "node(s) had untolerated taint {{{k}: {v}}}"),
            Failure::HostPorts => write!(
                f,
                "node(s) didn't have free ports for the requested pod ports"
            ),
            Failure::InsufficientCpu => write!(f, "Insufficient cpu"),
            Failure::InsufficientMemory => write!(f, "Insufficient memory"),
            Failure::TooManyPods => write!(f, "Too many pods"),
            Failure::DiskConflict => write!(f, "node(s) had no available disk"),
            Failure::NodeLabels => write!(f, "node(s) didn't have the requested labels"),
            Failure::ServiceAffinity => write!(f, "node(s) didn't match service affinity"),
        }
    }
}

/// Everything the predicates need besides the pod and the node.
#[derive(Debug, Clone, Default)]
pub struct PredicateContext {
    /// CheckNodeLabelPresence: labels every node must have.
    pub labels_present: Vec<String>,
    /// CheckNodeLabelPresence: labels no node may have.
    pub labels_absent: Vec<String>,
    /// CheckServiceAffinity: label values fixed by the pod's service peers
    /// (computed by [`service_affinity_constraints`]).
    pub service_affinity: BTreeMap<String, String>,
}

/// PodFitsHost.
pub fn pod_fits_host(pod: &Pod, node: &Node) -> bool {
    let n = podutil::node_name(pod);
    n.is_empty() || n == node.name()
}

/// PodSelectorMatches: nodeSelector and required node affinity.
pub fn pod_matches_node_selector(pod: &Pod, node: &Node) -> bool {
    pod.spec
        .as_ref()
        .is_none_or(|spec| placement::matches_node_selector_and_affinity(spec, node))
}

/// The first NoSchedule/NoExecute taint of `node` the pod does not tolerate.
pub fn untolerated_taint<'a>(pod: &Pod, node: &'a Node) -> Option<&'a Taint> {
    let tols = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    placement::find_untolerated_taint(placement::node_taints(node), tols, |t| {
        t.effect == "NoSchedule" || t.effect == "NoExecute"
    })
}

fn volumes_conflict(a: &Volume, b: &Volume) -> bool {
    if let (Some(x), Some(y)) = (&a.gce_persistent_disk, &b.gce_persistent_disk)
        && x.pd_name == y.pd_name
        && !(x.read_only.unwrap_or(false) && y.read_only.unwrap_or(false))
    {
        return true;
    }
    if let (Some(x), Some(y)) = (&a.aws_elastic_block_store, &b.aws_elastic_block_store)
        && x.volume_id == y.volume_id
    {
        return true;
    }
    if let (Some(x), Some(y)) = (&a.rbd, &b.rbd)
        && x.image == y.image
        && x.pool == y.pool
        && x.monitors.iter().any(|m| y.monitors.contains(m))
        && !(x.read_only.unwrap_or(false) && y.read_only.unwrap_or(false))
    {
        return true;
    }
    if let (Some(x), Some(y)) = (&a.iscsi, &b.iscsi)
        && x.iqn == y.iqn
        && x.lun == y.lun
        && x.target_portal == y.target_portal
        && !(x.read_only.unwrap_or(false) && y.read_only.unwrap_or(false))
    {
        return true;
    }
    false
}

/// NoDiskConflict: a GCE PD, EBS volume, RBD image or iSCSI LUN mounted read-write
/// conflicts with the same disk already used on the node.
pub fn no_disk_conflict(pod: &Pod, info: &NodeInfo) -> bool {
    let vols = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default();
    if vols.is_empty() {
        return true;
    }
    !info.pods.iter().any(|other| {
        other
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_deref())
            .unwrap_or_default()
            .iter()
            .any(|ov| vols.iter().any(|v| volumes_conflict(v, ov)))
    })
}

/// PodFitsResources: which resources the node lacks for the pod.
pub fn resource_failures(pod: &Pod, info: &NodeInfo) -> Vec<Failure> {
    let (cpu, mem, max_pods) = allocatable(&info.node);
    let mut out = Vec::new();
    if info.pods.len() as i64 + 1 > max_pods {
        out.push(Failure::TooManyPods);
    }
    let r = pod_resources(pod);
    if r.cpu_request > 0 && info.requested_cpu + r.cpu_request > cpu {
        out.push(Failure::InsufficientCpu);
    }
    if r.memory_request > 0 && info.requested_memory + r.memory_request > mem {
        out.push(Failure::InsufficientMemory);
    }
    out
}

/// PodFitsHostPorts.
pub fn pod_fits_host_ports(pod: &Pod, info: &NodeInfo) -> bool {
    host_ports(pod).iter().all(|(proto, ip, port)| {
        !info.used_ports.iter().any(|(p2, ip2, port2)| {
            p2 == proto && port2 == port && (ip == ip2 || ip == "0.0.0.0" || ip2 == "0.0.0.0")
        })
    })
}

/// CheckNodeLabelPresence.
pub fn node_label_presence(node: &Node, present: &[String], absent: &[String]) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    present.iter().all(|l| labels.contains_key(l)) && absent.iter().all(|l| !labels.contains_key(l))
}

/// CheckServiceAffinity: the label values a pod's node must have so that it lands with
/// the pods of its services (the first scheduled peer's node decides); labels fixed by the
/// pod's own nodeSelector are left to the selector.
pub fn service_affinity_constraints(
    pod: &Pod,
    labels: &[String],
    peers: &[Arc<Pod>],
    node_labels: impl Fn(&str) -> Option<BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if labels.is_empty() {
        return out;
    }
    let selector = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_selector.clone())
        .unwrap_or_default();
    let mut wanted: Vec<&String> = Vec::new();
    for l in labels {
        if let Some(v) = selector.get(l) {
            out.insert(l.clone(), v.clone());
        } else {
            wanted.push(l);
        }
    }
    if wanted.is_empty() {
        return out;
    }
    if let Some(peer) = peers.iter().find(|p| !podutil::node_name(p).is_empty())
        && let Some(nl) = node_labels(podutil::node_name(peer))
    {
        for l in wanted {
            if let Some(v) = nl.get(l) {
                out.insert(l.clone(), v.clone());
            }
        }
    }
    out
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_none_or(|cs| {
            cs.iter()
                .find(|c| c.type_ == "Ready")
                .is_none_or(|c| c.status == "True")
        })
}

/// Runs every predicate; empty when the pod fits.
pub fn check(pod: &Pod, info: &NodeInfo, ctx: &PredicateContext) -> Vec<Failure> {
    let node = &*info.node;
    let tolerates_unschedulable = || {
        pod.spec
            .as_ref()
            .and_then(|s| s.tolerations.as_ref())
            .is_some_and(|ts| {
                placement::tolerated(
                    ts,
                    &Taint {
                        key: "node.kubernetes.io/unschedulable".into(),
                        effect: "NoSchedule".into(),
                        ..Taint::default()
                    },
                )
            })
    };
    if node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
        && !tolerates_unschedulable()
    {
        return vec![Failure::Unschedulable];
    }
    if !pod_fits_host(pod, node) {
        return vec![Failure::NodeName];
    }
    if !pod_matches_node_selector(pod, node) {
        return vec![Failure::NodeSelector];
    }
    if let Some(t) = untolerated_taint(pod, node) {
        return vec![Failure::Taint(
            t.key.clone(),
            t.value.clone().unwrap_or_default(),
        )];
    }
    if !node_ready(node) {
        return vec![Failure::NotReady];
    }
    if !pod_fits_host_ports(pod, info) {
        return vec![Failure::HostPorts];
    }
    let res = resource_failures(pod, info);
    if !res.is_empty() {
        return res;
    }
    if !no_disk_conflict(pod, info) {
        return vec![Failure::DiskConflict];
    }
    if !node_label_presence(node, &ctx.labels_present, &ctx.labels_absent) {
        return vec![Failure::NodeLabels];
    }
    if !ctx.service_affinity.is_empty() {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        if !ctx
            .service_affinity
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            return vec![Failure::ServiceAffinity];
        }
    }
    Vec::new()
}

/// Kubernetes' FailedScheduling message: `0/3 nodes are available: 3 Insufficient cpu.`
pub fn failure_message(total_nodes: usize, failures: &[Vec<Failure>]) -> String {
    if total_nodes == 0 {
        return "no nodes available to schedule pods".into();
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for f in failures.iter().flatten() {
        *counts.entry(f.to_string()).or_default() += 1;
    }
    let mut parts: Vec<String> = counts
        .into_iter()
        .map(|(r, n)| format!("{n} {r}"))
        .collect();
    parts.sort();
    format!("0/{total_nodes} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{Value, json};

    pub(crate) fn node(name: &str, cpu: &str, mem: &str, extra: Value) -> Arc<Node> {
        let mut v = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        });
        merge(&mut v, extra);
        Arc::new(serde_json::from_value(v).expect("node literal"))
    }

    pub(crate) fn pod(name: &str, cpu: &str, mem: &str, extra: Value) -> Arc<Pod> {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "x",
                     "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}
        });
        merge(&mut v, extra);
        Arc::new(serde_json::from_value(v).expect("pod literal"))
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn resources_count_pods_already_on_the_node() {
        let mut info = NodeInfo::new(node("n1", "1", "1Gi", json!({})));
        let p = pod("p", "600m", "100Mi", json!({}));
        assert!(check(&p, &info, &PredicateContext::default()).is_empty());
        info.add_pod(pod("q", "500m", "1000Mi", json!({})));
        assert_eq!(
            check(&p, &info, &PredicateContext::default()),
            [Failure::InsufficientCpu, Failure::InsufficientMemory]
        );
    }

    #[test]
    fn host_ports_conflict_per_protocol_and_ip() {
        let hp = |port: i32, proto: &str| {
            json!({"spec": {"containers": [{"name": "c", "image": "x",
            "ports": [{"containerPort": 80, "hostPort": port, "protocol": proto}]}]}})
        };
        let mut info = NodeInfo::new(node("n1", "4", "4Gi", json!({})));
        info.add_pod(pod("a", "0", "0", hp(8080, "TCP")));
        assert!(!pod_fits_host_ports(
            &pod("b", "0", "0", hp(8080, "TCP")),
            &info
        ));
        assert!(pod_fits_host_ports(
            &pod("b", "0", "0", hp(8080, "UDP")),
            &info
        ));
        assert!(pod_fits_host_ports(
            &pod("b", "0", "0", hp(8081, "TCP")),
            &info
        ));
    }

    #[test]
    fn node_selector_and_required_affinity() {
        let n = node(
            "n1",
            "4",
            "4Gi",
            json!({"metadata": {"labels": {"disk": "ssd", "gen": "5"}}}),
        );
        assert!(pod_matches_node_selector(
            &pod(
                "p",
                "0",
                "0",
                json!({"spec": {"nodeSelector": {"disk": "ssd"}}})
            ),
            &n
        ));
        assert!(!pod_matches_node_selector(
            &pod(
                "p",
                "0",
                "0",
                json!({"spec": {"nodeSelector": {"disk": "hdd"}}})
            ),
            &n
        ));
        let aff = |op: &str, vals: Value| {
            json!({"spec": {"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "gen", "operator": op, "values": vals}]}]}}}}})
        };
        assert!(pod_matches_node_selector(
            &pod("p", "0", "0", aff("In", json!(["4", "5"]))),
            &n
        ));
        assert!(!pod_matches_node_selector(
            &pod("p", "0", "0", aff("NotIn", json!(["5"]))),
            &n
        ));
        assert!(pod_matches_node_selector(
            &pod("p", "0", "0", aff("Gt", json!(["4"]))),
            &n
        ));
        assert!(!pod_matches_node_selector(
            &pod("p", "0", "0", aff("Lt", json!(["4"]))),
            &n
        ));
    }

    #[test]
    fn taints_need_tolerations() {
        let n = node(
            "n1",
            "4",
            "4Gi",
            json!({"spec": {"taints": [
            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]}}),
        );
        let info = NodeInfo::new(n.clone());
        let p = pod("p", "0", "0", json!({}));
        assert_eq!(
            check(&p, &info, &PredicateContext::default()),
            [Failure::Taint(
                "node.kubernetes.io/unreachable".into(),
                String::new()
            )]
        );
        let tolerant = pod(
            "p",
            "0",
            "0",
            json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists"}]}}),
        );
        assert!(check(&tolerant, &info, &PredicateContext::default()).is_empty());
        let soft = node(
            "n2",
            "4",
            "4Gi",
            json!({"spec": {"taints": [{"key": "x", "effect": "PreferNoSchedule"}]}}),
        );
        assert!(
            untolerated_taint(&p, &soft).is_none(),
            "PreferNoSchedule does not filter"
        );
    }

    #[test]
    fn disk_conflicts_unless_both_read_only() {
        let pd = |ro: bool| json!({"spec": {"volumes": [{"name": "v", "gcePersistentDisk": {"pdName": "d1", "readOnly": ro}}]}});
        let mut info = NodeInfo::new(node("n1", "4", "4Gi", json!({})));
        info.add_pod(pod("a", "0", "0", pd(true)));
        assert!(no_disk_conflict(&pod("b", "0", "0", pd(true)), &info));
        assert!(!no_disk_conflict(&pod("b", "0", "0", pd(false)), &info));
    }

    #[test]
    fn label_presence_host_name_and_service_affinity() {
        let n = node(
            "n1",
            "4",
            "4Gi",
            json!({"metadata": {"labels": {"zone": "a"}}}),
        );
        assert!(node_label_presence(&n, &["zone".into()], &[]));
        assert!(!node_label_presence(&n, &[], &["zone".into()]));
        assert!(!pod_fits_host(
            &pod("p", "0", "0", json!({"spec": {"nodeName": "n2"}})),
            &n
        ));
        let peer = pod("peer", "0", "0", json!({"spec": {"nodeName": "n9"}}));
        let c = service_affinity_constraints(
            &pod("p", "0", "0", json!({})),
            &["zone".into()],
            &[peer],
            |name| (name == "n9").then(|| BTreeMap::from([("zone".to_string(), "b".to_string())])),
        );
        assert_eq!(c.get("zone").map(String::as_str), Some("b"));
        let ctx = PredicateContext {
            service_affinity: c,
            ..PredicateContext::default()
        };
        assert_eq!(
            check(&pod("p", "0", "0", json!({})), &NodeInfo::new(n), &ctx),
            [Failure::ServiceAffinity]
        );
    }

    #[test]
    fn failure_messages_read_like_kubernetes() {
        let f = vec![vec![Failure::InsufficientCpu]; 3];
        assert_eq!(
            failure_message(3, &f),
            "0/3 nodes are available: 3 Insufficient cpu."
        );
        let mixed = vec![
            vec![Failure::InsufficientCpu, Failure::InsufficientMemory],
            vec![Failure::NodeSelector],
            vec![Failure::InsufficientMemory],
        ];
        assert_eq!(
            failure_message(3, &mixed),
            "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node affinity/selector, 2 Insufficient memory."
        );
        assert_eq!(
            failure_message(0, &[]),
            "no nodes available to schedule pods"
        );
    }
}
