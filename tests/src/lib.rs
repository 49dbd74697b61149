//! Harness for end-to-end tests on a real cluster: `xkube cluster up` in network namespaces,
//! torn down by `xkube cluster down` when the guard drops (also on panic).
//!
//! The tests run the `xkube` binary of the same build (`target/<profile>/xkube`, built by
//! `cargo nextest run --workspace` / `cargo test --workspace` with the test binaries), and
//! drive the cluster with upstream `kubectl` (`/usr/bin/kubectl`) and `xkubectl`. Traffic is
//! only sent from inside the cluster's namespaces.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use xkube_netns::NetNs;

/// The directory holding the workspace's binaries for this build profile.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()))
}

pub fn xkube_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XKUBE_BIN") {
        return PathBuf::from(p);
    }
    // Benchmarks run from target/release; the debug binary serves when no release one exists.
    let dir = bin_dir();
    let p = [dir.join("xkube"), dir.join("../debug/xkube")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| dir.join("xkube"));
    assert!(
        p.exists(),
        "{} missing: build the workspace binaries first (cargo xtask test does)",
        p.display()
    );
    p
}

pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "cluster tests need root; CI runs them as root"
    );
}

/// A running cluster; `xkube cluster down` when dropped.
pub struct Cluster {
    pub name: String,
    pub data_root: PathBuf,
    pub kubeconfig: PathBuf,
    pub nodes: usize,
}

impl Cluster {
    /// `xkube cluster up --nodes <nodes>` under a unique name.
    pub fn up(nodes: usize, extra: &[&str]) -> Self {
        require_root();
        let name = format!("e{:06x}", rand::random::<u32>() & 0xff_ffff);
        let data_root = std::env::temp_dir().join(format!("xkube-e2e-{name}"));
        let cluster = Cluster {
            kubeconfig: data_root.join(&name).join("control-plane/admin.kubeconfig"),
            name,
            data_root,
            nodes,
        };
        let out = Command::new(xkube_bin())
            .args([
                "cluster",
                "up",
                "--name",
                &cluster.name,
                "--nodes",
                &nodes.to_string(),
            ])
            .arg("--data-root")
            .arg(&cluster.data_root)
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running xkube cluster up: {e}"));
        println!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            let logs = cluster.logs();
            panic!(
                "xkube cluster up failed: {}\n{}\n--- logs ---\n{logs}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cluster
    }

    /// Every log file of the cluster, for failure messages.
    pub fn logs(&self) -> String {
        let dir = self.data_root.join(&self.name).join("logs");
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                out.push_str(&format!("== {}\n", e.path().display()));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Runs upstream kubectl against the cluster.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("/usr/bin/kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("kubectl: {e}"));
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .unwrap_or_else(|e| panic!("kubectl stdin: {e}"));
        }
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("kubectl: {e}"))
    }

    /// kubectl that must succeed; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], Some(yaml));
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Polls `f` until it returns `Some` or `timeout` passes (then panics with `what`).
    pub fn wait<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A JSON field of an object via kubectl -o json.
    pub fn get_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&a)).unwrap_or_else(|e| panic!("json: {e}"))
    }

    pub fn client_ns(&self) -> NetNs {
        NetNs::borrowed(&format!("xkc-{}-client", self.name))
            .unwrap_or_else(|e| panic!("client namespace: {e}"))
    }

    /// Node `i` (0-based)'s namespace.
    pub fn node_ns(&self, i: usize) -> NetNs {
        NetNs::borrowed(&format!("xkc-{}-node{}", self.name, i + 1))
            .unwrap_or_else(|e| panic!("node namespace: {e}"))
    }

    /// Node `i`'s cgroup: its host processes and pods live below it, and the socket-level
    /// load balancer is attached to it.
    pub fn node_cgroup(&self, i: usize) -> PathBuf {
        xkube_netns::cgroup::v2_root()
            .unwrap_or_else(|e| panic!("cgroup2: {e}"))
            .join(format!("xkube-{}", self.name))
            .join(self.node_name(i))
    }

    /// Runs `f` as a host process of node `i`: in its network namespace and its cgroup.
    pub fn on_node<R: Send>(&self, i: usize, f: impl FnOnce() -> R + Send) -> R {
        let _inside = xkube_netns::cgroup::enter(&self.node_cgroup(i))
            .unwrap_or_else(|e| panic!("entering node{} cgroup: {e}", i + 1));
        self.node_ns(i)
            .run(f)
            .unwrap_or_else(|e| panic!("entering node{} namespace: {e}", i + 1))
    }

    /// `xkube cluster restart <role>` (`--kill` for SIGKILL).
    pub fn restart(&self, role: &str, kill: bool) {
        self.restart_with(role, kill, &[]);
    }

    /// `xkube cluster restart <role>` with more flags (`--proxy-mode iptables`).
    pub fn restart_with(&self, role: &str, kill: bool, extra: &[&str]) {
        let mut cmd = Command::new(xkube_bin());
        cmd.args(["cluster", "restart", "--name", &self.name])
            .arg("--data-root")
            .arg(&self.data_root)
            .args(extra)
            .arg(role);
        if kill {
            cmd.arg("--kill");
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("xkube cluster restart: {e}"));
        assert!(
            out.status.success(),
            "restart {role}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILLs the cluster's process with role `role` (`<cluster>-node1`, ...) for good.
    pub fn kill(&self, role: &str) {
        let path = self.data_root.join(&self.name).join("state.json");
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
        )
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
        let pid = state["processes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["role"] == role)
            .and_then(|p| p["pid"].as_i64())
            .unwrap_or_else(|| panic!("no process {role:?} in {}", path.display()));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap_or_else(|e| panic!("kill {role} ({pid}): {e}"));
    }

    pub fn node_name(&self, i: usize) -> String {
        format!("{}-node{}", self.name, i + 1)
    }

    pub fn node_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 11 + i as u8)
    }

    /// The cluster CA certificate (the apiserver's PKI).
    pub fn ca_cert(&self) -> PathBuf {
        self.data_root
            .join(&self.name)
            .join("control-plane/pki/ca.crt")
    }
}

/// One HTTPS request (HTTP/1.0, no body) from the calling thread's network namespace,
/// verifying the server's certificate against the CA bundle `ca` for the IP address it is
/// sent to; `bearer` goes in the Authorization header. Returns the status and the body; status
/// 0 when no HTTP answer came (a refused handshake).
pub fn https_request_here(
    to: SocketAddrV4,
    method: &str,
    path: &str,
    ca: &Path,
    bearer: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca)?;
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c?).map_err(std::io::Error::other)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::V4(*to.ip()).into());
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(std::io::Error::other)?;
    let sock = TcpStream::connect_timeout(&to.into(), timeout)?;
    sock.set_read_timeout(Some(timeout))?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {to}\r\n{auth}Content-Length: 0\r\n\r\n"
    )?;
    let mut out = Vec::new();
    // A peer closing without close_notify still delivered what it sent.
    if let Err(e) = s.read_to_end(&mut out)
        && out.is_empty()
    {
        return Err(e);
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .strip_prefix("HTTP/1.")
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = Command::new(xkube_bin())
            .args(["cluster", "down", "--name", &self.name])
            .arg("--data-root")
            .arg(&self.data_root)
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("cluster down: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("cluster down: {e}"),
        }
        let _ = std::fs::remove_dir_all(&self.data_root);
    }
}

/// One HTTP GET from inside `ns` (bounded by `timeout`): the body.
pub fn http_get(
    ns: &NetNs,
    to: SocketAddrV4,
    path: &str,
    timeout: Duration,
) -> std::io::Result<String> {
    ns.run(|| http_get_here(to, path, timeout))
        .map_err(|e| std::io::Error::other(e.to_string()))?
}

/// One HTTP GET from the calling thread's network namespace: the body of a 200 answer.
pub fn http_get_here(to: SocketAddrV4, path: &str, timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&to.into(), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {to}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_owned())
        }
        _ => Err(std::io::Error::other(format!("bad answer: {out:?}"))),
    }
}

/// Everything on this machine a cluster could leave behind, for before/after comparisons.
#[derive(Debug, PartialEq, Eq)]
pub struct Footprint {
    pub namespaces: Vec<String>,
    pub links: Vec<String>,
    pub cgroups: Vec<String>,
    pub pins: Vec<String>,
    pub iptables: Vec<String>,
    pub processes: Vec<String>,
    /// Mount points (volumes, container root filesystems, namespace files).
    pub mounts: Vec<String>,
    /// Entries of /run (the docker engines' exec roots).
    pub run: Vec<String>,
}

impl Footprint {
    /// What exists now whose name mentions `needle` (the cluster name).
    pub fn of(needle: &str) -> Self {
        let list = |dir: &str| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|e| {
                    e.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.contains(needle))
                        .collect()
                })
                .unwrap_or_default()
        };
        let cg_root = xkube_netns::cgroup::v2_root()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let iptables = Command::new("iptables-save")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains(needle))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let processes = std::fs::read_dir("/proc")
            .map(|e| {
                e.flatten()
                    .filter_map(|e| {
                        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                        cmd.contains(needle).then_some(cmd)
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|m| {
                m.lines()
                    .filter_map(|l| l.split_whitespace().nth(4))
                    .filter(|p| p.contains(needle))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let mut f = Footprint {
            namespaces: list(xkube_netns::NETNS_DIR),
            links: list("/sys/class/net"),
            // v2, and the v1 hierarchies holding memory/cpu on hybrid hosts.
            cgroups: std::iter::once(cg_root.clone())
                .chain(
                    xkube_netns::cgroup::v1_mirrors(Path::new(&cg_root))
                        .into_iter()
                        .map(|(_, d)| d.to_string_lossy().into_owned()),
                )
                .flat_map(|d| list(&d))
                .collect(),
            pins: list("/sys/fs/bpf/xkube"),
            iptables,
            processes,
            mounts,
            run: list("/run"),
        };
        for v in [
            &mut f.namespaces,
            &mut f.links,
            &mut f.cgroups,
            &mut f.pins,
            &mut f.iptables,
            &mut f.processes,
            &mut f.mounts,
            &mut f.run,
        ] {
            v.sort();
        }
        f
    }
}
