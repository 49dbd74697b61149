//! Interactive streams of the runtimes (`kubectl exec -i/-t`, `kubectl attach`), run as root:
//! `exec_stream` on pipes and on a real pty (echo, exit codes, `tty`, resizes), and `attach` to
//! a container's own terminal and to a plain container's output. The process runtime runs in
//! a sandbox of its own and through a kubelet (the pod spec's `stdin`/`stdinOnce`/`tty`); the
//! docker runtime against a dockerd the test starts, as in `tests/docker.rs`.

mod common;

use std::{path::PathBuf, sync::Arc, time::Duration};

use common::{Cluster, dockerd::Dockerd, phase};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xkube_cluster::docker;
use xkube_kubelet::{
    ContainerRuntime,
    runtime::{
        BoxRead, ContainerConfig, Sandbox, SandboxConfig, StreamOptions, StreamSession, TermSize,
        docker::DockerRuntime, process::ProcessRuntime,
    },
};

const WAIT: Duration = Duration::from_secs(20);

fn cmd(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn opts(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> StreamOptions {
    StreamOptions {
        stdin,
        stdout,
        stderr,
        tty,
    }
}

/// Reads `r` until what was read contains `needle`; returns all of it.
async fn read_until(r: &mut BoxRead, needle: &str, what: &str) -> String {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if text.contains(needle) {
            return text;
        }
        match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Ok(Ok(0)) => panic!("{what}: end of output before {needle:?}; got {text:?}"),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("{what}: read error {e} before {needle:?}; got {text:?}"),
            Err(_) => panic!("{what}: no {needle:?} within {WAIT:?}; got {text:?}"),
        }
    }
}

async fn read_to_end(r: &mut BoxRead, what: &str) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, r.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| panic!("{what}: output did not end within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: read error {e}"));
    String::from_utf8_lossy(&out).into_owned()
}

async fn exit_of(s: StreamSession, what: &str) -> Option<i32> {
    tokio::time::timeout(WAIT, s.exit)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not end within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn take_out(s: &mut StreamSession, what: &str) -> BoxRead {
    s.stdout
        .take()
        .unwrap_or_else(|| panic!("{what}: no stdout"))
}

/// `cat` echoes stdin, and ends with 0 once stdin is shut down.
async fn check_cat(rt: &dyn ContainerRuntime, id: &str, what: &str) {
    let mut s = rt
        .exec_stream(id, &cmd(&["cat"]), opts(true, true, true, false))
        .await
        .unwrap_or_else(|e| panic!("{what}: exec cat: {e}"));
    assert!(s.resize.is_none(), "{what}: no resize without a tty");
    let mut out = take_out(&mut s, what);
    let mut stdin = s.stdin.take().expect("stdin asked for");
    stdin.write_all(b"hello streams\n").await.expect("write");
    stdin.flush().await.expect("flush");
    read_until(&mut out, "hello streams\n", what).await;
    stdin.write_all(b"second line\n").await.expect("write");
    stdin.shutdown().await.expect("shutdown stdin");
    assert_eq!(read_to_end(&mut out, what).await, "second line\n", "{what}");
    assert_eq!(
        exit_of(s, what).await,
        Some(0),
        "{what}: cat exits 0 at EOF"
    );
}

/// Exit codes, and stdout and stderr apart.
async fn check_exit_codes(rt: &dyn ContainerRuntime, id: &str, what: &str) {
    let s = rt
        .exec_stream(
            id,
            &cmd(&["sh", "-c", "exit 3"]),
            opts(false, true, true, false),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: exec: {e}"));
    assert_eq!(exit_of(s, what).await, Some(3), "{what}");
    let script = "echo out; echo err >&2; exit 4";
    let mut s = rt
        .exec_stream(
            id,
            &cmd(&["sh", "-c", script]),
            opts(false, true, true, false),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: exec: {e}"));
    assert!(s.stdin.is_none(), "{what}: stdin was not asked for");
    let mut out = take_out(&mut s, what);
    let mut err = s.stderr.take().expect("stderr asked for");
    assert_eq!(read_to_end(&mut out, what).await, "out\n", "{what}: stdout");
    assert_eq!(read_to_end(&mut err, what).await, "err\n", "{what}: stderr");
    assert_eq!(exit_of(s, what).await, Some(4), "{what}");
}

/// Runs `line` in the shell behind `stdin`/`out` and returns what the terminal showed until
/// the marker its last command prints (typed as `E""ND`, so the echo of the line is not it).
async fn shell(
    stdin: &mut xkube_kubelet::runtime::BoxWrite,
    out: &mut BoxRead,
    line: &str,
) -> String {
    let marker = "END-OF-COMMAND";
    let typed = format!("{line}; echo END-OF-\"\"COMMAND\n");
    stdin.write_all(typed.as_bytes()).await.expect("type");
    let seen = read_until(out, marker, line).await;
    // What follows the marker (a prompt, the line end) comes with the next command.
    seen.split(marker).next().unwrap_or_default().to_owned()
}

/// Resizes and asks `stty size` until the terminal reports 40 rows and 100 columns (the
/// resize is applied by a task, after the send returns).
async fn check_resize(
    s: &StreamSession,
    stdin: &mut xkube_kubelet::runtime::BoxWrite,
    out: &mut BoxRead,
    what: &str,
) {
    let resize = s.resize.as_ref().expect("resize on a tty");
    resize
        .send(TermSize {
            width: 100,
            height: 40,
        })
        .await
        .expect("resize");
    let mut last = String::new();
    for _ in 0..50 {
        last = shell(stdin, out, "stty size").await;
        if last.contains("40 100") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: stty size never reported 40 100; last: {last:?}");
}

/// `sh` on a pty: a terminal (`tty` names a /dev/pts device, output lines end in `\r\n`),
/// resizes, and the exit code of `exit 3`.
async fn check_tty_exec(rt: &dyn ContainerRuntime, id: &str, what: &str) {
    let mut s = rt
        .exec_stream(id, &cmd(&["sh"]), opts(true, true, false, true))
        .await
        .unwrap_or_else(|e| panic!("{what}: exec sh -t: {e}"));
    assert!(s.stderr.is_none(), "{what}: a terminal has no stderr");
    let mut out = take_out(&mut s, what);
    let mut stdin = s.stdin.take().expect("stdin asked for");
    let seen = shell(&mut stdin, &mut out, "tty").await;
    assert!(seen.contains("/dev/pts/"), "{what}: tty says {seen:?}");
    check_resize(&s, &mut stdin, &mut out, what).await;
    // `h""i` prints `hi`, which the echo of the typed line does not contain.
    stdin
        .write_all(b"echo h\"\"i; exit 3\n")
        .await
        .expect("type");
    read_until(&mut out, "hi\r\n", what).await;
    // The output ends (EIO on the master is the end, not an error) and the code is 3.
    read_to_end(&mut out, what).await;
    assert_eq!(exit_of(s, what).await, Some(3), "{what}");
}

/// Attach to a container running `sh` on a terminal with stdin: typing runs commands, resizes
/// apply, and `exit 5` ends the attach with the container's code.
async fn check_tty_attach(rt: &dyn ContainerRuntime, id: &str, what: &str) {
    let mut s = rt
        .attach(id, opts(true, true, false, true))
        .await
        .unwrap_or_else(|e| panic!("{what}: attach: {e}"));
    let mut out = take_out(&mut s, what);
    let mut stdin = s.stdin.take().expect("stdin asked for");
    let seen = shell(&mut stdin, &mut out, "echo $((6*7))").await;
    assert!(seen.contains("42\r\n"), "{what}: {seen:?}");
    check_resize(&s, &mut stdin, &mut out, what).await;
    stdin.write_all(b"exit 5\n").await.expect("type");
    assert_eq!(exit_of(s, what).await, Some(5), "{what}");
}

/// Attach to a container printing `tick-<n>` lines: its output from now on, not its history.
async fn check_plain_attach(rt: &dyn ContainerRuntime, id: &str, log: &std::path::Path) {
    let what = "attach to a plain container";
    for _ in 0..200 {
        if std::fs::read_to_string(log).is_ok_and(|l| l.contains("tick-5\n")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = rt
        .attach(id, opts(true, true, true, false))
        .await
        .expect_err("stdin of a container without stdin");
    assert!(
        err.to_string().contains("is not started with stdin"),
        "{what}: {err}"
    );
    let mut s = rt
        .attach(id, opts(false, true, true, false))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut out = take_out(&mut s, what);
    let seen = read_until(&mut out, "\ntick-", what).await;
    let seen = read_until_lines(&mut out, seen, 3, what).await;
    // The first line may be cut; the whole ones after it are new.
    let numbers: Vec<u32> = seen
        .lines()
        .skip(1)
        .filter_map(|l| l.strip_prefix("tick-")?.parse().ok())
        .collect();
    assert!(
        numbers.len() >= 2 && numbers.iter().all(|n| *n >= 5),
        "{what}: {seen:?}"
    );
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "{what}: consecutive lines {seen:?}"
    );
    drop(out);
    drop(s);
}

async fn read_until_lines(r: &mut BoxRead, mut seen: String, n: usize, what: &str) -> String {
    let mut buf = [0u8; 4096];
    while seen.matches('\n').count() < n {
        match tokio::time::timeout(WAIT, r.read(&mut buf)).await {
            Ok(Ok(k)) if k > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..k])),
            other => panic!("{what}: output ended ({other:?}) after {seen:?}"),
        }
    }
    seen
}

const TICKER: &str = "i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.1; done";

/// A sandbox of the process runtime with containers; kills what it started when dropped.
struct ProcPod {
    rt: Arc<ProcessRuntime>,
    sb: Sandbox,
    ids: Vec<String>,
    dir: tempfile::TempDir,
}

impl ProcPod {
    async fn start() -> Self {
        common::assert_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = Arc::new(ProcessRuntime::new(
            cmd(&["sleep", "infinity"]),
            PathBuf::from("/nonexistent/xkube"),
        ));
        let sb = rt
            .run_sandbox(&SandboxConfig {
                uid: "streams".into(),
                name: "streams".into(),
                namespace: "default".into(),
                hostname: "streams".into(),
                host_network: false,
                host_netns: None,
                cgroup: None,
                pod_dir: dir.path().to_owned(),
            })
            .await
            .expect("sandbox starts");
        Self {
            rt,
            sb,
            ids: Vec::new(),
            dir,
        }
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(name).join("0.log")
    }

    async fn container(&mut self, name: &str, command: &[&str]) -> String {
        let id = self
            .rt
            .start_container(&self.sb, &config(name, command, self.log(name)))
            .await
            .unwrap_or_else(|e| panic!("container {name} starts: {e:?}"));
        self.ids.push(id.clone());
        id
    }
}

impl Drop for ProcPod {
    fn drop(&mut self) {
        let pids = self
            .ids
            .iter()
            .chain(std::iter::once(&self.sb.id))
            .filter_map(|id| {
                id.strip_prefix("process://")?
                    .split('.')
                    .next()?
                    .parse()
                    .ok()
            });
        for pid in pids {
            let pid: libc::pid_t = pid;
            // SAFETY: kill(2) of the process groups this test started (each is a session).
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn config(name: &str, command: &[&str], log_path: PathBuf) -> ContainerConfig {
    ContainerConfig {
        name: name.into(),
        attempt: 0,
        image: "xkube/tools".into(),
        command: cmd(command),
        args: Vec::new(),
        env: vec![("STREAMS".into(), "1".into())],
        working_dir: None,
        mounts: Vec::new(),
        log_path,
        privileged: false,
        resources: Default::default(),
        stdin: false,
        stdin_once: false,
        tty: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_exec_stream_echoes_stdin_reports_exit_codes_and_runs_on_a_real_pty() {
    let mut pod = ProcPod::start().await;
    let id = pod.container("idle", &["sleep", "infinity"]).await;
    check_cat(pod.rt.as_ref(), &id, "process exec cat").await;
    check_exit_codes(pod.rt.as_ref(), &id, "process exec exit codes").await;
    check_tty_exec(pod.rt.as_ref(), &id, "process exec -t sh").await;
    // The exec had the container's environment.
    let mut s = pod
        .rt
        .exec_stream(
            &id,
            &cmd(&["sh", "-c", "echo $STREAMS"]),
            opts(false, true, false, false),
        )
        .await
        .expect("exec");
    let mut out = take_out(&mut s, "env");
    assert_eq!(read_to_end(&mut out, "env").await, "1\n");
    assert_eq!(exit_of(s, "env").await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_attach_to_a_plain_container_follows_its_new_output_until_it_exits() {
    let mut pod = ProcPod::start().await;
    let id = pod.container("ticker", &["sh", "-c", TICKER]).await;
    let log = pod.log("ticker");
    check_plain_attach(pod.rt.as_ref(), &id, &log).await;
    // Two attaches at once; both end with the container, with its code (SIGTERM: 143).
    let mut a = pod
        .rt
        .attach(&id, opts(false, true, false, false))
        .await
        .expect("attach");
    let mut b = pod
        .rt
        .attach(&id, opts(false, true, false, false))
        .await
        .expect("attach");
    let (mut ra, mut rb) = (take_out(&mut a, "a"), take_out(&mut b, "b"));
    read_until(&mut ra, "tick-", "first attach").await;
    read_until(&mut rb, "tick-", "second attach").await;
    pod.rt
        .stop_container(&id, Duration::from_secs(5))
        .await
        .expect("stop");
    read_to_end(&mut ra, "first attach").await;
    assert_eq!(exit_of(a, "first attach").await, Some(143));
    assert_eq!(exit_of(b, "second attach").await, Some(143));
    assert!(
        pod.rt
            .attach(&id, opts(false, true, false, false))
            .await
            .is_err(),
        "no attach to an exited container"
    );
}

/// Through a kubelet: the pod spec's `stdin`, `stdinOnce` and `tty` reach the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_attach_to_pods_with_tty_and_stdin_once_from_the_spec() {
    let rt = Arc::new(ProcessRuntime::new(
        cmd(&["sleep", "infinity"]),
        PathBuf::from("/nonexistent/xkube"),
    ));
    let rt2: Arc<dyn ContainerRuntime> = rt.clone();
    let c = Cluster::start_custom(1, |_| {}, move |_| Some(rt2.clone())).await;
    c.create_pod(
        0,
        json!({
            "metadata": {"name": "term"},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [
                {"name": "c", "image": "busybox", "command": ["sh"], "stdin": true, "tty": true}]},
        }),
    )
    .await;
    c.create_pod(
        0,
        json!({
            "metadata": {"name": "once"},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [
                {"name": "c", "image": "busybox", "command": ["cat"], "stdin": true,
                 "stdinOnce": true}]},
        }),
    )
    .await;
    let id_of = |p: &k8s_openapi::api::core::v1::Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.first()?.container_id.clone())
            .expect("container id")
    };
    let term = id_of(&c.wait_running("term").await);
    // The shell's prompt shows the container has a terminal (sh is interactive on one).
    let mut s = rt
        .attach(&term, opts(false, true, false, true))
        .await
        .expect("attach without stdin");
    let mut watcher = take_out(&mut s, "watcher");
    check_tty_attach(rt.as_ref(), &term, "process attach -it sh").await;
    // The other attach saw the same terminal output, and ended with the container.
    read_until(&mut watcher, "42\r\n", "second attach").await;
    assert_eq!(exit_of(s, "second attach").await, Some(5));
    // The terminal's output went to the log too.
    c.wait_log(0, "term", "c", "42").await;
    c.wait_pod("term", "Failed", |p| phase(p) == "Failed").await;

    // stdinOnce: the first attach with stdin closes cat's stdin when it ends.
    let once = id_of(&c.wait_running("once").await);
    let mut s = rt
        .attach(&once, opts(true, true, true, false))
        .await
        .expect("attach");
    let mut out = take_out(&mut s, "stdin once");
    let mut stdin = s.stdin.take().expect("stdin");
    stdin.write_all(b"through the pipe\n").await.expect("write");
    read_until(&mut out, "through the pipe\n", "stdin once (log followed)").await;
    stdin.shutdown().await.expect("end stdin");
    assert_eq!(exit_of(s, "stdin once").await, Some(0), "cat saw EOF");
    c.wait_pod("once", "Succeeded", |p| phase(p) == "Succeeded")
        .await;
    for n in ["term", "once"] {
        c.pods("default")
            .delete(n, &Default::default())
            .await
            .expect("delete");
    }
    for n in ["term", "once"] {
        c.wait_gone(n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_exec_stream_and_attach() {
    let (dockerd, docker) = Dockerd::start("ks").await;
    let tar = docker::rootfs_tar(None, dockerd.dir.path()).expect("image root");
    for repo in ["xkube/pause", "xkube/tools"] {
        docker::import_rootfs(&docker, &tar, repo)
            .await
            .expect("image imported");
    }
    let rt = DockerRuntime::connect(
        &dockerd.engine.socket.to_string_lossy(),
        "xkube/pause:latest",
    )
    .await
    .expect("docker runtime connects");
    let pod_dir = dockerd.dir.path().join("pod");
    let sb = rt
        .run_sandbox(&SandboxConfig {
            uid: "streams".into(),
            name: "streams".into(),
            namespace: "default".into(),
            hostname: "streams".into(),
            host_network: false,
            host_netns: None,
            cgroup: None,
            pod_dir: pod_dir.clone(),
        })
        .await
        .expect("pause container");
    let log = |n: &str| pod_dir.join("logs").join(n).join("0.log");
    let idle = rt
        .start_container(&sb, &config("idle", &["sleep", "3600"], log("idle")))
        .await
        .expect("idle container");
    let mut term_cfg = config("term", &["sh"], log("term"));
    (term_cfg.stdin, term_cfg.tty) = (true, true);
    let term = rt
        .start_container(&sb, &term_cfg)
        .await
        .expect("terminal container");
    let ticker = rt
        .start_container(&sb, &config("ticker", &["sh", "-c", TICKER], log("ticker")))
        .await
        .expect("ticker container");

    check_cat(&rt, &idle, "docker exec cat").await;
    check_exit_codes(&rt, &idle, "docker exec exit codes").await;
    check_tty_exec(&rt, &idle, "docker exec -t sh").await;
    check_tty_attach(&rt, &term, "docker attach -it sh").await;
    check_plain_attach(&rt, &ticker, &log("ticker")).await;
    let mut a = rt
        .attach(&ticker, opts(false, true, true, false))
        .await
        .expect("attach");
    let mut out = take_out(&mut a, "docker ticker");
    read_until(&mut out, "tick-", "docker ticker").await;
    // sh is the container's pid 1, which SIGTERM does not end: Docker kills it after 1 s.
    rt.stop_container(&ticker, Duration::from_secs(1))
        .await
        .expect("stop");
    read_to_end(&mut out, "docker ticker").await;
    assert_eq!(exit_of(a, "docker ticker").await, Some(137));

    rt.stop_sandbox(&sb)
        .await
        .expect("remove the pod's containers");
    drop(dockerd);
}
