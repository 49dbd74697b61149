//! Helpers of the unit tests.

use serde_json::Value;

/// Merges `b` into `a` like a JSON merge patch: objects recursively, a `null` removes the
/// key, anything else replaces.
pub(crate) fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(&k);
                } else {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (a, b) => *a = b,
    }
}
