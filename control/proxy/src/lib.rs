//! The xkube service proxy.
//!
//! Today: the eBPF object built from `dataplane-ebpf/programs`, a loader for the uplink probe
//! program and a `BPF_PROG_TEST_RUN` harness. The Service/Endpoints -> dataplane writer and the
//! iptables and userspace modes build on these.

pub mod agent;
pub mod dataplane;
pub mod ebpf;
pub mod error;

pub use error::{Error, Result};
