//! The kubelet's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network: {0}")]
    Netns(#[from] xkube_netns::Error),
    #[error("netlink {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("api: {0}")]
    Api(#[from] xkube_client::Error),
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
    #[error("IP pool {0} is exhausted")]
    PoolExhausted(String),
    #[error("container {0} not found")]
    NoSuchContainer(String),
    #[error("{0}")]
    Runtime(String),
    #[error("iptables-restore failed: {0}")]
    Iptables(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Serve(#[from] xkube_serve::Error),
    #[error("invalid pod state transition from {from} on {event}")]
    Transition { from: &'static str, event: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}

pub(crate) fn invalid(what: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        what,
        message: message.into(),
    }
}
