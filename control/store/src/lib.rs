//! Storage for the xkube control plane, modelled on etcd's data model.
//!
//! A [`Store`] maps string keys (`/registry/{resource}/{namespace}/{name}`) to opaque bytes.
//! Every write bumps one global, strictly increasing [`Revision`] per store — it becomes the
//! Kubernetes `resourceVersion`. Each key remembers the revision that created it and the one
//! that last modified it; updates and deletes can be made conditional on the latter
//! (compare-and-swap). [`Store::watch`] replays the events after a revision and then follows
//! live ones, until the history has been compacted.
//!
//! Backends:
//! - [`MemoryStore`]: in-process, for tests.
//! - [`EmbeddedStore`]: the default; one crash-safe redb file, every write durable before it is
//!   acknowledged, the revision counter and the event log committed in the same transaction.
//! - [`EtcdStore`]: an etcd cluster through etcd-client, for users who outgrow one machine.
//!
//! [`open`] builds any of them from a [`StoreSpec`]. The `testing` feature adds
//! [`testing`]: a conformance suite every backend passes and a guard that runs a real `etcd`.

mod embedded;
mod error;
mod etcd;
mod memory;
mod op;
mod watch;

#[cfg(feature = "testing")]
pub mod testing;

use std::{path::PathBuf, sync::Arc};

pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use error::{Error, Result};
pub use etcd::EtcdStore;
pub use memory::MemoryStore;

/// A store revision: the etcd revision, the Kubernetes `resourceVersion`.
pub type Revision = i64;

/// One stored key with its value and revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the write that created the key.
    pub create_revision: Revision,
    /// The revision of the last write to the key (for a deleted kv: the deletion's).
    pub mod_revision: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A change to one key.
///
/// For `Put`, `kv` is the new value and `prev` the value it replaced (`None` on creation).
/// For `Delete`, `kv` is the deleted value with `mod_revision` = the revision of the deletion,
/// and `prev` is the value as it was stored before (its own `mod_revision`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev: Option<KeyValue>,
}

impl WatchEvent {
    /// The revision this event happened at.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// The events of a watch. An `Err` item is the last one: the watch is over and the caller
/// re-lists when [`Error::needs_relist`] says so, or retries later. The stream may also end
/// without an error when the store is dropped.
pub type WatchStream = futures::stream::BoxStream<'static, Result<WatchEvent>>;

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// All keys with `prefix`, sorted by key, and the store revision the snapshot was taken at.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)>;

    /// Fails with Error::AlreadyExists if present.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue>;

    /// Compare-and-swap on mod_revision: Error::Conflict if `expected` differs, Error::NotFound
    /// if absent.
    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue>;

    /// `expected: Some(rev)` makes it conditional (Conflict otherwise). Returns the deleted kv
    /// with mod_revision = deletion revision.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue>;

    /// Every event under `prefix` with revision > `from`, in revision order, then live events.
    /// Error::Compacted if `from` < compacted revision.
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream>;

    async fn current_revision(&self) -> Result<Revision>;

    /// Forget history at or below `revision` (watches from older revisions get Compacted).
    /// A revision above the current one compacts up to the current one.
    async fn compact(&self, revision: Revision) -> Result<()>;
}

/// Which backend to open, as chosen by the command line (`--data-dir`, `--etcd-servers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    Memory,
    /// The embedded store in `dir` (the file is `dir/store.redb`).
    Embedded {
        dir: PathBuf,
    },
    /// An etcd cluster; every key is stored under `prefix` (e.g. "" or "/xkube").
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
}

/// Opens the store `spec` describes.
pub async fn open(spec: &StoreSpec) -> Result<Arc<dyn Store>> {
    Ok(match spec {
        StoreSpec::Memory => Arc::new(MemoryStore::new()),
        StoreSpec::Embedded { dir } => Arc::new(EmbeddedStore::open(dir).await?),
        StoreSpec::Etcd { endpoints, prefix } => {
            Arc::new(EtcdStore::connect(endpoints, prefix).await?)
        }
    })
}
