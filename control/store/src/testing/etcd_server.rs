//! A real `etcd` process for tests and benchmarks.

use std::{
    fs::File,
    net::{Ipv4Addr, TcpListener},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// An `etcd` server on free 127.0.0.1 ports with its data in a temp dir, killed (and its data
/// removed) on drop, also when a test panics. The process also dies with the thread that
/// started it (`PR_SET_PDEATHSIG`), so a killed test run leaves none behind.
///
/// Panics if the `etcd` binary (Debian package `etcd-server`) is missing: run
/// `cargo xtask setup`.
pub struct EtcdServer {
    child: Child,
    endpoint: String,
    name: String,
    dir: tempfile::TempDir,
}

/// Makes member names unique within this process (with the pid, across processes).
static STARTED: AtomicU32 = AtomicU32::new(0);

impl EtcdServer {
    /// Starts etcd and waits until it answers (as itself, not another test's etcd).
    pub async fn start() -> Self {
        let mut last_failure = String::new();
        // A port picked free can be taken before etcd binds it: try a few times.
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(server) => return server,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("etcd did not start: {last_failure}");
    }

    async fn try_start() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir for etcd: {e}"))?;
        let client_port = free_port();
        let peer_port = free_port();
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log_path = dir.path().join("etcd.log");
        let log = File::create(&log_path).map_err(|e| format!("create etcd log: {e}"))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("clone etcd log: {e}"))?;
        // A unique member name, checked when probing: a port collision with another test's
        // etcd then fails the probe instead of silently sharing that server.
        let name = format!(
            "xkube-test-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        );
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&endpoint)
            .arg("--advertise-client-urls")
            .arg(&endpoint)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("{name}={peer}"))
            .arg("--heartbeat-interval")
            .arg("20")
            .arg("--election-timeout")
            .arg("200")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "the `etcd` binary is not installed (Debian package etcd-server); \
                 run `cargo xtask setup` (or `apt-get install -y etcd-server`)"
            ),
            Err(e) => panic!("spawn etcd: {e}"),
        };
        let mut server = EtcdServer {
            child,
            endpoint,
            name,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "etcd exited with {status}; its log:\n{}",
                    read_log(&log_path)
                ));
            }
            if server.answers().await {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd at {} did not answer within 30 s; its log:\n{}",
                    server.endpoint,
                    read_log(&log_path)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn answers(&self) -> bool {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_secs(1));
        match etcd_client::Client::connect([self.endpoint.as_str()], Some(options)).await {
            Ok(mut client) => match client.member_list().await {
                Ok(members) => members.members().iter().any(|m| m.name() == self.name),
                Err(_) => false,
            },
            Err(_) => false,
        }
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The temp dir holding etcd's data and its log (`etcd.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port on 127.0.0.1 free at the time of the call.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("find a free port on 127.0.0.1: {e}"))
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}
