//! `pods/{name}/log`: proxied to the kubelet of the pod's node
//! (`https://<node address>:<kubelet port>/containerLogs/{ns}/{pod}/{container}`), streamed
//! as it arrives so `follow=true` works. The apiserver talks to kubelets over TLS only: it
//! presents its kubelet-client certificate and verifies the kubelet's serving certificate
//! against `--kubelet-certificate-authority` (the node's address must be in its SANs).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde_json::Value;
use xkube_api::{ResourceInfo, StatusError, meta};

use crate::error::{Error, Result};
use crate::registry::Registry;

/// Query parameters passed on to the kubelet.
const PASSED: &[&str] = &[
    "follow",
    "tailLines",
    "timestamps",
    "previous",
    "sinceSeconds",
    "sinceTime",
    "limitBytes",
];

/// HTTPS client of the kubelets: the apiserver's kubelet-client certificate, kubelets'
/// serving certificates verified against one CA bundle, no plain-HTTP fallback.
#[derive(Clone)]
pub struct KubeletClient {
    client: reqwest::Client,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClient").finish_non_exhaustive()
    }
}

fn tls_err(what: &Path) -> impl FnOnce(reqwest::Error) -> Error + '_ {
    move |e| Error::Tls(format!("{}: {e}", what.display()))
}

impl KubeletClient {
    /// A client presenting `cert`/`key` (PEM) and trusting only the CAs in `ca` (PEM bundle),
    /// with a 5 s connect timeout. Blocking (reads the files).
    pub fn new(ca: &Path, cert: &Path, key: &Path) -> Result<Self> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .https_only(true)
            // Never follow a kubelet's redirect: the client certificate would go along to
            // wherever it points (another node's exec: CVE-2020-8559).
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let bundle = std::fs::read(ca).map_err(Error::io("read", ca))?;
        for c in reqwest::Certificate::from_pem_bundle(&bundle).map_err(tls_err(ca))? {
            b = b.add_root_certificate(c);
        }
        let mut pem = std::fs::read(cert).map_err(Error::io("read", cert))?;
        pem.push(b'\n');
        pem.extend(std::fs::read(key).map_err(Error::io("read", key))?);
        b = b.identity(reqwest::Identity::from_pem(&pem).map_err(tls_err(cert))?);
        Ok(KubeletClient {
            client: b.build().map_err(tls_err(cert))?,
        })
    }

    /// A `POST` without body (the kubelet's exec endpoint).
    pub async fn post(&self, url: &str) -> Result<reqwest::Response, String> {
        let r = self
            .client
            .post(url)
            .send()
            .await
            .map_err(|e| format!("Post \"{url}\": {}", chain(&e)))?;
        refuse_redirect("Post", url, r)
    }

    /// A request asking the kubelet to upgrade the connection (exec, attach, port-forward),
    /// with `headers` (the upgrade headers of the client's request).
    pub async fn upgrade(
        &self,
        method: http::Method,
        url: &str,
        headers: http::HeaderMap,
    ) -> Result<reqwest::Response, String> {
        let r = self
            .client
            .request(method, url)
            .headers(headers)
            .send()
            .await
            .map_err(|e| format!("Upgrade \"{url}\": {}", chain(&e)))?;
        refuse_redirect("Upgrade", url, r)
    }

    /// A `GET`.
    pub async fn get(&self, url: &str) -> Result<reqwest::Response, String> {
        let r = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("Get \"{url}\": {}", chain(&e)))?;
        refuse_redirect("Get", url, r)
    }
}

/// A kubelet's redirect is an error, never followed nor passed on.
fn refuse_redirect(
    verb: &str,
    url: &str,
    r: reqwest::Response,
) -> Result<reqwest::Response, String> {
    if r.status().is_redirection() {
        return Err(format!(
            "{verb} \"{url}\": the kubelet answered a redirect ({}); redirects are not followed",
            r.status()
        ));
    }
    Ok(r)
}

/// An error and its causes, `: `-separated (reqwest's Display leaves the cause out).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The container a log request means (Kubernetes' `validateContainer`).
pub fn choose_container(pod: &Value, requested: Option<&str>) -> Result<String, StatusError> {
    let name = meta::name(pod);
    let names = |key: &str| -> Vec<String> {
        pod["spec"][key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let containers = names("containers");
    let inits = names("initContainers");
    match requested.filter(|c| !c.is_empty()) {
        Some(c) => {
            if containers.iter().chain(&inits).any(|n| n == c) {
                Ok(c.to_string())
            } else {
                Err(StatusError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
        None => match containers.len() {
            1 => Ok(containers[0].clone()),
            0 => Err(StatusError::bad_request(format!(
                "a container name must be specified for pod {name}"
            ))),
            _ => {
                let all: Vec<String> = inits.iter().chain(&containers).cloned().collect();
                Err(StatusError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    all.join(" ")
                )))
            }
        },
    }
}

/// The kubelet's `host:port` of a node: InternalIP, else ExternalIP, else Hostname; the
/// port from `status.daemonEndpoints.kubeletEndpoint.Port` (default 10250).
pub fn kubelet_address(node: &Value) -> Option<String> {
    let addrs = node["status"]["addresses"].as_array()?;
    let host = ["InternalIP", "ExternalIP", "Hostname"]
        .iter()
        .find_map(|t| {
            addrs
                .iter()
                .find(|a| a["type"] == *t)
                .and_then(|a| a["address"].as_str())
                .filter(|a| !a.is_empty())
        })?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .filter(|p| *p > 0 && *p <= u64::from(u16::MAX))
        .map_or(xkube_api::cluster::KUBELET_PORT, |p| p as u16);
    Some(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// `s` form-urlencoded, for a kubelet URL's path segment or query value.
pub(crate) fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Where a pod's container runs: the chosen container (see [`choose_container`]) and its
/// node's kubelet address, `None` while the pod is not scheduled.
pub(crate) async fn kubelet_target(
    reg: &Registry,
    pods: &ResourceInfo,
    ns: &str,
    name: &str,
    container: Option<&str>,
) -> Result<(String, Option<String>), StatusError> {
    let (pod, _) = reg.get(pods, Some(ns), name).await?;
    let container = choose_container(&pod, container)?;
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node_name.is_empty() {
        return Ok((container, None));
    }
    let nodes = xkube_api::resources::find("", "v1", "nodes")
        .ok_or_else(|| StatusError::internal("nodes are not registered"))?;
    let (node, _) = reg.get(nodes, None, node_name).await?;
    let addr = kubelet_address(&node).ok_or_else(|| {
        StatusError::internal(format!("node {node_name} has no address for its kubelet"))
    })?;
    Ok((container, Some(addr)))
}

/// Serves `GET pods/{name}/log`.
pub async fn pod_log(
    reg: &Registry,
    kubelet: &KubeletClient,
    pods: &ResourceInfo,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
) -> Result<Response, StatusError> {
    let (container, addr) =
        kubelet_target(reg, pods, ns, name, q.get("container").map(String::as_str)).await?;
    let text = |body: Body| {
        let mut r = Response::new(body);
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    };
    let Some(addr) = addr else {
        // Not scheduled: nothing to show yet (Kubernetes answers with an empty stream).
        return Ok(text(Body::empty()));
    };
    let mut query: Vec<String> = PASSED
        .iter()
        .filter_map(|k| q.get(*k).map(|v| format!("{k}={}", encode(v))))
        .collect();
    query.sort();
    let url = format!(
        "https://{addr}/containerLogs/{}/{}/{}{}{}",
        encode(ns),
        encode(name),
        encode(&container),
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    );
    tracing::debug!(%url, "proxying pod log");
    let resp = kubelet.get(&url).await.map_err(StatusError::internal)?;
    let status = resp.status();
    if status != StatusCode::OK {
        let body = resp.bytes().await.unwrap_or_default();
        let msg = String::from_utf8_lossy(&body).trim().to_string();
        let reason = match status.as_u16() {
            400 => "BadRequest",
            404 => "NotFound",
            _ => "InternalError",
        };
        return Err(StatusError::new(status.as_u16(), reason, msg));
    }
    let limit = q
        .get("limitBytes")
        .and_then(|l| l.parse::<u64>().ok())
        .filter(|l| *l > 0);
    let Some(limit) = limit else {
        return Ok(text(Body::from_stream(resp.bytes_stream())));
    };
    // The kubelet may not honour limitBytes: cut the stream here.
    let stream =
        futures::stream::unfold((resp.bytes_stream(), limit), |(mut s, left)| async move {
            if left == 0 {
                return None;
            }
            match futures::StreamExt::next(&mut s).await? {
                Ok(mut chunk) => {
                    if chunk.len() as u64 > left {
                        chunk.truncate(left as usize);
                    }
                    let left = left - chunk.len() as u64;
                    Some((Ok::<Bytes, reqwest::Error>(chunk), (s, left)))
                }
                Err(e) => Some((Err(e), (s, 0))),
            }
        });
    Ok(text(Body::from_stream(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn container_choice_follows_kubernetes() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(choose_container(&one, None).expect("only one"), "a");
        let e = choose_container(&one, Some("b")).expect_err("unknown");
        assert_eq!(e.message, "container b is not valid for pod p");
        let two = json!({"metadata": {"name": "p"}, "spec": {
            "initContainers": [{"name": "i"}], "containers": [{"name": "a"}, {"name": "b"}]}});
        let e = choose_container(&two, None).expect_err("ambiguous");
        assert_eq!(
            e.message,
            "a container name must be specified for pod p, choose one of: [i a b]"
        );
        assert_eq!(choose_container(&two, Some("i")).expect("init"), "i");
    }

    #[test]
    fn kubelet_address_prefers_internal_ip_and_published_port() {
        let node = json!({"status": {"addresses": [
            {"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.2"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10251}}}});
        assert_eq!(kubelet_address(&node).as_deref(), Some("10.0.0.2:10251"));
        let bare = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}]}});
        assert_eq!(kubelet_address(&bare).as_deref(), Some("n1:10250"));
        assert_eq!(kubelet_address(&json!({})), None);
    }
}
