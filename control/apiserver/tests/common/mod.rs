//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::Value;
use xkube_apiserver::RunningServer;
use xkube_apiserver::testing::TestServer;

pub struct Api {
    pub server: RunningServer,
    pub base: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

pub async fn start() -> Api {
    start_with(|b| b).await
}

pub async fn start_with(f: impl FnOnce(TestServer) -> TestServer) -> Api {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = f(TestServer::builder(dir.path()))
        .start()
        .await
        .expect("apiserver starts");
    let base = server.http_url().expect("http listener");
    Api {
        server,
        base,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client"),
        dir,
    }
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        ctype: &str,
        body: Option<String>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = body {
            req = req.header("content-type", ctype).body(b);
        }
        let resp = req.send().await.expect("request");
        let code = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (code, v)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, "", None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            path,
            "application/json",
            Some(body.to_string()),
        )
        .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(
            reqwest::Method::PUT,
            path,
            "application/json",
            Some(body.to_string()),
        )
        .await
    }

    pub async fn patch(&self, path: &str, ctype: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::PATCH, path, ctype, Some(body.to_string()))
            .await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, "", None).await
    }

    pub async fn stop(self) -> tempfile::TempDir {
        self.server.stop().await;
        self.dir
    }
}

pub fn pod(name: &str, labels: Value) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}
    })
}

pub fn service(name: &str, spec: Value) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

/// Reads newline-delimited watch events until `n` arrived or the timeout passed.
pub async fn read_events(resp: &mut reqwest::Response, n: usize, timeout: Duration) -> Vec<Value> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        let chunk = match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => c,
            _ => break,
        };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                out.push(v);
            }
        }
    }
    out
}

/// Like [`read_events`] but skips BOOKMARK events.
pub async fn read_changes(resp: &mut reqwest::Response, n: usize, timeout: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n && tokio::time::Instant::now() < deadline {
        let left = deadline - tokio::time::Instant::now();
        let evs = read_events(resp, 1, left).await;
        if evs.is_empty() {
            break;
        }
        out.extend(evs.into_iter().filter(|e| e["type"] != "BOOKMARK"));
    }
    out
}
