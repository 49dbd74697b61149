//! `pods/{name}/log` and `pods/{name}/exec` proxied to a stand-in kubelet on loopback,
//! through HTTP and upstream kubectl (v1.32 at /usr/bin/kubectl). The stand-in serves HTTPS
//! with a certificate from the cluster CA and requires the apiserver's client certificate,
//! as a kubelet does.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use serde_json::json;
use xkube_apiserver::pki::{self, Pki};

const KUBECTL: &str = "/usr/bin/kubectl";

type Seen = Arc<Mutex<Vec<String>>>;

async fn container_logs(
    State(seen): State<Seen>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let q = q.unwrap_or_default();
    seen.lock()
        .expect("seen lock")
        .push(format!("{ns}/{pod}/{container}?{q}"));
    // A hostile kubelet sends the apiserver elsewhere (CVE-2020-8559).
    for (code, target) in [
        (302, "/exec/default/web/c?command=echo&command=pwned"),
        (307, "/exec/default/web/c?command=echo&command=pwned"),
    ] {
        if pod == format!("redirect{code}") {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = http::StatusCode::from_u16(code).expect("status");
            r.headers_mut()
                .insert("location", target.parse().expect("location"));
            return r;
        }
    }
    if q.contains("follow=true") {
        let stream = futures::stream::unfold(0u32, |i| async move {
            match i {
                0 => Some((Ok::<_, std::io::Error>(bytes::Bytes::from("first\n")), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Some((Ok(bytes::Bytes::from("second\n")), 2))
                }
                _ => {
                    // Stay open like a running container.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    None
                }
            }
        });
        return Response::new(Body::from_stream(stream));
    }
    let all = format!("hello from {ns}/{pod}/{container}\nline two\n");
    let body = if q.contains("tailLines=1") {
        "line two\n".to_string()
    } else {
        all
    };
    Response::new(Body::from(body))
}

/// The kubelet's exec, upgraded to the WebSocket channel protocol: `echo` prints its
/// arguments, `fail N` prints `failing` and exits with N.
async fn exec(
    State(seen): State<Seen>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    mut req: axum::extract::Request,
) -> Response {
    use futures::SinkExt;
    use xkube_client::stream as ws;
    let q = q.unwrap_or_default();
    seen.lock()
        .expect("seen lock")
        .push(format!("exec {ns}/{pod}/{container}?{q}"));
    let cmd: Vec<String> = url::form_urlencoded::parse(q.as_bytes())
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.into_owned())
        .collect();
    let (out, code) = match cmd.first().map(String::as_str) {
        Some("echo") => (format!("{}\n", cmd[1..].join(" ")), 0),
        Some("fail") => (
            "failing\n".to_string(),
            cmd.get(1).and_then(|c| c.parse().ok()).unwrap_or(1),
        ),
        _ => (String::new(), 127),
    };
    let (Some(protocol), Some(key)) = (
        ws::choose(req.headers(), ws::EXEC_PROTOCOLS),
        req.headers()
            .get(http::header::SEC_WEBSOCKET_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    ) else {
        let mut r = Response::new(Body::from("not a WebSocket upgrade"));
        *r.status_mut() = http::StatusCode::BAD_REQUEST;
        return r;
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = on_upgrade.await else { return };
        let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(up),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let status = if code == 0 {
            json!({"metadata": {}, "status": "Success"})
        } else {
            json!({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                   "message": format!("command terminated with non-zero exit code: exit code {code}"),
                   "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
        };
        let _ = socket
            .send(ws::channel_message(ws::STDOUT, out.as_bytes()))
            .await;
        let _ = socket
            .send(ws::channel_message(
                ws::ERROR,
                status.to_string().as_bytes(),
            ))
            .await;
        let _ = socket.send(ws::normal_close()).await;
        let _ = socket.close(None).await;
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    *r.headers_mut() = ws::switching_headers(&key, protocol);
    r
}

/// A stand-in kubelet on `127.0.0.1:0` serving HTTPS with a certificate `pki`'s CA issues for
/// 127.0.0.1 and requiring a client certificate of that CA; each connection's client user
/// (`client <CN>`) is recorded in `Seen`.
async fn fake_kubelet_of(pki: &Pki) -> (u16, Seen, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route("/exec/{ns}/{pod}/{container}", get(exec).post(exec))
        .with_state(seen.clone());
    let serving = pki
        .ca()
        .expect("cluster CA")
        .issue_serving("kubelet", &["127.0.0.1".into()])
        .expect("serving certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in pki::load_certs(&pki.ca_cert).expect("CA certificate") {
        roots.add(c).expect("root");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let certs = rustls_pemfile::certs(&mut serving.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate");
    let key = rustls_pemfile::private_key(&mut serving.key_pem.as_bytes())
        .expect("key pem")
        .expect("a key");
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake kubelet");
    let port = l.local_addr().expect("addr").port();
    let recorded = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = l.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            let seen = recorded.clone();
            tokio::spawn(async move {
                // A handshake the apiserver aborts (bad certificate) ends here.
                let Ok(tls) = acceptor.accept(sock).await else {
                    return;
                };
                let user = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(pki::client_identity)
                    .map(|(u, _)| u);
                seen.lock()
                    .expect("seen lock")
                    .push(format!("client {}", user.unwrap_or_default()));
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    (port, seen, task)
}

/// A stand-in kubelet with a certificate of the apiserver's cluster CA.
async fn fake_kubelet(api: &common::Api) -> (u16, Seen, tokio::task::JoinHandle<()>) {
    fake_kubelet_of(&Pki::layout(api.dir.path())).await
}

/// What the stand-in served, without the connection records.
fn requests(seen: &Seen) -> Vec<String> {
    seen.lock()
        .expect("seen")
        .iter()
        .filter(|s| !s.starts_with("client "))
        .cloned()
        .collect()
}

async fn node_and_pod(api: &common::Api, kubelet_port: u16) {
    let (code, body) = api
        .post(
            "/api/v1/nodes",
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = api
        .patch(
            "/api/v1/nodes/n1/status",
            "application/merge-patch+json",
            &json!({"status": {
                "addresses": [{"type": "Hostname", "address": "n1"},
                              {"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}}}}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let mut pod = common::pod("web", json!({}));
    pod["spec"]["nodeName"] = json!("n1");
    let (code, body) = api.post("/api/v1/namespaces/default/pods", &pod).await;
    assert_eq!(code, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_logs_are_proxied_from_the_nodes_kubelet() {
    let api = common::start().await;
    let (port, seen, kubelet) = fake_kubelet(&api).await;
    node_and_pod(&api, port).await;
    let log = "/api/v1/namespaces/default/pods/web/log";

    let resp = api.http.get(api.url(log)).send().await.expect("log");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.text().await.expect("text"),
        "hello from default/web/c\nline two\n"
    );
    let (code, body) = api.get(&format!("{log}?tailLines=1&timestamps=true")).await;
    assert_eq!((code, body), (200, json!("line two\n")));
    assert_eq!(
        requests(&seen).last().map(String::as_str),
        Some("default/web/c?tailLines=1&timestamps=true")
    );

    let (code, body) = api.get(&format!("{log}?limitBytes=7")).await;
    assert_eq!(
        (code, body),
        (200, json!("hello f")),
        "limitBytes cuts the log"
    );
    let (code, body) = api.get(&format!("{log}?container=nope")).await;
    assert_eq!(code, 400);
    assert_eq!(body["message"], "container nope is not valid for pod web");
    let (code, _) = api.get("/api/v1/namespaces/default/pods/absent/log").await;
    assert_eq!(code, 404);

    // follow=true streams chunks as the kubelet writes them.
    let mut resp = api
        .http
        .get(api.url(&format!("{log}?follow=true")))
        .send()
        .await
        .expect("follow");
    assert_eq!(resp.status().as_u16(), 200);
    let mut got = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !got.contains("second\n") {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => got.push_str(&String::from_utf8_lossy(&c)),
            other => panic!("follow stream ended early ({other:?}) after {got:?}"),
        }
    }
    assert_eq!(got, "first\nsecond\n");
    drop(resp);

    // A kubelet's redirect is not followed: the apiserver's client certificate must not
    // reach whatever the kubelet points at.
    for code in [302, 307] {
        let name = format!("redirect{code}");
        let mut pod = common::pod(&name, json!({}));
        pod["spec"]["nodeName"] = json!("n1");
        let (c, body) = api.post("/api/v1/namespaces/default/pods", &pod).await;
        assert_eq!(c, 201, "{body}");
        let (c, body) = api
            .get(&format!("/api/v1/namespaces/default/pods/{name}/log"))
            .await;
        assert_eq!(c, 500, "{body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("redirects are not followed")),
            "{body}"
        );
    }
    assert!(
        !requests(&seen).iter().any(|r| r.starts_with("exec ")),
        "the redirect was followed: {seen:?}"
    );

    // A kubelet that does not answer is a 500 naming the URL.
    let (code, body) = api
        .patch(
            "/api/v1/nodes/n1/status",
            "application/merge-patch+json",
            &json!({"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": 1}}}}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = api.get(log).await;
    assert_eq!(code, 500, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("https://127.0.0.1:1/containerLogs/default/web/c")),
        "{body}"
    );
    // The apiserver identified itself with its kubelet-client certificate.
    assert!(
        seen.lock()
            .expect("seen")
            .iter()
            .any(|s| s == "client kube-apiserver-kubelet-client"),
        "{seen:?}"
    );

    // A kubelet whose serving certificate another CA signed is not trusted: 500, and it
    // serves nothing.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = Pki::ensure(other_dir.path(), &["127.0.0.1".into()]).expect("other PKI");
    let (other_port, other_seen, other_kubelet) = fake_kubelet_of(&other).await;
    let (code, body) = api
        .patch(
            "/api/v1/nodes/n1/status",
            "application/merge-patch+json",
            &json!({"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": other_port}}}}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = api.get(log).await;
    assert_eq!(code, 500, "{body}");
    assert!(requests(&other_seen).is_empty(), "{other_seen:?}");
    other_kubelet.abort();

    // No plain-HTTP fallback: a kubelet speaking HTTP gets no request from the apiserver.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let plain_port = plain.local_addr().expect("addr").port();
    let plain_task = tokio::spawn(async move {
        let app = Router::new().fallback(|| async { "plain http" });
        let _ = axum::serve(plain, app).await;
    });
    let (code, _) = api
        .patch(
            "/api/v1/nodes/n1/status",
            "application/merge-patch+json",
            &json!({"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": plain_port}}}}),
        )
        .await;
    assert_eq!(code, 200);
    let (code, body) = api.get(log).await;
    assert_eq!(code, 500, "{body}");
    plain_task.abort();
    api.stop().await;
    kubelet.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_and_exec_go_through_the_apiserver() {
    let api = common::start_with(|b| b.secure()).await;
    let (port, seen, kubelet) = fake_kubelet(&api).await;
    node_and_pod(&api, port).await;
    let kubeconfig = api.server.kubeconfig.clone().expect("kubeconfig");
    let home = api.dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    for (args, want) in [
        (vec!["logs", "web"], "hello from default/web/c\nline two\n"),
        (vec!["logs", "web", "--tail=1"], "line two\n"),
        (
            vec!["logs", "pod/web", "-c", "c"],
            "hello from default/web/c\nline two\n",
        ),
    ] {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(KUBECTL)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(&args)
                .env("HOME", &home)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
        .expect("kubectl runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout, want, "kubectl {args:?}");
    }
    // exec over WebSocket: output and exit codes.
    let exec = |args: &'static [&'static str]| {
        let kubeconfig = kubeconfig.clone();
        let home = home.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(60),
                tokio::process::Command::new(KUBECTL)
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(args)
                    .env("HOME", &home)
                    .stdin(Stdio::null())
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .expect("kubectl runs")
        }
    };
    let out = exec(&["exec", "web", "--", "echo", "hello", "world"]).await;
    assert!(
        out.status.success(),
        "kubectl exec failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world\n");
    let out = exec(&["exec", "web", "-c", "c", "--", "fail", "3"]).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "failing\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("command terminated with exit code 3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        seen.lock()
            .expect("seen")
            .iter()
            .any(|s| s.starts_with("exec default/web/c?")
                && s.contains("command=echo&command=hello&command=world")),
        "the kubelet got the command"
    );
    api.stop().await;
    kubelet.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_xkubectl_client_reads_and_follows_logs() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use xkube_client::{Api, Client, Config, LogParams};

    let api = common::start().await;
    let (port, seen, kubelet) = fake_kubelet(&api).await;
    node_and_pod(&api, port).await;
    let client = Client::new(&Config::new(api.base.clone())).expect("client");
    let pods = Api::<Pod>::namespaced(client, "default");
    let read = |lp: LogParams| {
        let pods = pods.clone();
        async move {
            let stream = pods.logs("web", &lp).await.expect("logs");
            tokio::pin!(stream);
            let mut out = String::new();
            while !out.ends_with("second\n") && !out.ends_with("two\n") {
                let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
                    .await
                    .expect("log chunk in time");
                match next {
                    Some(c) => out.push_str(&String::from_utf8_lossy(&c.expect("chunk"))),
                    None => break,
                }
            }
            out
        }
    };
    assert_eq!(
        read(LogParams {
            tail_lines: Some(1),
            ..LogParams::default()
        })
        .await,
        "line two\n"
    );
    assert_eq!(
        read(LogParams {
            follow: true,
            container: Some("c".into()),
            ..LogParams::default()
        })
        .await,
        "first\nsecond\n"
    );
    let last = requests(&seen).last().cloned();
    assert_eq!(last.as_deref(), Some("default/web/c?follow=true"));
    api.stop().await;
    kubelet.abort();
}
