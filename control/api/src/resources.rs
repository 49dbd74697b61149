//! The resource registry: every kind the apiserver serves, with its REST names.

/// Verbs of a full REST resource.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Verbs of a create-only resource whose objects are never stored (the access and token
/// reviews of `authorization.k8s.io` and `authentication.k8s.io`).
pub const CREATE_ONLY: &[&str] = &["create"];

/// Verbs of a status-like subresource.
pub const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

/// A subresource (`pods/status`, `replicationcontrollers/scale`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubresourceInfo {
    /// Name after the slash (`status`, `scale`, `binding`, `finalize`).
    pub name: &'static str,
    /// Kind of the object exchanged on it.
    pub kind: &'static str,
    /// API group of that kind (`""` for core, `autoscaling` for Scale).
    pub group: &'static str,
    /// Version of that kind.
    pub version: &'static str,
    /// Verbs it supports.
    pub verbs: &'static [&'static str],
}

/// One REST resource served by the apiserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// API version (`v1`).
    pub version: &'static str,
    /// Kind (`Pod`).
    pub kind: &'static str,
    /// Plural REST name (`pods`), also the storage key segment.
    pub plural: &'static str,
    /// Singular name (`pod`).
    pub singular: &'static str,
    /// Short names (`po`).
    pub short_names: &'static [&'static str],
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Verbs supported on the resource.
    pub verbs: &'static [&'static str],
    /// Subresources.
    pub subresources: &'static [SubresourceInfo],
    /// Discovery categories (`all`).
    pub categories: &'static [&'static str],
}

impl ResourceInfo {
    /// `apiVersion` of objects of this resource (`v1`, `apps/v1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether objects of this resource are stored (false for the create-only reviews, which
    /// the apiserver answers without storing anything).
    pub fn persisted(&self) -> bool {
        self.verbs != CREATE_ONLY
    }

    /// Whether the resource has a `status` subresource (the main endpoint then ignores status).
    pub fn has_status(&self) -> bool {
        self.subresource("status").is_some()
    }

    /// Looks up a subresource by name.
    pub fn subresource(&self, name: &str) -> Option<&'static SubresourceInfo> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// Storage key prefix of this resource, optionally within a namespace; ends with `/`.
    pub fn key_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{}/", self.plural, ns),
            _ => format!("/registry/{}/", self.plural),
        }
    }

    /// Storage key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{}", self.key_prefix(namespace), name)
    }

    /// Group-qualified plural used in messages (`pods`, `deployments.apps`).
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const fn status_sub(kind: &'static str) -> SubresourceInfo {
    SubresourceInfo {
        name: "status",
        kind,
        group: "",
        version: "v1",
        verbs: STATUS_VERBS,
    }
}

const fn core(
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    namespaced: bool,
    subresources: &'static [SubresourceInfo],
    categories: &'static [&'static str],
) -> ResourceInfo {
    ResourceInfo {
        group: "",
        version: "v1",
        kind,
        plural,
        singular,
        short_names,
        namespaced,
        verbs: ALL_VERBS,
        subresources,
        categories,
    }
}

/// The `scale` subresource (autoscaling/v1 Scale).
const SCALE: SubresourceInfo = SubresourceInfo {
    name: "scale",
    kind: "Scale",
    group: "autoscaling",
    version: "v1",
    verbs: STATUS_VERBS,
};

/// A namespaced `apps/v1` workload in the `all` category.
const fn apps(
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    subresources: &'static [SubresourceInfo],
) -> ResourceInfo {
    ResourceInfo {
        group: "apps",
        version: "v1",
        kind,
        plural,
        singular,
        short_names,
        namespaced: true,
        verbs: ALL_VERBS,
        subresources,
        categories: &["all"],
    }
}

/// A namespaced `batch/v1` kind in the `all` category.
const fn batch(
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    subresources: &'static [SubresourceInfo],
) -> ResourceInfo {
    ResourceInfo {
        group: "batch",
        version: "v1",
        kind,
        plural,
        singular,
        short_names,
        namespaced: true,
        verbs: ALL_VERBS,
        subresources,
        categories: &["all"],
    }
}

/// Every resource the apiserver serves.
pub static RESOURCES: &[ResourceInfo] = &[
    core(
        "Namespace",
        "namespaces",
        "namespace",
        &["ns"],
        false,
        &[
            status_sub("Namespace"),
            SubresourceInfo {
                name: "finalize",
                kind: "Namespace",
                group: "",
                version: "v1",
                verbs: &["update"],
            },
        ],
        &[],
    ),
    core(
        "Pod",
        "pods",
        "pod",
        &["po"],
        true,
        &[
            status_sub("Pod"),
            SubresourceInfo {
                name: "binding",
                kind: "Binding",
                group: "",
                version: "v1",
                verbs: &["create"],
            },
            SubresourceInfo {
                name: "log",
                kind: "Pod",
                group: "",
                version: "v1",
                verbs: &["get"],
            },
            SubresourceInfo {
                name: "exec",
                kind: "PodExecOptions",
                group: "",
                version: "v1",
                verbs: &["create", "get"],
            },
            SubresourceInfo {
                name: "attach",
                kind: "PodAttachOptions",
                group: "",
                version: "v1",
                verbs: &["create", "get"],
            },
            SubresourceInfo {
                name: "portforward",
                kind: "PodPortForwardOptions",
                group: "",
                version: "v1",
                verbs: &["create", "get"],
            },
        ],
        &["all"],
    ),
    core(
        "ReplicationController",
        "replicationcontrollers",
        "replicationcontroller",
        &["rc"],
        true,
        &[status_sub("ReplicationController"), SCALE],
        &["all"],
    ),
    apps(
        "DaemonSet",
        "daemonsets",
        "daemonset",
        &["ds"],
        &[status_sub("DaemonSet")],
    ),
    apps(
        "Deployment",
        "deployments",
        "deployment",
        &["deploy"],
        &[status_sub("Deployment"), SCALE],
    ),
    apps(
        "ReplicaSet",
        "replicasets",
        "replicaset",
        &["rs"],
        &[status_sub("ReplicaSet"), SCALE],
    ),
    batch("Job", "jobs", "job", &[], &[status_sub("Job")]),
    batch(
        "CronJob",
        "cronjobs",
        "cronjob",
        &["cj"],
        &[status_sub("CronJob")],
    ),
    core(
        "Service",
        "services",
        "service",
        &["svc"],
        true,
        &[status_sub("Service")],
        &["all"],
    ),
    core(
        "Endpoints",
        "endpoints",
        "endpoints",
        &["ep"],
        true,
        &[],
        &[],
    ),
    core(
        "Node",
        "nodes",
        "node",
        &["no"],
        false,
        &[status_sub("Node")],
        &[],
    ),
    core("Event", "events", "event", &["ev"], true, &[], &[]),
    core("Secret", "secrets", "secret", &[], true, &[], &[]),
    core(
        "ConfigMap",
        "configmaps",
        "configmap",
        &["cm"],
        true,
        &[],
        &[],
    ),
    core(
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        &["sa"],
        true,
        &[],
        &[],
    ),
    core(
        "ResourceQuota",
        "resourcequotas",
        "resourcequota",
        &["quota"],
        true,
        &[status_sub("ResourceQuota")],
        &[],
    ),
    core(
        "LimitRange",
        "limitranges",
        "limitrange",
        &["limits"],
        true,
        &[],
        &[],
    ),
    ResourceInfo {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        short_names: &[],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
    },
    ResourceInfo {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        short_names: &[],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
    },
    rbac("Role", "roles", "role", true),
    rbac("ClusterRole", "clusterroles", "clusterrole", false),
    rbac("RoleBinding", "rolebindings", "rolebinding", true),
    rbac(
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
    ),
    review(
        "authorization.k8s.io",
        "SubjectAccessReview",
        "subjectaccessreviews",
        false,
    ),
    review(
        "authorization.k8s.io",
        "LocalSubjectAccessReview",
        "localsubjectaccessreviews",
        true,
    ),
    review(
        "authorization.k8s.io",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        false,
    ),
    review(
        "authorization.k8s.io",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
        false,
    ),
    review(
        "authentication.k8s.io",
        "TokenReview",
        "tokenreviews",
        false,
    ),
    review(
        "authentication.k8s.io",
        "SelfSubjectReview",
        "selfsubjectreviews",
        false,
    ),
];

const fn rbac(
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
) -> ResourceInfo {
    ResourceInfo {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind,
        plural,
        singular,
        short_names: &[],
        namespaced,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
    }
}

const fn review(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> ResourceInfo {
    ResourceInfo {
        group,
        version: "v1",
        kind,
        plural,
        singular: "",
        short_names: &[],
        namespaced,
        verbs: CREATE_ONLY,
        subresources: &[],
        categories: &[],
    }
}

/// The kinds whose objects own dependents that the garbage collector looks after (by group
/// and plural): a DELETE of one with `propagationPolicy` `Orphan` or `Foreground` is
/// finished by the collector; its dependents are these kinds and pods.
pub const GC_OWNERS: &[(&str, &str)] = &[
    ("", "replicationcontrollers"),
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("apps", "daemonsets"),
    ("batch", "cronjobs"),
    ("batch", "jobs"),
];

/// Whether `res` is one of [`GC_OWNERS`].
pub fn owns_dependents(res: &ResourceInfo) -> bool {
    GC_OWNERS.contains(&(res.group, res.plural))
}

/// Finds a resource by group, version and plural name.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds a resource by `apiVersion` and `kind`.
pub fn find_by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

/// Resources of one group version, in registry order.
pub fn in_group_version<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static ResourceInfo> + 'a {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_core_resources_by_plural_and_kind() {
        let pods = find("", "v1", "pods").expect("pods registered");
        assert_eq!(pods.kind, "Pod");
        assert!(pods.namespaced && pods.has_status());
        assert_eq!(pods.key(Some("default"), "x"), "/registry/pods/default/x");
        let ns = find_by_kind("v1", "Namespace").expect("namespaces registered");
        assert_eq!(
            ns.key(Some("ignored"), "kube-system"),
            "/registry/namespaces/kube-system"
        );
        let rc = find("", "v1", "replicationcontrollers").expect("rc");
        assert_eq!(
            rc.subresource("scale").map(|s| s.group),
            Some("autoscaling")
        );
        assert!(find("", "v1", "widgets").is_none());
        let ds = find_by_kind("apps/v1", "DaemonSet").expect("daemonsets registered");
        assert_eq!(
            (ds.plural, ds.short_names, ds.has_status()),
            ("daemonsets", &["ds"][..], true)
        );
        assert_eq!(ds.qualified_plural(), "daemonsets.apps");
        assert_eq!(
            ds.key(Some("kube-system"), "proxy"),
            "/registry/daemonsets/kube-system/proxy"
        );
    }
}
