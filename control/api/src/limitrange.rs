//! LimitRange semantics (the LimitRanger admission plugin's pure part): container defaults
//! and min / max / maxLimitRequestRatio bounds, with Kubernetes' messages.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::quantity::Quantity;

/// Annotation recording what the plugin set on a pod.
pub const ANNOTATION: &str = "kubernetes.io/limit-ranger";

fn quantities(v: &Value) -> BTreeMap<String, (String, Quantity)> {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, q)| {
            let s = q.as_str()?.to_string();
            let parsed = Quantity::parse(&s)?;
            Some((k.clone(), (s, parsed)))
        })
        .collect()
}

/// Kubernetes' pod defaulting: a container resource with a limit but no request gets the
/// limit as its request (in containers and init containers).
pub fn default_requests_from_limits(pod: &mut Value) {
    for key in ["initContainers", "containers"] {
        let Some(cs) = pod["spec"][key].as_array_mut() else {
            continue;
        };
        for c in cs {
            let limits = c["resources"]["limits"].clone();
            let Some(limits) = limits.as_object().filter(|l| !l.is_empty()) else {
                continue;
            };
            for (k, v) in limits {
                if c["resources"]["requests"].get(k).is_none() {
                    if !c["resources"]["requests"].is_object() {
                        c["resources"]["requests"] = json!({});
                    }
                    c["resources"]["requests"][k] = v.clone();
                }
            }
        }
    }
}

/// Kubernetes' LimitRange defaulting (`SetDefaults_LimitRangeItem`): for `Container` items a
/// missing default limit is the max, a missing default request is the default limit, else
/// the min.
pub fn default_limit_range(lr: &mut Value) {
    let Some(items) = lr["spec"]["limits"].as_array_mut() else {
        return;
    };
    for item in items {
        if item["type"] != "Container" {
            continue;
        }
        for (from, to) in [
            ("max", "default"),
            ("default", "defaultRequest"),
            ("min", "defaultRequest"),
        ] {
            let src = item[from].as_object().cloned().unwrap_or_default();
            for (k, v) in src {
                if item[to].get(&k).is_none() {
                    if !item[to].is_object() {
                        item[to] = json!({});
                    }
                    item[to][&k] = v;
                }
            }
        }
    }
}

/// Applies the container defaults (`default` limits, `defaultRequest` requests) of one
/// LimitRange to a pod being created, and records them in the `kubernetes.io/limit-ranger`
/// annotation the way Kubernetes words it.
pub fn apply_defaults(pod: &mut Value, limit_range: &Value) {
    let mut default_limits = serde_json::Map::new();
    let mut default_requests = serde_json::Map::new();
    for item in limit_range["spec"]["limits"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if item["type"] != "Container" {
            continue;
        }
        if let Some(d) = item["default"].as_object() {
            default_limits.extend(d.clone());
        }
        if let Some(d) = item["defaultRequest"].as_object() {
            default_requests.extend(d.clone());
        }
    }
    if default_limits.is_empty() && default_requests.is_empty() {
        return;
    }
    let mut notes = Vec::new();
    for (key, prefix) in [
        ("initContainers", "init container"),
        ("containers", "container"),
    ] {
        let Some(cs) = pod["spec"][key].as_array_mut() else {
            continue;
        };
        for c in cs {
            let name = c["name"].as_str().unwrap_or("").to_string();
            if !c["resources"].is_object() {
                c["resources"] = json!({});
            }
            let mut set = |field: &str, defaults: &serde_json::Map<String, Value>| {
                let mut names = Vec::new();
                if !c["resources"][field].is_object() {
                    c["resources"][field] = json!({});
                }
                for (k, v) in defaults {
                    if c["resources"][field].get(k).is_none() {
                        c["resources"][field][k] = v.clone();
                        names.push(k.clone());
                    }
                }
                names.sort();
                names
            };
            let limits = set("limits", &default_limits);
            let requests = set("requests", &default_requests);
            if !requests.is_empty() {
                notes.push(format!(
                    "{} request for {prefix} {name}",
                    requests.join(", ")
                ));
            }
            if !limits.is_empty() {
                notes.push(format!("{} limit for {prefix} {name}", limits.join(", ")));
            }
        }
    }
    if !notes.is_empty() {
        if !pod["metadata"]["annotations"].is_object() {
            pod["metadata"]["annotations"] = json!({});
        }
        pod["metadata"]["annotations"][ANNOTATION] =
            json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
    }
}

type List = BTreeMap<String, (String, Quantity)>;

fn min_constraint(
    ty: &str,
    res: &str,
    enforced: &str,
    requests: &List,
    limits: &List,
) -> Option<String> {
    let e = Quantity::parse(enforced)?;
    let shown = e.to_string();
    let Some((req_s, req)) = requests.get(res) else {
        return Some(format!(
            "minimum {res} usage per {ty} is {shown}.  No request is specified"
        ));
    };
    if *req < e {
        return Some(format!(
            "minimum {res} usage per {ty} is {shown}, but request is {}",
            crate::quantity::canonical(req_s)
        ));
    }
    if let Some((lim_s, lim)) = limits.get(res)
        && *lim < e
    {
        return Some(format!(
            "minimum {res} usage per {ty} is {shown}, but limit is {}",
            crate::quantity::canonical(lim_s)
        ));
    }
    None
}

fn max_constraint(
    ty: &str,
    res: &str,
    enforced: &str,
    requests: &List,
    limits: &List,
) -> Option<String> {
    let e = Quantity::parse(enforced)?;
    let shown = e.to_string();
    let Some((lim_s, lim)) = limits.get(res) else {
        return Some(format!(
            "maximum {res} usage per {ty} is {shown}.  No limit is specified"
        ));
    };
    if *lim > e {
        return Some(format!(
            "maximum {res} usage per {ty} is {shown}, but limit is {}",
            crate::quantity::canonical(lim_s)
        ));
    }
    if let Some((req_s, req)) = requests.get(res)
        && *req > e
    {
        return Some(format!(
            "maximum {res} usage per {ty} is {shown}, but request is {}",
            crate::quantity::canonical(req_s)
        ));
    }
    None
}

fn ratio_constraint(
    ty: &str,
    res: &str,
    enforced: &str,
    requests: &List,
    limits: &List,
) -> Option<String> {
    let e = Quantity::parse(enforced)?;
    let shown = e.to_string();
    let req = requests.get(res).map_or(0, |r| r.1.milli);
    let lim = limits.get(res).map_or(0, |l| l.1.milli);
    if req == 0 {
        return Some(format!(
            "{res} max limit to request ratio per {ty} is {shown}, but no request is specified or request is 0"
        ));
    }
    if lim == 0 {
        return Some(format!(
            "{res} max limit to request ratio per {ty} is {shown}, but no limit is specified or limit is 0"
        ));
    }
    let observed = lim as f64 / req as f64;
    if observed * 1000.0 > e.milli as f64 {
        return Some(format!(
            "{res} max limit to request ratio per {ty} is {shown}, but provided ratio is {observed:.6}"
        ));
    }
    None
}

fn container_lists(c: &Value) -> (List, List) {
    (
        quantities(&c["resources"]["requests"]),
        quantities(&c["resources"]["limits"]),
    )
}

/// Requests or limits of a whole pod: the sum over containers, at least the largest init
/// container's (Kubernetes' effective pod resources).
pub fn pod_totals(pod: &Value, field: &str) -> BTreeMap<String, Quantity> {
    let mut sum: BTreeMap<String, Quantity> = BTreeMap::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for (k, (_, q)) in quantities(&c["resources"][field]) {
            let e = sum.entry(k).or_default();
            *e = *e + q;
        }
    }
    for c in pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for (k, (_, q)) in quantities(&c["resources"][field]) {
            let e = sum.entry(k).or_default();
            if q > *e {
                *e = q;
            }
        }
    }
    for (k, v) in pod["spec"]["overhead"].as_object().into_iter().flatten() {
        if let Some(q) = v.as_str().and_then(Quantity::parse) {
            let e = sum.entry(k.clone()).or_default();
            *e = *e + q;
        }
    }
    sum
}

/// Checks a pod against one LimitRange's `Container` and `Pod` bounds; the error is the
/// Kubernetes message (several violations are listed in brackets, comma-separated).
pub fn validate(pod: &Value, limit_range: &Value) -> Result<(), String> {
    let mut errs = Vec::new();
    for item in limit_range["spec"]["limits"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let ty = item["type"].as_str().unwrap_or("");
        let check = |errs: &mut Vec<String>, requests: &List, limits: &List| {
            for (field, f) in [
                (
                    "min",
                    min_constraint as fn(&str, &str, &str, &List, &List) -> Option<String>,
                ),
                ("max", max_constraint),
                ("maxLimitRequestRatio", ratio_constraint),
            ] {
                for (res, v) in item[field].as_object().into_iter().flatten() {
                    if let Some(e) = v.as_str().and_then(|v| f(ty, res, v, requests, limits)) {
                        errs.push(e);
                    }
                }
            }
        };
        match ty {
            "Container" => {
                for key in ["containers", "initContainers"] {
                    for c in pod["spec"][key].as_array().into_iter().flatten() {
                        let (requests, limits) = container_lists(c);
                        check(&mut errs, &requests, &limits);
                    }
                }
            }
            "Pod" => {
                let wrap = |m: BTreeMap<String, Quantity>| -> List {
                    m.into_iter()
                        .map(|(k, q)| (k, (q.to_string(), q)))
                        .collect()
                };
                let requests = wrap(pod_totals(pod, "requests"));
                let limits = wrap(pod_totals(pod, "limits"));
                check(&mut errs, &requests, &limits);
            }
            _ => {}
        }
    }
    match errs.len() {
        0 => Ok(()),
        1 => Err(errs.remove(0)),
        _ => Err(format!("[{}]", errs.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> Value {
        let mut lr = json!({"spec": {"limits": [{"type": "Container",
            "max": {"cpu": "1", "memory": "512Mi"},
            "min": {"cpu": "100m"},
            "default": {"cpu": "500m"},
            "maxLimitRequestRatio": {"cpu": "4"}}]}});
        default_limit_range(&mut lr);
        lr
    }

    #[test]
    fn limit_range_defaulting_follows_kubernetes() {
        let lr = range();
        let item = &lr["spec"]["limits"][0];
        assert_eq!(item["default"], json!({"cpu": "500m", "memory": "512Mi"}));
        assert_eq!(
            item["defaultRequest"],
            json!({"cpu": "500m", "memory": "512Mi"})
        );
    }

    #[test]
    fn defaults_fill_missing_requests_and_limits_and_annotate() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a"},
            {"name": "b", "resources": {"limits": {"cpu": "200m"}}}]}});
        default_requests_from_limits(&mut pod);
        apply_defaults(&mut pod, &range());
        assert_eq!(
            pod["spec"]["containers"][0]["resources"],
            json!({"limits": {"cpu": "500m", "memory": "512Mi"},
                   "requests": {"cpu": "500m", "memory": "512Mi"}})
        );
        assert_eq!(
            pod["spec"]["containers"][1]["resources"]["requests"]["cpu"],
            "200m"
        );
        assert_eq!(
            pod["metadata"]["annotations"][ANNOTATION],
            "LimitRanger plugin set: cpu, memory request for container a; cpu, memory limit for container a; memory request for container b; memory limit for container b"
        );
        assert_eq!(validate(&pod, &range()), Ok(()));
    }

    #[test]
    fn bounds_reject_with_kubernetes_messages() {
        let lr = range();
        let pod = |res: Value| json!({"spec": {"containers": [{"name": "c", "resources": res}]}});
        assert_eq!(
            validate(
                &pod(
                    json!({"limits": {"cpu": "2", "memory": "100Mi"}, "requests": {"cpu": "1", "memory": "100Mi"}})
                ),
                &lr
            ),
            Err("maximum cpu usage per Container is 1, but limit is 2".to_string())
        );
        assert_eq!(
            validate(
                &pod(json!({"limits": {"cpu": "1", "memory": "100Mi"}, "requests": {"cpu": "50m", "memory": "100Mi"}})),
                &lr
            ),
            Err("[minimum cpu usage per Container is 100m, but request is 50m, cpu max limit to request ratio per Container is 4, but provided ratio is 20.000000]".to_string())
        );
        assert_eq!(
            validate(&pod(json!({"requests": {"cpu": "200m"}})), &lr),
            Err("[maximum cpu usage per Container is 1.  No limit is specified, maximum memory usage per Container is 512Mi.  No limit is specified, cpu max limit to request ratio per Container is 4, but no limit is specified or limit is 0]".to_string())
        );
        let pod_range = json!({"spec": {"limits": [{"type": "Pod", "max": {"memory": "1Gi"}}]}});
        let two = json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"memory": "768Mi"}}},
            {"name": "b", "resources": {"limits": {"memory": "768Mi"}}}]}});
        assert_eq!(
            validate(&two, &pod_range),
            Err("maximum memory usage per Pod is 1Gi, but limit is 1536Mi".to_string())
        );
    }
}
