//! The xkube service proxy.
//!
//! - [`model`]: the mode-neutral service model (Service + Endpoints/EndpointSlices -> service
//!   ports, frontends, endpoints), built per changed object by its change tracker;
//! - [`mode`]: the seam every proxy mode implements ([`mode::Proxier`]), `--proxy-mode`, and
//!   per-mode cleanup; [`mode::ebpf`] is the eBPF mode, [`mode::iptables`] kube-proxy's
//!   iptables mode;
//! - [`conntrack`]: deleting stale UDP flows from the kernel's conntrack table (ctnetlink);
//! - [`sync`]: the mode-independent sync loop (`--min-sync-period`, `--sync-period`, partial
//!   and full syncs) and [`metrics`], kube-proxy's metric names;
//! - [`dataplane`]: the eBPF mode's map contents: rendering a model into map entries (pure),
//!   the incremental engine, the ordered diff, the map I/O and conntrack GC;
//! - [`ebpf`]: the object built from `dataplane-ebpf/programs`, its loader/attacher with
//!   per-node pins ([`ebpf::datapath`]), the uplink probe, packet crafting and a
//!   `BPF_PROG_TEST_RUN` harness;
//! - [`agent`]: `xkube proxy`, which feeds the sync loop from the apiserver and serves metrics
//!   and health.
//!
//! The nftables and userspace modes are not written yet (the userspace mode's round robin is
//! in [`mode::userspace`]); they plug in as further [`mode::ProxyMode`] variants implementing
//! [`mode::Proxier`] and [`mode::cleanup`].

pub mod agent;
pub mod conntrack;
pub mod dataplane;
pub mod ebpf;
pub mod error;
pub mod metrics;
pub mod mode;
pub mod model;
pub mod sync;

pub use error::{Error, Result};
