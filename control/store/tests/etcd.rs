//! etcd-backend behaviour beyond the conformance suite, on a real `etcd` process.

use std::time::{Duration, Instant};

use xkube_store::{EtcdStore, Store, testing::EtcdServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_one_snapshot() {
    let etcd = EtcdServer::start().await;
    let store = EtcdStore::connect(&[etcd.endpoint().to_owned()], "/paged")
        .await
        .expect("connect")
        .with_list_page(3);
    for i in 0..10 {
        store
            .create(&format!("/k/{i:02}"), vec![i])
            .await
            .expect("create");
    }
    let outside = store.create("/l/0", vec![]).await.expect("create");
    let (items, revision) = store.list("/k/").await.expect("list");
    let keys: Vec<_> = items.iter().map(|kv| kv.key.as_str()).collect();
    let expected: Vec<_> = (0..10).map(|i| format!("/k/{i:02}")).collect();
    assert_eq!(keys, expected, "every page, in order, nothing twice");
    assert_eq!(revision, outside.mod_revision);
    for (i, kv) in items.iter().enumerate() {
        assert_eq!(kv.value, vec![i as u8]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_isolate_stores_on_one_etcd() {
    let etcd = EtcdServer::start().await;
    let endpoints = [etcd.endpoint().to_owned()];
    let a = EtcdStore::connect(&endpoints, "/a")
        .await
        .expect("connect a");
    let b = EtcdStore::connect(&endpoints, "/b")
        .await
        .expect("connect b");
    a.create("/registry/x", b"a".to_vec())
        .await
        .expect("create in a");
    assert_eq!(b.get("/registry/x").await.expect("get"), None);
    b.create("/registry/x", b"b".to_vec())
        .await
        .expect("the same key in b");
    let (items, _) = a.list("/registry/").await.expect("list a");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].value, b"a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_nothing_fails_instead_of_hanging() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let start = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        EtcdStore::connect(&[format!("http://127.0.0.1:{port}")], ""),
    )
    .await
    .expect("connect must give up by itself");
    assert!(result.is_err(), "connecting to a closed port must fail");
    assert!(start.elapsed() < Duration::from_secs(30));
}
