//! The kubelet's streaming endpoints (behind the same authentication and authorization as
//! the rest of the API; the apiserver proxies `pods/{exec,attach,portforward}` here):
//! - `GET /exec/{ns}/{pod}/{container}?command=..&stdin=1&stdout=1&stderr=1&tty=1` and
//!   `GET /attach/{ns}/{pod}/{container}?...` upgraded to WebSocket with `v5.channel.k8s.io`
//!   or `v4.channel.k8s.io` ([`xkube_client::stream`]): the runtime's
//!   [`ContainerRuntime::exec_stream`](crate::runtime::ContainerRuntime::exec_stream) /
//!   `attach` session on the channels, the exit as a `Status` on the error channel.
//!   Without an upgrade, `/exec` keeps its non-interactive form (see [`crate::server`]).
//! - `GET /portForward/{ns}/{pod}` upgraded to WebSocket with `SPDY/3.1+portforward.k8s.io`
//!   (kubectl 1.31+: SPDY tunnelled in WebSocket messages), or with `v4.channel.k8s.io` /
//!   `portforward.k8s.io` and `?ports=` (the official clients' channel form), or a raw
//!   `Upgrade: SPDY/3.1` (older clients). Connections are made from inside the pod's network
//!   namespace to `127.0.0.1:<port>`, as Kubernetes' runtimes do, so a server listening on
//!   loopback only is reachable too.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Path, RawQuery, Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, protocol::Role};
use xkube_client::{spdy, stream as ws};
use xkube_netns::NsRef;

use crate::{
    Ctx,
    runtime::{StreamOptions, StreamSession, TermSize},
};

/// How long output may still drain after the command exited (a background child holding
/// the pipes open must not keep the session forever).
const DRAIN: Duration = Duration::from_secs(2);
/// Connect timeout for port-forward.
const CONNECT: Duration = Duration::from_secs(5);

fn truthy(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, msg.into()).into_response()
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

/// The container id of a running container (a 404 answer if there is none).
fn running_container(ctx: &Ctx, ns: &str, pod: &str, container: &str) -> Result<String, String> {
    let Some(view) = crate::server::find(ctx, ns, pod) else {
        return Err(format!("pod {ns}/{pod} not found on this node"));
    };
    match view.containers.get(container) {
        Some((Some(id), _)) => Ok(id.clone()),
        _ => Err(format!(
            "container {container} is not running in pod {ns}/{pod}"
        )),
    }
}

/// Which kind of channel session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Exec,
    Attach,
}

/// `/exec` and `/attach` upgraded to WebSocket.
pub(crate) async fn channels(
    ctx: Arc<Ctx>,
    kind: Kind,
    (ns, pod, container): (String, String, String),
    q: Vec<(String, String)>,
    mut req: Request,
) -> Response {
    let command: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let flags: HashMap<&str, bool> = q.iter().map(|(k, v)| (k.as_str(), truthy(v))).collect();
    let flag = |k: &str| flags.get(k).copied().unwrap_or(false);
    let opts = StreamOptions {
        stdin: flag("stdin"),
        stdout: flag("stdout"),
        stderr: flag("stderr") && !flag("tty"),
        tty: flag("tty"),
    };
    if kind == Kind::Exec && command.is_empty() {
        return error(StatusCode::BAD_REQUEST, "missing command");
    }
    if !(opts.stdin || opts.stdout || flag("stderr")) {
        return error(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 of stdin, stdout, stderr",
        );
    }
    let Some(protocol) = ws::choose(req.headers(), ws::EXEC_PROTOCOLS) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "a WebSocket upgrade with one of the subprotocols {} is required",
                ws::EXEC_PROTOCOLS.join(", ")
            ),
        );
    };
    let Some(key) = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return error(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let id = match running_container(&ctx, &ns, &pod, &container) {
        Ok(id) => id,
        Err(msg) => return error(StatusCode::NOT_FOUND, msg),
    };
    let session = match kind {
        Kind::Exec => ctx.runtime.exec_stream(&id, &command, opts).await,
        Kind::Attach => ctx.runtime.attach(&id, opts).await,
    };
    let session = match session {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let v5 = protocol.starts_with("v5.");
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                let socket =
                    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
                serve_session(socket, session, v5, &command).await;
            }
            Err(e) => tracing::debug!(error = %e, "exec upgrade failed"),
        }
    });
    switching(&key, protocol)
}

fn switching(key: &str, protocol: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *r.headers_mut() = ws::switching_headers(key, protocol);
    r
}

/// Copies `r` to the socket as messages on `channel` until EOF. Once the command exited
/// (`exited`), a read that brings nothing for [`DRAIN`] ends it too (a background child may
/// hold the pipe); sending to a slow client is never cut short.
async fn pump_out(
    mut r: crate::runtime::BoxRead,
    channel: u8,
    tx: mpsc::Sender<Message>,
    mut exited: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut after_exit = *exited.borrow();
    loop {
        let read = if after_exit {
            match tokio::time::timeout(DRAIN, r.read(&mut buf)).await {
                Ok(res) => res,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                res = r.read(&mut buf) => res,
                _ = exited.changed() => {
                    after_exit = true;
                    continue;
                }
            }
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx
                    .send(ws::channel_message(channel, &buf[..n]))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Runs one exec/attach session on an upgraded WebSocket.
async fn serve_session<S>(
    socket: WebSocketStream<S>,
    s: StreamSession,
    v5: bool,
    command: &[String],
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(32);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let StreamSession {
        stdin,
        stdout,
        stderr,
        resize,
        exit,
        guard: _guard,
    } = s;
    let (exited_tx, exited) = tokio::sync::watch::channel(false);
    let mut outputs = tokio::task::JoinSet::new();
    if let Some(r) = stdout {
        outputs.spawn(pump_out(r, ws::STDOUT, tx.clone(), exited.clone()));
    }
    if let Some(r) = stderr {
        outputs.spawn(pump_out(r, ws::STDERR, tx.clone(), exited.clone()));
    }
    // Client -> stdin / resize. Ends when the client closes the socket.
    let input = tokio::spawn(async move {
        let mut stdin = stdin;
        while let Some(Ok(m)) = source.next().await {
            let data: Bytes = match m {
                Message::Binary(b) => b,
                Message::Text(t) => Bytes::copy_from_slice(t.as_str().as_bytes()),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, rest)) = data.split_first() else {
                continue;
            };
            match channel {
                ws::STDIN => {
                    if let Some(w) = stdin.as_mut()
                        && w.write_all(rest).await.is_err()
                    {
                        stdin = None;
                    }
                }
                ws::RESIZE => {
                    if let (Some(r), Ok(size)) =
                        (resize.as_ref(), serde_json::from_slice::<TermSize>(rest))
                    {
                        let _ = r.send(size).await;
                    }
                }
                ws::CLOSE if v5 && rest.first() == Some(&ws::STDIN) => {
                    if let Some(mut w) = stdin.take() {
                        let _ = w.shutdown().await;
                    }
                }
                _ => {}
            }
        }
        // The client went away (or closed): stdin ends.
        if let Some(mut w) = stdin.take() {
            let _ = w.shutdown().await;
        }
    });
    let mut input = input;
    let mut exit = exit;
    let code = tokio::select! {
        c = &mut exit => Some(c),
        _ = &mut input => {
            // The client is gone: nobody to report to. Dropping the session ends it.
            None
        }
    };
    let Some(code) = code else {
        outputs.abort_all();
        writer.abort();
        return;
    };
    // Output still in the pipes goes out before the status (however slow the client).
    let _ = exited_tx.send(true);
    while outputs.join_next().await.is_some() {}
    let status = match code {
        Ok(Some(c)) => exit_status(command, c),
        Ok(None) => json!({"metadata": {}, "status": "Success"}),
        Err(e) => json!({"metadata": {}, "status": "Failure", "message": e.to_string(),
                          "reason": "InternalError"}),
    };
    let body = serde_json::to_vec(&status).unwrap_or_default();
    let _ = tx.send(ws::channel_message(ws::ERROR, &body)).await;
    let _ = tx.send(ws::normal_close()).await;
    drop(tx);
    let _ = tokio::time::timeout(DRAIN, writer).await;
    input.abort();
}

/// Connects to `127.0.0.1:port` inside `netns` (the kubelet's own for `None`, tests).
async fn connect_in(netns: Option<PathBuf>, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let ns = match netns {
        Some(p) => NsRef::path(p),
        None => NsRef::current(),
    };
    let s = ns
        .run_async(move || -> std::io::Result<std::net::TcpStream> {
            let s =
                std::net::TcpStream::connect_timeout(&(([127, 0, 0, 1], port).into()), CONNECT)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .await
        .map_err(std::io::Error::other)??;
    let s = tokio::net::TcpStream::from_std(s)?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// `/portForward/{ns}/{pod}`.
pub(crate) async fn port_forward(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    mut req: Request,
) -> Response {
    let Some(view) = crate::server::find(&ctx, &ns, &pod) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} not found on this node"),
        );
    };
    let Some(sb) = view.sandbox.clone() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("pod {ns}/{pod} has no running sandbox"),
        );
    };
    if !ctx.runtime.sandbox_alive(&sb).await {
        return error(
            StatusCode::BAD_REQUEST,
            format!("pod {ns}/{pod} has no running sandbox"),
        );
    }
    // The infra process' namespace: the pod's own, or the node's for hostNetwork pods (the
    // node's, not the kubelet's, when the kubelet runs outside it).
    let netns = Some(sb.netns.clone());
    let headers = req.headers().clone();
    if ws::is_websocket(&headers) {
        let Some(key) = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
        else {
            return error(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
        };
        let mut supported = vec![ws::SPDY_PORT_FORWARD];
        supported.extend_from_slice(ws::PORT_FORWARD_PROTOCOLS);
        let Some(protocol) = ws::choose(&headers, &supported) else {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "port-forward needs one of the subprotocols {}",
                    supported.join(", ")
                ),
            );
        };
        let ports = if protocol == ws::SPDY_PORT_FORWARD {
            Vec::new()
        } else {
            match ports_query(q.as_deref().unwrap_or("")) {
                Ok(p) if !p.is_empty() => p,
                Ok(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "query parameter \"ports\" is required",
                    );
                }
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            }
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(up) = on_upgrade.await else { return };
            let socket =
                WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
            if protocol == ws::SPDY_PORT_FORWARD {
                serve_spdy(ws::ws_bytes(socket), netns).await;
            } else {
                serve_channel_ports(socket, ports, netns).await;
            }
        });
        return switching(&key, protocol);
    }
    if ws::is_spdy(&headers) {
        let offered: Vec<String> = headers
            .get_all("x-stream-protocol-version")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(',').map(|p| p.trim().to_owned()))
            .collect();
        if !offered.iter().any(|p| p == ws::PORT_FORWARD_V1) {
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports [{}]",
                    ws::PORT_FORWARD_V1
                ),
            );
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                serve_spdy(TokioIo::new(up), netns).await;
            }
        });
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(
            "x-stream-protocol-version",
            HeaderValue::from_static(ws::PORT_FORWARD_V1),
        );
        return r;
    }
    error(
        StatusCode::BAD_REQUEST,
        "port-forward needs a WebSocket or SPDY/3.1 upgrade",
    )
}

/// `ports=80,8080&ports=9090` -> [80, 8080, 9090].
fn ports_query(q: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
        if k != "ports" {
            continue;
        }
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => out.push(n),
                _ => return Err(format!("invalid port {p:?}")),
            }
        }
    }
    Ok(out)
}

/// The channel form: one TCP connection per requested port, data on channel `2i`, errors on
/// `2i+1`, each channel opened by the port number (little endian).
async fn serve_channel_ports<S>(socket: WebSocketStream<S>, ports: Vec<u16>, netns: Option<PathBuf>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(32);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut writers = Vec::new();
    let mut readers = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let data = (2 * i) as u8;
        for ch in [data, data + 1] {
            let _ = tx.send(ws::channel_message(ch, &port.to_le_bytes())).await;
        }
        match connect_in(netns.clone(), port).await {
            Ok(conn) => {
                let (mut r, w) = conn.into_split();
                writers.push(Some(w));
                let tx = tx.clone();
                readers.spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    while let Ok(n) = r.read(&mut buf).await {
                        if n == 0 || tx.send(ws::channel_message(data, &buf[..n])).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => {
                writers.push(None);
                let msg = format!("error forwarding port {port} to pod: {e}");
                let _ = tx.send(ws::channel_message(data + 1, msg.as_bytes())).await;
            }
        }
    }
    let input = async {
        while let Some(Ok(m)) = source.next().await {
            let data: Bytes = match m {
                Message::Binary(b) => b,
                Message::Text(t) => Bytes::copy_from_slice(t.as_str().as_bytes()),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, rest)) = data.split_first() else {
                continue;
            };
            let idx = usize::from(channel / 2);
            if channel % 2 != 0 {
                continue;
            }
            if let Some(Some(w)) = writers.get_mut(idx)
                && w.write_all(rest).await.is_err()
            {
                writers[idx] = None;
            }
        }
    };
    // Until the client closes, or every connection to the pod ended.
    tokio::select! {
        _ = input => {}
        _ = async { while readers.join_next().await.is_some() {} } => {}
    }
    readers.abort_all();
    let _ = tx.send(ws::normal_close()).await;
    drop(tx);
    let _ = tokio::time::timeout(DRAIN, writer).await;
}

/// SPDY port-forward: every request is a pair of streams with the same `requestid`, an
/// `error` stream and a `data` stream carrying a `port` header.
async fn serve_spdy<T>(io: T, netns: Option<PathBuf>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut session = spdy::Session::server(io);
    // requestid -> the error (or data) stream, until the other one of the pair arrives;
    // unpaired streams are reset after PAIR_TIMEOUT, and at most MAX_PENDING wait.
    const PAIR_TIMEOUT: Duration = Duration::from_secs(30);
    const MAX_PENDING: usize = 128;
    let mut errors: HashMap<String, (std::time::Instant, spdy::Stream)> = HashMap::new();
    let mut early_data: HashMap<String, (std::time::Instant, spdy::Stream)> = HashMap::new();
    while let Some(mut st) = session.accept().await {
        let now = std::time::Instant::now();
        for pending in [&mut errors, &mut early_data] {
            pending.retain(|_, (at, _)| now.duration_since(*at) < PAIR_TIMEOUT);
        }
        if errors.len() + early_data.len() >= MAX_PENDING {
            let _ = st.reset().await;
            continue;
        }
        if st.reply().await.is_err() {
            continue;
        }
        let rid = st.header("requestid").unwrap_or("").to_owned();
        match st.header("streamtype") {
            Some("error") => match early_data.remove(&rid) {
                Some((_, data)) => spawn_forward(data, st, netns.clone()),
                None => {
                    errors.insert(rid, (now, st));
                }
            },
            Some("data") => match errors.remove(&rid) {
                Some((_, err)) => spawn_forward(st, err, netns.clone()),
                None => {
                    early_data.insert(rid, (now, st));
                }
            },
            other => {
                tracing::debug!(?other, "port-forward: unknown stream type");
                let _ = st.shutdown().await;
            }
        }
    }
}

fn spawn_forward(mut data: spdy::Stream, mut err: spdy::Stream, netns: Option<PathBuf>) {
    tokio::spawn(async move {
        let port = data.header("port").and_then(|p| p.parse::<u16>().ok());
        let Some(port) = port.filter(|p| *p > 0) else {
            let _ = err
                .write_all(b"error forwarding port: invalid port header")
                .await;
            let _ = err.shutdown().await;
            let _ = data.shutdown().await;
            return;
        };
        match connect_in(netns, port).await {
            Ok(conn) => {
                // Each direction on its own; once one ends, the other gets a second (as
                // CRI runtimes do), then both streams close: kubectl waits for the error
                // stream before it closes the local connection.
                let (mut conn_r, mut conn_w) = conn.into_split();
                let (mut data_r, mut data_w) = tokio::io::split(data);
                let mut up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut data_r, &mut conn_w).await;
                    let _ = conn_w.shutdown().await;
                    data_r
                });
                let mut down = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut conn_r, &mut data_w).await;
                    let _ = data_w.shutdown().await;
                    data_w
                });
                let (r, w) = tokio::select! {
                    r = &mut up => {
                        let w = tokio::time::timeout(Duration::from_secs(1), &mut down).await;
                        (r.ok(), w.ok().and_then(Result::ok))
                    }
                    w = &mut down => {
                        let r = tokio::time::timeout(Duration::from_secs(1), &mut up).await;
                        (r.ok().and_then(Result::ok), w.ok())
                    }
                };
                up.abort();
                down.abort();
                if let (Some(r), Some(w)) = (r, w) {
                    let mut data = r.unsplit(w);
                    let _ = data.shutdown().await;
                }
                let _ = err.shutdown().await;
            }
            Err(e) => {
                let msg = format!("error forwarding port {port} to pod: {e}");
                let _ = err.write_all(msg.as_bytes()).await;
                let _ = err.shutdown().await;
                let _ = data.shutdown().await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_flags() {
        assert_eq!(
            ports_query("ports=80,8080&ports=9090"),
            Ok(vec![80, 8080, 9090])
        );
        assert!(ports_query("ports=0").is_err());
        assert!(ports_query("ports=http").is_err());
        assert!(truthy("True") && truthy("1") && !truthy("false") && !truthy(""));
    }

    #[test]
    fn exit_statuses() {
        let s = exit_status(&["sh".into(), "-c".into(), "exit 3".into()], 3);
        assert_eq!(
            s["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
        assert_eq!(xkube_client::stream::exit_code(&s), Ok(3));
        assert_eq!(exit_status(&[], 0)["status"], "Success");
    }
}
