//! What each kind does differently when it is created, updated and deleted, as Kubernetes'
//! per-resource REST strategies say it: registered once per kind in [`of`], read by the
//! registry, which otherwise treats every kind alike. (Defaulting and validation are
//! `xkube_api::typed`'s, Table columns `xkube_api::table`'s.)

use serde_json::{Value, json};
use xkube_api::ResourceInfo;

/// How a DELETE of an object that has no finalizers begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// It is removed from the store at once.
    Immediate,
    /// Pods: one bound to a node that has not finished is marked with its grace period
    /// (`gracePeriodSeconds`, else `spec.terminationGracePeriodSeconds`, else 30 s) and the
    /// kubelet removes it once its containers are stopped; others go at once.
    GracefulOnNode,
    /// Namespaces: marked `Terminating`; its contents are removed in the background, then
    /// the namespace.
    Terminating,
}

/// A kind's strategy.
#[derive(Debug)]
pub struct Strategy {
    /// Fills what the server sets on a new object, after validation (`status.phase`,
    /// `status.qosClass`, empty statuses).
    pub prepare_for_create: fn(&mut Value),
    /// Whether objects with a `spec` carry `metadata.generation` (Events do not).
    pub generation: bool,
    /// Whether objects hold cluster IPs and node ports from the allocators (Services).
    pub allocates: bool,
    /// How a DELETE begins.
    pub deletion: Deletion,
    /// Whether a deleted object whose last `metadata.finalizers` entry was just removed also
    /// waits for something else (`spec.finalizers` of namespaces; pods wait for the kubelet).
    pub finalized: fn(&Value) -> bool,
    /// The `propagationPolicy` of a DELETE that names none.
    pub propagation: &'static str,
}

fn nothing(_: &mut Value) {}

fn done(_: &Value) -> bool {
    true
}

/// What every kind starts from; the registrations below override what differs.
const BASE: Strategy = Strategy {
    prepare_for_create: nothing,
    generation: true,
    allocates: false,
    deletion: Deletion::Immediate,
    finalized: done,
    propagation: "Background",
};

// Statics, not consts: each registration has one address, which the tests compare.
static DEFAULT: Strategy = BASE;

fn status(obj: &mut Value) -> Option<&mut Value> {
    obj.as_object_mut()
        .map(|m| m.entry("status").or_insert_with(|| json!({})))
}

fn prepare_pod(obj: &mut Value) {
    // Validation decoded the spec already; a spec that does not decode cannot get here.
    let qos = serde::Deserialize::deserialize(&obj["spec"])
        .map(|spec| xkube_api::qos::class(&spec))
        .unwrap_or("BestEffort");
    if let Some(status) = status(obj) {
        if status["phase"].is_null() {
            status["phase"] = json!("Pending");
        }
        status["qosClass"] = json!(qos);
    }
}

static POD: Strategy = Strategy {
    prepare_for_create: prepare_pod,
    deletion: Deletion::GracefulOnNode,
    // The kubelet removes a deleted pod, not its last finalizer.
    finalized: |_| false,
    ..BASE
};

static NAMESPACE: Strategy = Strategy {
    prepare_for_create: |obj| obj["status"] = json!({"phase": "Active"}),
    deletion: Deletion::Terminating,
    finalized: |ns| {
        ns["spec"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty())
    },
    ..BASE
};

static SERVICE: Strategy = Strategy {
    // Kubernetes' Service strategy starts every Service with an empty status, which its
    // serialization writes as `{"loadBalancer": {}}` (a load balancer controller fills it).
    prepare_for_create: |obj| obj["status"] = json!({"loadBalancer": {}}),
    allocates: true,
    ..BASE
};

static REPLICATION_CONTROLLER: Strategy = Strategy {
    prepare_for_create: |obj| {
        if obj["status"].is_null() {
            obj["status"] = json!({"replicas": 0});
        }
    },
    // Kubernetes' v1 API orphans a ReplicationController's pods by default.
    propagation: "Orphan",
    ..BASE
};

static DAEMON_SET: Strategy = Strategy {
    // Kubernetes' DaemonSet strategy starts every DaemonSet with an empty status.
    prepare_for_create: |obj| {
        obj["status"] = json!({"currentNumberScheduled": 0, "numberMisscheduled": 0,
                               "desiredNumberScheduled": 0, "numberReady": 0});
    },
    ..BASE
};

static REPLICA_SET: Strategy = Strategy {
    prepare_for_create: |obj| obj["status"] = json!({"replicas": 0}),
    ..BASE
};

static DEPLOYMENT: Strategy = Strategy {
    prepare_for_create: |obj| obj["status"] = json!({}),
    ..BASE
};

static JOB: Strategy = Strategy {
    // Kubernetes' Job strategy starts every Job with an empty status. (Its generated
    // selector needs the uid before validation: `xkube_api::batch::default_job`.)
    prepare_for_create: |obj| obj["status"] = json!({}),
    // batch/v1 orphans a Job's pods by default, for compatibility (kubectl asks for
    // Background).
    propagation: "Orphan",
    ..BASE
};

static CRON_JOB: Strategy = Strategy {
    prepare_for_create: |obj| obj["status"] = json!({}),
    ..BASE
};

/// Kubernetes' Node strategy keeps the status a node is created with, and its serialization
/// always writes `daemonEndpoints` and every `nodeInfo` string (zero values included): fill
/// what is missing with the zero values of the k8s-openapi types.
fn prepare_node(obj: &mut Value) {
    use k8s_openapi::api::core::v1::{NodeDaemonEndpoints, NodeSystemInfo};
    let zero_endpoints = NodeDaemonEndpoints {
        kubelet_endpoint: Some(Default::default()),
    };
    let zeros = [
        ("daemonEndpoints", serde_json::to_value(zero_endpoints)),
        ("nodeInfo", serde_json::to_value(NodeSystemInfo::default())),
    ];
    let Some(status) = status(obj).and_then(Value::as_object_mut) else {
        return;
    };
    for (field, zero) in zeros {
        let Ok(Value::Object(zero)) = zero else {
            continue;
        };
        let cur = status.entry(field).or_insert_with(|| json!({}));
        if let Some(cur) = cur.as_object_mut() {
            for (k, v) in zero {
                cur.entry(k).or_insert(v);
            }
        }
    }
}

static NODE: Strategy = Strategy {
    prepare_for_create: prepare_node,
    ..BASE
};

static RESOURCE_QUOTA: Strategy = Strategy {
    // Kubernetes' ResourceQuota strategy starts every quota with an empty status (admission
    // and the quota controller fill it).
    prepare_for_create: |obj| obj["status"] = json!({}),
    ..BASE
};

static EVENT: Strategy = Strategy {
    generation: false,
    ..BASE
};

/// The strategy of `res`: the registration of every kind that differs from the default.
pub fn of(res: &ResourceInfo) -> &'static Strategy {
    match (res.group, res.plural) {
        ("", "pods") => &POD,
        ("", "namespaces") => &NAMESPACE,
        ("", "services") => &SERVICE,
        ("", "nodes") => &NODE,
        ("", "resourcequotas") => &RESOURCE_QUOTA,
        ("", "replicationcontrollers") => &REPLICATION_CONTROLLER,
        ("apps", "daemonsets") => &DAEMON_SET,
        ("apps", "replicasets") => &REPLICA_SET,
        ("apps", "deployments") => &DEPLOYMENT,
        ("batch", "jobs") => &JOB,
        ("batch", "cronjobs") => &CRON_JOB,
        ("", "events") | ("events.k8s.io", "events") => &EVENT,
        _ => &DEFAULT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(group: &str, plural: &str) -> &'static ResourceInfo {
        xkube_api::RESOURCES
            .iter()
            .find(|r| r.group == group && r.plural == plural)
            .expect("served resource")
    }

    #[test]
    fn every_registered_kind_is_served() {
        for (g, p) in [
            ("", "pods"),
            ("", "namespaces"),
            ("", "services"),
            ("", "nodes"),
            ("", "resourcequotas"),
            ("", "replicationcontrollers"),
            ("apps", "daemonsets"),
            ("apps", "replicasets"),
            ("apps", "deployments"),
            ("batch", "jobs"),
            ("batch", "cronjobs"),
            ("", "events"),
        ] {
            assert!(!std::ptr::eq(of(res(g, p)), &DEFAULT), "{g}/{p}");
        }
        assert!(std::ptr::eq(of(res("", "configmaps")), &DEFAULT));
    }

    #[test]
    fn new_pods_are_pending_with_their_qos_class() {
        let mut pod = json!({"spec": {"containers": [{"name": "c",
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        (of(res("", "pods")).prepare_for_create)(&mut pod);
        assert_eq!(
            pod["status"],
            json!({"phase": "Pending", "qosClass": "Guaranteed"})
        );
    }

    #[test]
    fn new_nodes_get_the_zero_values_kubernetes_serializes() {
        let mut node = json!({"status": {"nodeInfo": {"kubeletVersion": "v1.33.0"}}});
        (of(res("", "nodes")).prepare_for_create)(&mut node);
        assert_eq!(
            node["status"]["daemonEndpoints"],
            json!({"kubeletEndpoint": {"Port": 0}})
        );
        assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], "v1.33.0");
        assert_eq!(node["status"]["nodeInfo"]["machineID"], "");
        assert!(node["status"]["nodeInfo"].get("swap").is_none());
    }

    #[test]
    fn new_services_start_with_an_empty_load_balancer_status() {
        let mut svc = json!({"spec": {"ports": [{"port": 80}]},
                             "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}});
        (of(res("", "services")).prepare_for_create)(&mut svc);
        assert_eq!(svc["status"], json!({"loadBalancer": {}}));
    }
}
