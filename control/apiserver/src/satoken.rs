//! Service-account token authentication. The token format, the key file and verification
//! are `xkube_api::satoken`'s (the controller-manager signs with the same module); this adds
//! Kubernetes' `--service-account-lookup` against the stored Secret and ServiceAccount.

use base64::Engine;

pub use xkube_api::satoken::{
    Claims, ISSUER, KEY_FILE, KeyError, Signer, Verifier, create_key_if_missing,
};

use crate::auth::UserInfo;
use crate::registry::Registry;

/// Authenticates a bearer token as a service account: a valid signature, and (with
/// `lookup`, Kubernetes' `--service-account-lookup`) the token's Secret still holds it and
/// its ServiceAccount still exists with the same uid, neither being deleted.
pub async fn authenticate(
    verifier: &Verifier,
    lookup: bool,
    reg: &Registry,
    token: &str,
) -> Option<UserInfo> {
    let claims = verifier.verify(token)?;
    let ns = claims.namespace.as_str();
    if ns.is_empty() || claims.service_account_name.is_empty() {
        return None;
    }
    let mut uid = claims.service_account_uid.clone();
    if lookup {
        let secrets = xkube_api::resources::find("", "v1", "secrets")?;
        let accounts = xkube_api::resources::find("", "v1", "serviceaccounts")?;
        let (secret, _) = reg.get(secrets, Some(ns), &claims.secret_name).await.ok()?;
        let stored = secret["data"]["token"]
            .as_str()
            .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())?;
        if stored != token.trim().as_bytes() || !secret["metadata"]["deletionTimestamp"].is_null() {
            tracing::debug!(secret = %claims.secret_name, ns, "token secret no longer holds the token");
            return None;
        }
        let (sa, _) = reg
            .get(accounts, Some(ns), &claims.service_account_name)
            .await
            .ok()?;
        let sa_uid = xkube_api::meta::uid(&sa);
        if !sa["metadata"]["deletionTimestamp"].is_null() || (!uid.is_empty() && uid != sa_uid) {
            tracing::debug!(account = %claims.service_account_name, ns, "service account gone or replaced");
            return None;
        }
        uid = sa_uid.to_string();
    }
    Some(UserInfo {
        name: format!("system:serviceaccount:{ns}:{}", claims.service_account_name),
        uid,
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
    })
}
