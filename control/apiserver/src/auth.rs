//! Authentication (bearer tokens, basic auth, X.509 client certificates) and authorization
//! (AlwaysAllow, AlwaysDeny, ABAC).

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::options::AuthorizationMode;

pub use xkube_api::rbac::{Attributes, UserInfo};

/// Parses one CSV line with double-quoted fields.
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|s| s.trim().to_string()).collect()
}

fn read_csv(path: &Path, what: &str) -> Result<Vec<Vec<String>>> {
    let text = std::fs::read_to_string(path).map_err(Error::io("read", path))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f = csv_fields(line);
        if f.len() < 3 {
            return Err(Error::Config(format!(
                "{what} {}: line {}: need at least 3 columns",
                path.display(),
                i + 1
            )));
        }
        rows.push(f);
    }
    Ok(rows)
}

fn groups(f: &[String]) -> Vec<String> {
    f.get(3)
        .map(|g| {
            g.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The configured authenticators.
#[derive(Debug, Default)]
pub struct Authenticator {
    tokens: HashMap<String, UserInfo>,
    basic: HashMap<String, (String, UserInfo)>,
    /// Whether requests without credentials are anonymous rather than 401.
    pub anonymous: bool,
}

/// Outcome of authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthnResult {
    /// Authenticated.
    User(UserInfo),
    /// Credentials were given but are wrong, or none were given and anonymous is off.
    Unauthorized,
}

/// The token of a `Bearer` (or `bearer`) `Authorization` header value, trimmed.
pub fn bearer_token(h: &str) -> Option<&str> {
    let h = h.trim();
    h.strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))
        .map(str::trim)
}

impl Authenticator {
    /// Loads the token and basic-auth files.
    pub fn load(
        token_file: Option<&Path>,
        basic_file: Option<&Path>,
        anonymous: bool,
    ) -> Result<Self> {
        let mut a = Authenticator {
            anonymous,
            ..Default::default()
        };
        if let Some(p) = token_file {
            for f in read_csv(p, "token file")? {
                a.tokens
                    .insert(f[0].clone(), UserInfo::new(&f[1], &f[2], groups(&f)));
            }
        }
        if let Some(p) = basic_file {
            for f in read_csv(p, "basic auth file")? {
                a.basic.insert(
                    f[1].clone(),
                    (f[0].clone(), UserInfo::new(&f[1], &f[2], groups(&f))),
                );
            }
        }
        Ok(a)
    }

    /// Authenticates from the `Authorization` header and the verified client certificate's
    /// subject (`CN`, `O`s).
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        client_cert: Option<&(String, Vec<String>)>,
    ) -> AuthnResult {
        if let Some(h) = authorization {
            let h = h.trim();
            if let Some(token) = bearer_token(h) {
                return match self.tokens.get(token) {
                    Some(u) => AuthnResult::User(u.clone()),
                    None => AuthnResult::Unauthorized,
                };
            }
            if let Some(b) = h
                .strip_prefix("Basic ")
                .or_else(|| h.strip_prefix("basic "))
            {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok());
                if let Some((user, pass)) = decoded.as_deref().and_then(|d| d.split_once(':'))
                    && let Some((want, info)) = self.basic.get(user)
                    && want == pass
                {
                    return AuthnResult::User(info.clone());
                }
                return AuthnResult::Unauthorized;
            }
            return AuthnResult::Unauthorized;
        }
        if let Some((cn, orgs)) = client_cert {
            return AuthnResult::User(UserInfo::new(cn, "", orgs.clone()));
        }
        if self.anonymous {
            AuthnResult::User(UserInfo::anonymous())
        } else {
            AuthnResult::Unauthorized
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PolicySpec {
    #[serde(default)]
    user: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    readonly: bool,
    #[serde(default)]
    api_group: String,
    #[serde(default)]
    resource: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    non_resource_path: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Policy {
    #[serde(default)]
    spec: PolicySpec,
}

impl PolicySpec {
    fn subject_matches(&self, u: &UserInfo) -> bool {
        let user_ok = !self.user.is_empty() && (self.user == "*" || self.user == u.name);
        let group_ok =
            !self.group.is_empty() && (self.group == "*" || u.groups.contains(&self.group));
        user_ok || group_ok
    }

    fn matches(&self, u: &UserInfo, a: &Attributes) -> bool {
        if !self.subject_matches(u) {
            return false;
        }
        if self.readonly && !a.readonly() {
            return false;
        }
        if a.resource_request {
            let ns = self.namespace == "*" || self.namespace == a.namespace;
            let res = self.resource == "*" || self.resource == a.resource;
            let grp = self.api_group == "*" || self.api_group == a.group;
            ns && res && grp
        } else {
            let p = &self.non_resource_path;
            p == "*" || *p == a.path || (p.ends_with('*') && a.path.starts_with(&p[..p.len() - 1]))
        }
    }
}

/// One authorizer's answer (Kubernetes' `authorizer.Decision` with its reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; the reason says by what.
    Allow(String),
    /// Denied outright (the chain stops).
    Deny(String),
    /// This authorizer has no opinion; the next one decides.
    NoOpinion(String),
}

/// One mode of the chain.
enum Mode {
    AlwaysAllow,
    AlwaysDeny,
    Abac(Vec<AbacPolicy>),
    Node(crate::authz::NodeAuthorizer),
    Rbac(crate::authz::Rbac),
}

/// The configured authorizers, asked in `--authorization-mode` order (Kubernetes' union
/// authorizer): the first Allow or Deny decides; when all have no opinion the request is
/// forbidden with their reasons.
pub struct Authorizer {
    modes: Vec<Mode>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .modes
            .iter()
            .map(|m| match m {
                Mode::AlwaysAllow => "AlwaysAllow",
                Mode::AlwaysDeny => "AlwaysDeny",
                Mode::Abac(_) => "ABAC",
                Mode::Node(_) => "Node",
                Mode::Rbac(_) => "RBAC",
            })
            .collect();
        f.debug_struct("Authorizer").field("modes", &names).finish()
    }
}

/// An ABAC policy (opaque).
#[derive(Debug, Clone)]
pub struct AbacPolicy(PolicySpec);

/// Reads an ABAC policy file (one JSON policy per line). Blocking.
pub fn load_abac(path: &Path) -> Result<Vec<AbacPolicy>> {
    let text = std::fs::read_to_string(path).map_err(Error::io("read", path))?;
    let mut policies = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let p: Policy = serde_json::from_str(line).map_err(|e| {
            Error::Config(format!(
                "policy file {}: line {}: {e}",
                path.display(),
                i + 1
            ))
        })?;
        policies.push(AbacPolicy(p.spec));
    }
    Ok(policies)
}

impl Authorizer {
    /// Builds the chain for `modes`. ABAC needs its parsed policy file; Node and RBAC read
    /// the apiserver's watch caches.
    pub fn new(
        modes: &[AuthorizationMode],
        abac: Option<Vec<AbacPolicy>>,
        caches: &crate::authz::Caches,
    ) -> Result<Self> {
        let mut out = Vec::new();
        for m in modes {
            out.push(match m {
                AuthorizationMode::AlwaysAllow => Mode::AlwaysAllow,
                AuthorizationMode::AlwaysDeny => Mode::AlwaysDeny,
                AuthorizationMode::Abac => Mode::Abac(abac.clone().ok_or_else(|| {
                    Error::Config(
                        "--authorization-mode=ABAC needs --authorization-policy-file".into(),
                    )
                })?),
                AuthorizationMode::Node => Mode::Node(crate::authz::NodeAuthorizer::new(caches)?),
                AuthorizationMode::Rbac => Mode::Rbac(crate::authz::Rbac::new(caches)?),
            });
        }
        if out.is_empty() {
            return Err(Error::Config(
                "--authorization-mode needs at least one mode".into(),
            ));
        }
        Ok(Authorizer { modes: out })
    }

    /// The RBAC authorizer, when RBAC is a mode.
    pub fn rbac(&self) -> Option<&crate::authz::Rbac> {
        self.modes.iter().find_map(|m| match m {
            Mode::Rbac(r) => Some(r),
            _ => None,
        })
    }

    /// The chain's decision: allowed or not, and the reason (for SubjectAccessReviews).
    pub fn decide(&self, user: &UserInfo, attrs: &Attributes) -> (bool, String) {
        if user.in_group("system:masters") {
            return (true, String::new());
        }
        let mut reasons = Vec::new();
        for m in &self.modes {
            let d = match m {
                Mode::AlwaysAllow => Decision::Allow(String::new()),
                Mode::AlwaysDeny => Decision::Deny("Everything is forbidden.".into()),
                Mode::Abac(policies) => {
                    if policies.iter().any(|p| p.0.matches(user, attrs)) {
                        Decision::Allow(String::new())
                    } else {
                        Decision::NoOpinion("No policy matched.".into())
                    }
                }
                Mode::Node(n) => n.authorize(user, attrs),
                Mode::Rbac(r) => r.authorize(user, attrs),
            };
            match d {
                Decision::Allow(r) => return (true, r),
                Decision::Deny(r) => {
                    reasons.push(r);
                    break;
                }
                Decision::NoOpinion(r) if !r.is_empty() => reasons.push(r),
                Decision::NoOpinion(_) => {}
            }
        }
        (false, reasons.join(", "))
    }

    /// Whether `user` may do `attrs`; the error is the message of the 403.
    pub fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<(), String> {
        match self.decide(user, attrs) {
            (true, _) => Ok(()),
            (false, reason) => {
                let mut s = attrs.forbidden_message(&user.name);
                if !reason.is_empty() {
                    s.push_str(": ");
                    s.push_str(&reason);
                }
                Err(s)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_basic_and_certs_authenticate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tf = dir.path().join("tokens.csv");
        std::fs::write(&tf, "abc,alice,1,\"dev,ops\"\n").expect("write");
        let bf = dir.path().join("basic.csv");
        std::fs::write(&bf, "secret,bob,2\n").expect("write");
        let a = Authenticator::load(Some(&tf), Some(&bf), false).expect("loads");
        match a.authenticate(Some("Bearer abc"), None) {
            AuthnResult::User(u) => {
                assert_eq!(u.name, "alice");
                assert!(
                    u.groups.contains(&"dev".to_string()) && u.groups.contains(&"ops".to_string())
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            a.authenticate(Some("Bearer nope"), None),
            AuthnResult::Unauthorized
        );
        let b = base64::engine::general_purpose::STANDARD.encode("bob:secret");
        assert!(
            matches!(a.authenticate(Some(&format!("Basic {b}")), None), AuthnResult::User(u) if u.name == "bob")
        );
        let wrong = base64::engine::general_purpose::STANDARD.encode("bob:x");
        assert_eq!(
            a.authenticate(Some(&format!("Basic {wrong}")), None),
            AuthnResult::Unauthorized
        );
        assert!(matches!(
            a.authenticate(None, Some(&("carol".to_string(), vec!["g".to_string()]))),
            AuthnResult::User(u) if u.name == "carol"
        ));
        assert_eq!(a.authenticate(None, None), AuthnResult::Unauthorized);
    }

    #[test]
    fn abac_policies_follow_kubernetes_semantics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pf = dir.path().join("policy.jsonl");
        std::fs::write(
            &pf,
            concat!(
                r#"{"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": {"user": "alice", "namespace": "*", "resource": "*", "apiGroup": "*"}}"#,
                "\n",
                r#"{"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": {"user": "bob", "namespace": "projectCaribou", "resource": "pods", "apiGroup": "*", "readonly": true}}"#,
                "\n",
                r#"{"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": {"group": "system:authenticated", "readonly": true, "nonResourcePath": "*"}}"#,
                "\n"
            ),
        )
        .expect("write");
        let z = Authorizer::new(
            &[AuthorizationMode::Abac],
            Some(load_abac(&pf).expect("loads")),
            &crate::authz::Caches::default(),
        )
        .expect("chain");
        let alice = UserInfo::new("alice", "", vec![]);
        let bob = UserInfo::new("bob", "", vec![]);
        let attrs = |verb: &str, ns: &str| Attributes {
            verb: verb.into(),
            resource_request: true,
            resource: "pods".into(),
            namespace: ns.into(),
            ..Default::default()
        };
        assert!(z.authorize(&alice, &attrs("create", "x")).is_ok());
        assert!(z.authorize(&bob, &attrs("get", "projectCaribou")).is_ok());
        let e = z
            .authorize(&bob, &attrs("create", "projectCaribou"))
            .expect_err("readonly");
        assert_eq!(
            e,
            "User \"bob\" cannot create resource \"pods\" in API group \"\" in the namespace \"projectCaribou\": No policy matched."
        );
        assert!(z.authorize(&bob, &attrs("get", "other")).is_err());
        let api = Attributes {
            verb: "get".into(),
            path: "/api".into(),
            ..Default::default()
        };
        assert!(z.authorize(&bob, &api).is_ok());
    }
}
