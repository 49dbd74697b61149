//! Writer benchmark (root: creates real eBPF maps).
//!
//! - `desired_10k_x5`: the pure computation for 10k ClusterIP services x 5 endpoints;
//! - `write_10k_x5_into_empty_maps`: compute + plan + apply those into freshly created maps
//!   (about 120k map entries: 60k service entries, 50k backends, 10k reverse NAT);
//! - `one_endpoint_change_at_10k`: with the 10k services written, recompute for a change of one
//!   endpoint, plan and apply (a handful of ops: new backend, rewritten slots, old backend);
//! - `plan_and_apply_one_endpoint_change_at_10k`: the writer's share of that alone (the diff of
//!   two precomputed 10k-service states and the few map writes).
//!
//! `CARGO_TARGET_DIR=/work/target-dataplane cargo bench -p xkube-proxy --bench writer`

use std::{hint::black_box, net::Ipv4Addr, time::Duration};

use aya::{Ebpf, EbpfLoader};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use serde_json::json;
use xkube_proxy::dataplane::{Ids, Maps, NodeContext, apply, desired, plan, read_actual};

const SERVICES: u32 = 10_000;
const ENDPOINTS: u32 = 5;

fn objects(shift: Option<u32>) -> (Vec<Service>, Vec<Endpoints>) {
    let base_svc = u32::from(Ipv4Addr::new(10, 96, 0, 0));
    let base_pod = u32::from(Ipv4Addr::new(10, 244, 0, 0));
    let mut svcs = Vec::with_capacity(SERVICES as usize);
    let mut eps = Vec::with_capacity(SERVICES as usize);
    for i in 0..SERVICES {
        let name = format!("svc-{i}");
        let ip = Ipv4Addr::from(base_svc + 10 + i);
        svcs.push(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ip.to_string(), "ports": [{"port": 80, "targetPort": 8080}]}
            }))
            .unwrap_or_else(|e| panic!("service: {e}")),
        );
        let addrs: Vec<_> = (0..ENDPOINTS)
            .map(|j| {
                let mut n = i * ENDPOINTS + j;
                // One endpoint of service 0 replaced by a new pod.
                if i == 0
                    && j == 0
                    && let Some(s) = shift
                {
                    n = SERVICES * ENDPOINTS + s;
                }
                json!({"ip": Ipv4Addr::from(base_pod + n).to_string(), "nodeName": "node-a"})
            })
            .collect();
        eps.push(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "subsets": [{"addresses": addrs, "ports": [{"port": 8080}]}]
            }))
            .unwrap_or_else(|e| panic!("endpoints: {e}")),
        );
    }
    (svcs, eps)
}

fn load() -> Ebpf {
    EbpfLoader::new()
        .load(xkube_proxy::ebpf::object())
        .unwrap_or_else(|e| panic!("loading the eBPF object: {e}"))
}

fn bench(c: &mut Criterion) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the writer benchmark creates eBPF maps: run it as root"
    );
    let node = NodeContext::new("node-a", Ipv4Addr::new(198, 18, 0, 11));
    let (svcs, eps) = objects(None);
    let (svcs_b, eps_b) = objects(Some(0));

    let mut g = c.benchmark_group("writer");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));

    g.bench_function("desired_10k_x5", |b| {
        b.iter_batched(
            Ids::new,
            |mut ids| black_box(desired(&svcs, &eps, &node, &mut ids)),
            BatchSize::LargeInput,
        )
    });

    g.bench_function("write_10k_x5_into_empty_maps", |b| {
        b.iter_batched(
            || {
                let mut ebpf = load();
                let maps = Maps::from_ebpf(&mut ebpf).unwrap_or_else(|e| panic!("maps: {e}"));
                let empty = read_actual(&maps).unwrap_or_else(|e| panic!("read: {e}"));
                (ebpf, maps, empty)
            },
            |(ebpf, mut maps, empty)| {
                let mut ids = Ids::new();
                let want = desired(&svcs, &eps, &node, &mut ids);
                let ops = plan(&empty, &want);
                let st = apply(&mut maps, &ops).unwrap_or_else(|e| panic!("apply: {e}"));
                assert_eq!(st.upserts, ops.len(), "all upserts");
                (ebpf, maps)
            },
            BatchSize::PerIteration,
        )
    });

    // 10k services written once; every iteration flips one endpoint of service 0.
    let mut ebpf = load();
    let mut maps = Maps::from_ebpf(&mut ebpf).unwrap_or_else(|e| panic!("maps: {e}"));
    let mut ids = Ids::new();
    let mut written = desired(&svcs, &eps, &node, &mut ids);
    let empty = read_actual(&maps).unwrap_or_else(|e| panic!("read: {e}"));
    apply(&mut maps, &plan(&empty, &written)).unwrap_or_else(|e| panic!("apply: {e}"));
    let mut flip = false;
    let mut ops_seen = 0;
    g.bench_function("one_endpoint_change_at_10k", |b| {
        b.iter(|| {
            flip = !flip;
            let (s, e) = if flip {
                (&svcs_b, &eps_b)
            } else {
                (&svcs, &eps)
            };
            let want = desired(s, e, &node, &mut ids);
            let ops = plan(&written, &want);
            apply(&mut maps, &ops).unwrap_or_else(|e| panic!("apply: {e}"));
            ops_seen = ops.len();
            // The writer task would release ids once applied.
            ids.release_applied(ids.generation());
            written = want;
        })
    });
    // New backend, old backend removed, and the slots from the changed position on (slots are
    // sorted by address; the new pod sorts last here, so all 5 slots are rewritten).
    // (0 when a filter skipped that benchmark.)
    assert!(
        ops_seen == 0 || (3..=2 + ENDPOINTS as usize).contains(&ops_seen),
        "one endpoint change is a handful of ops, got {ops_seen}"
    );

    // The writer's share alone: plan + apply between two precomputed states.
    let mut ids = Ids::new();
    let a = desired(&svcs, &eps, &node, &mut ids);
    let b = desired(&svcs_b, &eps_b, &node, &mut ids);
    apply(&mut maps, &plan(&written, &a)).unwrap_or_else(|e| panic!("apply: {e}"));
    let mut states = [&a, &b];
    g.bench_function("plan_and_apply_one_endpoint_change_at_10k", |bench| {
        bench.iter(|| {
            let ops = plan(states[0], states[1]);
            apply(&mut maps, &ops).unwrap_or_else(|e| panic!("apply: {e}"));
            states.swap(0, 1);
        })
    });
    g.finish();
    written = states[0].clone();
    let actual = read_actual(&maps).unwrap_or_else(|e| panic!("read: {e}"));
    assert_eq!(actual, written, "the maps hold the last written state");
    eprintln!(
        "one_endpoint_change_at_10k: {ops_seen} ops per change; {} map entries in total",
        written.entries()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
