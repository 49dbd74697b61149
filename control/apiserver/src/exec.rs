//! `pods/{name}/exec` over WebSocket (`v5.channel.k8s.io` or `v4.channel.k8s.io`; kubectl
//! 1.30+ asks for v5 first),
//! non-interactive: the command runs through the kubelet's `/exec/{ns}/{pod}/{container}`
//! endpoint, its combined output goes out on the stdout channel (1) and the result as a
//! Status on the error channel (3), exit codes included. Stdin and TTYs are not supported (the
//! kubelet's endpoint has none); SPDY upgrades are refused, so kubectl reports the failure.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use xkube_api::{ResourceInfo, StatusError};

use crate::logs::{KubeletClient, encode, kubelet_target};
use crate::registry::Registry;

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The channel protocols spoken, preferred first (v5 only adds a client-side stdin close
/// signal, unused without stdin).
pub const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{}{WS_GUID}", key.trim()).as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}

/// One unmasked binary WebSocket frame (server to client).
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let n = payload.len();
    if n < 126 {
        f.push(n as u8);
    } else if n <= usize::from(u16::MAX) {
        f.push(126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

fn channel_frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(data.len() + 1);
    p.push(channel);
    p.extend_from_slice(data);
    frame(2, &p)
}

/// The Status the error channel carries for an exit code (Kubernetes' wording).
pub fn exit_status(command: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            command.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

fn header_has(req: &Request, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
    })
}

/// Serves `pods/{name}/exec`.
pub async fn pod_exec(
    reg: &Registry,
    kubelet: &KubeletClient,
    pods: &ResourceInfo,
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
    let command: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let q: HashMap<String, String> = pairs.into_iter().collect();
    if command.is_empty() {
        return Err(StatusError::bad_request(
            "you must specify at least 1 command",
        ));
    }
    let tty = q.get("tty").is_some_and(|v| v == "true" || v == "1");
    let stdin = q.get("stdin").is_some_and(|v| v == "true" || v == "1");
    if tty || stdin {
        return Err(StatusError::bad_request(
            "interactive exec (stdin or tty) is not supported by this apiserver",
        ));
    }
    let is_ws = header_has(&req, header::UPGRADE, "websocket")
        && header_has(&req, header::CONNECTION, "upgrade");
    let offered: Vec<String> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(',').map(|p| p.trim().to_string()))
        .collect();
    let protocol = PROTOCOLS
        .iter()
        .copied()
        .find(|p| offered.iter().any(|o| o == p));
    let (Some(key), Some(protocol), true) = (
        req.headers()
            .get(header::SEC_WEBSOCKET_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        protocol,
        is_ws,
    ) else {
        return Err(StatusError::bad_request(format!(
            "exec needs a WebSocket upgrade with subprotocol {}",
            PROTOCOLS.join(" or ")
        )));
    };
    let (container, addr) =
        kubelet_target(reg, pods, ns, name, q.get("container").map(String::as_str)).await?;
    let Some(addr) = addr else {
        return Err(StatusError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    let cmd_query: Vec<String> = command
        .iter()
        .map(|c| format!("command={}", encode(c)))
        .collect();
    let url = format!(
        "https://{addr}/exec/{}/{}/{}?{}",
        encode(ns),
        encode(name),
        encode(&container),
        cmd_query.join("&")
    );
    let on_upgrade = hyper::upgrade::on(&mut req);
    let client = kubelet.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "exec upgrade failed");
                return;
            }
        };
        let mut io = TokioIo::new(upgraded);
        let (output, status) = match run_on_kubelet(&client, &url).await {
            Ok((out, code)) => (out, exit_status(&command, code)),
            Err(msg) => (
                Bytes::new(),
                json!({"metadata": {}, "status": "Failure", "message": msg,
                       "reason": "InternalError"}),
            ),
        };
        let mut wire = Vec::new();
        if !output.is_empty() {
            wire.extend(channel_frame(1, &output));
        }
        wire.extend(channel_frame(
            3,
            &serde_json::to_vec(&status).unwrap_or_default(),
        ));
        wire.extend(frame(8, &1000u16.to_be_bytes()));
        if let Err(e) = io.write_all(&wire).await {
            tracing::debug!(error = %e, "exec stream closed early");
        }
        let _ = io.shutdown().await;
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol),
    );
    if let Ok(v) = HeaderValue::from_str(&accept_key(&key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(r)
}

async fn run_on_kubelet(client: &KubeletClient, url: &str) -> Result<(Bytes, i32), String> {
    let resp = client.post(url).await?;
    let status = resp.status();
    let code = resp
        .headers()
        .get("x-exit-code")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("reading the kubelet's answer: {e}"))?;
    if !status.is_success() {
        return Err(String::from_utf8_lossy(&body).trim().to_string());
    }
    Ok((body, code.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_key_matches_rfc6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_and_statuses() {
        assert_eq!(frame(2, b"ab"), vec![0x82, 2, b'a', b'b']);
        let big = frame(2, &[0u8; 300]);
        assert_eq!(&big[..4], &[0x82, 126, 1, 44]);
        let s = exit_status(&["sh".into(), "-c".into(), "exit 3".into()], 3);
        assert_eq!(
            s["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(exit_status(&[], 0)["status"], "Success");
    }
}
