//! Errors of the DNS server.

use std::net::SocketAddr;

/// What can stop `xkube dns` from serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag's value is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// A socket could not be bound.
    #[error("{op} {addr}: {source}")]
    Io {
        op: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The apiserver client could not be built.
    #[error(transparent)]
    Client(#[from] xkube_client::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
