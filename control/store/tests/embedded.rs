//! Embedded-store behaviour beyond the conformance suite: durability across reopen, the
//! persistent event log and its window, and lagging watchers.

use std::collections::BTreeMap;

use futures::StreamExt;
use xkube_store::{EmbeddedOptions, EmbeddedStore, Error, EventKind, KeyValue, Store};

async fn open(dir: &std::path::Path) -> EmbeddedStore {
    EmbeddedStore::open(dir)
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
}

async fn open_with(dir: &std::path::Path, options: EmbeddedOptions) -> EmbeddedStore {
    EmbeddedStore::open_with(dir, options)
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_acknowledged_writes_and_revision_continues() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut expected: BTreeMap<String, KeyValue> = BTreeMap::new();
    let last = {
        let store = open(dir.path()).await;
        assert!(store.path().ends_with("store.redb"));
        for i in 0..40 {
            let kv = store
                .create(
                    &format!("/registry/pods/ns/p{i:02}"),
                    format!("v{i}").into_bytes(),
                )
                .await
                .expect("create");
            expected.insert(kv.key.clone(), kv);
        }
        for i in (0..40).step_by(3) {
            let key = format!("/registry/pods/ns/p{i:02}");
            let prev = expected[&key].mod_revision;
            let kv = store
                .update(&key, b"updated".to_vec(), prev)
                .await
                .expect("update");
            expected.insert(key, kv);
        }
        for i in (0..40).step_by(7) {
            let key = format!("/registry/pods/ns/p{i:02}");
            store.delete(&key, None).await.expect("delete");
            expected.remove(&key);
        }
        store.current_revision().await.expect("revision")
    };

    let store = open(dir.path()).await;
    assert_eq!(
        store.current_revision().await.expect("revision"),
        last,
        "the revision survives a reopen"
    );
    let (items, revision) = store.list("/registry/").await.expect("list");
    assert_eq!(revision, last);
    assert_eq!(
        items,
        expected.values().cloned().collect::<Vec<_>>(),
        "every acknowledged write is there after a reopen"
    );
    let next = store
        .create("/registry/pods/ns/after", vec![])
        .await
        .expect("create after reopen");
    assert_eq!(
        next.mod_revision,
        last + 1,
        "revisions continue after a reopen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_log_survives_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b, gone) = {
        let store = open(dir.path()).await;
        let a = store.create("/e/a", b"1".to_vec()).await.expect("create");
        let b = store.create("/e/b", b"2".to_vec()).await.expect("create");
        let gone = store.delete("/e/a", None).await.expect("delete");
        (a, b, gone)
    };
    let store = open(dir.path()).await;
    let mut stream = store.watch("/e/", 0).await.expect("watch after reopen");
    let mut next = async || {
        stream
            .next()
            .await
            .expect("an event")
            .expect("not an error")
    };
    let e = next().await;
    assert_eq!((e.kind, e.kv), (EventKind::Put, a.clone()));
    assert_eq!(next().await.kv, b);
    let e = next().await;
    assert_eq!((e.kind, e.kv, e.prev), (EventKind::Delete, gone, Some(a)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_window_compacts_automatically_and_persists() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = EmbeddedOptions {
        history: 5,
        ..EmbeddedOptions::default()
    };
    {
        let store = open_with(dir.path(), options.clone()).await;
        for i in 0..20 {
            store
                .create(&format!("/h/{i:02}"), vec![])
                .await
                .expect("create");
        }
        assert_eq!(store.current_revision().await.expect("revision"), 20);
    }
    let store = open_with(dir.path(), options).await;
    match store.watch("/h/", 3).await {
        Err(Error::Compacted {
            requested: 3,
            compacted: 15,
        }) => {}
        Err(e) => panic!("expected Compacted at 15, got {e}"),
        Ok(_) => panic!("expected Compacted at 15, got a stream"),
    }
    let mut stream = store.watch("/h/", 15).await.expect("watch in the window");
    for rev in 16..=20 {
        let e = stream.next().await.expect("event").expect("not an error");
        assert_eq!(e.revision(), rev);
    }
    let (items, _) = store.list("/h/").await.expect("list");
    assert_eq!(items.len(), 20, "the window drops history, not data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_compaction_persists() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = open(dir.path()).await;
        for i in 0..6 {
            store
                .create(&format!("/c/{i}"), vec![])
                .await
                .expect("create");
        }
        store.compact(4).await.expect("compact");
    }
    let store = open(dir.path()).await;
    assert!(matches!(
        store.watch("/c/", 2).await,
        Err(Error::Compacted {
            requested: 2,
            compacted: 4
        })
    ));
    let mut stream = store.watch("/c/", 4).await.expect("watch");
    let e = stream.next().await.expect("event").expect("not an error");
    assert_eq!(e.revision(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_ends_with_an_error_instead_of_skipping() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_with(
        dir.path(),
        EmbeddedOptions {
            watch_buffer: 4,
            ..EmbeddedOptions::default()
        },
    )
    .await;
    let mut stream = store.watch("/", 0).await.expect("watch");
    for i in 0..20 {
        store
            .create(&format!("/k{i:02}"), vec![])
            .await
            .expect("create");
    }
    match stream.next().await {
        Some(Err(Error::WatchLagged { missed })) => assert!(missed > 0),
        other => panic!("a watcher 20 events behind a buffer of 4 must fail, got {other:?}"),
    }
    assert!(
        stream.next().await.is_none(),
        "the stream ends after the error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_spec_builds_each_local_backend() {
    let dir = tempfile::tempdir().expect("temp dir");
    for spec in [
        xkube_store::StoreSpec::Memory,
        xkube_store::StoreSpec::Embedded {
            dir: dir.path().join("data"),
        },
    ] {
        let store = xkube_store::open(&spec)
            .await
            .unwrap_or_else(|e| panic!("open {spec:?}: {e}"));
        let kv = store.create("/spec", b"x".to_vec()).await.expect("create");
        assert_eq!(store.get("/spec").await.expect("get"), Some(kv));
    }
    assert!(dir.path().join("data").join("store.redb").exists());
}
