//! Running work inside a network namespace given by path (`/run/netns/x`,
//! `/proc/<pid>/ns/net`), or in the kubelet's own when there is none. Work happens on a
//! dedicated thread that entered the namespace; no other thread changes namespace.

use std::{future::Future, path::PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::error::{Error, Result, io, sys};

/// A network namespace: `None` is the calling process's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NsRef(pub Option<PathBuf>);

impl NsRef {
    pub fn current() -> Self {
        Self(None)
    }

    pub fn path(p: impl Into<PathBuf>) -> Self {
        Self(Some(p.into()))
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = match &self.0 {
            Some(p) => Some(std::fs::File::open(p).map_err(io("open network namespace", p))?),
            None => None,
        };
        std::thread::scope(|s| {
            s.spawn(move || -> Result<R> {
                if let Some(f) = &file {
                    setns(f, CloneFlags::CLONE_NEWNET).map_err(sys("setns(net)"))?;
                }
                Ok(f())
            })
            .join()
            .map_err(|_| Error::Runtime("thread in network namespace panicked".into()))?
        })
    }

    /// Runs a future on a current-thread runtime inside the namespace.
    pub fn block_on<F: Future + Send>(&self, fut: F) -> Result<F::Output>
    where
        F::Output: Send,
    {
        self.run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(fut))
                .map_err(io("start runtime", "netns"))
        })?
    }

    /// [`Self::run`] from async code, on the blocking pool.
    pub async fn run_async<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.run(f))
            .await
            .map_err(|e| Error::Runtime(format!("blocking task: {e}")))?
    }

    /// Opens the namespace file (`/proc/self/ns/net` for the current one).
    pub fn open(&self) -> Result<std::fs::File> {
        let p = self
            .0
            .clone()
            .unwrap_or_else(|| PathBuf::from("/proc/self/ns/net"));
        std::fs::File::open(&p).map_err(io("open network namespace", &p))
    }
}

/// Turns transmit checksum offload of `iface` (in the calling thread's namespace) on or off,
/// like `ethtool -K <iface> tx off`; see [`xkube_netns::set_tx_checksum_here`].
pub fn set_tx_checksum(iface: &str, enabled: bool) -> Result<()> {
    Ok(xkube_netns::set_tx_checksum_here(iface, enabled)?)
}
