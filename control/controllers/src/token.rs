//! Service-account tokens: ES256-signed JWTs in the legacy Kubernetes format, signed with a
//! P-256 key kept in the data dir (the apiserver verifies them with the same key, in its
//! `satoken` module).

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `iss` of service-account tokens.
pub const ISSUER: &str = "kubernetes/serviceaccount";
/// Secret type of token secrets.
pub const SECRET_TYPE: &str = "kubernetes.io/service-account-token";
/// Annotation naming the service account of a token secret.
pub const ANNOTATION_NAME: &str = "kubernetes.io/service-account.name";
/// Annotation holding the uid of the service account of a token secret.
pub const ANNOTATION_UID: &str = "kubernetes.io/service-account.uid";

/// Claims of a service-account token (Kubernetes' legacy token format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccountClaims {
    /// `kubernetes/serviceaccount`.
    pub iss: String,
    /// `system:serviceaccount:<namespace>:<name>`.
    pub sub: String,
    /// Namespace of the account.
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    pub namespace: String,
    /// Name of the secret holding the token.
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name")]
    pub secret_name: String,
    /// Name of the account.
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    pub service_account_name: String,
    /// Uid of the account.
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid")]
    pub service_account_uid: String,
}

impl ServiceAccountClaims {
    /// Claims for a token of account `name` (uid `uid`) in `namespace`, stored in `secret`.
    pub fn new(namespace: &str, name: &str, uid: &str, secret: &str) -> Self {
        ServiceAccountClaims {
            iss: ISSUER.into(),
            sub: format!("system:serviceaccount:{namespace}:{name}"),
            namespace: namespace.into(),
            secret_name: secret.into(),
            service_account_name: name.into(),
            service_account_uid: uid.into(),
        }
    }

    /// The user name the apiserver should authenticate the token as.
    pub fn username(&self) -> &str {
        &self.sub
    }

    /// Groups of the account: `system:serviceaccounts` and `system:serviceaccounts:<ns>`.
    pub fn groups(&self) -> Vec<String> {
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", self.namespace),
        ]
    }
}

/// Default key file name in the data dir.
pub const KEY_FILE: &str = "service-account-key.pk8";

/// Path of the signing key under `data_dir`.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// Signs service-account tokens.
pub struct TokenSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").finish_non_exhaustive()
    }
}

fn key_err(e: impl std::fmt::Display) -> Error {
    Error::Config(format!("service account signing key: {e}"))
}

impl TokenSigner {
    /// Loads the PKCS#8 P-256 key at `path`, creating it (mode 0600) when absent.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(key_err)?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                        op: "create",
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
                match write_private(path, doc.as_ref()) {
                    Ok(()) => doc.as_ref().to_vec(),
                    // Another component (the apiserver) created it meanwhile: use theirs.
                    Err(Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists =>
                    {
                        std::fs::read(path).map_err(|source| Error::Io {
                            op: "read",
                            path: path.to_path_buf(),
                            source,
                        })?
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(source) => {
                return Err(Error::Io {
                    op: "read",
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(key_err)?;
        Ok(TokenSigner { key, rng })
    }

    /// Signs `claims` into a compact JWT (`header.payload.signature`).
    pub fn sign(&self, claims: &ServiceAccountClaims) -> Result<String> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        let payload = serde_json::to_vec(claims).map_err(|source| Error::Encode {
            what: "token claims",
            source,
        })?;
        let signing_input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(key_err)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Io {
        op: "write",
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        op: "write",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The apiserver's verifier for the key at `path`.
    fn verifier(path: &Path) -> xkube_apiserver::satoken::Verifier {
        xkube_apiserver::satoken::Verifier::from_file(path).expect("verifier from the key file")
    }

    #[test]
    fn signed_tokens_verify_and_tampered_ones_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = key_path(dir.path());
        let signer = TokenSigner::load_or_create(&path).expect("key created");
        let claims =
            ServiceAccountClaims::new("default", "default", "uid-1", "default-token-abcde");
        assert_eq!(claims.username(), "system:serviceaccount:default:default");
        let token = signer.sign(&claims).expect("signed");
        let v = verifier(&path);
        let got = v.verify(&token).expect("verifies");
        assert_eq!(
            serde_json::to_value(&got).expect("json"),
            serde_json::to_value(&claims).expect("json"),
            "the apiserver reads back the signed claims"
        );
        assert_eq!(got.sub, "system:serviceaccount:default:default");

        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&ServiceAccountClaims::new("kube-system", "admin", "x", "y"))
                .expect("json"),
        );
        parts[1] = &forged;
        assert!(
            v.verify(&parts.join(".")).is_none(),
            "forged claims rejected"
        );
        assert!(v.verify("a.b").is_none());

        let again = TokenSigner::load_or_create(&path).expect("key reloaded");
        let token2 = again.sign(&claims).expect("signed again");
        assert!(v.verify(&token2).is_some(), "the same key is reused");
        let other_dir = tempfile::tempdir().expect("tempdir");
        let other_path = key_path(other_dir.path());
        TokenSigner::load_or_create(&other_path).expect("other key");
        assert!(
            verifier(&other_path).verify(&token).is_none(),
            "another key rejects"
        );
    }
}
