//! Errors of the controllers.

use std::path::PathBuf;

/// Errors of the controller-manager and its helpers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the apiserver failed.
    #[error("{op}: {source}")]
    Api {
        /// What was being done (`create pod default/x`).
        op: String,
        /// The cause.
        #[source]
        source: Box<xkube_client::Error>,
    },
    /// A file could not be read or written.
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
    /// Invalid configuration (flags, kubeconfig, keys).
    #[error("{0}")]
    Config(String),
    /// The service-account key could not be loaded or used.
    #[error(transparent)]
    Key(#[from] xkube_api::satoken::KeyError),
    /// An object could not be encoded or decoded.
    #[error("encoding {what}: {source}")]
    Encode {
        /// What was encoded.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Wraps a client error with what was being done.
    pub fn api(op: impl Into<String>) -> impl FnOnce(xkube_client::Error) -> Self {
        let op = op.into();
        move |source| Error::Api {
            op,
            source: Box::new(source),
        }
    }

    /// Whether the apiserver answered 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { source, .. } if source.is_not_found())
    }

    /// Whether the apiserver answered 409.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Api { source, .. } if source.is_conflict())
    }
}

/// Result of the controllers.
pub type Result<T, E = Error> = std::result::Result<T, E>;
