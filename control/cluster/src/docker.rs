//! The Docker Engines of a `--runtime docker` cluster: one dockerd per node, started inside
//! the node's network namespace and cgroup (so a `hostNetwork` pod gets the node's network, as
//! on a real machine), with its own socket, data root and exec root, and no bridge, iptables
//! rules or forwarding of its own. No registry is reachable, so the images the nodes run are
//! built here, locally, from this xkube binary and a few host tools:
//!
//! | image                | entrypoint / command                     |
//! |----------------------|------------------------------------------|
//! | `xkube/tools:latest` | `sleep infinity`; sh, curl, socat, ...   |
//! | `xkube/pause:latest` | `xkube pause` (the pod infra container)  |
//! | `xkube/agnhost:latest` | `xkube agnhost` (the test workload)    |
//! | `xkube/xkube:latest` | `xkube agent` (the agent image, as `deploy/image`) |

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use bollard::{
    Docker,
    query_parameters::{
        BuildImageOptions, CreateImageOptions, ListContainersOptions, RemoveContainerOptions,
    },
};
use futures::StreamExt as _;

use crate::{Error, Result, io};

/// Host tools copied (with their libraries) into `xkube/tools`.
const TOOLS: &[&str] = &[
    "sh",
    "sleep",
    "cat",
    "ls",
    "env",
    "sort",
    "echo",
    "hostname",
    "seq",
    "grep",
    "curl",
    "socat",
    "mkdir",
    "rm",
    "touch",
    "true",
    "false",
    "id",
    "ps",
    "wc",
    "head",
    "cut",
    "tar",
    "stty",
    "tty",
    "date",
    "sha256sum",
];

/// The directory under /run holding a cluster's engines' exec roots.
pub fn run_dir(cluster: &str) -> PathBuf {
    PathBuf::from(format!("/run/xkube-{cluster}"))
}

/// Where one node's engine keeps its socket and state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Engine {
    pub socket: PathBuf,
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
}

impl Engine {
    /// The engine of node `node` of cluster `cluster` with data under `data`. The exec root
    /// is under /run (short: containerd's socket lives below it and unix socket paths are
    /// limited to 108 bytes).
    pub fn new(data: &Path, cluster: &str, node: &str) -> Self {
        Self {
            socket: data.join(format!("{node}-docker.sock")),
            data_root: data.join(format!("{node}-docker")),
            exec_root: run_dir(cluster).join(node),
        }
    }

    /// `unix://...` for `--docker-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The dockerd command line.
    pub fn command(&self, dockerd: &str) -> Command {
        let mut cmd = Command::new(dockerd);
        cmd.arg("--host")
            .arg(self.endpoint())
            .arg("--data-root")
            .arg(&self.data_root)
            .arg("--exec-root")
            .arg(&self.exec_root)
            .arg("--pidfile")
            .arg(self.exec_root.join("dockerd.pid"))
            .args([
                "--bridge",
                "none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                "--userland-proxy=false",
                "--log-level",
                "warn",
            ]);
        cmd
    }

    /// A client, once the engine answers (within `timeout`).
    pub async fn wait(&self, timeout: Duration) -> Result<Docker> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no socket yet");
        while Instant::now() < deadline {
            if self.socket.exists() {
                match self.client().await {
                    Ok(d) if d.ping().await.is_ok() => return Ok(d),
                    Ok(_) => last = "ping failed".into(),
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Invalid(format!(
            "dockerd at {} did not answer within {}s: {last}",
            self.socket.display(),
            timeout.as_secs()
        )))
    }

    async fn client(&self) -> Result<Docker> {
        Docker::connect_with_unix(
            &self.socket.to_string_lossy(),
            300,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(|e| Error::Invalid(format!("docker client: {e}")))?
        .negotiate_version()
        .await
        .map_err(|e| Error::Invalid(format!("docker API version: {e}")))
    }

    /// Removes every container of the engine (best effort, before its processes are
    /// killed, so runc removes the containers' cgroups and mounts).
    pub async fn remove_all_containers(&self) {
        let Ok(docker) = self.client().await else {
            return;
        };
        let Ok(list) = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                ..Default::default()
            }))
            .await
        else {
            return;
        };
        let removals = list.into_iter().filter_map(|c| c.id).map(|id| {
            let docker = docker.clone();
            async move {
                let _ = docker
                    .remove_container(
                        &id,
                        Some(RemoveContainerOptions {
                            force: true,
                            v: true,
                            ..Default::default()
                        }),
                    )
                    .await;
            }
        });
        futures::future::join_all(removals).await;
    }
}

/// The root filesystem of `xkube/tools` as a tar: `xkube` (debug info stripped, when given)
/// in /usr/local/bin, the host tools in /bin, and their shared libraries at their host paths.
pub fn rootfs_tar(xkube: Option<&Path>, work: &Path) -> Result<Vec<u8>> {
    let root = work.join("rootfs");
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(io("remove", &root))?;
    }
    let bin = root.join("usr/local/bin");
    std::fs::create_dir_all(&bin).map_err(io("create directory", &bin))?;
    if let Some(xkube) = xkube {
        let out = Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(bin.join("xkube"))
            .arg(xkube)
            .output()
            .map_err(io("run strip on", xkube))?;
        if !out.status.success() {
            return Err(Error::Invalid(format!(
                "strip {}: {}",
                xkube.display(),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    let mut files: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut libs_of: Vec<PathBuf> = xkube.map(Path::to_owned).into_iter().collect();
    for t in TOOLS {
        let src = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(t))
            .find(|p| p.exists())
            .ok_or_else(|| Error::Invalid(format!("host tool {t} not found (apt install it)")))?;
        files.push((src.clone(), PathBuf::from("bin").join(t)));
        libs_of.push(src);
    }
    for exe in libs_of {
        let out = Command::new("ldd")
            .arg(&exe)
            .output()
            .map_err(io("run ldd on", &exe))?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let lib = line
                .split("=>")
                .nth(1)
                .unwrap_or(line)
                .split_whitespace()
                .next()
                .unwrap_or("");
            if let Some(rel) = lib.strip_prefix('/') {
                files.push((PathBuf::from(lib), PathBuf::from(rel)));
            }
        }
    }
    for (src, rel) in files {
        let to = root.join(rel);
        if to.exists() {
            continue;
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io("create directory", parent))?;
        }
        std::fs::copy(&src, &to).map_err(io("copy", &src))?;
    }
    for d in ["tmp", "etc", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).map_err(io("create directory", &root.join(d)))?;
    }
    let out = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--owner=0", "--group=0", "-cf", "-", "."])
        .output()
        .map_err(io("run tar in", &root))?;
    let _ = std::fs::remove_dir_all(&root);
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "tar of the image root: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out.stdout)
}

/// A build context holding only a Dockerfile.
fn dockerfile_context(dockerfile: &str, work: &Path) -> Result<Vec<u8>> {
    let dir = work.join("context");
    std::fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
    std::fs::write(dir.join("Dockerfile"), dockerfile).map_err(io("write", &dir))?;
    let out = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .args(["-cf", "-", "Dockerfile"])
        .output()
        .map_err(io("run tar in", &dir))?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        return Err(Error::Invalid("tar of a build context failed".into()));
    }
    Ok(out.stdout)
}

/// Imports the [`rootfs_tar`] `rootfs` as `repo:latest` (command `sleep infinity`).
pub async fn import_rootfs(docker: &Docker, rootfs: &[u8], repo: &str) -> Result<()> {
    let opts = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.into()),
        tag: Some("latest".into()),
        changes: vec![
            "ENV PATH=/usr/local/bin:/bin".into(),
            "CMD [\"/bin/sleep\", \"infinity\"]".into(),
        ],
        ..Default::default()
    };
    let mut s = docker.create_image(
        Some(opts),
        Some(bollard::body_full(bytes::Bytes::copy_from_slice(rootfs))),
        None,
    );
    while let Some(r) = s.next().await {
        r.map_err(|e| Error::Invalid(format!("docker import {repo}: {e}")))?;
    }
    docker
        .inspect_image(&format!("{repo}:latest"))
        .await
        .map_err(|e| Error::Invalid(format!("image {repo} after its import: {e}")))?;
    Ok(())
}

/// Imports `rootfs` as `xkube/tools` and builds the images derived from it.
pub async fn load_images(docker: &Docker, rootfs: &[u8], work: &Path) -> Result<()> {
    import_rootfs(docker, rootfs, "xkube/tools").await?;
    for (name, entrypoint, cmd) in [
        ("xkube/pause", r#"["/usr/local/bin/xkube", "pause"]"#, "[]"),
        (
            "xkube/agnhost",
            r#"["/usr/local/bin/xkube", "agnhost"]"#,
            "[]",
        ),
        ("xkube/xkube", r#"["/usr/local/bin/xkube"]"#, r#"["agent"]"#),
    ] {
        let dockerfile = format!("FROM xkube/tools:latest\nENTRYPOINT {entrypoint}\nCMD {cmd}\n");
        let context = dockerfile_context(&dockerfile, work)?;
        let opts = BuildImageOptions {
            dockerfile: "Dockerfile".into(),
            t: Some(format!("{name}:latest")),
            rm: true,
            forcerm: true,
            ..Default::default()
        };
        let mut s = docker.build_image(
            opts,
            None,
            Some(bollard::body_full(bytes::Bytes::from(context))),
        );
        while let Some(r) = s.next().await {
            let info = r.map_err(|e| Error::Invalid(format!("docker build {name}: {e}")))?;
            if let Some(e) = info.error_detail.and_then(|d| d.message) {
                return Err(Error::Invalid(format!("docker build {name}: {e}")));
            }
        }
        docker
            .inspect_image(&format!("{name}:latest"))
            .await
            .map_err(|e| Error::Invalid(format!("image {name} after its build: {e}")))?;
    }
    Ok(())
}
