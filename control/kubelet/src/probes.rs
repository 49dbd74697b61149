//! Probes (exec, httpGet, tcpSocket): thresholds and timing as Kubernetes defines them.
//! Network probes run inside the pod's network namespace, towards the pod IP.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use tokio::time::Instant;

use xkube_netns::NsRef;

use crate::runtime::ContainerRuntime;

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Exec(Vec<String>),
    Http {
        port: u16,
        path: String,
        host: Option<String>,
    },
    Tcp {
        port: u16,
    },
}

/// A probe's schedule and its running tally.
#[derive(Debug, Clone)]
pub struct Prober {
    pub check: Check,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    successes: u32,
    failures: u32,
    next_at: Option<Instant>,
}

/// What a probe concluded, once a threshold was crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
}

fn port_of(c: &Container, p: &IntOrString) -> Option<u16> {
    match p {
        IntOrString::Int(i) => u16::try_from(*i).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok()),
    }
}

fn secs(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(v.and_then(|s| u64::try_from(s).ok()).unwrap_or(default))
}

impl Prober {
    /// Builds a prober; `None` for a probe without a supported handler.
    pub fn new(c: &Container, p: &Probe) -> Option<Self> {
        let check = if let Some(e) = &p.exec {
            Check::Exec(e.command.clone().unwrap_or_default())
        } else if let Some(h) = &p.http_get {
            Check::Http {
                port: port_of(c, &h.port)?,
                path: h.path.clone().unwrap_or_else(|| "/".into()),
                host: h.host.clone(),
            }
        } else if let Some(t) = &p.tcp_socket {
            Check::Tcp {
                port: port_of(c, &t.port)?,
            }
        } else {
            return None;
        };
        Some(Self {
            check,
            initial_delay: secs(p.initial_delay_seconds, 0),
            period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: p
                .success_threshold
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(1)
                .max(1),
            failure_threshold: p
                .failure_threshold
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(3)
                .max(1),
            successes: 0,
            failures: 0,
            next_at: None,
        })
    }

    /// Restarts the schedule for a container that started at `started`.
    pub fn reset(&mut self, started: Instant) {
        self.successes = 0;
        self.failures = 0;
        self.next_at = Some(started + self.initial_delay);
    }

    /// When the probe runs next.
    pub fn next_at_hint(&self) -> Option<Instant> {
        self.next_at
    }

    pub fn due(&self, now: Instant) -> bool {
        self.next_at.is_some_and(|t| t <= now)
    }

    /// Records one result taken at `now`; returns a verdict when a threshold is reached.
    pub fn record(&mut self, ok: bool, now: Instant) -> Option<Verdict> {
        self.next_at = Some(now + self.period);
        if ok {
            self.failures = 0;
            self.successes += 1;
            (self.successes >= self.success_threshold).then_some(Verdict::Success)
        } else {
            self.successes = 0;
            self.failures += 1;
            (self.failures >= self.failure_threshold).then_some(Verdict::Failure)
        }
    }
}

/// Runs one check. `pod_ip` is the target of network probes, reached from `netns`. The error
/// says why, in the words of upstream's probe events.
pub async fn run_check(
    check: &Check,
    timeout: Duration,
    runtime: &Arc<dyn ContainerRuntime>,
    container_id: &str,
    netns: Option<PathBuf>,
    pod_ip: IpAddr,
) -> Result<(), String> {
    match check {
        Check::Exec(cmd) => match runtime.exec(container_id, cmd, timeout).await {
            Ok(o) if o.exit_code == 0 => Ok(()),
            Ok(o) => Err(format!(
                "command {:?} exited with {}: {}",
                cmd.join(" "),
                o.exit_code,
                String::from_utf8_lossy(&o.stdout).trim()
            )),
            Err(e) => Err(format!("command {:?}: {e}", cmd.join(" "))),
        },
        Check::Tcp { port } => {
            let addr = SocketAddr::new(pod_ip, *port);
            NsRef(netns)
                .run_async(move || {
                    TcpStream::connect_timeout(&addr, timeout)
                        .map(drop)
                        .map_err(|e| format!("dial tcp {addr}: connect: {}", io_words(&e)))
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        }
        Check::Http { port, path, host } => {
            let ip = host
                .as_deref()
                .and_then(|h| h.parse().ok())
                .unwrap_or(pod_ip);
            let addr = SocketAddr::new(ip, *port);
            let path = path.clone();
            NsRef(netns)
                .run_async(move || http_ok(addr, &path, timeout))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        }
    }
}

/// An I/O error as Go's net package words it (`connection refused`, `i/o timeout`).
fn io_words(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "i/o timeout".into(),
        _ => e.to_string(),
    }
}

/// A blocking `GET` that succeeds on status 200-399.
fn http_ok(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    let url = format!("http://{addr}{path}");
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("Get {url:?}: dial tcp {addr}: connect: {}", io_words(&e)))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n\r\n"
    );
    // A server may answer before reading the request and close; its answer still counts.
    let _ = s.write_all(req.as_bytes());
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    match parse_status(&buf[..got]) {
        Some(c) if (200..400).contains(&c) => Ok(()),
        Some(c) => Err(format!("HTTP probe failed with statuscode: {c}")),
        None => Err(format!("Get {url:?}: no HTTP response")),
    }
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(head).ok()?;
    let mut parts = s.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.get(..3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test(start_paused = true)]
    async fn thresholds_and_schedule_follow_the_probe_spec() {
        let c: Container = serde_json::from_value(json!({
            "name": "c", "ports": [{"name": "http", "containerPort": 8080}],
        }))
        .expect("container");
        let p: Probe = serde_json::from_value(json!({
            "httpGet": {"port": "http", "path": "/healthz"},
            "initialDelaySeconds": 5, "periodSeconds": 2, "failureThreshold": 2,
        }))
        .expect("probe");
        let mut pr = Prober::new(&c, &p).expect("supported probe");
        assert_eq!(
            pr.check,
            Check::Http {
                port: 8080,
                path: "/healthz".into(),
                host: None
            }
        );
        let t0 = Instant::now();
        assert!(!pr.due(t0), "not scheduled before the container started");
        pr.reset(t0);
        assert!(!pr.due(t0 + Duration::from_secs(4)));
        assert!(pr.due(t0 + Duration::from_secs(5)));
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(pr.record(false, t1), None);
        assert_eq!(pr.record(true, t1), Some(Verdict::Success));
        assert_eq!(pr.record(false, t1), None);
        assert_eq!(pr.record(false, t1), Some(Verdict::Failure));
        assert!(pr.due(t1 + Duration::from_secs(2)));
        let unnamed: Probe =
            serde_json::from_value(json!({"tcpSocket": {"port": "nope"}})).expect("probe");
        assert!(Prober::new(&c, &unnamed).is_none(), "unknown named port");
    }

    #[test]
    fn http_status_line_is_parsed() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 500"), Some(500));
        assert_eq!(parse_status(b"garbage"), None);
    }
}
