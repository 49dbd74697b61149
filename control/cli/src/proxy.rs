//! `proxy`: a reverse proxy of the apiserver on 127.0.0.1 that adds the kubeconfig's
//! credentials.

use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use clap::Args;
use futures::TryStreamExt;
use xkube_client::Client;

use crate::{Global, Reported};

/// `proxy` flags.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The port to run the proxy on (0 picks one).
    #[arg(short = 'p', long, default_value_t = 8001)]
    port: u16,
    /// The IP address to serve on (loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    address: Ipv4Addr,
    /// Prefix to serve the proxied API under.
    #[arg(long, default_value = "/")]
    api_prefix: String,
}

const HOP_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "authorization",
    "content-length",
];

async fn forward(State((client, prefix)): State<(Client, String)>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let path = match pq.strip_prefix(prefix.trim_end_matches('/')) {
        Some(p) if p.starts_with('/') => p.to_string(),
        Some("") => "/".to_string(),
        _ => pq.clone(),
    };
    let mut rb = client.request(parts.method.clone(), &path);
    for (k, v) in &parts.headers {
        if !HOP_HEADERS.contains(&k.as_str()) {
            rb = rb.header(k, v);
        }
    }
    let stream = body.into_data_stream();
    rb = rb.body(reqwest::Body::wrap_stream(stream));
    match rb.send().await {
        Ok(resp) => {
            let mut out = Response::builder().status(resp.status().as_u16());
            for (k, v) in resp.headers() {
                if !HOP_HEADERS.contains(&k.as_str()) {
                    out = out.header(k, v);
                }
            }
            let body = Body::from_stream(resp.bytes_stream().map_err(std::io::Error::other));
            out.body(body)
                .unwrap_or_else(|_| Response::new(Body::empty()))
        }
        Err(e) => {
            tracing::warn!(error = %e, "proxy request failed");
            let mut r = Response::new(Body::from(format!("proxy error: {e}\n")));
            *r.status_mut() = http::StatusCode::BAD_GATEWAY;
            r
        }
    }
}

/// `proxy`.
pub async fn run(g: &Global, a: ProxyArgs) -> anyhow::Result<()> {
    if !a.address.is_loopback() {
        return Err(Reported("error: the proxy only serves on loopback addresses".into()).into());
    }
    let (client, _) = g.client()?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((a.address, a.port)))
        .await
        .map_err(|e| Reported(format!("error: listen tcp {}:{}: {e}", a.address, a.port)))?;
    let local = listener.local_addr()?;
    println!("Starting to serve on {local}");
    let app = Router::new()
        .fallback(forward)
        .with_state((client, a.api_prefix.clone()));
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
