//! The authorizers that read cluster state: RBAC (roles and bindings from the watch caches,
//! compiled into a snapshot rebuilt when one of the four caches moves) and the Node
//! authorizer (a kubelet may read the secrets, configmaps, claims and service accounts of the
//! pods bound to it, and write only its own Node and those pods). Also RBAC's escalation
//! checks on writes of roles and bindings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use xkube_api::k8s::api::rbac::v1::{PolicyRule, RoleRef, Subject};
use xkube_api::rbac::{self, Attributes, UserInfo, rule_allows, subject_matches};
use xkube_api::{ResourceInfo, StatusError};
use xkube_store::Revision;

use crate::auth::{Authorizer, Decision};
use crate::error::{Error, Result};
use crate::watchcache::{CachedObject, WatchCache};

/// The watch caches the authorizers read, by resource plural.
pub type Caches = HashMap<&'static str, Arc<WatchCache>>;

fn cache(caches: &Caches, plural: &str) -> Result<Arc<WatchCache>> {
    caches
        .get(plural)
        .cloned()
        .ok_or_else(|| Error::Config(format!("no watch cache for {plural}")))
}

/// A binding, compiled.
#[derive(Debug, Clone)]
struct Bound {
    /// `RoleBinding` or `ClusterRoleBinding`.
    kind: &'static str,
    name: String,
    namespace: String,
    role_ref: RoleRef,
    subjects: Vec<Subject>,
}

/// Roles and bindings at one set of cache revisions.
#[derive(Debug, Default)]
struct Snapshot {
    key: [Revision; 4],
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    cluster_bindings: Vec<Bound>,
    role_bindings: HashMap<String, Vec<Bound>>,
}

fn rules_of(v: &Value) -> Vec<PolicyRule> {
    serde_json::from_value(v["rules"].clone()).unwrap_or_default()
}

fn bound(kind: &'static str, v: &Value) -> Option<Bound> {
    Some(Bound {
        kind,
        name: xkube_api::meta::name(v).to_string(),
        namespace: xkube_api::meta::namespace(v).to_string(),
        role_ref: serde_json::from_value(v["roleRef"].clone()).ok()?,
        subjects: serde_json::from_value(v["subjects"].clone()).unwrap_or_default(),
    })
}

/// The RBAC authorizer.
pub struct Rbac {
    /// roles, clusterroles, rolebindings, clusterrolebindings.
    caches: [Arc<WatchCache>; 4],
    snap: Mutex<Arc<Snapshot>>,
}

impl Rbac {
    /// An authorizer over the apiserver's RBAC watch caches.
    pub fn new(caches: &Caches) -> Result<Self> {
        Ok(Rbac {
            caches: [
                cache(caches, "roles")?,
                cache(caches, "clusterroles")?,
                cache(caches, "rolebindings")?,
                cache(caches, "clusterrolebindings")?,
            ],
            snap: Mutex::new(Arc::new(Snapshot {
                key: [-1; 4],
                ..Default::default()
            })),
        })
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        let key = self.caches.each_ref().map(|c| c.revision());
        let mut cur = self.snap.lock().unwrap_or_else(|e| e.into_inner());
        if cur.key == key {
            return cur.clone();
        }
        let list = |i: usize| {
            let prefix = self.caches[i].resource.key_prefix(None);
            self.caches[i]
                .list(&prefix)
                .map(|(items, _)| items)
                .unwrap_or_default()
        };
        let mut s = Snapshot {
            key,
            ..Default::default()
        };
        for r in list(0) {
            let id = (
                xkube_api::meta::namespace(&r).to_string(),
                xkube_api::meta::name(&r).to_string(),
            );
            s.roles.insert(id, rules_of(&r));
        }
        for r in list(1) {
            s.cluster_roles
                .insert(xkube_api::meta::name(&r).to_string(), rules_of(&r));
        }
        for b in list(2).iter().filter_map(|b| bound("RoleBinding", b)) {
            s.role_bindings
                .entry(b.namespace.clone())
                .or_default()
                .push(b);
        }
        s.cluster_bindings = list(3)
            .iter()
            .filter_map(|b| bound("ClusterRoleBinding", b))
            .collect();
        let s = Arc::new(s);
        *cur = s.clone();
        s
    }

    /// Calls `f` with every rule that applies to `user` in `namespace` (cluster-wide rules
    /// always; namespaced ones when `namespace` is not empty) until it returns true.
    fn visit(
        &self,
        user: &UserInfo,
        namespace: &str,
        mut f: impl FnMut(&Bound, &PolicyRule) -> bool,
    ) -> bool {
        let s = self.snapshot();
        for b in &s.cluster_bindings {
            if !b.subjects.iter().any(|x| subject_matches(x, user, "")) {
                continue;
            }
            if b.role_ref.kind != "ClusterRole" {
                continue;
            }
            for r in s.cluster_roles.get(&b.role_ref.name).into_iter().flatten() {
                if f(b, r) {
                    return true;
                }
            }
        }
        if namespace.is_empty() {
            return false;
        }
        for b in s.role_bindings.get(namespace).into_iter().flatten() {
            if !b
                .subjects
                .iter()
                .any(|x| subject_matches(x, user, namespace))
            {
                continue;
            }
            let rules = match b.role_ref.kind.as_str() {
                "ClusterRole" => s.cluster_roles.get(&b.role_ref.name),
                "Role" => s
                    .roles
                    .get(&(namespace.to_string(), b.role_ref.name.clone())),
                _ => None,
            };
            for r in rules.into_iter().flatten() {
                if f(b, r) {
                    return true;
                }
            }
        }
        false
    }

    /// RBAC's decision: Allow with Kubernetes' reason, else no opinion.
    pub fn authorize(&self, user: &UserInfo, a: &Attributes) -> Decision {
        let mut by = None;
        let ns = if a.resource_request {
            a.namespace.as_str()
        } else {
            ""
        };
        if self.visit(user, ns, |b, r| {
            let ok = rule_allows(r, a);
            if ok {
                by = Some(format!(
                    "RBAC: allowed by {} \"{}\" of {} \"{}\" to {}",
                    b.kind,
                    b.name,
                    b.role_ref.kind,
                    b.role_ref.name,
                    describe_user(user)
                ));
            }
            ok
        }) {
            return Decision::Allow(by.unwrap_or_default());
        }
        Decision::NoOpinion(String::new())
    }

    /// Every rule that applies to `user` in `namespace` (SelfSubjectRulesReview, escalation).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        let mut out: Vec<PolicyRule> = Vec::new();
        self.visit(user, namespace, |_, r| {
            if !out.contains(r) {
                out.push(r.clone());
            }
            false
        });
        out
    }

    /// The rules of the role a binding in `namespace` refers to.
    fn role_rules(&self, namespace: &str, r: &RoleRef) -> Option<Vec<PolicyRule>> {
        let s = self.snapshot();
        match r.kind.as_str() {
            "ClusterRole" => s.cluster_roles.get(&r.name).cloned(),
            "Role" => s
                .roles
                .get(&(namespace.to_string(), r.name.clone()))
                .cloned(),
            _ => None,
        }
    }
}

fn describe_user(u: &UserInfo) -> String {
    match u.name.strip_prefix("system:serviceaccount:") {
        Some(sa) => format!(
            "ServiceAccount \"{}\"",
            sa.rsplit_once(':')
                .map_or(sa.to_string(), |(ns, n)| format!("{n}/{ns}"))
        ),
        None => format!("User \"{}\"", u.name),
    }
}

fn groups_list(u: &UserInfo) -> String {
    u.groups
        .iter()
        .map(|g| format!("{g:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// RBAC's escalation prevention on a create or update of a role or binding by `user`:
/// a role may only hold permissions its writer holds (or the writer has `escalate` on it),
/// a binding may only grant a role whose permissions the writer holds (or the writer has
/// `bind` on it). 403 with Kubernetes' message otherwise.
pub fn check_escalation(
    authz: &Authorizer,
    user: &UserInfo,
    res: &ResourceInfo,
    namespace: &str,
    obj: &Value,
) -> std::result::Result<(), StatusError> {
    if res.group != rbac::GROUP || user.in_group("system:masters") {
        return Ok(());
    }
    let name = xkube_api::meta::name(obj);
    let ns = if res.namespaced { namespace } else { "" };
    let forbidden = |reason: String| StatusError::forbidden(res.group, res.plural, name, &reason);
    let Some(rb) = authz.rbac() else {
        // Without RBAC the policy objects are inert: nothing to escalate through.
        return Ok(());
    };
    // What the write grants, and the verb that allows granting it without holding it.
    let (verb_attrs, requested) = match res.plural {
        "roles" | "clusterroles" => (
            Attributes::resource("escalate", rbac::GROUP, res.plural, ns, name),
            Some(rules_of(obj)),
        ),
        "rolebindings" | "clusterrolebindings" => {
            let Ok(role_ref) = serde_json::from_value::<RoleRef>(obj["roleRef"].clone()) else {
                // Validation answers a malformed roleRef with 422 later.
                return Ok(());
            };
            let plural = if role_ref.kind == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            let bind = Attributes::resource("bind", rbac::GROUP, plural, ns, &role_ref.name);
            let rules = rb.role_rules(ns, &role_ref);
            if rules.is_none() && !authz.decide(user, &bind).0 {
                return Err(forbidden(format!(
                    "{}: {plural}.rbac.authorization.k8s.io \"{}\" not found",
                    grant_message(user),
                    role_ref.name
                )));
            }
            (bind, rules)
        }
        _ => return Ok(()),
    };
    if authz.decide(user, &verb_attrs).0 {
        return Ok(());
    }
    let missing = rbac::uncovered(&rb.rules_for(user, ns), &requested.unwrap_or_default());
    if missing.is_empty() {
        return Ok(());
    }
    Err(forbidden(format!(
        "{}:\n{}",
        grant_message(user),
        missing.join("\n")
    )))
}

/// The start of RBAC's escalation message.
fn grant_message(user: &UserInfo) -> String {
    format!(
        "user \"{}\" (groups=[{}]) is attempting to grant RBAC permissions not currently held",
        user.name,
        groups_list(user)
    )
}

// ---------------------------------------------------------------------------------------------
// Node authorizer.

/// The Node authorizer (Kubernetes' `Node` mode, with NodeRestriction's write limits).
pub struct NodeAuthorizer {
    pods: Arc<WatchCache>,
    service_accounts: Arc<WatchCache>,
    secrets: Arc<WatchCache>,
    rules: Vec<PolicyRule>,
}

/// Names a pod refers to: secrets, configmaps, claims and its service account.
#[derive(Debug, Default)]
struct PodRefs {
    secrets: Vec<String>,
    configmaps: Vec<String>,
    claims: Vec<String>,
    service_account: String,
}

fn pod_refs(pod: &Value) -> PodRefs {
    let spec = &pod["spec"];
    let mut r = PodRefs {
        service_account: spec["serviceAccountName"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string(),
        ..Default::default()
    };
    let push = |list: &mut Vec<String>, v: &Value| {
        if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
            list.push(s.to_string());
        }
    };
    for v in spec["volumes"].as_array().into_iter().flatten() {
        push(&mut r.secrets, &v["secret"]["secretName"]);
        push(&mut r.configmaps, &v["configMap"]["name"]);
        push(&mut r.claims, &v["persistentVolumeClaim"]["claimName"]);
        for src in v["projected"]["sources"].as_array().into_iter().flatten() {
            push(&mut r.secrets, &src["secret"]["name"]);
            push(&mut r.configmaps, &src["configMap"]["name"]);
        }
    }
    for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
        push(&mut r.secrets, &s["name"]);
    }
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        for c in spec[key].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                push(&mut r.secrets, &e["valueFrom"]["secretKeyRef"]["name"]);
                push(
                    &mut r.configmaps,
                    &e["valueFrom"]["configMapKeyRef"]["name"],
                );
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                push(&mut r.secrets, &e["secretRef"]["name"]);
                push(&mut r.configmaps, &e["configMapRef"]["name"]);
            }
        }
    }
    r
}

impl NodeAuthorizer {
    /// An authorizer over the pods and service accounts watch caches.
    pub fn new(caches: &Caches) -> Result<Self> {
        Ok(NodeAuthorizer {
            pods: cache(caches, "pods")?,
            service_accounts: cache(caches, "serviceaccounts")?,
            secrets: cache(caches, "secrets")?,
            rules: rbac::node_rules(),
        })
    }

    /// The pods of `namespace` bound to `node`.
    fn pods_on(&self, node: &str, namespace: &str) -> Vec<Arc<CachedObject>> {
        let prefix = format!("/registry/pods/{namespace}/");
        self.pods
            .list(&prefix)
            .map(|(items, _)| items)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p["spec"]["nodeName"].as_str() == Some(node))
            .collect()
    }

    fn pod_on(&self, node: &str, namespace: &str, name: &str) -> bool {
        self.pods
            .get(&format!("/registry/pods/{namespace}/{name}"))
            .is_some_and(|p| p["spec"]["nodeName"].as_str() == Some(node))
    }

    /// Whether a pod on `node` refers to the object (`resource` in `namespace`).
    fn related(&self, node: &str, resource: &str, namespace: &str, name: &str) -> bool {
        for pod in self.pods_on(node, namespace) {
            let refs = pod_refs(&pod);
            let hit = match resource {
                "secrets" => {
                    refs.secrets.iter().any(|s| s == name)
                        || self.token_secret_of(namespace, &refs.service_account, name)
                }
                "configmaps" => refs.configmaps.iter().any(|s| s == name),
                "persistentvolumeclaims" => refs.claims.iter().any(|s| s == name),
                "serviceaccounts" => refs.service_account == name,
                _ => false,
            };
            if hit {
                return true;
            }
        }
        false
    }

    /// Whether `secret` is a token secret of the service account that the account lists
    /// (the legacy token that the kubelet mounts for the account's pods); other secrets the
    /// account lists are not the node's to read.
    fn token_secret_of(&self, namespace: &str, account: &str, secret: &str) -> bool {
        let listed = self
            .service_accounts
            .get(&format!("/registry/serviceaccounts/{namespace}/{account}"))
            .is_some_and(|sa| {
                sa["secrets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["name"].as_str() == Some(secret))
            });
        listed
            && self
                .secrets
                .get(&format!("/registry/secrets/{namespace}/{secret}"))
                .is_some_and(|s| {
                    s["type"] == "kubernetes.io/service-account-token"
                        && s["metadata"]["annotations"]["kubernetes.io/service-account.name"]
                            == account
                })
    }

    /// The Node authorizer's decision for `user` (no opinion for anyone but kubelets).
    pub fn authorize(&self, user: &UserInfo, a: &Attributes) -> Decision {
        let Some(node) = user.node_name() else {
            return Decision::NoOpinion(String::new());
        };
        if !a.resource_request {
            return Decision::NoOpinion(String::new());
        }
        let unrelated = || {
            Decision::NoOpinion(format!(
                "no relationship found between node '{node}' and this object"
            ))
        };
        let allow = || Decision::Allow(String::new());
        match (
            a.group.as_str(),
            a.resource.as_str(),
            a.subresource.as_str(),
        ) {
            ("", "secrets" | "configmaps" | "persistentvolumeclaims", "") => {
                if a.verb == "get" && self.related(node, &a.resource, &a.namespace, &a.name) {
                    allow()
                } else {
                    unrelated()
                }
            }
            ("", "serviceaccounts", sub) => {
                let verb_ok = matches!((sub, a.verb.as_str()), ("", "get") | ("token", "create"));
                if verb_ok && self.related(node, "serviceaccounts", &a.namespace, &a.name) {
                    allow()
                } else {
                    unrelated()
                }
            }
            ("", "nodes", _) if !a.readonly() && a.verb != "create" && a.name != node => {
                Decision::NoOpinion(format!("node '{node}' cannot modify node '{}'", a.name))
            }
            ("", "pods", "status") | ("", "pods", "")
                if matches!(a.verb.as_str(), "update" | "patch" | "delete")
                    && !self.pod_on(node, &a.namespace, &a.name) =>
            {
                Decision::NoOpinion(format!("node '{node}' can only modify pods bound to it"))
            }
            ("coordination.k8s.io", "leases", "")
                if a.namespace != "kube-node-lease" || !(a.name.is_empty() || a.name == node) =>
            {
                Decision::NoOpinion(format!(
                    "node '{node}' can only access its own lease in kube-node-lease"
                ))
            }
            _ if self.rules.iter().any(|r| rule_allows(r, a)) => allow(),
            _ => Decision::NoOpinion(String::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_refs_cover_volumes_env_and_pull_secrets() {
        let pod = json!({"spec": {
            "serviceAccountName": "bot",
            "volumes": [{"name": "a", "secret": {"secretName": "s1"}},
                        {"name": "b", "configMap": {"name": "c1"}},
                        {"name": "c", "persistentVolumeClaim": {"claimName": "pvc"}},
                        {"name": "d", "projected": {"sources": [{"secret": {"name": "s2"}}, {"configMap": {"name": "c2"}}]}}],
            "imagePullSecrets": [{"name": "pull"}],
            "containers": [{"name": "x",
                "env": [{"name": "E", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "k"}}},
                        {"name": "F", "valueFrom": {"configMapKeyRef": {"name": "c3", "key": "k"}}}],
                "envFrom": [{"secretRef": {"name": "s4"}}, {"configMapRef": {"name": "c4"}}]}]}});
        let r = pod_refs(&pod);
        assert_eq!(r.secrets, ["s1", "s2", "pull", "s3", "s4"]);
        assert_eq!(r.configmaps, ["c1", "c2", "c3", "c4"]);
        assert_eq!(r.claims, ["pvc"]);
        assert_eq!(r.service_account, "bot");
        assert_eq!(pod_refs(&json!({"spec": {}})).service_account, "default");
    }
}
