//! Defaulting with Kubernetes' values.

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetUpdateStrategy, Deployment, DeploymentStrategy, ReplicaSet,
    RollingUpdateDaemonSet, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, Namespace, NamespaceSpec, Pod, PodSecurityContext, PodSpec, ReplicationController,
    Secret, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn default_container(c: &mut Container) {
    if c.termination_message_path.is_none() {
        c.termination_message_path = Some("/dev/termination-log".into());
    }
    if c.termination_message_policy.is_none() {
        c.termination_message_policy = Some("File".into());
    }
    if c.image_pull_policy.is_none() {
        let image = c.image.as_deref().unwrap_or("");
        let last = image.rsplit('/').next().unwrap_or("");
        let latest = !last.contains(':') && !image.contains('@') || last.ends_with(":latest");
        c.image_pull_policy = Some(if latest { "Always" } else { "IfNotPresent" }.into());
    }
    for p in c.ports.iter_mut().flatten() {
        if p.protocol.is_none() {
            p.protocol = Some("TCP".into());
        }
    }
    if c.resources.is_none() {
        c.resources = Some(Default::default());
    }
}

/// Defaults of a pod spec: restartPolicy Always, dnsPolicy ClusterFirst,
/// terminationGracePeriodSeconds 30, schedulerName, container pull policy and port protocols.
pub fn default_pod_spec(spec: &mut PodSpec) {
    if spec.restart_policy.is_none() {
        spec.restart_policy = Some("Always".into());
    }
    if spec.dns_policy.is_none() {
        spec.dns_policy = Some("ClusterFirst".into());
    }
    if spec.termination_grace_period_seconds.is_none() {
        spec.termination_grace_period_seconds = Some(30);
    }
    if spec.scheduler_name.is_none() {
        spec.scheduler_name = Some("default-scheduler".into());
    }
    if spec.security_context.is_none() {
        spec.security_context = Some(PodSecurityContext::default());
    }
    if spec.enable_service_links.is_none() {
        spec.enable_service_links = Some(true);
    }
    if spec.priority.is_none() {
        spec.priority = Some(0);
    }
    if spec.preemption_policy.is_none() {
        spec.preemption_policy = Some("PreemptLowerPriority".into());
    }
    for c in spec.init_containers.iter_mut().flatten() {
        default_container(c);
    }
    for c in spec.containers.iter_mut() {
        default_container(c);
    }
    for v in spec.volumes.iter_mut().flatten() {
        if let Some(s) = v.secret.as_mut()
            && s.default_mode.is_none()
        {
            s.default_mode = Some(0o644);
        }
        if let Some(c) = v.config_map.as_mut()
            && c.default_mode.is_none()
        {
            c.default_mode = Some(0o644);
        }
        if let Some(h) = v.host_path.as_mut()
            && h.type_.is_none()
        {
            h.type_ = Some(String::new());
        }
    }
}

/// Pod defaults (spec, plus `status.phase: Pending` and QoS are set by the server at create).
pub fn default_pod(pod: &mut Pod) {
    if let Some(spec) = pod.spec.as_mut() {
        default_pod_spec(spec);
    }
}

/// Service defaults: type ClusterIP, sessionAffinity None, port protocol TCP, targetPort = port,
/// single-stack IPv4, internal traffic policy Cluster (external too for NodePort/LoadBalancer);
/// a status has a `loadBalancer` object, as Kubernetes' serialization always writes one.
pub fn default_service(svc: &mut Service) {
    if let Some(status) = svc.status.as_mut() {
        status.load_balancer.get_or_insert_default();
    }
    let Some(spec) = svc.spec.as_mut() else {
        return;
    };
    if spec.type_.is_none() {
        spec.type_ = Some("ClusterIP".into());
    }
    if spec.session_affinity.is_none() {
        spec.session_affinity = Some("None".into());
    }
    let ty = spec.type_.clone().unwrap_or_default();
    if ty == "ExternalName" {
        return;
    }
    for p in spec.ports.iter_mut().flatten() {
        if p.protocol.is_none() {
            p.protocol = Some("TCP".into());
        }
        // Port 0 is invalid; leave targetPort alone so only `port` is reported.
        if p.port != 0 && (p.target_port.is_none() || p.target_port == Some(IntOrString::Int(0))) {
            p.target_port = Some(IntOrString::Int(p.port));
        }
    }
    if spec.ip_families.is_none() {
        spec.ip_families = Some(vec!["IPv4".into()]);
    }
    if spec.ip_family_policy.is_none() {
        spec.ip_family_policy = Some("SingleStack".into());
    }
    if spec.internal_traffic_policy.is_none() {
        spec.internal_traffic_policy = Some("Cluster".into());
    }
    if (ty == "NodePort" || ty == "LoadBalancer") && spec.external_traffic_policy.is_none() {
        spec.external_traffic_policy = Some("Cluster".into());
    }
    if ty == "LoadBalancer" && spec.allocate_load_balancer_node_ports.is_none() {
        spec.allocate_load_balancer_node_ports = Some(true);
    }
}

/// RC defaults: replicas 1, selector and labels from the template's labels, template pod spec.
pub fn default_replication_controller(rc: &mut ReplicationController) {
    let Some(spec) = rc.spec.as_mut() else {
        return;
    };
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone());
    if let Some(labels) = template_labels {
        if spec.selector.as_ref().is_none_or(|s| s.is_empty()) {
            spec.selector = Some(labels.clone());
        }
        if rc.metadata.labels.as_ref().is_none_or(|l| l.is_empty()) {
            rc.metadata.labels = Some(labels);
        }
    }
    if spec.replicas.is_none() {
        spec.replicas = Some(1);
    }
    if spec.min_ready_seconds.is_none() {
        spec.min_ready_seconds = Some(0);
    }
    if let Some(pod_spec) = spec.template.as_mut().and_then(|t| t.spec.as_mut()) {
        default_pod_spec(pod_spec);
    }
}

/// DaemonSet defaults (apps/v1 `SetDefaults_DaemonSet`): updateStrategy RollingUpdate with
/// maxUnavailable 1 and maxSurge 0, revisionHistoryLimit 10, and the template's pod spec
/// defaults. Unlike ReplicationControllers, the selector is not defaulted from the labels.
pub fn default_daemon_set(ds: &mut DaemonSet) {
    let Some(spec) = ds.spec.as_mut() else {
        return;
    };
    let strategy = spec
        .update_strategy
        .get_or_insert_with(DaemonSetUpdateStrategy::default);
    if strategy.type_.as_deref().is_none_or(str::is_empty) {
        strategy.type_ = Some("RollingUpdate".into());
    }
    if strategy.type_.as_deref() == Some("RollingUpdate") {
        let ru = strategy
            .rolling_update
            .get_or_insert_with(RollingUpdateDaemonSet::default);
        if ru.max_unavailable.is_none() {
            ru.max_unavailable = Some(IntOrString::Int(1));
        }
        if ru.max_surge.is_none() {
            ru.max_surge = Some(IntOrString::Int(0));
        }
    }
    if spec.revision_history_limit.is_none() {
        spec.revision_history_limit = Some(10);
    }
    if let Some(pod_spec) = spec.template.spec.as_mut() {
        default_pod_spec(pod_spec);
    }
}

/// ReplicaSet defaults (apps/v1 `SetDefaults_ReplicaSet`): replicas 1, minReadySeconds 0 and
/// the template's pod spec defaults; the selector is not defaulted from the labels.
pub fn default_replica_set(rs: &mut ReplicaSet) {
    let Some(spec) = rs.spec.as_mut() else {
        return;
    };
    spec.replicas.get_or_insert(1);
    spec.min_ready_seconds.get_or_insert(0);
    if let Some(pod_spec) = spec.template.as_mut().and_then(|t| t.spec.as_mut()) {
        default_pod_spec(pod_spec);
    }
}

/// Deployment defaults (apps/v1 `SetDefaults_Deployment`): replicas 1, strategy RollingUpdate
/// with maxUnavailable and maxSurge 25%, revisionHistoryLimit 10, progressDeadlineSeconds
/// 600, and the template's pod spec defaults.
pub fn default_deployment(d: &mut Deployment) {
    let Some(spec) = d.spec.as_mut() else {
        return;
    };
    spec.replicas.get_or_insert(1);
    spec.min_ready_seconds.get_or_insert(0);
    let strategy = spec
        .strategy
        .get_or_insert_with(DeploymentStrategy::default);
    if strategy.type_.as_deref().is_none_or(str::is_empty) {
        strategy.type_ = Some("RollingUpdate".into());
    }
    if strategy.type_.as_deref() == Some("RollingUpdate") {
        let ru = strategy
            .rolling_update
            .get_or_insert_with(RollingUpdateDeployment::default);
        ru.max_unavailable
            .get_or_insert_with(|| IntOrString::String("25%".into()));
        ru.max_surge
            .get_or_insert_with(|| IntOrString::String("25%".into()));
    }
    spec.revision_history_limit.get_or_insert(10);
    spec.progress_deadline_seconds.get_or_insert(600);
    if let Some(pod_spec) = spec.template.spec.as_mut() {
        default_pod_spec(pod_spec);
    }
}

/// Namespace defaults: the `kubernetes` finalizer and phase Active.
pub fn default_namespace(ns: &mut Namespace) {
    let spec = ns.spec.get_or_insert_with(NamespaceSpec::default);
    if spec.finalizers.is_none() {
        spec.finalizers = Some(vec!["kubernetes".into()]);
    }
    let status = ns.status.get_or_insert_with(Default::default);
    if status.phase.is_none() {
        status.phase = Some("Active".into());
    }
    let name = ns.metadata.name.clone().unwrap_or_default();
    let labels = ns.metadata.labels.get_or_insert_with(Default::default);
    if !name.is_empty() {
        labels.insert("kubernetes.io/metadata.name".into(), name);
    }
}

/// Secret defaults: type Opaque.
pub fn default_secret(secret: &mut Secret) {
    if secret.type_.is_none() {
        secret.type_ = Some("Opaque".into());
    }
}

/// Metadata shared by every kind: nothing to default today beyond what the server sets.
pub fn default_meta(_meta: &mut ObjectMeta) {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_gets_kubernetes_defaults() {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}]},
                                    {"name": "d", "image": "redis:7"}]}
        }))
        .expect("valid");
        default_pod(&mut pod);
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirst"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("Always")
        );
        assert_eq!(
            spec.containers[1].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        let ports = spec.containers[0].ports.clone().expect("ports");
        assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    }

    #[test]
    fn daemon_set_defaults_rolling_update_history_and_template() {
        let mut ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "d"},
            "spec": {"selector": {"matchLabels": {"app": "d"}},
                     "template": {"metadata": {"labels": {"app": "d"}},
                                  "spec": {"containers": [{"name": "c", "image": "agent:1"}]}}}
        }))
        .expect("valid");
        default_daemon_set(&mut ds);
        let v = serde_json::to_value(&ds).expect("encodes");
        assert_eq!(
            v["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate",
                   "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(v["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(v["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert!(ds.metadata.labels.is_none(), "labels are not defaulted");

        let mut on_delete: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "d"},
            "spec": {"updateStrategy": {"type": "OnDelete"}, "revisionHistoryLimit": 2,
                     "selector": {"matchLabels": {"app": "d"}}, "template": {}}
        }))
        .expect("valid");
        default_daemon_set(&mut on_delete);
        let spec = on_delete.spec.expect("spec");
        let strategy = spec.update_strategy.expect("strategy");
        assert_eq!(strategy.type_.as_deref(), Some("OnDelete"));
        assert!(strategy.rolling_update.is_none());
        assert_eq!(spec.revision_history_limit, Some(2));
    }

    #[test]
    fn service_and_rc_defaults() {
        let mut svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}
        }))
        .expect("valid");
        default_service(&mut svc);
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.session_affinity.as_deref(), Some("None"));
        let p = &spec.ports.expect("ports")[0];
        assert_eq!(p.target_port, Some(IntOrString::Int(80)));
        assert_eq!(p.protocol.as_deref(), Some("TCP"));

        let mut rc: ReplicationController = serde_json::from_value(json!({
            "metadata": {"name": "r"},
            "spec": {"template": {"metadata": {"labels": {"app": "r"}},
                     "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}
        }))
        .expect("valid");
        default_replication_controller(&mut rc);
        let spec = rc.spec.expect("spec");
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(
            spec.selector
                .expect("selector")
                .get("app")
                .map(String::as_str),
            Some("r")
        );
        assert_eq!(
            rc.metadata
                .labels
                .expect("labels")
                .get("app")
                .map(String::as_str),
            Some("r")
        );
    }
}
