//! Priorities: scores from 0 to 10 per node; the scheduler picks the highest sum.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use xkube_api::pod as podutil;
use xkube_client::Object;

use crate::predicates::{NodeInfo, allocatable, nonzero_requests};

/// Highest score of one priority.
pub const MAX_PRIORITY: i64 = 10;

fn least_requested_score(requested: i64, capacity: i64) -> i64 {
    if capacity <= 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_PRIORITY / capacity
}

/// LeastRequestedPriority: favours nodes with more free cpu and memory after placing the pod.
pub fn least_requested(pod: &Pod, info: &NodeInfo) -> i64 {
    let (cpu, mem, _) = allocatable(&info.node);
    let (pc, pm) = nonzero_requests(pod);
    (least_requested_score(info.nonzero_cpu + pc, cpu)
        + least_requested_score(info.nonzero_memory + pm, mem))
        / 2
}

/// BalancedResourceAllocation: favours nodes whose cpu and memory use stay balanced.
pub fn balanced_allocation(pod: &Pod, info: &NodeInfo) -> i64 {
    let (cpu, mem, _) = allocatable(&info.node);
    if cpu <= 0 || mem <= 0 {
        return 0;
    }
    let (pc, pm) = nonzero_requests(pod);
    let cf = (info.nonzero_cpu + pc) as f64 / cpu as f64;
    let mf = (info.nonzero_memory + pm) as f64 / mem as f64;
    if cf >= 1.0 || mf >= 1.0 {
        return 0;
    }
    ((1.0 - (cf - mf).abs()) * MAX_PRIORITY as f64) as i64
}

/// CalculateNodeLabelPriority: `MAX_PRIORITY` when the node's having `label` equals
/// `presence`.
pub fn node_label(info: &NodeInfo, label: &str, presence: bool) -> i64 {
    let has = info
        .node
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(label));
    if has == presence { MAX_PRIORITY } else { 0 }
}

/// Pods on `info` that any of `selectors` selects (same namespace as `pod`, not being
/// deleted).
pub fn matching_pods(pod: &Pod, info: &NodeInfo, selectors: &[BTreeMap<String, String>]) -> i64 {
    if selectors.is_empty() {
        return 0;
    }
    info.pods
        .iter()
        .filter(|p| {
            p.namespace() == pod.namespace()
                && !podutil::is_terminating(p)
                && selectors
                    .iter()
                    .any(|s| podutil::selector_matches(s, p.metadata.labels.as_ref()))
        })
        .count() as i64
}

/// SelectorSpreadPriority from per-node counts of pods of the same services and
/// controllers: fewer peers, higher score.
pub fn spread_scores(counts: &[i64]) -> Vec<i64> {
    let max = counts.iter().copied().max().unwrap_or(0);
    counts
        .iter()
        .map(|c| {
            if max == 0 {
                MAX_PRIORITY
            } else {
                MAX_PRIORITY * (max - c) / max
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predicates::tests::{node, pod};
    use serde_json::json;

    #[test]
    fn least_requested_prefers_emptier_nodes() {
        let empty = NodeInfo::new(node("a", "4", "8Gi", json!({})));
        let mut busy = NodeInfo::new(node("b", "4", "8Gi", json!({})));
        busy.add_pod(pod("x", "3", "6Gi", json!({})));
        let p = pod("p", "500m", "512Mi", json!({}));
        assert!(least_requested(&p, &empty) > least_requested(&p, &busy));
        assert_eq!(least_requested(&p, &empty), 8);
    }

    #[test]
    fn balanced_allocation_prefers_even_use() {
        let mut cpu_heavy = NodeInfo::new(node("a", "4", "8Gi", json!({})));
        cpu_heavy.add_pod(pod("x", "3", "100Mi", json!({})));
        let even = NodeInfo::new(node("b", "4", "8Gi", json!({})));
        let p = pod("p", "1", "2Gi", json!({}));
        assert!(balanced_allocation(&p, &even) > balanced_allocation(&p, &cpu_heavy));
        assert_eq!(balanced_allocation(&p, &even), 10);
    }

    #[test]
    fn spreading_and_node_labels() {
        assert_eq!(spread_scores(&[0, 2, 1]), [10, 0, 5]);
        assert_eq!(spread_scores(&[0, 0]), [10, 10]);
        let info = NodeInfo::new(node(
            "a",
            "1",
            "1Gi",
            json!({"metadata": {"labels": {"ssd": "true"}}}),
        ));
        assert_eq!(node_label(&info, "ssd", true), 10);
        assert_eq!(node_label(&info, "ssd", false), 0);
        let mut info = NodeInfo::new(node("a", "1", "1Gi", json!({})));
        info.add_pod(pod(
            "x",
            "0",
            "0",
            json!({"metadata": {"labels": {"app": "web"}}}),
        ));
        info.add_pod(pod(
            "y",
            "0",
            "0",
            json!({"metadata": {"labels": {"app": "db"}}}),
        ));
        let sel = BTreeMap::from([("app".to_string(), "web".to_string())]);
        assert_eq!(
            matching_pods(&pod("p", "0", "0", json!({})), &info, &[sel]),
            1
        );
    }
}
