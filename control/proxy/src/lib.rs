//! The xkube service proxy.
//!
//! - [`ebpf`]: the object built from `dataplane-ebpf/programs`, its loader/attacher with
//!   per-node pins ([`ebpf::datapath`]), the uplink probe, packet crafting and a
//!   `BPF_PROG_TEST_RUN` harness;
//! - [`dataplane`]: Services/Endpoints -> desired map contents (pure), the ordered diff and the
//!   single writer task with conntrack GC;
//! - [`agent`]: `xkube proxy`, which feeds the writer from the apiserver and serves metrics.
//!
//! The iptables and userspace modes are not written yet.

pub mod agent;
pub mod dataplane;
pub mod ebpf;
pub mod error;
pub mod model;

pub use error::{Error, Result};
