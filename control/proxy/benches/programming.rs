//! Programming benchmark of the eBPF mode (root: creates real eBPF maps), the agent's path from
//! a reflector change to the kernel maps:
//!
//! - `full_sync_10k_x5_into_empty_maps`: the first full sync of 10k ClusterIP services x 5
//!   endpoints into freshly created maps (render every service, read the maps back, plan,
//!   about 120k map writes);
//! - `one_endpoint_change_at_10k_x5`: with those programmed, the reflector sees an Endpoints
//!   change of one service (one endpoint replaced): change tracker -> model of that service ->
//!   engine -> map writes. After criterion's estimate, the same step is timed 2,000 times one by
//!   one and p50/p99/max printed.
//!
//! `sudo cargo bench -p xkube-proxy --bench programming`

mod common;

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use aya::{Ebpf, EbpfLoader};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use xkube_proxy::{
    dataplane::{Maps, NodeContext},
    mode::{Proxier, ebpf::EbpfProxier},
    model::ChangeTracker,
};

const SERVICES: u32 = 10_000;
const ENDPOINTS: u32 = 5;

fn load() -> Ebpf {
    EbpfLoader::new()
        .load(xkube_proxy::ebpf::object())
        .unwrap_or_else(|e| panic!("loading the eBPF object: {e}"))
}

fn node() -> NodeContext {
    NodeContext::new("node-a", Ipv4Addr::new(198, 18, 0, 11))
}

/// A tracker holding 10k x 5 and a proxier over fresh maps (nothing written yet).
fn fresh() -> (Ebpf, ChangeTracker, EbpfProxier) {
    let mut ebpf = load();
    let maps = Maps::from_ebpf(&mut ebpf).unwrap_or_else(|e| panic!("maps: {e}"));
    let proxier = EbpfProxier::new(maps, node(), None).unwrap_or_else(|e| panic!("proxier: {e}"));
    let (svcs, eps) = common::objects(SERVICES, ENDPOINTS);
    let mut tracker = ChangeTracker::new();
    tracker.replace_all(svcs, eps, []);
    tracker.take_changes();
    (ebpf, tracker, proxier)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn bench(c: &mut Criterion) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the programming benchmark creates eBPF maps: run it as root"
    );
    let mut g = c.benchmark_group("programming");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));

    g.bench_function("full_sync_10k_x5_into_empty_maps", |b| {
        b.iter_batched(
            fresh,
            |(ebpf, tracker, mut proxier)| {
                let st = proxier
                    .sync_full(tracker.models())
                    .unwrap_or_else(|e| panic!("full sync: {e}"));
                assert!(
                    st.writes >= (SERVICES * (2 + 2 * ENDPOINTS)) as usize,
                    "{st:?}"
                );
                (ebpf, proxier)
            },
            BatchSize::PerIteration,
        )
    });

    let (_ebpf, mut tracker, mut proxier) = fresh();
    proxier
        .sync_full(tracker.models())
        .unwrap_or_else(|e| panic!("full sync: {e}"));
    // Service 1234 alternates between its own first pod and a new one.
    let target = 1234;
    let variants = [
        common::endpoints(target, ENDPOINTS, Some(SERVICES * ENDPOINTS + 1)),
        common::endpoints(target, ENDPOINTS, None),
    ];
    let mut flip = 0usize;
    let mut writes = 0;
    let mut step = |tracker: &mut ChangeTracker, proxier: &mut EbpfProxier| {
        flip ^= 1;
        tracker.endpoints_applied(variants[flip].clone());
        let changes = tracker.take_changes();
        let st = proxier
            .sync_changed(&changes.services)
            .unwrap_or_else(|e| panic!("partial sync: {e}"));
        writes = st.writes;
    };
    g.bench_function("one_endpoint_change_at_10k_x5", |b| {
        b.iter(|| step(&mut tracker, &mut proxier))
    });
    g.finish();

    let mut samples: Vec<Duration> = (0..2_000)
        .map(|_| {
            let t = Instant::now();
            step(&mut tracker, &mut proxier);
            t.elapsed()
        })
        .collect();
    samples.sort_unstable();
    println!(
        "one_endpoint_change_at_10k_x5 (2,000 changes, reflector change -> maps written): p50 {:?}, p99 {:?}, max {:?}; {writes} map writes per change",
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        samples[samples.len() - 1],
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
