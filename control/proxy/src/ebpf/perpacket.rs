//! Per-packet cost of the datapath programs with `BPF_PROG_TEST_RUN`, against a bare
//! `XDP_PASS` program in the same run, with `n` service frontends in the maps (shared by
//! `cargo bench --bench datapath` and `xkube bench`).
//!
//! Each figure is the kernel-measured run time of one program invocation on a fresh copy of
//! the frame (`repeat = 1`: with `repeat > 1` the kernel reruns the program on the frame the
//! previous run rewrote, which would measure a different path), median and mean over
//! `calls` invocations. The flow's conntrack entry exists (the warm-up creates it), so the
//! service rows are the established-flow path; "not a service" is what every other packet on
//! the uplink pays: to the node itself (no hash lookup when no frontend uses the node address
//! and the port is no NodePort) and in transit to another address (no hash lookup unless the
//! address collides with a frontend's in the frontend filter). The programs are a private
//! copy (nothing attached, nothing pinned) run inside a namespace made for the purpose.
//! Absolute times are machine-specific; compare rows within one run.

use std::{
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use serde::{Deserialize, Serialize};
use serde_json::json;
use xkube_common::lb::programs;
use xkube_netns::NetNs;

use crate::{
    Error, Result,
    dataplane::{DesiredState, Ids, Maps, NodeContext, desired, writer},
    ebpf::{
        datapath::Datapath,
        packet::{Endpoint, Frame, tcp_flags},
        testrun,
    },
};

const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);

/// How many frontends, as how many services: the 16-bit service id caps service ports at
/// 65,535 (as in Cilium), so more frontends than that are services with a ClusterIP and an
/// externalIP each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub frontends: u32,
    pub services: u32,
    pub external: bool,
}

impl Size {
    /// `frontends` frontends: one ClusterIP per service up to 50,000, two frontends per
    /// service above.
    pub fn frontends(frontends: u32) -> Self {
        let frontends = frontends.max(1);
        if frontends > 50_000 {
            Self {
                frontends: frontends / 2 * 2,
                services: frontends / 2,
                external: true,
            }
        } else {
            Self {
                frontends,
                services: frontends,
                external: false,
            }
        }
    }
}

/// Kernel time of one program run, ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ns {
    pub median: f64,
    pub mean: f64,
}

/// One row: every program's cost with `frontends` in the maps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub frontends: u32,
    pub services: u32,
    /// A program that only returns `XDP_PASS`: the floor of any XDP program.
    pub bare_xdp_pass: Ns,
    /// XDP on the uplink, a ClusterIP packet from outside (DNAT + SNAT to a remote backend,
    /// established flow).
    pub xdp_service: Ns,
    /// XDP on the uplink, a packet to the node itself that is no service.
    pub xdp_to_node: Ns,
    /// XDP on the uplink, a packet in transit that is no service.
    pub xdp_transit: Ns,
    /// tc on a pod's host-side veth, a ClusterIP packet from the pod (established flow).
    pub tc_pod_ingress: Ns,
    /// Seconds to write the maps for all services at once.
    pub maps_written_s: f64,
}

/// `n` ClusterIP services with one remote backend each; with `external`, every service also
/// has an externalIP frontend (two frontends per service id).
pub fn objects(n: u32, external: bool) -> (Vec<Service>, Vec<Endpoints>) {
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
        let svc = json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip.to_string(), "externalIPs": ext,
                     "ports": [{"port": 80, "targetPort": 8080}]}
        });
        // One remote backend per service keeps 100k frontends inside the map sizes.
        let pod = Ipv4Addr::from(base_pod + 256 + i);
        let ep = json!({
            "metadata": {"name": name, "namespace": "default"},
            "subsets": [{"addresses": [{"ip": pod.to_string(), "nodeName": "node-b"}],
                         "ports": [{"port": 8080}]}]
        });
        // Fixed, valid documents: these cannot fail to deserialize.
        svcs.push(serde_json::from_value(svc).unwrap_or_default());
        eps.push(serde_json::from_value(ep).unwrap_or_default());
    }
    (svcs, eps)
}

/// Runs `f` (one TEST_RUN, the kernel's duration) `calls` times after a warm-up.
fn sample(calls: usize, mut f: impl FnMut() -> Result<Duration>) -> Result<Ns> {
    // Warm up: the first call creates the conntrack entry.
    for _ in 0..100 {
        f()?;
    }
    let mut d = Vec::with_capacity(calls.max(1));
    for _ in 0..calls.max(1) {
        d.push(f()?.as_nanos());
    }
    d.sort_unstable();
    let sum: u128 = d.iter().sum();
    Ok(Ns {
        median: d[d.len() / 2] as f64,
        mean: sum as f64 / d.len() as f64,
    })
}

/// Loads a private copy of the programs, writes `size` into its maps and measures each
/// program `calls` times (root; makes and removes a network namespace of its own).
pub fn measure(size: Size, calls: usize) -> Result<Row> {
    let ns = NetNs::unique("xkpp").map_err(|e| Error::Netns(e.to_string()))?;
    let mut dp = Datapath::load(None)?;
    let mut maps = Maps::from_ebpf(dp.ebpf_mut())?;
    let mut ctx = NodeContext::new("node-a", NODE);
    ctx.hairpin_addr = Ipv4Addr::new(10, 244, 1, 1);
    let (svcs, eps) = objects(size.services, size.external);
    let started = Instant::now();
    let want = Arc::new(desired(&svcs, &eps, &ctx, &mut Ids::new()));
    let mut written = Arc::new(DesiredState::default());
    writer::sync(&mut maps, &mut written, &want)?;
    let maps_written_s = started.elapsed().as_secs_f64();

    let client = Endpoint::new(Ipv4Addr::new(198, 18, 0, 100), 40000);
    let target = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + size.services / 2);
    let vip = Endpoint::new(target, 80);
    let to_service = Frame::tcp(client, vip, tcp_flags::ACK, b"0123456789").build();
    let to_node = Frame::tcp(client, Endpoint::new(NODE, 22), tcp_flags::ACK, b"x").build();
    // To an address that is neither the node, a pod nor a frontend.
    let transit = Endpoint::new(Ipv4Addr::new(198, 18, 0, 200), 443);
    let transit = Frame::tcp(client, transit, tcp_flags::ACK, b"x").build();
    let pod = Endpoint::new(Ipv4Addr::new(10, 244, 1, 5), 41000);
    let from_pod = Frame::tcp(pod, vip, tcp_flags::ACK, b"0123456789").build();

    let run = |name: &'static str, xdp: bool, frame: &[u8]| -> Result<Ns> {
        ns.run(|| {
            sample(calls, || {
                let r = if xdp {
                    testrun::run(name, dp.xdp(name)?, frame, 1)?
                } else {
                    testrun::run(name, dp.tc(name)?, frame, 1)?
                };
                Ok(r.duration)
            })
        })
        .map_err(|e| Error::Netns(e.to_string()))?
    };
    Ok(Row {
        frontends: size.frontends,
        services: size.services,
        bare_xdp_pass: run(programs::XDP_PASS, true, &to_node)?,
        xdp_service: run(programs::XDP_UPLINK, true, &to_service)?,
        xdp_to_node: run(programs::XDP_UPLINK, true, &to_node)?,
        xdp_transit: run(programs::XDP_UPLINK, true, &transit)?,
        tc_pod_ingress: run(programs::TC_POD_INGRESS, false, &from_pod)?,
        maps_written_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_above_the_service_id_range_use_two_frontends_per_service() {
        assert_eq!(
            Size::frontends(10_000),
            Size {
                frontends: 10_000,
                services: 10_000,
                external: false
            }
        );
        assert_eq!(
            Size::frontends(100_000),
            Size {
                frontends: 100_000,
                services: 50_000,
                external: true
            }
        );
        let (svcs, eps) = objects(3, true);
        assert_eq!((svcs.len(), eps.len()), (3, 3));
        let spec = svcs[2].spec.clone().unwrap_or_default();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.12"));
        assert_eq!(spec.external_ips, Some(vec!["172.16.0.2".to_string()]));
    }
}
