//! kubectl's everyday streaming workflows on a real cluster, as a user types them: `exec -it`
//! through a pseudo-terminal, `exec -i` with piped stdin, exit codes, `attach -it`,
//! `port-forward` (100 sequential and 10 concurrent HTTP requests from 127.0.0.1), `cp` of a
//! 10 MiB file both ways, and the official Python client's exec/port-forward calls. Run from
//! the seed scenarios, once per runtime.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xkube_e2e::Cluster;

/// A command on a fresh pseudo-terminal (its controlling terminal); the test holds the master.
pub struct OnPty {
    child: Child,
    master: std::fs::File,
    /// Everything the terminal showed so far.
    seen: Vec<u8>,
}

impl OnPty {
    pub fn spawn(mut cmd: Command) -> Self {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let slave: OwnedFd = pty.slave;
        let fd = slave.as_raw_fd();
        cmd.stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if libc_ioctl_sctty(fd) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn on pty");
        drop(cmd);
        OnPty {
            child,
            master: std::fs::File::from(pty.master),
            seen: Vec::new(),
        }
    }

    pub fn write(&mut self, s: &str) {
        self.master.write_all(s.as_bytes()).expect("write to pty");
    }

    /// Reads the terminal until `want` appears: everything shown so far, or `Err` with it
    /// after `timeout`.
    pub fn try_expect(&mut self, want: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let fd = self.master.as_raw_fd();
        while Instant::now() < deadline {
            let mut pfd = [nix::poll::PollFd::new(
                // SAFETY: `fd` is the master, open for as long as `self`.
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
                nix::poll::PollFlags::POLLIN,
            )];
            let n = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(200u16)).unwrap_or(0);
            if n > 0 {
                let mut buf = [0u8; 4096];
                match self.master.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => self.seen.extend_from_slice(&buf[..k]),
                }
            }
            if String::from_utf8_lossy(&self.seen).contains(want) {
                return Ok(String::from_utf8_lossy(&self.seen).into_owned());
            }
        }
        Err(String::from_utf8_lossy(&self.seen).into_owned())
    }

    /// [`Self::try_expect`] that panics with what the terminal showed.
    pub fn expect(&mut self, want: &str, timeout: Duration) -> String {
        self.try_expect(want, timeout).unwrap_or_else(|seen| {
            panic!("{want:?} did not appear on the terminal within {timeout:?}; it showed {seen:?}")
        })
    }

    /// Waits for the command to end (bounded), draining the terminal; its exit code.
    pub fn wait(mut self, timeout: Duration) -> (i32, String) {
        let deadline = Instant::now() + timeout;
        let mut seen = std::mem::take(&mut self.seen);
        let _ = nix::fcntl::fcntl(
            self.master.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        loop {
            let mut buf = [0u8; 4096];
            if let Ok(k) = self.master.read(&mut buf) {
                seen.extend_from_slice(&buf[..k]);
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return (
                    st.code().unwrap_or(-1),
                    String::from_utf8_lossy(&seen).into_owned(),
                );
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the command did not end within {timeout:?}; the terminal showed {:?}",
                    String::from_utf8_lossy(&seen)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OnPty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn libc_ioctl_sctty(fd: i32) -> i32 {
    nix::ioctl_write_int_bad!(tiocsctty, nix::libc::TIOCSCTTY);
    // SAFETY: TIOCSCTTY on the pty slave fd, argument 0 (do not steal).
    match unsafe { tiocsctty(fd, 0) } {
        Ok(_) => 0,
        Err(_) => -1,
    }
}

fn kubectl_cmd(c: &Cluster, args: &[&str]) -> Command {
    let mut cmd = Command::new("/usr/bin/kubectl");
    cmd.arg("--kubeconfig").arg(&c.kubeconfig).args(args);
    cmd
}

/// Everything, against the running pod `pod` (agnhost netexec on port 80).
pub fn kubectl_workflows(c: &Cluster, pod: &str, runtime: &str) {
    exec_interactive(c, pod);
    exec_with_stdin_and_exit_codes(c, pod);
    port_forward(c, pod);
    copy_both_ways(c, pod, runtime);
    attach(c);
    python_client(c, pod);
    xkubectl(c, pod);
    explain_and_strict_validation(c);
}

/// `kubectl explain` from the cluster's OpenAPI, and `apply --validate=strict` refusing an
/// unknown field with the server's field path (nothing created).
fn explain_and_strict_validation(c: &Cluster) {
    let out = c.kubectl_ok(&["explain", "pod.spec.containers.ports"]);
    for want in [
        "FIELD: ports <[]ContainerPort>",
        "containerPort\t<integer> -required-",
        "Number of port to expose on the pod's IP address.",
    ] {
        assert!(out.contains(want), "explain lacks {want:?}:\n{out}");
    }
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata: {name: strict}\nspec:\n  containers:\n  - {name: c, image: busybox, bogus: 1}\n";
    let out = c.kubectl_stdin(&["apply", "--validate=strict", "-f", "-"], Some(manifest));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "strict apply succeeded: {err}");
    assert!(
        err.contains(r#"strict decoding error: unknown field "spec.containers[0].bogus""#),
        "{err}"
    );
    let out = c.kubectl(&["get", "pod", "strict"]);
    assert!(!out.status.success(), "the refused pod exists");
}

/// `kubectl exec -it` on a terminal: typing `echo hi; exit 3` shows `hi`, kubectl exits 3;
/// the shell runs on a terminal of its own that follows the local window size.
fn exec_interactive(c: &Cluster, pod: &str) {
    let mut t = OnPty::spawn(kubectl_cmd(c, &["exec", "-it", pod, "--", "sh"]));
    t.write("tty; stty size\n");
    let shown = t.expect("/dev/pts/", Duration::from_secs(30));
    println!("exec -it terminal: {shown:?}");
    t.write("echo hi; exit 3\n");
    let (code, rest) = t.wait(Duration::from_secs(30));
    assert!(rest.contains("hi"), "no `hi` on the terminal: {rest:?}");
    assert_eq!(code, 3, "kubectl exec -it exit code; terminal: {rest:?}");
}

fn exec_with_stdin_and_exit_codes(c: &Cluster, pod: &str) {
    let text = "hello from stdin\nsecond line\n";
    let out = c.kubectl_stdin(&["exec", "-i", pod, "--", "cat"], Some(text));
    assert!(
        out.status.success(),
        "exec -i cat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), text);
    let out = c.kubectl(&[
        "exec",
        pod,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("err"),
        "{out:?}"
    );
    let out = c.kubectl(&["exec", pod, "--", "no-such-command"]);
    assert!(!out.status.success(), "{out:?}");
}

/// One HTTP/1.0 GET to 127.0.0.1:port; the body of a 200.
fn local_get(port: u16, path: &str) -> std::io::Result<String> {
    xkube_e2e::http_get_here(
        std::net::SocketAddrV4::new([127, 0, 0, 1].into(), port),
        path,
        Duration::from_secs(10),
    )
}

/// `kubectl port-forward pod :80`: 100 sequential then 10 concurrent requests.
fn port_forward(c: &Cluster, pod: &str) {
    let mut child = kubectl_cmd(c, &["port-forward", pod, ":80"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl port-forward");
    let mut out = child.stdout.take().expect("stdout");
    let mut line = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    // "Forwarding from 127.0.0.1:PORT -> 80"
    let port = loop {
        let mut b = [0u8; 1];
        if Instant::now() > deadline || out.read(&mut b).unwrap_or(0) == 0 {
            let _ = child.kill();
            let o = child.wait_with_output().expect("port-forward output");
            panic!(
                "kubectl port-forward printed no port: {:?} {}",
                String::from_utf8_lossy(&line),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        if b[0] != b'\n' {
            line.push(b[0]);
            continue;
        }
        let l = String::from_utf8_lossy(&line).into_owned();
        line.clear();
        if let Some(rest) = l.strip_prefix("Forwarding from 127.0.0.1:")
            && let Some(p) = rest.split(' ').next().and_then(|p| p.parse::<u16>().ok())
        {
            break p;
        }
    };
    // Keep reading kubectl's "Handling connection" lines so its pipe never fills.
    let drain = std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink);
    });
    let want = c
        .kubectl_ok(&["exec", pod, "--", "hostname"])
        .trim()
        .to_owned();
    let start = Instant::now();
    for i in 0..100 {
        let body = local_get(port, "/hostname")
            .unwrap_or_else(|e| panic!("sequential request {i} through port-forward: {e}"));
        assert_eq!(body.trim(), want);
    }
    let sequential = start.elapsed();
    let start = Instant::now();
    let handles: Vec<_> = (0..10)
        .map(|i| {
            std::thread::spawn(move || {
                local_get(port, "/hostname")
                    .unwrap_or_else(|e| panic!("concurrent request {i} through port-forward: {e}"))
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("request thread").trim(), want);
    }
    println!(
        "port-forward: 100 sequential requests in {sequential:?}, 10 concurrent in {:?}",
        start.elapsed()
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = drain.join();
}

/// `kubectl cp` of 10 MiB of random bytes into the pod and back, byte for byte.
fn copy_both_ways(c: &Cluster, pod: &str, runtime: &str) {
    let dir = c.data_root.join("cp");
    std::fs::create_dir_all(&dir).expect("cp dir");
    let src = dir.join("big.bin");
    let data: Vec<u8> = (0..10 * 1024 * 1024)
        .map(|_| rand::random::<u8>())
        .collect();
    std::fs::write(&src, &data).expect("write big.bin");
    // The process runtime's containers see the node's filesystem: a unique name.
    let remote = format!("/tmp/xkube-cp-{}-{}.bin", c.name, runtime);
    let start = Instant::now();
    c.kubectl_ok(&[
        "cp",
        src.to_str().expect("path"),
        &format!("{pod}:{remote}"),
    ]);
    let up = start.elapsed();
    let back = dir.join("back.bin");
    let start = Instant::now();
    c.kubectl_ok(&[
        "cp",
        &format!("{pod}:{remote}"),
        back.to_str().expect("path"),
    ]);
    let down = start.elapsed();
    let got = std::fs::read(&back).expect("read back.bin");
    assert_eq!(got.len(), data.len(), "size after the round trip");
    assert!(got == data, "10 MiB changed on the round trip");
    println!("kubectl cp 10 MiB: into the pod {up:?}, back {down:?}");
    c.kubectl_ok(&["exec", pod, "--", "rm", "-f", &remote]);
}

/// `kubectl attach -it` to a container started with stdin and a TTY.
fn attach(c: &Cluster) {
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: shell}
spec:
  restartPolicy: Never
  containers:
  - name: shell
    image: xkube/agnhost:0.1.0
    command: ["sh"]
    stdin: true
    tty: true
"#,
    );
    c.wait("pod shell Running", Duration::from_secs(60), || {
        (c.get_json(&["pod", "shell"])["status"]["phase"] == "Running").then_some(())
    });
    let mut t = OnPty::spawn(kubectl_cmd(c, &["attach", "-it", "shell"]));
    // The prompt may have been printed before we attached: type until the answer shows.
    let mut shown = String::new();
    for _ in 0..10 {
        t.write("echo attached-$((6*7))\n");
        match t.try_expect("attached-42", Duration::from_secs(3)) {
            Ok(s) => {
                shown = s;
                break;
            }
            Err(s) => shown = s,
        }
    }
    assert!(shown.contains("attached-42"), "attach -it showed {shown:?}");
    t.write("exit 0\n");
    let (code, rest) = t.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "kubectl attach after the shell exited: {rest:?}");
    c.wait("pod shell Succeeded", Duration::from_secs(60), || {
        (c.get_json(&["pod", "shell"])["status"]["phase"] == "Succeeded").then_some(())
    });
    c.kubectl_ok(&["delete", "pod", "shell", "--wait=false"]);
}

/// The official Python client's exec and port-forward calls (tests/py/streams.py).
fn python_client(c: &Cluster, pod: &str) {
    let python = std::env::var("XKUBE_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/streams.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(pod)
        .env("KUBECONFIG", &c.kubeconfig)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "the Python client's streaming calls failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The same workflows with `xkubectl` (the client side of the kubelet's protocol code).
fn xkubectl(c: &Cluster, pod: &str) {
    let bin = xkube_e2e::bin_dir().join("xkubectl");
    let run = |args: &[&str], stdin: Option<&[u8]>| -> std::process::Output {
        let mut child = Command::new(&bin)
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(data).expect("xkubectl stdin");
        }
        child.wait_with_output().expect("xkubectl")
    };
    let out = run(&["exec", "-i", pod, "--", "cat"], Some(b"via xkubectl\n"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via xkubectl\n");
    let out = run(&["exec", pod, "--", "sh", "-c", "exit 5"], None);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    // A terminal: the shell sees one and the exit code comes back.
    let mut cmd = Command::new(&bin);
    cmd.arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["exec", "-it", pod, "--", "sh"]);
    let mut t = OnPty::spawn(cmd);
    t.write("tty; exit 4\n");
    let (code, shown) = t.wait(Duration::from_secs(30));
    assert!(shown.contains("/dev/pts/"), "{shown:?}");
    assert_eq!(code, 4, "{shown:?}");
    // cp both ways.
    let dir = c.data_root.join("xcp");
    std::fs::create_dir_all(&dir).expect("dir");
    let data: Vec<u8> = (0..1024 * 1024).map(|_| rand::random::<u8>()).collect();
    std::fs::write(dir.join("one.bin"), &data).expect("write");
    let remote = format!("{pod}:/tmp/xkube-xcp-{}.bin", c.name);
    let src = dir.join("one.bin");
    let out = run(&["cp", src.to_str().expect("path"), &remote], None);
    assert!(out.status.success(), "{out:?}");
    let back = dir.join("back.bin");
    let out = run(&["cp", &remote, back.to_str().expect("path")], None);
    assert!(out.status.success(), "{out:?}");
    assert!(
        std::fs::read(&back).expect("read") == data,
        "xkubectl cp changed the bytes"
    );
    c.kubectl_ok(&["exec", pod, "--", "rm", "-f", &remote[pod.len() + 1..]]);
    // port-forward: 10 requests.
    let mut child = Command::new(&bin)
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["port-forward", pod, ":80"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("xkubectl port-forward");
    let mut out = child.stdout.take().expect("stdout");
    let mut first = Vec::new();
    let mut b = [0u8; 1];
    while out.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        first.push(b[0]);
    }
    let line = String::from_utf8_lossy(&first).into_owned();
    let port: u16 = line
        .strip_prefix("Forwarding from 127.0.0.1:")
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("xkubectl port-forward printed {line:?}"));
    let drain = std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink);
    });
    for i in 0..10 {
        let body = local_get(port, "/hostname")
            .unwrap_or_else(|e| panic!("request {i} through xkubectl port-forward: {e}"));
        assert_eq!(body.trim(), pod);
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = drain.join();
}
