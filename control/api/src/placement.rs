//! Node placement with Kubernetes' semantics: whether a node matches a pod's `nodeSelector`
//! and required node affinity, and whether tolerations tolerate a node's taints.
//!
//! Policy stays with the callers: which taint effects count (the scheduler filters on
//! NoSchedule/NoExecute, the DaemonSet controller also asks about NoExecute alone), extra
//! tolerations, and `spec.nodeName`.

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};

/// The only field a `matchFields` requirement may name.
pub const NODE_NAME_FIELD: &str = "metadata.name";

/// Whether `value` (a node's label or field value, `None` when absent) satisfies `r`:
/// `In`, `NotIn`, `Exists`, `DoesNotExist`, and `Gt`/`Lt` comparing integers with the first
/// value. Unknown operators match nothing.
pub fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let vals = r.values.as_deref().unwrap_or_default();
    let listed = |v: &str| vals.iter().any(|x| x == v);
    match r.operator.as_str() {
        "In" => value.is_some_and(listed),
        "NotIn" => value.is_none_or(|v| !listed(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                vals.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if op == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

/// Whether `node` matches a node selector term: every `matchExpressions` requirement against
/// its labels and every `matchFields` requirement (on `metadata.name` only) against its name.
/// A term without requirements matches nothing.
pub fn term_matches(t: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    let exprs = t.match_expressions.as_deref().unwrap_or_default();
    let fields = t.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let name = node.metadata.name.as_deref().unwrap_or("");
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields
            .iter()
            .all(|r| r.key == NODE_NAME_FIELD && requirement_matches(r, Some(name)))
}

/// Whether `node` matches any term of `sel` (terms are ORed).
pub fn node_selector_matches(sel: &NodeSelector, node: &Node) -> bool {
    sel.node_selector_terms
        .iter()
        .any(|t| term_matches(t, node))
}

/// Whether `node` matches the pod spec's `nodeSelector` (every pair among the node's labels)
/// and its required node affinity (Kubernetes' `PodMatchesNodeSelectorAndAffinityTerms`).
/// `spec.nodeName` is not looked at.
pub fn matches_node_selector_and_affinity(spec: &PodSpec, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    if let Some(sel) = &spec.node_selector
        && !sel
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    required.is_none_or(|r| node_selector_matches(r, node))
}

/// Whether `tol` tolerates `taint` (Kubernetes' `ToleratesTaint`): an empty effect matches
/// every effect, an empty key (with `Exists`) every key; `Exists` matches any value, `Equal`
/// (the default) the same value. Unknown operators tolerate nothing.
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = tol.effect.as_deref().filter(|e| !e.is_empty())
        && e != taint.effect
    {
        return false;
    }
    let key = tol.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match tol.operator.as_deref().unwrap_or("") {
        "Exists" => true,
        "Equal" | "" => tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

/// Whether any of `tols` tolerates `taint`.
pub fn tolerated(tols: &[Toleration], taint: &Taint) -> bool {
    tols.iter().any(|t| tolerates(t, taint))
}

/// The taints of a node (empty when none).
pub fn node_taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

/// The first of `taints` that `counts` selects and no toleration tolerates (Kubernetes'
/// `FindMatchingUntoleratedTaint`).
pub fn find_untolerated_taint<'a>(
    taints: &'a [Taint],
    tols: &[Toleration],
    counts: impl Fn(&Taint) -> bool,
) -> Option<&'a Taint> {
    taints.iter().find(|t| counts(t) && !tolerated(tols, t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn node(v: Value) -> Node {
        serde_json::from_value(v).expect("node literal")
    }

    fn spec(v: Value) -> PodSpec {
        serde_json::from_value(v).expect("pod spec literal")
    }

    fn req(op: &str, vals: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: "k".into(),
            operator: op.into(),
            values: Some(vals.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            ..Taint::default()
        }
    }

    fn tol(v: Value) -> Toleration {
        serde_json::from_value(v).expect("toleration literal")
    }

    #[test]
    fn requirement_operators_follow_kubernetes() {
        assert!(requirement_matches(&req("In", &["a", "b"]), Some("b")));
        assert!(!requirement_matches(&req("In", &["a"]), Some("b")));
        assert!(!requirement_matches(&req("In", &["a"]), None));
        assert!(requirement_matches(&req("NotIn", &["a"]), Some("b")));
        assert!(requirement_matches(&req("NotIn", &["a"]), None));
        assert!(!requirement_matches(&req("NotIn", &["a"]), Some("a")));
        assert!(requirement_matches(&req("Exists", &[]), Some("")));
        assert!(!requirement_matches(&req("Exists", &[]), None));
        assert!(requirement_matches(&req("DoesNotExist", &[]), None));
        assert!(!requirement_matches(&req("DoesNotExist", &[]), Some("x")));
        assert!(requirement_matches(&req("Gt", &["4"]), Some("5")));
        assert!(!requirement_matches(&req("Gt", &["5"]), Some("5")));
        assert!(requirement_matches(&req("Lt", &["5"]), Some("-1")));
        assert!(!requirement_matches(&req("Lt", &["4"]), Some("5")));
        assert!(
            !requirement_matches(&req("Gt", &["4"]), Some("five")),
            "not an integer"
        );
        assert!(!requirement_matches(&req("Gt", &[]), Some("5")), "no bound");
        assert!(!requirement_matches(&req("Gt", &["4"]), None));
        assert!(!requirement_matches(&req("Near", &["a"]), Some("a")));
    }

    #[test]
    fn terms_and_expressions_fields_and_an_empty_term_match_nothing() {
        let n = node(json!({"metadata": {"name": "n1", "labels": {"zone": "z1", "gen": "5"}}}));
        let term = |v: Value| -> NodeSelectorTerm { serde_json::from_value(v).expect("term") };
        assert!(term_matches(
            &term(json!({"matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["z1"]},
                {"key": "gen", "operator": "Gt", "values": ["4"]}]})),
            &n
        ));
        assert!(
            !term_matches(
                &term(json!({"matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["z1"]},
                {"key": "gpu", "operator": "Exists"}]})),
                &n
            ),
            "requirements of a term are ANDed"
        );
        assert!(term_matches(
            &term(json!({"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": ["n1"]}]})),
            &n
        ));
        assert!(!term_matches(
            &term(json!({"matchFields": [
                {"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]})),
            &n
        ));
        assert!(
            !term_matches(
                &term(json!({"matchFields": [
                {"key": "metadata.uid", "operator": "Exists"}]})),
                &n
            ),
            "only metadata.name is a field"
        );
        assert!(!term_matches(&term(json!({})), &n), "empty term");
        let sel: NodeSelector = serde_json::from_value(json!({"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z2"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}))
        .expect("selector");
        assert!(node_selector_matches(&sel, &n), "terms are ORed");
    }

    #[test]
    fn node_selector_and_required_affinity_must_both_match() {
        let n = node(json!({"metadata": {"name": "n1", "labels": {"disk": "ssd", "zone": "z1"}}}));
        assert!(matches_node_selector_and_affinity(
            &spec(json!({"containers": []})),
            &n
        ));
        assert!(matches_node_selector_and_affinity(
            &spec(json!({"containers": [], "nodeSelector": {"disk": "ssd"}})),
            &n
        ));
        assert!(!matches_node_selector_and_affinity(
            &spec(json!({"containers": [], "nodeSelector": {"disk": "ssd", "gpu": "yes"}})),
            &n
        ));
        let affine = |zone: &str| {
            json!({"containers": [], "nodeSelector": {"disk": "ssd"},
                   "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                       {"nodeSelectorTerms": [{"matchExpressions": [
                           {"key": "zone", "operator": "In", "values": [zone]}]}]}}}})
        };
        assert!(matches_node_selector_and_affinity(&spec(affine("z1")), &n));
        assert!(!matches_node_selector_and_affinity(&spec(affine("z2")), &n));
        let unlabelled = node(json!({"metadata": {"name": "n2"}}));
        assert!(!matches_node_selector_and_affinity(
            &spec(affine("z1")),
            &unlabelled
        ));
        assert!(
            matches_node_selector_and_affinity(
                &spec(json!({"containers": [], "nodeName": "elsewhere"})),
                &n
            ),
            "nodeName is the caller's business"
        );
    }

    #[test]
    fn tolerations_match_key_value_and_effect() {
        let t = taint("dedicated", Some("db"), "NoSchedule");
        assert!(tolerates(
            &tol(json!({"key": "dedicated", "operator": "Equal", "value": "db"})),
            &t
        ));
        assert!(
            tolerates(&tol(json!({"key": "dedicated", "value": "db"})), &t),
            "Equal is the default"
        );
        assert!(!tolerates(
            &tol(json!({"key": "dedicated", "operator": "Equal", "value": "web"})),
            &t
        ));
        assert!(tolerates(
            &tol(json!({"key": "dedicated", "operator": "Exists"})),
            &t
        ));
        assert!(!tolerates(
            &tol(json!({"key": "other", "operator": "Exists"})),
            &t
        ));
        assert!(
            tolerates(&tol(json!({"operator": "Exists"})), &t),
            "empty key with Exists tolerates everything"
        );
        assert!(tolerates(
            &tol(json!({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"})),
            &t
        ));
        assert!(!tolerates(
            &tol(json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"})),
            &t
        ));
        assert!(
            tolerates(
                &tol(json!({"key": "dedicated", "operator": "Exists", "effect": ""})),
                &t
            ),
            "an empty effect matches all effects"
        );
        assert!(!tolerates(
            &tol(json!({"key": "dedicated", "operator": "Near", "value": "db"})),
            &t
        ));
        let valueless = taint("node.kubernetes.io/unreachable", None, "NoExecute");
        assert!(tolerates(
            &tol(json!({"key": "node.kubernetes.io/unreachable", "operator": "Equal"})),
            &valueless
        ));
    }

    #[test]
    fn untolerated_taints_are_found_among_the_counted_effects() {
        let n = node(json!({"metadata": {"name": "n1"}, "spec": {"taints": [
            {"key": "soft", "effect": "PreferNoSchedule"},
            {"key": "a", "value": "1", "effect": "NoSchedule"},
            {"key": "b", "effect": "NoExecute"}]}}));
        let hard = |t: &Taint| t.effect == "NoSchedule" || t.effect == "NoExecute";
        let tols = [tol(json!({"key": "a", "value": "1"}))];
        assert_eq!(
            find_untolerated_taint(node_taints(&n), &tols, hard).map(|t| t.key.as_str()),
            Some("b")
        );
        assert_eq!(
            find_untolerated_taint(node_taints(&n), &[], hard).map(|t| t.key.as_str()),
            Some("a"),
            "the first one"
        );
        assert!(
            find_untolerated_taint(node_taints(&n), &tols, |t| t.effect == "NoSchedule").is_none()
        );
        assert!(find_untolerated_taint(node_taints(&node(json!({}))), &[], hard).is_none());
    }
}
