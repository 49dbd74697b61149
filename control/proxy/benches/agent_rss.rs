//! Memory of the eBPF mode with 10k services x 5 endpoints programmed (root: real eBPF maps).
//!
//! Builds what the agent holds: the change tracker (Service templates and endpoint groups
//! parsed from the objects, which are then dropped as the agent drops them), the models, the
//! engine's fragments and ids, and the map handles; runs the first full sync; prints this
//! process's VmRSS (after returning freed heap) and VmHWM (peak) from `/proc/self/status`. The kernel
//! maps' own memory is kernel memory, not in the RSS. The agent binary adds its HTTP client,
//! runtime and servers (a few MiB).
//!
//! `sudo cargo bench -p xkube-proxy --bench agent_rss`

mod common;

use std::net::Ipv4Addr;

use aya::EbpfLoader;
use xkube_proxy::{
    dataplane::{Maps, NodeContext},
    mode::{Proxier, ebpf::EbpfProxier},
    model::ChangeTracker,
};

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Returns freed heap to the kernel (transients of building and of the full sync's diff), so
/// the RSS shows what stays allocated.
fn trim() {
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe { nix::libc::malloc_trim(0) };
}

fn main() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the benchmark creates eBPF maps: run it as root"
    );
    let before = status_kib("VmRSS:");
    let mut ebpf = EbpfLoader::new()
        .load(xkube_proxy::ebpf::object())
        .unwrap_or_else(|e| panic!("loading the eBPF object: {e}"));
    let maps = Maps::from_ebpf(&mut ebpf).unwrap_or_else(|e| panic!("maps: {e}"));
    let node = NodeContext::new("node-a", Ipv4Addr::new(198, 18, 0, 11));
    let mut proxier = EbpfProxier::new(maps, node, None).unwrap_or_else(|e| panic!("{e}"));
    let (svcs, eps) = common::objects(10_000, 5);
    trim();
    let objects = status_kib("VmRSS:");
    let mut tracker = ChangeTracker::new();
    tracker.replace_all(svcs, eps, []);
    tracker.take_changes();
    trim();
    let models = status_kib("VmRSS:");
    proxier
        .sync_full(tracker.models())
        .unwrap_or_else(|e| panic!("full sync: {e}"));
    let hwm = status_kib("VmHWM:");
    trim();
    let rss = status_kib("VmRSS:");
    println!(
        "RSS with the API objects: {:.1} MiB; parsed into the tracker, objects dropped: {:.1} MiB",
        objects as f64 / 1024.0,
        models as f64 / 1024.0
    );
    println!(
        "10k services x 5 endpoints programmed: VmRSS {:.1} MiB (process before loading: {:.1} MiB), peak VmHWM {:.1} MiB",
        rss as f64 / 1024.0,
        before as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    drop(tracker);
    drop(proxier);
}
