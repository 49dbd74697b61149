//! A dockerd of our own for the docker runtime's tests.

use std::{
    process::{Child, Stdio},
    time::Duration,
};

use xkube_cluster::docker::Engine;

/// A dockerd of our own (the local cluster's per-node engine set-up, `xkube_cluster::docker`),
/// stopped and its mounts removed on drop.
pub struct Dockerd {
    child: Child,
    pub engine: Engine,
    pub dir: tempfile::TempDir,
}

impl Dockerd {
    /// Starts one; `tag` keeps engines of different test binaries apart.
    pub async fn start(tag: &str) -> (Self, bollard::Docker) {
        super::assert_root();
        let dir = tempfile::Builder::new()
            .prefix("xkd")
            .tempdir_in("/tmp")
            .expect("tempdir");
        // The engine's exec root is /run/xkube-<cluster>/<node>: unique per test process.
        let engine = Engine::new(dir.path(), &format!("{tag}{}", std::process::id()), "n1");
        std::fs::create_dir_all(&engine.exec_root).expect("exec root");
        let log = std::fs::File::create(dir.path().join("dockerd.log")).expect("log file");
        let child = engine
            .command("dockerd")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("dockerd is installed (xtask setup installs docker.io)");
        let d = Self { child, engine, dir };
        match d.engine.wait(Duration::from_secs(60)).await {
            Ok(docker) => (d, docker),
            Err(e) => panic!(
                "{e}: {}",
                std::fs::read_to_string(d.dir.path().join("dockerd.log")).unwrap_or_default()
            ),
        }
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
        xkube_cluster::unmount_under(self.dir.path());
        let run = self
            .engine
            .exec_root
            .parent()
            .unwrap_or(&self.engine.exec_root);
        xkube_cluster::unmount_under(run);
        let _ = std::fs::remove_dir_all(run);
    }
}
