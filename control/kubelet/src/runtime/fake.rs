//! An in-memory runtime for tests: sandboxes and containers are records; a container whose
//! image is `fake/exit:<code>` exits at once with that code, `fake/missing` fails to pull,
//! anything else runs until stopped. Only hostNetwork pods (it has no network namespaces).
//!
//! Interactive streams, in a running container: `exec_stream` of `cat` copies stdin to stdout
//! and exits 0 at stdin's EOF; `sh -c 'exit N'` exits N; `false` exits 1; anything else prints
//! its command line (joined by spaces, and a newline) and exits 0. `attach` copies stdin (if
//! the container was started with `stdin`) to stdout until stdin ends; the attach's stderr is
//! empty; its `exit` is the container's exit code once it crashed or was stopped. Resizes are
//! recorded in [`FakeRuntime::resizes`].

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    BoxRead, BoxWrite, ContainerConfig, ContainerRuntime, ContainerStatus, ExecOutput, ImageInfo,
    Sandbox, SandboxConfig, StartError, StreamOptions, StreamSession, TermSize,
};
use crate::error::{Error, Result};

#[derive(Debug, Default)]
pub struct FakeRuntime {
    next: AtomicU32,
    containers: Arc<Mutex<HashMap<String, ContainerStatus>>>,
    /// Containers started with `stdin`.
    with_stdin: Mutex<std::collections::HashSet<String>>,
    sandboxes: Mutex<HashMap<String, bool>>,
    /// Every start, in order: (container name, attempt).
    pub started: Mutex<Vec<(String, u32)>>,
    /// Pulls asked for (images named `fake/pull...` are absent until pulled).
    pub pulls: std::sync::atomic::AtomicUsize,
    /// The image filesystem `image_fs` reports (none: no images); `remove_image` takes from
    /// it.
    pub image_fs: Mutex<Option<super::ImageFs>>,
    /// The most pulls that ran at once.
    pub max_parallel_pulls: std::sync::atomic::AtomicUsize,
    pulling: std::sync::atomic::AtomicUsize,
    pulled: Mutex<Vec<String>>,
    /// Every resize of an exec or attach on a TTY, in order: (container id, size).
    pub resizes: Arc<Mutex<Vec<(String, TermSize)>>>,
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes a running container exit with `code` (a crash).
    pub fn crash(&self, id: &str, code: i32) {
        if let Some(s) = self.lock().get_mut(id) {
            *s = ContainerStatus::Exited {
                exit_code: code,
                signal: None,
                finished_at: jiff::Timestamp::now(),
            };
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ContainerStatus>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ensure_running(&self, id: &str) -> Result<()> {
        match self.lock().get(id) {
            Some(ContainerStatus::Running) => Ok(()),
            Some(_) => Err(Error::Runtime(format!("container {id} is not running"))),
            None => Err(Error::NoSuchContainer(id.to_owned())),
        }
    }

    /// A resize channel recording the sizes for `id` (TTY sessions).
    fn resizer(&self, id: &str, tty: bool) -> Option<tokio::sync::mpsc::Sender<TermSize>> {
        tty.then(|| {
            let (tx, mut rx) = tokio::sync::mpsc::channel(8);
            let (log, id) = (self.resizes.clone(), id.to_owned());
            tokio::spawn(async move {
                while let Some(size) = rx.recv().await {
                    log.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((id.clone(), size));
                }
            });
            tx
        })
    }
}

/// `(stdin writer, stdout reader)` of a fake process, and a task copying its stdin (when
/// `echo`) and then `print` to its stdout; the task ends at stdin's EOF.
fn fake_process(echo: bool, print: Vec<u8>) -> (BoxWrite, BoxRead, tokio::task::JoinHandle<()>) {
    let (stdin_w, mut stdin_r) = tokio::io::duplex(64 * 1024);
    let (mut stdout_w, stdout_r) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        loop {
            match stdin_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                // A reader that went away does not stop the process (it would get SIGPIPE).
                Ok(n) if echo => {
                    let _ = stdout_w.write_all(&buf[..n]).await;
                }
                Ok(_) => {}
            }
        }
        let _ = stdout_w.write_all(&print).await;
        let _ = stdout_w.shutdown().await;
    });
    (Box::pin(stdin_w), Box::pin(stdout_r), task)
}

#[async_trait::async_trait]
impl ContainerRuntime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn version(&self) -> String {
        "fake://1".into()
    }

    fn pulls_images(&self) -> bool {
        true
    }

    /// Every image is there but `fake/missing` and `fake/pull...` ones (pulled on demand).
    async fn image_status(&self, image: &str) -> Result<Option<ImageInfo>, StartError> {
        let pulled = self.pulled.lock().unwrap_or_else(|e| e.into_inner());
        Ok((image != "fake/missing"
            && (!image.starts_with("fake/pull") || pulled.iter().any(|p| p == image)))
        .then(ImageInfo::default))
    }

    async fn image_fs(&self) -> Result<Option<super::ImageFs>> {
        Ok(self
            .image_fs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }

    async fn remove_image(&self, id: &str) -> Result<()> {
        let mut fs = self.image_fs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fs) = fs.as_mut()
            && let Some(i) = fs.images.iter().position(|i| i.id == id)
        {
            let img = fs.images.remove(i);
            fs.available += img.size;
        }
        Ok(())
    }

    async fn pull_image(
        &self,
        image: &str,
        _cred: Option<&crate::images::Credential>,
    ) -> Result<ImageInfo, StartError> {
        self.pulls.fetch_add(1, Ordering::SeqCst);
        if image == "fake/missing" {
            return Err(StartError {
                reason: "ErrImagePull",
                message: format!("image {image} not found"),
            });
        }
        let now = self.pulling.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_parallel_pulls.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.pulling.fetch_sub(1, Ordering::SeqCst);
        self.pulled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(image.to_owned());
        Ok(ImageInfo {
            id: format!("fake://{image}"),
            size: 1234,
        })
    }

    async fn run_sandbox(&self, cfg: &SandboxConfig) -> Result<Sandbox> {
        if !cfg.host_network {
            // There is no namespace to wire: refusing keeps veths out of the caller's own.
            return Err(Error::Runtime(
                "the fake runtime runs hostNetwork pods only".into(),
            ));
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("fake://sandbox-{n}");
        self.sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), true);
        Ok(Sandbox {
            id,
            pid: 0,
            start_time: u64::from(n),
            netns: PathBuf::from("/proc/self/ns/net"),
            host_network: cfg.host_network,
            cgroup: None,
        })
    }

    async fn sandbox_alive(&self, sb: &Sandbox) -> bool {
        self.sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&sb.id)
            .copied()
            .unwrap_or(false)
    }

    async fn stop_sandbox(&self, sb: &Sandbox) -> Result<()> {
        self.sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sb.id.clone(), false);
        Ok(())
    }

    async fn start_container(
        &self,
        _sb: &Sandbox,
        cfg: &ContainerConfig,
    ) -> Result<String, StartError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("fake://{}-{n}", cfg.name);
        let status = match cfg.image.strip_prefix("fake/exit:") {
            Some(code) => ContainerStatus::Exited {
                exit_code: code.parse().unwrap_or(1),
                signal: None,
                finished_at: jiff::Timestamp::now(),
            },
            None => ContainerStatus::Running,
        };
        self.lock().insert(id.clone(), status);
        if cfg.stdin {
            self.with_stdin
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone());
        }
        self.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((cfg.name.clone(), cfg.attempt));
        Ok(id)
    }

    async fn container_status(&self, id: &str) -> ContainerStatus {
        self.lock()
            .get(id)
            .cloned()
            .unwrap_or(ContainerStatus::Unknown)
    }

    async fn stop_container(&self, id: &str, _grace: Duration) -> Result<()> {
        match self.lock().get_mut(id) {
            Some(s) => {
                if *s == ContainerStatus::Running {
                    *s = ContainerStatus::Exited {
                        exit_code: 137,
                        signal: Some(9),
                        finished_at: jiff::Timestamp::now(),
                    };
                }
                Ok(())
            }
            None => Err(Error::NoSuchContainer(id.to_owned())),
        }
    }

    async fn exec(&self, id: &str, cmd: &[String], _timeout: Duration) -> Result<ExecOutput> {
        match self.lock().get(id) {
            Some(ContainerStatus::Running) => Ok(ExecOutput {
                exit_code: if cmd.first().map(String::as_str) == Some("false") {
                    1
                } else {
                    0
                },
                stdout: cmd.join(" ").into_bytes(),
                stderr: Vec::new(),
            }),
            _ => Err(Error::NoSuchContainer(id.to_owned())),
        }
    }

    async fn exec_stream(
        &self,
        id: &str,
        cmd: &[String],
        opts: StreamOptions,
    ) -> Result<StreamSession> {
        self.ensure_running(id)?;
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let (echo, print, code) = match args.as_slice() {
            ["cat"] => (true, Vec::new(), 0),
            ["sh", "-c", script] if script.trim().starts_with("exit") => {
                let n = script.trim()["exit".len()..].trim();
                (false, Vec::new(), n.parse().unwrap_or(0))
            }
            ["false"] => (false, Vec::new(), 1),
            _ => (false, format!("{}\n", cmd.join(" ")).into_bytes(), 0),
        };
        let (stdin, stdout, task) = fake_process(echo, print);
        // Without stdin, the process sees EOF at once.
        let stdin = opts.stdin.then_some(stdin);
        Ok(StreamSession {
            stdin,
            stdout: opts.stdout.then_some(stdout),
            stderr: (opts.stderr && !opts.tty).then(|| Box::pin(tokio::io::empty()) as BoxRead),
            resize: self.resizer(id, opts.tty),
            exit: async move {
                let _ = task.await;
                Ok(Some(code))
            }
            .boxed(),
            guard: None,
        })
    }

    async fn attach(&self, id: &str, opts: StreamOptions) -> Result<StreamSession> {
        self.ensure_running(id)?;
        let has_stdin = self
            .with_stdin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id);
        if opts.stdin && !has_stdin {
            return Err(Error::Runtime(format!(
                "container {id} is not started with stdin"
            )));
        }
        let (stdin, stdout, _task) = fake_process(true, Vec::new());
        let (containers, id_owned) = (self.containers.clone(), id.to_owned());
        let exit = async move {
            loop {
                let st = containers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&id_owned)
                    .cloned();
                match st {
                    Some(ContainerStatus::Running) => {}
                    Some(ContainerStatus::Exited { exit_code, .. }) => return Ok(Some(exit_code)),
                    _ => return Ok(None),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        Ok(StreamSession {
            stdin: opts.stdin.then_some(stdin),
            stdout: opts.stdout.then_some(stdout),
            stderr: (opts.stderr && !opts.tty).then(|| Box::pin(tokio::io::empty()) as BoxRead),
            resize: self.resizer(id, opts.tty),
            exit: exit.boxed(),
            guard: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn running(rt: &FakeRuntime, stdin: bool) -> String {
        let sb = rt
            .run_sandbox(&SandboxConfig {
                uid: "u".into(),
                name: "p".into(),
                namespace: "default".into(),
                hostname: "p".into(),
                host_network: true,
                host_netns: None,
                cgroup: None,
                pod_dir: PathBuf::from("/nonexistent"),
            })
            .await
            .expect("sandbox");
        let cfg = ContainerConfig {
            name: "c".into(),
            attempt: 0,
            image: "fake/run".into(),
            command: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            working_dir: None,
            mounts: Vec::new(),
            log_path: PathBuf::from("/nonexistent/0.log"),
            privileged: false,
            resources: Default::default(),
            stdin,
            stdin_once: false,
            tty: false,
        };
        rt.start_container(&sb, &cfg).await.expect("container")
    }

    fn all() -> StreamOptions {
        StreamOptions {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        }
    }

    fn cmd(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn exec_stream_cat_echoes_until_stdin_ends_and_exit_codes_follow_the_command() {
        let rt = FakeRuntime::new();
        let id = running(&rt, false).await;
        let mut s = rt
            .exec_stream(&id, &cmd(&["cat"]), all())
            .await
            .expect("exec");
        let mut w = s.stdin.take().expect("stdin");
        w.write_all(b"ping\n").await.expect("write");
        w.shutdown().await.expect("shutdown");
        let mut out = String::new();
        s.stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .await
            .expect("read");
        assert_eq!(out, "ping\n");
        assert_eq!(s.exit.await.expect("exit"), Some(0));

        let s = rt
            .exec_stream(&id, &cmd(&["sh", "-c", "exit 3"]), StreamOptions::default())
            .await
            .expect("exec");
        assert_eq!(s.exit.await.expect("exit"), Some(3));

        let mut s = rt
            .exec_stream(&id, &cmd(&["ls", "-l"]), all())
            .await
            .expect("exec");
        drop(s.stdin.take());
        let mut out = String::new();
        s.stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .await
            .expect("read");
        assert_eq!(out, "ls -l\n");
        assert_eq!(s.exit.await.expect("exit"), Some(0));
    }

    #[tokio::test]
    async fn attach_echoes_stdin_ends_with_the_container_and_needs_stdin() {
        let rt = FakeRuntime::new();
        let plain = running(&rt, false).await;
        let err = rt.attach(&plain, all()).await.expect_err("no stdin");
        assert!(err.to_string().contains("not started with stdin"), "{err}");

        let id = running(&rt, true).await;
        let tty = StreamOptions {
            stderr: false,
            tty: true,
            ..all()
        };
        let mut s = rt.attach(&id, tty).await.expect("attach");
        s.resize
            .as_ref()
            .expect("resize on a tty")
            .send(TermSize {
                width: 100,
                height: 40,
            })
            .await
            .expect("resize");
        let mut w = s.stdin.take().expect("stdin");
        w.write_all(b"hello").await.expect("write");
        let mut got = [0u8; 5];
        s.stdout
            .as_mut()
            .expect("stdout")
            .read_exact(&mut got)
            .await
            .expect("read");
        assert_eq!(&got, b"hello");
        rt.crash(&id, 7);
        assert_eq!(s.exit.await.expect("exit"), Some(7));
        for _ in 0..100 {
            if !rt.resizes.lock().expect("lock").is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let resizes = rt.resizes.lock().expect("lock").clone();
        assert_eq!(
            resizes,
            [(
                id.clone(),
                TermSize {
                    width: 100,
                    height: 40
                }
            )]
        );
        assert!(rt.attach(&id, all()).await.is_err(), "exited: no attach");
    }
}
