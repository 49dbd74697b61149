//! The `process` runtime: the pod's namespaces (network, UTS with hostname = pod name, IPC)
//! are created and held by an infra process (`xkube pause`); each container is a process from
//! the host filesystem that joins them, gets its own mount namespace for its volume bind
//! mounts, and runs in the pod's cgroup. stdout and stderr go to the container's log file.
//!
//! Images are not pulled. A container runs its `command` + `args`; without a command, an image
//! named `agnhost` (any registry/tag: `xkube/agnhost`, `registry.k8s.io/e2e-test-images/
//! agnhost:2.39`) runs `xkube agnhost <args>` (a leading `netexec` is dropped), an image
//! named `pause` runs `xkube pause`, an image named `xkube` (the agent image of
//! `deploy/image`) runs `xkube <args>` (`xkube agent` without args), and otherwise `args`
//! alone is the command line.
//!
//! ## Interactive streams (`exec -i/-t`, `attach`)
//!
//! `exec_stream` runs its command as `exec` does (the container's namespaces and environment,
//! in `/`), on pipes, or with `tty` on a new pty: the command is a session leader with the pty
//! as its controlling terminal (`TERM=xterm` unless the container sets `TERM`), the kubelet
//! keeps the master, and a resize is `TIOCSWINSZ` on it. On a pty, shutting stdin down types the
//! terminal's EOF character (`^D`) instead of hanging up the terminal, and the output ends
//! (EIO on the master) when the last holder of the terminal has gone.
//!
//! A container started with `tty` runs on a pty whose master the kubelet keeps: a task copies
//! the terminal's output, as the terminal shows it (`\r\n` line ends, echoed input), to the
//! log file, which keeps the format of every container's log (raw bytes, stdout and stderr in
//! one stream), and broadcasts it to the attaches of the moment; a slow attach loses output
//! rather than holding the container. A container started with `stdin` and no `tty` gets a
//! pipe as stdin, whose write end the kubelet keeps, and writes its output to the log file as
//! usual. Attaches share the container's stdin; with `stdinOnce` it closes (EOF, `^D` on a
//! tty) when the first attach that carried stdin ends. An attach to a container without a tty
//! follows the log file from its end: stdout and stderr are one stream there, delivered on
//! stdout (the attach's stderr, if asked for, stays empty), polled every 100 ms.
//!
//! Containers with `stdin` or `tty` do not survive a kubelet restart as others do: their stdin
//! pipe or pty master goes with the kubelet (stdin sees EOF; a tty hangs up, which sends
//! SIGHUP), tty output is no longer logged, and a restarted kubelet attaches to them as to
//! containers without stdin or tty (the log file found through `/proc/<pid>/fd/1`, no exit code).

use std::{
    collections::HashMap,
    ffi::CString,
    os::{
        fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd},
        unix::{ffi::OsStrExt, fs::OpenOptionsExt},
    },
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use futures::FutureExt;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, unix::AsyncFd},
    process::Command,
    sync::{broadcast, mpsc, watch},
};

use super::{
    BoxRead, BoxWrite, ContainerConfig, ContainerRuntime, ContainerStatus, ExecOutput, ImageInfo,
    Sandbox, SandboxConfig, StartError, StreamOptions, StreamSession, TermSize,
};
use crate::error::{Error, Result, io};

/// `(exit code, signal, finished at)` of containers whose exit we saw.
type ExitMap = HashMap<String, (i32, Option<i32>, jiff::Timestamp)>;
type Exits = Arc<Mutex<ExitMap>>;

pub struct ProcessRuntime {
    /// The infra command (`<xkube> pause`).
    pause: Vec<String>,
    /// The xkube binary for the image mapping (`agnhost`, `pause`).
    xkube: PathBuf,
    exits: Exits,
    /// Ids of the processes this runtime spawned (their exit is recorded in `exits`).
    children: Arc<Mutex<std::collections::HashSet<String>>>,
    /// The kubelet's end of the stdio of the running containers this runtime started.
    io: IoMap,
    /// Bumped whenever an exit is recorded (wakes attaches waiting for their container's).
    exited: Arc<watch::Sender<u64>>,
}

type IoMap = Arc<Mutex<HashMap<String, Arc<ContainerIo>>>>;

impl std::fmt::Debug for ProcessRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessRuntime")
            .field("pause", &self.pause)
            .field("xkube", &self.xkube)
            .finish()
    }
}

/// The last path component of an image without tag or digest:
/// `registry.k8s.io/e2e-test-images/agnhost:2.39` -> `agnhost`.
pub fn image_base_name(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last)
}

/// The command line a container runs in the process runtime (see the module docs).
pub fn resolve_command(
    image: &str,
    command: &[String],
    args: &[String],
    xkube: &Path,
) -> Result<Vec<String>, StartError> {
    if !command.is_empty() {
        return Ok(command.iter().chain(args).cloned().collect());
    }
    let xkube = xkube.to_string_lossy().into_owned();
    match image_base_name(image) {
        "agnhost" => {
            let rest = match args.first().map(String::as_str) {
                Some("netexec") => &args[1..],
                _ => args,
            };
            Ok([xkube, "agnhost".into()]
                .into_iter()
                .chain(rest.iter().cloned())
                .collect())
        }
        "pause" => Ok(vec![xkube, "pause".into()]),
        // The agent image of deploy/image: entrypoint `xkube`, default command `agent`.
        "xkube" if args.is_empty() => Ok(vec![xkube, "agent".into()]),
        "xkube" => Ok(std::iter::once(xkube).chain(args.iter().cloned()).collect()),
        _ if !args.is_empty() => Ok(args.to_vec()),
        _ => Err(StartError {
            reason: "CreateContainerConfigError",
            message: format!(
                "image {image:?} has no entrypoint in the process runtime, which runs host programs rather than images (only agnhost, pause and xkube images map to one): set command to a host program, or use the docker runtime for this image"
            ),
        }),
    }
}

/// Start time (clock ticks after boot) and state letter of `pid`, from `/proc/<pid>/stat`.
pub fn proc_stat(pid: u32) -> Option<(u64, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

/// Whether `pid` is the process that started at `start` and has not exited.
fn alive(pid: u32, start: u64) -> bool {
    matches!(proc_stat(pid), Some((s, st)) if s == start && st != 'Z' && st != 'X')
}

/// `process://<pid>.<start>` -> (pid, start).
fn parse_id(id: &str) -> Option<(u32, u64)> {
    let (p, s) = id.strip_prefix("process://")?.split_once('.')?;
    Some((p.parse().ok()?, s.parse().ok()?))
}

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))
}

/// Makes the child join the pod cgroup `cg` and the cgroup v1 mirrors of it that exist
/// (hybrid hosts, where the kubelet puts the pod's memory and cpu limits).
fn join_cgroup(cg: &Path, setup: &mut ChildSetup, keep: &mut Vec<std::fs::File>) -> Result<()> {
    let dirs = std::iter::once(cg.to_path_buf()).chain(
        xkube_netns::cgroup::v1_mirrors(cg)
            .into_iter()
            .map(|(_, d)| d)
            .filter(|d| d.is_dir()),
    );
    for dir in dirs {
        let p = dir.join("cgroup.procs");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(io("open", &p))?;
        setup.cgroup_procs.push(f.as_raw_fd());
        keep.push(f);
    }
    Ok(())
}

/// What a forked child does before exec. Built in the parent; the child only makes syscalls
/// (no allocation between fork and exec).
#[derive(Default)]
struct ChildSetup {
    /// Namespaces to join: (fd, CLONE_NEW* type).
    join: Vec<(RawFd, libc::c_int)>,
    /// Namespaces to create.
    unshare: libc::c_int,
    hostname: Option<Vec<u8>>,
    /// `cgroup.procs` of the pod's cgroup (and its cgroup v1 mirrors on hybrid hosts).
    cgroup_procs: Vec<RawFd>,
    /// Bind mounts (source, target, read-only) in a new mount namespace.
    mounts: Vec<(CString, CString, bool)>,
    chdir: Option<CString>,
    /// Make stdin (a pty slave) the controlling terminal of the new session.
    ctty: bool,
}

impl ChildSetup {
    fn run(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc != 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY (whole function): plain syscalls on data prepared by the parent.
        unsafe {
            for fd in &self.cgroup_procs {
                let n = libc::write(*fd, b"0".as_ptr().cast(), 1);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (fd, kind) in &self.join {
                check(libc::setns(*fd, *kind))?;
            }
            if self.unshare != 0 {
                check(libc::unshare(self.unshare))?;
            }
            if let Some(h) = &self.hostname {
                check(libc::sethostname(h.as_ptr().cast(), h.len()))?;
            }
            if !self.mounts.is_empty() {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for (src, dst, ro) in &self.mounts {
                    check(libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ))?;
                    if *ro {
                        check(libc::mount(
                            std::ptr::null(),
                            dst.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                            std::ptr::null(),
                        ))?;
                    }
                }
            }
            if let Some(d) = &self.chdir {
                check(libc::chdir(d.as_ptr()))?;
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if self.ctty {
                check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
            }
        }
        Ok(())
    }

    fn install(self, cmd: &mut Command) {
        // SAFETY: ChildSetup::run only makes async-signal-safe syscalls.
        unsafe {
            cmd.pre_exec(move || self.run());
        }
    }
}

fn open_ns(pid: u32, kind: &str) -> Result<std::fs::File> {
    let p = format!("/proc/{pid}/ns/{kind}");
    std::fs::File::open(&p).map_err(io("open namespace", p))
}

impl ProcessRuntime {
    /// `pause`: the infra command line; `xkube`: the binary the image mapping runs.
    pub fn new(pause: Vec<String>, xkube: PathBuf) -> Self {
        Self {
            pause,
            xkube,
            exits: Arc::default(),
            children: Arc::default(),
            io: Arc::default(),
            exited: Arc::new(watch::Sender::new(0)),
        }
    }

    fn exits(&self) -> std::sync::MutexGuard<'_, ExitMap> {
        self.exits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns `child`, reaps it in the background and records its exit under the id.
    fn watch_exit(&self, mut child: tokio::process::Child, id: String) {
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone());
        let exits = self.exits.clone();
        let ios = self.io.clone();
        let exited = self.exited.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let (code, signal) = match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    match (s.code(), s.signal()) {
                        (Some(c), _) => (c, None),
                        (None, Some(sig)) => (128 + sig, Some(sig)),
                        (None, None) => (255, None),
                    }
                }
                Err(_) => (255, None),
            };
            ios.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            exits
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, (code, signal, jiff::Timestamp::now()));
            exited.send_modify(|n| *n = n.wrapping_add(1));
        });
    }

    fn spawned_id(child: &tokio::process::Child) -> Result<(u32, u64, String)> {
        let pid = child
            .id()
            .ok_or_else(|| Error::Runtime("child exited before its id was read".into()))?;
        let (start, _) = proc_stat(pid)
            .ok_or_else(|| Error::Runtime(format!("process {pid} vanished at start")))?;
        Ok((pid, start, format!("process://{pid}.{start}")))
    }
}

/// The `start_container` work, with ordinary errors: the command, the files to keep open
/// until it is spawned, and the pty master of a `tty` container.
fn prepare_container(
    sb: &Sandbox,
    cfg: &ContainerConfig,
    argv: &[String],
) -> Result<(Command, Vec<std::fs::File>, Option<Arc<Pty>>)> {
    if !alive(sb.pid, sb.start_time) {
        return Err(Error::Runtime(format!("sandbox {} is not running", sb.id)));
    }
    let mut keep = Vec::new();
    let mut setup = ChildSetup::default();
    let kinds: &[(&str, libc::c_int)] = if sb.host_network {
        &[("net", libc::CLONE_NEWNET), ("ipc", libc::CLONE_NEWIPC)]
    } else {
        &[
            ("net", libc::CLONE_NEWNET),
            ("uts", libc::CLONE_NEWUTS),
            ("ipc", libc::CLONE_NEWIPC),
        ]
    };
    for (k, t) in kinds {
        let f = open_ns(sb.pid, k)?;
        setup.join.push((f.as_raw_fd(), *t));
        keep.push(f);
    }
    if let Some(cg) = &sb.cgroup {
        join_cgroup(cg, &mut setup, &mut keep)?;
    }
    for m in &cfg.mounts {
        // The target must exist to bind over it. Paths missing on the host are created as
        // empty directories (or files, for file sources).
        if !m.container_path.exists() {
            if m.host_path.is_dir() {
                std::fs::create_dir_all(&m.container_path)
                    .map_err(io("create mount point", &m.container_path))?;
            } else {
                if let Some(parent) = m.container_path.parent() {
                    std::fs::create_dir_all(parent).map_err(io("create mount point", parent))?;
                }
                std::fs::File::create(&m.container_path)
                    .map_err(io("create mount point", &m.container_path))?;
            }
        }
        setup.mounts.push((
            cstr(&m.host_path).map_err(io("path", &m.host_path))?,
            cstr(&m.container_path).map_err(io("path", &m.container_path))?,
            m.read_only,
        ));
    }
    if let Some(d) = cfg.working_dir.as_deref().filter(|d| !d.is_empty()) {
        setup.chdir = Some(cstr(Path::new(d)).map_err(io("path", d))?);
    } else {
        setup.chdir = Some(c"/".to_owned());
    }
    if let Some(parent) = cfg.log_path.parent() {
        std::fs::create_dir_all(parent).map_err(io("create directory", parent))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.log_path)
        .map_err(io("open log", &cfg.log_path))?;
    let log2 = log.try_clone().map_err(io("dup log", &cfg.log_path))?;
    let (prog, rest) = argv
        .split_first()
        .ok_or_else(|| Error::Runtime("empty command".into()))?;
    let mut cmd = Command::new(prog);
    cmd.args(rest)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(if cfg.stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(log)
        .stderr(log2);
    let pty = if cfg.tty {
        let (pty, [i, o, e]) = Pty::open()?;
        cmd.stdin(i).stdout(o).stderr(e).env("TERM", "xterm");
        setup.ctty = true;
        Some(pty)
    } else {
        None
    };
    for (k, v) in &cfg.env {
        cmd.env(k, v);
    }
    setup.install(&mut cmd);
    Ok((cmd, keep, pty))
}

#[async_trait::async_trait]
impl ContainerRuntime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn version(&self) -> String {
        format!("process://{}", env!("CARGO_PKG_VERSION"))
    }

    fn pulls_images(&self) -> bool {
        false
    }

    /// Every image "is there": the image only selects a host program (see the module
    /// docs), and a container whose image maps to none fails at its start with
    /// `CreateContainerError` and a message that says so.
    async fn image_status(&self, _image: &str) -> Result<Option<ImageInfo>, StartError> {
        Ok(Some(ImageInfo::default()))
    }

    async fn pull_image(
        &self,
        image: &str,
        _cred: Option<&crate::images::Credential>,
    ) -> Result<ImageInfo, StartError> {
        Err(StartError {
            reason: "ErrImagePull",
            message: format!(
                "the process runtime runs host programs and cannot pull {image:?}: use the docker runtime for registry images"
            ),
        })
    }

    async fn run_sandbox(&self, cfg: &SandboxConfig) -> Result<Sandbox> {
        let (prog, rest) = self
            .pause
            .split_first()
            .ok_or_else(|| Error::Runtime("empty pause command".into()))?;
        let mut cmd = Command::new(prog);
        cmd.args(rest)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut setup = ChildSetup::default();
        let mut keep = Vec::new();
        if let Some(cg) = &cfg.cgroup {
            join_cgroup(cg, &mut setup, &mut keep)?;
        }
        if cfg.host_network {
            if let Some(p) = &cfg.host_netns {
                let f = std::fs::File::open(p).map_err(io("open network namespace", p))?;
                setup.join.push((f.as_raw_fd(), libc::CLONE_NEWNET));
                keep.push(f);
            }
            setup.unshare = libc::CLONE_NEWIPC;
        } else {
            setup.unshare = libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
            setup.hostname = Some(cfg.hostname.as_bytes().to_vec());
        }
        setup.chdir = Some(c"/".to_owned());
        setup.install(&mut cmd);
        let child = cmd.spawn().map_err(io("spawn pause", prog))?;
        drop(keep);
        let (pid, start_time, id) = Self::spawned_id(&child)?;
        self.watch_exit(child, id.clone());
        tracing::debug!(pod = %cfg.name, pid, "sandbox started");
        Ok(Sandbox {
            id,
            pid,
            start_time,
            netns: PathBuf::from(format!("/proc/{pid}/ns/net")),
            host_network: cfg.host_network,
            cgroup: cfg.cgroup.clone(),
        })
    }

    async fn sandbox_alive(&self, sb: &Sandbox) -> bool {
        alive(sb.pid, sb.start_time)
    }

    async fn stop_sandbox(&self, sb: &Sandbox) -> Result<()> {
        self.stop_container(&sb.id, Duration::from_secs(2)).await
    }

    async fn start_container(
        &self,
        sb: &Sandbox,
        cfg: &ContainerConfig,
    ) -> Result<String, StartError> {
        let argv = resolve_command(&cfg.image, &cfg.command, &cfg.args, &self.xkube)?;
        let run_err = |e: Error| StartError {
            reason: "RunContainerError",
            message: e.to_string(),
        };
        let (mut cmd, keep, pty) = prepare_container(sb, cfg, &argv).map_err(run_err)?;
        let mut child = cmd.spawn().map_err(|e| StartError {
            reason: "RunContainerError",
            message: format!("starting {:?}: {e}", argv[0]),
        })?;
        // Our copies of the pty slave go: the master reads EOF once the container's have gone.
        drop(cmd);
        drop(keep);
        let pipe = child.stdin.take();
        let (pid, _, id) = Self::spawned_id(&child).map_err(run_err)?;
        if cfg.stdin || cfg.tty {
            let cio = ContainerIo::start(cfg, pty, pipe);
            self.io
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone(), Arc::new(cio));
        }
        self.watch_exit(child, id.clone());
        tracing::debug!(container = %cfg.name, pid, ?argv, "container started");
        Ok(id)
    }

    async fn container_status(&self, id: &str) -> ContainerStatus {
        if let Some((code, signal, at)) = self.exits().get(id).copied() {
            return ContainerStatus::Exited {
                exit_code: code,
                signal,
                finished_at: at,
            };
        }
        // Our own child whose exit is not recorded yet is running, or exiting right now (a
        // zombie until the waiter reaps it and records the status).
        if self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
        {
            return ContainerStatus::Running;
        }
        match parse_id(id) {
            Some((pid, start)) if alive(pid, start) => ContainerStatus::Running,
            _ => ContainerStatus::Unknown,
        }
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let Some((pid, start)) = parse_id(id) else {
            return Err(Error::NoSuchContainer(id.to_owned()));
        };
        if self.container_status(id).await != ContainerStatus::Running {
            return Ok(());
        }
        let signal_group = |sig: libc::c_int| {
            if alive(pid, start) {
                // The container is its own session and process group (setsid at start).
                // SAFETY: kill(2) on a process group we started.
                unsafe {
                    libc::kill(-(pid as libc::pid_t), sig);
                    libc::kill(pid as libc::pid_t, sig);
                }
            }
        };
        signal_group(libc::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if self.container_status(id).await != ContainerStatus::Running {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        signal_group(libc::SIGKILL);
        for _ in 0..200 {
            if self.container_status(id).await != ContainerStatus::Running {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(Error::Runtime(format!("{id} did not die after SIGKILL")))
    }

    async fn exec(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecOutput> {
        let (mut c, setup, keep) = exec_command(id, cmd, false)?;
        setup.install(&mut c);
        let prog = &cmd[0];
        let out = tokio::time::timeout(timeout, c.output())
            .await
            .map_err(|_| Error::Runtime(format!("exec in {id} timed out after {timeout:?}")))?
            .map_err(io("exec", prog))?;
        drop(keep);
        Ok(ExecOutput {
            exit_code: exit_code(out.status),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    async fn exec_stream(
        &self,
        id: &str,
        cmd: &[String],
        opts: StreamOptions,
    ) -> Result<StreamSession> {
        let (mut c, mut setup, keep) = exec_command(id, cmd, opts.tty)?;
        let piped = |on: bool| {
            if on {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            }
        };
        let pty = if opts.tty {
            let (pty, [i, o, e]) = Pty::open()?;
            c.stdin(i).stdout(o).stderr(e);
            setup.ctty = true;
            Some(pty)
        } else {
            c.stdin(piped(opts.stdin))
                .stdout(piped(opts.stdout))
                .stderr(piped(opts.stderr));
            None
        };
        setup.install(&mut c);
        let mut child = c.spawn().map_err(io("exec", &cmd[0]))?;
        // Our copies of the pty slave go: the master reads EOF once the command's have gone.
        drop(c);
        drop(keep);
        let (stdin, stdout, stderr, resize) = match pty {
            Some(pty) => {
                let stdout: BoxRead = Box::pin(PtyReader(pty.clone()));
                let stdout = if opts.stdout {
                    Some(stdout)
                } else {
                    // Nobody reads the terminal: drain it, or the command blocks on output.
                    tokio::spawn(async move {
                        let mut stdout = stdout;
                        let _ = tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await;
                    });
                    None
                };
                let stdin = opts
                    .stdin
                    .then(|| Box::pin(PtyWriter::new(pty.clone())) as BoxWrite);
                (stdin, stdout, None, Some(pty.resizer()))
            }
            None => (
                child
                    .stdin
                    .take()
                    .map(|w| Box::pin(CloseOnShutdown(Some(w))) as BoxWrite),
                child.stdout.take().map(|r| Box::pin(r) as BoxRead),
                child.stderr.take().map(|r| Box::pin(r) as BoxRead),
                None,
            ),
        };
        // The child is killed if the session is dropped before it exits (`kill_on_drop`).
        let what = cmd[0].clone();
        let exit = async move {
            let status = child.wait().await.map_err(io("wait for", what))?;
            Ok(Some(exit_code(status)))
        }
        .boxed();
        Ok(StreamSession {
            stdin,
            stdout,
            stderr,
            resize,
            exit,
            guard: None,
        })
    }

    async fn attach(&self, id: &str, opts: StreamOptions) -> Result<StreamSession> {
        let Some((pid, start)) = parse_id(id) else {
            return Err(Error::NoSuchContainer(id.to_owned()));
        };
        if self.container_status(id).await != ContainerStatus::Running {
            return Err(Error::Runtime(format!("container {id} is not running")));
        }
        let cio = self
            .io
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        let stdin = if opts.stdin {
            let Some(cio) = &cio else {
                return Err(Error::Runtime(format!(
                    "container {id} is not started with stdin (or was started before the kubelet restarted)"
                )));
            };
            if !cio.has_stdin {
                return Err(Error::Runtime(format!(
                    "container {id} is not started with stdin"
                )));
            }
            Some(cio.attach_stdin().ok_or_else(|| {
                Error::Runtime(format!(
                    "the stdin of container {id} is closed (stdinOnce: an attach used it)"
                ))
            })?)
        } else {
            None
        };
        let empty = || Box::pin(tokio::io::empty()) as BoxRead;
        let tty = cio.as_ref().and_then(|c| c.tty.as_ref());
        let (stdout, stderr, resize) = match tty {
            Some((pty, out)) => (
                opts.stdout.then(|| broadcast_reader(out.subscribe())),
                opts.stderr.then(empty),
                Some(pty.resizer()),
            ),
            None if opts.stdout || opts.stderr => {
                let path = match &cio {
                    Some(c) => c.log_path.clone(),
                    None => {
                        let fd1 = format!("/proc/{pid}/fd/1");
                        let path =
                            std::fs::read_link(&fd1).map_err(io("find the log file of", &fd1))?;
                        // Not a terminal of a container started before a kubelet restart:
                        // reading it would take the container's input.
                        if !path.is_file() {
                            return Err(Error::Runtime(format!(
                                "container {id} writes to {}, not to a log file this kubelet can follow",
                                path.display()
                            )));
                        }
                        path
                    }
                };
                let log = follow_log(&path, move || !alive(pid, start))?;
                if opts.stdout {
                    (Some(log), opts.stderr.then(empty), None)
                } else {
                    (None, Some(log), None)
                }
            }
            None => (None, None, None),
        };
        Ok(StreamSession {
            stdin,
            stdout,
            stderr,
            resize,
            exit: self.wait_exit(id.to_owned(), pid, start).boxed(),
            guard: None,
        })
    }
}

impl ProcessRuntime {
    /// Resolves with the exit code of container `id` once it exited (`None` when it was not
    /// this runtime's child, whose exit code is unknown).
    fn wait_exit(
        &self,
        id: String,
        pid: u32,
        start: u64,
    ) -> impl Future<Output = Result<Option<i32>>> + Send + 'static {
        let exits = self.exits.clone();
        let children = self.children.clone();
        let mut changed = self.exited.subscribe();
        async move {
            loop {
                changed.mark_unchanged();
                if let Some((code, ..)) = exits.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
                    return Ok(Some(*code));
                }
                let ours = children
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&id);
                if !ours && !alive(pid, start) {
                    return Ok(None);
                }
                // Adopted containers have no waiter to tell us: look again now and then.
                tokio::select! {
                    r = changed.changed() => if r.is_err() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    },
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

/// Exit code of a finished process: its code, or 128 + the signal that killed it.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(127))
}

/// A command in the running container `id`: it joins the container's ipc, uts, net and mount
/// namespaces, gets its environment (and `TERM=xterm` on a `tty` it does not set), runs in `/`
/// and is killed if dropped. Returns the setup still to install and the files to keep open
/// until the spawn.
fn exec_command(
    id: &str,
    cmd: &[String],
    tty: bool,
) -> Result<(Command, ChildSetup, Vec<std::fs::File>)> {
    let Some((pid, start)) = parse_id(id) else {
        return Err(Error::NoSuchContainer(id.to_owned()));
    };
    if !alive(pid, start) {
        return Err(Error::Runtime(format!("container {id} is not running")));
    }
    let (prog, rest) = cmd
        .split_first()
        .ok_or_else(|| Error::Runtime("empty command".into()))?;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let mut c = Command::new(prog);
    c.args(rest)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if tty {
        c.env("TERM", "xterm");
    }
    for kv in environ.split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let kv = String::from_utf8_lossy(kv);
        if let Some((k, v)) = kv.split_once('=') {
            c.env(k, v);
        }
    }
    let mut setup = ChildSetup::default();
    let mut keep = Vec::new();
    for (k, t) in [
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("mnt", libc::CLONE_NEWNS),
    ] {
        let f = open_ns(pid, k)?;
        setup.join.push((f.as_raw_fd(), t));
        keep.push(f);
    }
    setup.chdir = Some(c"/".to_owned());
    Ok((c, setup, keep))
}

/// The master of a pty (non-blocking), shared by the readers, writers and resizers of a
/// session or container.
struct Pty {
    master: AsyncFd<OwnedFd>,
    /// The terminal's EOF character (`VEOF`, `^D`), for a shutdown of stdin.
    veof: u8,
}

impl Pty {
    /// A new pty: its master, and three handles of its slave for a child's stdin, stdout and
    /// stderr. Both ends are opened close-on-exec, so no other child inherits them.
    fn open() -> Result<(Arc<Self>, [std::process::Stdio; 3])> {
        use nix::{fcntl::OFlag, pty};
        let ptmx = "/dev/ptmx";
        let m = pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
            .map_err(|e| io("open", ptmx)(e.into()))?;
        pty::grantpt(&m).map_err(|e| io("grantpt", ptmx)(e.into()))?;
        pty::unlockpt(&m).map_err(|e| io("unlockpt", ptmx)(e.into()))?;
        let name = pty::ptsname_r(&m).map_err(|e| io("ptsname", ptmx)(e.into()))?;
        // SAFETY: the descriptor posix_openpt opened, whose ownership into_raw_fd gives up.
        let master = unsafe { OwnedFd::from_raw_fd(m.into_raw_fd()) };
        let slave: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&name)
            .map_err(io("open", &name))?
            .into();
        let veof = nix::sys::termios::tcgetattr(&slave)
            .map(|t| t.control_chars[nix::sys::termios::SpecialCharacterIndices::VEOF as usize])
            .unwrap_or(4);
        // SAFETY: fcntl on a descriptor we own.
        let rc = unsafe {
            let fl = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(master.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK)
        };
        if rc < 0 {
            return Err(io("set non-blocking", &name)(
                std::io::Error::last_os_error(),
            ));
        }
        let dup = |f: &OwnedFd| f.try_clone().map_err(io("dup", &name));
        let stdio = [
            dup(&slave)?.into(),
            dup(&slave)?.into(),
            std::process::Stdio::from(slave),
        ];
        // SAFETY: the OwnedFd is valid and stays open, the same descriptor, while registered.
        let master =
            unsafe { AsyncFd::register(master) }.map_err(|e| io("register", &name)(e.into()))?;
        Ok((Arc::new(Self { master, veof }), stdio))
    }

    fn resize(&self, size: TermSize) -> std::io::Result<()> {
        let ws = libc::winsize {
            ws_row: size.height,
            ws_col: size.width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize through a valid pointer.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// A resize channel applying each size to the terminal until the sender goes.
    fn resizer(self: &Arc<Self>) -> mpsc::Sender<TermSize> {
        let (tx, mut rx) = mpsc::channel(8);
        let pty = self.clone();
        tokio::spawn(async move {
            while let Some(size) = rx.recv().await {
                if let Err(e) = pty.resize(size) {
                    tracing::debug!(error = %e, "resizing a terminal");
                }
            }
        });
        tx
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.master.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let r = guard.try_io(|fd| {
                // SAFETY: read(2) into the unfilled part of the buffer, at most its length.
                let n = unsafe {
                    libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                };
                usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
            });
            match r {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Every slave handle is closed: the end of the output.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }

    fn poll_write(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = ready!(self.master.poll_write_ready(cx))?;
            let r = guard.try_io(|fd| {
                // SAFETY: write(2) from a valid slice, at most its length.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
            });
            if let Ok(r) = r {
                return Poll::Ready(r);
            }
        }
    }
}

/// What the terminal shows (EOF once every slave handle is closed).
struct PtyReader(Arc<Pty>);

impl AsyncRead for PtyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.0.poll_read(cx, buf)
    }
}

/// Typing into the terminal; a shutdown types its EOF character (once).
struct PtyWriter {
    pty: Arc<Pty>,
    eof_sent: bool,
}

impl PtyWriter {
    fn new(pty: Arc<Pty>) -> Self {
        Self {
            pty,
            eof_sent: false,
        }
    }
}

impl AsyncWrite for PtyWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.eof_sent {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        self.pty.poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.eof_sent {
            let eof = [self.pty.veof];
            ready!(self.pty.poll_write(cx, &eof))?;
            self.eof_sent = true;
        }
        Poll::Ready(Ok(()))
    }
}

/// A writer whose shutdown closes it (tokio's `ChildStdin` stays open until dropped).
struct CloseOnShutdown<W>(Option<W>);

impl<W: AsyncWrite + Unpin> AsyncWrite for CloseOnShutdown<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.0.as_mut() {
            Some(w) => Pin::new(w).poll_write(cx, data),
            None => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.0.as_mut() {
            Some(w) => Pin::new(w).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(w) = self.0.as_mut() {
            ready!(Pin::new(w).poll_shutdown(cx))?;
        }
        self.0 = None;
        Poll::Ready(Ok(()))
    }
}

/// Size of the in-memory pipes between the kubelet's tasks and a session's streams.
const PIPE: usize = 64 * 1024;

/// Whether the reading end of `w` has gone (a zero-length write fails then).
async fn reader_gone(w: &mut tokio::io::DuplexStream) -> bool {
    w.write(&[]).await.is_err()
}

/// The kubelet's end of the stdio of a container started with `stdin` or `tty`.
struct ContainerIo {
    log_path: PathBuf,
    /// The terminal (`tty`) and its output, broadcast by the task copying it to the log.
    tty: Option<(Arc<Pty>, broadcast::Sender<Bytes>)>,
    has_stdin: bool,
    /// Feeds the container's stdin; `None` once closed (`stdinOnce`). Attaches send clones:
    /// the stdin closes when the last sender goes.
    stdin: Arc<Mutex<Option<mpsc::Sender<Bytes>>>>,
    stdin_once: bool,
}

impl ContainerIo {
    /// Starts the tasks around a new container: the copy of a terminal's output to the log
    /// and to attaches, and the feeder of its stdin (`pipe`, or the terminal).
    fn start(
        cfg: &ContainerConfig,
        pty: Option<Arc<Pty>>,
        pipe: Option<tokio::process::ChildStdin>,
    ) -> Self {
        let tty = pty.map(|pty| {
            let (tx, _) = broadcast::channel(256);
            tokio::spawn(copy_tty(pty.clone(), cfg.log_path.clone(), tx.clone()));
            (pty, tx)
        });
        let writer: Option<BoxWrite> = match (&tty, pipe) {
            _ if !cfg.stdin => None,
            (Some((pty, _)), _) => Some(Box::pin(PtyWriter::new(pty.clone()))),
            (None, Some(w)) => Some(Box::pin(CloseOnShutdown(Some(w)))),
            (None, None) => None,
        };
        let stdin = writer.map(|mut w| {
            let (tx, mut rx) = mpsc::channel::<Bytes>(16);
            tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    if w.write_all(&b).await.is_err() {
                        return;
                    }
                }
                let _ = w.shutdown().await;
            });
            tx
        });
        Self {
            log_path: cfg.log_path.clone(),
            tty,
            has_stdin: stdin.is_some(),
            stdin: Arc::new(Mutex::new(stdin)),
            stdin_once: cfg.stdin_once,
        }
    }

    /// A writer into the container's stdin for one attach (`None`: stdin is closed). Its
    /// shutdown or drop ends this attach's input, and with `stdinOnce` closes the stdin.
    fn attach_stdin(&self) -> Option<BoxWrite> {
        let tx = self
            .stdin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let (ours, theirs) = tokio::io::duplex(PIPE);
        let (shared, once) = (self.stdin.clone(), self.stdin_once);
        tokio::spawn(async move {
            let mut r = ours;
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                            break;
                        }
                    }
                }
            }
            if once {
                shared.lock().unwrap_or_else(|e| e.into_inner()).take();
            }
        });
        Some(Box::pin(theirs))
    }
}

/// Copies a container's terminal output to its log file and to the attaches of the moment
/// until the terminal's last slave handle closes.
async fn copy_tty(pty: Arc<Pty>, log: PathBuf, out: broadcast::Sender<Bytes>) {
    let mut file = match tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .await
    {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(path = %log.display(), error = %e, "opening a container log");
            None
        }
    };
    let mut r = PtyReader(pty);
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(path = %log.display(), error = %e, "reading a container terminal");
                break;
            }
        };
        let chunk = Bytes::copy_from_slice(&buf[..n]);
        if let Some(f) = file.as_mut()
            && let Err(e) = async {
                f.write_all(&chunk).await?;
                f.flush().await
            }
            .await
        {
            tracing::warn!(path = %log.display(), error = %e, "writing a container log");
            file = None;
        }
        // No attach at the moment is fine.
        let _ = out.send(chunk);
    }
}

/// A reader of a broadcast output from now on. A reader that falls more than the channel's
/// capacity behind loses the chunks it missed (the container never waits for it).
fn broadcast_reader(mut rx: broadcast::Receiver<Bytes>) -> BoxRead {
    let (mut w, r) = tokio::io::duplex(PIPE);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Ok(b) => {
                        if w.write_all(&b).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(chunks = n, "a slow attach lost output");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    if reader_gone(&mut w).await {
                        return;
                    }
                }
            }
        }
        let _ = w.shutdown().await;
    });
    Box::pin(r)
}

/// A reader of what is appended to `path` from now on, polled every 100 ms, until `done`
/// (checked before each read, so the last read sees everything written before).
fn follow_log(path: &Path, done: impl Fn() -> bool + Send + 'static) -> Result<BoxRead> {
    use std::io::Seek;
    let mut f = std::fs::File::open(path).map_err(io("open log", path))?;
    f.seek(std::io::SeekFrom::End(0))
        .map_err(io("seek log", path))?;
    let mut f = tokio::fs::File::from_std(f);
    let (mut w, r) = tokio::io::duplex(PIPE);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let finished = done();
            match f.read(&mut buf).await {
                Ok(0) if finished => break,
                Ok(0) => {
                    if reader_gone(&mut w).await {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(n) => {
                    if w.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = w.shutdown().await;
    });
    Ok(Box::pin(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn image_names_are_stripped_of_registry_tag_and_digest() {
        assert_eq!(image_base_name("agnhost"), "agnhost");
        assert_eq!(image_base_name("xkube/agnhost:latest"), "agnhost");
        assert_eq!(
            image_base_name("registry.k8s.io/e2e-test-images/agnhost:2.39"),
            "agnhost"
        );
        assert_eq!(image_base_name("localhost:5000/pause@sha256:abc"), "pause");
    }

    #[test]
    fn command_mapping_prefers_the_spec_then_known_images() {
        let x = Path::new("/usr/bin/xkube");
        assert_eq!(
            resolve_command("nginx", &s(&["sh", "-c"]), &s(&["echo hi"]), x).expect("command"),
            s(&["sh", "-c", "echo hi"])
        );
        assert_eq!(
            resolve_command(
                "xkube/agnhost",
                &[],
                &s(&["netexec", "--http-port=8080"]),
                x
            )
            .expect("agnhost"),
            s(&["/usr/bin/xkube", "agnhost", "--http-port=8080"])
        );
        assert_eq!(
            resolve_command("registry.k8s.io/pause:3.9", &[], &[], x).expect("pause"),
            s(&["/usr/bin/xkube", "pause"])
        );
        assert_eq!(
            resolve_command("busybox", &[], &s(&["sleep", "5"]), x).expect("args"),
            s(&["sleep", "5"])
        );
        assert_eq!(
            resolve_command("xkube/xkube:0.1.0", &[], &s(&["proxy", "-v"]), x).expect("xkube"),
            s(&["/usr/bin/xkube", "proxy", "-v"])
        );
        assert_eq!(
            resolve_command("xkube/xkube", &[], &[], x).expect("xkube"),
            s(&["/usr/bin/xkube", "agent"])
        );
        let err = resolve_command("nginx", &[], &[], x).expect_err("no entrypoint");
        assert_eq!(err.reason, "CreateContainerConfigError");
    }

    #[test]
    fn process_ids_round_trip_and_proc_stat_reads_ourselves() {
        assert_eq!(parse_id("process://42.1000"), Some((42, 1000)));
        assert_eq!(parse_id("docker://abc"), None);
        let me = std::process::id();
        let (start, state) = proc_stat(me).expect("our own stat");
        assert!(alive(me, start), "state {state}");
        assert!(
            !alive(me, start + 1),
            "another start time is another process"
        );
    }
}
