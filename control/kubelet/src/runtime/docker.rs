//! The `docker` runtime, through bollard: a pause container (`k8s_POD_<pod>_<ns>_<uid>_0`)
//! owns the pod's namespaces with `NetworkMode: none` (the kubelet wires its network like a CNI
//! plugin would, through `/proc/<pid>/ns/net`); app containers (`k8s_<c>_<pod>_<ns>_<uid>_<n>`)
//! join it with `NetworkMode`/`IpcMode: container:<pause>`. Images the engine lacks are pulled
//! (`POST /images/create`, with the pull secret's credentials; the kubelet's
//! [`crate::images`] decides when); the registry's refusal is the `ErrImagePull` message.
//! Container output is copied from the Docker log stream into the kubelet's log file.
//!
//! Containers are created with Docker's `OpenStdin`/`StdinOnce`/`Tty` from the spec, so Docker
//! keeps their stdin and terminal (they survive a kubelet restart). `exec_stream` is a Docker
//! exec attached over a hijacked connection (`resize_exec`, the exit code from `inspect_exec`
//! once the output ended; shutting stdin down half-closes the connection, which Docker turns
//! into EOF), and `attach` is Docker's attach without logs (`resize_container_tty`, the exit
//! code from `wait_container`). A dropped session leaves an exec running until its stdin's EOF
//! ends it, as Docker does. Docker's output framing is decoded by bollard, which takes a TTY
//! chunk beginning with byte 0, 1 or 2 for a frame header.

use std::{collections::HashMap, time::Duration};

use bollard::{
    Docker,
    container::LogOutput,
    models::{ContainerCreateBody, HostConfig},
    query_parameters::{
        AttachContainerOptions, CreateContainerOptions, CreateImageOptions,
        InspectContainerOptions, ListContainersOptions, ListImagesOptions, LogsOptions,
        RemoveContainerOptions, RemoveImageOptions, ResizeContainerTTYOptions,
        StartContainerOptions, StopContainerOptions,
    },
};
use futures::{FutureExt, Stream, StreamExt};
use tokio::{
    io::AsyncWriteExt,
    sync::{mpsc, oneshot},
};

use super::{
    BoxRead, BoxWrite, ContainerConfig, ContainerRuntime, ContainerStatus, ExecOutput, ImageFs,
    ImageInfo, RuntimeImage, Sandbox, SandboxConfig, StartError, StreamOptions, StreamSession,
    TermSize,
};
use crate::error::{Error, Result};

const LABEL_UID: &str = "io.kubernetes.pod.uid";

pub struct DockerRuntime {
    docker: Docker,
    pause_image: String,
    version: String,
    dockerd_netns: Option<NsId>,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime")
            .field("pause_image", &self.pause_image)
            .field("version", &self.version)
            .finish()
    }
}

fn derr(op: &str) -> impl FnOnce(bollard::errors::Error) -> Error + '_ {
    move |e| Error::Runtime(format!("docker {op}: {e}"))
}

/// What the engine (or the registry behind it) said.
fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        bollard::errors::Error::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// `k8s_<container>_<pod>_<namespace>_<uid>_<attempt>` (`POD` for the infra container).
pub fn container_name(container: &str, pod: &str, ns: &str, uid: &str, attempt: u32) -> String {
    format!("k8s_{container}_{pod}_{ns}_{uid}_{attempt}")
}

type NsId = (u64, u64);

fn ns_id(p: &std::path::Path) -> Option<NsId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok()
}

/// The network namespace of the process serving the Docker socket (from `SO_PEERCRED`).
fn dockerd_netns(socket: &str) -> Option<NsId> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let path = socket.strip_prefix("unix://").unwrap_or(socket);
    let s = std::os::unix::net::UnixStream::connect(path).ok()?;
    let cred = getsockopt(&s, PeerCredentials).ok()?;
    ns_id(std::path::Path::new(&format!(
        "/proc/{}/ns/net",
        cred.pid()
    )))
}

/// Whether the node's network namespace (`None`: ours) is dockerd's, so that
/// `NetworkMode: host` means the node's network.
fn node_is_dockers_netns(node: Option<&std::path::Path>, dockerd: Option<NsId>) -> bool {
    let node = ns_id(node.unwrap_or(std::path::Path::new("/proc/self/ns/net")));
    node.is_some() && node == dockerd
}

/// Linux capability names by number (`capability.h`), up to the last one Docker 20.10 knows
/// (it refuses PERFMON, BPF and CHECKPOINT_RESTORE; SYS_ADMIN covers `bpf()`).
const CAPABILITIES: [&str; 38] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
];

/// The capabilities of this host's bounding set, for a privileged container. Docker's own
/// `Privileged` asks for every capability it knows and fails (`unable to apply caps`) where
/// the host withholds one, so grant what the host has instead.
fn bounding_capabilities() -> Vec<String> {
    let mask = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    capabilities_in(mask)
}

fn capabilities_in(mask: u64) -> Vec<String> {
    CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, name)| format!("CAP_{name}"))
        .collect()
}

fn strip(id: &str) -> &str {
    id.strip_prefix("docker://").unwrap_or(id)
}

/// Docker's output stream of an exec or attach.
type Output =
    std::pin::Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

/// Readers of the stdout and stderr of a Docker output stream (a TTY's output is stdout),
/// each when asked for, and a signal when the stream ended. A task copies the stream into
/// in-memory pipes, waiting for slow readers; it lets the stream go once no reader is left.
fn demux(
    mut output: Output,
    want_stdout: bool,
    want_stderr: bool,
) -> (
    Option<BoxRead>,
    Option<BoxRead>,
    oneshot::Receiver<()>,
    tokio::task::AbortHandle,
) {
    const PIPE: usize = 64 * 1024;
    let pipe = |want: bool| {
        want.then(|| {
            let (w, r) = tokio::io::duplex(PIPE);
            (w, Box::pin(r) as BoxRead)
        })
        .unzip()
    };
    let (mut out_w, out_r) = pipe(want_stdout);
    let (mut err_w, err_r) = pipe(want_stderr);
    let (done_tx, done_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let any = out_w.is_some() || err_w.is_some();
        while let Some(item) = output.next().await {
            let (w, message) = match item {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                    (&mut out_w, message)
                }
                Ok(LogOutput::StdErr { message }) => (&mut err_w, message),
                Ok(LogOutput::StdIn { .. }) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "docker stream output");
                    break;
                }
            };
            if let Some(pipe) = w.as_mut()
                && pipe.write_all(&message).await.is_err()
            {
                *w = None;
            }
            if any && out_w.is_none() && err_w.is_none() {
                break;
            }
        }
        for w in [out_w.as_mut(), err_w.as_mut()].into_iter().flatten() {
            let _ = w.shutdown().await;
        }
        let _ = done_tx.send(());
    });
    (out_r, err_r, done_rx, task.abort_handle())
}

/// What a docker exec or attach session leaves when its client goes: the task copying
/// Docker's output is stopped, and an exec's process still running is killed (Docker has no
/// API for that; its pid is in the node's pid namespace).
struct SessionGuard {
    demux: tokio::task::AbortHandle,
    exec: Option<(Docker, String)>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.demux.abort();
        let Some((docker, id)) = self.exec.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let Ok(info) = docker.inspect_exec(&id).await else {
                return;
            };
            if info.running == Some(true)
                && let Some(pid) = info
                    .pid
                    .and_then(|p| i32::try_from(p).ok())
                    .filter(|p| *p > 0)
            {
                tracing::debug!(exec = %id, pid, "killing the process of an abandoned exec");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        });
    }
}

/// A resize channel calling `resize` for each size until the sender goes.
fn resizer<F, Fut>(resize: F) -> mpsc::Sender<TermSize>
where
    F: Fn(TermSize) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), bollard::errors::Error>> + Send,
{
    let (tx, mut rx) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Some(size) = rx.recv().await {
            if let Err(e) = resize(size).await {
                tracing::debug!(error = %e, "resizing a docker terminal");
            }
        }
    });
    tx
}

impl DockerRuntime {
    /// Connects to the engine at `socket` and negotiates the API version (Debian's Docker
    /// 20.10 speaks 1.41 at most).
    pub async fn connect(socket: &str, pause_image: &str) -> Result<Self> {
        let docker = Docker::connect_with_unix(socket, 120, bollard::API_DEFAULT_VERSION)
            .map_err(derr("connect"))?
            .negotiate_version()
            .await
            .map_err(derr("negotiate version"))?;
        let v = docker.version().await.map_err(derr("version"))?;
        let sock = socket.to_owned();
        let dockerd_netns = tokio::task::spawn_blocking(move || dockerd_netns(&sock))
            .await
            .ok()
            .flatten();
        Ok(Self {
            docker,
            dockerd_netns,
            pause_image: pause_image.to_owned(),
            version: format!("docker://{}", v.version.unwrap_or_default()),
        })
    }

    async fn remove_named(&self, name: &str) {
        let opts = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        if let Err(e) = self.docker.remove_container(name, Some(opts)).await
            && !is_not_found(&e)
        {
            tracing::warn!(name, error = %e, "removing container");
        }
    }

    /// Copies the container's output into `path` until it stops.
    fn copy_logs(&self, id: String, path: std::path::PathBuf) {
        let docker = self.docker.clone();
        tokio::spawn(async move {
            let Ok(mut f) = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await
            else {
                return;
            };
            let opts = LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            };
            let mut s = docker.logs(&id, Some(opts));
            while let Some(Ok(chunk)) = s.next().await {
                let b = match chunk {
                    LogOutput::StdOut { message }
                    | LogOutput::StdErr { message }
                    | LogOutput::Console { message } => message,
                    LogOutput::StdIn { .. } => continue,
                };
                if f.write_all(&b).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn version(&self) -> String {
        self.version.clone()
    }

    fn pulls_images(&self) -> bool {
        true
    }

    async fn image_status(&self, image: &str) -> Result<Option<ImageInfo>, StartError> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(Some(ImageInfo {
                id: format!("docker://{}", i.id.unwrap_or_default()),
                size: i.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(StartError {
                reason: "ImageInspectError",
                message: format!("inspecting image {image:?}: {}", engine_message(&e)),
            }),
        }
    }

    /// The filesystem of Docker's root directory (`DockerRootDir`), every image, and which of
    /// them a container (running or not) is made from.
    async fn image_fs(&self) -> Result<Option<ImageFs>> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| Error::Runtime(format!("docker info: {}", engine_message(&e))))?;
        let root = info
            .docker_root_dir
            .unwrap_or_else(|| "/var/lib/docker".into());
        let st = nix::sys::statvfs::statvfs(root.as_str())
            .map_err(|e| Error::Runtime(format!("statvfs {root}: {e}")))?;
        let frsize = st.fragment_size() as u64;
        let used: std::collections::HashSet<String> = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                ..Default::default()
            }))
            .await
            .map_err(|e| Error::Runtime(format!("listing containers: {}", engine_message(&e))))?
            .into_iter()
            .filter_map(|c| c.image_id)
            .collect();
        let images = self
            .docker
            .list_images(Some(ListImagesOptions::default()))
            .await
            .map_err(|e| Error::Runtime(format!("listing images: {}", engine_message(&e))))?
            .into_iter()
            .map(|i| RuntimeImage {
                in_use: used.contains(&i.id),
                size: u64::try_from(i.size).unwrap_or(0),
                tags: i.repo_tags,
                id: i.id,
            })
            .collect();
        Ok(Some(ImageFs {
            capacity: st.blocks() as u64 * frsize,
            available: st.blocks_available() as u64 * frsize,
            images,
        }))
    }

    async fn remove_image(&self, id: &str) -> Result<()> {
        // Forced: an image with several tags is only removed by ID so (the caller has
        // checked that no container uses it).
        match self
            .docker
            .remove_image(
                id,
                Some(RemoveImageOptions {
                    force: true,
                    ..Default::default()
                }),
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(Error::Runtime(format!(
                "removing image {id}: {}",
                engine_message(&e)
            ))),
        }
    }

    /// `POST /images/create` with the reference split as the API wants it (a name without a
    /// tag would pull every tag), then the image as the engine has it.
    async fn pull_image(
        &self,
        image: &str,
        cred: Option<&crate::images::Credential>,
    ) -> Result<ImageInfo, StartError> {
        let r = crate::images::Reference::parse(image);
        let opts = CreateImageOptions {
            from_image: Some(r.name.to_owned()),
            tag: Some(r.tag_or_digest().to_owned()),
            ..Default::default()
        };
        let creds = cred.map(|c| bollard::auth::DockerCredentials {
            username: Some(c.username.clone()),
            password: Some(c.password.clone()),
            serveraddress: Some(r.registry.to_owned()),
            ..Default::default()
        });
        let failed = |message: String| StartError {
            reason: "ErrImagePull",
            message: format!("failed to pull image {image:?}: {message}"),
        };
        let mut s = self.docker.create_image(Some(opts), None, creds);
        while let Some(r) = s.next().await {
            let info = r.map_err(|e| failed(engine_message(&e)))?;
            if let Some(e) = info.error_detail.and_then(|d| d.message) {
                return Err(failed(e));
            }
        }
        self.image_status(image)
            .await?
            .ok_or_else(|| failed("the engine does not have it after the pull".into()))
    }

    async fn run_sandbox(&self, cfg: &SandboxConfig) -> Result<Sandbox> {
        if self.docker.inspect_image(&self.pause_image).await.is_err() {
            return Err(Error::Runtime(format!(
                "pod infra image {:?} is not present on the node",
                self.pause_image
            )));
        }
        if cfg.host_network && !node_is_dockers_netns(cfg.host_netns.as_deref(), self.dockerd_netns)
        {
            // `NetworkMode: host` is dockerd's namespace, which is not this node's.
            return Err(Error::Runtime(
                "hostNetwork pods with the docker runtime need the node network to be dockerd's network namespace".into(),
            ));
        }
        let name = container_name("POD", &cfg.name, &cfg.namespace, &cfg.uid, 0);
        self.remove_named(&name).await;
        let labels = HashMap::from([
            (LABEL_UID.to_owned(), cfg.uid.clone()),
            ("io.kubernetes.pod.name".to_owned(), cfg.name.clone()),
            (
                "io.kubernetes.pod.namespace".to_owned(),
                cfg.namespace.clone(),
            ),
            ("io.kubernetes.container.name".to_owned(), "POD".to_owned()),
        ]);
        let body = ContainerCreateBody {
            image: Some(self.pause_image.clone()),
            hostname: (!cfg.host_network).then(|| cfg.hostname.clone()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some(if cfg.host_network { "host" } else { "none" }.into()),
                ipc_mode: Some("shareable".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(derr("create pause container"))?;
        self.docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await
            .map_err(derr("start pause container"))?;
        let info = self
            .docker
            .inspect_container(&created.id, None::<InspectContainerOptions>)
            .await
            .map_err(derr("inspect pause container"))?;
        let pid = info
            .state
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| Error::Runtime("pause container has no pid".into()))?;
        let start_time = super::process::proc_stat(pid).map(|(s, _)| s).unwrap_or(0);
        Ok(Sandbox {
            id: format!("docker://{}", created.id),
            pid,
            start_time,
            netns: format!("/proc/{pid}/ns/net").into(),
            host_network: cfg.host_network,
            cgroup: None,
        })
    }

    async fn sandbox_alive(&self, sb: &Sandbox) -> bool {
        self.docker
            .inspect_container(strip(&sb.id), None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|i| i.state?.running)
            .unwrap_or(false)
    }

    async fn stop_sandbox(&self, sb: &Sandbox) -> Result<()> {
        let id = strip(&sb.id);
        let uid = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|i| i.config?.labels?.get(LABEL_UID).cloned());
        if let Some(uid) = uid {
            let opts = ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([(
                    "label".to_owned(),
                    vec![format!("{LABEL_UID}={uid}")],
                )])),
                ..Default::default()
            };
            for c in self
                .docker
                .list_containers(Some(opts))
                .await
                .map_err(derr("list containers"))?
            {
                if let Some(cid) = c.id
                    && cid != id
                {
                    self.remove_named(&cid).await;
                }
            }
        }
        self.remove_named(id).await;
        Ok(())
    }

    async fn start_container(
        &self,
        sb: &Sandbox,
        cfg: &ContainerConfig,
    ) -> Result<String, StartError> {
        let run_err = |m: String| StartError {
            reason: "RunContainerError",
            message: m,
        };
        let pause = strip(&sb.id).to_owned();
        let info = self
            .docker
            .inspect_container(&pause, None::<InspectContainerOptions>)
            .await
            .map_err(|e| run_err(format!("inspect pause container: {e}")))?;
        let labels = info.config.and_then(|c| c.labels).unwrap_or_default();
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let (pod, ns, uid) = (
            get("io.kubernetes.pod.name"),
            get("io.kubernetes.pod.namespace"),
            get(LABEL_UID),
        );
        let name = container_name(&cfg.name, &pod, &ns, &uid, cfg.attempt);
        self.remove_named(&name).await;
        let binds: Vec<String> = cfg
            .mounts
            .iter()
            .map(|m| {
                format!(
                    "{}:{}{}",
                    m.host_path.display(),
                    m.container_path.display(),
                    if m.read_only { ":ro" } else { "" }
                )
            })
            .collect();
        let body = ContainerCreateBody {
            image: Some(cfg.image.clone()),
            entrypoint: (!cfg.command.is_empty()).then(|| cfg.command.clone()),
            cmd: (!cfg.args.is_empty()).then(|| cfg.args.clone()),
            env: Some(cfg.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: cfg.working_dir.clone().filter(|d| !d.is_empty()),
            open_stdin: Some(cfg.stdin),
            stdin_once: Some(cfg.stdin_once),
            attach_stdin: Some(cfg.stdin),
            tty: Some(cfg.tty),
            labels: Some(HashMap::from([
                (LABEL_UID.to_owned(), uid.clone()),
                ("io.kubernetes.pod.name".to_owned(), pod.clone()),
                ("io.kubernetes.pod.namespace".to_owned(), ns.clone()),
                ("io.kubernetes.container.name".to_owned(), cfg.name.clone()),
            ])),
            host_config: Some(HostConfig {
                network_mode: Some(format!("container:{pause}")),
                ipc_mode: Some(format!("container:{pause}")),
                binds: Some(binds),
                cap_add: cfg.privileged.then(bounding_capabilities),
                security_opt: cfg
                    .privileged
                    .then(|| vec!["seccomp=unconfined".into(), "apparmor=unconfined".into()]),
                // Kubernetes' mapping: limits -> CFS quota and memory limit, requests -> shares.
                nano_cpus: cfg
                    .resources
                    .cpu_limit_millis
                    .map(|m| i64::try_from(m.saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
                cpu_shares: cfg
                    .resources
                    .cpu_request_millis
                    .map(|m| i64::try_from((m * 1024 / 1000).max(2)).unwrap_or(i64::MAX)),
                memory: cfg
                    .resources
                    .memory_limit
                    .map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
                // Nothing masked or read-only in /proc (a proxy writes /proc/sys).
                masked_paths: cfg.privileged.then(Vec::new),
                readonly_paths: cfg.privileged.then(Vec::new),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| run_err(format!("create container: {e}")))?;
        if let Some(parent) = cfg.log_path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        self.docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await
            .map_err(|e| run_err(format!("start container: {e}")))?;
        self.copy_logs(created.id.clone(), cfg.log_path.clone());
        Ok(format!("docker://{}", created.id))
    }

    async fn container_status(&self, id: &str) -> ContainerStatus {
        match self
            .docker
            .inspect_container(strip(id), None::<InspectContainerOptions>)
            .await
        {
            Ok(i) => {
                let Some(st) = i.state else {
                    return ContainerStatus::Unknown;
                };
                if st.running == Some(true) {
                    return ContainerStatus::Running;
                }
                let code = st
                    .exit_code
                    .and_then(|c| i32::try_from(c).ok())
                    .unwrap_or(255);
                ContainerStatus::Exited {
                    exit_code: code,
                    signal: (code > 128).then_some(code - 128),
                    finished_at: st
                        .finished_at
                        .and_then(|t| t.parse().ok())
                        .unwrap_or_else(jiff::Timestamp::now),
                }
            }
            Err(_) => ContainerStatus::Unknown,
        }
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let t = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        match self
            .docker
            .stop_container(
                strip(id),
                Some(StopContainerOptions {
                    t: Some(t),
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(derr("stop container")(e)),
        }
    }

    async fn exec(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecOutput> {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        let exec = self
            .docker
            .create_exec(
                strip(id),
                CreateExecOptions {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(cmd.to_vec()),
                    ..Default::default()
                },
            )
            .await
            .map_err(derr("create exec"))?;
        let run = async {
            let mut out = ExecOutput {
                exit_code: 0,
                stdout: Vec::new(),
                stderr: Vec::new(),
            };
            if let StartExecResults::Attached { mut output, .. } = self
                .docker
                .start_exec(&exec.id, None)
                .await
                .map_err(derr("start exec"))?
            {
                while let Some(Ok(chunk)) = output.next().await {
                    match chunk {
                        LogOutput::StdErr { message } => out.stderr.extend_from_slice(&message),
                        LogOutput::StdOut { message } | LogOutput::Console { message } => {
                            out.stdout.extend_from_slice(&message)
                        }
                        LogOutput::StdIn { .. } => {}
                    }
                }
            }
            let info = self
                .docker
                .inspect_exec(&exec.id)
                .await
                .map_err(derr("inspect exec"))?;
            out.exit_code = info
                .exit_code
                .and_then(|c| i32::try_from(c).ok())
                .unwrap_or(255);
            Ok::<_, Error>(out)
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| Error::Runtime(format!("exec in {id} timed out after {timeout:?}")))?
    }

    async fn exec_stream(
        &self,
        id: &str,
        cmd: &[String],
        opts: StreamOptions,
    ) -> Result<StreamSession> {
        use bollard::exec::{
            CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults,
        };
        let exec = self
            .docker
            .create_exec(
                strip(id),
                CreateExecOptions {
                    attach_stdin: Some(opts.stdin),
                    attach_stdout: Some(opts.stdout),
                    attach_stderr: Some(opts.stderr && !opts.tty),
                    tty: Some(opts.tty),
                    cmd: Some(cmd.to_vec()),
                    ..Default::default()
                },
            )
            .await
            .map_err(derr("create exec"))?;
        let start = StartExecOptions {
            detach: false,
            tty: opts.tty,
            output_capacity: None,
        };
        let StartExecResults::Attached { output, input } = self
            .docker
            .start_exec(&exec.id, Some(start))
            .await
            .map_err(derr("start exec"))?
        else {
            return Err(Error::Runtime("docker started the exec detached".into()));
        };
        let (stdout, stderr, ended, demux_task) =
            demux(output, opts.stdout, opts.stderr && !opts.tty);
        let guard = SessionGuard {
            demux: demux_task,
            exec: Some((self.docker.clone(), exec.id.clone())),
        };
        let resize = opts.tty.then(|| {
            let (docker, exec_id) = (self.docker.clone(), exec.id.clone());
            resizer(move |size: TermSize| {
                let (docker, exec_id) = (docker.clone(), exec_id.clone());
                async move {
                    let r = ResizeExecOptions {
                        height: size.height,
                        width: size.width,
                    };
                    docker.resize_exec(&exec_id, r).await
                }
            })
        });
        let docker = self.docker.clone();
        let exit = async move {
            let _ = ended.await;
            // The output ends as the process does; Docker records the code right after.
            for _ in 0..100 {
                let info = docker
                    .inspect_exec(&exec.id)
                    .await
                    .map_err(derr("inspect exec"))?;
                if info.running != Some(true) {
                    let code = info.exit_code.and_then(|c| i32::try_from(c).ok());
                    return Ok(Some(code.unwrap_or(255)));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(Error::Runtime(format!(
                "exec {} still runs after its output ended",
                exec.id
            )))
        };
        Ok(StreamSession {
            stdin: opts.stdin.then_some(input as BoxWrite),
            stdout,
            stderr,
            resize,
            exit: exit.boxed(),
            guard: Some(Box::new(guard)),
        })
    }

    async fn attach(&self, id: &str, opts: StreamOptions) -> Result<StreamSession> {
        let cid = strip(id).to_owned();
        let info = self
            .docker
            .inspect_container(&cid, None::<InspectContainerOptions>)
            .await
            .map_err(|e| {
                if is_not_found(&e) {
                    Error::NoSuchContainer(id.to_owned())
                } else {
                    derr("inspect container")(e)
                }
            })?;
        if info.state.and_then(|s| s.running) != Some(true) {
            return Err(Error::Runtime(format!("container {id} is not running")));
        }
        let config = info.config.unwrap_or_default();
        if opts.stdin && config.open_stdin != Some(true) {
            return Err(Error::Runtime(format!(
                "container {id} is not started with stdin"
            )));
        }
        let tty = config.tty == Some(true);
        let attach = AttachContainerOptions {
            stream: true,
            logs: false,
            stdin: opts.stdin,
            stdout: opts.stdout,
            stderr: opts.stderr && !tty,
            detach_keys: None,
        };
        let bollard::container::AttachContainerResults { output, input } = self
            .docker
            .attach_container(&cid, Some(attach))
            .await
            .map_err(derr("attach"))?;
        let (stdout, mut stderr, _, demux_task) = demux(output, opts.stdout, opts.stderr && !tty);
        let guard = SessionGuard {
            demux: demux_task,
            exec: None,
        };
        if opts.stderr && tty {
            // A terminal has no stderr: what it shows is on stdout.
            stderr = Some(Box::pin(tokio::io::empty()));
        }
        let resize = tty.then(|| {
            let (docker, cid) = (self.docker.clone(), cid.clone());
            resizer(move |size: TermSize| {
                let (docker, cid) = (docker.clone(), cid.clone());
                async move {
                    let r = ResizeContainerTTYOptions {
                        h: i32::from(size.height),
                        w: i32::from(size.width),
                    };
                    docker.resize_container_tty(&cid, r).await
                }
            })
        });
        let docker = self.docker.clone();
        let exit = async move {
            let mut wait = docker.wait_container(&cid, None);
            match wait.next().await {
                Some(Ok(r)) => Ok(Some(i32::try_from(r.status_code).unwrap_or(255))),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                    Ok(Some(i32::try_from(code).unwrap_or(255)))
                }
                Some(Err(e)) => Err(derr("wait container")(e)),
                None => Ok(None),
            }
        };
        Ok(StreamSession {
            stdin: opts.stdin.then_some(input as BoxWrite),
            stdout,
            stderr,
            resize,
            exit: exit.boxed(),
            guard: Some(Box::new(guard)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn container_names_follow_the_kubernetes_pattern() {
        assert_eq!(
            container_name("nginx", "web", "default", "u-1", 2),
            "k8s_nginx_web_default_u-1_2"
        );
        assert_eq!(
            container_name("POD", "web", "default", "u-1", 0),
            "k8s_POD_web_default_u-1_0"
        );
        assert_eq!(strip("docker://abc"), "abc");
    }

    #[test]
    fn privileged_gets_the_hosts_bounding_set() {
        // This machine's set: everything up to CHECKPOINT_RESTORE but SYS_RESOURCE; the
        // three newest are unknown to Docker 20.10.
        let caps = capabilities_in(0x01ff_feff_ffff);
        assert_eq!(caps.len(), 37);
        assert!(!caps.contains(&"CAP_SYS_RESOURCE".to_owned()));
        assert!(
            !caps.contains(&"CAP_BPF".to_owned()) && caps.contains(&"CAP_SYS_ADMIN".to_owned())
        );
        assert_eq!(capabilities_in(1 << 21), ["CAP_SYS_ADMIN"]);
    }

    #[test]
    fn host_network_is_only_dockers_own_namespace() {
        let ours = ns_id(Path::new("/proc/self/ns/net"));
        assert!(ours.is_some(), "procfs mounted");
        assert!(node_is_dockers_netns(None, ours));
        assert!(!node_is_dockers_netns(None, None));
        assert!(!node_is_dockers_netns(None, Some((0, 1))));
        let dir = tempfile::tempdir().expect("tempdir");
        let other = dir.path().join("x");
        std::fs::write(&other, "").expect("file");
        assert!(!node_is_dockers_netns(Some(&other), ours));
    }
}
