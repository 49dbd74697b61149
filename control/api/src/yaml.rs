//! YAML request bodies as JSON values, with nesting and alias expansion bounded.
//!
//! serde_yaml stops at 128 levels of nesting, but its alias limit (100 alias jumps per event
//! of the document) still lets a 3 MiB document expand to billions of nodes or gigabytes of
//! strings: each alias re-reads the whole anchored node. Here the expanded document is charged
//! against a byte budget of [`EXPANSION_FACTOR`] times the input plus
//! [`ALIAS_EXPANSION_ALLOWANCE`]: every node costs one unit and every string or key its length
//! (an alias of a 1 MiB string costs 1 MiB each time it is read). A "billion laughs" document
//! is refused while it is being read and memory stays proportional to the body.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::error::{Error, Result};

/// Units (nodes and string bytes) a document may expand to beyond [`EXPANSION_FACTOR`] per
/// byte of input, for the aliases of ordinary manifests.
pub const ALIAS_EXPANSION_ALLOWANCE: usize = 100_000;

/// Units of expanded document allowed per byte of input (a document without aliases needs
/// at most about two: one per node and one per string byte).
pub const EXPANSION_FACTOR: usize = 4;

/// The message of a document that expands past its budget (go-yaml's words).
pub const EXCESSIVE_ALIASING: &str = "document contains excessive aliasing";

/// Parses one YAML document into a JSON value. Scalar map keys become strings, as Kubernetes'
/// YAML-to-JSON conversion makes them; tags, non-scalar keys, NaN and infinities are errors.
pub fn from_slice(bytes: &[u8]) -> Result<Value> {
    let budget = Cell::new(
        bytes
            .len()
            .saturating_mul(EXPANSION_FACTOR)
            .saturating_add(ALIAS_EXPANSION_ALLOWANCE),
    );
    ValueSeed { budget: &budget }
        .deserialize(serde_yaml::Deserializer::from_slice(bytes))
        .map_err(|e| Error::Decode(e.to_string()))
}

#[derive(Clone, Copy)]
struct ValueSeed<'a> {
    budget: &'a Cell<usize>,
}

impl ValueSeed<'_> {
    fn count<E: de::Error>(&self) -> Result<(), E> {
        self.charge(1)
    }

    fn charge<E: de::Error>(&self, units: usize) -> Result<(), E> {
        match self.budget.get().checked_sub(units) {
            Some(left) => {
                self.budget.set(left);
                Ok(())
            }
            None => Err(E::custom(EXCESSIVE_ALIASING)),
        }
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.count()?;
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value that JSON can represent")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{v} cannot be represented in JSON")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.charge(v.len())?;
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.charge(v.len())?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key_seed(KeySeed { budget: self })? {
            let v = map.next_value_seed(self)?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        Err(de::Error::custom("YAML tags are not supported"))
    }
}

/// A map key: any scalar, as a string.
struct KeySeed<'a> {
    budget: ValueSeed<'a>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        self.budget.count()?;
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar mapping key")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        self.budget.charge(v.len())?;
        Ok(v.to_string())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        self.budget.charge(v.len())?;
        Ok(v)
    }

    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Ok("null".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_manifest_with_non_string_keys() {
        let v = from_slice(
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata:\n  1: one\n  true: yes\n",
        )
        .expect("parses");
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"},
                   "data": {"1": "one", "true": "yes"}})
        );
    }

    #[test]
    fn small_aliases_expand() {
        let v = from_slice(b"a: &x {k: v}\nb: *x\n").expect("parses");
        assert_eq!(v, json!({"a": {"k": "v"}, "b": {"k": "v"}}));
    }

    #[test]
    fn refuses_a_billion_laughs_document() {
        let mut doc = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let p = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let e = from_slice(doc.as_bytes()).expect_err("expansion is bounded");
        assert!(
            e.to_string().contains(EXCESSIVE_ALIASING) || e.to_string().contains("repetition"),
            "{e}"
        );
    }

    #[test]
    fn refuses_quadratic_expansion_of_a_large_anchor() {
        // 20k anchored items read back by 20k aliases: 400M nodes from a 160 KB document,
        // within serde_yaml's own repetition limit.
        let items = vec!["a"; 20_000].join(",");
        let aliases = vec!["*x"; 20_000].join(",");
        let doc = format!("x: &x [{items}]\ny: [{aliases}]\n");
        let e = from_slice(doc.as_bytes()).expect_err("expansion is bounded");
        assert!(e.to_string().contains(EXCESSIVE_ALIASING), "{e}");
    }

    #[test]
    fn refuses_repeated_aliases_of_a_large_string() {
        // One 1 MiB string read back by 400 aliases: few nodes, 400 MiB of strings.
        let big = "x".repeat(1 << 20);
        let aliases = vec!["- *x"; 400].join("\n");
        let doc = format!("a: &x \"{big}\"\nb:\n{aliases}\n");
        let e = from_slice(doc.as_bytes()).expect_err("string expansion is bounded");
        assert!(e.to_string().contains(EXCESSIVE_ALIASING), "{e}");
        // The same string read back twice is fine.
        let doc = format!("a: &x \"{big}\"\nb: *x\n");
        assert!(from_slice(doc.as_bytes()).is_ok());
    }

    #[test]
    fn refuses_deep_nesting() {
        let doc = format!("{}1{}", "[".repeat(500), "]".repeat(500));
        let e = from_slice(doc.as_bytes()).expect_err("depth is bounded");
        assert!(e.to_string().contains("recursion limit exceeded"), "{e}");
    }

    #[test]
    fn refuses_tags_and_several_documents() {
        assert!(from_slice(b"a: !custom x\n").is_err());
        assert!(from_slice(b"a: 1\n---\nb: 2\n").is_err());
    }
}
