//! The HTTP client: one connection pool over rustls with the config's credentials, and raw
//! JSON requests that turn error answers into [`Error::Api`].

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, header};
use serde_json::Value;

use crate::config::Config;
use crate::error::{ApiStatus, Error, Result};

/// `Accept` asking for server-side Table output.
pub const ACCEPT_TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

/// A cheap-to-clone handle on an apiserver.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    namespace: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// A request body with its content type.
#[derive(Debug, Clone)]
pub struct Body {
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Bytes.
    pub bytes: Vec<u8>,
}

impl Body {
    /// A JSON body.
    pub fn json(v: &Value) -> Result<Self> {
        Ok(Body {
            content_type: "application/json",
            bytes: serde_json::to_vec(v).map_err(|source| Error::Decode {
                what: "request body".into(),
                source,
            })?,
        })
    }
}

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

/// Decodes an error answer into a status (synthesising one for non-Status bodies, as
/// client-go does).
pub(crate) fn status_from(code: u16, body: &[u8]) -> ApiStatus {
    if let Ok(s) = serde_json::from_slice::<ApiStatus>(body)
        && (s.code != 0 || !s.message.is_empty())
    {
        return ApiStatus {
            code: if s.code == 0 { code } else { s.code },
            ..s
        };
    }
    let reason = match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    };
    let text = String::from_utf8_lossy(body).trim().to_string();
    let message = match code {
        401 => "Unauthorized".to_string(),
        404 if text.is_empty() || text.starts_with("404") => {
            "the server could not find the requested resource".to_string()
        }
        _ if text.is_empty() => format!("the server responded with the status code {code}"),
        _ => text,
    };
    ApiStatus {
        code,
        reason: reason.into(),
        message,
        status: "Failure".into(),
        details: Value::Null,
    }
}

/// How a control-plane component finds the apiserver: `--kubeconfig` and `--master`, as
/// kube-controller-manager and kube-scheduler take them (flatten into the component's flags).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectionFlags {
    /// Kubeconfig file with the apiserver's address and credentials.
    #[arg(long, env = "XKUBE_KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Address of the apiserver (overrides the kubeconfig's server).
    #[arg(long, env = "XKUBE_MASTER")]
    pub master: Option<String>,
}

impl ConnectionFlags {
    /// The client these flags select ([`Client::from_flags`]); with neither flag, the
    /// kubeconfig kubectl would read or, in a pod without one, the in-cluster config
    /// ([`Config::infer`]: `KUBERNETES_SERVICE_HOST` and the service-account token).
    pub fn client(&self) -> Result<Client> {
        if self.kubeconfig.is_none() && self.master.is_none() {
            return Client::new(&Config::infer()?);
        }
        Client::from_flags(self.kubeconfig.as_deref(), self.master.as_deref())
    }
}

impl Client {
    /// A client as a component's flags select it (`--kubeconfig`, `--master`): the server
    /// URL alone when only `master` is given, else the kubeconfig (the default one when
    /// `kubeconfig` is `None`) with `master` overriding its server.
    pub fn from_flags(kubeconfig: Option<&std::path::Path>, master: Option<&str>) -> Result<Self> {
        let cfg = match (kubeconfig, master) {
            (None, Some(url)) => Config::new(url),
            (path, master) => Config::load(
                path,
                &crate::config::Overrides {
                    server: master.map(str::to_string),
                    ..Default::default()
                },
            )?,
        };
        Client::new(&cfg)
    }

    /// Builds a client for `config`.
    pub fn new(config: &Config) -> Result<Self> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .no_proxy()
            .tcp_nodelay(true)
            // A silently dead apiserver must not hang watches forever.
            .tcp_keepalive(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("xkube-client/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &config.root_certs_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(tls_err)?;
            if certs.is_empty() {
                return Err(Error::Tls(
                    "certificate-authority holds no certificate".into(),
                ));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
            b = b.tls_built_in_root_certs(false);
        }
        if config.insecure_skip_tls_verify {
            b = b.danger_accept_invalid_certs(true);
        }
        if let Some((cert, key)) = &config.identity_pem {
            let mut pem = cert.clone();
            if !pem.ends_with(b"\n") {
                pem.push(b'\n');
            }
            pem.extend_from_slice(key);
            b = b.identity(reqwest::Identity::from_pem(&pem).map_err(tls_err)?);
        }
        let mut headers = HeaderMap::new();
        if let Some(t) = &config.token {
            let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| Error::Kubeconfig("token holds invalid characters".into()))?;
            v.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, v);
        } else if let Some(ba) = &config.basic_auth {
            use base64::Engine;
            let enc = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", ba.username, ba.password));
            let mut v = HeaderValue::from_str(&format!("Basic {enc}"))
                .map_err(|_| Error::Kubeconfig("basic auth holds invalid characters".into()))?;
            v.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, v);
        }
        b = b.default_headers(headers);
        let http = b.build().map_err(tls_err)?;
        Ok(Client {
            http,
            base: config.server.trim_end_matches('/').to_string(),
            namespace: config.namespace.clone(),
        })
    }

    /// A client for [`Config::infer`] (kubeconfig as kubectl finds it, or in-cluster).
    pub fn try_default() -> Result<Self> {
        Self::new(&Config::infer()?)
    }

    /// Base URL (`https://127.0.0.1:6443`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The default namespace of the config.
    pub fn default_namespace(&self) -> &str {
        &self.namespace
    }

    /// The underlying reqwest client (for proxies and streaming).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Starts a request to `path` (which starts with `/` and may carry a query).
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{}", self.base, path))
    }

    /// Sends a request and returns the raw successful response; error answers become
    /// [`Error::Api`].
    #[tracing::instrument(level = "debug", skip(self, body), fields(%method))]
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
        accept: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response> {
        let mut rb = self.request(method, path);
        if let Some(b) = body {
            rb = rb
                .header(header::CONTENT_TYPE, b.content_type)
                .body(b.bytes);
        }
        rb = rb.header(header::ACCEPT, accept.unwrap_or("application/json"));
        if let Some(t) = timeout {
            rb = rb.timeout(t);
        }
        let resp = rb.send().await?;
        let code = resp.status().as_u16();
        tracing::debug!(code, "response");
        if resp.status().is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        Err(Error::Api(status_from(code, &body)))
    }

    /// A JSON request returning the decoded JSON answer.
    pub async fn request_json(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
        accept: Option<&str>,
    ) -> Result<Value> {
        let resp = self
            .send(method, path, body, accept, Some(Duration::from_secs(60)))
            .await?;
        let bytes = resp.bytes().await?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
            what: path.to_string(),
            source,
        })
    }

    /// `GET path` as JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        self.request_json(Method::GET, path, None, None).await
    }

    /// `GET /version`.
    pub async fn version(&self) -> Result<Value> {
        self.get_json("/version").await
    }

    /// Group versions served (`v1`, `apps/v1`, ...) from `/api` and `/apis`.
    pub async fn api_versions(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let core = self.get_json("/api").await?;
        for v in core["versions"].as_array().into_iter().flatten() {
            if let Some(s) = v.as_str() {
                out.push(s.to_string());
            }
        }
        if let Ok(groups) = self.get_json("/apis").await {
            for g in groups["groups"].as_array().into_iter().flatten() {
                for v in g["versions"].as_array().into_iter().flatten() {
                    if let Some(s) = v["groupVersion"].as_str() {
                        out.push(s.to_string());
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}
