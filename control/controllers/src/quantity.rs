//! Resource quantities (`500m`, `1.5`, `128Mi`, `1e3`) as integers, and pod resource requests.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Parses a quantity into thousandths of its unit (`"500m"` -> 500, `"2"` -> 2000,
/// `"1Ki"` -> 1_024_000). `None` when malformed or out of range. The parsing itself is
/// `xkube_api::quantity` (shared with the apiserver's admission); this keeps the `i64` view
/// the controllers and the scheduler count in.
pub fn parse_milli(q: &str) -> Option<i64> {
    xkube_api::quantity::Quantity::parse(q).and_then(|q| i64::try_from(q.milli).ok())
}

/// CPU in millicores.
pub fn cpu_millis(q: &Quantity) -> Option<i64> {
    parse_milli(&q.0)
}

/// A byte count (memory, storage), rounded up.
pub fn bytes(q: &Quantity) -> Option<i64> {
    parse_milli(&q.0).map(|m| (m + 999).div_euclid(1000))
}

/// Formats millicores the way Kubernetes prints them (`2`, `500m`).
pub fn format_cpu(millis: i64) -> String {
    if millis % 1000 == 0 {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// Formats bytes with the largest exact binary suffix (`128Mi`, `1Gi`, `1500`): the
/// binary-SI form of `xkube_api::quantity::Quantity`'s `Display`.
pub fn format_bytes(b: i64) -> String {
    xkube_api::quantity::Quantity {
        milli: i128::from(b) * 1000,
        format: xkube_api::quantity::Format::BinarySi,
    }
    .to_string()
}

/// Requests and limits of a pod, summed over containers (init containers count as their
/// maximum, as in Kubernetes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodResources {
    /// `requests.cpu` in millicores.
    pub cpu_request: i64,
    /// `requests.memory` in bytes.
    pub memory_request: i64,
    /// `limits.cpu` in millicores.
    pub cpu_limit: i64,
    /// `limits.memory` in bytes.
    pub memory_limit: i64,
}

fn get(
    map: Option<&BTreeMap<String, Quantity>>,
    key: &str,
    f: fn(&Quantity) -> Option<i64>,
) -> i64 {
    map.and_then(|m| m.get(key)).and_then(f).unwrap_or(0)
}

fn container_resources(c: &Container) -> PodResources {
    let r = c.resources.as_ref();
    let requests = r.and_then(|r| r.requests.as_ref());
    let limits = r.and_then(|r| r.limits.as_ref());
    let cpu_limit = get(limits, "cpu", cpu_millis);
    let memory_limit = get(limits, "memory", bytes);
    // A limit without a request defaults the request to the limit.
    let cpu_request = match requests.and_then(|m| m.get("cpu")) {
        Some(q) => cpu_millis(q).unwrap_or(0),
        None => cpu_limit,
    };
    let memory_request = match requests.and_then(|m| m.get("memory")) {
        Some(q) => bytes(q).unwrap_or(0),
        None => memory_limit,
    };
    PodResources {
        cpu_request,
        memory_request,
        cpu_limit,
        memory_limit,
    }
}

/// The resources a pod asks for.
pub fn pod_resources(pod: &Pod) -> PodResources {
    let Some(spec) = pod.spec.as_ref() else {
        return PodResources::default();
    };
    let mut sum = PodResources::default();
    for c in &spec.containers {
        let r = container_resources(c);
        sum.cpu_request += r.cpu_request;
        sum.memory_request += r.memory_request;
        sum.cpu_limit += r.cpu_limit;
        sum.memory_limit += r.memory_limit;
    }
    for c in spec.init_containers.iter().flatten() {
        let r = container_resources(c);
        sum.cpu_request = sum.cpu_request.max(r.cpu_request);
        sum.memory_request = sum.memory_request.max(r.memory_request);
        sum.cpu_limit = sum.cpu_limit.max(r.cpu_limit);
        sum.memory_limit = sum.memory_limit.max(r.memory_limit);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_quantities() {
        assert_eq!(parse_milli("500m"), Some(500));
        assert_eq!(parse_milli("2"), Some(2000));
        assert_eq!(parse_milli("0.5"), Some(500));
        assert_eq!(parse_milli("1Ki"), Some(1_024_000));
        assert_eq!(parse_milli("1e3"), Some(1_000_000));
        assert_eq!(parse_milli("1.5Gi").map(|m| m / 1000), Some(1_610_612_736));
        assert_eq!(parse_milli("abc"), None);
        assert_eq!(parse_milli("1Zi"), None);
        assert_eq!(bytes(&Quantity("128Mi".into())), Some(128 << 20));
        assert_eq!(bytes(&Quantity("1G".into())), Some(1_000_000_000));
    }

    #[test]
    fn formats_like_kubernetes() {
        assert_eq!(format_cpu(500), "500m");
        assert_eq!(format_cpu(3000), "3");
        assert_eq!(format_bytes(128 << 20), "128Mi");
        assert_eq!(format_bytes(1 << 30), "1Gi");
        assert_eq!(format_bytes(1500), "1500");
    }

    #[test]
    fn pod_requests_default_to_limits_and_init_containers_count_as_max() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}}},
                ]
            }
        }))
        .expect("pod literal");
        let r = pod_resources(&pod);
        assert_eq!(r.cpu_request, 2000, "init container max wins");
        assert_eq!(r.memory_request, (64 << 20) + (1 << 30));
        assert_eq!(r.cpu_limit, 500);
    }
}
