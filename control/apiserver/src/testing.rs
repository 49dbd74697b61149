//! Starting an apiserver in-process for tests and benchmarks.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use xkube_store::Store;

use crate::error::Result;
use crate::options::{Options, StorageBackend};
use crate::server::{Listen, RunningServer, start};

/// Builder of an in-process apiserver on loopback ports picked by the kernel.
pub struct TestServer {
    opts: Options,
    store: Option<Arc<dyn Store>>,
    secure: bool,
}

impl TestServer {
    /// An apiserver with the embedded store (and PKI, kubeconfig) in `data_dir`, a plain HTTP
    /// listener on `127.0.0.1:0` and no TLS listener (see [`TestServer::secure`]).
    pub fn builder(data_dir: impl Into<PathBuf>) -> Self {
        let opts = Options {
            data_dir: data_dir.into(),
            storage_backend: Some(StorageBackend::Embedded),
            bind_address: Ipv4Addr::LOCALHOST.into(),
            secure_port: 0,
            bookmark_interval_seconds: 1,
            compaction_interval_seconds: 0,
            ..Options::default()
        };
        TestServer {
            opts,
            store: None,
            secure: false,
        }
    }

    /// Use the memory store.
    pub fn memory(mut self) -> Self {
        self.opts.storage_backend = Some(StorageBackend::Memory);
        self
    }

    /// Use this store (e.g. one shared with the test).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Also serve TLS on `127.0.0.1:0` (generates the PKI and the admin kubeconfig).
    pub fn secure(mut self) -> Self {
        self.secure = true;
        self
    }

    /// Adjusts any option.
    pub fn options(mut self, f: impl FnOnce(&mut Options)) -> Self {
        f(&mut self.opts);
        self
    }

    /// Starts the server; stop it with [`RunningServer::stop`].
    pub async fn start(self) -> Result<RunningServer> {
        let lo = Ipv4Addr::LOCALHOST.into();
        let listen = Listen {
            secure: self.secure.then(|| SocketAddr::new(lo, 0)),
            insecure: Some(SocketAddr::new(lo, 0)),
        };
        start(self.opts, listen, self.store, CancellationToken::new()).await
    }
}

/// Polls `f` every 50 ms until it returns `Some`, failing the test after `deadline` with
/// `what` (tests of components that converge asynchronously on this server).
pub async fn eventually<T, F, Fut>(what: &str, deadline: std::time::Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
