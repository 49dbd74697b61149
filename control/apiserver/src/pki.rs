//! The cluster PKI: a CA, the serving certificate, an admin client certificate and the
//! apiserver's kubelet-client certificate generated into the data dir on first start, the
//! admin kubeconfig, and the rustls server config. [`Ca`] issues further client and serving
//! certificates from the cluster CA (components' identities, kubelet serving certificates)
//! and [`write_kubeconfig`] writes a kubeconfig for any client certificate.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::error::{Error, Result};

/// Paths of the generated files.
#[derive(Debug, Clone)]
pub struct Pki {
    /// `pki/ca.crt`.
    pub ca_cert: PathBuf,
    /// `pki/ca.key`.
    pub ca_key: PathBuf,
    /// `pki/apiserver.crt`.
    pub server_cert: PathBuf,
    /// `pki/apiserver.key`.
    pub server_key: PathBuf,
    /// `pki/admin.crt`.
    pub admin_cert: PathBuf,
    /// `pki/admin.key`.
    pub admin_key: PathBuf,
    /// `pki/apiserver-kubelet-client.crt`: the apiserver's identity towards kubelets.
    pub kubelet_client_cert: PathBuf,
    /// `pki/apiserver-kubelet-client.key`.
    pub kubelet_client_key: PathBuf,
}

/// The user the apiserver is towards kubelets (Kubernetes binds it to
/// `system:kubelet-api-admin`).
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
}

impl Issued {
    /// Writes the certificate and the key (mode 0600). Blocking.
    pub fn write(&self, cert: &Path, key: &Path) -> Result<()> {
        for p in [cert, key] {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
            }
        }
        write(key, &self.key_pem, true)?;
        write(cert, &self.cert_pem, false)
    }
}

/// A certificate authority that signs: the cluster CA loaded from its files.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA certificate and key (PEM). Blocking.
    pub fn load(cert: &Path, key: &Path) -> Result<Self> {
        let cert_pem = std::fs::read_to_string(cert).map_err(Error::io("read", cert))?;
        let key_pem = std::fs::read_to_string(key).map_err(Error::io("read", key))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| Error::Tls(format!("{}: {e}", key.display())))?;
        // The issuer as rcgen needs it: the CA's own parameters, signed by its key (only its
        // subject and key go into the certificates it issues).
        let cert = CertificateParams::from_ca_cert_pem(&cert_pem)
            .and_then(|p| p.self_signed(&key))
            .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?;
        Ok(Ca { cert, key })
    }

    fn issue(
        &self,
        sans: &[String],
        cn: &str,
        orgs: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<Issued> {
        let key = KeyPair::generate().map_err(tls)?;
        let mut p = CertificateParams::new(sans.to_vec()).map_err(tls)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        for o in orgs {
            p.distinguished_name.push(DnType::OrganizationName, *o);
        }
        p.extended_key_usages = vec![usage];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        set_validity(&mut p, ISSUED_DAYS);
        let cert = p.signed_by(&key, &self.cert, &self.key).map_err(tls)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate for user `cn` in groups `orgs` (what the apiserver's and the
    /// kubelets' X.509 authenticators read: CN = user, O = groups).
    pub fn issue_client(&self, cn: &str, orgs: &[&str]) -> Result<Issued> {
        self.issue(&[], cn, orgs, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A serving certificate with subject `cn` for `sans` (DNS names and IP addresses).
    pub fn issue_serving(&self, cn: &str, sans: &[String]) -> Result<Issued> {
        self.issue(sans, cn, &[], ExtendedKeyUsagePurpose::ServerAuth)
    }
}

fn tls(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

/// Writes `data` to `path`; a private file (a key, a kubeconfig with one) is created with
/// mode 0600 and an existing one narrowed to 0600 before a byte is written.
fn write(path: &Path, data: &str, private: bool) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if private {
        o.mode(0o600);
    }
    let mut f = o.open(path).map_err(Error::io("create", path))?;
    if private {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(Error::io("chmod", path))?;
    }
    std::io::Write::write_all(&mut f, data.as_bytes()).map_err(Error::io("write", path))
}

/// Days an issued certificate (nodes, components, the kubelet client) is valid, as kubeadm's.
pub const ISSUED_DAYS: i64 = 365;

/// Days the CA and the certificates made with it at first start are valid (no rotation yet).
pub const CA_DAYS: i64 = 3650;

/// Sets `p` valid from a day ago (clock skew) for `days` days.
fn set_validity(p: &mut CertificateParams, days: i64) {
    let day = |offset: i64| {
        let d = jiff::Timestamp::now()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date()
            .checked_add(jiff::Span::new().days(offset))
            .unwrap_or_else(|_| {
                jiff::Timestamp::now()
                    .to_zoned(jiff::tz::TimeZone::UTC)
                    .date()
            });
        rcgen::date_time_ymd(
            i32::from(d.year()),
            u8::try_from(d.month()).unwrap_or(1),
            u8::try_from(d.day()).unwrap_or(1),
        )
    };
    p.not_before = day(-1);
    p.not_after = day(days);
}

/// The text of a kubeconfig for user `user` with `cert_pem`/`key_pem` embedded, pointing at
/// `server` and trusting `ca_pem`.
fn kubeconfig_text(
    server: &str,
    ca_pem: &[u8],
    user: &str,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> String {
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    // The user's name in the file is a label; quoted, since `system:...` names hold colons.
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: xkube\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: {user:?}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: xkube\n  context:\n    cluster: xkube\n    user: {user:?}\n    namespace: default\ncurrent-context: xkube\n",
        b64(ca_pem),
        b64(cert_pem),
        b64(key_pem),
    )
}

fn write_kubeconfig_text(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    }
    write(path, text, true)
}

/// Writes a kubeconfig (mode 0600) for the client certificate `cert`/`key` of `user`,
/// pointing at `server` (`https://...`) and trusting `ca`; the files are embedded. Blocking.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &str,
    cert: &Path,
    key: &Path,
) -> Result<()> {
    let read = |p: &Path| std::fs::read(p).map_err(Error::io("read", p));
    let text = kubeconfig_text(server, &read(ca)?, user, &read(cert)?, &read(key)?);
    write_kubeconfig_text(path, &text)
}

impl Pki {
    /// The file layout under `data_dir/pki`.
    pub fn layout(data_dir: &Path) -> Self {
        let d = data_dir.join("pki");
        Pki {
            ca_cert: d.join("ca.crt"),
            ca_key: d.join("ca.key"),
            server_cert: d.join("apiserver.crt"),
            server_key: d.join("apiserver.key"),
            admin_cert: d.join("admin.crt"),
            admin_key: d.join("admin.key"),
            kubelet_client_cert: d.join("apiserver-kubelet-client.crt"),
            kubelet_client_key: d.join("apiserver-kubelet-client.key"),
        }
    }

    /// Generates every file that is missing (all of them when the CA is missing). Blocking.
    pub fn ensure(data_dir: &Path, sans: &[String]) -> Result<Self> {
        let pki = Self::layout(data_dir);
        let dir = data_dir.join("pki");
        std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        let all = [
            &pki.ca_cert,
            &pki.ca_key,
            &pki.server_cert,
            &pki.server_key,
            &pki.admin_cert,
            &pki.admin_key,
        ];
        if all.iter().all(|p| p.exists()) {
            pki.ensure_kubelet_client()?;
            return Ok(pki);
        }
        tracing::info!(dir = %dir.display(), "generating cluster CA and certificates");
        let ca_key = KeyPair::generate().map_err(tls)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        ca.distinguished_name.push(DnType::CommonName, "xkube-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        set_validity(&mut ca, CA_DAYS);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).map_err(tls)?;

        let server_key = KeyPair::generate().map_err(tls)?;
        let mut sp = CertificateParams::new(sans.to_vec()).map_err(tls)?;
        sp.distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut sp, CA_DAYS);
        sp.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let server = sp.signed_by(&server_key, &ca_cert, &ca_key).map_err(tls)?;

        let admin_key = KeyPair::generate().map_err(tls)?;
        let mut ap = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        ap.distinguished_name.push(DnType::CommonName, "admin");
        ap.distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        ap.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        set_validity(&mut ap, CA_DAYS);
        ap.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let admin = ap.signed_by(&admin_key, &ca_cert, &ca_key).map_err(tls)?;

        write(&pki.ca_key, &ca_key.serialize_pem(), true)?;
        write(&pki.server_key, &server_key.serialize_pem(), true)?;
        write(&pki.admin_key, &admin_key.serialize_pem(), true)?;
        write(&pki.server_cert, &server.pem(), false)?;
        write(&pki.admin_cert, &admin.pem(), false)?;
        // The CA certificate last: its presence means the set is complete.
        write(&pki.ca_cert, &ca_cert.pem(), false)?;
        pki.ensure_kubelet_client()?;
        Ok(pki)
    }

    /// Issues a client certificate for user `cn` in groups `orgs` and writes a kubeconfig
    /// (mode 0600) embedding it, pointing at `server` and trusting the cluster CA: a
    /// component's own identity. Blocking.
    pub fn issue_kubeconfig(
        &self,
        path: &Path,
        server: &str,
        cn: &str,
        orgs: &[&str],
    ) -> Result<()> {
        let issued = self.ca()?.issue_client(cn, orgs)?;
        let ca = std::fs::read(&self.ca_cert).map_err(Error::io("read", &self.ca_cert))?;
        let text = kubeconfig_text(
            server,
            &ca,
            cn,
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        );
        write_kubeconfig_text(path, &text)
    }

    /// The cluster CA, to issue certificates with. Blocking.
    pub fn ca(&self) -> Result<Ca> {
        Ca::load(&self.ca_cert, &self.ca_key)
    }

    /// Issues the apiserver's kubelet-client certificate (CN
    /// [`KUBELET_CLIENT_USER`], no groups) when it is missing: also for data dirs made
    /// before it existed. Blocking.
    fn ensure_kubelet_client(&self) -> Result<()> {
        if self.kubelet_client_cert.exists() && self.kubelet_client_key.exists() {
            return Ok(());
        }
        self.ca()?
            .issue_client(KUBELET_CLIENT_USER, &[])?
            .write(&self.kubelet_client_cert, &self.kubelet_client_key)
    }

    /// Writes a kubeconfig for the admin user pointing at `server` (`https://...`). Blocking.
    pub fn write_kubeconfig(&self, path: &Path, server: &str) -> Result<()> {
        write_kubeconfig(
            path,
            server,
            &self.ca_cert,
            "admin",
            &self.admin_cert,
            &self.admin_key,
        )
    }
}

pub use xkube_serve::{client_identity, load_certs, load_key};

/// The rustls server config: the serving certificate, optional client certificates verified
/// against the cluster CA and `client_ca` (requests without one go on to other authenticators).
pub fn server_config(pki: &Pki, client_ca: Option<&Path>) -> Result<Arc<rustls::ServerConfig>> {
    let mut cas = load_certs(&pki.ca_cert)?;
    if let Some(p) = client_ca {
        cas.extend(load_certs(p)?);
    }
    let chain = load_certs(&pki.server_cert)?;
    Ok(xkube_serve::server_config(
        chain,
        load_key(&pki.server_key)?,
        cas,
    )?)
}

/// Subject alternative names of the serving certificate.
pub fn default_sans(first_service_ip: IpAddr, extra: &[IpAddr]) -> Vec<String> {
    let mut sans = vec![
        "localhost".to_string(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
        "127.0.0.1".into(),
        first_service_ip.to_string(),
    ];
    for ip in extra {
        if !ip.is_unspecified() && !sans.contains(&ip.to_string()) {
            sans.push(ip.to_string());
        }
    }
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() && !sans.iter().any(|s| s == h) {
            sans.push(h.to_string());
        }
    }
    sans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_pki_once_and_admin_cert_is_system_masters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sans = default_sans("10.96.0.1".parse().expect("ip"), &[]);
        let pki = Pki::ensure(dir.path(), &sans).expect("generates");
        let ca1 = std::fs::read(&pki.ca_cert).expect("ca");
        let pki = Pki::ensure(dir.path(), &sans).expect("reuses");
        assert_eq!(std::fs::read(&pki.ca_cert).expect("ca"), ca1);
        server_config(&pki, None).expect("rustls config");
        let admin = load_certs(&pki.admin_cert).expect("admin");
        let (cn, orgs) = client_identity(&admin[0]).expect("identity");
        assert_eq!(cn, "admin");
        assert_eq!(orgs, vec!["system:masters".to_string()]);
        let kc = dir.path().join("admin.kubeconfig");
        pki.write_kubeconfig(&kc, "https://127.0.0.1:6443")
            .expect("kubeconfig");
        let text = std::fs::read_to_string(&kc).expect("read");
        assert!(text.contains("server: https://127.0.0.1:6443"));
    }

    #[test]
    fn issues_client_and_serving_certificates_from_the_cluster_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sans = default_sans("10.96.0.1".parse().expect("ip"), &[]);
        let pki = Pki::ensure(dir.path(), &sans).expect("generates");
        let kc = load_certs(&pki.kubelet_client_cert).expect("kubelet client cert");
        assert_eq!(
            client_identity(&kc[0]).expect("identity"),
            (KUBELET_CLIENT_USER.to_string(), Vec::<String>::new())
        );
        let ca = pki.ca().expect("loads the CA");
        let node = ca
            .issue_client("system:node:n1", &["system:nodes"])
            .expect("client cert");
        let (crt, key) = (dir.path().join("n1.crt"), dir.path().join("n1.key"));
        node.write(&crt, &key).expect("write");
        let c = load_certs(&crt).expect("parse");
        assert_eq!(
            client_identity(&c[0]).expect("identity"),
            (
                "system:node:n1".to_string(),
                vec!["system:nodes".to_string()]
            )
        );
        load_key(&key).expect("key parses");

        // A serving certificate verifies against the CA for its IP SAN, not for another IP.
        let serving = ca
            .issue_serving("system:node:n1", &["198.18.0.11".into(), "n1".into()])
            .expect("serving cert");
        let mut roots = rustls::RootCertStore::empty();
        for c in load_certs(&pki.ca_cert).expect("ca") {
            roots.add(c).expect("root");
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let leaf = rustls_pemfile::certs(&mut serving.cert_pem.as_bytes())
            .next()
            .expect("one cert")
            .expect("pem");
        let now = rustls::pki_types::UnixTime::now();
        let ip = |s: &str| {
            rustls::pki_types::ServerName::IpAddress(s.parse::<IpAddr>().expect("ip").into())
        };
        use rustls::client::danger::ServerCertVerifier as _;
        verifier
            .verify_server_cert(&leaf, &[], &ip("198.18.0.11"), &[], now)
            .expect("the node IP is in the SANs");
        assert!(
            verifier
                .verify_server_cert(&leaf, &[], &ip("198.18.0.12"), &[], now)
                .is_err(),
            "another IP is refused"
        );

        let kcfg = dir.path().join("n1.kubeconfig");
        write_kubeconfig(
            &kcfg,
            "https://198.18.0.2:6443",
            &pki.ca_cert,
            "system:node:n1",
            &crt,
            &key,
        )
        .expect("kubeconfig");
        let text = std::fs::read_to_string(&kcfg).expect("read");
        assert!(text.contains("user: \"system:node:n1\""), "{text}");

        let sched = dir.path().join("scheduler.kubeconfig");
        pki.issue_kubeconfig(
            &sched,
            "https://127.0.0.1:6443",
            "system:kube-scheduler",
            &[],
        )
        .expect("component kubeconfig");
        let kc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&sched).expect("read")).expect("yaml");
        let pem = base64::engine::general_purpose::STANDARD
            .decode(
                kc["users"][0]["user"]["client-certificate-data"]
                    .as_str()
                    .expect("embedded certificate"),
            )
            .expect("base64");
        let der = rustls_pemfile::certs(&mut pem.as_slice())
            .next()
            .expect("one cert")
            .expect("pem");
        assert_eq!(
            client_identity(&der).expect("identity"),
            ("system:kube-scheduler".to_string(), Vec::<String>::new())
        );
        assert_eq!(
            kc["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
    }
}
