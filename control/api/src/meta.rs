//! Metadata helpers on untyped (JSON) objects.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// `metadata.name` or `""`.
pub fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

/// `metadata.namespace` or `""`.
pub fn namespace(obj: &Value) -> &str {
    obj["metadata"]["namespace"].as_str().unwrap_or("")
}

/// `metadata.uid` or `""`.
pub fn uid(obj: &Value) -> &str {
    obj["metadata"]["uid"].as_str().unwrap_or("")
}

/// `metadata.resourceVersion` or `""`.
pub fn resource_version(obj: &Value) -> &str {
    obj["metadata"]["resourceVersion"].as_str().unwrap_or("")
}

/// `metadata.labels` as a map.
pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    string_map(&obj["metadata"]["labels"])
}

/// A JSON object of strings as a map (non-strings skipped).
pub fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The `metadata` object, created if missing (and the object made an object if it is not).
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let root = match obj {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    };
    let meta = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    match meta {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

/// Sets a metadata field.
pub fn set(obj: &mut Value, key: &str, value: Value) {
    metadata_mut(obj).insert(key.to_string(), value);
}

/// Removes a metadata field.
pub fn remove(obj: &mut Value, key: &str) {
    metadata_mut(obj).remove(key);
}

/// RFC 3339 timestamp with second precision, as Kubernetes writes `creationTimestamp`.
pub fn format_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parses a Kubernetes timestamp.
pub fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// The garbage collector's finalizer of an owner deleted with `propagationPolicy=Orphan`:
/// its dependents lose their ownerReference before it goes.
pub const ORPHAN_FINALIZER: &str = "orphan";
/// The garbage collector's finalizer of an owner deleted with `propagationPolicy=Foreground`:
/// its dependents are deleted before it goes.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_and_writes_metadata() {
        let mut o = json!({"metadata": {"name": "a", "labels": {"x": "1"}}});
        assert_eq!(name(&o), "a");
        assert_eq!(labels(&o).get("x").map(String::as_str), Some("1"));
        set(&mut o, "uid", json!("u"));
        assert_eq!(uid(&o), "u");
        let mut empty = json!(null);
        set(&mut empty, "name", json!("b"));
        assert_eq!(name(&empty), "b");
        let t: jiff::Timestamp = "2024-05-01T10:20:30.5Z".parse().expect("ts");
        assert_eq!(format_time(t), "2024-05-01T10:20:30Z");
    }
}
