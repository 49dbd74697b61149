//! An in-memory runtime for tests: sandboxes and containers are records; a container whose
//! image is `fake/exit:<code>` exits at once with that code, `fake/missing` fails to pull,
//! anything else runs until stopped. Only hostNetwork pods (it has no network namespaces).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use super::{
    ContainerConfig, ContainerRuntime, ContainerStatus, ExecOutput, Sandbox, SandboxConfig,
    StartError,
};
use crate::error::{Error, Result};

#[derive(Debug, Default)]
pub struct FakeRuntime {
    next: AtomicU32,
    containers: Mutex<HashMap<String, ContainerStatus>>,
    sandboxes: Mutex<HashMap<String, bool>>,
    /// Every start, in order: (container name, attempt).
    pub started: Mutex<Vec<(String, u32)>>,
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
}

#[async_trait::async_trait]
impl ContainerRuntime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn version(&self) -> String {
        "fake://1".into()
    }

    async fn pull_image(&self, image: &str) -> Result<String, StartError> {
        if image == "fake/missing" {
            return Err(StartError {
                reason: "ErrImagePull",
                message: format!("image {image} not found"),
            });
        }
        Ok(String::new())
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
}
