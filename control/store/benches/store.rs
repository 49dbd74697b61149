//! Store throughput: create (one writer and 16 concurrent writers), get, list of 1k keys, and
//! watch fan-out (N watchers each receiving M events written by 16 concurrent writers), on
//! memory, embedded (temp dir, durable commits) and a real etcd started for the run. Bounded:
//! a few seconds per figure.
//!
//! `cargo bench -p xkube-store --bench store` (filter with e.g. `-- embedded/`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, Throughput};
use futures::StreamExt;
use tokio::runtime::Runtime;
use xkube_store::{
    EmbeddedOptions, EmbeddedStore, EtcdStore, MemoryStore, Store, testing::EtcdServer,
};

const CONCURRENT_WRITERS: u64 = 16;
const LIST_KEYS: usize = 1000;
const WATCHERS: usize = 10;
const EVENTS: usize = 100;

fn value() -> Vec<u8> {
    // About the size of a small pod object.
    vec![b'x'; 1024]
}

/// Runs every figure, or only the two create figures when `writes_only`.
fn bench_backend(
    c: &mut Criterion,
    rt: &Runtime,
    name: &str,
    store: Arc<dyn Store>,
    writes_only: bool,
) {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let seq = Arc::new(AtomicU64::new(0));

    group.throughput(Throughput::Elements(1));
    group.bench_function("create", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    store
                        .create(&format!("/bench/create/{n}"), value())
                        .await
                        .expect("create");
                }
                start.elapsed()
            })
        })
    });

    group.bench_function(
        BenchmarkId::new("create_concurrent", CONCURRENT_WRITERS),
        |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..CONCURRENT_WRITERS)
                        .map(|w| {
                            let store = store.clone();
                            let seq = seq.clone();
                            let count = iters / CONCURRENT_WRITERS
                                + u64::from(w < iters % CONCURRENT_WRITERS);
                            tokio::spawn(async move {
                                for _ in 0..count {
                                    let n = seq.fetch_add(1, Ordering::Relaxed);
                                    store
                                        .create(&format!("/bench/create/{n}"), value())
                                        .await
                                        .expect("create");
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("writer task");
                    }
                    start.elapsed()
                })
            })
        },
    );

    if writes_only {
        group.finish();
        return;
    }

    rt.block_on(store.create("/bench/get", value()))
        .expect("create the key to get");
    group.bench_function("get", |b| {
        b.iter(|| {
            rt.block_on(store.get("/bench/get"))
                .expect("get")
                .expect("key exists")
        })
    });

    rt.block_on(async {
        let tasks: Vec<_> = (0..CONCURRENT_WRITERS as usize)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in (w..LIST_KEYS).step_by(CONCURRENT_WRITERS as usize) {
                        store
                            .create(&format!("/bench/list/{i:04}"), value())
                            .await
                            .expect("create a key to list");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("writer task");
        }
    });
    group.throughput(Throughput::Elements(LIST_KEYS as u64));
    group.bench_function(BenchmarkId::new("list", LIST_KEYS), |b| {
        b.iter(|| {
            let (items, _) = rt.block_on(store.list("/bench/list/")).expect("list");
            assert_eq!(items.len(), LIST_KEYS);
        })
    });

    group.throughput(Throughput::Elements((WATCHERS * EVENTS) as u64));
    group.bench_function(
        BenchmarkId::new("watch_fanout", format!("{WATCHERS}x{EVENTS}")),
        |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let from = store.current_revision().await.expect("revision");
                        let mut watchers = Vec::new();
                        for _ in 0..WATCHERS {
                            watchers.push(store.watch("/bench/watch/", from).await.expect("watch"));
                        }
                        let start = Instant::now();
                        let receivers: Vec<_> = watchers
                            .into_iter()
                            .map(|mut stream| {
                                tokio::spawn(async move {
                                    for _ in 0..EVENTS {
                                        stream.next().await.expect("event").expect("not an error");
                                    }
                                })
                            })
                            .collect();
                        // Written by concurrent writers, so that the embedded store's
                        // group commit keeps fsync latency from dominating the fan-out.
                        let writers: Vec<_> = (0..CONCURRENT_WRITERS as usize)
                            .map(|w| {
                                let store = store.clone();
                                let seq = seq.clone();
                                tokio::spawn(async move {
                                    for _ in (w..EVENTS).step_by(CONCURRENT_WRITERS as usize) {
                                        let n = seq.fetch_add(1, Ordering::Relaxed);
                                        store
                                            .create(&format!("/bench/watch/{n}"), value())
                                            .await
                                            .expect("create a watched key");
                                    }
                                })
                            })
                            .collect();
                        for w in writers {
                            w.await.expect("writer task");
                        }
                        for r in receivers {
                            r.await.expect("watcher task");
                        }
                        total += start.elapsed();
                    }
                    total
                })
            })
        },
    );
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    bench_backend(&mut c, &rt, "memory", Arc::new(MemoryStore::new()), false);

    let dir = tempfile::tempdir().expect("temp dir");
    let embedded = rt
        .block_on(EmbeddedStore::open(dir.path()))
        .expect("open embedded store");
    bench_backend(&mut c, &rt, "embedded", Arc::new(embedded), false);

    // The same with redb's quick repair: two fsyncs and the allocator state per commit, paid
    // for instant recovery after a crash.
    let dir_qr = tempfile::tempdir().expect("temp dir");
    let embedded_qr = rt
        .block_on(EmbeddedStore::open_with(
            dir_qr.path(),
            EmbeddedOptions {
                quick_repair: true,
                ..EmbeddedOptions::default()
            },
        ))
        .expect("open embedded store");
    bench_backend(
        &mut c,
        &rt,
        "embedded_quick_repair",
        Arc::new(embedded_qr),
        true,
    );

    let etcd = rt.block_on(EtcdServer::start());
    let store = rt
        .block_on(EtcdStore::connect(
            &[etcd.endpoint().to_owned()],
            "/xkube-bench",
        ))
        .expect("connect to etcd");
    bench_backend(&mut c, &rt, "etcd", Arc::new(store), false);
    drop(etcd);

    c.final_summary();
}
