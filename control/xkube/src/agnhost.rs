//! `xkube agnhost`: a test workload modelled on Kubernetes' agnhost.
//!
//! `netexec` (the default when no subcommand is given, so `xkube agnhost --http-port=8080`
//! and the upstream image's `args: ["netexec", "--http-port=8080"]` both work):
//! HTTP (`--http-port`, default 8080): `/hostname`, `/clientip` (`ip:port` as the server saw
//! it), `/whoami` (`<hostname> <client ip>`), `/echo?msg=...`, `/healthz`, `/` (`NOW: <time>`),
//! `/dial?host=H&port=P&path=/hostname` (this pod fetches `http://H:P/path` and returns the
//! body: how tests make a pod talk to a service, e.g. itself through its service).
//! TCP (`--tcp-port`): echoes what it reads. UDP (`--udp-port`): answers `hostname` with the
//! hostname, `clientip` with the client address, anything else with itself.
//!
//! `dig` ([`dig`]): one DNS lookup as a pod's resolver would make it (resolv.conf's first
//! nameserver, search path and ndots), printed in a parseable form. `dnsperf` ([`dnsperf`]):
//! a bounded DNS load generator reporting queries/s and latency percentiles.

mod dig;
mod dnsperf;

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{
    Router,
    extract::{ConnectInfo, Query},
    routing::get,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, UdpSocket},
};
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// `netexec`'s flags when no subcommand is given.
    #[command(flatten)]
    netexec: NetexecArgs,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// HTTP, TCP and UDP echo servers (the default).
    Netexec(NetexecArgs),
    /// One DNS lookup, resolved as a pod's resolver would (resolv.conf's nameserver, search
    /// path and ndots); prints `status: <RCODE>` and one record per line.
    Dig(dig::Args),
    /// A DNS load generator, bounded in queries and time: queries/s and latency percentiles.
    Dnsperf(dnsperf::Args),
}

#[derive(clap::Args, Debug)]
pub struct NetexecArgs {
    /// HTTP port (0 = off).
    #[arg(long, env = "XKUBE_AGNHOST_HTTP_PORT", default_value_t = 8080)]
    http_port: u16,
    /// TCP echo port (0 = off).
    #[arg(long, env = "XKUBE_AGNHOST_TCP_PORT", default_value_t = 0)]
    tcp_port: u16,
    /// UDP port (0 = off).
    #[arg(long, env = "XKUBE_AGNHOST_UDP_PORT", default_value_t = 0)]
    udp_port: u16,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    bind: std::net::IpAddr,
}

pub async fn run(args: Args, token: CancellationToken) -> anyhow::Result<()> {
    match args.cmd {
        None => netexec(args.netexec, token).await,
        Some(Cmd::Netexec(a)) => netexec(a, token).await,
        Some(Cmd::Dig(a)) => dig::run(a).await,
        Some(Cmd::Dnsperf(a)) => dnsperf::run(a, token).await,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

async fn netexec(args: NetexecArgs, token: CancellationToken) -> anyhow::Result<()> {
    let host = Arc::new(hostname());
    let mut tasks = tokio::task::JoinSet::new();
    if args.http_port != 0 {
        let listener = TcpListener::bind((args.bind, args.http_port))
            .await
            .with_context(|| format!("binding HTTP port {}", args.http_port))?;
        let h = host.clone();
        let h2 = host.clone();
        let app = Router::new()
            .route("/", get(|| async { format!("NOW: {}", jiff_now()) }))
            .route("/hostname", get(move || async move { h.to_string() }))
            .route(
                "/clientip",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route(
                "/whoami",
                get(
                    move |ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                        format!("{} {}\n", h2, peer.ip())
                    },
                ),
            )
            .route(
                "/echo",
                get(|Query(q): Query<HashMap<String, String>>| async move {
                    q.get("msg").cloned().unwrap_or_default()
                }),
            )
            .route("/healthz", get(|| async { "ok" }))
            .route("/dial", get(dial));
        let t = token.clone();
        tasks.spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(t.cancelled_owned())
            .await
            .context("HTTP server")
        });
    }
    if args.tcp_port != 0 {
        let listener = TcpListener::bind((args.bind, args.tcp_port))
            .await
            .with_context(|| format!("binding TCP port {}", args.tcp_port))?;
        let t = token.clone();
        tasks.spawn(async move {
            loop {
                let (mut s, _) = tokio::select! {
                    _ = t.cancelled() => return Ok(()),
                    r = listener.accept() => r.context("accept")?,
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    if args.udp_port != 0 {
        let sock = UdpSocket::bind((args.bind, args.udp_port))
            .await
            .with_context(|| format!("binding UDP port {}", args.udp_port))?;
        let t = token.clone();
        let h = host.clone();
        tasks.spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let (n, peer) = tokio::select! {
                    _ = t.cancelled() => return Ok(()),
                    r = sock.recv_from(&mut buf) => r.context("recv")?,
                };
                let reply = match std::str::from_utf8(&buf[..n]).map(str::trim) {
                    Ok("hostname") => h.as_bytes().to_vec(),
                    Ok("clientip") => peer.to_string().into_bytes(),
                    _ => buf[..n].to_vec(),
                };
                let _ = sock.send_to(&reply, peer).await;
            }
        });
    }
    if tasks.is_empty() {
        anyhow::bail!("nothing to serve: set --http-port, --tcp-port or --udp-port");
    }
    while let Some(r) = tasks.join_next().await {
        r.context("agnhost task")??;
    }
    Ok(())
}

/// `/dial`: one bounded HTTP/1.0 GET from this pod.
async fn dial(Query(q): Query<HashMap<String, String>>) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    let (Some(host), Some(port)) = (q.get("host"), q.get("port")) else {
        return (
            StatusCode::BAD_REQUEST,
            "host and port are required\n".into(),
        );
    };
    let path = q.get("path").map_or("/hostname", String::as_str);
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(format!("{host}:{port}")).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), fetch).await {
        Ok(Ok(text)) => match text.split_once("\r\n\r\n") {
            Some((_, body)) => (StatusCode::OK, body.to_owned()),
            None => (StatusCode::BAD_GATEWAY, text),
        },
        Ok(Err(e)) => (
            StatusCode::BAD_GATEWAY,
            format!("dial {host}:{port}: {e}\n"),
        ),
        Err(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            format!("dial {host}:{port}: timed out\n"),
        ),
    }
}

fn jiff_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}
