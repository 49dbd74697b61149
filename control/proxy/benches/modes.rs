//! Programming cost of the proxy modes side by side, in one run (root): for 1,000 and 10,000
//! ClusterIP services with 2 endpoints each (ANCHORS.md's kube-proxy-shaped figures),
//!
//! - `full_sync/<mode>/<n>`: the first full sync onto an empty node (eBPF: fresh maps;
//!   iptables: no rules, one `iptables-restore`);
//! - `one_change/<mode>/<n>`: with `n` services programmed, one service's endpoint replaced
//!   (change tracker -> model -> the mode's partial sync: map writes, or kube-proxy's partial
//!   restore, which rewrites the top-level chains of every service and the changed service's
//!   own chains).
//!
//! Modes: `ebpf`, `iptables-legacy`, `iptables-nft`. The benchmark runs in a network namespace
//! of its own (iptables rules never touch the host's), removed when it exits.
//!
//! `sudo cargo bench -p xkube-proxy --bench modes`

mod common;

use std::{net::Ipv4Addr, time::Duration};

use aya::{Ebpf, EbpfLoader};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use xkube_proxy::{
    dataplane::{Maps, NodeContext},
    mode::{
        CleanupContext, NodeInfo, Proxier,
        ebpf::EbpfProxier,
        iptables::{IptablesOptions, IptablesProxier, exec::BackendChoice},
    },
    model::ChangeTracker,
};

const ENDPOINTS: u32 = 2;

fn tracker(n: u32) -> ChangeTracker {
    let (svcs, eps) = common::objects(n, ENDPOINTS);
    let mut t = ChangeTracker::new();
    t.replace_all(svcs, eps, []);
    t.take_changes();
    t
}

fn node() -> NodeInfo {
    NodeInfo {
        name: "node-a".into(),
        addrs: vec![Ipv4Addr::new(198, 18, 0, 11)],
        pod_cidr: Some("10.244.1.0/24".parse().expect("cidr")),
        cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
    }
}

/// A mode under test, with whatever keeps its kernel state alive.
enum Mode {
    Ebpf {
        proxier: Box<EbpfProxier>,
        /// Keeps the maps' object loaded.
        _object: Box<Ebpf>,
    },
    Iptables(Box<IptablesProxier>),
}

impl Mode {
    fn proxier(&mut self) -> &mut dyn Proxier {
        match self {
            Mode::Ebpf { proxier, .. } => proxier.as_mut(),
            Mode::Iptables(p) => p.as_mut(),
        }
    }
}

const MODES: [&str; 3] = ["ebpf", "iptables-legacy", "iptables-nft"];

fn cleanup() {
    xkube_proxy::mode::cleanup(
        xkube_proxy::mode::ProxyMode::Iptables,
        &CleanupContext {
            node_name: "node-a".into(),
            bpf_root: std::env::temp_dir().join("xkube-bench-none"),
        },
    )
    .unwrap_or_else(|e| panic!("cleanup: {e}"));
}

/// A mode with nothing programmed.
fn fresh(mode: &str) -> Mode {
    match mode {
        "ebpf" => {
            let mut ebpf = EbpfLoader::new()
                .load(xkube_proxy::ebpf::object())
                .unwrap_or_else(|e| panic!("loading the eBPF object: {e}"));
            let maps = Maps::from_ebpf(&mut ebpf).unwrap_or_else(|e| panic!("maps: {e}"));
            let ctx = NodeContext::new("node-a", Ipv4Addr::new(198, 18, 0, 11));
            let p = EbpfProxier::new(maps, ctx, None).unwrap_or_else(|e| panic!("proxier: {e}"));
            Mode::Ebpf {
                proxier: Box::new(p),
                _object: Box::new(ebpf),
            }
        }
        m => {
            cleanup();
            let opts = IptablesOptions {
                iptables_backend: if m == "iptables-legacy" {
                    BackendChoice::Legacy
                } else {
                    BackendChoice::Nft
                },
                masquerade_all: false,
            };
            let p = IptablesProxier::new(&opts, &node()).unwrap_or_else(|e| panic!("{m}: {e}"));
            Mode::Iptables(Box::new(p))
        }
    }
}

fn bench(c: &mut Criterion) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the modes benchmark creates eBPF maps and iptables rules: run it as root"
    );
    // Everything below runs in a namespace of its own (this thread and the tools it runs).
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("unshare the network namespace: {e}"));

    for n in [1_000u32, 10_000] {
        let base = tracker(n);
        let mut g = c.benchmark_group("full_sync");
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(if n > 1_000 { 20 } else { 5 }));
        for mode in MODES {
            g.bench_with_input(BenchmarkId::new(mode, n), &mode, |b, mode| {
                b.iter_batched(
                    || fresh(mode),
                    |mut m| {
                        m.proxier()
                            .sync_full(base.models())
                            .unwrap_or_else(|e| panic!("{mode}: full sync: {e}"));
                        m
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        g.finish();

        let mut g = c.benchmark_group("one_change");
        g.sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5));
        for mode in MODES {
            let mut t = tracker(n);
            let mut m = fresh(mode);
            m.proxier()
                .sync_full(t.models())
                .unwrap_or_else(|e| panic!("{mode}: full sync: {e}"));
            let target = n / 2;
            let variants = [
                common::endpoints(target, ENDPOINTS, Some(n * ENDPOINTS + 1)),
                common::endpoints(target, ENDPOINTS, None),
            ];
            let mut flip = 0usize;
            g.bench_function(BenchmarkId::new(mode, n), |b| {
                b.iter(|| {
                    flip ^= 1;
                    t.endpoints_applied(variants[flip].clone());
                    let changes = t.take_changes();
                    m.proxier()
                        .sync_changed(&changes.services)
                        .unwrap_or_else(|e| panic!("{mode}: partial sync: {e}"))
                })
            });
        }
        g.finish();
    }
    cleanup();
}

criterion_group!(benches, bench);
criterion_main!(benches);
