//! The xkube apiserver: Kubernetes REST and watch for the core kinds over an
//! [`xkube_store::Store`], with TLS, authentication, authorization and admission.
//!
//! Binaries call [`run`] with parsed [`Options`]; tests use [`testing::TestServer`], which
//! serves on `127.0.0.1:0` with the memory or embedded store and returns the bound address.

// Request handlers return `Result<_, StatusError>`: the error *is* the HTTP answer, built once
// per failed request, so its size does not matter.
#![allow(clippy::result_large_err)]

pub mod admission;
pub mod alloc;
pub mod auth;
pub mod authz;
pub mod discovery;
pub mod error;
pub mod exec;
pub mod http;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod openapi;
pub mod options;
pub mod pki;
pub mod plugins;
pub mod registry;
pub mod reviews;
pub mod satoken;
pub mod server;
pub mod strategy;
pub mod testing;
pub mod watch;
pub mod watchcache;

pub use error::{Error, Result};
pub use options::{AuthorizationMode, Options, StorageBackend};
pub use server::{Listen, RunningServer, run, start};
