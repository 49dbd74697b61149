//! `exec`, `attach`, `port-forward` and `cp`: the pods' streaming subresources over the
//! WebSocket channel protocols of [`xkube_client::stream`] (the code the kubelet serves).

use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};

use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xkube_client::Client;
use xkube_client::stream::{
    self as ws, ChannelReceiver, ChannelSender, EXEC_PROTOCOLS, PORT_FORWARD_PROTOCOLS,
};

use crate::{Global, Reported, api_err};

/// The command's exit code, passed on as xkubectl's own (nothing printed).
#[derive(Debug)]
pub struct ExitWith(pub i32);

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for ExitWith {}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `exec` flags.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// POD or TYPE/NAME.
    target: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
    /// Container name (default: the pod's first container).
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Pass stdin to the container.
    #[arg(short = 'i', long)]
    stdin: bool,
    /// Stdin is a TTY.
    #[arg(short = 't', long)]
    tty: bool,
    /// Only print output from the remote session.
    #[arg(short = 'q', long)]
    quiet: bool,
}

/// `attach` flags.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// POD or TYPE/NAME.
    target: String,
    /// Container name.
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Pass stdin to the container.
    #[arg(short = 'i', long)]
    stdin: bool,
    /// Stdin is a TTY.
    #[arg(short = 't', long)]
    tty: bool,
    /// Only print output from the remote session.
    #[arg(short = 'q', long)]
    quiet: bool,
}

/// `port-forward` flags.
#[derive(Debug, Args)]
pub struct PortForwardArgs {
    /// POD or TYPE/NAME.
    target: String,
    /// [LOCAL_PORT:]REMOTE_PORT ... (LOCAL_PORT 0 or empty: a random one).
    #[arg(required = true)]
    ports: Vec<String>,
    /// Addresses to listen on (comma separated); only IP addresses or localhost.
    #[arg(long, default_value = "localhost", value_delimiter = ',')]
    address: Vec<String>,
}

/// `cp` flags.
#[derive(Debug, Args)]
pub struct CpArgs {
    /// Source: a local path or [NAMESPACE/]POD:PATH.
    src: String,
    /// Destination: a local path or [NAMESPACE/]POD:PATH.
    dst: String,
    /// Container name.
    #[arg(short = 'c', long)]
    container: Option<String>,
}

async fn pod_name(client: &Client, ns: &str, target: &str) -> anyhow::Result<String> {
    let t = target
        .strip_prefix("pod/")
        .or_else(|| target.strip_prefix("pods/"))
        .unwrap_or(target);
    if t.contains('/') {
        crate::logs::pod_of_workload(client, ns, target).await
    } else {
        Ok(t.to_owned())
    }
}

/// The local terminal in raw mode until dropped.
struct RawTerminal {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawTerminal {
    fn enable() -> Self {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else {
            return RawTerminal { saved: None };
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return RawTerminal { saved: None };
        }
        RawTerminal { saved: Some(saved) }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

/// The local terminal's (columns, rows).
fn term_size() -> Option<(u16, u16)> {
    nix::ioctl_read_bad!(get_winsize, libc::TIOCGWINSZ, libc::winsize);
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: TIOCGWINSZ writes one `winsize` into the valid, exclusively borrowed `ws`.
    let r = unsafe { get_winsize(std::io::stdout().as_raw_fd(), &mut ws) };
    (r.is_ok() && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Where a channel session's stdin comes from.
enum Input {
    None,
    /// This process' stdin.
    Stdin,
    /// These bytes, then EOF.
    Bytes(Vec<u8>),
}

/// Where its stdout goes.
enum Output {
    Stdout,
    /// Collected.
    Buffer(Vec<u8>),
}

/// Runs one channel session: input to channel 0 (then the close signal), stdout/stderr
/// channels out, terminal resizes with a TTY; returns the error channel's Status.
async fn session(
    tx: ChannelSender,
    mut rx: ChannelReceiver,
    input: Input,
    tty: bool,
    mut output: Output,
) -> anyhow::Result<(Option<serde_json::Value>, Output)> {
    let tx = std::sync::Arc::new(tokio::sync::Mutex::new(tx));
    if tty && let Some((w, h)) = term_size() {
        tx.lock().await.resize(w, h).await?;
    }
    let resizer = tty.then(|| {
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut sig) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while sig.recv().await.is_some() {
                if let Some((w, h)) = term_size()
                    && tx.lock().await.resize(w, h).await.is_err()
                {
                    return;
                }
            }
        })
    });
    let feeder = {
        let tx = tx.clone();
        tokio::spawn(async move {
            match input {
                Input::None => {}
                Input::Bytes(b) => {
                    let mut t = tx.lock().await;
                    if t.send(ws::STDIN, &b).await.is_ok() {
                        let _ = t.close_stdin().await;
                    }
                }
                Input::Stdin => {
                    let mut stdin = tokio::io::stdin();
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match stdin.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if tx.lock().await.send(ws::STDIN, &buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = tx.lock().await.close_stdin().await;
                }
            }
        })
    };
    let mut status = None;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some((ch, data)) = rx.recv().await? {
        match ch {
            ws::STDOUT => match &mut output {
                Output::Stdout => {
                    stdout.write_all(&data).await?;
                    stdout.flush().await?;
                }
                Output::Buffer(b) => b.extend_from_slice(&data),
            },
            ws::STDERR => {
                stderr.write_all(&data).await?;
                stderr.flush().await?;
            }
            ws::ERROR => {
                status = serde_json::from_slice(&data).ok();
            }
            _ => {}
        }
    }
    feeder.abort();
    if let Some(r) = resizer {
        r.abort();
    }
    let _ = tx.lock().await.close().await;
    Ok((status, output))
}

fn finish(status: Option<serde_json::Value>) -> anyhow::Result<()> {
    let Some(status) = status else {
        return Ok(());
    };
    match ws::exit_code(&status) {
        Ok(0) => Ok(()),
        Ok(code) => Err(ExitWith(code).into()),
        Err(msg) => Err(Reported(format!("error: {msg}")).into()),
    }
}

fn stream_query(stdin: bool, tty: bool, container: Option<&str>) -> String {
    let mut q = vec![
        format!("stdin={stdin}"),
        "stdout=true".to_owned(),
        format!("stderr={}", !tty),
        format!("tty={tty}"),
    ];
    if let Some(c) = container {
        q.push(format!("container={}", enc(c)));
    }
    q.join("&")
}

/// `exec`.
pub async fn exec(g: &Global, a: ExecArgs) -> anyhow::Result<()> {
    let (client, ns) = g.client()?;
    let pod = pod_name(&client, &ns, &a.target).await?;
    let tty = a.tty && a.stdin && std::io::stdin().is_terminal();
    if a.tty && !tty && !a.quiet {
        eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
    }
    let mut q = stream_query(a.stdin, tty, a.container.as_deref());
    for c in &a.command {
        q.push_str(&format!("&command={}", enc(c)));
    }
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}/exec?{q}",
        enc(&ns),
        enc(&pod)
    );
    let ch = client
        .channels(&path, EXEC_PROTOCOLS)
        .await
        .map_err(|e| api_err(e, &client))?;
    let (tx, rx) = ch.split();
    let _raw = tty.then(RawTerminal::enable);
    let input = if a.stdin { Input::Stdin } else { Input::None };
    let (status, _) = session(tx, rx, input, tty, Output::Stdout).await?;
    drop(_raw);
    finish(status)
}

/// `attach`.
pub async fn attach(g: &Global, a: AttachArgs) -> anyhow::Result<()> {
    let (client, ns) = g.client()?;
    let pod = pod_name(&client, &ns, &a.target).await?;
    let tty = a.tty && a.stdin && std::io::stdin().is_terminal();
    if !a.quiet && a.stdin {
        eprintln!("If you don't see a command prompt, try pressing enter.");
    }
    let q = stream_query(a.stdin, tty, a.container.as_deref());
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}/attach?{q}",
        enc(&ns),
        enc(&pod)
    );
    let ch = client
        .channels(&path, EXEC_PROTOCOLS)
        .await
        .map_err(|e| api_err(e, &client))?;
    let (tx, rx) = ch.split();
    let _raw = tty.then(RawTerminal::enable);
    let input = if a.stdin { Input::Stdin } else { Input::None };
    let (status, _) = session(tx, rx, input, tty, Output::Stdout).await?;
    drop(_raw);
    finish(status)
}

/// `[LOCAL:]REMOTE` -> (local, remote).
fn parse_port(spec: &str) -> anyhow::Result<(u16, u16)> {
    let bad = || Reported(format!("error: invalid port specification {spec:?}"));
    let (l, r) = match spec.split_once(':') {
        Some((l, r)) => (if l.is_empty() { "0" } else { l }, r),
        None => (spec, spec),
    };
    let l: u16 = l.parse().map_err(|_| bad())?;
    let r: u16 = r.parse().map_err(|_| bad())?;
    if r == 0 {
        return Err(bad().into());
    }
    Ok((l, r))
}

/// One forwarded connection: a WebSocket per connection (the channel protocol carries one
/// connection per port).
async fn forward_one(
    client: Client,
    path: String,
    mut conn: tokio::net::TcpStream,
) -> anyhow::Result<()> {
    let ch = client.channels(&path, PORT_FORWARD_PROTOCOLS).await?;
    let (mut tx, mut rx) = ch.split();
    let (mut r, mut w) = conn.split();
    let mut seen = [false; 2];
    let up = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(0, &buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Keep the socket open: the pod's answer may still be coming.
        std::future::pending::<()>().await;
    };
    let down = async {
        while let Ok(Some((ch, data))) = rx.recv().await {
            let i = usize::from(ch & 1);
            if !seen[i] {
                // The first message of each channel is the port number.
                seen[i] = true;
                continue;
            }
            if ch == 0 {
                if w.write_all(&data).await.is_err() {
                    break;
                }
            } else if !data.is_empty() {
                eprintln!("{}", String::from_utf8_lossy(&data));
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    Ok(())
}

/// `port-forward`.
pub async fn port_forward(g: &Global, a: PortForwardArgs) -> anyhow::Result<()> {
    let (client, ns) = g.client()?;
    let pod = pod_name(&client, &ns, &a.target).await?;
    // The pod must exist and run (as kubectl checks).
    let p = client
        .get_json(&format!(
            "/api/v1/namespaces/{}/pods/{}",
            enc(&ns),
            enc(&pod)
        ))
        .await
        .map_err(|e| api_err(e, &client))?;
    if p["status"]["phase"] != "Running" {
        return Err(Reported(format!(
            "error: unable to forward port because pod is not running. Current status={}",
            p["status"]["phase"].as_str().unwrap_or("Unknown")
        ))
        .into());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for spec in &a.ports {
        let (local, remote) = parse_port(spec)?;
        for addr in &a.address {
            let hosts: Vec<std::net::IpAddr> = if addr == "localhost" {
                vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()]
            } else {
                vec![
                    addr.parse()
                        .map_err(|_| Reported(format!("error: {addr:?} is not an IP address")))?,
                ]
            };
            for host in hosts {
                let l = match tokio::net::TcpListener::bind((host, local)).await {
                    Ok(l) => l,
                    Err(e) if addr == "localhost" && host.is_ipv6() => {
                        tracing::debug!(error = %e, "no IPv6 loopback");
                        continue;
                    }
                    Err(e) => {
                        return Err(Reported(format!(
                            "error: unable to listen on port {local}: {e}"
                        ))
                        .into());
                    }
                };
                let bound = l.local_addr()?;
                let shown = if host.is_ipv6() {
                    format!("[{}]:{}", bound.ip(), bound.port())
                } else {
                    bound.to_string()
                };
                println!("Forwarding from {shown} -> {remote}");
                let _ = std::io::stdout().flush();
                let path = format!(
                    "/api/v1/namespaces/{}/pods/{}/portforward?ports={remote}",
                    enc(&ns),
                    enc(&pod)
                );
                let client = client.clone();
                tasks.spawn(async move {
                    loop {
                        let Ok((conn, _)) = l.accept().await else {
                            return;
                        };
                        println!("Handling connection for {}", bound.port());
                        let (client, path) = (client.clone(), path.clone());
                        tokio::spawn(async move {
                            if let Err(e) = forward_one(client, path, conn).await {
                                eprintln!("error: forwarding a connection: {e}");
                            }
                        });
                    }
                });
            }
        }
    }
    tokio::select! {
        _ = async { while tasks.join_next().await.is_some() {} } => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// `[ns/]pod:path` or a local path.
fn remote(spec: &str) -> Option<(Option<&str>, &str, &str)> {
    let (pod, path) = spec.split_once(':')?;
    if pod.is_empty() || (pod.contains('.') && Path::new(pod).exists()) {
        return None;
    }
    match pod.split_once('/') {
        Some((ns, pod)) => Some((Some(ns), pod, path)),
        None => Some((None, pod, path)),
    }
}

/// Runs `command` in the pod with `input` on stdin, collecting stdout.
async fn run_in_pod(
    client: &Client,
    ns: &str,
    pod: &str,
    container: Option<&str>,
    command: &[&str],
    input: Option<Vec<u8>>,
) -> anyhow::Result<Vec<u8>> {
    let mut q = stream_query(input.is_some(), false, container);
    for c in command {
        q.push_str(&format!("&command={}", enc(c)));
    }
    let path = format!("/api/v1/namespaces/{}/pods/{}/exec?{q}", enc(ns), enc(pod));
    let ch = client
        .channels(&path, EXEC_PROTOCOLS)
        .await
        .map_err(|e| api_err(e, client))?;
    let (tx, rx) = ch.split();
    let input = input.map_or(Input::None, Input::Bytes);
    let (status, out) = session(tx, rx, input, false, Output::Buffer(Vec::new())).await?;
    finish(status)?;
    match out {
        Output::Buffer(b) => Ok(b),
        Output::Stdout => Ok(Vec::new()),
    }
}

/// `cp`: tar through `exec` both ways (the container needs `tar`, as with kubectl).
pub async fn cp(g: &Global, a: CpArgs) -> anyhow::Result<()> {
    let (client, default_ns) = g.client()?;
    match (remote(&a.src), remote(&a.dst)) {
        (None, Some((ns, pod, path))) => {
            let ns = ns.unwrap_or(&default_ns);
            let src = PathBuf::from(&a.src);
            let meta = std::fs::metadata(&src)
                .map_err(|e| Reported(format!("error: {}: {e}", src.display())))?;
            let dest = Path::new(path);
            // Into an existing directory: under the source's name there (as kubectl does).
            let into_dir = run_in_pod(
                &client,
                ns,
                pod,
                a.container.as_deref(),
                &["sh", "-c", "test -d \"$1\"", "sh", path],
                None,
            )
            .await
            .is_ok();
            let (dir, name) = match (dest.parent(), dest.file_name()) {
                _ if into_dir => (dest, src.file_name().unwrap_or_default().to_owned()),
                (Some(d), Some(n)) => (
                    if d.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        d
                    },
                    n.to_owned(),
                ),
                _ => (dest, src.file_name().unwrap_or_default().to_owned()),
            };
            let mut b = tar::Builder::new(Vec::new());
            b.follow_symlinks(false);
            if meta.is_dir() {
                b.append_dir_all(&name, &src)?;
            } else {
                b.append_path_with_name(&src, &name)?;
            }
            let archive = b.into_inner()?;
            let dir = dir.to_string_lossy();
            run_in_pod(
                &client,
                ns,
                pod,
                a.container.as_deref(),
                &["tar", "-xmf", "-", "-C", &dir],
                Some(archive),
            )
            .await?;
            Ok(())
        }
        (Some((ns, pod, path)), None) => {
            let ns = ns.unwrap_or(&default_ns);
            let src = Path::new(path);
            let (dir, name) = match (src.parent(), src.file_name()) {
                (Some(d), Some(n)) if !d.as_os_str().is_empty() => (d, n),
                (_, Some(n)) => (Path::new("."), n),
                _ => {
                    return Err(Reported(format!("error: invalid source path {path:?}")).into());
                }
            };
            let (dir, name) = (dir.to_string_lossy(), name.to_string_lossy());
            let archive = run_in_pod(
                &client,
                ns,
                pod,
                a.container.as_deref(),
                &["tar", "-cf", "-", "-C", &dir, &name],
                None,
            )
            .await?;
            let dst = PathBuf::from(&a.dst);
            let dst = if dst.is_dir() {
                dst.join(name.as_ref())
            } else {
                dst
            };
            let mut ar = tar::Archive::new(std::io::Cursor::new(archive));
            for entry in ar.entries()? {
                let mut entry = entry?;
                let p = entry.path()?.into_owned();
                // Links could point the next entries anywhere on this machine: skipped, as
                // kubectl does.
                if entry.header().entry_type().is_symlink()
                    || entry.header().entry_type().is_hard_link()
                {
                    eprintln!("warning: skipping symlink: {}", p.display());
                    continue;
                }
                // Entries are `name` or `name/...`: re-rooted at the destination; anything
                // that would leave it is refused (a hostile archive).
                let rel = p.strip_prefix(name.as_ref()).unwrap_or(&p).to_owned();
                if rel
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
                {
                    continue;
                }
                let out = if rel.as_os_str().is_empty() {
                    dst.clone()
                } else {
                    dst.join(&rel)
                };
                if let Some(parent) = out.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                entry.unpack(&out)?;
            }
            Ok(())
        }
        (Some(_), Some(_)) => Err(Reported(
            "error: one of src or dest must be a local file specification".to_owned(),
        )
        .into()),
        (None, None) => Err(Reported(
            "error: one of src or dest must be a remote file specification".to_owned(),
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        assert_eq!(parse_port("8080:80").ok(), Some((8080, 80)));
        assert_eq!(parse_port("80").ok(), Some((80, 80)));
        assert_eq!(parse_port(":80").ok(), Some((0, 80)));
        assert!(parse_port("80:0").is_err());
        assert!(parse_port("x:80").is_err());
    }

    #[test]
    fn remote_specs() {
        assert_eq!(remote("p:/tmp/x"), Some((None, "p", "/tmp/x")));
        assert_eq!(remote("ns/p:/tmp/x"), Some((Some("ns"), "p", "/tmp/x")));
        assert_eq!(remote("/tmp/x"), None);
    }
}
