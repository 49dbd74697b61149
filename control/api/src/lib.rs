//! The xkube object model, without I/O.
//!
//! Kubernetes' wire types come from `k8s-openapi` (re-exported as [`k8s`]); this crate adds
//! what an apiserver and its clients share: the [resource registry](resources), label and
//! field [selectors](selector), [validation] with Kubernetes' messages, [defaults], server-side
//! [table] printing, [status] objects for errors, [strategic merge patch](patch), and node
//! [placement] (node selectors, node affinity, taints and tolerations), and bounded [yaml]
//! decoding of request bodies.

pub mod batch;
pub mod cluster;
pub mod defaults;
pub mod duration;
pub mod error;
pub mod limitrange;
pub mod meta;
pub mod names;
pub mod net;
pub mod patch;
pub mod placement;
pub mod pod;
pub mod protobuf;
pub mod qos;
pub mod quantity;
pub mod quota;
pub mod rbac;
pub mod resources;
pub mod satoken;
pub mod selector;
pub mod status;
pub mod table;
pub mod typed;
pub mod validation;
pub mod yaml;

pub use error::{Error, Result};
pub use k8s_openapi as k8s;
pub use k8s_openapi::api::core::v1 as core;
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
pub use resources::{RESOURCES, ResourceInfo};
pub use selector::{FieldSelector, LabelSelector};
pub use status::StatusError;
pub use validation::{ErrorList, FieldError};
