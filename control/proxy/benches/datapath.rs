//! Per-packet cost of the datapath programs with `BPF_PROG_TEST_RUN`, against a bare
//! `XDP_PASS` program in the same run, for 1, 1k, 10k and 100k service frontends in the maps.
//!
//! Each figure is the kernel-measured run time of one program invocation on a fresh copy of
//! the frame (`repeat = 1`: with `repeat > 1` the kernel reruns the program on the frame the
//! previous run rewrote, which would measure a different path), median and mean over
//! `CALLS` invocations. The flow's conntrack entry exists (the first call creates it), so the
//! service rows are the established-flow path; "not a service" is what every other packet on
//! the uplink pays: to the node itself (no hash lookup when no frontend uses the node address
//! and the port is no NodePort) and in transit to another address (no hash lookup unless the
//! address collides with a frontend's in the frontend filter). Absolute times are
//! machine-specific; compare rows within one run.
//!
//! `sudo cargo bench -p xkube-proxy --bench datapath` (writes a Markdown table to stdout).

use std::{net::Ipv4Addr, sync::Arc, time::Instant};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use serde_json::json;
use xkube_common::lb::programs;
use xkube_netns::NetNs;
use xkube_proxy::{
    dataplane::{DesiredState, Ids, Maps, NodeContext, desired, writer},
    ebpf::{
        datapath::Datapath,
        packet::{Endpoint, Frame, tcp_flags},
        testrun,
    },
};

const CALLS: usize = 20_000;
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);

/// `n` ClusterIP services with one remote backend each; with `external`, every service also
/// has an externalIP frontend (two frontends per service id).
fn objects(n: u32, external: bool) -> (Vec<Service>, Vec<Endpoints>) {
    let base_svc = u32::from(Ipv4Addr::new(10, 96, 0, 0));
    let base_pod = u32::from(Ipv4Addr::new(10, 244, 0, 0));
    let mut svcs = Vec::with_capacity(n as usize);
    let mut eps = Vec::with_capacity(n as usize);
    for i in 0..n {
        let name = format!("svc-{i}");
        let ip = Ipv4Addr::from(base_svc + 10 + i);
        let ext: Vec<String> = if external {
            vec![Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i).to_string()]
        } else {
            Vec::new()
        };
        svcs.push(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ip.to_string(), "externalIPs": ext,
                         "ports": [{"port": 80, "targetPort": 8080}]}
            }))
            .unwrap_or_else(|e| panic!("service: {e}")),
        );
        // One remote backend per service keeps 100k services inside the map sizes.
        let pod = Ipv4Addr::from(base_pod + 256 + i);
        eps.push(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "subsets": [{"addresses": [{"ip": pod.to_string(), "nodeName": "node-b"}],
                             "ports": [{"port": 8080}]}]
            }))
            .unwrap_or_else(|e| panic!("endpoints: {e}")),
        );
    }
    (svcs, eps)
}

struct Stats {
    median: f64,
    mean: f64,
}

/// Runs `f` (one TEST_RUN, returning the kernel's duration in ns) `CALLS` times.
fn measure(mut f: impl FnMut() -> u128) -> Stats {
    // Warm up: the first call creates the conntrack entry.
    for _ in 0..100 {
        f();
    }
    let mut d: Vec<u128> = (0..CALLS).map(|_| f()).collect();
    d.sort_unstable();
    let sum: u128 = d.iter().sum();
    Stats {
        median: d[d.len() / 2] as f64,
        mean: sum as f64 / d.len() as f64,
    }
}

fn main() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the datapath benchmark loads eBPF programs: run it as root"
    );
    let ns = NetNs::unique("xkbench").unwrap_or_else(|e| panic!("namespace: {e}"));
    let client = Endpoint::new(Ipv4Addr::new(198, 18, 0, 100), 40000);
    println!(
        "| frontends | bare XDP_PASS | XDP uplink: ClusterIP from outside (SNAT, established) | XDP uplink: not a service (to the node) | XDP uplink: not a service (transit) | tc pod ingress: ClusterIP (established) | maps written in |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    // The 16-bit service id caps service ports at 65,535 (as in Cilium), so 100k frontends are
    // 50k services with a ClusterIP and an externalIP each.
    for (frontends, n, external) in [
        (1u32, 1u32, false),
        (1_000, 1_000, false),
        (10_000, 10_000, false),
        (100_000, 50_000, true),
    ] {
        let mut dp = Datapath::load(None).unwrap_or_else(|e| panic!("load: {e}"));
        let mut maps = Maps::from_ebpf(dp.ebpf_mut()).unwrap_or_else(|e| panic!("maps: {e}"));
        let mut ctx = NodeContext::new("node-a", NODE);
        ctx.hairpin_addr = Ipv4Addr::new(10, 244, 1, 1);
        let (svcs, eps) = objects(n, external);
        let started = Instant::now();
        let want = Arc::new(desired(&svcs, &eps, &ctx, &mut Ids::new()));
        let mut written = Arc::new(DesiredState::default());
        writer::sync(&mut maps, &mut written, &want).unwrap_or_else(|e| panic!("sync: {e}"));
        let write = started.elapsed();

        let target = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + n / 2);
        let vip = Endpoint::new(target, 80);
        let to_service = Frame::tcp(client, vip, tcp_flags::ACK, b"0123456789").build();
        let foreign = Frame::tcp(client, Endpoint::new(NODE, 22), tcp_flags::ACK, b"x").build();
        // To an address that is neither the node, a pod nor a frontend (ruled out by the
        // frontend filter).
        let transit = Endpoint::new(Ipv4Addr::new(198, 18, 0, 200), 443);
        let transit = Frame::tcp(client, transit, tcp_flags::ACK, b"x").build();
        let pod = Endpoint::new(Ipv4Addr::new(10, 244, 1, 5), 41000);
        let from_pod = Frame::tcp(pod, vip, tcp_flags::ACK, b"0123456789").build();

        let run = |name: &'static str, xdp: bool, frame: &[u8]| -> Stats {
            ns.run(|| {
                measure(|| {
                    let r = if xdp {
                        let p = dp.xdp(name).unwrap_or_else(|e| panic!("{e}"));
                        testrun::run(name, p, frame, 1)
                    } else {
                        let p = dp.tc(name).unwrap_or_else(|e| panic!("{e}"));
                        testrun::run(name, p, frame, 1)
                    };
                    r.unwrap_or_else(|e| panic!("{name}: {e}"))
                        .duration
                        .as_nanos()
                })
            })
            .unwrap_or_else(|e| panic!("namespace: {e}"))
        };
        let pass = run(programs::XDP_PASS, true, &foreign);
        let svc = run(programs::XDP_UPLINK, true, &to_service);
        let other = run(programs::XDP_UPLINK, true, &foreign);
        let through = run(programs::XDP_UPLINK, true, &transit);
        let tc = run(programs::TC_POD_INGRESS, false, &from_pod);
        let fmt = |s: &Stats| format!("{:.0} ns ({:.0} mean)", s.median, s.mean);
        println!(
            "| {frontends} | {} | {} | {} | {} | {} | {:.2} s |",
            fmt(&pass),
            fmt(&svc),
            fmt(&other),
            fmt(&through),
            fmt(&tc),
            write.as_secs_f64()
        );
    }
}
