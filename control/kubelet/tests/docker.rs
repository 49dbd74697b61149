//! The docker runtime end to end: the test starts its own dockerd (own socket, data and exec
//! roots; no bridge, no iptables, no registry), imports locally built images (a root
//! filesystem of host tools: sh, sleep, socat, ...), and runs pods through the kubelet with
//! `--runtime docker`: pause container owning the namespaces, app containers joined to it,
//! `k8s_` names, pod network wired into the pause container, ImagePullBackOff for a missing
//! image.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use bollard::{Docker, query_parameters::CreateImageOptions};
use common::{Cluster, phase, pod_ip, waiting_reason};
use futures::StreamExt;
use serde_json::json;
use xkube_client::DeleteParams;
use xkube_kubelet::{ContainerRuntime, runtime::docker::DockerRuntime};

/// A dockerd of our own, stopped (and its mounts removed) on drop.
struct Dockerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Dockerd {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    async fn start() -> Self {
        common::assert_root();
        let dir = tempfile::Builder::new()
            .prefix("xkd")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let log = std::fs::File::create(dir.path().join("dockerd.log")).expect("log file");
        let p = |s: &str| dir.path().join(s).to_string_lossy().into_owned();
        let child = Command::new("dockerd")
            .args([
                "--host",
                &format!("unix://{}", p("docker.sock")),
                "--data-root",
                &p("data"),
                "--exec-root",
                &p("exec"),
                "--pidfile",
                &p("docker.pid"),
                "--bridge",
                "none",
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                "--userland-proxy=false",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("dockerd is installed (xtask setup installs docker.io)");
        let d = Self { child, dir };
        for _ in 0..600 {
            if d.socket().exists()
                && let Ok(docker) = Docker::connect_with_unix(
                    &d.socket().to_string_lossy(),
                    10,
                    bollard::API_DEFAULT_VERSION,
                )
                && let Ok(docker) = docker.negotiate_version().await
                && docker.ping().await.is_ok()
            {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "dockerd did not come up: {}",
            std::fs::read_to_string(d.dir.path().join("dockerd.log")).unwrap_or_default()
        );
    }

    async fn client(&self) -> Docker {
        Docker::connect_with_unix(
            &self.socket().to_string_lossy(),
            120,
            bollard::API_DEFAULT_VERSION,
        )
        .expect("connect")
        .negotiate_version()
        .await
        .expect("negotiate API version")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signalling the dockerd we started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(m) = std::fs::read_to_string("/proc/self/mounts") {
            let mut mine: Vec<&str> = m
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|p| Path::new(p).starts_with(self.dir.path()))
                .collect();
            mine.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in mine {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// A root filesystem tar of a few host tools and their libraries.
fn tools_rootfs(dir: &Path) -> Vec<u8> {
    let root = dir.join("rootfs");
    let tools = [
        "sh", "sleep", "socat", "cat", "hostname", "seq", "env", "echo",
    ];
    let mut files: Vec<(PathBuf, PathBuf)> = Vec::new();
    for t in tools {
        let src = ["/usr/bin", "/bin", "/usr/sbin"]
            .iter()
            .map(|d| Path::new(d).join(t))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{t} on the host"));
        files.push((src.clone(), PathBuf::from("/bin").join(t)));
        let out = Command::new("ldd").arg(&src).output().expect("ldd");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let lib = line
                .split("=>")
                .nth(1)
                .unwrap_or(line)
                .split_whitespace()
                .next()
                .unwrap_or("");
            if lib.starts_with('/') {
                files.push((PathBuf::from(lib), PathBuf::from(lib)));
            }
        }
    }
    for (src, dst) in files {
        let to = root.join(dst.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&src, &to).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    }
    std::fs::create_dir_all(root.join("tmp")).expect("tmp");
    let out = Command::new("tar")
        .args(["-C", &root.to_string_lossy(), "-cf", "-", "."])
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

async fn import(docker: &Docker, tar: &[u8], repo: &str) {
    let opts = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.into()),
        tag: Some("latest".into()),
        changes: vec![
            "ENV PATH=/bin".into(),
            "CMD [\"/bin/sleep\", \"infinity\"]".into(),
        ],
        ..Default::default()
    };
    let mut s = docker.create_image(
        Some(opts),
        Some(bollard::body_full(bytes::Bytes::copy_from_slice(tar))),
        None,
    );
    while let Some(r) = s.next().await {
        r.unwrap_or_else(|e| panic!("docker import {repo}: {e}"));
    }
    docker
        .inspect_image(&format!("{repo}:latest"))
        .await
        .unwrap_or_else(|e| panic!("{repo} imported: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_runtime_runs_pods_in_a_pause_container_with_k8s_names() {
    let dockerd = Dockerd::start().await;
    let docker = dockerd.client().await;
    let tar = tools_rootfs(dockerd.dir.path());
    import(&docker, &tar, "xkube/pause").await;
    import(&docker, &tar, "xkube/tools").await;
    let rt: Arc<dyn ContainerRuntime> = Arc::new(
        DockerRuntime::connect(&dockerd.socket().to_string_lossy(), "xkube/pause:latest")
            .await
            .expect("docker runtime connects"),
    );
    assert!(rt.version().starts_with("docker://20."), "{}", rt.version());
    let rt2 = rt.clone();
    let c = Cluster::start_custom(1, |_| {}, move |_| Some(rt2.clone())).await;

    c.create_pod(0, json!({
        "metadata": {"name": "duo"},
        "spec": {"terminationGracePeriodSeconds": 2, "containers": [
            {"name": "server", "image": "xkube/tools",
             "command": ["socat", "TCP-LISTEN:8080,reuseaddr,fork", "SYSTEM:echo hello-from-server"]},
            {"name": "client", "image": "xkube/tools", "command": ["sh", "-c",
             "for i in $(seq 1 100); do socat -T2 - TCP:127.0.0.1:8080 </dev/null && break; sleep 0.1; done; hostname; exec sleep 3600"]},
        ]},
    })).await;
    c.create_pod(
        0,
        json!({
            "metadata": {"name": "ghost"},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": "xkube/does-not-exist:1.0"}]},
        }),
    )
    .await;
    let p = c.wait_running("duo").await;
    let ip = pod_ip(&p);
    assert!(ip.starts_with("10.244.1."), "{ip}");
    let log = c.wait_log(0, "duo", "client", "duo").await;
    assert!(log.contains("hello-from-server"), "{log}");
    // Kubernetes container names, and the containers share the pause container's network.
    let names: Vec<String> = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
        .collect();
    let uid = p.metadata.uid.clone().expect("uid");
    for want in [
        format!("/k8s_POD_duo_default_{uid}_0"),
        format!("/k8s_server_duo_default_{uid}_0"),
        format!("/k8s_client_duo_default_{uid}_0"),
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    let (code, out) = c.exec(0, "duo", "server", &["cat", "/proc/net/fib_trie"]);
    assert!(code == 200 && out.contains(&ip), "{out}");
    let id = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find_map(|c| c.container_id.clone()))
        .expect("container id");
    assert!(id.starts_with("docker://"), "{id}");

    // A missing image: ErrImagePull then ImagePullBackOff, with events, never a hang.
    let ghost = c
        .wait_pod("ghost", "ImagePullBackOff", |p| {
            waiting_reason(p).is_some_and(|r| r == "ImagePullBackOff")
        })
        .await;
    assert_eq!(phase(&ghost), "Pending");

    // hostNetwork would mean dockerd's namespace (the machine's), not the node's: refused.
    c.create_pod(
        0,
        json!({
            "metadata": {"name": "hostie"},
            "spec": {"hostNetwork": true, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": "xkube/tools"}]},
        }),
    )
    .await;
    let mut refused = false;
    for _ in 0..300 {
        let evs = xkube_client::Api::<k8s_openapi::api::core::v1::Event>::namespaced(
            c.client.clone(),
            "default",
        )
        .list(&xkube_client::ListParams::default())
        .await
        .expect("events");
        refused = evs.items.iter().any(|e| {
            e.involved_object.name.as_deref() == Some("hostie")
                && e.reason.as_deref() == Some("FailedCreatePodSandBox")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.contains("dockerd's network namespace"))
        });
        if refused {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "hostNetwork pod refused with an event");
    let hostie = c.pods("default").get("hostie").await.expect("pod");
    assert_eq!(phase(&hostie), "Pending");

    for n in ["duo", "ghost", "hostie"] {
        c.pods("default")
            .delete(n, &DeleteParams::default())
            .await
            .expect("delete");
    }
    for n in ["duo", "ghost", "hostie"] {
        c.wait_gone(n).await;
    }
    c.assert_clean(0).await;
    let left = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await
        .expect("list");
    assert!(left.is_empty(), "containers left: {left:?}");
    drop(c);
    drop(dockerd);
}
