//! Service-account tokens in Kubernetes' legacy secret-token format: ES256 JWTs with
//! `iss: kubernetes/serviceaccount`, signed by the controller-manager's token controller and
//! verified by the apiserver with the same P-256 key. Both sides use this module: the claims,
//! the JWT encoding, and the key file.
//!
//! Key file convention: `--service-account-key-file` (apiserver) /
//! `--service-account-private-key-file` (controller-manager), default
//! `<data-dir>/service-account-key.pk8`, a PKCS#8 DER P-256 private key, mode 0600. Whichever
//! component starts first creates it; the other reads it. PEM files (`PRIVATE KEY` PKCS#8 or
//! `PUBLIC KEY` SPKI, P-256) are accepted for verification, several keys per file.
//!
//! The key file is the one piece of I/O in this crate: both components must create and read
//! it identically.

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

/// `iss` of service-account tokens.
pub const ISSUER: &str = "kubernetes/serviceaccount";
/// Default key file name in a data dir.
pub const KEY_FILE: &str = "service-account-key.pk8";
/// Secret type of token secrets.
pub const SECRET_TYPE: &str = "kubernetes.io/service-account-token";
/// Annotation naming the service account of a token secret.
pub const ANNOTATION_NAME: &str = "kubernetes.io/service-account.name";
/// Annotation holding the uid of the service account of a token secret.
pub const ANNOTATION_UID: &str = "kubernetes.io/service-account.uid";

/// A key file that cannot be created, read or used.
#[derive(Debug, thiserror::Error)]
#[error("service account key file {path}: {message}")]
pub struct KeyError {
    /// The file.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

fn key_err(path: &Path, e: impl std::fmt::Display) -> KeyError {
    KeyError {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

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

    /// The user the token authenticates as: `system:serviceaccount:<namespace>:<name>`.
    pub fn username(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account_name
        )
    }

    /// The account's groups: `system:serviceaccounts` and `system:serviceaccounts:<ns>`.
    pub fn groups(&self) -> Vec<String> {
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", self.namespace),
        ]
    }
}

/// Creates a PKCS#8 P-256 key at `path` (mode 0600) unless one exists. The key is written to
/// a temporary file and hard-linked into place, so a reader never sees a partial key and a
/// key created concurrently by the other component wins without being overwritten.
pub fn create_key_if_missing(path: &Path) -> Result<(), KeyError> {
    if path.exists() {
        return Ok(());
    }
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .map_err(|e| key_err(path, e))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| key_err(path, format!("creating {dir:?}: {e}")))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        std::process::id()
    ));
    let written = (|| {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(doc.as_ref())?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        // The other component created it first.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(key_err(path, e)),
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

/// Signs tokens.
pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads the PKCS#8 DER key at `path`.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|e| key_err(path, e))?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &bytes, &rng)
            .map_err(|e| key_err(path, e))?;
        Ok(Signer { key, rng })
    }

    /// Loads the key at `path`, creating it first when absent (see
    /// [`create_key_if_missing`]).
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        create_key_if_missing(path)?;
        Signer::from_file(path)
    }

    /// A compact JWT (`header.payload.signature`) of `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        let payload = serde_json::to_vec(claims).map_err(|e| KeyError {
            path: String::new(),
            message: format!("encoding claims: {e}"),
        })?;
        let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|e| KeyError {
                path: String::new(),
                message: format!("signing a token: {e}"),
            })?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }
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
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|e| key_err(path, e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_tokens_verify_and_forged_ones_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(KEY_FILE);
        let signer = Signer::load_or_create(&path).expect("key created");
        create_key_if_missing(&path).expect("existing key kept");
        let v = Verifier::from_file(&path).expect("verifier");
        let claims = Claims::new("default", "default", "u1", "default-token-abcde");
        assert_eq!(claims.username(), "system:serviceaccount:default:default");
        let token = signer.sign(&claims).expect("signed");
        assert_eq!(v.verify(&token), Some(claims.clone()));
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Claims::new("kube-system", "admin", "x", "y")).expect("json"),
        );
        assert_eq!(v.verify(&parts.join(".")), None, "forged claims");
        assert_eq!(v.verify("a.b"), None);
        let again = Signer::load_or_create(&path).expect("key reloaded");
        assert!(
            v.verify(&again.sign(&claims).expect("signed")).is_some(),
            "the same key is reused"
        );
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
