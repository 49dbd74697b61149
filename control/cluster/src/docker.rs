//! The Docker Engines of a `--runtime docker` cluster: one dockerd per node, started inside
//! the node's network namespace and cgroup (so a `hostNetwork` pod gets the node's network, as
//! on a real machine), with its own socket, data root and exec root, and no bridge, iptables
//! rules or forwarding of its own. No outside registry is reachable, so the images the nodes
//! run are built here, locally, from this xkube binary and a few host tools, tagged `latest`
//! and this version ([`IMAGE_TAG`], the tag pods use: `latest` would mean a pull):
//!
//! | image           | entrypoint / command                     |
//! |-----------------|------------------------------------------|
//! | `xkube/tools`   | `sleep infinity`; sh, curl, socat, ...   |
//! | `xkube/pause`   | `xkube pause` (the pod infra container)  |
//! | `xkube/agnhost` | `xkube agnhost` (the test workload)      |
//! | `xkube/xkube`   | `xkube agent` (the agent image, as `deploy/image`) |

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use bollard::{
    Docker,
    query_parameters::{
        BuildImageOptions, CreateImageOptions, ImportImageOptions, ListContainersOptions,
        RemoveContainerOptions, TagImageOptions,
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

/// The tag of the images built here besides `latest`: this xkube's version, as
/// `deploy/README.md` builds the agent image. Pods name them by it (`xkube/agnhost:0.1.0`):
/// `latest` or no tag means `imagePullPolicy: Always`, and no registry serves these.
pub const IMAGE_TAG: &str = env!("CARGO_PKG_VERSION");

/// Tags `repo:latest` as `repo:`[`IMAGE_TAG`] too.
async fn tag_version(docker: &Docker, repo: &str) -> Result<()> {
    docker
        .tag_image(
            &format!("{repo}:latest"),
            Some(TagImageOptions {
                repo: Some(repo.into()),
                tag: Some(IMAGE_TAG.into()),
            }),
        )
        .await
        .map_err(|e| Error::Invalid(format!("docker tag {repo}:{IMAGE_TAG}: {e}")))
}

/// Imports the [`rootfs_tar`] `rootfs` as `repo:latest` and `repo:`[`IMAGE_TAG`] (command
/// `sleep infinity`).
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
    tag_version(docker, repo).await
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
        tag_version(docker, name).await?;
    }
    Ok(())
}

/// An image archive to load: `docker save` output as it is; an OCI image layout archive
/// (`index.json`, `blobs/`) gets the `manifest.json` an engine of API 1.41 reads, naming
/// each image by its `org.opencontainers.image.ref.name` / `io.containerd.image.name`
/// annotation.
pub fn docker_archive(archive: Vec<u8>) -> Result<Vec<u8>> {
    let bad = |m: String| Error::Invalid(format!("image archive: {m}"));
    let mut files: Vec<(tar::Header, Vec<u8>)> = Vec::new();
    {
        let mut ar = tar::Archive::new(archive.as_slice());
        for e in ar.entries().map_err(|e| bad(e.to_string()))? {
            let mut e = e.map_err(|e| bad(e.to_string()))?;
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut body).map_err(|e| bad(e.to_string()))?;
            files.push((e.header().clone(), body));
        }
    }
    let path_of = |h: &tar::Header| {
        h.path()
            .map(|p| p.to_string_lossy().trim_start_matches("./").to_owned())
            .unwrap_or_default()
    };
    let find = |name: &str| {
        files
            .iter()
            .find(|(h, _)| path_of(h) == name)
            .map(|(_, b)| b.as_slice())
    };
    if find("manifest.json").is_some() {
        return Ok(archive);
    }
    let index: serde_json::Value = serde_json::from_slice(find("index.json").ok_or_else(|| {
        bad("neither manifest.json (docker save) nor index.json (OCI layout) in it".into())
    })?)
    .map_err(|e| bad(format!("index.json: {e}")))?;
    let blob = |digest: &str| -> Result<(String, &[u8])> {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| bad(format!("unsupported digest {digest}")))?;
        let path = format!("blobs/sha256/{hex}");
        let body = find(&path).ok_or_else(|| bad(format!("{path} is missing")))?;
        Ok((path, body))
    };
    let mut manifest = Vec::new();
    let mut pending: Vec<(serde_json::Value, Option<String>)> = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| (m.clone(), None))
        .collect();
    while let Some((desc, inherited)) = pending.pop() {
        let ann = &desc["annotations"];
        let name = ann["io.containerd.image.name"]
            .as_str()
            .or(ann["org.opencontainers.image.ref.name"].as_str())
            .map(str::to_owned)
            .or(inherited);
        let (_, body) = blob(desc["digest"].as_str().unwrap_or_default())?;
        let m: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| bad(format!("manifest: {e}")))?;
        if let Some(children) = m["manifests"].as_array() {
            // An index (several platforms): this machine's.
            for c in children {
                let p = &c["platform"];
                if p["os"] == "linux" && p["architecture"] == go_arch() {
                    pending.push((c.clone(), name.clone()));
                }
            }
            continue;
        }
        let (config, _) = blob(m["config"]["digest"].as_str().unwrap_or_default())?;
        let layers = m["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| blob(l["digest"].as_str().unwrap_or_default()).map(|(p, _)| p))
            .collect::<Result<Vec<_>>>()?;
        // A bare tag (`1.0`) is not an image name.
        let tags: Vec<String> = name
            .into_iter()
            .filter(|n| n.contains(':') || n.contains('/'))
            .collect();
        manifest.push(serde_json::json!({"Config": config, "RepoTags": tags, "Layers": layers}));
    }
    if manifest.is_empty() {
        return Err(bad("index.json lists no image for this platform".into()));
    }
    let mut out = tar::Builder::new(Vec::new());
    for (h, body) in &files {
        out.append(h, body.as_slice())
            .map_err(|e| bad(e.to_string()))?;
    }
    let text = serde_json::to_vec(&manifest).map_err(|e| bad(e.to_string()))?;
    let mut h = tar::Header::new_gnu();
    h.set_size(text.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    out.append_data(&mut h, "manifest.json", text.as_slice())
        .map_err(|e| bad(e.to_string()))?;
    out.into_inner().map_err(|e| bad(e.to_string()))
}

/// `docker save` of `image` from the engine at `docker_host` (`unix://...`, a socket path,
/// or `tcp://host:port` without TLS).
pub async fn save_from(docker_host: &str, image: &str) -> Result<Vec<u8>> {
    let connected = match docker_host
        .strip_prefix("tcp://")
        .or_else(|| docker_host.strip_prefix("http://"))
    {
        Some(addr) => {
            Docker::connect_with_http(&format!("http://{addr}"), 300, bollard::API_DEFAULT_VERSION)
        }
        None => Docker::connect_with_unix(
            docker_host.strip_prefix("unix://").unwrap_or(docker_host),
            300,
            bollard::API_DEFAULT_VERSION,
        ),
    };
    let docker = connected.map_err(|e| {
        Error::Invalid(format!(
            "{image:?} is not a file, and the Docker Engine at {docker_host} to take it from is not there ({e}): give --docker-host or an archive (`docker save`, OCI)"
        ))
    })?;
    docker.inspect_image(image).await.map_err(|e| {
        Error::Invalid(format!(
            "{image:?} is neither a file nor an image of the Docker Engine at {docker_host}: {e}"
        ))
    })?;
    let mut s = docker.export_image(image);
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(
            &chunk.map_err(|e| Error::Invalid(format!("docker save {image}: {e}")))?,
        );
    }
    Ok(out)
}

/// Loads the docker archive `archive` into `docker`; returns what the engine reported
/// (`Loaded image: x`).
pub async fn load_archive(docker: &Docker, archive: &[u8]) -> Result<Vec<String>> {
    let mut s = docker.import_image(
        ImportImageOptions {
            quiet: true,
            ..Default::default()
        },
        bollard::body_full(bytes::Bytes::copy_from_slice(archive)),
        None,
    );
    let mut said = Vec::new();
    while let Some(r) = s.next().await {
        let info = r.map_err(|e| Error::Invalid(format!("docker load: {e}")))?;
        if let Some(e) = info.error_detail.and_then(|d| d.message) {
            return Err(Error::Invalid(format!("docker load: {e}")));
        }
        if let Some(line) = info.stream {
            let line = line.trim();
            if !line.is_empty() {
                said.push(line.to_owned());
            }
        }
    }
    Ok(said)
}

/// This machine's architecture as OCI platforms name it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, *body).expect("append");
        }
        b.into_inner().expect("tar")
    }

    /// The deploy manifests name the images by the tag `cluster up` gives them: with
    /// `latest` every start would be a pull (Always) that no registry serves.
    #[test]
    fn deploy_manifests_use_this_version_s_image_tag() {
        let want = format!("image: xkube/xkube:{IMAGE_TAG}");
        for (name, text) in [
            ("dns/kube-dns.yaml", crate::dns::MANIFEST),
            (
                "daemonset/xkube-proxy.yaml",
                include_str!("../../../deploy/daemonset/xkube-proxy.yaml"),
            ),
        ] {
            assert!(text.contains(&want), "deploy/{name} lacks {want:?}");
        }
        assert!(
            include_str!("../../../deploy/examples/web.yaml")
                .contains(&format!("image: xkube/agnhost:{IMAGE_TAG}"))
        );
    }

    /// (Digests are names here: the converter only follows them.)
    #[test]
    fn an_oci_layout_gets_the_manifest_json_docker_loads_and_docker_archives_pass() {
        let manifest = br#"{"schemaVersion": 2,
            "config": {"digest": "sha256:c0"},
            "layers": [{"digest": "sha256:l1"}, {"digest": "sha256:l2"}]}"#;
        let index = br#"{"schemaVersion": 2, "manifests": [{"digest": "sha256:m0",
            "annotations": {"org.opencontainers.image.ref.name": "example/app:1"}}]}"#;
        let oci = tar_of(&[
            ("oci-layout", br#"{"imageLayoutVersion": "1.0.0"}"#),
            ("index.json", index),
            ("blobs/sha256/m0", manifest),
            ("blobs/sha256/c0", b"{}"),
            ("blobs/sha256/l1", b"layer one"),
            ("blobs/sha256/l2", b"layer two"),
        ]);
        let out = docker_archive(oci).expect("converted");
        let mut ar = tar::Archive::new(out.as_slice());
        let mut names = Vec::new();
        let mut manifest_json = None;
        for e in ar.entries().expect("entries") {
            let mut e = e.expect("entry");
            let name = e.path().expect("path").to_string_lossy().into_owned();
            if name == "manifest.json" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut e, &mut s).expect("read");
                manifest_json = Some(s);
            }
            names.push(name);
        }
        assert!(names.contains(&"blobs/sha256/l2".to_owned()), "{names:?}");
        let m: serde_json::Value =
            serde_json::from_str(&manifest_json.expect("manifest.json added")).expect("json");
        assert_eq!(
            m,
            serde_json::json!([{
                "Config": "blobs/sha256/c0",
                "RepoTags": ["example/app:1"],
                "Layers": ["blobs/sha256/l1", "blobs/sha256/l2"],
            }])
        );
        // A docker archive is passed through as it is.
        let docker = tar_of(&[("manifest.json", b"[]")]);
        assert_eq!(docker_archive(docker.clone()).expect("as is"), docker);
        // Neither: a clear error.
        let err = docker_archive(tar_of(&[("x", b"y")])).expect_err("not an image");
        assert!(err.to_string().contains("neither manifest.json"), "{err}");
        // A missing blob is named.
        let broken = tar_of(&[("index.json", index)]);
        let err = docker_archive(broken).expect_err("no blobs");
        assert!(
            err.to_string().contains("blobs/sha256/m0 is missing"),
            "{err}"
        );
    }
}
