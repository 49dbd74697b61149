//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and Kubernetes' strategic merge
//! patch with the list merge keys kubectl uses.
//!
//! A patch body is checked for the shape its type requires before it is applied, with the
//! messages Kubernetes' decoding gives: merge and strategic merge patches are JSON objects,
//! JSON patches arrays of operations (at most [`MAX_JSON_PATCH_OPERATIONS`]).

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The most operations a JSON patch may hold (Kubernetes' `maxJSONPatchOperations`).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// The patch types of `Content-Type` on PATCH. Server-side apply
/// (`application/apply-patch+yaml`) is not one of them: it needs field management.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    StrategicMerge,
}

impl PatchType {
    /// The content types of the supported patch types.
    pub const CONTENT_TYPES: [&'static str; 3] = [
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
    ];

    /// From a `Content-Type` header value (parameters such as `charset` are ignored).
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            _ => None,
        }
    }
}

/// The name Go's `encoding/json` gives a JSON value's type in its unmarshal errors.
fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Bytes a JSON patch may copy in all (`copy` operations), Kubernetes' request body limit.
pub const MAX_ACCUMULATED_COPY: usize = 3 * 1024 * 1024;

/// Checks that `patch` has the shape its type requires, as Kubernetes' decoding of the
/// body does (`Error::BadPatch`, `Error::PatchTooLarge`).
pub fn check_shape(patch: &Value, ty: PatchType) -> Result<()> {
    const MAP: &str = "map[string]interface {}";
    match (ty, patch) {
        (PatchType::Merge | PatchType::StrategicMerge, Value::Object(_)) => Ok(()),
        // Kubernetes' merge patch library refuses a null document this way.
        (PatchType::Merge, Value::Null) => Err(Error::BadPatch("Invalid JSON Patch".into())),
        (PatchType::Merge, other) => Err(Error::BadPatch(format!(
            "error decoding patch: json: cannot unmarshal {} into Go value of type {MAP}",
            go_type(other)
        ))),
        (PatchType::StrategicMerge, other) => Err(Error::BadPatch(format!(
            "json: cannot unmarshal {} into Go value of type {MAP}",
            go_type(other)
        ))),
        (PatchType::Json, Value::Array(ops)) => {
            for op in ops {
                let Value::Object(fields) = op else {
                    return Err(Error::BadPatch(format!(
                        "error decoding patch: json: cannot unmarshal {} into Go value of type handlers.jsonPatchOp",
                        go_type(op)
                    )));
                };
                for key in ["op", "path", "from"] {
                    if let Some(v) = fields.get(key).filter(|v| !v.is_string() && !v.is_null()) {
                        return Err(Error::BadPatch(format!(
                            "error decoding patch: json: cannot unmarshal {} into Go struct field jsonPatchOp.{key} of type string",
                            go_type(v)
                        )));
                    }
                }
            }
            if ops.len() > MAX_JSON_PATCH_OPERATIONS {
                return Err(Error::PatchTooLarge {
                    max: MAX_JSON_PATCH_OPERATIONS,
                    got: ops.len(),
                });
            }
            Ok(())
        }
        (PatchType::Json, other) => Err(Error::BadPatch(format!(
            "error decoding patch: json: cannot unmarshal {} into Go value of type []handlers.jsonPatchOp",
            go_type(other)
        ))),
    }
}

/// Applies a patch to `target`: `Error::BadPatch` or `Error::PatchTooLarge` when the body is
/// not a patch of its type, `Error::PatchNotApplicable` when a JSON patch operation fails
/// (an unknown op, a missing path, a failed `test`).
pub fn apply(target: &Value, patch: &Value, ty: PatchType) -> Result<Value> {
    check_shape(patch, ty)?;
    let mut out = target.clone();
    match ty {
        PatchType::Json => {
            // One operation at a time, so that `copy`s are charged before they run: each
            // can double the document (Kubernetes bounds the accumulated copy size the same
            // way, `AccumulatedCopySizeLimit`).
            let mut copied = 0usize;
            for op in patch.as_array().into_iter().flatten() {
                if op["op"] == "copy"
                    && let Some(from) = op["from"].as_str().and_then(|f| out.pointer(f))
                {
                    copied = copied.saturating_add(serde_json::to_vec(from).map_or(0, |v| v.len()));
                    if copied > MAX_ACCUMULATED_COPY {
                        return Err(Error::PatchNotApplicable(format!(
                            "the values copied by the patch exceed {MAX_ACCUMULATED_COPY} bytes"
                        )));
                    }
                }
                let p: json_patch::Patch = serde_json::from_value(Value::Array(vec![op.clone()]))
                    .map_err(|e| Error::PatchNotApplicable(e.to_string()))?;
                // `out` is a copy thrown away on error, so the operations need no undo (the
                // crate's undo of a failed `move` into its own child panics).
                json_patch::patch_unsafe(&mut out, &p)
                    .map_err(|e| Error::PatchNotApplicable(e.to_string()))?;
            }
        }
        PatchType::Merge => merge_patch(&mut out, patch),
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
                    return Err(Error::BadPatch(format!(
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
    fn json_patch_copies_are_bounded() {
        let doc = json!({"data": {"k": "x".repeat(1024)}});
        // Each copy doubles `data`: 2^30 bytes after 20 operations without a bound.
        let ops: Vec<Value> = (0..20)
            .map(|i| json!({"op": "copy", "from": "/data", "path": format!("/data/c{i}")}))
            .collect();
        let e = apply(&doc, &Value::Array(ops), PatchType::Json).expect_err("bounded");
        assert!(
            matches!(e, Error::PatchNotApplicable(ref m) if m.contains("exceed")),
            "{e}"
        );
        let one = json!([{"op": "copy", "from": "/data/k", "path": "/data/j"}]);
        let out = apply(&doc, &one, PatchType::Json).expect("a small copy applies");
        assert_eq!(out["data"]["j"], doc["data"]["k"]);
    }

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

    #[test]
    fn merge_and_strategic_patches_must_be_objects() {
        let cm = json!({"metadata": {"name": "x"}, "data": {"a": "1"}});
        for (body, go) in [
            (json!("str"), "string"),
            (json!(42), "number"),
            (json!([1, 2]), "array"),
            (json!(true), "bool"),
        ] {
            let e = apply(&cm, &body, PatchType::Merge).expect_err("merge refuses");
            assert_eq!(
                e.to_string(),
                format!(
                    "error decoding patch: json: cannot unmarshal {go} into Go value of type map[string]interface {{}}"
                )
            );
            assert!(matches!(e, Error::BadPatch(_)));
            let e = apply(&cm, &body, PatchType::StrategicMerge).expect_err("smp refuses");
            assert_eq!(
                e.to_string(),
                format!(
                    "json: cannot unmarshal {go} into Go value of type map[string]interface {{}}"
                )
            );
        }
        assert_eq!(
            apply(&cm, &Value::Null, PatchType::Merge)
                .expect_err("null")
                .to_string(),
            "Invalid JSON Patch"
        );
        assert!(matches!(
            apply(&cm, &Value::Null, PatchType::StrategicMerge),
            Err(Error::BadPatch(_))
        ));
    }

    #[test]
    fn json_patch_shape_and_failures_are_told_apart() {
        let o = json!({"spec": {"replicas": 1}});
        let bad = |p: Value| apply(&o, &p, PatchType::Json).expect_err("refused");
        assert!(matches!(bad(json!({"op": "add"})), Error::BadPatch(_)));
        assert!(matches!(bad(json!([1])), Error::BadPatch(_)));
        assert!(matches!(
            bad(json!([{"op": 1, "path": "/a"}])),
            Error::BadPatch(_)
        ));
        assert!(matches!(
            bad(json!([{"op": "bogus", "path": "/a"}])),
            Error::PatchNotApplicable(_)
        ));
        assert!(matches!(
            bad(json!([{"op": "replace", "path": "/no/such", "value": 1}])),
            Error::PatchNotApplicable(_)
        ));
        assert!(matches!(
            bad(json!([{"op": "add", "path": "no-slash", "value": 1}])),
            Error::PatchNotApplicable(_)
        ));
        // A failed move after a successful operation (json-patch's own undo panics here).
        assert!(matches!(
            bad(json!([{"op": "add", "path": "/spec/x", "value": 1},
                       {"op": "move", "from": "/spec", "path": "/spec/y"}])),
            Error::PatchNotApplicable(_)
        ));
        let many = Value::Array(vec![
            json!({"op": "test", "path": "/spec", "value": {}});
            10_001
        ]);
        assert_eq!(
            bad(many).to_string(),
            "The allowed maximum operations in a JSON patch is 10000, got 10001"
        );
    }
}
