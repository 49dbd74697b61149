//! Serving HTTP the way the apiserver and the kubelet API do, in one place: PEM loading,
//! a rustls server config (HTTP/1.1 and h2 by ALPN, client certificates verified when CAs
//! are given and optional otherwise, so bearer tokens still work), the subject of a client
//! certificate, and an accept loop that serves each connection with upgrades (exec, watch
//! over WebSocket) and drains it on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What loading certificates or building a TLS config can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or parsed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// rustls refused a certificate, key or configuration.
    #[error("TLS: {0}")]
    Tls(String),
}

/// The result of this crate's functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

/// The certificates of a PEM file (at least one). Blocking.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let data = std::fs::read(path).map_err(io("read", path))?;
    let certs = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(io("parse certificates", path))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("{}: no certificate", path.display())));
    }
    Ok(certs)
}

/// The private key of a PEM file. Blocking.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let data = std::fs::read(path).map_err(io("read", path))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(io("parse key", path))?
        .ok_or_else(|| Error::Tls(format!("{}: no private key", path.display())))
}

/// A server config for `chain`/`key`, offering h2 and HTTP/1.1. With `client_cas`, client
/// certificates signed by one of them authenticate (a connection without one is accepted:
/// other authenticators decide); without, none are asked for.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_cas: Vec<CertificateDer<'static>>,
) -> Result<Arc<rustls::ServerConfig>> {
    let tls = |e: rustls::Error| Error::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls)?;
    let builder = if client_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for c in client_cas {
            roots.add(c).map_err(tls)?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::Tls(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut cfg = builder.with_single_cert(chain, key).map_err(tls)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The user (`CN`) and groups (`O`) of a verified client certificate, as Kubernetes reads
/// them.
pub fn client_identity(cert: &CertificateDer<'_>) -> Option<(String, Vec<String>)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let orgs = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some((cn, orgs))
}

/// Facts about a request's connection, inserted as a request extension by [`accept_loop`].
#[derive(Debug, Clone, Default)]
pub struct Conn {
    /// Whether the connection is TLS.
    pub secure: bool,
    /// Subject of the verified client certificate (user, groups).
    pub client_cert: Option<(String, Vec<String>)>,
}

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may take to finish after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections on `listener` (TLS when `tls` is given) until `cancel`, serving each
/// request with `handler` (a [`Conn`] in its extensions). Returns once every connection has
/// ended or had [`DRAIN_TIMEOUT`] to finish.
pub async fn accept_loop<H, F>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: H,
    cancel: CancellationToken,
) where
    H: Fn(http::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = http::Response<axum::body::Body>> + Send + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        let sock = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = sock.set_nodelay(true);
        let (tls, handler, cancel) = (tls.clone(), handler.clone(), cancel.clone());
        conns.spawn(async move {
            let Some(acceptor) = tls else {
                return serve_conn(sock, Conn::default(), handler, cancel).await;
            };
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let client_cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(client_identity);
            let conn = Conn {
                secure: true,
                client_cert,
            };
            serve_conn(stream, conn, handler, cancel).await;
        });
    }
    while conns.join_next().await.is_some() {}
}

async fn serve_conn<I, H, F>(io: I, conn: Conn, handler: H, cancel: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(http::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = http::Response<axum::body::Body>> + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(conn.clone());
        let served = handler(req);
        async move { Ok::<_, Infallible>(served.await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let serving = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(serving);
    tokio::select! {
        r = serving.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = cancel.cancelled() => {
            serving.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, serving).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_certificate_names_its_user_and_groups() {
        let kp = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "system:node:n1");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        let cert = p.self_signed(&kp).expect("cert");
        assert_eq!(
            client_identity(cert.der()),
            Some(("system:node:n1".into(), vec!["system:nodes".into()]))
        );
        assert_eq!(client_identity(&CertificateDer::from(vec![1, 2, 3])), None);
    }

    #[test]
    fn pem_files_load_and_bad_ones_say_which_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kp = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .expect("params")
            .self_signed(&kp)
            .expect("cert");
        let (crt, key) = (dir.path().join("a.crt"), dir.path().join("a.key"));
        std::fs::write(&crt, cert.pem()).expect("write");
        std::fs::write(&key, kp.serialize_pem()).expect("write");
        let chain = load_certs(&crt).expect("certs");
        let ca = chain.clone();
        server_config(chain.clone(), load_key(&key).expect("key"), Vec::new()).expect("config");
        let cfg = server_config(chain, load_key(&key).expect("key"), ca).expect("mTLS config");
        assert_eq!(cfg.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        // A key file is not a certificate file, and a missing file names itself.
        let e = load_certs(&key).expect_err("no certificate");
        assert!(e.to_string().contains("a.key: no certificate"), "{e}");
        let e = load_key(&dir.path().join("missing.key")).expect_err("missing");
        assert!(e.to_string().contains("missing.key"), "{e}");
    }
}
