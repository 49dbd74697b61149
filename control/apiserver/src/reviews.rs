//! The create-only review APIs, answered from the request without storing anything:
//! `authentication.k8s.io/v1` TokenReview and SelfSubjectReview (`kubectl auth whoami`),
//! `authorization.k8s.io/v1` SubjectAccessReview, LocalSubjectAccessReview,
//! SelfSubjectAccessReview (`kubectl auth can-i`) and SelfSubjectRulesReview
//! (`kubectl auth can-i --list`).

use std::collections::BTreeMap;

use serde_json::{Value, json};
use xkube_api::rbac::{Attributes, UserInfo};
use xkube_api::validation::{ErrorList, FieldError};
use xkube_api::{ResourceInfo, StatusError};

use crate::http::App;

fn user_json(u: &UserInfo) -> Value {
    json!({"username": u.name, "uid": u.uid, "groups": u.groups})
}

/// The attributes of a review's `spec.resourceAttributes` / `spec.nonResourceAttributes`.
fn review_attributes(spec: &Value, res: &ResourceInfo) -> Result<Attributes, StatusError> {
    let ra = &spec["resourceAttributes"];
    let nra = &spec["nonResourceAttributes"];
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    match (ra.is_object(), nra.is_object()) {
        (true, false) => Ok(Attributes {
            verb: s(&ra["verb"]),
            resource_request: true,
            group: s(&ra["group"]),
            resource: s(&ra["resource"]),
            subresource: s(&ra["subresource"]),
            namespace: s(&ra["namespace"]),
            name: s(&ra["name"]),
            path: String::new(),
        }),
        (false, true) => Ok(Attributes {
            verb: s(&nra["verb"]),
            path: s(&nra["path"]),
            ..Default::default()
        }),
        (both, _) => {
            let mut errs = ErrorList::default();
            errs.push(if both {
                FieldError::invalid_raw(
                    "spec.resourceAttributes",
                    "{...}".into(),
                    "cannot be specified in combination with nonResourceAttributes",
                )
            } else {
                FieldError::invalid_raw(
                    "spec.resourceAttributes",
                    "null".into(),
                    "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                )
            });
            Err(StatusError::invalid(res.group, res.kind, "", &errs))
        }
    }
}

fn with_status(mut body: Value, res: &ResourceInfo, status: Value) -> Value {
    body["apiVersion"] = json!(res.api_version());
    body["kind"] = json!(res.kind);
    if !body["metadata"].is_object() {
        body["metadata"] = json!({});
    }
    body["metadata"]["creationTimestamp"] = Value::Null;
    body["status"] = status;
    body
}

/// Answers a POST of a review; `body` is the decoded request object.
pub async fn create(
    app: &App,
    res: &'static ResourceInfo,
    namespace: Option<&str>,
    user: &UserInfo,
    body: Value,
) -> Result<Value, StatusError> {
    if !body.is_object() {
        return Err(StatusError::bad_request(
            "the request body must be a JSON or YAML object",
        ));
    }
    let spec = body["spec"].clone();
    let status = match res.plural {
        "selfsubjectreviews" => json!({"userInfo": user_json(user)}),
        "tokenreviews" => {
            let token = spec["token"].as_str().unwrap_or("");
            match crate::http::authenticate_token(app, token).await {
                Some(u) => json!({"authenticated": true, "user": user_json(&u),
                                  "audiences": spec["audiences"].as_array().cloned().unwrap_or_default()}),
                None => json!({"authenticated": false, "user": {},
                               "error": "invalid bearer token"}),
            }
        }
        "subjectaccessreviews" | "localsubjectaccessreviews" => {
            let attrs = review_attributes(&spec, res)?;
            let name = spec["user"].as_str().unwrap_or("");
            let groups: Vec<String> = spec["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect();
            if name.is_empty() && groups.is_empty() {
                let mut errs = ErrorList::default();
                errs.push(FieldError::invalid_raw(
                    "spec.user",
                    "\"\"".into(),
                    "at least one of user or group must be specified",
                ));
                return Err(StatusError::invalid(res.group, res.kind, "", &errs));
            }
            if res.plural == "localsubjectaccessreviews" && !attrs.resource_request {
                let mut errs = ErrorList::default();
                errs.push(FieldError::invalid_raw(
                    "spec.nonResourceAttributes",
                    "{...}".into(),
                    "disallowed on this kind of request",
                ));
                return Err(StatusError::invalid(res.group, res.kind, "", &errs));
            }
            if res.plural == "localsubjectaccessreviews"
                && Some(attrs.namespace.as_str()) != namespace
            {
                let mut errs = ErrorList::default();
                errs.push(FieldError::invalid(
                    "spec.resourceAttributes.namespace",
                    attrs.namespace.as_str(),
                    "must match metadata.namespace",
                ));
                return Err(StatusError::invalid(res.group, res.kind, "", &errs));
            }
            // The groups are the reviewed user's as given (no system:authenticated added).
            let subject = UserInfo {
                name: name.to_string(),
                uid: spec["uid"].as_str().unwrap_or("").to_string(),
                groups,
            };
            decision(app, &subject, &attrs)
        }
        "selfsubjectaccessreviews" => {
            let attrs = review_attributes(&spec, res)?;
            decision(app, user, &attrs)
        }
        "selfsubjectrulesreviews" => {
            let ns = spec["namespace"].as_str().unwrap_or("");
            rules_status(app, user, ns)
        }
        _ => return Err(StatusError::method_not_allowed()),
    };
    Ok(with_status(body, res, status))
}

fn decision(app: &App, subject: &UserInfo, attrs: &Attributes) -> Value {
    let (allowed, reason) = app.authz.decide(subject, attrs);
    let mut st = json!({"allowed": allowed});
    if !reason.is_empty() {
        st["reason"] = json!(reason);
    }
    st
}

/// The rules RBAC gives `user` in `namespace`, grouped as Kubernetes lists them.
fn rules_status(app: &App, user: &UserInfo, ns: &str) -> Value {
    let Some(rbac) = app.authz.rbac() else {
        return json!({"resourceRules": [], "nonResourceRules": [], "incomplete": true,
                      "evaluationError": "the RBAC authorizer is not enabled"});
    };
    let mut resource_rules = Vec::new();
    let mut non_resource: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rbac.rules_for(user, ns) {
        match &r.non_resource_urls {
            Some(urls) if !urls.is_empty() => {
                let key = r.verbs.join(",");
                non_resource
                    .entry(key)
                    .or_default()
                    .extend(urls.iter().cloned());
            }
            _ => {
                let mut v = json!({"verbs": r.verbs, "apiGroups": r.api_groups.clone().unwrap_or_default(),
                                   "resources": r.resources.clone().unwrap_or_default()});
                if let Some(n) = r.resource_names.as_ref().filter(|n| !n.is_empty()) {
                    v["resourceNames"] = json!(n);
                }
                resource_rules.push(v);
            }
        }
    }
    let non_resource_rules: Vec<Value> = non_resource
        .into_iter()
        .map(|(verbs, urls)| json!({"verbs": verbs.split(',').collect::<Vec<_>>(), "nonResourceURLs": urls}))
        .collect();
    json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules,
           "incomplete": !user.in_group("system:masters") && user.node_name().is_some()})
}
