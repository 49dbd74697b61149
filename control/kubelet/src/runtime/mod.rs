//! The container runtime interface the pod workers drive, and its implementations:
//! [`process::ProcessRuntime`] (the default), [`docker::DockerRuntime`] and
//! [`fake::FakeRuntime`] (tests).

use std::{path::PathBuf, pin::Pin, time::Duration};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::Result;

pub mod docker;
pub mod fake;
pub mod process;

/// What a sandbox (the pod's namespaces and infra process) is made from.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// The pod's hostname (its name).
    pub hostname: String,
    /// Share the node's network (and hostname) instead of new namespaces.
    pub host_network: bool,
    /// The node's network namespace for `host_network` (`None`: the kubelet's own).
    pub host_netns: Option<PathBuf>,
    /// The pod's cgroup v2 directory, if cgroups are in use.
    pub cgroup: Option<PathBuf>,
    pub pod_dir: PathBuf,
}

/// A running sandbox, persisted in the pod dir so a restarted kubelet adopts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// Runtime id (`process://<pid>.<start time>`).
    pub id: String,
    /// The infra process.
    pub pid: u32,
    /// Its start time in clock ticks since boot (guards against pid reuse).
    pub start_time: u64,
    /// The pod's network namespace (`/proc/<pid>/ns/net`).
    pub netns: PathBuf,
    pub host_network: bool,
    pub cgroup: Option<PathBuf>,
}

/// A volume mount, host path -> path inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
    pub read_only: bool,
}

/// What a container is made from (after the kubelet resolved env, volumes and command).
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    pub name: String,
    pub attempt: u32,
    pub image: String,
    /// `command` of the spec (may be empty).
    pub command: Vec<String>,
    /// `args` of the spec.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub mounts: Vec<Mount>,
    /// stdout and stderr go here.
    pub log_path: PathBuf,
    /// `securityContext.privileged`: all capabilities and devices (the docker runtime; the
    /// process runtime's containers are the node's root processes anyway).
    pub privileged: bool,
    /// The container's resources (the docker runtime applies them per container; the process
    /// runtime limits the pod's cgroup).
    pub resources: Resources,
    /// `stdin`: the container's stdin stays open for `attach`.
    pub stdin: bool,
    /// `stdinOnce`: stdin closes after the first attach that used it ends.
    pub stdin_once: bool,
    /// `tty`: the container runs on a terminal (stdout and stderr are one stream).
    pub tty: bool,
}

/// A container's CPU and memory from `resources`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// `limits.cpu`, millicores.
    pub cpu_limit_millis: Option<u64>,
    /// `requests.cpu` (or the limit when only that is set), millicores.
    pub cpu_request_millis: Option<u64>,
    /// `limits.memory`, bytes.
    pub memory_limit: Option<u64>,
}

/// A container as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerStatus {
    Running,
    Exited {
        exit_code: i32,
        signal: Option<i32>,
        finished_at: jiff::Timestamp,
    },
    /// The runtime does not know it (or lost track of its exit).
    Unknown,
}

/// The result of a command run inside a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Which standard streams an interactive exec or attach carries, and whether on a TTY (then
/// stdout carries the terminal's output and there is no stderr).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A terminal size, as the resize channel carries it (`{"Width":80,"Height":24}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

pub type BoxRead = Pin<Box<dyn AsyncRead + Send>>;
pub type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// A live exec or attach: the streams asked for in [`StreamOptions`] (`None` for the others),
/// a resize handle on a TTY, and the end.
pub struct StreamSession {
    /// Writing goes to the process' stdin; shutting it down closes stdin (EOF).
    pub stdin: Option<BoxWrite>,
    pub stdout: Option<BoxRead>,
    pub stderr: Option<BoxRead>,
    /// Terminal resizes (TTY sessions only).
    pub resize: Option<tokio::sync::mpsc::Sender<TermSize>>,
    /// Resolves when the session ends: `Some(exit code)` when the command (exec) or the
    /// container (attach) exited, `None` when an attach ended without the container exiting.
    pub exit: BoxFuture<'static, Result<Option<i32>>>,
    /// Dropped when the session is: stops what a client that went away leaves behind (the
    /// runtime's copy tasks, an exec'd process still running).
    pub guard: Option<Box<dyn Send>>,
}

impl std::fmt::Debug for StreamSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSession")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("resize", &self.resize.is_some())
            .finish_non_exhaustive()
    }
}

/// An image a runtime has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageInfo {
    /// For `imageID` (`docker://sha256:...`; empty where the runtime has no images).
    pub id: String,
    /// Bytes (0 where the runtime has no images).
    pub size: u64,
}

/// An image of the runtime, for garbage collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeImage {
    pub id: String,
    pub tags: Vec<String>,
    pub size: u64,
    /// A container (running or not) is made from it.
    pub in_use: bool,
}

/// The filesystem holding a runtime's images, and the images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFs {
    pub capacity: u64,
    pub available: u64,
    pub images: Vec<RuntimeImage>,
}

/// Why a container could not start (maps to the Waiting reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError {
    /// `ErrImagePull`, `RunContainerError`, `CreateContainerConfigError`.
    pub reason: &'static str,
    pub message: String,
}

#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// `process`, `docker`, `fake`.
    fn name(&self) -> &'static str;
    /// `process://0.1.0` for nodeInfo.containerRuntimeVersion.
    fn version(&self) -> String;
    /// Whether the runtime pulls images from registries (the process runtime runs host
    /// programs: it has no images, and `Always` has nothing to pull).
    fn pulls_images(&self) -> bool;
    /// `image`, when the runtime has it.
    async fn image_status(&self, image: &str) -> Result<Option<ImageInfo>, StartError>;
    /// The image filesystem and its images, for garbage collection (`None`: the runtime keeps
    /// no images).
    async fn image_fs(&self) -> Result<Option<ImageFs>> {
        Ok(None)
    }
    /// Removes the image `id` (all its tags).
    async fn remove_image(&self, id: &str) -> Result<()> {
        Err(crate::error::Error::Runtime(format!(
            "this runtime keeps no images (removing {id})"
        )))
    }
    /// Pulls `image` from its registry (with `cred` when given).
    async fn pull_image(
        &self,
        image: &str,
        cred: Option<&crate::images::Credential>,
    ) -> Result<ImageInfo, StartError>;
    async fn run_sandbox(&self, cfg: &SandboxConfig) -> Result<Sandbox>;
    /// Whether the sandbox's infra process still runs.
    async fn sandbox_alive(&self, sb: &Sandbox) -> bool;
    /// Stops the infra process (the namespaces go with it).
    async fn stop_sandbox(&self, sb: &Sandbox) -> Result<()>;
    /// Starts a container in the sandbox; returns its id.
    async fn start_container(
        &self,
        sb: &Sandbox,
        cfg: &ContainerConfig,
    ) -> Result<String, StartError>;
    async fn container_status(&self, id: &str) -> ContainerStatus;
    /// SIGTERM, then SIGKILL after `grace`; returns when it is gone.
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()>;
    /// Runs `cmd` inside the container's namespaces.
    async fn exec(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecOutput>;
    /// Starts `cmd` inside the container's namespaces with the streams of `opts` (a real pty
    /// when `opts.tty`), for `kubectl exec -i/-t` and `kubectl cp`.
    async fn exec_stream(
        &self,
        id: &str,
        cmd: &[String],
        opts: StreamOptions,
    ) -> Result<StreamSession>;
    /// Attaches to the running container's own stdio (`kubectl attach`): output from now on,
    /// stdin if the container was started with `stdin`, resizes if with `tty`.
    async fn attach(&self, id: &str, opts: StreamOptions) -> Result<StreamSession>;
}
