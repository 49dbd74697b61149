//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and Kubernetes' strategic merge
//! patch with the list merge keys kubectl uses.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The patch types of `Content-Type` on PATCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    StrategicMerge,
    /// `application/apply-patch+yaml` (server-side apply, treated as a merge of the full
    /// intent).
    Apply,
}

impl PatchType {
    /// From a `Content-Type` header value.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Applies a patch to `target`.
pub fn apply(target: &Value, patch: &Value, ty: PatchType) -> Result<Value> {
    let mut out = target.clone();
    match ty {
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| {
                Error::Patch(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
            json_patch::patch(&mut out, &p).map_err(|e| Error::Patch(e.to_string()))?;
        }
        PatchType::Merge | PatchType::Apply => merge_patch(&mut out, patch),
        PatchType::StrategicMerge => strategic_merge(&mut out, patch, "")?,
    }
    Ok(out)
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The merge key of a list field, by field name and (for `ports`) by item shape.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "secrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "ownerReferences" => Some("uid"),
        "conditions" | "addresses" => Some("type"),
        "hostAliases" => Some("ip"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "readinessGates" => Some("conditionType"),
        "ports" => {
            if items.iter().any(|i| i.get("containerPort").is_some()) {
                Some("containerPort")
            } else {
                Some("port")
            }
        }
        _ => None,
    }
}

/// Primitive lists merged as sets rather than replaced.
fn merges_primitives(field: &str) -> bool {
    matches!(field, "finalizers")
}

fn item_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object().and_then(|m| m.get(key))
}

fn merge_list(target: &mut Vec<Value>, patch: &[Value], field: &str) -> Result<()> {
    if patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *target = patch
            .iter()
            .filter(|p| p.get("$patch").is_none())
            .cloned()
            .collect();
        return Ok(());
    }
    let all: Vec<Value> = target.iter().chain(patch.iter()).cloned().collect();
    match merge_key(field, &all) {
        Some(key) if patch.iter().all(Value::is_object) => {
            for p in patch {
                let Some(kv) = item_key(p, key) else {
                    return Err(Error::Patch(format!(
                        "map: {p} does not contain declared merge key: {key}"
                    )));
                };
                let pos = target.iter().position(|t| item_key(t, key) == Some(kv));
                let directive = p.get("$patch").and_then(Value::as_str);
                match (pos, directive) {
                    (Some(i), Some("delete")) => {
                        target.remove(i);
                    }
                    (None, Some("delete")) => {}
                    (Some(i), _) => strategic_merge(&mut target[i], p, field)?,
                    (None, _) => {
                        let mut item = Value::Object(Map::new());
                        strategic_merge(&mut item, p, field)?;
                        target.push(item);
                    }
                }
            }
        }
        _ if merges_primitives(field) => {
            for p in patch {
                if !target.contains(p) {
                    target.push(p.clone());
                }
            }
        }
        _ => *target = patch.to_vec(),
    }
    Ok(())
}

/// Kubernetes' strategic merge patch (`$patch`, `$retainKeys`, `$deleteFromPrimitiveList`,
/// `$setElementOrder`, merge keys per list).
pub fn strategic_merge(target: &mut Value, patch: &Value, _parent: &str) -> Result<()> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            *target = Value::Object(m);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return Ok(());
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return Ok(());
    };
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (t.get_mut(field), v) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(_) => {
                let entry = t.entry(k.clone()).or_insert(Value::Null);
                strategic_merge(entry, v, k)?;
            }
            Value::Array(items) => match t.get_mut(k) {
                Some(Value::Array(existing)) => merge_list(existing, items, k)?,
                _ => {
                    let mut fresh = Vec::new();
                    merge_list(&mut fresh, items, k)?;
                    t.insert(k.clone(), Value::Array(fresh));
                }
            },
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
    // `$setElementOrder/<field>`: reorder merged lists as the client asked.
    for (k, v) in p {
        if let (Some(field), Value::Array(order)) = (k.strip_prefix("$setElementOrder/"), v)
            && let Some(Value::Array(list)) = t.get_mut(field)
        {
            let key = merge_key(field, list);
            let pos = |item: &Value| -> usize {
                order
                    .iter()
                    .position(|o| match key {
                        Some(key) => {
                            item_key(o, key).is_some() && item_key(o, key) == item_key(item, key)
                        }
                        None => o == item,
                    })
                    .unwrap_or(usize::MAX)
            };
            list.sort_by_key(|i| pos(i));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_by_name_and_ports_by_key() {
        let pod = json!({"metadata": {"labels": {"a": "1"}},
            "spec": {"containers": [
                {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                {"name": "side", "image": "busybox"}]}});
        let patch = json!({"metadata": {"labels": {"b": "2"}},
            "spec": {"containers": [{"name": "web", "image": "nginx:2",
                                     "ports": [{"containerPort": 443}]}]}});
        let out = apply(&pod, &patch, PatchType::StrategicMerge).expect("patches");
        assert_eq!(out["metadata"]["labels"], json!({"a": "1", "b": "2"}));
        let cs = out["spec"]["containers"].as_array().expect("list");
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0]["image"], "nginx:2");
        assert_eq!(cs[0]["ports"].as_array().expect("ports").len(), 2);
        assert_eq!(cs[1]["name"], "side");
    }

    #[test]
    fn strategic_merge_directives() {
        let svc = json!({"spec": {"ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "b"}],
                                  "selector": {"x": "1", "y": "2"}}});
        let patch = json!({"spec": {"ports": [{"port": 81, "$patch": "delete"}],
                                    "selector": {"$patch": "replace", "z": "3"}}});
        let out = apply(&svc, &patch, PatchType::StrategicMerge).expect("patches");
        assert_eq!(out["spec"]["ports"], json!([{"port": 80, "name": "a"}]));
        assert_eq!(out["spec"]["selector"], json!({"z": "3"}));
        let fin = json!({"metadata": {"finalizers": ["a", "b"]}});
        let out = apply(
            &fin,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
            PatchType::StrategicMerge,
        )
        .expect("patches");
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn merge_and_json_patches() {
        let o = json!({"spec": {"replicas": 1, "x": {"y": 1}}});
        let out = apply(
            &o,
            &json!({"spec": {"replicas": 3, "x": null}}),
            PatchType::Merge,
        )
        .expect("merge");
        assert_eq!(out, json!({"spec": {"replicas": 3}}));
        let out = apply(
            &o,
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 5}]),
            PatchType::Json,
        )
        .expect("json patch");
        assert_eq!(out["spec"]["replicas"], 5);
        assert!(
            apply(
                &o,
                &json!([{"op": "test", "path": "/spec/replicas", "value": 9}]),
                PatchType::Json
            )
            .is_err()
        );
    }
}
