//! A pod's quality-of-service class (`status.qosClass`), as Kubernetes' `GetPodQOS` computes
//! it from the CPU and memory requests and limits of all its containers and init containers.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

use crate::quantity::Quantity;

/// The resources the class looks at.
const COMPUTE: [&str; 2] = ["cpu", "memory"];

/// `BestEffort`, `Guaranteed` or `Burstable`.
///
/// - `BestEffort`: no container requests or limits any CPU or memory (zero counts as none);
/// - `Guaranteed`: every container limits both, and the pod's summed requests equal its
///   summed limits for each (a request left out counts as its limit, as defaulting sets it);
/// - `Burstable`: everything else.
pub fn class(spec: &PodSpec) -> &'static str {
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let (mut requests, mut limits) = (BTreeMap::new(), BTreeMap::new());
    let mut guaranteed = true;
    for c in containers {
        let r = c.resources.as_ref();
        let lim = positive(r.and_then(|r| r.limits.as_ref()));
        let req = positive(r.and_then(|r| r.requests.as_ref()));
        for (k, q) in &lim {
            *limits.entry(*k).or_insert(0) += q;
        }
        for k in COMPUTE {
            if let Some(q) = req.get(k).or(lim.get(k)) {
                *requests.entry(k).or_insert(0) += q;
            }
        }
        if COMPUTE.iter().any(|k| !lim.contains_key(k)) {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        "BestEffort"
    } else if guaranteed && requests == limits {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The positive CPU and memory quantities of a requests or limits map, in thousandths.
fn positive(m: Option<&BTreeMap<String, K8sQuantity>>) -> BTreeMap<&'static str, i128> {
    COMPUTE
        .into_iter()
        .filter_map(|k| {
            let q = Quantity::parse(&m?.get(k)?.0)?;
            (q.milli > 0).then_some((k, q.milli))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn class_of(spec: Value) -> &'static str {
        class(&serde_json::from_value(spec).expect("spec"))
    }

    #[test]
    fn classes_as_kubernetes_computes_them() {
        let c = |resources: Value| json!({"name": "c", "resources": resources});
        for (spec, want) in [
            (json!({"containers": [{"name": "c"}]}), "BestEffort"),
            // Zero is no request.
            (
                json!({"containers": [c(json!({"requests": {"cpu": "0"}}))]}),
                "BestEffort",
            ),
            // Other resources do not count.
            (
                json!({"containers": [c(json!({"limits": {"ephemeral-storage": "1Gi"}}))]}),
                "BestEffort",
            ),
            (
                json!({"containers": [c(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))]}),
                "Guaranteed",
            ),
            // Equal as quantities, not as strings.
            (
                json!({"containers": [c(json!({"limits": {"cpu": "1", "memory": "1Gi"},
                "requests": {"cpu": "1000m", "memory": "1024Mi"}}))]}),
                "Guaranteed",
            ),
            (
                json!({"containers": [c(json!({"limits": {"cpu": "1", "memory": "1Gi"},
                "requests": {"cpu": "500m"}}))]}),
                "Burstable",
            ),
            (
                json!({"containers": [c(json!({"requests": {"cpu": "1"}}))]}),
                "Burstable",
            ),
            (
                json!({"containers": [c(json!({"limits": {"cpu": "1"}}))]}),
                "Burstable",
            ),
            // One container without limits makes the pod Burstable.
            (
                json!({"containers": [c(json!({"limits": {"cpu": "1", "memory": "1Gi"}})), {"name": "d"}]}),
                "Burstable",
            ),
            // Init containers count.
            (
                json!({"containers": [c(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))],
                "initContainers": [{"name": "i"}]}),
                "Burstable",
            ),
            (
                json!({"containers": [{"name": "c"}], "initContainers": [c(json!({"requests": {"memory": "1Mi"}}))]}),
                "Burstable",
            ),
        ] {
            assert_eq!(class_of(spec.clone()), want, "{spec}");
        }
    }
}
