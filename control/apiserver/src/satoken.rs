//! Service-account token authentication: ES256 JWTs in Kubernetes' legacy secret-token
//! format (`iss: kubernetes/serviceaccount`), as the controller-manager's token controller
//! signs them (`xkube_controllers::token`), verified with the same P-256 key.
//!
//! Key file convention: `--service-account-key-file`, default
//! `<data-dir>/service-account-key.pk8`, a PKCS#8 DER P-256 private key (the format the
//! controller-manager's `--service-account-private-key-file` writes and reads). The
//! apiserver creates it (mode 0600) when the default path is missing, so a controller-manager
//! started afterwards with the same path signs with it. PEM files (`PRIVATE KEY` PKCS#8 or
//! `PUBLIC KEY` SPKI, P-256) are accepted as well, several keys per file.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::UserInfo;
use crate::error::{Error, Result};
use crate::registry::Registry;

/// `iss` of service-account tokens.
pub const ISSUER: &str = "kubernetes/serviceaccount";
/// Default key file name in the data dir (shared with the controller-manager).
pub const KEY_FILE: &str = "service-account-key.pk8";

/// Claims of a legacy service-account token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// `kubernetes/serviceaccount`.
    pub iss: String,
    /// `system:serviceaccount:<namespace>:<name>`.
    pub sub: String,
    /// Namespace of the account.
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    pub namespace: String,
    /// Secret holding the token.
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name")]
    pub secret_name: String,
    /// Account name.
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    pub service_account_name: String,
    /// Account uid.
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid")]
    pub service_account_uid: String,
}

impl Claims {
    /// Claims of a token of account `name` (uid `uid`) in `namespace`, stored in `secret`.
    pub fn new(namespace: &str, name: &str, uid: &str, secret: &str) -> Self {
        Claims {
            iss: ISSUER.into(),
            sub: format!("system:serviceaccount:{namespace}:{name}"),
            namespace: namespace.into(),
            secret_name: secret.into(),
            service_account_name: name.into(),
            service_account_uid: uid.into(),
        }
    }
}

fn key_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("service account key file {}: {e}", path.display()))
}

/// Creates a PKCS#8 P-256 key at `path` (mode 0600) unless one exists. The key is written to
/// a temporary file and hard-linked into place, so a reader never sees a partial key and a
/// key created concurrently by the controller-manager wins without being overwritten.
pub fn create_key_if_missing(path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .map_err(|e| key_err(path, e))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        std::process::id()
    ));
    {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        o.mode(0o600);
        let mut f = o.open(&tmp).map_err(Error::io("create", &tmp))?;
        f.write_all(doc.as_ref())
            .map_err(Error::io("write", &tmp))?;
        f.sync_all().map_err(Error::io("sync", &tmp))?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        // Another process (the controller-manager) created it first.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("link", path)(e)),
    }
}

/// Uncompressed SEC1 point of a P-256 SubjectPublicKeyInfo (the last 65 bytes).
fn spki_point(der: &[u8]) -> Option<Vec<u8>> {
    // id-ecPublicKey and prime256v1 OIDs.
    const EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let has = |needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
    if der.len() < 65 || !has(EC) || !has(P256) {
        return None;
    }
    let point = &der[der.len() - 65..];
    (point[0] == 0x04).then(|| point.to_vec())
}

/// Public keys verifying service-account tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Verifier {
    /// Loads the key file (PKCS#8 DER, or PEM private/public keys).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(Error::io("read", path))?;
        let rng = SystemRandom::new();
        let from_pkcs8 = |der: &[u8]| {
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                .map(|k| k.public_key().as_ref().to_vec())
        };
        let mut keys = Vec::new();
        if bytes.starts_with(b"-----BEGIN") {
            for item in rustls_pemfile::read_all(&mut bytes.as_slice()) {
                match item.map_err(|e| key_err(path, e))? {
                    rustls_pemfile::Item::Pkcs8Key(k) => {
                        keys.push(from_pkcs8(k.secret_pkcs8_der()).map_err(|e| key_err(path, e))?)
                    }
                    rustls_pemfile::Item::SubjectPublicKeyInfo(k) => keys.push(
                        spki_point(k.as_ref())
                            .ok_or_else(|| key_err(path, "not a P-256 public key"))?,
                    ),
                    _ => {}
                }
            }
        } else {
            keys.push(from_pkcs8(&bytes).map_err(|e| key_err(path, e))?);
        }
        if keys.is_empty() {
            return Err(key_err(path, "no P-256 key found"));
        }
        Ok(Verifier { keys })
    }

    /// Checks `token`'s signature and issuer; `None` when it is not a valid token of ours.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let mut parts = token.trim().split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
        if header["alg"] != "ES256" {
            return None;
        }
        let sig = URL_SAFE_NO_PAD.decode(s).ok()?;
        let input = format!("{h}.{p}");
        let ok = self.keys.iter().any(|k| {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, k)
                .verify(input.as_bytes(), &sig)
                .is_ok()
        });
        if !ok {
            return None;
        }
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok()?;
        (claims.iss == ISSUER).then_some(claims)
    }
}

/// Signs tokens with the key at a path (for tests and tools; the controller-manager has its
/// own signer over the same format).
pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Signer {
    /// Loads the PKCS#8 DER key at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(Error::io("read", path))?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &bytes, &rng)
            .map_err(|e| key_err(path, e))?;
        Ok(Signer { key, rng })
    }

    /// A compact JWT of `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?);
        let input = format!("{header}.{payload}");
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|e| Error::Config(format!("signing a token: {e}")))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_tokens_verify_and_forged_ones_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(KEY_FILE);
        create_key_if_missing(&path).expect("key created");
        create_key_if_missing(&path).expect("existing key kept");
        let signer = Signer::from_file(&path).expect("signer");
        let v = Verifier::from_file(&path).expect("verifier");
        let claims = Claims::new("default", "default", "u1", "default-token-abcde");
        let token = signer.sign(&claims).expect("signed");
        assert_eq!(v.verify(&token), Some(claims));
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Claims::new("kube-system", "admin", "x", "y")).expect("json"),
        );
        assert_eq!(v.verify(&parts.join(".")), None, "forged claims");
        assert_eq!(v.verify("a.b"), None);
        let other = tempfile::tempdir().expect("tempdir");
        let other_path = other.path().join(KEY_FILE);
        create_key_if_missing(&other_path).expect("other key");
        assert_eq!(
            Verifier::from_file(&other_path).expect("v").verify(&token),
            None,
            "another key rejects"
        );
    }

    #[test]
    fn pem_public_keys_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(KEY_FILE);
        create_key_if_missing(&path).expect("key");
        let v = Verifier::from_file(&path).expect("verifier");
        // SPKI of the same key: the fixed P-256 prefix and the point.
        let mut spki = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        spki.extend_from_slice(&v.keys[0]);
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&spki)
        );
        let pem_path = dir.path().join("sa.pub");
        std::fs::write(&pem_path, pem).expect("write");
        let from_pem = Verifier::from_file(&pem_path).expect("pem verifier");
        assert_eq!(from_pem, v);
    }
}
