//! Typed handling of untyped objects: decode into the k8s-openapi type of a kind, find unknown
//! fields, apply defaults, validate, and encode back.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, LimitRange, Namespace, Node, Pod, ReplicationController,
    ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::validation::{self, ErrorList, FieldError};
use crate::{defaults, rbac};

/// Result of [`prepare`].
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The object after decoding (and defaulting), in canonical JSON.
    pub object: Value,
    /// Fields of the input the kind does not know (`spec.foo`), for field validation.
    pub unknown_fields: Vec<String>,
    /// Validation errors (empty when valid).
    pub errors: ErrorList,
}

/// Collects paths present in `input` but absent in `decoded` (null inputs are not unknown).
pub fn unknown_fields(input: &Value, decoded: &Value, path: &str, out: &mut Vec<String>) {
    match (input, decoded) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(d) => unknown_fields(v, d, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// An object that does not decode as its kind: Kubernetes' `... cannot be handled as a ...`
/// (a 400 on create and update, a 422 naming the field when it is the result of a patch).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} in version \"v1\" cannot be handled as a {kind}: {}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct DecodeError {
    /// The kind the object was decoded as.
    pub kind: String,
    /// The field that failed (`spec.ports[0].port`); empty for the object itself.
    pub path: String,
    /// The value found there, formatted as field errors print it.
    pub value: String,
    /// What was wrong with it (serde's message).
    pub message: String,
}

/// Decodes `input` as `T`; on failure decodes again tracking the path to name the field.
fn decode<T: DeserializeOwned>(kind: &str, input: &Value) -> Result<T, DecodeError> {
    let first = match serde_json::from_value::<T>(input.clone()) {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    let (path, message) = match serde_path_to_error::deserialize::<_, T>(input.clone()) {
        Err(e) => (
            e.path().iter().cloned().collect::<Vec<_>>(),
            e.inner().to_string(),
        ),
        Ok(_) => (Vec::new(), first.to_string()),
    };
    let mut field = String::new();
    let mut at = Some(input);
    for seg in &path {
        match seg {
            serde_path_to_error::Segment::Seq { index } => {
                field.push_str(&format!("[{index}]"));
                at = at.and_then(|v| v.get(index));
            }
            serde_path_to_error::Segment::Map { key } => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(key);
                at = at.and_then(|v| v.get(key));
            }
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
        }
    }
    Err(DecodeError {
        kind: kind.to_string(),
        path: field,
        value: at.map(validation::format_value).unwrap_or_default(),
        message,
    })
}

fn config_keys<'a>(keys: impl Iterator<Item = &'a String>, path: &str, errs: &mut ErrorList) {
    for k in keys {
        let ok = !k.is_empty()
            && k.len() <= 253
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !ok {
            errs.push(FieldError::invalid(
                path,
                k.as_str(),
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
            ));
        }
    }
}

fn meta_only(meta: &ObjectMeta, kind: &str, namespaced: bool) -> ErrorList {
    validation::validate_meta(meta, kind, namespaced, "metadata.")
}

fn roundtrip<T, D, V>(
    kind: &str,
    input: Value,
    apply_defaults: bool,
    default: D,
    validate: V,
) -> Result<Prepared, DecodeError>
where
    T: DeserializeOwned + Serialize,
    D: Fn(&mut T),
    V: Fn(&T) -> ErrorList,
{
    let mut typed: T = decode(kind, &input)?;
    let encode_error = |e: serde_json::Error| DecodeError {
        kind: kind.to_string(),
        path: String::new(),
        value: String::new(),
        message: e.to_string(),
    };
    let plain = serde_json::to_value(&typed).map_err(encode_error)?;
    let mut unknown = Vec::new();
    unknown_fields(&input, &plain, "", &mut unknown);
    if apply_defaults {
        default(&mut typed);
    }
    let errors = validate(&typed);
    let object = serde_json::to_value(&typed).map_err(encode_error)?;
    Ok(Prepared {
        object,
        unknown_fields: unknown,
        errors,
    })
}

/// Decodes `input` as `kind`, optionally defaults it, validates it and re-encodes it.
/// Kinds without a typed model pass through unchanged. The error names the field that did not
/// decode (`Pod in version "v1" cannot be handled as a Pod: metadata.name: ...`).
pub fn prepare(
    kind: &str,
    mut input: Value,
    apply_defaults: bool,
) -> Result<Prepared, DecodeError> {
    if apply_defaults {
        match kind {
            "Pod" => crate::limitrange::default_requests_from_limits(&mut input),
            "LimitRange" => crate::limitrange::default_limit_range(&mut input),
            _ => {}
        }
    }
    match kind {
        "Pod" => roundtrip::<Pod, _, _>(
            kind,
            input,
            apply_defaults,
            defaults::default_pod,
            validation::validate_pod,
        ),
        "Service" => roundtrip::<Service, _, _>(
            kind,
            input,
            apply_defaults,
            defaults::default_service,
            validation::validate_service,
        ),
        "ReplicationController" => roundtrip::<ReplicationController, _, _>(
            kind,
            input,
            apply_defaults,
            defaults::default_replication_controller,
            validation::validate_replication_controller,
        ),
        "DaemonSet" => roundtrip::<DaemonSet, _, _>(
            kind,
            input,
            apply_defaults,
            defaults::default_daemon_set,
            validation::validate_daemon_set,
        ),
        "ReplicaSet" => roundtrip::<ReplicaSet, _, _>(
            kind,
            input,
            apply_defaults,
            defaults::default_replica_set,
            validation::validate_replica_set,
        ),
        "Deployment" => roundtrip::<Deployment, _, _>(
            kind,
            input,
            apply_defaults,
            defaults::default_deployment,
            validation::validate_deployment,
        ),
        "Job" => roundtrip::<Job, _, _>(
            kind,
            input,
            apply_defaults,
            crate::batch::default_job,
            crate::batch::validate_job,
        ),
        "CronJob" => roundtrip::<CronJob, _, _>(
            kind,
            input,
            apply_defaults,
            crate::batch::default_cron_job,
            crate::batch::validate_cron_job,
        ),
        "Namespace" => roundtrip::<Namespace, _, _>(
            kind,
            input,
            apply_defaults,
            defaults::default_namespace,
            validation::validate_namespace,
        ),
        "Secret" => roundtrip::<Secret, _, _>(
            kind,
            input,
            apply_defaults,
            defaults::default_secret,
            |s: &Secret| {
                let mut e = meta_only(&s.metadata, "Secret", true);
                if let Some(d) = &s.data {
                    config_keys(d.keys(), "data", &mut e);
                }
                if let Some(d) = &s.string_data {
                    config_keys(d.keys(), "stringData", &mut e);
                }
                e
            },
        ),
        "ConfigMap" => roundtrip::<ConfigMap, _, _>(
            kind,
            input,
            apply_defaults,
            |_: &mut ConfigMap| {},
            |c: &ConfigMap| {
                let mut e = meta_only(&c.metadata, "ConfigMap", true);
                if let Some(d) = &c.data {
                    config_keys(d.keys(), "data", &mut e);
                }
                e
            },
        ),
        "Endpoints" => roundtrip::<Endpoints, _, _>(
            kind,
            input,
            apply_defaults,
            default_endpoints,
            validate_endpoints,
        ),
        "Node" => roundtrip::<Node, _, _>(
            kind,
            input,
            apply_defaults,
            |_: &mut Node| {},
            |n: &Node| meta_only(&n.metadata, "Node", false),
        ),
        "Event" => roundtrip::<Event, _, _>(
            kind,
            input,
            apply_defaults,
            |_: &mut Event| {},
            |ev: &Event| {
                let mut e = meta_only(&ev.metadata, "Event", true);
                if ev.involved_object.name.as_deref().unwrap_or("").is_empty()
                    && ev.involved_object.kind.as_deref().unwrap_or("").is_empty()
                {
                    e.push(FieldError::required("involvedObject", ""));
                }
                e
            },
        ),
        "ServiceAccount" => roundtrip::<ServiceAccount, _, _>(
            kind,
            input,
            apply_defaults,
            |_: &mut ServiceAccount| {},
            |s: &ServiceAccount| meta_only(&s.metadata, "ServiceAccount", true),
        ),
        "ResourceQuota" => roundtrip::<ResourceQuota, _, _>(
            kind,
            input,
            apply_defaults,
            |_: &mut ResourceQuota| {},
            |s: &ResourceQuota| meta_only(&s.metadata, "ResourceQuota", true),
        ),
        "LimitRange" => roundtrip::<LimitRange, _, _>(
            kind,
            input,
            apply_defaults,
            |_: &mut LimitRange| {},
            |s: &LimitRange| meta_only(&s.metadata, "LimitRange", true),
        ),
        "Role" => roundtrip::<Role, _, _>(
            kind,
            input,
            apply_defaults,
            |_: &mut Role| {},
            rbac::validate_role,
        ),
        "ClusterRole" => roundtrip::<ClusterRole, _, _>(
            kind,
            input,
            apply_defaults,
            |_: &mut ClusterRole| {},
            rbac::validate_cluster_role,
        ),
        "RoleBinding" => roundtrip::<RoleBinding, _, _>(
            kind,
            input,
            apply_defaults,
            |_: &mut RoleBinding| {},
            rbac::validate_role_binding,
        ),
        "ClusterRoleBinding" => roundtrip::<ClusterRoleBinding, _, _>(
            kind,
            input,
            apply_defaults,
            |_: &mut ClusterRoleBinding| {},
            rbac::validate_cluster_role_binding,
        ),
        "Lease" => roundtrip::<Lease, _, _>(
            kind,
            input,
            apply_defaults,
            |_: &mut Lease| {},
            |s: &Lease| meta_only(&s.metadata, "Lease", true),
        ),
        "EndpointSlice" => roundtrip::<EndpointSlice, _, _>(
            kind,
            input,
            apply_defaults,
            |_: &mut EndpointSlice| {},
            |s: &EndpointSlice| {
                let mut e = meta_only(&s.metadata, "EndpointSlice", true);
                const TYPES: &[&str] = &["FQDN", "IPv4", "IPv6"];
                if !TYPES.contains(&s.address_type.as_str()) {
                    e.push(FieldError::not_supported(
                        "addressType",
                        s.address_type.as_str(),
                        TYPES,
                    ));
                }
                e
            },
        ),
        _ => Ok(Prepared {
            object: input,
            unknown_fields: Vec::new(),
            errors: ErrorList::default(),
        }),
    }
}

fn default_endpoints(ep: &mut Endpoints) {
    for s in ep.subsets.iter_mut().flatten() {
        for p in s.ports.iter_mut().flatten() {
            if p.protocol.is_none() {
                p.protocol = Some("TCP".into());
            }
        }
    }
}

fn validate_endpoints(ep: &Endpoints) -> ErrorList {
    let mut errs = meta_only(&ep.metadata, "Endpoints", true);
    for (i, s) in ep.subsets.iter().flatten().enumerate() {
        for (j, a) in s
            .addresses
            .iter()
            .flatten()
            .chain(s.not_ready_addresses.iter().flatten())
            .enumerate()
        {
            if a.ip.parse::<std::net::IpAddr>().is_err() {
                errs.push(FieldError::invalid(
                    format!("subsets[{i}].addresses[{j}].ip"),
                    a.ip.as_str(),
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                ));
            }
        }
        for (j, p) in s.ports.iter().flatten().enumerate() {
            if !(1..=65535).contains(&p.port) {
                errs.push(FieldError::invalid(
                    format!("subsets[{i}].ports[{j}].port"),
                    p.port,
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
    }
    errs
}

fn strip_images(spec: &Value) -> Value {
    let mut s = spec.clone();
    for key in ["containers", "initContainers"] {
        if let Some(list) = s.get_mut(key).and_then(Value::as_array_mut) {
            for c in list {
                if let Some(m) = c.as_object_mut() {
                    m.remove("image");
                }
            }
        }
    }
    if let Some(m) = s.as_object_mut() {
        m.remove("activeDeadlineSeconds");
        m.remove("tolerations");
        m.remove("terminationGracePeriodSeconds");
    }
    s
}

/// Update rules beyond per-object validation: immutable fields.
pub fn validate_update(kind: &str, old: &Value, new: &Value) -> ErrorList {
    let mut errs = ErrorList::default();
    match kind {
        "Pod" => {
            let (o, n) = (&old["spec"], &new["spec"]);
            if strip_images(o) != strip_images(n) {
                errs.push(FieldError::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
        }
        "Service" => {
            let o = old["spec"]["clusterIP"].as_str().unwrap_or("");
            let n = new["spec"]["clusterIP"].as_str().unwrap_or("");
            if !o.is_empty() && o != n && new["spec"]["type"] != "ExternalName" {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    n,
                    "may not change once set",
                ));
            }
        }
        "DaemonSet" | "ReplicaSet" | "Deployment"
            if old["spec"]["selector"] != new["spec"]["selector"] =>
        {
            let sel = serde_json::from_value(new["spec"]["selector"].clone()).unwrap_or_default();
            errs.push(FieldError::invalid_raw(
                "spec.selector",
                validation::go_label_selector(&sel),
                "field is immutable",
            ));
        }
        "Job" => errs.extend(crate::batch::validate_job_update(old, new)),
        "RoleBinding" | "ClusterRoleBinding" if old["roleRef"] != new["roleRef"] => {
            errs.push(FieldError::invalid_raw(
                "roleRef",
                format!("{}", new["roleRef"]),
                "cannot change roleRef",
            ));
        }
        "Secret" | "ConfigMap"
            if old["immutable"] == Value::Bool(true)
                && (old.get("data") != new.get("data")
                    || old.get("stringData") != new.get("stringData")) =>
        {
            errs.push(FieldError::forbidden(
                "data",
                "field is immutable when `immutable` is set",
            ));
        }
        _ => {}
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prepare_defaults_validates_and_reports_unknown_fields() {
        let p = prepare(
            "Pod",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default", "creationTimestamp": null},
                   "spec": {"containers": [{"name": "c", "image": "nginx", "bogus": 1}]}}),
            true,
        )
        .expect("decodes");
        assert_eq!(
            p.unknown_fields,
            vec!["spec.containers[0].bogus".to_string()]
        );
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.object["spec"]["restartPolicy"], "Always");
    }

    #[test]
    fn prepare_rejects_wrong_types_with_decode_message() {
        let e = prepare("Pod", json!({"metadata": {"name": 5}}), true).expect_err("bad type");
        assert!(
            e.to_string()
                .starts_with("Pod in version \"v1\" cannot be handled as a Pod: metadata.name: "),
            "{e}"
        );
        assert_eq!(e.path, "metadata.name");
        assert_eq!(e.value, "5");
        let e = prepare(
            "Service",
            json!({"spec": {"ports": [{"port": 80}, {"port": "http"}]}}),
            true,
        )
        .expect_err("bad port");
        assert_eq!(e.path, "spec.ports[1].port");
        assert_eq!(e.value, "\"http\"");
    }

    #[test]
    fn daemon_set_selector_is_immutable() {
        let old = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}}});
        let new = json!({"spec": {"selector": {"matchLabels": {"app": "b"}}}});
        assert!(validate_update("DaemonSet", &old, &old).is_empty());
        assert_eq!(
            validate_update("DaemonSet", &old, &new).aggregate_message(),
            "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"b\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
        );
    }

    #[test]
    fn pod_spec_is_immutable_except_images() {
        let old = json!({"spec": {"containers": [{"name": "c", "image": "a"}]}});
        let img = json!({"spec": {"containers": [{"name": "c", "image": "b"}]}});
        let other = json!({"spec": {"containers": [{"name": "d", "image": "a"}]}});
        assert!(validate_update("Pod", &old, &img).is_empty());
        assert_eq!(validate_update("Pod", &old, &other).len(), 1);
    }
}
