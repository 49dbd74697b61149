//! The xkube client library, used by every component and by `xkubectl`.
//!
//! - [`config`]: kubeconfig files loaded and merged like kubectl's, resolved into a [`Config`].
//! - [`Client`]: HTTP over rustls with the config's credentials (client certificates, bearer
//!   tokens, basic auth).
//! - [`Api<K>`]: typed get/list/create/replace/patch/delete, the status, scale and binding
//!   subresources, and single watch connections as streams of [`WatchEvent`]s, for k8s-openapi
//!   types and for any registry resource as [`DynamicObject`].
//! - [`watcher`]: list + watch that resumes from the last resourceVersion and relists on 410.
//! - [`Reflector`]: a watcher feeding a cache with one writer and cheap [`Store`] readers
//!   handing out `Arc<K>`, with change notifications.

pub mod api;
pub mod client;
pub mod config;
pub mod error;
pub mod reflector;
pub mod runtime;
pub mod spdy;
pub mod stream;
pub mod watcher;

pub use api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, LogParams, Object, ObjectList,
    Patch, PropagationPolicy, WatchEvent,
};
pub use client::{Client, ConnectionFlags};
pub use config::{Config, Kubeconfig, Overrides};
pub use error::{ApiStatus, Error, Result};
pub use reflector::{Change, Reflector, Store, Writer};
pub use watcher::{Batch, Event, batched, watcher};
