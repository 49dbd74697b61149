//! The store's error type.

use std::path::PathBuf;

use crate::Revision;

/// Everything a [`Store`](crate::Store) operation can fail with.
///
/// The first four variants are the data-model outcomes callers act on (Kubernetes maps them to
/// 404, 409 AlreadyExists, 409 Conflict and 410 Gone); the rest are backend failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key {key:?} not found")]
    NotFound { key: String },

    #[error("key {key:?} already exists")]
    AlreadyExists { key: String },

    /// A compare-and-swap failed: the key's mod_revision is `actual`, not `expected`.
    #[error("key {key:?} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },

    /// The history a watch asked for is gone; re-list and watch from the list's revision.
    #[error("revision {requested} has been compacted (history starts after {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },

    /// A watcher fell too far behind the live events and some were dropped for it; its stream
    /// ends with this error. Treat it like [`Error::Compacted`]: re-list, then watch again.
    #[error("watcher fell behind and missed {missed} events; re-list and watch again")]
    WatchLagged { missed: u64 },

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("embedded store: {op}: {source}")]
    Redb {
        op: &'static str,
        #[source]
        source: Box<redb::Error>,
    },

    #[error("etcd: {op}: {source}")]
    Etcd {
        op: &'static str,
        #[source]
        source: Box<etcd_client::Error>,
    },

    /// The backend answered something that breaks the data model (a corrupt record, a key that
    /// is not UTF-8, a missing response field).
    #[error("store data is inconsistent: {detail}")]
    Corrupt { detail: String },

    /// The background work of a backend stopped (a panicked or cancelled blocking task).
    #[error("store backend task failed: {detail}")]
    Backend { detail: String },
}

impl Error {
    pub(crate) fn redb(op: &'static str, source: impl Into<redb::Error>) -> Self {
        Error::Redb {
            op,
            source: Box::new(source.into()),
        }
    }

    pub(crate) fn etcd(op: &'static str) -> impl FnOnce(etcd_client::Error) -> Self {
        move |source| Error::Etcd {
            op,
            source: Box::new(source),
        }
    }

    pub(crate) fn corrupt(detail: impl Into<String>) -> Self {
        Error::Corrupt {
            detail: detail.into(),
        }
    }

    /// True for [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// True for [`Error::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// True for [`Error::AlreadyExists`].
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::AlreadyExists { .. })
    }

    /// True when a watcher must re-list: [`Error::Compacted`] or [`Error::WatchLagged`].
    pub fn needs_relist(&self) -> bool {
        matches!(self, Error::Compacted { .. } | Error::WatchLagged { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
