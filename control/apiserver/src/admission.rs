//! The admission chain, run in the configured order on mutating requests.

use serde_json::Value;
use xkube_api::{ResourceInfo, StatusError};

use crate::error::{Error, Result};

/// A built-in admission plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    /// Admits everything.
    AlwaysAdmit,
    /// Denies every mutation.
    AlwaysDeny,
    /// No new objects in missing or terminating namespaces; `default`, `kube-system` and
    /// `kube-public` cannot be deleted.
    NamespaceLifecycle,
    /// Objects only in existing namespaces.
    NamespaceExists,
    /// Pods may not set SELinux options, run-as-user, supplemental groups or fsGroup.
    SecurityContextDeny,
    /// Pods get their service account (`default` unless set), its token secret mounted at
    /// `/var/run/secrets/kubernetes.io/serviceaccount` and its imagePullSecrets.
    ServiceAccount,
    /// Pods get the container defaults of the namespace's LimitRanges and must stay within
    /// their bounds.
    LimitRanger,
    /// Creations that would exceed a ResourceQuota of the namespace are refused.
    ResourceQuota,
}

/// Every plugin name, in Kubernetes' recommended order.
pub const KNOWN: &str = "AlwaysAdmit, AlwaysDeny, NamespaceLifecycle, NamespaceExists, SecurityContextDeny, ServiceAccount, LimitRanger, ResourceQuota";

impl Plugin {
    /// Parses a plugin name.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "AlwaysAdmit" => Plugin::AlwaysAdmit,
            "AlwaysDeny" => Plugin::AlwaysDeny,
            "NamespaceLifecycle" => Plugin::NamespaceLifecycle,
            "NamespaceExists" => Plugin::NamespaceExists,
            "SecurityContextDeny" => Plugin::SecurityContextDeny,
            "ServiceAccount" => Plugin::ServiceAccount,
            "LimitRanger" => Plugin::LimitRanger,
            "ResourceQuota" => Plugin::ResourceQuota,
            other => {
                return Err(Error::Config(format!(
                    "unknown admission plugin {other:?} (known: {KNOWN})"
                )));
            }
        })
    }
}

/// Parses `--admission-control`.
pub fn parse_chain(names: &[String]) -> Result<Vec<Plugin>> {
    names
        .iter()
        .filter(|n| !n.trim().is_empty())
        .map(|n| Plugin::parse(n))
        .collect()
}

/// The operation being admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Create.
    Create,
    /// Update or patch.
    Update,
    /// Delete.
    Delete,
    /// Connect (exec, attach, proxy).
    Connect,
}

/// State of the request's namespace, looked up by the caller when a plugin needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceState {
    /// Exists and is active.
    Active,
    /// Being deleted.
    Terminating,
    /// Does not exist.
    Missing,
}

/// Whether any plugin of the chain needs the namespace state.
pub fn needs_namespace(chain: &[Plugin]) -> bool {
    chain
        .iter()
        .any(|p| matches!(p, Plugin::NamespaceLifecycle | Plugin::NamespaceExists))
}

fn security_context_violation(pod: &Value) -> Option<&'static str> {
    let sc = &pod["spec"]["securityContext"];
    if !sc["supplementalGroups"].is_null() {
        return Some("pod.Spec.SecurityContext.SupplementalGroups is forbidden");
    }
    if !sc["seLinuxOptions"].is_null() {
        return Some("pod.Spec.SecurityContext.SELinuxOptions is forbidden");
    }
    if !sc["runAsUser"].is_null() {
        return Some("pod.Spec.SecurityContext.RunAsUser is forbidden");
    }
    if !sc["fsGroup"].is_null() {
        return Some("pod.Spec.SecurityContext.FSGroup is forbidden");
    }
    for key in ["initContainers", "containers"] {
        for c in pod["spec"][key].as_array().into_iter().flatten() {
            let csc = &c["securityContext"];
            if !csc["seLinuxOptions"].is_null() {
                return Some("SecurityContext.SELinuxOptions is forbidden");
            }
            if !csc["runAsUser"].is_null() {
                return Some("SecurityContext.RunAsUser is forbidden");
            }
        }
    }
    None
}

/// Runs the chain; `ns_state` is the request namespace's state (only consulted when needed).
pub fn admit(
    chain: &[Plugin],
    op: Operation,
    res: &ResourceInfo,
    namespace: &str,
    name: &str,
    object: Option<&Value>,
    ns_state: Option<NamespaceState>,
) -> Result<(), StatusError> {
    let forbidden = |msg: &str| StatusError::forbidden(res.group, res.plural, name, msg);
    for p in chain {
        match p {
            Plugin::AlwaysAdmit => {}
            Plugin::AlwaysDeny => {
                return Err(forbidden("admission control is denying all modifications"));
            }
            Plugin::NamespaceLifecycle => {
                if res.plural == "namespaces"
                    && op == Operation::Delete
                    && matches!(name, "default" | "kube-system" | "kube-public")
                {
                    return Err(forbidden("this namespace may not be deleted"));
                }
                if res.namespaced && op == Operation::Create {
                    match ns_state {
                        Some(NamespaceState::Missing) => {
                            return Err(StatusError::not_found("", "namespaces", namespace));
                        }
                        Some(NamespaceState::Terminating) => {
                            return Err(forbidden(&format!(
                                "unable to create new content in namespace {namespace} because it is being terminated"
                            )));
                        }
                        _ => {}
                    }
                }
            }
            Plugin::NamespaceExists => {
                if res.namespaced
                    && matches!(op, Operation::Create | Operation::Update)
                    && ns_state == Some(NamespaceState::Missing)
                {
                    return Err(StatusError::not_found("", "namespaces", namespace));
                }
            }
            Plugin::SecurityContextDeny => {
                if res.plural == "pods"
                    && matches!(op, Operation::Create | Operation::Update)
                    && let Some(v) = object.and_then(security_context_violation)
                {
                    return Err(forbidden(v));
                }
            }
            // Plugins that read the store run in [`Admission::run`].
            Plugin::ServiceAccount | Plugin::LimitRanger | Plugin::ResourceQuota => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pods() -> &'static ResourceInfo {
        xkube_api::resources::find("", "v1", "pods").expect("pods")
    }

    #[test]
    fn chain_runs_in_order_with_kubernetes_messages() {
        let chain =
            parse_chain(&["NamespaceLifecycle".into(), "AlwaysDeny".into()]).expect("parses");
        let e = admit(
            &chain,
            Operation::Create,
            pods(),
            "gone",
            "p",
            None,
            Some(NamespaceState::Missing),
        )
        .expect_err("missing ns");
        assert_eq!(
            (e.code, e.message.as_str()),
            (404, "namespaces \"gone\" not found")
        );
        let e = admit(
            &chain,
            Operation::Create,
            pods(),
            "t",
            "p",
            None,
            Some(NamespaceState::Terminating),
        )
        .expect_err("terminating");
        assert_eq!(
            e.message,
            "pods \"p\" is forbidden: unable to create new content in namespace t because it is being terminated"
        );
        let e = admit(
            &chain,
            Operation::Create,
            pods(),
            "ok",
            "p",
            None,
            Some(NamespaceState::Active),
        )
        .expect_err("always deny");
        assert_eq!(e.code, 403);
        assert!(parse_chain(&["Bogus".into()]).is_err());
    }

    #[test]
    fn security_context_deny_rejects_run_as_user() {
        let chain = vec![Plugin::SecurityContextDeny];
        let pod =
            json!({"spec": {"containers": [{"name": "c", "securityContext": {"runAsUser": 0}}]}});
        let e = admit(
            &chain,
            Operation::Create,
            pods(),
            "d",
            "p",
            Some(&pod),
            None,
        )
        .expect_err("denied");
        assert_eq!(
            e.message,
            "pods \"p\" is forbidden: SecurityContext.RunAsUser is forbidden"
        );
        let ok = json!({"spec": {"containers": [{"name": "c"}]}});
        assert!(admit(&chain, Operation::Create, pods(), "d", "p", Some(&ok), None).is_ok());
    }
}
