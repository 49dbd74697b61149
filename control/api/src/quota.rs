//! ResourceQuota semantics (the ResourceQuota admission plugin's pure part): what an object
//! charges, which quotas apply to it, and the check with Kubernetes' messages.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::limitrange::{default_requests_from_limits, pod_totals};
use crate::quantity::Quantity;
use crate::resources::ResourceInfo;

/// Resources whose quota requires every container to state them (Kubernetes' compute set).
const COMPUTE: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// Resources counted under their legacy names as well as `count/<plural>`.
const LEGACY_COUNTED: &[&str] = &[
    "pods",
    "services",
    "replicationcontrollers",
    "secrets",
    "configmaps",
    "resourcequotas",
    "persistentvolumeclaims",
];

/// Usage: quantities by resource name (`pods`, `requests.cpu`, `count/secrets`).
pub type Usage = BTreeMap<String, Quantity>;

/// The `count/...` name of a resource (`count/pods`, `count/deployments.apps`).
pub fn count_name(res: &ResourceInfo) -> String {
    format!("count/{}", res.qualified_plural())
}

/// Whether a stored pod still counts against quota: not Succeeded or Failed, and not past its
/// deletion deadline plus grace period (Kubernetes' `QuotaV1Pod`). `now` is in Unix seconds.
pub fn pod_counts(pod: &Value, now: i64) -> bool {
    if matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    ) {
        return false;
    }
    if let (Some(ts), Some(grace)) = (
        pod["metadata"]["deletionTimestamp"]
            .as_str()
            .and_then(crate::meta::parse_time),
        pod["metadata"]["deletionGracePeriodSeconds"].as_i64(),
    ) && now > ts.as_second() + grace
    {
        return false;
    }
    true
}

fn pod_usage(pod: &Value) -> Usage {
    let mut p = pod.clone();
    default_requests_from_limits(&mut p);
    let mut u = Usage::new();
    u.insert("pods".into(), Quantity::count(1));
    u.insert("count/pods".into(), Quantity::count(1));
    for (k, q) in pod_totals(&p, "requests") {
        if k == "cpu" || k == "memory" || k == "ephemeral-storage" {
            u.insert(k.clone(), q);
        }
        u.insert(format!("requests.{k}"), q);
    }
    for (k, q) in pod_totals(&p, "limits") {
        u.insert(format!("limits.{k}"), q);
    }
    u
}

/// What creating `obj` (of resource `res`) charges; `now` is in Unix seconds (for pods
/// being deleted). Empty when the object does not count.
pub fn usage(res: &ResourceInfo, obj: &Value, now: i64) -> Usage {
    let mut u = Usage::new();
    if res.group.is_empty() && res.plural == "pods" {
        return if pod_counts(obj, now) {
            pod_usage(obj)
        } else {
            u
        };
    }
    u.insert(count_name(res), Quantity::count(1));
    if res.group.is_empty() && LEGACY_COUNTED.contains(&res.plural) {
        u.insert(res.plural.to_string(), Quantity::count(1));
    }
    if res.group.is_empty() && res.plural == "services" {
        let ty = obj["spec"]["type"].as_str().unwrap_or("ClusterIP");
        let node_ports = ty == "NodePort"
            || (ty == "LoadBalancer" && obj["spec"]["allocateLoadBalancerNodePorts"] != false);
        let ports = obj["spec"]["ports"].as_array().map_or(0, Vec::len) as i64;
        u.insert(
            "services.nodeports".into(),
            Quantity::count(if node_ports { ports } else { 0 }),
        );
        u.insert(
            "services.loadbalancers".into(),
            Quantity::count(i64::from(ty == "LoadBalancer")),
        );
    }
    u
}

fn best_effort(pod: &Value) -> bool {
    ["containers", "initContainers"].iter().all(|key| {
        pod["spec"][key].as_array().into_iter().flatten().all(|c| {
            ["requests", "limits"].iter().all(|f| {
                c["resources"][f]
                    .as_object()
                    .is_none_or(|m| !m.contains_key("cpu") && !m.contains_key("memory"))
            })
        })
    })
}

/// Whether `quota` applies to `obj`: quotas with scopes (`Terminating`, `NotTerminating`,
/// `BestEffort`, `NotBestEffort`) apply only to pods in all their scopes; other scopes are not
/// supported and never match.
pub fn applies(quota: &Value, res: &ResourceInfo, obj: &Value) -> bool {
    let scopes: Vec<&str> = quota["spec"]["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if scopes.is_empty() && quota["spec"]["scopeSelector"].is_null() {
        return true;
    }
    if !(res.group.is_empty() && res.plural == "pods" && quota["spec"]["scopeSelector"].is_null()) {
        return false;
    }
    scopes.iter().all(|s| match *s {
        "Terminating" => obj["spec"]["activeDeadlineSeconds"].as_i64().is_some(),
        "NotTerminating" => obj["spec"]["activeDeadlineSeconds"].as_i64().is_none(),
        "BestEffort" => best_effort(obj),
        "NotBestEffort" => !best_effort(obj),
        _ => false,
    })
}

/// `spec.hard` parsed, with the original text of each value.
pub fn hard(quota: &Value) -> BTreeMap<String, Quantity> {
    quota["spec"]["hard"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), Quantity::parse(v.as_str()?)?)))
        .collect()
}

/// Kubernetes' constraint on pods under compute quotas: every container must state each
/// tracked compute resource. The error is `must specify limits.cpu for: a,b; requests.cpu for: a`.
pub fn pod_constraints(hard: &BTreeMap<String, Quantity>, pod: &Value) -> Result<(), String> {
    let required: BTreeSet<&str> = COMPUTE
        .iter()
        .copied()
        .filter(|r| hard.contains_key(*r))
        .collect();
    if required.is_empty() {
        return Ok(());
    }
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut p = pod.clone();
    default_requests_from_limits(&mut p);
    for key in ["containers", "initContainers"] {
        for c in p["spec"][key].as_array().into_iter().flatten() {
            let has = |f: &str, r: &str| c["resources"][f].get(r).is_some();
            let mut set = BTreeSet::new();
            for r in ["cpu", "memory"] {
                if has("requests", r) {
                    set.insert(r.to_string());
                    set.insert(format!("requests.{r}"));
                }
                if has("limits", r) {
                    set.insert(format!("limits.{r}"));
                }
            }
            for r in &required {
                if !set.contains(*r) {
                    missing
                        .entry(r)
                        .or_default()
                        .insert(c["name"].as_str().unwrap_or("").to_string());
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(r, names)| {
            format!(
                "{r} for: {}",
                names.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    Err(format!("must specify {}", parts.join("; ")))
}

/// What `objects` use of quota `quota` (with limits `hard`): for every resource of `hard`
/// (zero included), the sum of what each object the quota applies to charges. The quota
/// controller's `status.used` and the admission's live usage are both this.
pub fn used<'a>(
    quota: &Value,
    hard: &BTreeMap<String, Quantity>,
    objects: impl IntoIterator<Item = (&'a ResourceInfo, &'a Value)>,
    now: i64,
) -> Usage {
    let mut used: Usage = hard
        .keys()
        .map(|k| (k.clone(), Quantity::default()))
        .collect();
    for (res, obj) in objects {
        if !applies(quota, res, obj) {
            continue;
        }
        for (k, q) in usage(res, obj, now) {
            if let Some(u) = used.get_mut(&k) {
                *u = *u + q;
            }
        }
    }
    used
}

fn pretty(u: &Usage) -> String {
    u.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks `requested` against quota `name` with limits `hard` and current usage `used`.
/// On success returns the quota's new usage of the hard resources the request charges; on
/// failure Kubernetes' message `exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2`.
pub fn check(
    name: &str,
    hard: &BTreeMap<String, Quantity>,
    used: &Usage,
    requested: &Usage,
) -> Result<Usage, String> {
    let mut exceeded = Vec::new();
    let mut new_used = Usage::new();
    for (k, limit) in hard {
        let cur = used.get(k).copied().unwrap_or_default();
        let req = requested.get(k).copied();
        let Some(req) = req else {
            continue;
        };
        let next = cur + req;
        if next > *limit {
            exceeded.push(k.clone());
        }
        new_used.insert(k.clone(), next);
    }
    if exceeded.is_empty() {
        return Ok(new_used);
    }
    let mask = |u: &Usage, zero: bool| -> Usage {
        exceeded
            .iter()
            .filter_map(|k| match u.get(k) {
                Some(v) => Some((k.clone(), *v)),
                None if zero => Some((k.clone(), Quantity::default())),
                None => None,
            })
            .collect()
    };
    Err(format!(
        "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
        pretty(&mask(requested, false)),
        pretty(&mask(used, true)),
        pretty(&mask(hard, false)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn res(p: &str) -> &'static ResourceInfo {
        crate::resources::find("", "v1", p).expect("registered")
    }

    #[test]
    fn third_pod_over_two_is_refused_with_kubernetes_message() {
        let quota = json!({"spec": {"hard": {"pods": "2", "secrets": "10"}}});
        let pod = json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c"}]}});
        let requested = usage(res("pods"), &pod, 0);
        let mut used = Usage::new();
        used.insert("pods".into(), Quantity::count(1));
        let next = check("q", &hard(&quota), &used, &requested).expect("second pod fits");
        assert_eq!(next["pods"].to_string(), "2");
        assert!(
            !next.contains_key("secrets"),
            "only charged resources: {next:?}"
        );
        assert_eq!(
            check("q", &hard(&quota), &next, &requested),
            Err("exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2".into())
        );
    }

    #[test]
    fn compute_quota_needs_requests_and_sums_them() {
        let quota = json!({"spec": {"hard": {"requests.cpu": "1", "limits.memory": "1Gi"}}});
        let pod = json!({"spec": {"containers": [
            {"name": "b", "resources": {"requests": {"cpu": "600m"}}},
            {"name": "a", "resources": {"limits": {"memory": "512Mi"}}}]}});
        assert_eq!(
            pod_constraints(&hard(&quota), &pod),
            Err("must specify limits.memory for: b; requests.cpu for: a".into())
        );
        let ok = json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "600m", "memory": "768Mi"}}}]}});
        assert_eq!(pod_constraints(&hard(&quota), &ok), Ok(()));
        let req = usage(res("pods"), &ok, 0);
        assert_eq!(req["requests.cpu"].to_string(), "600m");
        let used = check("q", &hard(&quota), &Usage::new(), &req).expect("fits");
        assert_eq!(
            check("q", &hard(&quota), &used, &req),
            Err("exceeded quota: q, requested: limits.memory=768Mi,requests.cpu=600m, used: limits.memory=768Mi,requests.cpu=600m, limited: limits.memory=1Gi,requests.cpu=1".into())
        );
    }

    #[test]
    fn finished_pods_and_scopes() {
        let done = json!({"status": {"phase": "Succeeded"}, "spec": {"containers": []}});
        assert!(usage(res("pods"), &done, 0).is_empty());
        let be = json!({"spec": {"containers": [{"name": "c"}]}});
        let scoped = json!({"spec": {"hard": {"pods": "1"}, "scopes": ["NotBestEffort"]}});
        assert!(!applies(&scoped, res("pods"), &be));
        assert!(!applies(&scoped, res("secrets"), &json!({})));
        let svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 1}, {"port": 2}]}});
        let u = usage(res("services"), &svc, 0);
        assert_eq!(u["services.nodeports"].to_string(), "2");
        assert_eq!(u["count/services"].to_string(), "1");
    }
}
