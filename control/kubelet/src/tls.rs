//! TLS of the kubelet API: the serving certificate (`--tls-cert-file` /
//! `--tls-private-key-file`, else a self-signed one generated into `<root-dir>/pki`, as
//! Kubernetes' kubelet does) and client certificates verified against `--client-ca-file`.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use xkube_serve::{load_certs, load_key};

use crate::error::{Error, Result, io};

fn tls(what: impl std::fmt::Display) -> impl FnOnce(String) -> Error {
    move |e| Error::Tls(format!("{what}: {e}"))
}

/// The serving certificate and key to use: the given files, else `<root>/pki/kubelet.crt`
/// and `kubelet.key`, generated self-signed (for `node_name` and `node_ip`) when missing.
/// Blocking.
pub fn serving_files(
    cert: Option<&Path>,
    key: Option<&Path>,
    root: &Path,
    node_name: &str,
    node_ip: IpAddr,
) -> Result<(PathBuf, PathBuf)> {
    match (cert, key) {
        (Some(c), Some(k)) => return Ok((c.to_owned(), k.to_owned())),
        (None, None) => {}
        _ => {
            return Err(crate::error::invalid(
                "flags",
                "--tls-cert-file and --tls-private-key-file go together",
            ));
        }
    }
    let dir = root.join("pki");
    let (crt, key) = (dir.join("kubelet.crt"), dir.join("kubelet.key"));
    if crt.exists() && key.exists() {
        return Ok((crt, key));
    }
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let kp = rcgen::KeyPair::generate().map_err(|e| tls("key")(e.to_string()))?;
    let mut p = rcgen::CertificateParams::new(vec![node_name.to_owned(), node_ip.to_string()])
        .map_err(|e| tls("certificate")(e.to_string()))?;
    let now = jiff::Timestamp::now().as_second();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{node_name}@{now}"));
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p
        .self_signed(&kp)
        .map_err(|e| tls("certificate")(e.to_string()))?;
    write_private(&key, &kp.serialize_pem())?;
    std::fs::write(&crt, cert.pem()).map_err(io("write", &crt))?;
    tracing::warn!(
        cert = %crt.display(),
        "no --tls-cert-file given: generated a self-signed serving certificate; \
         the apiserver will not trust it (issue one from the cluster CA)"
    );
    Ok((crt, key))
}

fn write_private(path: &Path, data: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create", path))?;
    // An existing file keeps its mode on open: narrow it before writing the key.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io("chmod", path))?;
    std::io::Write::write_all(&mut f, data.as_bytes()).map_err(io("write", path))
}

/// The rustls config of the kubelet API: `cert`/`key`, HTTP/1.1 and h2, and client
/// certificates verified against `client_ca` when given (optional: bearer tokens and
/// anonymous requests come without one).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>> {
    let cas = match client_ca {
        Some(ca) => load_certs(ca)?,
        None => Vec::new(),
    };
    Ok(xkube_serve::server_config(
        load_certs(cert)?,
        load_key(key)?,
        cas,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_self_signed_serving_certificate_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ip: IpAddr = "198.18.0.11".parse().expect("ip");
        let (crt, key) = serving_files(None, None, dir.path(), "n1", ip).expect("generated");
        assert_eq!(crt, dir.path().join("pki/kubelet.crt"));
        let first = std::fs::read(&crt).expect("cert");
        let again = serving_files(None, None, dir.path(), "n1", ip).expect("reused");
        assert_eq!(std::fs::read(&again.0).expect("cert"), first);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
        server_config(&crt, &key, None).expect("rustls config");
        let der = load_certs(&crt).expect("parse");
        let (_, parsed) = x509_parser::parse_x509_certificate(der[0].as_ref()).expect("x509");
        let sans: Vec<String> = parsed
            .subject_alternative_name()
            .expect("san ext")
            .expect("has SANs")
            .value
            .general_names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect();
        assert!(sans.iter().any(|s| s.contains("n1")), "{sans:?}");
        assert!(sans.iter().any(|s| s.contains("198")), "{sans:?}");
        assert!(
            serving_files(Some(&crt), None, dir.path(), "n1", ip).is_err(),
            "a certificate without its key is refused"
        );
    }
}
