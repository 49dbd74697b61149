//! Kubeconfig files, loaded and merged the way kubectl does, and the resolved connection
//! [`Config`].
//!
//! Rules followed (client-go's `clientcmd`): `--kubeconfig` names one file that must exist;
//! otherwise `KUBECONFIG` lists files (`:`-separated, missing ones skipped) merged so that the
//! first file to define a name or a value wins; otherwise `~/.kube/config`. Relative paths in
//! a file are relative to that file's directory. `*-data` fields are base64 and win over the
//! path forms.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A kubeconfig file (`kind: Config`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct Kubeconfig {
    /// `v1`.
    #[serde(rename = "apiVersion", skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `Config`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Named clusters.
    pub clusters: Vec<NamedCluster>,
    /// Named users.
    pub users: Vec<NamedUser>,
    /// Named contexts.
    pub contexts: Vec<NamedContext>,
    /// The context used when none is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    /// Preferences (kept as given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferences: Option<serde_json::Value>,
}

/// A named cluster entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamedCluster {
    /// Its name.
    pub name: String,
    /// The cluster.
    pub cluster: Cluster,
}

/// How to reach a cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct Cluster {
    /// `https://host:port` or `http://host:port`.
    pub server: String,
    /// PEM file of the CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<String>,
    /// Base64 PEM of the CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_authority_data: Option<String>,
    /// Do not verify the server certificate.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_tls_verify: bool,
    /// Name to verify the server certificate against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
}

/// A named user entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamedUser {
    /// Its name.
    pub name: String,
    /// The credentials.
    pub user: AuthInfo,
}

/// Credentials of a user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct AuthInfo {
    /// PEM file of the client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// Base64 PEM of the client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate_data: Option<String>,
    /// PEM file of the client key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// Base64 PEM of the client key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_data: Option<String>,
    /// Bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// File holding a bearer token.
    #[serde(rename = "tokenFile", skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// Basic-auth user name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Basic-auth password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// A named context entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamedContext {
    /// Its name.
    pub name: String,
    /// The context.
    pub context: Context,
}

/// A cluster, a user and a default namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Context {
    /// Cluster name.
    pub cluster: String,
    /// User name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Default namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

fn resolve_path(base: Option<&Path>, p: &mut Option<String>) {
    if let (Some(base), Some(path)) = (base, p.as_mut())
        && !path.is_empty()
        && Path::new(path.as_str()).is_relative()
    {
        *path = base.join(path.as_str()).to_string_lossy().into_owned();
    }
}

impl Kubeconfig {
    /// Parses kubeconfig YAML; relative file references are resolved against `base`.
    pub fn parse(text: &str, base: Option<&Path>) -> Result<Self> {
        let mut kc: Kubeconfig = if text.trim().is_empty() {
            Kubeconfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| Error::Kubeconfig(e.to_string()))?
        };
        for c in &mut kc.clusters {
            resolve_path(base, &mut c.cluster.certificate_authority);
        }
        for u in &mut kc.users {
            resolve_path(base, &mut u.user.client_certificate);
            resolve_path(base, &mut u.user.client_key);
            resolve_path(base, &mut u.user.token_file);
        }
        Ok(kc)
    }

    /// Reads one kubeconfig file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io("read", path))?;
        Self::parse(&text, path.parent())
            .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))
    }

    /// Merges `other` into `self`; what `self` already defines wins (kubectl's rule for the
    /// files of `KUBECONFIG`, first file first).
    pub fn merge(&mut self, other: Kubeconfig) {
        for c in other.clusters {
            if !self.clusters.iter().any(|x| x.name == c.name) {
                self.clusters.push(c);
            }
        }
        for u in other.users {
            if !self.users.iter().any(|x| x.name == u.name) {
                self.users.push(u);
            }
        }
        for c in other.contexts {
            if !self.contexts.iter().any(|x| x.name == c.name) {
                self.contexts.push(c);
            }
        }
        if self.current_context.as_deref().unwrap_or("").is_empty() {
            self.current_context = other.current_context;
        }
        if self.preferences.is_none() {
            self.preferences = other.preferences;
        }
        if self.api_version.is_none() {
            self.api_version = other.api_version;
        }
        if self.kind.is_none() {
            self.kind = other.kind;
        }
    }

    /// Reads and merges files in order; missing files are skipped (as for `KUBECONFIG`).
    pub fn read_merged(paths: &[PathBuf]) -> Result<Self> {
        let mut out = Kubeconfig::default();
        for p in paths {
            if !p.exists() {
                tracing::debug!(path = %p.display(), "kubeconfig file missing; skipped");
                continue;
            }
            out.merge(Self::read(p)?);
        }
        Ok(out)
    }

    /// The files kubectl would read: `explicit` (must exist), else `KUBECONFIG`, else
    /// `~/.kube/config`.
    pub fn paths(explicit: Option<&Path>) -> Result<Vec<PathBuf>> {
        if let Some(p) = explicit {
            if !p.exists() {
                return Err(Error::Kubeconfig(format!(
                    "stat {}: no such file or directory",
                    p.display()
                )));
            }
            return Ok(vec![p.to_path_buf()]);
        }
        if let Some(v) = std::env::var_os("KUBECONFIG")
            && !v.is_empty()
        {
            return Ok(std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect());
        }
        Ok(std::env::var_os("HOME")
            .map(|h| vec![PathBuf::from(h).join(".kube").join("config")])
            .unwrap_or_default())
    }

    /// Loads what kubectl would load (see [`Kubeconfig::paths`]).
    pub fn load(explicit: Option<&Path>) -> Result<Self> {
        Self::read_merged(&Self::paths(explicit)?)
    }

    /// Looks up a context.
    pub fn context(&self, name: &str) -> Option<&Context> {
        self.contexts
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.context)
    }

    /// Looks up a cluster.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.cluster)
    }

    /// Looks up a user.
    pub fn user(&self, name: &str) -> Option<&AuthInfo> {
        self.users.iter().find(|c| c.name == name).map(|c| &c.user)
    }
}

/// Where a pod's service-account credentials are mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Command-line overrides (kubectl's global flags).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--context`.
    pub context: Option<String>,
    /// `--cluster`.
    pub cluster: Option<String>,
    /// `--user`.
    pub user: Option<String>,
    /// `--namespace`.
    pub namespace: Option<String>,
    /// `--server`.
    pub server: Option<String>,
    /// `--token`.
    pub token: Option<String>,
    /// `--insecure-skip-tls-verify`.
    pub insecure_skip_tls_verify: bool,
    /// `--certificate-authority`.
    pub certificate_authority: Option<String>,
}

/// Basic-auth credentials.
#[derive(Clone, PartialEq)]
pub struct BasicAuth {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Everything needed to talk to one apiserver.
#[derive(Clone, Default)]
pub struct Config {
    /// Base URL of the apiserver.
    pub server: String,
    /// Namespace of namespaced requests without one.
    pub namespace: String,
    /// PEM of the CAs trusted for the server certificate (none: the built-in roots).
    pub root_certs_pem: Option<Vec<u8>>,
    /// Skip server certificate verification.
    pub insecure_skip_tls_verify: bool,
    /// Client certificate and key, PEM.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// Bearer token.
    pub token: Option<String>,
    /// Basic auth.
    pub basic_auth: Option<BasicAuth>,
    /// Name of the context used (empty when none).
    pub context: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("server", &self.server)
            .field("namespace", &self.namespace)
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .field("client_cert", &self.identity_pem.is_some())
            .field("token", &self.token.is_some())
            .field("basic_auth", &self.basic_auth)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

fn decode_data(field: &str, data: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| Error::Kubeconfig(format!("{field}: illegal base64 data: {e}")))
}

fn data_or_file(
    field: &str,
    data: Option<&String>,
    file: Option<&String>,
) -> Result<Option<Vec<u8>>> {
    if let Some(d) = data.filter(|d| !d.is_empty()) {
        return decode_data(field, d).map(Some);
    }
    if let Some(f) = file.filter(|f| !f.is_empty()) {
        return std::fs::read(f).map(Some).map_err(Error::io("read", f));
    }
    Ok(None)
}

impl Config {
    /// A config for a plain URL without credentials.
    pub fn new(server: impl Into<String>) -> Self {
        Config {
            server: server.into(),
            namespace: "default".into(),
            ..Config::default()
        }
    }

    /// Resolves `kc` with `o`: the selected context's cluster and user. Without any cluster
    /// the server is `http://localhost:8080`, as for kubectl.
    pub fn from_kubeconfig(kc: &Kubeconfig, o: &Overrides) -> Result<Self> {
        let ctx_name = o
            .context
            .clone()
            .or_else(|| kc.current_context.clone())
            .unwrap_or_default();
        let ctx = if ctx_name.is_empty() {
            Context::default()
        } else {
            match kc.context(&ctx_name) {
                Some(c) => c.clone(),
                None if o.context.is_some() => {
                    return Err(Error::Kubeconfig(format!(
                        "context was not found for specified context: {ctx_name}"
                    )));
                }
                None => Context::default(),
            }
        };
        let cluster_name = o.cluster.clone().unwrap_or(ctx.cluster.clone());
        let cluster = match kc.cluster(&cluster_name) {
            Some(c) => c.clone(),
            None if o.cluster.is_some() => {
                return Err(Error::Kubeconfig(format!(
                    "cluster \"{cluster_name}\" does not exist"
                )));
            }
            None => Cluster::default(),
        };
        let user_name = o.user.clone().unwrap_or(ctx.user.clone());
        let user = kc.user(&user_name).cloned().unwrap_or_default();

        let mut server = o.server.clone().unwrap_or(cluster.server.clone());
        if server.is_empty() {
            server = "http://localhost:8080".into();
        } else if !server.contains("://") {
            server = format!("https://{server}");
        }
        let server = server.trim_end_matches('/').to_string();
        let root_certs_pem = match &o.certificate_authority {
            Some(f) => Some(std::fs::read(f).map_err(Error::io("read", f))?),
            None => data_or_file(
                "certificate-authority-data",
                cluster.certificate_authority_data.as_ref(),
                cluster.certificate_authority.as_ref(),
            )?,
        };
        let cert = data_or_file(
            "client-certificate-data",
            user.client_certificate_data.as_ref(),
            user.client_certificate.as_ref(),
        )?;
        let key = data_or_file(
            "client-key-data",
            user.client_key_data.as_ref(),
            user.client_key.as_ref(),
        )?;
        let identity_pem = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(Error::Kubeconfig(format!(
                    "user {user_name:?}: client-certificate and client-key must be given together"
                )));
            }
        };
        let token = match (&o.token, &user.token, &user.token_file) {
            (Some(t), _, _) => Some(t.clone()),
            (None, Some(t), _) if !t.is_empty() => Some(t.clone()),
            (None, _, Some(f)) if !f.is_empty() => Some(
                std::fs::read_to_string(f)
                    .map_err(Error::io("read", f))?
                    .trim()
                    .to_string(),
            ),
            _ => None,
        };
        let basic_auth = match (&user.username, &user.password) {
            (Some(u), p) if !u.is_empty() => Some(BasicAuth {
                username: u.clone(),
                password: p.clone().unwrap_or_default(),
            }),
            _ => None,
        };
        Ok(Config {
            server,
            namespace: o
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .or(ctx.namespace.filter(|n| !n.is_empty()))
                .unwrap_or_else(|| "default".into()),
            root_certs_pem,
            insecure_skip_tls_verify: o.insecure_skip_tls_verify
                || cluster.insecure_skip_tls_verify,
            identity_pem,
            token,
            basic_auth,
            context: ctx_name,
        })
    }

    /// Loads the kubeconfig kubectl would (see [`Kubeconfig::paths`]) and resolves it.
    pub fn load(explicit: Option<&Path>, o: &Overrides) -> Result<Self> {
        let kc = Kubeconfig::load(explicit)?;
        Self::from_kubeconfig(&kc, o)
    }

    /// Like [`Config::load`] with no explicit file and no overrides; inside a pod (no
    /// kubeconfig file, `KUBERNETES_SERVICE_HOST` set) the in-cluster config.
    pub fn infer() -> Result<Self> {
        let paths = Kubeconfig::paths(None)?;
        if !paths.iter().any(|p| p.exists())
            && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        {
            return Self::in_cluster();
        }
        Self::load(None, &Overrides::default())
    }

    /// The config of a pod: `KUBERNETES_SERVICE_HOST`/`_PORT` and the service-account token,
    /// CA and namespace mounted at `/var/run/secrets/kubernetes.io/serviceaccount`.
    pub fn in_cluster() -> Result<Self> {
        Self::in_cluster_from(Path::new(SERVICE_ACCOUNT_DIR))
    }

    /// [`Config::in_cluster`] with the service-account files in `dir`.
    pub fn in_cluster_from(dir: &Path) -> Result<Self> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
            Error::Kubeconfig("not in a cluster: KUBERNETES_SERVICE_HOST is not set".into())
        })?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        Self::in_cluster_with(dir, &host, &port)
    }

    /// The in-cluster config for an apiserver at `host:port` with the service-account files
    /// in `dir`.
    pub fn in_cluster_with(dir: &Path, host: &str, port: &str) -> Result<Self> {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read(&p).map_err(Error::io("read", p))
        };
        let token = String::from_utf8_lossy(&read("token")?).trim().to_string();
        let namespace = read("namespace")
            .map(|n| String::from_utf8_lossy(&n).trim().to_string())
            .unwrap_or_else(|_| "default".into());
        Ok(Config {
            server: format!("https://{host}:{port}"),
            namespace,
            root_certs_pem: Some(read("ca.crt")?),
            token: Some(token),
            ..Config::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn merges_files_first_definition_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(
            &a,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: one\n  cluster:\n    server: https://1.example:6443\ncontexts:\n- name: c1\n  context:\n    cluster: one\n    user: u1\n    namespace: ns1\n",
        )
        .expect("write a");
        std::fs::write(
            &b,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: one\n  cluster:\n    server: https://shadowed:1\n- name: two\n  cluster:\n    server: http://127.0.0.1:8080\nusers:\n- name: u1\n  user:\n    token: abc\ncontexts:\n- name: c2\n  context:\n    cluster: two\ncurrent-context: c1\n",
        )
        .expect("write b");
        let kc = Kubeconfig::read_merged(&[a, dir.path().join("missing"), b]).expect("merged");
        assert_eq!(kc.clusters.len(), 2);
        assert_eq!(
            kc.cluster("one").map(|c| c.server.as_str()),
            Some("https://1.example:6443")
        );
        assert_eq!(kc.current_context.as_deref(), Some("c1"));
        let cfg = Config::from_kubeconfig(&kc, &Overrides::default()).expect("resolves");
        assert_eq!(cfg.server, "https://1.example:6443");
        assert_eq!(cfg.namespace, "ns1");
        assert_eq!(cfg.token.as_deref(), Some("abc"));
        let cfg = Config::from_kubeconfig(
            &kc,
            &Overrides {
                context: Some("c2".into()),
                namespace: Some("x".into()),
                ..Overrides::default()
            },
        )
        .expect("resolves c2");
        assert_eq!(cfg.server, "http://127.0.0.1:8080");
        assert_eq!(cfg.namespace, "x");
        assert!(cfg.token.is_none());
        let err = Config::from_kubeconfig(
            &kc,
            &Overrides {
                context: Some("nope".into()),
                ..Overrides::default()
            },
        )
        .expect_err("unknown context");
        assert!(err.to_string().contains("context was not found"), "{err}");
    }

    #[test]
    fn data_and_file_forms_resolve_relative_to_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("pki")).expect("mkdir");
        std::fs::write(dir.path().join("pki/ca.crt"), "CA-FROM-FILE").expect("ca");
        std::fs::write(dir.path().join("pki/admin.crt"), "CERT-FROM-FILE").expect("crt");
        std::fs::write(dir.path().join("pki/admin.key"), "KEY-FROM-FILE").expect("key");
        let file_form = dir.path().join("files.kubeconfig");
        std::fs::write(
            &file_form,
            "clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority: pki/ca.crt\nusers:\n- name: u\n  user:\n    client-certificate: pki/admin.crt\n    client-key: pki/admin.key\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
        )
        .expect("write");
        let cfg = Config::load(Some(&file_form), &Overrides::default()).expect("file form");
        assert_eq!(cfg.root_certs_pem.as_deref(), Some(&b"CA-FROM-FILE"[..]));
        let (c, k) = cfg.identity_pem.expect("identity");
        assert_eq!(
            (c.as_slice(), k.as_slice()),
            (&b"CERT-FROM-FILE"[..], &b"KEY-FROM-FILE"[..])
        );
        assert_eq!(cfg.namespace, "default");

        let data_form = dir.path().join("data.kubeconfig");
        std::fs::write(
            &data_form,
            format!(
                "clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: {}\n    certificate-authority: pki/ca.crt\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n    username: bob\n    password: pw\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
                b64("CA-DATA"),
                b64("CERT-DATA"),
                b64("KEY-DATA")
            ),
        )
        .expect("write");
        let cfg = Config::load(Some(&data_form), &Overrides::default()).expect("data form");
        assert_eq!(cfg.root_certs_pem.as_deref(), Some(&b"CA-DATA"[..]));
        assert!(cfg.insecure_skip_tls_verify);
        let (c, _) = cfg.identity_pem.clone().expect("identity");
        assert_eq!(c, b"CERT-DATA");
        let basic = cfg.basic_auth.clone().expect("basic auth");
        assert_eq!(
            (basic.username.as_str(), basic.password.as_str()),
            ("bob", "pw")
        );
        assert!(
            !format!("{cfg:?}").contains("pw"),
            "Debug must not print secrets"
        );
    }

    #[test]
    fn missing_explicit_file_and_bad_base64_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let err = Config::load(Some(&missing), &Overrides::default()).expect_err("missing");
        assert!(err.to_string().contains("no such file"), "{err}");
        let bad = dir.path().join("bad");
        std::fs::write(
            &bad,
            "clusters:\n- name: c\n  cluster:\n    server: https://h\n    certificate-authority-data: '!!!'\ncontexts:\n- name: x\n  context: {cluster: c}\ncurrent-context: x\n",
        )
        .expect("write");
        let err = Config::load(Some(&bad), &Overrides::default()).expect_err("bad base64");
        assert!(err.to_string().contains("illegal base64"), "{err}");
        std::fs::write(&bad, "clusters: [").expect("write");
        assert!(Config::load(Some(&bad), &Overrides::default()).is_err());
    }

    #[test]
    fn in_cluster_uses_the_service_account_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("token"), "tok\n").expect("token");
        std::fs::write(dir.path().join("ca.crt"), "CA").expect("ca");
        std::fs::write(dir.path().join("namespace"), "team-a").expect("ns");
        let cfg = Config::in_cluster_with(dir.path(), "10.96.0.1", "443").expect("in-cluster");
        assert_eq!(cfg.server, "https://10.96.0.1:443");
        assert_eq!(cfg.token.as_deref(), Some("tok"));
        assert_eq!(cfg.namespace, "team-a");
        assert_eq!(cfg.root_certs_pem.as_deref(), Some(&b"CA"[..]));
        let v6 = Config::in_cluster_with(dir.path(), "fd00::1", "6443").expect("v6");
        assert_eq!(v6.server, "https://[fd00::1]:6443");
        std::fs::remove_file(dir.path().join("token")).expect("rm");
        assert!(Config::in_cluster_with(dir.path(), "10.96.0.1", "443").is_err());
    }

    #[test]
    fn no_config_means_localhost_8080() {
        let cfg = Config::from_kubeconfig(&Kubeconfig::default(), &Overrides::default())
            .expect("empty config");
        assert_eq!(cfg.server, "http://localhost:8080");
        assert_eq!(cfg.namespace, "default");
    }
}
