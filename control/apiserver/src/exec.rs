//! `pods/{name}/exec`, `pods/{name}/attach` and `pods/{name}/portforward`: the apiserver
//! checks the request (authorized as `create` on the subresource by the pipeline), finds the
//! pod's kubelet and passes the client's upgrade on to the kubelet's `/exec`, `/attach` or
//! `/portForward` with its own kubelet-client certificate; once the kubelet switched
//! protocols, the two connections are spliced byte for byte. Whatever the client and the
//! kubelet negotiated is spoken end to end: the WebSocket channel protocols
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`), SPDY/3.1 tunnelled in WebSocket for kubectl's
//! port-forward, or a raw SPDY/3.1 upgrade (see `xkube_kubelet::streaming`).

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::{HeaderMap, StatusCode, header};
use hyper_util::rt::TokioIo;
use xkube_api::{ResourceInfo, StatusError};

use crate::logs::{KubeletClient, encode, kubelet_target};
use crate::registry::Registry;

/// The request headers that make the upgrade, passed on to the kubelet.
const UPGRADE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];
/// The kubelet's answer headers passed back to the client.
const SWITCH_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];

fn truthy(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
    })
}

/// Whether a request asks to switch to WebSocket or SPDY/3.1.
fn is_upgrade(headers: &HeaderMap) -> bool {
    header_has(headers, header::CONNECTION, "upgrade")
        && (header_has(headers, header::UPGRADE, "websocket")
            || header_has(headers, header::UPGRADE, "SPDY/3.1"))
}

fn copy_headers(from: &HeaderMap, names: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for n in names {
        for v in from.get_all(*n) {
            if let Ok(name) = header::HeaderName::from_bytes(n.as_bytes()) {
                h.append(name, v.clone());
            }
        }
    }
    h
}

/// Serves `pods/{name}/{exec|attach|portforward}`.
pub async fn pod_stream(
    reg: &Registry,
    kubelet: &KubeletClient,
    pods: &ResourceInfo,
    sub: &str,
    ns: &str,
    name: &str,
    mut req: Request,
) -> Result<Response, StatusError> {
    let pairs: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let flag = |k: &str| pairs.iter().any(|(n, v)| n == k && truthy(v));
    let container = pairs
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.clone());
    match sub {
        "exec" if !pairs.iter().any(|(k, _)| k == "command") => {
            return Err(StatusError::bad_request(
                "you must specify at least 1 command",
            ));
        }
        "exec" | "attach" if !(flag("stdin") || flag("stdout") || flag("stderr")) => {
            return Err(StatusError::bad_request(
                "you must specify at least 1 of stdin, stdout, stderr",
            ));
        }
        _ => {}
    }
    if !is_upgrade(req.headers()) {
        return Err(StatusError::bad_request("Upgrade request required"));
    }
    // Exec and attach are spoken over WebSocket only (kubectl 1.30+ and the official clients);
    // an SPDY-only client gets a clear answer instead of a half-supported stream.
    if sub != "portforward" && !header_has(req.headers(), header::UPGRADE, "websocket") {
        return Err(StatusError::bad_request(format!(
            "{sub} needs a WebSocket upgrade (v5.channel.k8s.io or v4.channel.k8s.io); SPDY is supported for portforward only"
        )));
    }
    let (container, addr) = kubelet_target(reg, pods, ns, name, container.as_deref()).await?;
    let Some(addr) = addr else {
        return Err(StatusError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    let rest: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k != "container")
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    let path = match sub {
        "exec" => format!(
            "exec/{}/{}/{}",
            encode(ns),
            encode(name),
            encode(&container)
        ),
        "attach" => format!(
            "attach/{}/{}/{}",
            encode(ns),
            encode(name),
            encode(&container)
        ),
        _ => format!("portForward/{}/{}", encode(ns), encode(name)),
    };
    let url = format!("https://{addr}/{path}?{}", rest.join("&"));
    let resp = kubelet
        .upgrade(
            req.method().clone(),
            &url,
            copy_headers(req.headers(), UPGRADE_HEADERS),
        )
        .await
        .map_err(StatusError::internal)?;
    let status = resp.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = resp.bytes().await.unwrap_or_default();
        let msg = String::from_utf8_lossy(&body).trim().to_string();
        let msg = if msg.is_empty() {
            format!("the kubelet answered {status}")
        } else {
            msg
        };
        return Err(match status.as_u16() {
            400 => StatusError::bad_request(msg),
            404 => StatusError::new(404, "NotFound", msg),
            403 => StatusError::new(403, "Forbidden", msg),
            _ => StatusError::internal(msg),
        });
    }
    let headers = copy_headers(resp.headers(), SWITCH_HEADERS);
    let on_client = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let kubelet_io = match resp.upgrade().await {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!(error = %e, "kubelet upgrade failed");
                return;
            }
        };
        let client_io = match on_client.await {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!(error = %e, "client upgrade failed");
                return;
            }
        };
        let mut client_io = TokioIo::new(client_io);
        let mut kubelet_io = kubelet_io;
        if let Err(e) = tokio::io::copy_bidirectional(&mut client_io, &mut kubelet_io).await {
            tracing::debug!(error = %e, "stream ended");
        }
        use tokio::io::AsyncWriteExt;
        let _ = client_io.shutdown().await;
        let _ = kubelet_io.shutdown().await;
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *r.headers_mut() = headers;
    Ok(r)
}
