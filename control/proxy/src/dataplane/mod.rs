//! The eBPF dataplane's userspace state: a service model -> its map entries ([`render`], pure),
//! the ordered diff between two map states ([`plan`], pure), the map I/O and conntrack GC
//! ([`writer`]).
//!
//! The agent programs the maps incrementally through the eBPF mode
//! ([`crate::mode::ebpf::EbpfProxier`]): the [`engine`] keeps every service's entries and ids
//! and turns a changed service into that service's operations; a full sync applies
//! `plan(read_actual(maps), engine.desired())`.
//!
//! ```text
//! models --Engine::update--> ops (changed services only) --apply--> maps
//! models --Engine::sync_all + desired()--> plan(read_actual, desired) --apply--> maps (drift repair)
//! ```
//!
//! [`desired()`] is the whole-state reference (every service at once, ids from [`Ids`]) and
//! [`Writer`] a standalone task applying whole states from a watch channel; tests, benchmarks
//! and tools that write a state in one go use them. Their wiring:
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
pub mod filter;
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
