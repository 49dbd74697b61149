//! The eBPF dataplane's userspace state: Services + Endpoints -> desired map contents (pure),
//! the ordered diff against the maps' actual contents (pure), and the single writer task that
//! applies it and garbage-collects conntrack.
//!
//! ```text
//! reflector caches --desired()--> DesiredState --watch--> Writer: plan(written, desired) -> apply
//!                     ^ Ids (stable ids, rebuilt from the maps on restart)
//! ```
//!
//! Wiring (what the agent does):
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use xkube_proxy::dataplane::*;
//! # async fn agent(maps: Maps, node: NodeContext,
//! #     snapshots: Vec<(Vec<k8s_openapi::api::core::v1::Service>,
//! #                     Vec<k8s_openapi::api::core::v1::Endpoints>)>) -> xkube_proxy::Result<()> {
//! // Maps from the loader (`Maps::from_ebpf`) or from the pins (`Maps::from_pins`).
//! let writer = Writer::new(maps, WriterConfig::default())?;
//! let mut ids = Ids::from_actual(writer.actual()); // same ids as before a restart
//! let status = writer.subscribe();
//! let (tx, rx) = tokio::sync::watch::channel(None); // None: write nothing yet
//! let task = tokio::spawn(writer.run(rx));
//! for (services, endpoints) in snapshots {
//!     ids.release_applied(status.borrow().applied_generation);
//!     let state = desired(&services, &endpoints, &node, &mut ids);
//!     tx.send_replace(Some(Arc::new(Desired::new(state, &ids))));
//! }
//! drop(tx); // the writer returns the maps; the dataplane keeps running
//! # Ok(()) }
//! ```

pub mod desired;
pub mod engine;
pub mod maglev;
pub mod plan;
pub mod render;
pub mod writer;

pub use desired::{Desired, DesiredState, Ids, Ipv4Cidr, NodeContext, desired};
pub use plan::{Op, plan};
pub use writer::{
    ApplyStats, GcStats, IdleTimeouts, Maps, SyncReport, Writer, WriterConfig, WriterStatus, apply,
    gc, ktime_now_ns, read_actual,
};
