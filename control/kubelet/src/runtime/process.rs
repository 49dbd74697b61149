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

use std::{
    collections::HashMap,
    ffi::CString,
    os::{
        fd::{AsRawFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::process::Command;

use super::{
    ContainerConfig, ContainerRuntime, ContainerStatus, ExecOutput, Sandbox, SandboxConfig,
    StartError,
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
}

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
                "image {image:?} has no entrypoint in the process runtime: set command (or use an agnhost/pause image)"
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
            exits
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, (code, signal, jiff::Timestamp::now()));
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

/// The `start_container` work, with ordinary errors.
fn prepare_container(
    sb: &Sandbox,
    cfg: &ContainerConfig,
    argv: &[String],
) -> Result<(Command, Vec<std::fs::File>)> {
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
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2);
    for (k, v) in &cfg.env {
        cmd.env(k, v);
    }
    setup.install(&mut cmd);
    Ok((cmd, keep))
}

#[async_trait::async_trait]
impl ContainerRuntime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn version(&self) -> String {
        format!("process://{}", env!("CARGO_PKG_VERSION"))
    }

    async fn pull_image(&self, _image: &str) -> Result<String, StartError> {
        Ok(String::new())
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
        let (mut cmd, keep) = prepare_container(sb, cfg, &argv).map_err(run_err)?;
        let child = cmd.spawn().map_err(|e| StartError {
            reason: "RunContainerError",
            message: format!("starting {:?}: {e}", argv[0]),
        })?;
        drop(keep);
        let (pid, _, id) = Self::spawned_id(&child).map_err(run_err)?;
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
        setup.install(&mut c);
        let out = tokio::time::timeout(timeout, c.output())
            .await
            .map_err(|_| Error::Runtime(format!("exec in {id} timed out after {timeout:?}")))?
            .map_err(io("exec", prog))?;
        drop(keep);
        use std::os::unix::process::ExitStatusExt;
        Ok(ExecOutput {
            exit_code: out
                .status
                .code()
                .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(127)),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
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
