//! Errors of the apiserver library.

use std::path::PathBuf;

/// Errors starting or running the apiserver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A store operation failed.
    #[error("store: {0}")]
    Store(#[from] xkube_store::Error),
    /// A file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// Address.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A flag or configuration file is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Certificate generation or TLS setup failed.
    #[error("tls: {0}")]
    Tls(String),
    /// Serialization of a stored object failed.
    #[error("encode: {0}")]
    Encode(#[from] serde_json::Error),
}

impl From<xkube_serve::Error> for Error {
    fn from(e: xkube_serve::Error) -> Self {
        match e {
            xkube_serve::Error::Io { op, path, source } => Error::Io { op, path, source },
            xkube_serve::Error::Tls(m) => Error::Tls(m),
        }
    }
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
