//! Label selectors (equality- and set-based) and field selectors.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as MetaLabelSelector;
use serde_json::Value;

use crate::error::{Error, Result};

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` / `key==value` / `key in (a,b)`.
    In(String, BTreeSet<String>),
    /// `key!=value` / `key notin (a,b)`.
    NotIn(String, BTreeSet<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
    /// `key>N` / `key<N` (numeric, Kubernetes' Gt/Lt).
    Gt(String, i64),
    /// `key<N`.
    Lt(String, i64),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
            Requirement::Gt(k, n) => labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Requirement::Lt(k, n) => labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        }
    }
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

fn check_key(key: &str) -> Result<()> {
    let errs = crate::validation::qualified_name(key);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(Error::Selector(format!(
            "invalid label key \"{key}\": {}",
            errs.join("; ")
        )))
    }
}

fn check_value(v: &str) -> Result<()> {
    let errs = crate::validation::label_value(v);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(Error::Selector(format!(
            "invalid label value: \"{v}\": at key: {}",
            errs.join("; ")
        )))
    }
}

/// Splits at commas that are not inside parentheses.
fn split_top(s: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(Error::Selector(format!("unexpected ')' in {s:?}")));
                }
                cur.push(c);
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if depth != 0 {
        return Err(Error::Selector(format!("found '', expected: ')' in {s:?}")));
    }
    out.push(cur);
    Ok(out)
}

fn parse_set(s: &str) -> Result<BTreeSet<String>> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .ok_or_else(|| Error::Selector(format!("found '{s}', expected: '('")))?;
    let mut set = BTreeSet::new();
    for v in inner.split(',') {
        let v = v.trim();
        check_value(v)?;
        set.insert(v.to_string());
    }
    Ok(set)
}

impl LabelSelector {
    /// Parses `app=web,tier!=db,env in (a,b),!legacy,release`.
    pub fn parse(s: &str) -> Result<Self> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        for part in split_top(s)? {
            let part = part.trim();
            if part.is_empty() {
                return Err(Error::Selector(format!(
                    "found '', expected: !, identifier, or 'end of string' in {s:?}"
                )));
            }
            let req = if let Some(k) = part.strip_prefix('!') {
                let k = k.trim();
                check_key(k)?;
                Requirement::DoesNotExist(k.to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                let (k, v) = (k.trim(), v.trim());
                check_key(k)?;
                check_value(v)?;
                Requirement::NotIn(k.to_string(), BTreeSet::from([v.to_string()]))
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                let (k, v) = (k.trim(), v.trim());
                check_key(k)?;
                check_value(v)?;
                Requirement::In(k.to_string(), BTreeSet::from([v.to_string()]))
            } else if let Some((k, v)) = part.split_once(" notin ") {
                let k = k.trim();
                check_key(k)?;
                Requirement::NotIn(k.to_string(), parse_set(v)?)
            } else if let Some((k, v)) = part.split_once(" in ") {
                let k = k.trim();
                check_key(k)?;
                Requirement::In(k.to_string(), parse_set(v)?)
            } else if let Some((k, v)) = part.split_once('>') {
                let k = k.trim();
                check_key(k)?;
                let n = v.trim().parse().map_err(|_| {
                    Error::Selector(format!(
                        "for 'Gt', 'Lt' operators, the value must be an integer: {v:?}"
                    ))
                })?;
                Requirement::Gt(k.to_string(), n)
            } else if let Some((k, v)) = part.split_once('<') {
                let k = k.trim();
                check_key(k)?;
                let n = v.trim().parse().map_err(|_| {
                    Error::Selector(format!(
                        "for 'Gt', 'Lt' operators, the value must be an integer: {v:?}"
                    ))
                })?;
                Requirement::Lt(k.to_string(), n)
            } else {
                if part.contains(' ') || part.contains('(') {
                    return Err(Error::Selector(format!(
                        "found '{part}', expected: in, notin, =, ==, !=, gt, lt"
                    )));
                }
                check_key(part)?;
                Requirement::Exists(part.to_string())
            };
            requirements.push(req);
        }
        Ok(LabelSelector { requirements })
    }

    /// Builds an equality selector from a `map[string]string` (RC and Service selectors).
    pub fn from_map(map: &BTreeMap<String, String>) -> Self {
        LabelSelector {
            requirements: map
                .iter()
                .map(|(k, v)| Requirement::In(k.clone(), BTreeSet::from([v.clone()])))
                .collect(),
        }
    }

    /// Builds a selector from a `metav1.LabelSelector` (matchLabels + matchExpressions).
    pub fn from_meta(sel: &MetaLabelSelector) -> Result<Self> {
        let mut s = Self::from_map(&sel.match_labels.clone().unwrap_or_default());
        for e in sel.match_expressions.iter().flatten() {
            let vals: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let r = match e.operator.as_str() {
                "In" => Requirement::In(e.key.clone(), vals),
                "NotIn" => Requirement::NotIn(e.key.clone(), vals),
                "Exists" => Requirement::Exists(e.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
                op => {
                    return Err(Error::Selector(format!(
                        "{op:?} is not a valid label selector operator"
                    )));
                }
            };
            s.requirements.push(r);
        }
        Ok(s)
    }

    /// Whether the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Requirements of the selector.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Matches the `metadata.labels` of a JSON object.
    pub fn matches_object(&self, obj: &Value) -> bool {
        if self.is_empty() {
            return true;
        }
        self.matches(&crate::meta::labels(obj))
    }
}

/// A field selector: `metadata.name=x,status.phase!=Failed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

/// Fields a resource supports in field selectors (besides `metadata.name` and
/// `metadata.namespace`, which every resource supports).
pub fn supported_fields(plural: &str) -> &'static [&'static str] {
    match plural {
        "pods" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "events" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "secrets" => &["type"],
        "namespaces" => &["status.phase"],
        "nodes" => &["spec.unschedulable"],
        "replicationcontrollers" => &["status.replicas"],
        _ => &[],
    }
}

/// The string value of a selectable field of an object (missing fields are `""`).
pub fn field_value(obj: &Value, field: &str) -> String {
    let path = if field == "source" {
        "source.component"
    } else {
        field
    };
    let mut cur = obj;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl FieldSelector {
    /// Parses a field selector and checks its fields against the resource (`plural`).
    pub fn parse(s: &str, plural: &str) -> Result<Self> {
        let mut terms = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        for part in s.split(',') {
            let part = part.trim();
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(Error::Selector(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let k = k.trim();
            if k != "metadata.name"
                && k != "metadata.namespace"
                && !supported_fields(plural).contains(&k)
            {
                return Err(Error::FieldLabelNotSupported(k.to_string()));
            }
            terms.push((k.to_string(), eq, v.trim().to_string()));
        }
        Ok(FieldSelector { terms })
    }

    /// Whether the selector has no terms.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The value required by an equality term on `field`, if any (e.g. `metadata.name`).
    pub fn required_value(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|(k, eq, _)| *eq && k == field)
            .map(|(_, _, v)| v.as_str())
    }

    /// Whether the object satisfies every term.
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms
            .iter()
            .all(|(k, eq, v)| (field_value(obj, k) == *v) == *eq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn equality_and_set_based_label_selectors() {
        let l = labels(&[("app", "web"), ("tier", "fe"), ("env", "prod")]);
        for (sel, want) in [
            ("app=web", true),
            ("app==web,tier=fe", true),
            ("app!=web", false),
            ("env in (prod, staging)", true),
            ("env notin (prod)", false),
            ("tier,!legacy", true),
            ("legacy", false),
            ("app in (web),env notin (dev),tier", true),
            ("", true),
        ] {
            let s = LabelSelector::parse(sel).expect(sel);
            assert_eq!(s.matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn rejects_bad_label_selectors() {
        assert!(LabelSelector::parse("app=we b").is_err());
        assert!(LabelSelector::parse("env in (a").is_err());
        assert!(LabelSelector::parse("a,,b").is_err());
    }

    #[test]
    fn field_selectors_match_paths_and_reject_unknown_fields() {
        let pod = json!({"metadata": {"name": "p", "namespace": "default"},
                         "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let s =
            FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed", "pods").expect("parses");
        assert!(s.matches(&pod));
        let s = FieldSelector::parse("metadata.name=q", "pods").expect("parses");
        assert!(!s.matches(&pod));
        let e = FieldSelector::parse("spec.bogus=1", "pods").expect_err("unsupported");
        assert_eq!(e.to_string(), "field label not supported: spec.bogus");
        let unscheduled = json!({"metadata": {"name": "u"}, "spec": {}});
        assert!(
            FieldSelector::parse("spec.nodeName=", "pods")
                .expect("ok")
                .matches(&unscheduled)
        );
    }
}
