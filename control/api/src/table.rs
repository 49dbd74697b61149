//! Server-side `Table` output (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`) with the
//! columns kubectl users know.

use serde_json::{Value, json};

use crate::meta;

/// How much of each object a table row carries (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// No object.
    None,
    /// `PartialObjectMetadata` (the default).
    #[default]
    Metadata,
    /// The full object.
    Object,
}

impl IncludeObject {
    /// Parses the query value (`None`, `Metadata`, `Object`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "None" => Some(IncludeObject::None),
            "Metadata" | "" => Some(IncludeObject::Metadata),
            "Object" => Some(IncludeObject::Object),
            _ => None,
        }
    }
}

/// Kubernetes' `duration.HumanDuration`: `7s`, `5m`, `19h`, `5d`, ...
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// `kubectl`'s AGE column: the time since `ts` (an RFC 3339 string), or `<unknown>`.
pub fn age(ts: &Value, now: jiff::Timestamp) -> String {
    match ts.as_str().and_then(meta::parse_time) {
        Some(t) => human_duration(now.as_second() - t.as_second()),
        None => "<unknown>".into(),
    }
}

#[derive(Clone)]
pub(crate) struct Col {
    pub(crate) name: &'static str,
    pub(crate) ty: &'static str,
    pub(crate) format: &'static str,
    pub(crate) priority: i32,
    pub(crate) description: &'static str,
}

pub(crate) const fn col(name: &'static str, priority: i32, description: &'static str) -> Col {
    Col {
        name,
        ty: "string",
        format: "",
        priority,
        description,
    }
}

pub(crate) const NAME: Col = Col {
    name: "Name",
    ty: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
};
pub(crate) const AGE: Col = col(
    "Age",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.",
);

/// The wide columns of a kind with a pod template: its containers, images and selector
/// (`selector` describes the latter).
pub(crate) fn template_cols(selector: &'static str) -> [Col; 3] {
    [
        col("Containers", 1, "Names of each container in the template."),
        col(
            "Images",
            1,
            "Images referenced by each container in the template.",
        ),
        col("Selector", 1, selector),
    ]
}

fn columns(plural: &str) -> Vec<Col> {
    match plural {
        "pods" => vec![
            NAME,
            col(
                "Ready",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            Col {
                ty: "string",
                ..col(
                    "Restarts",
                    0,
                    "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
                )
            },
            AGE,
            col(
                "IP",
                1,
                "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            ),
            col(
                "Node",
                1,
                "NodeName is a request to schedule this pod onto a specific node.",
            ),
            col(
                "Nominated Node",
                1,
                "nominatedNodeName is set only when this pod preempts other pods on the node.",
            ),
            col(
                "Readiness Gates",
                1,
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        "services" => vec![
            NAME,
            col("Type", 0, "type determines how the Service is exposed."),
            col(
                "Cluster-IP",
                0,
                "clusterIP is the IP address of the service.",
            ),
            col(
                "External-IP",
                0,
                "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
            ),
            col(
                "Port(s)",
                0,
                "The list of ports that are exposed by this service.",
            ),
            AGE,
            col(
                "Selector",
                1,
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        "replicationcontrollers" => [
            vec![
            NAME,
            Col {
                ty: "integer",
                ..col("Desired", 0, "Replicas is the number of desired replicas.")
            },
            Col {
                ty: "integer",
                ..col(
                    "Current",
                    0,
                    "Replicas is the most recently observed number of replicas.",
                )
            },
            Col {
                ty: "integer",
                ..col(
                    "Ready",
                    0,
                    "The number of ready replicas for this replication controller.",
                )
            },
            AGE,
            ],
            template_cols("Selector is a label query over pods that should match the Replicas count.").into(),
        ]
        .concat(),
        "replicasets" => [
            vec![
            NAME,
            Col {
                ty: "integer",
                ..col("Desired", 0, "Replicas is the number of desired pods.")
            },
            Col {
                ty: "integer",
                ..col(
                    "Current",
                    0,
                    "Replicas is the most recently observed number of replicas.",
                )
            },
            Col {
                ty: "integer",
                ..col(
                    "Ready",
                    0,
                    "The number of non-terminating pods targeted by this ReplicaSet with a Ready Condition.",
                )
            },
            AGE,
            ],
            template_cols("Selector is a label query over pods that should match the replica count.").into(),
        ]
        .concat(),
        "deployments" => [
            vec![
            NAME,
            col("Ready", 0, "Number of the pod with ready state"),
            Col {
                ty: "integer",
                ..col(
                    "Up-to-date",
                    0,
                    "Total number of non-terminating pods targeted by this deployment that have the desired template spec.",
                )
            },
            Col {
                ty: "integer",
                ..col(
                    "Available",
                    0,
                    "Total number of available non-terminating pods (ready for at least minReadySeconds) targeted by this deployment.",
                )
            },
            AGE,
            ],
            template_cols("Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.").into(),
        ]
        .concat(),
        "daemonsets" => [
            vec![
            NAME,
            Col {
                ty: "integer",
                ..col(
                    "Desired",
                    0,
                    "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod). More info: https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/",
                )
            },
            Col {
                ty: "integer",
                ..col(
                    "Current",
                    0,
                    "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod. More info: https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/",
                )
            },
            Col {
                ty: "integer",
                ..col(
                    "Ready",
                    0,
                    "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition.",
                )
            },
            Col {
                ty: "integer",
                ..col(
                    "Up-to-date",
                    0,
                    "The total number of nodes that are running updated daemon pod",
                )
            },
            Col {
                ty: "integer",
                ..col(
                    "Available",
                    0,
                    "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
                )
            },
            col(
                "Node Selector",
                0,
                "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node. More info: https://kubernetes.io/docs/concepts/configuration/assign-pod-node/",
            ),
            AGE,
            ],
            template_cols("A label query over pods that are managed by the daemon set. Must match in order to be controlled. It must match the pod template's labels. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors").into(),
        ]
        .concat(),
        "endpoints" => vec![
            NAME,
            col(
                "Endpoints",
                0,
                "Endpoints is the list of endpoints in the endpoint.",
            ),
            AGE,
        ],
        "namespaces" => vec![NAME, col("Status", 0, "The status of the namespace"), AGE],
        "nodes" => vec![
            NAME,
            col("Status", 0, "The status of the node"),
            col("Roles", 0, "The roles of the node"),
            AGE,
            col("Version", 0, "Kubelet Version reported by the node."),
            col("Internal-IP", 1, "List of internal IPs (if any)."),
            col("External-IP", 1, "List of external IPs (if any)."),
            col(
                "OS-Image",
                1,
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            ),
            col(
                "Kernel-Version",
                1,
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            ),
            col(
                "Container-Runtime",
                1,
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            ),
        ],
        "secrets" => vec![
            NAME,
            col("Type", 0, "The type of the secret"),
            Col {
                ty: "integer",
                ..col("Data", 0, "The number of entries in the data field.")
            },
            AGE,
        ],
        "configmaps" => vec![
            NAME,
            Col {
                ty: "integer",
                ..col("Data", 0, "The number of entries in the data field.")
            },
            AGE,
        ],
        "serviceaccounts" => vec![
            NAME,
            Col {
                ty: "integer",
                ..col(
                    "Secrets",
                    0,
                    "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
                )
            },
            AGE,
        ],
        "events" => vec![
            col("Last Seen", 0, "Time of the last occurrence of the event."),
            col("Type", 0, "Type of this event (Normal, Warning)."),
            col(
                "Reason",
                0,
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            col("Object", 0, "The object this Event is about."),
            col(
                "Subobject",
                1,
                "The subobject (field path) this Event is about.",
            ),
            col("Source", 1, "The component reporting this event."),
            col(
                "Message",
                0,
                "A human-readable description of the status of this operation.",
            ),
            col(
                "First Seen",
                1,
                "The time at which the event was first recorded.",
            ),
            Col {
                ty: "integer",
                ..col("Count", 1, "The number of times this event has occurred.")
            },
            Col {
                priority: 1,
                ..NAME
            },
        ],
        "endpointslices" => vec![
            NAME,
            col(
                "AddressType",
                0,
                "Type of address carried by this EndpointSlice.",
            ),
            col(
                "Ports",
                0,
                "Port numbers which will be exposed on each endpoint.",
            ),
            col("Endpoints", 0, "Addresses of the endpoints."),
            AGE,
        ],
        "resourcequotas" => vec![
            NAME,
            AGE,
            col(
                "Request",
                0,
                "Request represents a minimum amount of cpu/memory that a container may consume.",
            ),
            col(
                "Limit",
                0,
                "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node.",
            ),
        ],
        "limitranges" => vec![
            NAME,
            col(
                "Created At",
                0,
                "CreationTimestamp is a timestamp representing the server time when this object was created.",
            ),
        ],
        "leases" => vec![NAME, col("Holder", 0, "The holder of the lease."), AGE],
        "roles" | "clusterroles" => vec![
            NAME,
            col(
                "Created At",
                0,
                "CreationTimestamp is a timestamp representing the server time when this object was created.",
            ),
        ],
        "rolebindings" | "clusterrolebindings" => vec![
            NAME,
            col(
                "Role",
                0,
                "RoleRef is the reference to the role the binding grants.",
            ),
            AGE,
            col("Users", 1, "Users in the binding."),
            col("Groups", 1, "Groups in the binding."),
            col("ServiceAccounts", 1, "ServiceAccounts in the binding."),
        ],
        p => crate::batch::columns(p).unwrap_or_else(|| vec![NAME, AGE]),
    }
}

/// `s`, or `<none>` when it is empty.
pub fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

/// A string map as `k=v,k=v`, or `<none>` when empty.
pub fn selector_string(v: &Value) -> String {
    or_none(
        meta::string_map(v)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Kubernetes' `metav1.FormatLabelSelector`: requirements sorted by key, `k=v`,
/// `k in (a,b)`, `k notin (a,b)`, `k`, `!k`; `<none>` when empty.
pub fn format_label_selector(sel: &Value) -> String {
    let mut reqs: Vec<(String, String)> = meta::string_map(&sel["matchLabels"])
        .into_iter()
        .map(|(k, v)| (k.clone(), format!("{k}={v}")))
        .collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or("").to_string();
        let mut values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        values.sort_unstable();
        let text = match e["operator"].as_str().unwrap_or("") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.clone(),
            "DoesNotExist" => format!("!{key}"),
            _ => return "<error>".into(),
        };
        reqs.push((key, text));
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    or_none(
        reqs.into_iter()
            .map(|(_, t)| t)
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Names and images of a pod template's containers, comma-separated.
fn template_containers(template: &Value) -> (String, String) {
    let containers = template["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = containers
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let images: Vec<&str> = containers
        .iter()
        .filter_map(|c| c["image"].as_str())
        .collect();
    (names.join(","), images.join(","))
}

fn pod_status(pod: &Value) -> (String, String, i64) {
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = statuses
        .iter()
        .filter(|s| s["ready"] == Value::Bool(true))
        .count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|s| s["restartCount"].as_i64())
        .sum();
    let mut reason = pod["status"]["reason"]
        .as_str()
        .or_else(|| pod["status"]["phase"].as_str())
        .unwrap_or("Pending")
        .to_string();
    for s in statuses.iter().rev() {
        if let Some(r) = s["state"]["waiting"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            reason = r.to_string();
        } else if let Some(t) = s["state"]["terminated"].as_object() {
            if let Some(r) = t
                .get("reason")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
            {
                reason = r.to_string();
            } else if let Some(sig) = t.get("signal").and_then(Value::as_i64).filter(|s| *s != 0) {
                reason = format!("Signal:{sig}");
            } else {
                reason = format!(
                    "ExitCode:{}",
                    t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                );
            }
        }
    }
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        reason = if pod["status"]["reason"] == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    (format!("{ready}/{total}"), reason, restarts)
}

fn service_ports(svc: &Value) -> String {
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    or_none(
        ports
            .iter()
            .map(|p| {
                let port = p["port"].as_i64().unwrap_or(0);
                let proto = p["protocol"].as_str().unwrap_or("TCP");
                match p["nodePort"].as_i64().filter(|n| *n != 0) {
                    Some(np) => format!("{port}:{np}/{proto}"),
                    None => format!("{port}/{proto}"),
                }
            })
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn service_external_ip(svc: &Value) -> String {
    let spec = &svc["spec"];
    let ext: Vec<String> = spec["externalIPs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    match spec["type"].as_str().unwrap_or("ClusterIP") {
        "ExternalName" => spec["externalName"]
            .as_str()
            .unwrap_or("<none>")
            .to_string(),
        "LoadBalancer" => {
            let mut ips: Vec<String> = svc["status"]["loadBalancer"]["ingress"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| {
                            i["ip"]
                                .as_str()
                                .or_else(|| i["hostname"].as_str())
                                .map(str::to_string)
                        })
                        .collect()
                })
                .unwrap_or_default();
            ips.extend(ext);
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        _ => or_none(ext.join(",")),
    }
}

/// `a:80,b:80,c:80 + 1 more...` (at most three shown), `<none>` when empty.
pub fn format_endpoints(ep: &Value) -> String {
    let mut list = Vec::new();
    let mut total = 0usize;
    for s in ep["subsets"].as_array().into_iter().flatten() {
        let addrs = s["addresses"].as_array().cloned().unwrap_or_default();
        let ports = s["ports"].as_array().cloned().unwrap_or_default();
        for a in &addrs {
            let ip = a["ip"].as_str().unwrap_or("");
            if ports.is_empty() {
                total += 1;
                if list.len() < 3 {
                    list.push(ip.to_string());
                }
            }
            for p in &ports {
                total += 1;
                if list.len() < 3 {
                    list.push(format!("{ip}:{}", p["port"].as_i64().unwrap_or(0)));
                }
            }
        }
    }
    if list.is_empty() {
        return "<none>".into();
    }
    let mut s = list.join(",");
    if total > list.len() {
        s.push_str(&format!(" + {} more...", total - list.len()));
    }
    s
}

fn node_status(node: &Value) -> String {
    let mut status = vec![];
    let conds = node["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    match conds.iter().find(|c| c["type"] == "Ready") {
        Some(c) if c["status"] == "True" => status.push("Ready".to_string()),
        Some(c) if c["status"] == "False" => status.push("NotReady".to_string()),
        _ => status.push("Unknown".to_string()),
    }
    if node["spec"]["unschedulable"] == Value::Bool(true) {
        status.push("SchedulingDisabled".into());
    }
    status.join(",")
}

fn node_roles(node: &Value) -> String {
    let labels = meta::labels(node);
    let mut roles: Vec<String> = labels
        .iter()
        .filter_map(|(k, v)| {
            if let Some(r) = k.strip_prefix("node-role.kubernetes.io/") {
                Some(r.to_string())
            } else if k == "kubernetes.io/role" {
                Some(v.clone())
            } else {
                None
            }
        })
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort();
    or_none(roles.join(","))
}

fn node_address(node: &Value, ty: &str) -> String {
    node["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["type"] == ty))
        .and_then(|x| x["address"].as_str())
        .unwrap_or("<none>")
        .to_string()
}

fn str_or(v: &Value, default: &str) -> String {
    v.as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or(default)
        .to_string()
}

fn count(v: &Value) -> i64 {
    v.as_object().map_or(0, |m| m.len() as i64)
}

/// The REQUEST and LIMIT cells of a ResourceQuota (`pods: 2/10, requests.cpu: 500m/2`), from
/// `status.hard` and `status.used` like Kubernetes' printer.
fn quota_columns(o: &Value) -> (String, String) {
    let mut request = Vec::new();
    let mut limit = Vec::new();
    let hard: std::collections::BTreeMap<&String, &Value> = o["status"]["hard"]
        .as_object()
        .into_iter()
        .flatten()
        .collect();
    for (res, hard) in hard {
        let show = |v: &Value| {
            v.as_str()
                .map(crate::quantity::canonical)
                .unwrap_or_else(|| "0".into())
        };
        let cell = format!("{res}: {}/{}", show(&o["status"]["used"][res]), show(hard));
        if res.split('.').next() == Some("limits") && res.contains('.') {
            limit.push(cell);
        } else {
            request.push(cell);
        }
    }
    (request.join(", "), limit.join(", "))
}

fn row_cells(plural: &str, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let name = json!(meta::name(o));
    let created = age(&o["metadata"]["creationTimestamp"], now);
    match plural {
        "pods" => {
            let (ready, status, restarts) = pod_status(o);
            vec![
                name,
                json!(ready),
                json!(status),
                json!(restarts.to_string()),
                json!(created),
                json!(str_or(&o["status"]["podIP"], "<none>")),
                json!(str_or(&o["spec"]["nodeName"], "<none>")),
                json!(str_or(&o["status"]["nominatedNodeName"], "<none>")),
                json!("<none>"),
            ]
        }
        "services" => vec![
            name,
            json!(str_or(&o["spec"]["type"], "ClusterIP")),
            json!(str_or(&o["spec"]["clusterIP"], "<none>")),
            json!(service_external_ip(o)),
            json!(service_ports(o)),
            json!(created),
            json!(selector_string(&o["spec"]["selector"])),
        ],
        "replicationcontrollers" => {
            let (names, images) = template_containers(&o["spec"]["template"]);
            vec![
                name,
                json!(o["spec"]["replicas"].as_i64().unwrap_or(1)),
                json!(o["status"]["replicas"].as_i64().unwrap_or(0)),
                json!(o["status"]["readyReplicas"].as_i64().unwrap_or(0)),
                json!(created),
                json!(names),
                json!(images),
                json!(selector_string(&o["spec"]["selector"])),
            ]
        }
        "replicasets" | "deployments" => {
            let (names, images) = template_containers(&o["spec"]["template"]);
            let st = &o["status"];
            let n = |k: &str| st[k].as_i64().unwrap_or(0);
            let desired = o["spec"]["replicas"].as_i64().unwrap_or(1);
            let counts = if plural == "replicasets" {
                vec![
                    json!(desired),
                    json!(n("replicas")),
                    json!(n("readyReplicas")),
                ]
            } else {
                vec![
                    json!(format!("{}/{desired}", n("readyReplicas"))),
                    json!(n("updatedReplicas")),
                    json!(n("availableReplicas")),
                ]
            };
            let mut cells = vec![name];
            cells.extend(counts);
            cells.extend([
                json!(created),
                json!(names),
                json!(images),
                json!(format_label_selector(&o["spec"]["selector"])),
            ]);
            cells
        }
        "daemonsets" => {
            let (names, images) = template_containers(&o["spec"]["template"]);
            let st = &o["status"];
            let n = |k: &str| json!(st[k].as_i64().unwrap_or(0));
            vec![
                name,
                n("desiredNumberScheduled"),
                n("currentNumberScheduled"),
                n("numberReady"),
                n("updatedNumberScheduled"),
                n("numberAvailable"),
                json!(selector_string(
                    &o["spec"]["template"]["spec"]["nodeSelector"]
                )),
                json!(created),
                json!(names),
                json!(images),
                json!(format_label_selector(&o["spec"]["selector"])),
            ]
        }
        "endpoints" => vec![name, json!(format_endpoints(o)), json!(created)],
        "namespaces" => vec![
            name,
            json!(str_or(&o["status"]["phase"], "Active")),
            json!(created),
        ],
        "nodes" => vec![
            name,
            json!(node_status(o)),
            json!(node_roles(o)),
            json!(created),
            json!(str_or(&o["status"]["nodeInfo"]["kubeletVersion"], "")),
            json!(node_address(o, "InternalIP")),
            json!(node_address(o, "ExternalIP")),
            json!(str_or(&o["status"]["nodeInfo"]["osImage"], "<unknown>")),
            json!(str_or(
                &o["status"]["nodeInfo"]["kernelVersion"],
                "<unknown>"
            )),
            json!(str_or(
                &o["status"]["nodeInfo"]["containerRuntimeVersion"],
                "<unknown>"
            )),
        ],
        "secrets" => vec![
            name,
            json!(str_or(&o["type"], "Opaque")),
            json!(count(&o["data"]) + count(&o["stringData"])),
            json!(created),
        ],
        "configmaps" => vec![
            name,
            json!(count(&o["data"]) + count(&o["binaryData"])),
            json!(created),
        ],
        "serviceaccounts" => vec![
            name,
            json!(o["secrets"].as_array().map_or(0, Vec::len)),
            json!(created),
        ],
        "events" => {
            let last = o["lastTimestamp"]
                .as_str()
                .or_else(|| o["eventTime"].as_str())
                .or_else(|| o["metadata"]["creationTimestamp"].as_str());
            let first = o["firstTimestamp"]
                .as_str()
                .or_else(|| o["eventTime"].as_str())
                .or_else(|| o["metadata"]["creationTimestamp"].as_str());
            let obj = format!(
                "{}/{}",
                o["involvedObject"]["kind"]
                    .as_str()
                    .unwrap_or("")
                    .to_lowercase(),
                o["involvedObject"]["name"].as_str().unwrap_or("")
            );
            let source = match (
                o["source"]["component"].as_str(),
                o["source"]["host"].as_str(),
            ) {
                (Some(c), Some(h)) if !h.is_empty() => format!("{c}, {h}"),
                (Some(c), _) => c.to_string(),
                _ => o["reportingComponent"].as_str().unwrap_or("").to_string(),
            };
            vec![
                json!(age(&json!(last), now)),
                json!(str_or(&o["type"], "Normal")),
                json!(str_or(&o["reason"], "")),
                json!(obj),
                json!(str_or(&o["involvedObject"]["fieldPath"], "")),
                json!(source),
                json!(str_or(&o["message"], "")),
                json!(age(&json!(first), now)),
                json!(o["count"].as_i64().unwrap_or(1)),
                name,
            ]
        }
        "endpointslices" => {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["port"].as_i64().map(|n| n.to_string()))
                .collect();
            let addrs: Vec<String> = o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            let shown = if addrs.len() > 3 {
                format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
            } else {
                or_none(addrs.join(","))
            };
            vec![
                name,
                json!(str_or(&o["addressType"], "IPv4")),
                json!(or_none(ports.join(","))),
                json!(shown),
                json!(created),
            ]
        }
        "resourcequotas" => {
            let (request, limit) = quota_columns(o);
            vec![name, json!(created), json!(request), json!(limit)]
        }
        "limitranges" => vec![
            name,
            json!(str_or(&o["metadata"]["creationTimestamp"], "<unknown>")),
        ],
        "leases" => vec![
            name,
            json!(str_or(&o["spec"]["holderIdentity"], "")),
            json!(created),
        ],
        "roles" | "clusterroles" => vec![
            name,
            json!(str_or(&o["metadata"]["creationTimestamp"], "<unknown>")),
        ],
        "rolebindings" | "clusterrolebindings" => {
            let subjects = |kind: &str| {
                let names: Vec<String> = o["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|s| s["kind"] == kind)
                    .map(
                        |s| match s["namespace"].as_str().filter(|n| !n.is_empty()) {
                            Some(ns) if kind == "ServiceAccount" => {
                                format!("{ns}/{}", str_or(&s["name"], ""))
                            }
                            _ => str_or(&s["name"], "").to_string(),
                        },
                    )
                    .collect();
                json!(names.join(", "))
            };
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    str_or(&o["roleRef"]["kind"], ""),
                    str_or(&o["roleRef"]["name"], "")
                )),
                json!(created),
                subjects("User"),
                subjects("Group"),
                subjects("ServiceAccount"),
            ]
        }
        p => crate::batch::row_cells(p, o, now).unwrap_or_else(|| vec![name, json!(created)]),
    }
}

fn partial_metadata(o: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": o["metadata"].clone(),
    })
}

/// One table row for an object.
pub fn row(plural: &str, o: &Value, now: jiff::Timestamp, include: IncludeObject) -> Value {
    let mut r = json!({"cells": row_cells(plural, o, now)});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => r["object"] = partial_metadata(o),
        IncludeObject::Object => r["object"] = o.clone(),
    }
    r
}

/// The column definitions of a resource.
pub fn column_definitions(plural: &str) -> Value {
    Value::Array(
        columns(plural)
            .into_iter()
            .map(|c| {
                json!({"name": c.name, "type": c.ty, "format": c.format,
                       "description": c.description, "priority": c.priority})
            })
            .collect(),
    )
}

/// A `meta.k8s.io/v1` Table of `objects` at `resource_version`.
pub fn table(
    plural: &str,
    objects: &[Value],
    resource_version: &str,
    now: jiff::Timestamp,
    include: IncludeObject,
) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": column_definitions(plural),
        "rows": objects.iter().map(|o| row(plural, o, now, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> jiff::Timestamp {
        "2024-01-10T00:00:00Z".parse().expect("ts")
    }

    #[test]
    fn role_binding_rows_show_role_and_subjects() {
        let rb = json!({"metadata": {"name": "b", "creationTimestamp": "2024-01-09T23:59:00Z"},
            "roleRef": {"kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "Group", "name": "devs"},
                         {"kind": "ServiceAccount", "name": "bot", "namespace": "team"}]});
        let t = table("rolebindings", &[rb], "1", now(), IncludeObject::None);
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["b", "ClusterRole/edit", "60s", "alice", "devs", "team/bot"])
        );
    }

    #[test]
    fn human_ages() {
        assert_eq!(human_duration(7), "7s");
        assert_eq!(human_duration(300), "5m");
        assert_eq!(human_duration(19 * 3600), "19h");
        assert_eq!(human_duration(5 * 86400), "5d");
        assert_eq!(human_duration(150), "2m30s");
    }

    #[test]
    fn pod_rows_show_ready_status_restarts_and_wide_columns() {
        let pod = json!({"metadata": {"name": "nginx", "creationTimestamp": "2024-01-09T23:59:53Z"},
            "spec": {"containers": [{"name": "c"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5",
                       "containerStatuses": [{"ready": true, "restartCount": 2, "state": {"running": {}}}]}});
        let t = table("pods", &[pod], "5", now(), IncludeObject::Metadata);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .expect("cols")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(&names[..5], &["Name", "Ready", "Status", "Restarts", "Age"]);
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "nginx", "1/1", "Running", "2", "7s", "10.0.0.5", "n1", "<none>", "<none>"
            ])
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn service_rows_show_node_ports_and_none() {
        let svc = json!({"metadata": {"name": "web", "creationTimestamp": "2024-01-05T00:00:00Z"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10",
                     "ports": [{"port": 80, "nodePort": 30001, "protocol": "TCP"}]}});
        let t = table("services", &[svc], "1", now(), IncludeObject::None);
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "web",
                "NodePort",
                "10.96.0.10",
                "<none>",
                "80:30001/TCP",
                "5d",
                "<none>"
            ])
        );
    }

    #[test]
    fn daemon_set_rows_show_counts_node_selector_and_wide_columns() {
        let ds = json!({"metadata": {"name": "agent", "creationTimestamp": "2024-01-09T23:00:00Z"},
            "spec": {"selector": {"matchLabels": {"app": "agent"},
                                  "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]},
                                                       {"key": "zone", "operator": "DoesNotExist"}]},
                     "template": {"spec": {"nodeSelector": {"disk": "ssd"},
                                           "containers": [{"name": "a", "image": "agent:1"},
                                                          {"name": "b", "image": "sidecar:2"}]}}},
            "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2,
                       "updatedNumberScheduled": 1, "numberAvailable": 2, "numberMisscheduled": 0}});
        let t = table("daemonsets", &[ds], "7", now(), IncludeObject::None);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .expect("cols")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Desired",
                "Current",
                "Ready",
                "Up-to-date",
                "Available",
                "Node Selector",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "agent",
                3,
                3,
                2,
                1,
                2,
                "disk=ssd",
                "60m",
                "a,b",
                "agent:1,sidecar:2",
                "app=agent,tier in (a,b),!zone"
            ])
        );
        let bare = json!({"metadata": {"name": "x"}, "spec": {"selector": {}, "template": {}}});
        let cells =
            &table("daemonsets", &[bare], "1", now(), IncludeObject::None)["rows"][0]["cells"];
        assert_eq!(cells[1], 0);
        assert_eq!(cells[6], "<none>");
        assert_eq!(cells[10], "<none>");
    }

    #[test]
    fn endpoints_show_three_then_more() {
        let ep = json!({"subsets": [{"addresses": [{"ip": "a"}, {"ip": "b"}, {"ip": "c"}, {"ip": "d"}],
                                      "ports": [{"port": 80}]}]});
        assert_eq!(format_endpoints(&ep), "a:80,b:80,c:80 + 1 more...");
        assert_eq!(format_endpoints(&json!({})), "<none>");
    }

    #[test]
    fn quota_rows_show_used_over_hard() {
        let q = json!({"status": {"hard": {"pods": "10", "requests.cpu": "2", "limits.memory": "1Gi"},
                                  "used": {"pods": "2", "requests.cpu": "500m", "limits.memory": "256Mi"}}});
        assert_eq!(
            quota_columns(&q),
            (
                "pods: 2/10, requests.cpu: 500m/2".to_string(),
                "limits.memory: 256Mi/1Gi".to_string()
            )
        );
        assert_eq!(quota_columns(&json!({})), (String::new(), String::new()));
    }
}
