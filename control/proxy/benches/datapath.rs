//! Per-packet cost of the datapath programs with `BPF_PROG_TEST_RUN`, against a bare
//! `XDP_PASS` program in the same run, for 1, 1k, 10k and 100k service frontends in the maps
//! (what each figure means: [`xkube_proxy::ebpf::perpacket`]; `xkube bench` reports the same
//! rows). Absolute times are machine-specific; compare rows within one run.
//!
//! `sudo cargo bench -p xkube-proxy --bench datapath` (writes a Markdown table to stdout).

use xkube_proxy::ebpf::perpacket::{self, Ns, Size};

const CALLS: usize = 20_000;

fn main() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the datapath benchmark loads eBPF programs: run it as root"
    );
    println!(
        "| frontends | bare XDP_PASS | XDP uplink: ClusterIP from outside (SNAT, established) | XDP uplink: not a service (to the node) | XDP uplink: not a service (transit) | tc pod ingress: ClusterIP (established) | maps written in |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for frontends in [1, 1_000, 10_000, 100_000] {
        let r = perpacket::measure(Size::frontends(frontends), CALLS)
            .unwrap_or_else(|e| panic!("{frontends} frontends: {e}"));
        let fmt = |s: &Ns| format!("{:.0} ns ({:.0} mean)", s.median, s.mean);
        println!(
            "| {frontends} | {} | {} | {} | {} | {} | {:.2} s |",
            fmt(&r.bare_xdp_pass),
            fmt(&r.xdp_service),
            fmt(&r.xdp_to_node),
            fmt(&r.xdp_transit),
            fmt(&r.tc_pod_ingress),
            r.maps_written_s
        );
    }
}
