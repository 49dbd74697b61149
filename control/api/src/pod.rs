//! Small facts about pods (phase, readiness, owner, selectors) that the controllers, the
//! scheduler and the kubelet read from typed objects.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// Whether the pod is being deleted.
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// `status.phase` (`Pending` when unset).
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Whether the pod finished (`Succeeded` or `Failed`).
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// Whether the pod counts for its controller: not finished and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    !is_terminal(pod) && !is_terminating(pod)
}

/// `spec.nodeName` (empty when unscheduled).
pub fn node_name(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

/// Whether the pod's `Ready` condition is `True`.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// When the pod's `Ready` condition last turned `True`.
pub fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
}

/// Whether the pod has been ready for at least `min_ready` seconds (Kubernetes'
/// `IsPodAvailable`).
pub fn is_available(pod: &Pod, min_ready: i64, now: jiff::Timestamp) -> bool {
    is_ready(pod)
        && (min_ready <= 0
            || ready_since(pod).is_some_and(|t| now.as_second() - t.as_second() >= min_ready))
}

/// The labels of an object (empty when none).
pub fn labels(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// Whether every pair of `selector` is in `labels` (an empty selector selects nothing, as
/// for ReplicationControllers and Services).
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    if selector.is_empty() {
        return false;
    }
    let Some(labels) = labels else {
        return false;
    };
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The controller owner reference of an object, if any.
pub fn controller_of(refs: Option<&Vec<OwnerReference>>) -> Option<&OwnerReference> {
    refs.into_iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// The selector of an RC: `spec.selector`, defaulting to the template's labels.
pub fn rc_selector(rc: &ReplicationController) -> BTreeMap<String, String> {
    let spec = rc.spec.as_ref();
    spec.and_then(|s| s.selector.clone())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            spec.and_then(|s| s.template.as_ref())
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.clone())
        })
        .unwrap_or_default()
}
