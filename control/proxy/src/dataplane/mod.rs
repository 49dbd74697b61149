//! The eBPF dataplane's userspace state: Services + Endpoints -> desired map contents (pure),
//! the ordered diff against the maps' actual contents (pure), and the single writer task that
//! applies it and garbage-collects conntrack.
//!
//! ```text
//! reflector caches --desired()--> DesiredState --watch--> Writer: plan(written, desired) -> apply
//!                     ^ Ids (stable ids, rebuilt from the maps on restart)
//! ```

pub mod desired;
pub mod maglev;
pub mod plan;
pub mod writer;

pub use desired::{Desired, DesiredState, Ids, Ipv4Cidr, NodeContext, desired};
pub use plan::{Op, plan};
pub use writer::{
    ApplyStats, GcStats, IdleTimeouts, Maps, SyncReport, Writer, WriterConfig, WriterStatus, apply,
    gc, ktime_now_ns, read_actual,
};
