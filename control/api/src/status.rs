//! `Status` objects for failed requests, with Kubernetes' codes, reasons and messages.

use serde_json::{Value, json};

use crate::validation::ErrorList;

/// One cause of a failure (a field error of a 422).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, ...
    pub reason: String,
    /// Message without the field path (`Invalid value: 0: must be ...`).
    pub message: String,
    /// Field path (`spec.ports[0].port`).
    pub field: String,
}

/// A failed request as Kubernetes reports it: HTTP code, reason, message and details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `AlreadyExists`, `Invalid`, ...).
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// `details.name`.
    pub name: Option<String>,
    /// `details.group`.
    pub group: Option<String>,
    /// `details.kind`.
    pub kind: Option<String>,
    /// `details.causes`.
    pub causes: Vec<Cause>,
    /// `details.retryAfterSeconds`.
    pub retry_after_seconds: Option<u32>,
}

impl std::fmt::Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StatusError {}

fn group_opt(group: &str) -> Option<String> {
    (!group.is_empty()).then(|| group.to_string())
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl StatusError {
    /// A status with code, reason and message and no details.
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        StatusError {
            code,
            reason: reason.to_string(),
            message: message.into(),
            name: None,
            group: None,
            kind: None,
            causes: Vec::new(),
            retry_after_seconds: None,
        }
    }

    fn with_details(mut self, group: &str, kind: &str, name: &str) -> Self {
        self.group = group_opt(group);
        self.kind = Some(kind.to_string());
        self.name = Some(name.to_string());
        self
    }

    /// 404: `pods "x" not found`.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, resource)),
        )
        .with_details(group, resource, name)
    }

    /// 404 for a path the server does not serve.
    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 409: `pods "x" already exists`.
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, resource)),
        )
        .with_details(group, resource, name)
    }

    /// 409: the object was modified since the client read it.
    pub fn conflict(group: &str, resource: &str, name: &str, detail: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {detail}",
                qualified(group, resource)
            ),
        )
        .with_details(group, resource, name)
    }

    /// 409 for a stale `resourceVersion` in an update.
    pub fn modified_conflict(group: &str, resource: &str, name: &str) -> Self {
        Self::conflict(
            group,
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422: `Service "x" is invalid: spec.ports[0].port: Invalid value: ...`.
    pub fn invalid(group: &str, kind: &str, name: &str, errors: &ErrorList) -> Self {
        let msg = errors.aggregate_message();
        // The group-qualified kind (`DaemonSet.apps`), as Kubernetes' `GroupKind.String()`.
        let qualified_kind = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let mut s = Self::new(
            422,
            "Invalid",
            format!("{qualified_kind} \"{name}\" is invalid: {msg}"),
        )
        .with_details(group, kind, name);
        s.causes = errors
            .iter()
            .map(|e| Cause {
                reason: e.kind.cause_reason().to_string(),
                message: e.body(),
                field: e.field.clone(),
            })
            .collect();
        s
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403: `pods "x" is forbidden: User "alice" cannot get resource "pods" ...`.
    pub fn forbidden(group: &str, resource: &str, name: &str, reason: &str) -> Self {
        let subject = if name.is_empty() {
            qualified(group, resource)
        } else {
            format!("{} \"{name}\"", qualified(group, resource))
        };
        Self::new(
            403,
            "Forbidden",
            format!("{subject} is forbidden: {reason}"),
        )
        .with_details(group, resource, name)
    }

    /// 405 Method Not Allowed.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// 410 for a compacted resource version: `too old resource version: 5 (10)`.
    pub fn expired(requested: i64, oldest: i64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// 413 Request Entity Too Large.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 415 Unsupported Media Type.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type}) - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"
            ),
        )
    }

    /// 415 for a PATCH whose `Content-Type` is not a supported patch type (server-side apply
    /// included), listing the patch types as Kubernetes does.
    pub fn unsupported_patch_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type}) - accepted media types include: {}",
                crate::patch::PatchType::CONTENT_TYPES.join(", ")
            ),
        )
    }

    /// 406 Not Acceptable.
    pub fn not_acceptable(accept: &str) -> Self {
        Self::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: application/json, application/yaml (asked for {accept})"
            ),
        )
    }

    /// 500 Internal Server Error.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
    }

    /// 503 Service Unavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// The `Status` object as JSON.
    pub fn to_value(&self) -> Value {
        let mut obj = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        let mut details = serde_json::Map::new();
        if let Some(n) = &self.name {
            details.insert("name".into(), json!(n));
        }
        if let Some(g) = &self.group {
            details.insert("group".into(), json!(g));
        }
        if let Some(k) = &self.kind {
            details.insert("kind".into(), json!(k));
        }
        if !self.causes.is_empty() {
            details.insert(
                "causes".into(),
                Value::Array(
                    self.causes
                        .iter()
                        .map(
                            |c| json!({"reason": c.reason, "message": c.message, "field": c.field}),
                        )
                        .collect(),
                ),
            );
        }
        if let Some(r) = self.retry_after_seconds {
            details.insert("retryAfterSeconds".into(), json!(r));
        }
        if !details.is_empty()
            && let Some(m) = obj.as_object_mut()
        {
            m.insert("details".into(), Value::Object(details));
        }
        obj
    }
}

/// The status the object model's errors answer: a malformed selector, body or patch is a 400,
/// a patch that does not apply a 422 (Kubernetes' answer to a failed JSON patch operation), a
/// JSON patch with too many operations a 413, an encoding the decoder lacks a 415.
impl From<crate::Error> for StatusError {
    fn from(e: crate::Error) -> Self {
        use crate::Error;
        match e {
            Error::PatchNotApplicable(m) => Self::new(
                422,
                "Invalid",
                format!("the server rejected our request due to an error in our request: {m}"),
            ),
            e @ Error::PatchTooLarge { .. } => Self::new(
                413,
                "RequestEntityTooLarge",
                format!("Request entity too large: {e}"),
            ),
            Error::UnsupportedEncoding(m) => Self::new(415, "UnsupportedMediaType", m),
            e @ (Error::Selector(_)
            | Error::FieldLabelNotSupported(_)
            | Error::Decode(_)
            | Error::BadPatch(_)) => Self::bad_request(e.to_string()),
        }
    }
}

/// A `Status` object for a successful delete of a collection or a subresource.
pub fn success(group: &str, kind: &str, name: &str, uid: Option<&str>) -> Value {
    let mut details = json!({"name": name, "kind": kind});
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    if let Some(u) = uid {
        details["uid"] = json!(u);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::FieldError;

    #[test]
    fn not_found_has_kubernetes_message_and_details() {
        let s = StatusError::not_found("", "pods", "x");
        assert_eq!(s.code, 404);
        let v = s.to_value();
        assert_eq!(v["message"], "pods \"x\" not found");
        assert_eq!(v["reason"], "NotFound");
        assert_eq!(v["details"]["kind"], "pods");
        assert_eq!(v["status"], "Failure");
    }

    #[test]
    fn invalid_lists_causes_with_field_paths() {
        let mut errs = ErrorList::default();
        errs.push(FieldError::invalid(
            "spec.ports[0].port",
            json!(0),
            "must be between 1 and 65535, inclusive",
        ));
        let s = StatusError::invalid("", "Service", "x", &errs);
        assert_eq!(s.code, 422);
        assert_eq!(
            s.message,
            "Service \"x\" is invalid: spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
        );
        let v = s.to_value();
        assert_eq!(v["details"]["causes"][0]["field"], "spec.ports[0].port");
        assert_eq!(v["details"]["causes"][0]["reason"], "FieldValueInvalid");
        let s = StatusError::invalid("apps", "DaemonSet", "agent", &errs);
        assert!(
            s.message
                .starts_with("DaemonSet.apps \"agent\" is invalid: "),
            "{}",
            s.message
        );
        assert_eq!(s.to_value()["details"]["kind"], "DaemonSet");
    }

    #[test]
    fn conflict_and_exists_messages() {
        assert_eq!(
            StatusError::already_exists("", "services", "web").message,
            "services \"web\" already exists"
        );
        assert!(
            StatusError::modified_conflict("", "pods", "p")
                .message
                .starts_with(
                    "Operation cannot be fulfilled on pods \"p\": the object has been modified"
                )
        );
        assert_eq!(
            StatusError::expired(5, 10).message,
            "too old resource version: 5 (10)"
        );
    }
}
