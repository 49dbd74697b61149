//! Errors of the client library.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A `Status` object returned by the apiserver (an error or a watch `ERROR` event).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ApiStatus {
    /// HTTP status code (`404`).
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `AlreadyExists`, `Expired`, ...).
    pub reason: String,
    /// Human-readable message (`pods "x" not found`).
    pub message: String,
    /// `Success` or `Failure`.
    pub status: String,
    /// Extra details (name, kind, causes).
    pub details: Value,
}

impl std::fmt::Display for ApiStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

/// Errors of the client library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kubeconfig is unusable.
    #[error("invalid kubeconfig: {0}")]
    Kubeconfig(String),
    /// TLS material could not be used.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The request failed before an answer (connection refused, reset, timeout).
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// A streaming connection (exec, attach, port-forward) failed.
    #[error("{0}")]
    Stream(String),
    /// The apiserver answered with an error `Status`.
    #[error("{}", .0.message)]
    Api(ApiStatus),
    /// An answer could not be decoded.
    #[error("decoding {what}: {source}")]
    Decode {
        /// What was decoded.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A resource or kind this client does not know.
    #[error("{0}")]
    UnknownResource(String),
    /// Invalid arguments.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// The API status, when the server answered with one.
    pub fn status(&self) -> Option<&ApiStatus> {
        match self {
            Error::Api(s) => Some(s),
            _ => None,
        }
    }

    /// Whether the server answered 404.
    pub fn is_not_found(&self) -> bool {
        self.status().is_some_and(|s| s.code == 404)
    }

    /// Whether the server answered 409 (already exists or a resourceVersion conflict).
    pub fn is_conflict(&self) -> bool {
        self.status().is_some_and(|s| s.code == 409)
    }

    /// Whether the server answered 410 Gone (a compacted resourceVersion).
    pub fn is_gone(&self) -> bool {
        self.status().is_some_and(|s| s.code == 410)
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

/// Result of the client library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
