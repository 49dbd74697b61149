//! The kubelet API (port 10250), HTTPS only, every request authenticated and authorized
//! ([`crate::auth`]):
//! - `GET /healthz` -> `ok`
//! - `GET /pods` -> a `PodList` of the pods this kubelet runs
//! - `GET /stats/summary` -> node and per-pod figures (memory/cpu from the pod cgroups)
//! - `GET /containerLogs/{ns}/{pod}/{container}?follow=true&tailLines=N&previous=true`
//! - `POST|GET /run/{ns}/{pod}/{container}?cmd=<command line>` -> combined output
//! - `POST|GET /exec/{ns}/{pod}/{container}?command=a&command=b` -> combined output
//!   (non-interactive; the exit code is in the `X-Exit-Code` header); upgraded to
//!   WebSocket, the interactive exec of [`crate::streaming`]
//! - `GET /attach/{ns}/{pod}/{container}`, `GET /portForward/{ns}/{pod}` (upgrades, see
//!   [`crate::streaming`])
//!
//! The read-only port (`--read-only-port`, off by default) serves `/healthz`, `/pods` and
//! `/stats/summary` over plain HTTP without authentication, as Kubernetes' does; never exec,
//! run or logs.

use std::{
    collections::HashMap,
    io::{Read as _, Seek as _},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Path, RawQuery, Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use xkube_netns::NsRef;

use crate::{
    Ctx,
    auth::{Auth, Denied, UserInfo, request_attributes},
    error::Result,
    pods::PodView,
    streaming::{self, Kind},
};

/// Binds a port on all addresses inside the node's network namespace.
pub async fn bind(ns: &NsRef, port: u16) -> Result<tokio::net::TcpListener> {
    let l = ns
        .run_async(move || -> std::io::Result<std::net::TcpListener> {
            let l = std::net::TcpListener::bind(("0.0.0.0", port))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .await?
        .map_err(crate::error::io("bind kubelet port", format!(":{port}")))?;
    tokio::net::TcpListener::from_std(l).map_err(crate::error::io("listen", format!(":{port}")))
}

/// Every route of the authenticated API.
fn routes() -> Router<Arc<Ctx>> {
    read_only_routes()
        .route("/containerLogs/{ns}/{pod}/{container}", get(logs))
        .route("/run/{ns}/{pod}/{container}", get(run).post(run))
        .route("/exec/{ns}/{pod}/{container}", get(exec).post(exec))
        .route("/attach/{ns}/{pod}/{container}", get(attach).post(attach))
        .route(
            "/portForward/{ns}/{pod}",
            get(streaming::port_forward).post(streaming::port_forward),
        )
}

/// The routes of the read-only port.
fn read_only_routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/pods", get(pods))
        .route("/stats/summary", get(stats))
}

/// The authenticated API as one router (for the TLS listener, and tests).
pub(crate) fn secure_app(ctx: Arc<Ctx>, auth: Arc<Auth>) -> Router {
    routes()
        .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found") })
        .layer(axum::middleware::from_fn_with_state(auth, guard))
        .with_state(ctx)
}

/// Authentication, then authorization, then the handler (Kubernetes' kubelet filter).
async fn guard(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let cert_user = req
        .extensions()
        .get::<xkube_serve::Conn>()
        .and_then(|c| c.client_cert.clone())
        .map(|(user, groups)| UserInfo::from_cert(user, groups));
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let user = match auth.authenticate(cert_user, authorization).await {
        Ok(u) => u,
        Err(_) => return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response(),
    };
    let attrs = request_attributes(req.method(), req.uri().path());
    match auth.authorize(&user, &attrs).await {
        Ok(()) => next.run(req).await,
        Err(Denied::Forbidden(msg)) => {
            tracing::debug!(user = %user.name, path = req.uri().path(), "{msg}");
            (StatusCode::FORBIDDEN, msg).into_response()
        }
        Err(Denied::AuthorizationError(msg)) => {
            (StatusCode::INTERNAL_SERVER_ERROR, msg).into_response()
        }
        Err(Denied::Unauthenticated) => (StatusCode::UNAUTHORIZED, "Unauthorized").into_response(),
    }
}

/// Serves the authenticated API over TLS on `listener` until `token`; plain HTTP and other
/// garbage end at the handshake (there is no plain-HTTP API).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    app: Router,
    token: CancellationToken,
) {
    let handler = move |req: http::Request<hyper::body::Incoming>| {
        let app = app.clone();
        async move {
            match app.oneshot(req.map(Body::new)).await {
                Ok(r) => r,
                Err(never) => match never {},
            }
        }
    };
    xkube_serve::accept_loop(listener, Some(tls), handler, token).await;
}

/// Serves the read-only port (plain HTTP, no authentication) until `token`.
pub(crate) async fn serve_read_only(
    listener: tokio::net::TcpListener,
    ctx: Arc<Ctx>,
    token: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, read_only_routes().with_state(ctx))
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
}

fn query(raw: Option<String>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

pub(crate) fn find(ctx: &Ctx, ns: &str, name: &str) -> Option<PodView> {
    ctx.views().values().find_map(|v| {
        let v = v.lock().unwrap_or_else(|e| e.into_inner());
        (v.pod.metadata.namespace.as_deref() == Some(ns)
            && v.pod.metadata.name.as_deref() == Some(name))
        .then(|| v.clone())
    })
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, what).into_response()
}

async fn pods(State(ctx): State<Arc<Ctx>>) -> Response {
    let items: Vec<_> = ctx
        .views()
        .values()
        .map(|v| v.lock().unwrap_or_else(|e| e.into_inner()).pod.clone())
        .collect();
    axum::Json(json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}))
        .into_response()
}

fn read_u64(p: PathBuf) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn cpu_usage_nanos(dir: &std::path::Path) -> Option<u64> {
    let s = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|u| u * 1000)
}

async fn stats(State(ctx): State<Arc<Ctx>>) -> Response {
    let now = crate::node::now_str();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |k: &str| {
        mem.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    let pods: Vec<_> = ctx
        .views()
        .values()
        .map(|v| {
            let v = v.lock().unwrap_or_else(|e| e.into_inner());
            let uid = v.pod.metadata.uid.clone().unwrap_or_default();
            let cg = ctx.cgroup_root.as_ref().map(|r| r.join(format!("pod{uid}")));
            json!({
                "podRef": {"name": v.pod.metadata.name, "namespace": v.pod.metadata.namespace, "uid": uid},
                "startTime": v.pod.status.as_ref().and_then(|s| s.start_time.clone()),
                "containers": v.containers.keys().map(|c| json!({"name": c})).collect::<Vec<_>>(),
                "cpu": {"time": now, "usageCoreNanoSeconds": cg.as_ref().and_then(|c| cpu_usage_nanos(c))},
                "memory": {"time": now, "workingSetBytes": cg.as_ref().and_then(|c| read_u64(c.join("memory.current")))},
            })
        })
        .collect();
    axum::Json(json!({
        "node": {
            "nodeName": ctx.node_name,
            "memory": {"time": now, "availableBytes": field("MemAvailable:"),
                       "usageBytes": field("MemTotal:").zip(field("MemAvailable:")).map(|(t, a)| t - a)},
        },
        "pods": pods,
    }))
    .into_response()
}

/// The last `n` lines of `data`.
pub fn tail(data: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &data[data.len()..];
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut count = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            count += 1;
            if count == n {
                return &data[i + 1..];
            }
        }
    }
    data
}

async fn logs(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let q: HashMap<String, String> = query(q).into_iter().collect();
    let Some(view) = find(&ctx, &ns, &pod) else {
        return not_found(format!("pod {ns}/{pod} not found on this node"));
    };
    let previous = q.get("previous").is_some_and(|v| v == "true" || v == "1");
    let Some(path) = view.log_path(&container, previous) else {
        return not_found(format!("container {container} not found in pod {ns}/{pod}"));
    };
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let start = match q.get("tailLines").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => data.len() - tail(&data, n).len(),
        None => 0,
    };
    let follow = q.get("follow").is_some_and(|v| v == "true" || v == "1");
    if !follow {
        return (
            [(header::CONTENT_TYPE, "text/plain")],
            data[start..].to_vec(),
        )
            .into_response();
    }
    // Follow: the file from `start`, then whatever is appended, until the pod goes away. The
    // file stays open, so what was written before the pod's removal deleted it is still sent
    // (a final read once the pod is gone).
    let uid = view.pod.metadata.uid.clone().unwrap_or_default();
    struct Follow {
        path: std::path::PathBuf,
        file: Option<std::fs::File>,
        off: u64,
        idle: u32,
        done: bool,
    }
    let read_more = |mut st: Follow| async move {
        tokio::task::spawn_blocking(move || {
            if st.file.is_none() {
                st.file = std::fs::File::open(&st.path).ok();
            }
            let mut buf = Vec::new();
            if let Some(f) = st.file.as_mut()
                && f.seek(std::io::SeekFrom::Start(st.off)).is_ok()
            {
                let _ = f.take(1 << 20).read_to_end(&mut buf);
            }
            st.off += buf.len() as u64;
            (st, buf)
        })
        .await
        .ok()
    };
    let stream = futures::stream::unfold(
        (
            Follow {
                path,
                file: None,
                off: start as u64,
                idle: 0,
                done: false,
            },
            ctx,
            uid,
        ),
        move |(st, ctx, uid)| async move {
            if st.done {
                return None;
            }
            // Whether the pod is gone is decided before the read, so the read sees everything
            // the container wrote.
            let gone = !ctx.views().contains_key(&uid);
            let (mut st, b) = read_more(st).await?;
            if !b.is_empty() {
                st.idle = 0;
                st.done = gone && b.len() < (1 << 20);
                return Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::from(b)),
                    (st, ctx, uid),
                ));
            }
            // The pod is gone, or nothing was written for an hour: end the stream.
            if gone || st.idle > 36_000 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            st.idle += 1;
            Some((Ok(bytes::Bytes::new()), (st, ctx, uid)))
        },
    );
    (
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// `/exec`: interactive when upgraded to WebSocket, else the command's combined output.
async fn exec(
    State(ctx): State<Arc<Ctx>>,
    Path(target): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Response {
    if xkube_client::stream::is_websocket(req.headers()) {
        return streaming::channels(ctx, Kind::Exec, target, query(q), req).await;
    }
    // Any other upgrade (SPDY from an old client) is refused, never run non-interactively.
    if req.headers().contains_key(header::UPGRADE) {
        return (
            StatusCode::BAD_REQUEST,
            "exec needs a WebSocket upgrade (v5.channel.k8s.io or v4.channel.k8s.io); SPDY is not supported for exec",
        )
            .into_response();
    }
    run(State(ctx), Path(target), RawQuery(q)).await
}

/// `/attach` (WebSocket only).
async fn attach(
    State(ctx): State<Arc<Ctx>>,
    Path(target): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Response {
    streaming::channels(ctx, Kind::Attach, target, query(q), req).await
}

async fn run(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let q = query(q);
    let mut cmd: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if cmd.is_empty()
        && let Some((_, c)) = q.iter().find(|(k, _)| k == "cmd")
    {
        cmd = c.split_whitespace().map(str::to_owned).collect();
    }
    if cmd.is_empty() {
        return (StatusCode::BAD_REQUEST, "missing cmd or command").into_response();
    }
    let Some(view) = find(&ctx, &ns, &pod) else {
        return not_found(format!("pod {ns}/{pod} not found on this node"));
    };
    let Some((Some(id), _)) = view.containers.get(&container).cloned() else {
        return not_found(format!(
            "container {container} not running in pod {ns}/{pod}"
        ));
    };
    match ctx.runtime.exec(&id, &cmd, Duration::from_secs(60)).await {
        Ok(out) => {
            let mut body = out.stdout;
            body.extend_from_slice(&out.stderr);
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "text/plain".to_owned()),
                    (
                        header::HeaderName::from_static("x-exit-code"),
                        out.exit_code.to_string(),
                    ),
                ],
                body,
            )
                .into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_returns_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 1), b"c");
        assert_eq!(tail(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", 0), b"");
    }
}
