//! Validation with Kubernetes' rules and messages (`field.ErrorList`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetUpdateStrategy, Deployment, DeploymentStrategy, ReplicaSet,
};
use k8s_openapi::api::core::v1::{
    Container, Namespace, Pod, PodSpec, PodTemplateSpec, ReplicationController, Service, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

/// Kind of a field error, as in `k8s.io/apimachinery/pkg/util/validation/field`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `Required value`.
    Required,
    /// `Invalid value`.
    Invalid,
    /// `Unsupported value`.
    NotSupported,
    /// `Duplicate value`.
    Duplicate,
    /// `Forbidden`.
    Forbidden,
    /// `Too long`.
    TooLong,
    /// `Not found`.
    NotFound,
}

impl ErrorKind {
    /// The cause reason in a `Status`.
    pub fn cause_reason(self) -> &'static str {
        match self {
            ErrorKind::Required => "FieldValueRequired",
            ErrorKind::Invalid => "FieldValueInvalid",
            ErrorKind::NotSupported => "FieldValueNotSupported",
            ErrorKind::Duplicate => "FieldValueDuplicate",
            ErrorKind::Forbidden => "FieldValueForbidden",
            ErrorKind::TooLong => "FieldValueTooLong",
            ErrorKind::NotFound => "FieldValueNotFound",
        }
    }

    fn text(self) -> &'static str {
        match self {
            ErrorKind::Required => "Required value",
            ErrorKind::Invalid => "Invalid value",
            ErrorKind::NotSupported => "Unsupported value",
            ErrorKind::Duplicate => "Duplicate value",
            ErrorKind::Forbidden => "Forbidden",
            ErrorKind::TooLong => "Too long",
            ErrorKind::NotFound => "Not found",
        }
    }
}

/// One field error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Kind of error.
    pub kind: ErrorKind,
    /// Field path, `spec.ports[0].port`.
    pub field: String,
    /// The offending value, already formatted the way Kubernetes prints it.
    pub bad_value: Option<String>,
    /// Explanation.
    pub detail: String,
}

/// Formats a value the way Kubernetes' field errors print it (strings quoted).
pub fn format_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

impl FieldError {
    /// `field: Required value: detail`.
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            kind: ErrorKind::Required,
            field: field.into(),
            bad_value: None,
            detail: detail.into(),
        }
    }

    /// `field: Invalid value: <value>: detail`.
    pub fn invalid(
        field: impl Into<String>,
        value: impl Into<Value>,
        detail: impl Into<String>,
    ) -> Self {
        Self::invalid_raw(field, format_value(&value.into()), detail)
    }

    /// Like [`FieldError::invalid`] with a value already formatted.
    pub fn invalid_raw(field: impl Into<String>, value: String, detail: impl Into<String>) -> Self {
        FieldError {
            kind: ErrorKind::Invalid,
            field: field.into(),
            bad_value: Some(value),
            detail: detail.into(),
        }
    }

    /// `field: Unsupported value: "x": supported values: "a", "b"`.
    pub fn not_supported(
        field: impl Into<String>,
        value: impl Into<Value>,
        supported: &[&str],
    ) -> Self {
        let list = supported
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        FieldError {
            kind: ErrorKind::NotSupported,
            field: field.into(),
            bad_value: Some(format_value(&value.into())),
            detail: format!("supported values: {list}"),
        }
    }

    /// `field: Duplicate value: "x"`.
    pub fn duplicate(field: impl Into<String>, value: impl Into<Value>) -> Self {
        FieldError {
            kind: ErrorKind::Duplicate,
            field: field.into(),
            bad_value: Some(format_value(&value.into())),
            detail: String::new(),
        }
    }

    /// `field: Forbidden: detail`.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            kind: ErrorKind::Forbidden,
            field: field.into(),
            bad_value: None,
            detail: detail.into(),
        }
    }

    /// The message without the field path (`Invalid value: 0: must be ...`).
    pub fn body(&self) -> String {
        let mut s = self.kind.text().to_string();
        if let Some(v) = &self.bad_value {
            s.push_str(": ");
            s.push_str(v);
        }
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// A list of field errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorList(Vec<FieldError>);

impl ErrorList {
    /// Adds an error.
    pub fn push(&mut self, e: FieldError) {
        self.0.push(e);
    }
    /// Adds all errors of another list.
    pub fn extend(&mut self, other: ErrorList) {
        self.0.extend(other.0);
    }
    /// Whether there are no errors.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Number of errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Iterates over the errors.
    pub fn iter(&self) -> impl Iterator<Item = &FieldError> {
        self.0.iter()
    }
    /// `a: ...` for one error, `[a: ..., b: ...]` for several, as Kubernetes aggregates them.
    pub fn aggregate_message(&self) -> String {
        match self.0.as_slice() {
            [one] => one.to_string(),
            many => format!(
                "[{}]",
                many.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl FromIterator<FieldError> for ErrorList {
    fn from_iter<I: IntoIterator<Item = FieldError>>(iter: I) -> Self {
        ErrorList(iter.into_iter().collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Names.

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn label_chars_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| is_lower_alnum(c) || c == '-')
        && s.starts_with(is_lower_alnum)
        && s.ends_with(is_lower_alnum)
}

/// Errors of a DNS-1123 label (63 characters, `[a-z0-9]([-a-z0-9]*[a-z0-9])?`).
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push("must be no more than 63 characters".to_string());
    }
    if !label_chars_ok(s) {
        out.push(DNS1123_LABEL_MSG.to_string());
    }
    out
}

/// Errors of a DNS-1123 subdomain (253 characters, dot-separated labels).
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 253 {
        out.push("must be no more than 253 characters".to_string());
    }
    if !s.split('.').all(label_chars_ok) {
        out.push(DNS1123_SUBDOMAIN_MSG.to_string());
    }
    out
}

/// Errors of a DNS-1035 label (starts with a letter).
pub fn dns1035_label(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push("must be no more than 63 characters".to_string());
    }
    if !(label_chars_ok(s) && s.starts_with(|c: char| c.is_ascii_lowercase())) {
        out.push(DNS1035_LABEL_MSG.to_string());
    }
    out
}

fn name_part_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Errors of a qualified name (`prefix/name` label or annotation key).
pub fn qualified_name(s: &str) -> Vec<String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let mut out = Vec::new();
    if let Some(p) = prefix {
        if p.is_empty() {
            out.push("prefix part must be non-empty".to_string());
        } else {
            out.extend(
                dns1123_subdomain(p)
                    .into_iter()
                    .map(|m| format!("prefix part {m}")),
            );
        }
    }
    if name.is_empty() {
        out.push("name part must be non-empty".to_string());
    } else {
        if name.len() > 63 {
            out.push("name part must be no more than 63 characters".to_string());
        }
        if !name_part_ok(name) {
            out.push(QUALIFIED_NAME_MSG.to_string());
        }
    }
    out
}

/// Errors of a label value.
pub fn label_value(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push("must be no more than 63 characters".to_string());
    }
    if !s.is_empty() && !name_part_ok(s) {
        out.push(LABEL_VALUE_MSG.to_string());
    }
    out
}

/// Which rule a kind's names follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// DNS-1123 subdomain (most kinds).
    Subdomain,
    /// DNS-1123 label (namespaces).
    Label,
    /// DNS-1035 label (services).
    Dns1035,
    /// Anything without `/` or `%` and not `.`/`..` (path segment names).
    PathSegment,
}

/// The name rule of a kind.
pub fn name_rule(kind: &str) -> NameRule {
    match kind {
        "Namespace" => NameRule::Label,
        "Service" => NameRule::Dns1035,
        "Event" | "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => {
            NameRule::PathSegment
        }
        _ => NameRule::Subdomain,
    }
}

/// Kubernetes' `IsValidPathSegmentName`: not `.` or `..`, no `/` or `%` (every name and
/// namespace in a URL path must pass it).
pub fn path_segment_name(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        vec![format!("may not be '{name}'")]
    } else if name.contains('/') || name.contains('%') {
        vec!["may not contain '/' or '%'".to_string()]
    } else {
        vec![]
    }
}

fn name_errors(rule: NameRule, name: &str) -> Vec<String> {
    match rule {
        NameRule::Subdomain => dns1123_subdomain(name),
        NameRule::Label => dns1123_label(name),
        NameRule::Dns1035 => dns1035_label(name),
        NameRule::PathSegment => path_segment_name(name),
    }
}

fn validate_labels(labels: &BTreeMap<String, String>, path: &str, errs: &mut ErrorList) {
    for (k, v) in labels {
        for m in qualified_name(k) {
            errs.push(FieldError::invalid(path, k.as_str(), m));
        }
        for m in label_value(v) {
            errs.push(FieldError::invalid(path, v.as_str(), m));
        }
    }
}

/// Validates object metadata: name (per the kind's rule), namespace presence, labels,
/// annotation keys.
pub fn validate_meta(meta: &ObjectMeta, kind: &str, namespaced: bool, path: &str) -> ErrorList {
    let mut errs = ErrorList::default();
    let rule = name_rule(kind);
    match meta.name.as_deref() {
        None | Some("") => {
            if meta.generate_name.as_deref().unwrap_or("").is_empty() {
                errs.push(FieldError::required(
                    format!("{path}name"),
                    "name or generateName is required",
                ));
            }
        }
        Some(name) => {
            for m in name_errors(rule, name) {
                errs.push(FieldError::invalid(format!("{path}name"), name, m));
            }
        }
    }
    if namespaced {
        match meta.namespace.as_deref() {
            None | Some("") => errs.push(FieldError::required(format!("{path}namespace"), "")),
            Some(ns) => {
                for m in dns1123_label(ns) {
                    errs.push(FieldError::invalid(format!("{path}namespace"), ns, m));
                }
            }
        }
    } else if meta.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
        errs.push(FieldError::forbidden(
            format!("{path}namespace"),
            "not allowed on this type",
        ));
    }
    if let Some(labels) = &meta.labels {
        validate_labels(labels, &format!("{path}labels"), &mut errs);
    }
    if let Some(ann) = &meta.annotations {
        for k in ann.keys() {
            for m in qualified_name(&k.to_lowercase()) {
                errs.push(FieldError::invalid(
                    format!("{path}annotations"),
                    k.as_str(),
                    m,
                ));
            }
        }
        let total: usize = ann.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total > 256 * 1024 {
            errs.push(FieldError {
                kind: ErrorKind::TooLong,
                field: format!("{path}annotations"),
                bad_value: None,
                detail: "may not be more than 262144 bytes".to_string(),
            });
        }
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// Kinds.

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

fn validate_port_number(port: i32, path: &str, errs: &mut ErrorList) {
    if !(1..=65535).contains(&port) {
        errs.push(FieldError::invalid(
            path,
            port,
            "must be between 1 and 65535, inclusive",
        ));
    }
}

fn validate_protocol(proto: Option<&str>, path: &str, errs: &mut ErrorList) {
    match proto {
        None => errs.push(FieldError::required(path, "")),
        Some(p) if !PROTOCOLS.contains(&p) => {
            errs.push(FieldError::not_supported(path, p, PROTOCOLS))
        }
        _ => {}
    }
}

fn is_iana_svc_name(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 15 {
        out.push("must be no more than 15 characters".to_string());
    }
    if !s.chars().all(|c| is_lower_alnum(c) || c == '-') {
        out.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    }
    if s.contains("--") {
        out.push("must not contain consecutive hyphens".to_string());
    }
    if !s.chars().any(|c| c.is_ascii_lowercase()) {
        out.push("must contain at least one letter (a-z)".to_string());
    }
    if s.starts_with('-') || s.ends_with('-') {
        out.push("must not begin or end with a hyphen".to_string());
    }
    out
}

fn validate_container(
    c: &Container,
    path: &str,
    names: &mut BTreeSet<String>,
    errs: &mut ErrorList,
) {
    if c.name.is_empty() {
        errs.push(FieldError::required(format!("{path}.name"), ""));
    } else {
        for m in dns1123_label(&c.name) {
            errs.push(FieldError::invalid(
                format!("{path}.name"),
                c.name.as_str(),
                m,
            ));
        }
        if !names.insert(c.name.clone()) {
            errs.push(FieldError::duplicate(
                format!("{path}.name"),
                c.name.as_str(),
            ));
        }
    }
    if c.image.as_deref().unwrap_or("").trim().is_empty() {
        errs.push(FieldError::required(format!("{path}.image"), ""));
    }
    if let Some(policy) = c.image_pull_policy.as_deref() {
        const P: &[&str] = &["Always", "IfNotPresent", "Never"];
        if !P.contains(&policy) {
            errs.push(FieldError::not_supported(
                format!("{path}.imagePullPolicy"),
                policy,
                P,
            ));
        }
    }
    let mut port_names = BTreeSet::new();
    for (i, p) in c.ports.iter().flatten().enumerate() {
        let pp = format!("{path}.ports[{i}]");
        validate_port_number(p.container_port, &format!("{pp}.containerPort"), errs);
        if let Some(hp) = p.host_port
            && hp != 0
        {
            validate_port_number(hp, &format!("{pp}.hostPort"), errs);
        }
        validate_protocol(p.protocol.as_deref(), &format!("{pp}.protocol"), errs);
        if let Some(n) = p.name.as_deref() {
            for m in is_iana_svc_name(n) {
                errs.push(FieldError::invalid(format!("{pp}.name"), n, m));
            }
            if !port_names.insert(n.to_string()) {
                errs.push(FieldError::duplicate(format!("{pp}.name"), n));
            }
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        if e.name.is_empty() {
            errs.push(FieldError::required(format!("{path}.env[{i}].name"), ""));
        }
    }
    let mut mounts = BTreeSet::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        if m.name.is_empty() {
            errs.push(FieldError::required(
                format!("{path}.volumeMounts[{i}].name"),
                "",
            ));
        }
        if m.mount_path.is_empty() {
            errs.push(FieldError::required(
                format!("{path}.volumeMounts[{i}].mountPath"),
                "",
            ));
        } else if !mounts.insert(m.mount_path.clone()) {
            errs.push(FieldError::invalid(
                format!("{path}.volumeMounts[{i}].mountPath"),
                m.mount_path.as_str(),
                "must be unique",
            ));
        }
    }
}

/// Validates a pod spec at `path` (`spec` or `spec.template.spec`).
pub fn validate_pod_spec(spec: &PodSpec, path: &str) -> ErrorList {
    let mut errs = ErrorList::default();
    if spec.containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    let mut names = BTreeSet::new();
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        validate_container(
            c,
            &format!("{path}.initContainers[{i}]"),
            &mut names,
            &mut errs,
        );
    }
    for (i, c) in spec.containers.iter().enumerate() {
        validate_container(c, &format!("{path}.containers[{i}]"), &mut names, &mut errs);
    }
    let mut volumes = BTreeSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if v.name.is_empty() {
            errs.push(FieldError::required(
                format!("{path}.volumes[{i}].name"),
                "",
            ));
        } else {
            for m in dns1123_label(&v.name) {
                errs.push(FieldError::invalid(
                    format!("{path}.volumes[{i}].name"),
                    v.name.as_str(),
                    m,
                ));
            }
            if !volumes.insert(v.name.clone()) {
                errs.push(FieldError::duplicate(
                    format!("{path}.volumes[{i}].name"),
                    v.name.as_str(),
                ));
            }
        }
    }
    for (ci, c) in spec.containers.iter().enumerate() {
        for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
            if !m.name.is_empty() && !volumes.contains(&m.name) {
                errs.push(FieldError {
                    kind: ErrorKind::NotFound,
                    field: format!("{path}.containers[{ci}].volumeMounts[{i}].name"),
                    bad_value: Some(format!("{:?}", m.name)),
                    detail: String::new(),
                });
            }
        }
    }
    if let Some(rp) = spec.restart_policy.as_deref() {
        const P: &[&str] = &["Always", "OnFailure", "Never"];
        if !P.contains(&rp) {
            errs.push(FieldError::not_supported(
                format!("{path}.restartPolicy"),
                rp,
                P,
            ));
        }
    }
    if let Some(dp) = spec.dns_policy.as_deref() {
        const P: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
        if !P.contains(&dp) {
            errs.push(FieldError::not_supported(
                format!("{path}.dnsPolicy"),
                dp,
                P,
            ));
        }
    }
    if let Some(g) = spec.termination_grace_period_seconds
        && g < 0
    {
        errs.push(FieldError::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            g,
            "must be greater than or equal to 0",
        ));
    }
    if let Some(ads) = spec.active_deadline_seconds
        && ads <= 0
    {
        errs.push(FieldError::invalid(
            format!("{path}.activeDeadlineSeconds"),
            ads,
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    if let Some(n) = spec.node_name.as_deref()
        && !n.is_empty()
    {
        for m in dns1123_subdomain(n) {
            errs.push(FieldError::invalid(format!("{path}.nodeName"), n, m));
        }
    }
    if let Some(ns) = &spec.node_selector {
        validate_labels(ns, &format!("{path}.nodeSelector"), &mut errs);
    }
    for (i, t) in spec.tolerations.iter().flatten().enumerate() {
        validate_toleration(t, &format!("{path}.tolerations[{i}]"), &mut errs);
    }
    errs
}

const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

fn validate_toleration(t: &Toleration, path: &str, errs: &mut ErrorList) {
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() {
        for m in qualified_name(key) {
            errs.push(FieldError::invalid(format!("{path}.key"), key, m));
        }
    }
    let op = t.operator.as_deref().unwrap_or("");
    if key.is_empty() && op != "Exists" {
        errs.push(FieldError::invalid(
            format!("{path}.operator"),
            op,
            "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
        ));
    }
    let effect = t.effect.as_deref().unwrap_or("");
    if t.toleration_seconds.is_some() && effect != "NoExecute" {
        errs.push(FieldError::invalid(
            format!("{path}.effect"),
            effect,
            "effect must be 'NoExecute' when `tolerationSeconds` is set",
        ));
    }
    match op {
        "" | "Equal" => {
            let value = t.value.as_deref().unwrap_or("");
            for m in label_value(value) {
                errs.push(FieldError::invalid(format!("{path}.operator"), value, m));
            }
        }
        "Exists" => {
            if let Some(v) = t.value.as_deref().filter(|v| !v.is_empty()) {
                errs.push(FieldError::invalid(
                    format!("{path}.operator"),
                    v,
                    "value must be empty when `operator` is 'Exists'",
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            format!("{path}.operator"),
            other,
            &["Equal", "Exists"],
        )),
    }
    if !effect.is_empty() && !TAINT_EFFECTS.contains(&effect) {
        errs.push(FieldError::not_supported(
            format!("{path}.effect"),
            effect,
            TAINT_EFFECTS,
        ));
    }
}

/// Validates a Pod.
pub fn validate_pod(pod: &Pod) -> ErrorList {
    let mut errs = validate_meta(&pod.metadata, "Pod", true, "metadata.");
    match &pod.spec {
        Some(spec) => errs.extend(validate_pod_spec(spec, "spec")),
        None => errs.push(FieldError::required("spec", "")),
    }
    errs
}

fn validate_template(t: &PodTemplateSpec, path: &str, errs: &mut ErrorList) {
    if let Some(labels) = &t.metadata.as_ref().and_then(|m| m.labels.clone()) {
        validate_labels(labels, &format!("{path}.metadata.labels"), errs);
    }
    match &t.spec {
        Some(spec) => {
            errs.extend(validate_pod_spec(spec, &format!("{path}.spec")));
            if let Some(rp) = spec.restart_policy.as_deref()
                && rp != "Always"
            {
                errs.push(FieldError::not_supported(
                    format!("{path}.spec.restartPolicy"),
                    rp,
                    &["Always"],
                ));
            }
        }
        None => errs.push(FieldError::required(format!("{path}.spec"), "")),
    }
}

/// Go's `%#v` rendering of a `map[string]string`, used in selector/label messages.
pub fn go_map(m: &BTreeMap<String, String>) -> String {
    let inner = m
        .iter()
        .map(|(k, v)| format!("{k:?}:{v:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("map[string]string{{{inner}}}")
}

/// Validates a ReplicationController (selector must match the template's labels).
pub fn validate_replication_controller(rc: &ReplicationController) -> ErrorList {
    let mut errs = validate_meta(&rc.metadata, "ReplicationController", true, "metadata.");
    let Some(spec) = &rc.spec else {
        errs.push(FieldError::required("spec", ""));
        return errs;
    };
    let selector = spec.selector.clone().unwrap_or_default();
    if selector.is_empty() {
        errs.push(FieldError::required("spec.selector", ""));
    } else {
        validate_labels(&selector, "spec.selector", &mut errs);
    }
    if let Some(r) = spec.replicas
        && r < 0
    {
        errs.push(FieldError::invalid(
            "spec.replicas",
            r,
            "must be greater than or equal to 0",
        ));
    }
    if let Some(m) = spec.min_ready_seconds
        && m < 0
    {
        errs.push(FieldError::invalid(
            "spec.minReadySeconds",
            m,
            "must be greater than or equal to 0",
        ));
    }
    match &spec.template {
        None => errs.push(FieldError::required("spec.template", "")),
        Some(t) => {
            let labels = t
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            if !selector.is_empty() && !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                errs.push(FieldError::invalid_raw(
                    "spec.template.metadata.labels",
                    go_map(&labels),
                    "`selector` does not match template `labels`",
                ));
            }
            validate_template(t, "spec.template", &mut errs);
        }
    }
    errs
}

/// Go's `%#v` rendering of a `metav1.LabelSelector`, used in immutable-field messages.
pub fn go_label_selector(sel: &LabelSelector) -> String {
    let labels = match &sel.match_labels {
        Some(m) => go_map(m),
        None => "map[string]string(nil)".to_string(),
    };
    let exprs = match &sel.match_expressions {
        None => "[]v1.LabelSelectorRequirement(nil)".to_string(),
        Some(list) => {
            let items = list
                .iter()
                .map(|r| {
                    let values = match &r.values {
                        None => "[]string(nil)".to_string(),
                        Some(v) => format!(
                            "[]string{{{}}}",
                            v.iter()
                                .map(|s| format!("{s:?}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                    format!(
                        "v1.LabelSelectorRequirement{{Key:{:?}, Operator:{:?}, Values:{values}}}",
                        r.key, r.operator
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("[]v1.LabelSelectorRequirement{{{items}}}")
        }
    };
    format!("v1.LabelSelector{{MatchLabels:{labels}, MatchExpressions:{exprs}}}")
}

/// Validates a `metav1.LabelSelector` (`ValidateLabelSelector`): label keys and values,
/// expression operators and their values.
pub fn validate_label_selector(sel: &LabelSelector, path: &str, errs: &mut ErrorList) {
    if let Some(m) = &sel.match_labels {
        validate_labels(m, &format!("{path}.matchLabels"), errs);
    }
    for (i, r) in sel.match_expressions.iter().flatten().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let n = r.values.as_ref().map_or(0, Vec::len);
        match r.operator.as_str() {
            "In" | "NotIn" if n == 0 => errs.push(FieldError::required(
                format!("{p}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if n > 0 => errs.push(FieldError::forbidden(
                format!("{p}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            op => errs.push(FieldError::invalid(
                format!("{p}.operator"),
                op,
                "not a valid selector operator",
            )),
        }
        for m in qualified_name(&r.key) {
            errs.push(FieldError::invalid(format!("{p}.key"), r.key.as_str(), m));
        }
        for v in r.values.iter().flatten() {
            for m in label_value(v) {
                errs.push(FieldError::invalid(format!("{p}.values"), v.as_str(), m));
            }
        }
    }
}

fn validate_int_or_percent(v: &IntOrString, path: &str, errs: &mut ErrorList) {
    match v {
        IntOrString::Int(n) if *n < 0 => errs.push(FieldError::invalid(
            path,
            *n,
            "must be greater than or equal to 0",
        )),
        IntOrString::Int(_) => {}
        IntOrString::String(s) => match percent(s) {
            None => errs.push(FieldError::invalid(
                path,
                s.as_str(),
                "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
            )),
            Some(p) if p > 100 => {
                errs.push(FieldError::invalid(path, s.as_str(), "must not be greater than 100%"))
            }
            Some(_) => {}
        },
    }
}

/// The number of a `[0-9]+%` string.
pub fn percent(s: &str) -> Option<u64> {
    let digits = s.strip_suffix('%')?;
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn int_or_percent_is_zero(v: Option<&IntOrString>) -> bool {
    match v {
        None | Some(IntOrString::Int(0)) => true,
        Some(IntOrString::Int(_)) => false,
        Some(IntOrString::String(s)) => percent(s) == Some(0),
    }
}

fn validate_daemon_set_strategy(s: &DaemonSetUpdateStrategy, path: &str, errs: &mut ErrorList) {
    const TYPES: &[&str] = &["OnDelete", "RollingUpdate"];
    let ty = s.type_.as_deref().unwrap_or("");
    if !TYPES.contains(&ty) {
        errs.push(FieldError::not_supported(format!("{path}.type"), ty, TYPES));
        return;
    }
    if ty != "RollingUpdate" {
        return;
    }
    let Some(ru) = &s.rolling_update else {
        errs.push(FieldError::required(format!("{path}.rollingUpdate"), ""));
        return;
    };
    let p = format!("{path}.rollingUpdate");
    if let Some(v) = &ru.max_unavailable {
        validate_int_or_percent(v, &format!("{p}.maxUnavailable"), errs);
    }
    if let Some(v) = &ru.max_surge {
        validate_int_or_percent(v, &format!("{p}.maxSurge"), errs);
    }
    let unavailable = !int_or_percent_is_zero(ru.max_unavailable.as_ref());
    let surge = !int_or_percent_is_zero(ru.max_surge.as_ref());
    if unavailable && surge {
        let v = match &ru.max_surge {
            Some(IntOrString::Int(n)) => Value::from(*n),
            Some(IntOrString::String(s)) => Value::from(s.as_str()),
            None => Value::Null,
        };
        errs.push(FieldError::invalid(
            format!("{p}.maxSurge"),
            v,
            "may not be set when maxUnavailable is non-zero",
        ));
    } else if !unavailable && !surge {
        errs.push(FieldError::required(
            format!("{p}.maxUnavailable"),
            "cannot be 0 when maxSurge is 0",
        ));
    }
}

/// An apps/v1 workload's selector and pod template: a non-empty valid selector that matches
/// the template's labels, and a valid template with restartPolicy Always.
fn validate_selected_template(
    sel: &LabelSelector,
    template: &PodTemplateSpec,
    errs: &mut ErrorList,
) {
    let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty());
    if empty {
        errs.push(FieldError::required("spec.selector", ""));
    } else {
        validate_label_selector(sel, "spec.selector", errs);
    }
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    // An empty selector selects nothing (Kubernetes' nil selector), so it matches no labels.
    let matches =
        !empty && crate::selector::LabelSelector::from_meta(sel).is_ok_and(|s| s.matches(&labels));
    if !matches {
        errs.push(FieldError::invalid_raw(
            "spec.template.metadata.labels",
            go_map(&labels),
            "`selector` does not match template `labels`",
        ));
    }
    validate_template(template, "spec.template", errs);
}

fn non_negative(v: Option<i32>, path: &str, errs: &mut ErrorList) {
    if let Some(n) = v
        && n < 0
    {
        errs.push(FieldError::invalid(
            path,
            n,
            "must be greater than or equal to 0",
        ));
    }
}

/// Validates a ReplicaSet (apps/v1 `ValidateReplicaSet`).
pub fn validate_replica_set(rs: &ReplicaSet) -> ErrorList {
    let mut errs = validate_meta(&rs.metadata, "ReplicaSet", true, "metadata.");
    let Some(spec) = &rs.spec else {
        errs.push(FieldError::required("spec", ""));
        return errs;
    };
    match &spec.template {
        Some(t) => validate_selected_template(&spec.selector, t, &mut errs),
        None => errs.push(FieldError::required("spec.template", "")),
    }
    non_negative(spec.replicas, "spec.replicas", &mut errs);
    non_negative(spec.min_ready_seconds, "spec.minReadySeconds", &mut errs);
    errs
}

fn int_or_percent_value(v: &IntOrString) -> Value {
    match v {
        IntOrString::Int(n) => Value::from(*n),
        IntOrString::String(s) => Value::from(s.as_str()),
    }
}

fn validate_deployment_strategy(s: &DeploymentStrategy, path: &str, errs: &mut ErrorList) {
    const TYPES: &[&str] = &["Recreate", "RollingUpdate"];
    let ty = s.type_.as_deref().unwrap_or("");
    if !TYPES.contains(&ty) {
        errs.push(FieldError::not_supported(format!("{path}.type"), ty, TYPES));
        return;
    }
    let p = format!("{path}.rollingUpdate");
    match (ty, &s.rolling_update) {
        ("Recreate", Some(_)) => errs.push(FieldError::forbidden(
            p,
            "may not be specified when strategy `type` is 'Recreate'",
        )),
        ("RollingUpdate", None) => errs.push(FieldError::required(
            p,
            "this should be defaulted and never be nil",
        )),
        ("RollingUpdate", Some(ru)) => {
            if let Some(v) = &ru.max_unavailable {
                validate_int_or_percent(v, &format!("{p}.maxUnavailable"), errs);
            }
            if let Some(v) = &ru.max_surge {
                validate_int_or_percent(v, &format!("{p}.maxSurge"), errs);
            }
            if int_or_percent_is_zero(ru.max_unavailable.as_ref())
                && int_or_percent_is_zero(ru.max_surge.as_ref())
            {
                errs.push(FieldError::invalid(
                    format!("{p}.maxUnavailable"),
                    ru.max_unavailable
                        .as_ref()
                        .map_or(Value::from(0), int_or_percent_value),
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
        }
        _ => {}
    }
}

/// Validates a Deployment (apps/v1 `ValidateDeployment`).
pub fn validate_deployment(d: &Deployment) -> ErrorList {
    let mut errs = validate_meta(&d.metadata, "Deployment", true, "metadata.");
    let Some(spec) = &d.spec else {
        errs.push(FieldError::required("spec", ""));
        return errs;
    };
    validate_selected_template(&spec.selector, &spec.template, &mut errs);
    non_negative(spec.replicas, "spec.replicas", &mut errs);
    non_negative(spec.min_ready_seconds, "spec.minReadySeconds", &mut errs);
    non_negative(
        spec.revision_history_limit,
        "spec.revisionHistoryLimit",
        &mut errs,
    );
    match &spec.strategy {
        Some(s) => validate_deployment_strategy(s, "spec.strategy", &mut errs),
        None => errs.push(FieldError::not_supported(
            "spec.strategy.type",
            "",
            &["Recreate", "RollingUpdate"],
        )),
    }
    if let Some(pd) = spec.progress_deadline_seconds {
        non_negative(Some(pd), "spec.progressDeadlineSeconds", &mut errs);
        if pd <= spec.min_ready_seconds.unwrap_or(0) {
            errs.push(FieldError::invalid(
                "spec.progressDeadlineSeconds",
                pd,
                "must be greater than minReadySeconds",
            ));
        }
    }
    errs
}

/// Validates a DaemonSet (apps/v1 `ValidateDaemonSet`): a selector that matches the
/// template's labels, a pod template with restartPolicy Always and no
/// activeDeadlineSeconds, the update strategy, and non-negative counts.
pub fn validate_daemon_set(ds: &DaemonSet) -> ErrorList {
    let mut errs = validate_meta(&ds.metadata, "DaemonSet", true, "metadata.");
    let Some(spec) = &ds.spec else {
        errs.push(FieldError::required("spec", ""));
        return errs;
    };
    validate_selected_template(&spec.selector, &spec.template, &mut errs);
    if let Some(ads) = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds)
    {
        errs.push(FieldError::invalid(
            "spec.template.spec.activeDeadlineSeconds",
            ads,
            "activeDeadlineSeconds in DaemonSet is not Supported",
        ));
    }
    if let Some(m) = spec.min_ready_seconds
        && m < 0
    {
        errs.push(FieldError::invalid(
            "spec.minReadySeconds",
            m,
            "must be greater than or equal to 0",
        ));
    }
    match &spec.update_strategy {
        Some(s) => validate_daemon_set_strategy(s, "spec.updateStrategy", &mut errs),
        None => errs.push(FieldError::not_supported(
            "spec.updateStrategy.type",
            "",
            &["OnDelete", "RollingUpdate"],
        )),
    }
    if let Some(r) = spec.revision_history_limit
        && r < 0
    {
        errs.push(FieldError::invalid(
            "spec.revisionHistoryLimit",
            r,
            "must be greater than or equal to 0",
        ));
    }
    errs
}

const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];

/// Validates a Service (the allocator checks ranges and collisions separately).
pub fn validate_service(svc: &Service) -> ErrorList {
    let mut errs = validate_meta(&svc.metadata, "Service", true, "metadata.");
    let Some(spec) = &svc.spec else {
        errs.push(FieldError::required("spec", ""));
        return errs;
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !SERVICE_TYPES.contains(&ty) {
        errs.push(FieldError::not_supported("spec.type", ty, SERVICE_TYPES));
    }
    let ports = spec.ports.clone().unwrap_or_default();
    if ty == "ExternalName" {
        match spec.external_name.as_deref() {
            None | Some("") => errs.push(FieldError::required("spec.externalName", "")),
            Some(n) => {
                for m in dns1123_subdomain(n.trim_end_matches('.')) {
                    errs.push(FieldError::invalid("spec.externalName", n, m));
                }
            }
        }
    } else if ports.is_empty() && spec.cluster_ip.as_deref() != Some("None") {
        errs.push(FieldError::required("spec.ports", ""));
    }
    let mut names = BTreeSet::new();
    let multi = ports.len() > 1;
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        match p.name.as_deref() {
            None | Some("") if multi => errs.push(FieldError::required(format!("{pp}.name"), "")),
            None | Some("") => {}
            Some(n) => {
                for m in dns1123_label(n) {
                    errs.push(FieldError::invalid(format!("{pp}.name"), n, m));
                }
                if !names.insert(n.to_string()) {
                    errs.push(FieldError::duplicate(format!("{pp}.name"), n));
                }
            }
        }
        validate_port_number(p.port, &format!("{pp}.port"), &mut errs);
        validate_protocol(p.protocol.as_deref(), &format!("{pp}.protocol"), &mut errs);
        match &p.target_port {
            Some(IntOrString::Int(t)) => {
                validate_port_number(*t, &format!("{pp}.targetPort"), &mut errs)
            }
            Some(IntOrString::String(s)) => {
                for m in is_iana_svc_name(s) {
                    errs.push(FieldError::invalid(
                        format!("{pp}.targetPort"),
                        s.as_str(),
                        m,
                    ));
                }
            }
            None => {}
        }
        if let Some(np) = p.node_port
            && np != 0
        {
            if ty == "ClusterIP" || ty == "ExternalName" {
                errs.push(FieldError::forbidden(
                    format!("{pp}.nodePort"),
                    format!("may not be used when `type` is '{ty}'"),
                ));
            } else {
                validate_port_number(np, &format!("{pp}.nodePort"), &mut errs);
            }
        }
    }
    if let Some(ip) = spec.cluster_ip.as_deref()
        && !ip.is_empty()
        && ip != "None"
        && ip.parse::<IpAddr>().is_err()
    {
        errs.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            ip,
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
    if ip_is_none(spec.cluster_ip.as_deref()) && (ty == "NodePort" || ty == "LoadBalancer") {
        errs.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            "None",
            format!("may not be set to 'None' for {ty} services"),
        ));
    }
    if let Some(sa) = spec.session_affinity.as_deref() {
        const A: &[&str] = &["ClientIP", "None"];
        if !A.contains(&sa) {
            errs.push(FieldError::not_supported("spec.sessionAffinity", sa, A));
        }
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        if ip.parse::<IpAddr>().is_err() {
            errs.push(FieldError::invalid(
                format!("spec.externalIPs[{i}]"),
                ip.as_str(),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }
    if let Some(sel) = &spec.selector {
        validate_labels(sel, "spec.selector", &mut errs);
    }
    errs
}

fn ip_is_none(ip: Option<&str>) -> bool {
    ip == Some("None")
}

/// Validates a Namespace.
pub fn validate_namespace(ns: &Namespace) -> ErrorList {
    validate_meta(&ns.metadata, "Namespace", false, "metadata.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

    #[test]
    fn dns_rules_match_kubernetes() {
        assert!(dns1123_label("my-name").is_empty());
        assert!(!dns1123_label("My-name").is_empty());
        assert!(!dns1123_label("-a").is_empty());
        assert!(dns1123_subdomain("example.com").is_empty());
        assert!(!dns1123_subdomain("example..com").is_empty());
        assert!(dns1035_label("abc-123").is_empty());
        assert!(!dns1035_label("1abc").is_empty());
        assert_eq!(
            dns1123_label(&"a".repeat(64))[0],
            "must be no more than 63 characters"
        );
        assert!(qualified_name("app.kubernetes.io/name").is_empty());
        assert!(!qualified_name("bad key").is_empty());
        assert!(label_value("").is_empty());
        assert!(!label_value("-x").is_empty());
    }

    #[test]
    fn service_port_zero_is_invalid_with_kubernetes_message() {
        let svc = Service {
            metadata: ObjectMeta {
                name: Some("x".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    port: 0,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let errs = validate_service(&svc);
        assert_eq!(
            errs.aggregate_message(),
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
        );
    }

    #[test]
    fn service_names_follow_dns1035() {
        let svc = Service {
            metadata: ObjectMeta {
                name: Some("1web".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    port: 80,
                    protocol: Some("XTP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let msgs: Vec<String> = validate_service(&svc)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(msgs[0].starts_with("metadata.name: Invalid value: \"1web\": a DNS-1035 label"));
        assert_eq!(
            msgs[1],
            "spec.ports[0].protocol: Unsupported value: \"XTP\": supported values: \"SCTP\", \"TCP\", \"UDP\""
        );
    }

    #[test]
    fn rc_selector_must_match_template_labels() {
        let rc: ReplicationController = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": 1, "selector": {"app": "web"}, "template": {
                "metadata": {"labels": {"app": "other"}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}], "restartPolicy": "Always"}}}
        }))
        .expect("valid json");
        let msgs: Vec<String> = validate_replication_controller(&rc)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            msgs,
            vec![
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`"
            ]
        );
    }

    fn daemon_set(v: Value) -> DaemonSet {
        let mut ds: DaemonSet = serde_json::from_value(v).expect("valid json");
        crate::defaults::default_daemon_set(&mut ds);
        ds
    }

    fn messages(errs: &ErrorList) -> Vec<String> {
        errs.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn daemon_set_selector_is_required_and_must_match_template_labels() {
        let ok = daemon_set(serde_json::json!({
            "metadata": {"name": "agent", "namespace": "kube-system"},
            "spec": {"selector": {"matchLabels": {"app": "agent"},
                                  "matchExpressions": [{"key": "tier", "operator": "Exists"}]},
                     "template": {"metadata": {"labels": {"app": "agent", "tier": "node"}},
                                  "spec": {"containers": [{"name": "c", "image": "agent"}]}}}
        }));
        assert!(
            validate_daemon_set(&ok).is_empty(),
            "{:?}",
            validate_daemon_set(&ok)
        );

        let other = daemon_set(serde_json::json!({
            "metadata": {"name": "agent", "namespace": "kube-system"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "template": {"metadata": {"labels": {"app": "other"}},
                                  "spec": {"containers": [{"name": "c", "image": "agent"}]}}}
        }));
        assert_eq!(
            messages(&validate_daemon_set(&other)),
            vec![
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`"
            ]
        );

        let missing = daemon_set(serde_json::json!({
            "metadata": {"name": "agent", "namespace": "kube-system"},
            "spec": {"template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"containers": [{"name": "c", "image": "agent"}]}}}
        }));
        let msgs = messages(&validate_daemon_set(&missing));
        assert_eq!(msgs[0], "spec.selector: Required value");
        assert!(msgs[1].ends_with("`selector` does not match template `labels`"));
    }

    #[test]
    fn daemon_set_template_and_strategy_rules() {
        let ds = daemon_set(serde_json::json!({
            "metadata": {"name": "agent", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "a"},
                                  "matchExpressions": [{"key": "x", "operator": "In"}]},
                     "updateStrategy": {"type": "RollingUpdate",
                                        "rollingUpdate": {"maxUnavailable": "150%", "maxSurge": 0}},
                     "minReadySeconds": -1,
                     "template": {"metadata": {"labels": {"app": "a"}},
                                  "spec": {"restartPolicy": "Never", "activeDeadlineSeconds": 5,
                                           "tolerations": [{"operator": "Equal", "value": "v"}],
                                           "containers": [{"name": "c", "image": "agent"}]}}}
        }));
        let msgs = messages(&validate_daemon_set(&ds));
        for want in [
            "spec.selector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'",
            "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
            "spec.template.spec.activeDeadlineSeconds: Invalid value: 5: activeDeadlineSeconds in DaemonSet is not Supported",
            "spec.template.spec.tolerations[0].operator: Invalid value: \"Equal\": operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            "spec.minReadySeconds: Invalid value: -1: must be greater than or equal to 0",
            "spec.updateStrategy.rollingUpdate.maxUnavailable: Invalid value: \"150%\": must not be greater than 100%",
        ] {
            assert!(
                msgs.iter().any(|m| m == want),
                "missing {want:?} in {msgs:#?}"
            );
        }

        let bad_type = daemon_set(serde_json::json!({
            "metadata": {"name": "agent", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "a"}},
                     "updateStrategy": {"type": "Recreate"},
                     "template": {"metadata": {"labels": {"app": "a"}},
                                  "spec": {"containers": [{"name": "c", "image": "agent"}]}}}
        }));
        assert_eq!(
            messages(&validate_daemon_set(&bad_type)),
            vec![
                "spec.updateStrategy.type: Unsupported value: \"Recreate\": supported values: \"OnDelete\", \"RollingUpdate\""
            ]
        );
        let both_zero = daemon_set(serde_json::json!({
            "metadata": {"name": "agent", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "a"}},
                     "updateStrategy": {"rollingUpdate": {"maxUnavailable": "0%"}},
                     "template": {"metadata": {"labels": {"app": "a"}},
                                  "spec": {"containers": [{"name": "c", "image": "agent"}]}}}
        }));
        assert_eq!(
            messages(&validate_daemon_set(&both_zero)),
            vec![
                "spec.updateStrategy.rollingUpdate.maxUnavailable: Required value: cannot be 0 when maxSurge is 0"
            ]
        );
    }

    #[test]
    fn pod_requires_containers_and_images() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "Bad_Name", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 70000, "protocol": "TCP"}]}]}
        }))
        .expect("valid json");
        let msgs: Vec<String> = validate_pod(&pod).iter().map(|e| e.to_string()).collect();
        assert!(msgs[0].starts_with(
            "metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"
        ));
        assert!(msgs.contains(&"spec.containers[0].image: Required value".to_string()));
        assert!(msgs.contains(
            &"spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive".to_string()
        ));
    }
}
