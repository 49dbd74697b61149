//! Role-based access control without I/O: who a request is ([`UserInfo`]), what it wants
//! ([`Attributes`]), whether a `rbac.authorization.k8s.io/v1` rule allows it, whether one rule
//! set covers another (RBAC's escalation check), whether a binding's subject names a user,
//! and Kubernetes' bootstrap roles and bindings ([`bootstrap`]).

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::validation::{self, ErrorList, FieldError};

/// The API group of RBAC.
pub const GROUP: &str = "rbac.authorization.k8s.io";

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    /// User name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
}

impl UserInfo {
    /// An authenticated user: `system:authenticated` is added to `groups`.
    pub fn new(name: &str, uid: &str, mut groups: Vec<String>) -> Self {
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        UserInfo {
            name: name.to_string(),
            uid: uid.to_string(),
            groups,
        }
    }

    /// The anonymous user.
    pub fn anonymous() -> Self {
        UserInfo {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
        }
    }

    /// The user of the unauthenticated local port.
    pub fn unsecured() -> Self {
        UserInfo::new("system:unsecured", "", vec!["system:masters".into()])
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The node name of a kubelet's identity (`system:node:<name>` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        self.name
            .strip_prefix("system:node:")
            .filter(|n| !n.is_empty() && self.in_group("system:nodes"))
    }
}

/// What a request wants to do, for authorization.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// Verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, ...).
    pub verb: String,
    /// Whether this is a resource request (else a non-resource path).
    pub resource_request: bool,
    /// API group.
    pub group: String,
    /// Resource plural.
    pub resource: String,
    /// Subresource.
    pub subresource: String,
    /// Namespace.
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// Path (non-resource requests).
    pub path: String,
}

impl Attributes {
    /// A resource request.
    pub fn resource(verb: &str, group: &str, resource: &str, namespace: &str, name: &str) -> Self {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Attributes {
            verb: verb.into(),
            resource_request: true,
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
            path: String::new(),
        }
    }

    /// Whether the verb only reads.
    pub fn readonly(&self) -> bool {
        matches!(self.verb.as_str(), "get" | "list" | "watch")
    }

    /// `pods` or `pods/log`.
    pub fn combined_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }

    /// Kubernetes' forbidden message without the reason: `User "x" cannot get resource
    /// "pods" in API group "" in the namespace "default"`.
    pub fn forbidden_message(&self, user: &str) -> String {
        if self.resource_request {
            let mut s = format!(
                "User \"{user}\" cannot {} resource \"{}\" in API group \"{}\"",
                self.verb,
                self.combined_resource(),
                self.group
            );
            if self.namespace.is_empty() {
                s.push_str(" at the cluster scope");
            } else {
                s.push_str(&format!(" in the namespace \"{}\"", self.namespace));
            }
            s
        } else {
            format!(
                "User \"{user}\" cannot {} path \"{}\"",
                self.verb, self.path
            )
        }
    }
}

fn contains_or_star(list: &[String], v: &str) -> bool {
    list.iter().any(|x| x == "*" || x == v)
}

/// Whether `rule` allows `a` (Kubernetes' `RuleAllows`).
pub fn rule_allows(rule: &PolicyRule, a: &Attributes) -> bool {
    if !contains_or_star(&rule.verbs, &a.verb) {
        return false;
    }
    if !a.resource_request {
        return rule
            .non_resource_urls
            .iter()
            .flatten()
            .any(|u| url_matches(u, &a.path));
    }
    let combined = a.combined_resource();
    let resource_ok = rule.resources.iter().flatten().any(|r| {
        r == "*"
            || *r == combined
            || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(&a.subresource))
    });
    let names = rule.resource_names.as_deref().unwrap_or_default();
    contains_or_star(rule.api_groups.as_deref().unwrap_or_default(), &a.group)
        && resource_ok
        && (names.is_empty() || names.contains(&a.name))
}

fn url_matches(rule_url: &str, path: &str) -> bool {
    rule_url == "*"
        || rule_url == path
        || rule_url
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

/// Whether a binding's subject names the user; `binding_ns` is the namespace of a
/// RoleBinding (ServiceAccount subjects without a namespace default to it).
pub fn subject_matches(s: &Subject, user: &UserInfo, binding_ns: &str) -> bool {
    match s.kind.as_str() {
        "User" => s.name == user.name,
        "Group" => user.in_group(&s.name),
        "ServiceAccount" => {
            let ns = s
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            !ns.is_empty() && user.name == format!("system:serviceaccount:{ns}:{}", s.name)
        }
        _ => false,
    }
}

/// One atomic permission of a rule (one verb on one resource/name, or one URL).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Atom<'a> {
    verb: &'a str,
    group: Option<&'a str>,
    resource: Option<&'a str>,
    name: Option<&'a str>,
    url: Option<&'a str>,
}

fn breakdown(rule: &PolicyRule) -> Vec<Atom<'_>> {
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                let names = rule.resource_names.as_deref().unwrap_or_default();
                if names.is_empty() {
                    out.push(Atom {
                        verb,
                        group: Some(group),
                        resource: Some(resource),
                        name: None,
                        url: None,
                    });
                }
                for name in names {
                    out.push(Atom {
                        verb,
                        group: Some(group),
                        resource: Some(resource),
                        name: Some(name),
                        url: None,
                    });
                }
            }
        }
        for url in rule.non_resource_urls.iter().flatten() {
            out.push(Atom {
                verb,
                group: None,
                resource: None,
                name: None,
                url: Some(url),
            });
        }
    }
    out
}

/// Whether an owner rule covers an atom: `*` in the atom needs `*` in the owner.
fn rule_covers(owner: &PolicyRule, atom: &Atom<'_>) -> bool {
    if !contains_or_star(&owner.verbs, atom.verb) {
        return false;
    }
    if let Some(url) = atom.url {
        return owner.non_resource_urls.iter().flatten().any(|u| {
            u == "*" || u == url || u.strip_suffix('*').is_some_and(|p| url.starts_with(p))
        });
    }
    let (Some(group), Some(resource)) = (atom.group, atom.resource) else {
        return false;
    };
    if !contains_or_star(owner.api_groups.as_deref().unwrap_or_default(), group) {
        return false;
    }
    let resource_ok = owner.resources.iter().flatten().any(|r| {
        r == "*"
            || r == resource
            || r.strip_prefix("*/").is_some_and(|sub| {
                resource
                    .split_once('/')
                    .is_some_and(|(_, rsub)| rsub == sub)
            })
    });
    let names = owner.resource_names.as_deref().unwrap_or_default();
    resource_ok && (names.is_empty() || atom.name.is_some_and(|n| names.iter().any(|x| x == n)))
}

/// The rules of `requested` that `owner` does not cover, as Kubernetes prints them
/// (`{APIGroups:[""], Resources:["pods"], Verbs:["create"]}`); empty when covered.
pub fn uncovered(owner: &[PolicyRule], requested: &[PolicyRule]) -> Vec<String> {
    let mut missing = Vec::new();
    for rule in requested {
        for atom in breakdown(rule) {
            if !owner.iter().any(|o| rule_covers(o, &atom)) {
                let q = |s: &str| format!("{s:?}");
                let line = match atom.url {
                    Some(url) => {
                        format!("{{NonResourceURLs:[{}], Verbs:[{}]}}", q(url), q(atom.verb))
                    }
                    None => {
                        let mut l = format!(
                            "{{APIGroups:[{}], Resources:[{}]",
                            q(atom.group.unwrap_or("")),
                            q(atom.resource.unwrap_or(""))
                        );
                        if let Some(n) = atom.name {
                            l.push_str(&format!(", ResourceNames:[{}]", q(n)));
                        }
                        l.push_str(&format!(", Verbs:[{}]}}", q(atom.verb)));
                        l
                    }
                };
                if !missing.contains(&line) {
                    missing.push(line);
                }
            }
        }
    }
    missing
}

// ---------------------------------------------------------------------------------------------
// Validation (Kubernetes' pkg/apis/rbac/validation).

fn validate_rules(rules: &[PolicyRule], namespaced: bool, errs: &mut ErrorList) {
    for (i, r) in rules.iter().enumerate() {
        let p = format!("rules[{i}]");
        if r.verbs.is_empty() {
            errs.push(FieldError::required(
                format!("{p}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = r.non_resource_urls.as_deref().unwrap_or_default();
        let resources = r.resources.as_deref().unwrap_or_default();
        if !urls.is_empty() {
            if namespaced {
                errs.push(FieldError::invalid(
                    format!("{p}.nonResourceURLs"),
                    urls.join(","),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !resources.is_empty() || r.api_groups.as_ref().is_some_and(|g| !g.is_empty()) {
                errs.push(FieldError::invalid(
                    format!("{p}.nonResourceURLs"),
                    urls.join(","),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if r.api_groups.as_ref().is_none_or(|g| g.is_empty()) {
            errs.push(FieldError::required(
                format!("{p}.apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if resources.is_empty() {
            errs.push(FieldError::required(
                format!("{p}.resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

fn validate_role_ref(r: &RoleRef, namespaced: bool, errs: &mut ErrorList) {
    if r.api_group != GROUP {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            r.api_group.as_str(),
            &[GROUP],
        ));
    }
    match r.kind.as_str() {
        "ClusterRole" => {}
        "Role" if namespaced => {}
        other => {
            let supported: &[&str] = if namespaced {
                &["Role", "ClusterRole"]
            } else {
                &["ClusterRole"]
            };
            errs.push(FieldError::not_supported("roleRef.kind", other, supported));
        }
    }
    if r.name.is_empty() {
        errs.push(FieldError::required("roleRef.name", ""));
    } else if r.name == "." || r.name == ".." || r.name.contains('/') || r.name.contains('%') {
        errs.push(FieldError::invalid(
            "roleRef.name",
            r.name.as_str(),
            "may not be '.' or '..' and may not contain '/' or '%'",
        ));
    }
}

fn validate_subjects(subjects: &[Subject], namespaced: bool, errs: &mut ErrorList) {
    for (i, s) in subjects.iter().enumerate() {
        let p = format!("subjects[{i}]");
        if s.name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name"), ""));
        }
        match s.kind.as_str() {
            "ServiceAccount" => {
                if s.api_group.as_deref().is_some_and(|g| !g.is_empty()) {
                    errs.push(FieldError::not_supported(
                        format!("{p}.apiGroup"),
                        s.api_group.as_deref().unwrap_or(""),
                        &[""],
                    ));
                }
                if !namespaced && s.namespace.as_deref().is_none_or(str::is_empty) {
                    errs.push(FieldError::required(format!("{p}.namespace"), ""));
                }
            }
            "User" | "Group" => {
                if s.api_group.as_deref() != Some(GROUP) {
                    errs.push(FieldError::not_supported(
                        format!("{p}.apiGroup"),
                        s.api_group.as_deref().unwrap_or(""),
                        &[GROUP],
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(
                format!("{p}.kind"),
                other,
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
}

/// Validates a Role.
pub fn validate_role(r: &Role) -> ErrorList {
    let mut e = validation::validate_meta(&r.metadata, "Role", true, "metadata.");
    validate_rules(r.rules.as_deref().unwrap_or_default(), true, &mut e);
    e
}

/// Validates a ClusterRole.
pub fn validate_cluster_role(r: &ClusterRole) -> ErrorList {
    let mut e = validation::validate_meta(&r.metadata, "ClusterRole", false, "metadata.");
    validate_rules(r.rules.as_deref().unwrap_or_default(), false, &mut e);
    e
}

/// Validates a RoleBinding.
pub fn validate_role_binding(b: &RoleBinding) -> ErrorList {
    let mut e = validation::validate_meta(&b.metadata, "RoleBinding", true, "metadata.");
    validate_role_ref(&b.role_ref, true, &mut e);
    validate_subjects(b.subjects.as_deref().unwrap_or_default(), true, &mut e);
    e
}

/// Validates a ClusterRoleBinding.
pub fn validate_cluster_role_binding(b: &ClusterRoleBinding) -> ErrorList {
    let mut e = validation::validate_meta(&b.metadata, "ClusterRoleBinding", false, "metadata.");
    validate_role_ref(&b.role_ref, false, &mut e);
    validate_subjects(b.subjects.as_deref().unwrap_or_default(), false, &mut e);
    e
}

// ---------------------------------------------------------------------------------------------
// Bootstrap policy (Kubernetes' plugin/pkg/auth/authorizer/rbac/bootstrappolicy), the roles
// and bindings that matter for xkube's components.

/// A rule: `groups` x `resources` x `verbs`.
pub fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let s = |l: &[&str]| l.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(s(groups)),
        resources: Some(s(resources)),
        verbs: s(verbs),
        ..Default::default()
    }
}

/// A rule restricted to some object names.
pub fn named_rule(
    groups: &[&str],
    resources: &[&str],
    names: &[&str],
    verbs: &[&str],
) -> PolicyRule {
    let mut r = rule(groups, resources, verbs);
    r.resource_names = Some(names.iter().map(|x| x.to_string()).collect());
    r
}

/// A non-resource rule.
pub fn url_rule(urls: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        non_resource_urls: Some(urls.iter().map(|x| x.to_string()).collect()),
        verbs: verbs.iter().map(|x| x.to_string()).collect(),
        ..Default::default()
    }
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const EVENTS: &[&str] = &["create", "patch", "update"];
/// Status writes: xkube's controllers patch status where Kubernetes' update it.
const STATUS: &[&str] = &["patch", "update"];

fn bootstrap_meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        labels: Some(
            [(
                "kubernetes.io/bootstrapping".to_string(),
                "rbac-defaults".to_string(),
            )]
            .into(),
        ),
        annotations: Some(
            [(
                "rbac.authorization.kubernetes.io/autoupdate".to_string(),
                "true".to_string(),
            )]
            .into(),
        ),
        ..Default::default()
    }
}

fn cluster_role(name: &str, rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole {
        metadata: bootstrap_meta(name),
        rules: Some(rules),
        ..Default::default()
    }
}

/// A subject: `User`, `Group` (RBAC's group) or `ServiceAccount` `ns/name`.
pub fn subject(kind: &str, name: &str) -> Subject {
    match kind {
        "ServiceAccount" => {
            let (ns, n) = name.split_once('/').unwrap_or(("kube-system", name));
            Subject {
                kind: kind.into(),
                name: n.into(),
                namespace: Some(ns.into()),
                api_group: None,
            }
        }
        _ => Subject {
            kind: kind.into(),
            name: name.into(),
            api_group: Some(GROUP.into()),
            namespace: None,
        },
    }
}

fn cluster_binding(name: &str, role: &str, subjects: Vec<Subject>) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: bootstrap_meta(name),
        role_ref: RoleRef {
            api_group: GROUP.into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(subjects),
    }
}

/// Read access of the `view` role (no secrets, no RBAC).
fn view_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &[""],
            &[
                "pods",
                "pods/log",
                "pods/status",
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "replicationcontrollers/status",
                "services",
                "services/status",
                "serviceaccounts",
                "bindings",
                "events",
                "limitranges",
                "resourcequotas",
                "resourcequotas/status",
                "namespaces",
                "namespaces/status",
            ],
            READ,
        ),
        rule(
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            READ,
        ),
        rule(
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
            READ,
        ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(&["events.k8s.io"], &["events"], READ),
    ]
}

/// Write access of the `edit` role on top of `view`.
fn edit_rules() -> Vec<PolicyRule> {
    let mut rules = view_rules();
    rules.extend([
        rule(
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
            READ,
        ),
        rule(&[""], &["serviceaccounts"], &["impersonate"]),
        rule(
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "configmaps",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
            WRITE,
        ),
        rule(
            &[""],
            &["pods/eviction", "serviceaccounts/token"],
            &["create"],
        ),
        rule(
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
            WRITE,
        ),
        rule(&["batch"], &["cronjobs", "jobs"], WRITE),
    ]);
    rules
}

/// Rules a kubelet gets from the Node authorizer beyond the objects of its pods (Kubernetes'
/// `NodeRules`); the Node authorizer narrows writes to the node's own Node and pods.
pub fn node_rules() -> Vec<PolicyRule> {
    vec![
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        rule(
            &["authorization.k8s.io"],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
            &["create"],
        ),
        rule(&[""], &["services", "endpoints"], READ),
        rule(
            &[""],
            &["nodes"],
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
        ),
        rule(&[""], &["nodes/status"], &["patch", "update"]),
        rule(&["", "events.k8s.io"], &["events"], EVENTS),
        rule(&[""], &["pods"], &["get", "list", "watch", "delete"]),
        rule(&[""], &["pods/status"], &["patch", "update"]),
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["get", "create", "update", "patch", "delete"],
        ),
    ]
}

/// The controllers of xkube's controller-manager and the rules each needs
/// (`system:controller:<name>` in Kubernetes).
fn controller_roles() -> Vec<(&'static str, Vec<PolicyRule>)> {
    vec![
        (
            "replication-controller",
            vec![
                rule(
                    &[""],
                    &["replicationcontrollers"],
                    &["get", "list", "watch", "update"],
                ),
                rule(
                    &[""],
                    &[
                        "replicationcontrollers/status",
                        "replicationcontrollers/finalizers",
                    ],
                    STATUS,
                ),
                rule(
                    &[""],
                    &["pods"],
                    &["create", "delete", "list", "patch", "watch"],
                ),
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
            ],
        ),
        (
            "daemon-set-controller",
            vec![
                rule(&["apps"], &["daemonsets"], READ),
                rule(
                    &["apps"],
                    &["daemonsets/status", "daemonsets/finalizers"],
                    STATUS,
                ),
                rule(&[""], &["nodes"], READ),
                rule(
                    &[""],
                    &["pods"],
                    &["create", "delete", "list", "patch", "watch"],
                ),
                rule(&[""], &["pods/binding"], &["create"]),
                rule(
                    &["apps"],
                    &["controllerrevisions"],
                    &["create", "delete", "list", "patch", "update", "watch"],
                ),
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
            ],
        ),
        (
            "endpoint-controller",
            vec![
                rule(&[""], &["services", "pods"], READ),
                rule(
                    &[""],
                    &["endpoints"],
                    &["create", "delete", "get", "list", "update"],
                ),
                rule(&[""], &["endpoints/restricted"], &["create"]),
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
            ],
        ),
        (
            "endpointslicemirroring-controller",
            vec![
                rule(&[""], &["endpoints"], READ),
                rule(
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                    &["create", "delete", "get", "list", "update", "watch"],
                ),
                rule(&[""], &["endpoints/finalizers"], &["update"]),
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
            ],
        ),
        (
            "node-controller",
            vec![
                rule(
                    &[""],
                    &["nodes"],
                    &["delete", "get", "list", "patch", "update"],
                ),
                rule(&[""], &["nodes/status"], &["patch", "update"]),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                rule(&[""], &["pods"], &["delete", "list", "get"]),
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
            ],
        ),
        (
            "namespace-controller",
            vec![
                rule(&[""], &["namespaces"], &["delete", "get", "list", "watch"]),
                rule(
                    &[""],
                    &["namespaces/finalize", "namespaces/status"],
                    &["update"],
                ),
                rule(
                    &["*"],
                    &["*"],
                    &["delete", "deletecollection", "get", "list"],
                ),
            ],
        ),
        (
            "service-account-controller",
            vec![
                rule(&[""], &["serviceaccounts"], &["create"]),
                // The token half of xkube's serviceaccount controller records token secrets
                // in the account with a patch (Kubernetes' token controller updates).
                rule(&[""], &["serviceaccounts"], &["patch"]),
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
            ],
        ),
        (
            "pod-garbage-collector",
            vec![
                rule(&[""], &["pods"], &["list", "watch", "delete"]),
                rule(&[""], &["nodes"], &["get", "list", "watch"]),
                rule(&[""], &["pods/status"], &["patch"]),
            ],
        ),
        (
            "replicaset-controller",
            vec![
                rule(
                    &["apps", "extensions"],
                    &["replicasets"],
                    &["get", "list", "watch", "update"],
                ),
                rule(
                    &["apps", "extensions"],
                    &["replicasets/status", "replicasets/finalizers"],
                    STATUS,
                ),
                rule(
                    &[""],
                    &["pods"],
                    &["create", "delete", "list", "patch", "watch"],
                ),
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
            ],
        ),
        (
            "deployment-controller",
            vec![
                rule(
                    &["apps", "extensions"],
                    &["deployments"],
                    &["get", "list", "watch", "update"],
                ),
                rule(
                    &["apps", "extensions"],
                    &["deployments/status", "deployments/finalizers"],
                    STATUS,
                ),
                rule(
                    &["apps", "extensions"],
                    &["replicasets"],
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                ),
                // Pods are only listed (to tell when a Recreate may start).
                rule(&[""], &["pods"], &["get", "list", "update", "watch"]),
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
            ],
        ),
        (
            "job-controller",
            vec![
                rule(
                    &["batch"],
                    &["jobs"],
                    &["get", "list", "watch", "update", "patch"],
                ),
                rule(&["batch"], &["jobs/status"], STATUS),
                rule(&["batch"], &["jobs/finalizers"], STATUS),
                rule(
                    &[""],
                    &["pods"],
                    &["create", "delete", "list", "patch", "watch"],
                ),
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
            ],
        ),
        (
            "cronjob-controller",
            vec![
                rule(
                    &["batch"],
                    &["cronjobs"],
                    &["get", "list", "watch", "update"],
                ),
                rule(
                    &["batch"],
                    &["jobs"],
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                ),
                rule(&["batch"], &["cronjobs/status"], STATUS),
                rule(&["batch"], &["cronjobs/finalizers"], STATUS),
                rule(&[""], &["pods"], &["delete", "list"]),
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
            ],
        ),
        (
            // Reads every kind and deletes or patches dependents of any kind.
            "generic-garbage-collector",
            vec![rule(
                &["*"],
                &["*"],
                &["delete", "get", "list", "patch", "update", "watch"],
            )],
        ),
        (
            "resourcequota-controller",
            vec![
                rule(&["*"], &["*"], &["list", "watch"]),
                rule(&[""], &["resourcequotas/status"], STATUS),
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
            ],
        ),
    ]
}

/// Kubernetes' bootstrap ClusterRoles that xkube uses.
pub fn bootstrap_cluster_roles() -> Vec<ClusterRole> {
    let mut admin = edit_rules();
    admin.extend([
        rule(
            &[GROUP],
            &["rolebindings", "roles"],
            &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
        ),
        rule(
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
            &["create"],
        ),
    ]);
    let mut roles = vec![
        cluster_role(
            "cluster-admin",
            vec![rule(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])],
        ),
        cluster_role("admin", admin),
        cluster_role("edit", edit_rules()),
        cluster_role("view", view_rules()),
        cluster_role(
            "system:basic-user",
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
        ),
        cluster_role(
            "system:discovery",
            vec![url_rule(
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
                &["get"],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            vec![url_rule(
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
                &["get"],
            )],
        ),
        cluster_role("system:node", node_rules()),
        cluster_role(
            "system:node-proxier",
            vec![
                rule(&[""], &["endpoints", "services"], &["list", "watch"]),
                rule(&[""], &["nodes"], READ),
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
                rule(
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                    &["list", "watch"],
                ),
            ],
        ),
        // What cluster DNS reads (Kubernetes' `system:kube-dns` binds it to the
        // `kube-system/kube-dns` service account).
        cluster_role(
            "system:kube-dns",
            vec![
                rule(
                    &[""],
                    &["endpoints", "services", "pods", "namespaces"],
                    &["list", "watch"],
                ),
                rule(
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                    &["list", "watch"],
                ),
            ],
        ),
        cluster_role(
            "system:kube-scheduler",
            vec![
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
                rule(&["coordination.k8s.io"], &["leases"], &["create"]),
                named_rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["kube-scheduler"],
                    &["get", "update"],
                ),
                rule(&[""], &["nodes"], READ),
                rule(&[""], &["pods"], &["delete", "get", "list", "watch"]),
                rule(&[""], &["bindings", "pods/binding"], &["create"]),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                rule(&[""], &["replicationcontrollers", "services"], READ),
                rule(
                    &["apps"],
                    &["replicasets", "statefulsets", "daemonsets"],
                    READ,
                ),
                rule(
                    &[""],
                    &["persistentvolumeclaims", "persistentvolumes", "namespaces"],
                    READ,
                ),
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                    &["create"],
                ),
            ],
        ),
        cluster_role(
            "system:kube-controller-manager",
            vec![
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
                rule(&["coordination.k8s.io"], &["leases"], &["create"]),
                named_rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["kube-controller-manager"],
                    &["get", "update"],
                ),
                rule(&[""], &["secrets", "serviceaccounts"], &["create"]),
                rule(&[""], &["secrets"], &["delete"]),
                rule(
                    &[""],
                    &["namespaces", "secrets", "serviceaccounts", "configmaps"],
                    &["get"],
                ),
                rule(&[""], &["secrets", "serviceaccounts"], &["update"]),
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                    &["create"],
                ),
                rule(&["*"], &["*"], &["list", "watch"]),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
            ],
        ),
        cluster_role(
            "system:kubelet-api-admin",
            vec![
                rule(&[""], &["nodes"], &["get", "list", "watch", "proxy"]),
                rule(
                    &[""],
                    &[
                        "nodes/log",
                        "nodes/metrics",
                        "nodes/proxy",
                        "nodes/stats",
                        "nodes/spec",
                        "nodes/pods",
                        "nodes/healthz",
                    ],
                    &["*"],
                ),
            ],
        ),
        cluster_role(
            "system:auth-delegator",
            vec![
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                    &["create"],
                ),
            ],
        ),
    ];
    for (name, rules) in controller_roles() {
        roles.push(cluster_role(&format!("system:controller:{name}"), rules));
    }
    roles
}

/// Kubernetes' bootstrap ClusterRoleBindings that xkube uses. xkube's controller-manager runs
/// every controller under its own identity (no per-controller service-account credentials),
/// so the `system:controller:*` bindings name the user `system:kube-controller-manager` next
/// to the service accounts Kubernetes binds (docs/decisions.md).
pub fn bootstrap_cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    let mut b = vec![
        cluster_binding(
            "cluster-admin",
            "cluster-admin",
            vec![subject("Group", "system:masters")],
        ),
        cluster_binding(
            "system:basic-user",
            "system:basic-user",
            vec![subject("Group", "system:authenticated")],
        ),
        cluster_binding(
            "system:discovery",
            "system:discovery",
            vec![subject("Group", "system:authenticated")],
        ),
        cluster_binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            vec![
                subject("Group", "system:authenticated"),
                subject("Group", "system:unauthenticated"),
            ],
        ),
        // Kubernetes binds no subject here: kubelets are authorized by the Node authorizer.
        cluster_binding("system:node", "system:node", vec![]),
        cluster_binding(
            "system:node-proxier",
            "system:node-proxier",
            vec![subject("User", "system:kube-proxy")],
        ),
        cluster_binding(
            "system:kube-dns",
            "system:kube-dns",
            vec![subject("ServiceAccount", "kube-system/kube-dns")],
        ),
        cluster_binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            vec![subject("User", "system:kube-scheduler")],
        ),
        cluster_binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            vec![subject("User", "system:kube-controller-manager")],
        ),
        cluster_binding(
            "kube-apiserver-kubelet-client",
            "system:kubelet-api-admin",
            vec![subject("User", "kube-apiserver-kubelet-client")],
        ),
    ];
    for (name, _) in controller_roles() {
        let full = format!("system:controller:{name}");
        b.push(cluster_binding(
            &full,
            &full,
            vec![
                subject("ServiceAccount", &format!("kube-system/{name}")),
                subject("User", "system:kube-controller-manager"),
            ],
        ));
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(verb: &str, group: &str, resource: &str, ns: &str, name: &str) -> Attributes {
        Attributes::resource(verb, group, resource, ns, name)
    }

    #[test]
    fn rules_match_verbs_groups_resources_subresources_and_names() {
        let r = rule(&[""], &["pods", "pods/log"], &["get", "list"]);
        assert!(rule_allows(&r, &attrs("get", "", "pods", "default", "x")));
        assert!(rule_allows(
            &r,
            &attrs("get", "", "pods/log", "default", "x")
        ));
        assert!(!rule_allows(
            &r,
            &attrs("get", "", "pods/exec", "default", "x")
        ));
        assert!(!rule_allows(
            &r,
            &attrs("create", "", "pods", "default", "")
        ));
        assert!(!rule_allows(
            &r,
            &attrs("get", "apps", "pods", "default", "x")
        ));
        let star_sub = rule(&["*"], &["*/status"], &["update"]);
        assert!(rule_allows(
            &star_sub,
            &attrs("update", "apps", "daemonsets/status", "a", "b")
        ));
        assert!(!rule_allows(
            &star_sub,
            &attrs("update", "apps", "daemonsets", "a", "b")
        ));
        let named = named_rule(&[""], &["configmaps"], &["one"], &["get"]);
        assert!(rule_allows(
            &named,
            &attrs("get", "", "configmaps", "a", "one")
        ));
        assert!(!rule_allows(
            &named,
            &attrs("get", "", "configmaps", "a", "two")
        ));
        assert!(!rule_allows(
            &named,
            &attrs("list", "", "configmaps", "a", "")
        ));
        let urls = url_rule(&["/apis/*", "/healthz"], &["get"]);
        let path = |p: &str| Attributes {
            verb: "get".into(),
            path: p.into(),
            ..Default::default()
        };
        assert!(rule_allows(&urls, &path("/apis/apps/v1")));
        assert!(rule_allows(&urls, &path("/healthz")));
        assert!(!rule_allows(&urls, &path("/healthz/etcd")));
        assert!(!rule_allows(&r, &path("/api")));
    }

    #[test]
    fn subjects_name_users_groups_and_service_accounts() {
        let sa = UserInfo::new("system:serviceaccount:team:bot", "", vec![]);
        assert!(subject_matches(
            &subject("ServiceAccount", "team/bot"),
            &sa,
            "other"
        ));
        let mut bare = subject("ServiceAccount", "team/bot");
        bare.namespace = None;
        assert!(subject_matches(&bare, &sa, "team"));
        assert!(!subject_matches(&bare, &sa, "other"));
        assert!(subject_matches(
            &subject("Group", "system:authenticated"),
            &sa,
            ""
        ));
        assert!(!subject_matches(&subject("User", "bot"), &sa, ""));
    }

    #[test]
    fn escalation_needs_every_atom_covered_and_star_only_by_star() {
        let owner = vec![rule(
            &[""],
            &["pods", "configmaps"],
            &["get", "list", "create"],
        )];
        assert!(uncovered(&owner, &[rule(&[""], &["pods"], &["get", "create"])]).is_empty());
        assert_eq!(
            uncovered(&owner, &[rule(&[""], &["pods", "secrets"], &["get"])]),
            vec![r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#.to_string()]
        );
        assert_eq!(
            uncovered(&owner, &[rule(&[""], &["pods"], &["*"])]).len(),
            1
        );
        assert!(
            uncovered(
                &[rule(&["*"], &["*"], &["*"])],
                &[rule(&["x"], &["*"], &["*"])]
            )
            .is_empty()
        );
        let named = vec![named_rule(&[""], &["configmaps"], &["a"], &["get"])];
        assert!(
            uncovered(
                &named,
                &[named_rule(&[""], &["configmaps"], &["a"], &["get"])]
            )
            .is_empty()
        );
        assert_eq!(
            uncovered(&named, &[rule(&[""], &["configmaps"], &["get"])]).len(),
            1
        );
    }

    #[test]
    fn validation_reports_field_paths() {
        let bad = RoleBinding {
            metadata: ObjectMeta {
                name: Some("b".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: "wrong".into(),
                kind: "Pod".into(),
                name: String::new(),
            },
            subjects: Some(vec![Subject {
                kind: "Robot".into(),
                name: String::new(),
                ..Default::default()
            }]),
        };
        let msg = validate_role_binding(&bad).aggregate_message();
        for field in [
            "roleRef.apiGroup",
            "roleRef.kind",
            "roleRef.name",
            "subjects[0].name",
            "subjects[0].kind",
        ] {
            assert!(msg.contains(field), "{field} missing in {msg}");
        }
        let role = Role {
            metadata: ObjectMeta {
                name: Some("r".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            rules: Some(vec![PolicyRule::default(), url_rule(&["/x"], &["get"])]),
        };
        let msg = validate_role(&role).aggregate_message();
        assert!(msg.contains("rules[0].verbs"), "{msg}");
        assert!(msg.contains("rules[0].apiGroups"), "{msg}");
        assert!(msg.contains("rules[1].nonResourceURLs"), "{msg}");
        // Unknown verbs and resources are stored as written.
        let odd = ClusterRole {
            metadata: ObjectMeta {
                name: Some("odd".into()),
                ..Default::default()
            },
            rules: Some(vec![rule(
                &["widgets.example"],
                &["gizmos"],
                &["frobnicate"],
            )]),
            ..Default::default()
        };
        assert!(validate_cluster_role(&odd).is_empty());
    }

    #[test]
    fn bootstrap_policy_is_valid_and_every_binding_names_a_role() {
        let roles = bootstrap_cluster_roles();
        for r in &roles {
            assert!(validate_cluster_role(r).is_empty(), "{:?}", r.metadata.name);
        }
        for b in bootstrap_cluster_role_bindings() {
            assert!(
                validate_cluster_role_binding(&b).is_empty(),
                "{:?}",
                b.metadata.name
            );
            assert!(
                roles
                    .iter()
                    .any(|r| r.metadata.name.as_deref() == Some(b.role_ref.name.as_str())),
                "binding {:?} names a missing role",
                b.metadata.name
            );
        }
        let cluster_admin = &roles[0].rules.clone().unwrap_or_default();
        for r in &roles {
            assert!(uncovered(cluster_admin, r.rules.as_deref().unwrap_or_default()).is_empty());
        }
    }
}
