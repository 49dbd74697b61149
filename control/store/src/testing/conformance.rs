//! The behaviour every [`Store`] backend must have. Each case takes a fresh store; run them all
//! with [`conformance_suite!`](crate::conformance_suite). Cases panic with a message on
//! failure.
//!
//! Cases assume nothing about the first revision (etcd starts at 1, the others at 0) and use
//! their own key prefix.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use futures::StreamExt;

use crate::{Error, EventKind, KeyValue, Revision, Store, WatchEvent, WatchStream};

/// How long a case waits for an expected watch event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

/// The next event of `stream`, panicking on an error, the end of the stream or a timeout.
pub async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch stream failed: {e}"),
        Ok(None) => panic!("watch stream ended"),
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
    }
}

async fn create(store: &dyn Store, key: &str, value: &str) -> KeyValue {
    store
        .create(key, value.as_bytes().to_vec())
        .await
        .unwrap_or_else(|e| panic!("create {key}: {e}"))
}

async fn update(store: &dyn Store, key: &str, value: &str, expected: Revision) -> KeyValue {
    store
        .update(key, value.as_bytes().to_vec(), expected)
        .await
        .unwrap_or_else(|e| panic!("update {key} at {expected}: {e}"))
}

async fn delete(store: &dyn Store, key: &str, expected: Option<Revision>) -> KeyValue {
    store
        .delete(key, expected)
        .await
        .unwrap_or_else(|e| panic!("delete {key}: {e}"))
}

async fn get(store: &dyn Store, key: &str) -> Option<KeyValue> {
    store
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
}

async fn current(store: &dyn Store) -> Revision {
    store
        .current_revision()
        .await
        .unwrap_or_else(|e| panic!("current_revision: {e}"))
}

async fn watch(store: &dyn Store, prefix: &str, from: Revision) -> WatchStream {
    store
        .watch(prefix, from)
        .await
        .unwrap_or_else(|e| panic!("watch {prefix} from {from}: {e}"))
}

async fn list(store: &dyn Store, prefix: &str) -> (Vec<KeyValue>, Revision) {
    store
        .list(prefix)
        .await
        .unwrap_or_else(|e| panic!("list {prefix}: {e}"))
}

fn keys(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

pub async fn create_then_get(store: &dyn Store) {
    let before = current(store).await;
    let kv = create(store, "/registry/pods/default/web", "v1").await;
    assert_eq!(kv.key, "/registry/pods/default/web");
    assert_eq!(kv.value, b"v1");
    assert!(kv.mod_revision > before, "a create bumps the revision");
    assert_eq!(
        kv.create_revision, kv.mod_revision,
        "a new key is created at its own revision"
    );
    assert_eq!(
        get(store, "/registry/pods/default/web").await,
        Some(kv.clone())
    );
    assert_eq!(get(store, "/registry/pods/default/missing").await, None);
    assert_eq!(
        get(store, "/registry/pods/default/we").await,
        None,
        "get is exact, not a prefix"
    );
    assert_eq!(current(store).await, kv.mod_revision);
}

pub async fn list_is_sorted_and_prefix_isolated(store: &dyn Store) {
    let wanted = [
        "/registry/pods/b/x",
        "/registry/pods/a/z",
        "/registry/pods/a/y",
        "/registry/pods/c/1",
        "/registry/pods/a/yy",
    ];
    let others = [
        "/registry/podsx/a/1",
        "/registry/pod/a",
        "/registry/services/a/s",
        "/registry/pods",
    ];
    let mut last = 0;
    for key in wanted.iter().chain(others.iter()) {
        last = create(store, key, key).await.mod_revision;
    }
    let (items, revision) = list(store, "/registry/pods/").await;
    assert_eq!(
        keys(&items),
        [
            "/registry/pods/a/y",
            "/registry/pods/a/yy",
            "/registry/pods/a/z",
            "/registry/pods/b/x",
            "/registry/pods/c/1"
        ],
        "list returns exactly the prefix's keys, sorted"
    );
    for kv in &items {
        assert_eq!(kv.value, kv.key.as_bytes(), "value of {}", kv.key);
    }
    assert!(
        revision >= last,
        "list revision {revision} is at least the last write {last}"
    );
    let (items, _) = list(store, "/registry/pods/a/").await;
    assert_eq!(
        keys(&items),
        [
            "/registry/pods/a/y",
            "/registry/pods/a/yy",
            "/registry/pods/a/z"
        ]
    );
    let (items, revision) = list(store, "/registry/nothing/").await;
    assert!(items.is_empty(), "an unused prefix lists nothing");
    assert_eq!(
        revision,
        current(store).await,
        "an empty list still reports the store revision"
    );
    let (all, _) = list(store, "").await;
    assert_eq!(
        all.len(),
        wanted.len() + others.len(),
        "the empty prefix lists everything"
    );
    assert!(
        all.windows(2).all(|w| w[0].key < w[1].key),
        "full list is sorted"
    );
}

pub async fn create_existing_is_already_exists(store: &dyn Store) {
    let first = create(store, "/registry/ns/a", "one").await;
    let revision = current(store).await;
    match store.create("/registry/ns/a", b"two".to_vec()).await {
        Err(Error::AlreadyExists { key }) => assert_eq!(key, "/registry/ns/a"),
        other => panic!("second create must be AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        get(store, "/registry/ns/a").await,
        Some(first),
        "value unchanged"
    );
    assert_eq!(
        current(store).await,
        revision,
        "a failed create does not bump the revision"
    );
}

pub async fn update_is_compare_and_swap(store: &dyn Store) {
    let created = create(store, "/registry/rc/a", "v1").await;
    let updated = update(store, "/registry/rc/a", "v2", created.mod_revision).await;
    assert_eq!(updated.value, b"v2");
    assert_eq!(
        updated.create_revision, created.create_revision,
        "update keeps create_revision"
    );
    assert!(
        updated.mod_revision > created.mod_revision,
        "update bumps mod_revision"
    );
    assert_eq!(get(store, "/registry/rc/a").await, Some(updated.clone()));

    let revision = current(store).await;
    match store
        .update("/registry/rc/a", b"v3".to_vec(), created.mod_revision)
        .await
    {
        Err(Error::Conflict {
            key,
            expected,
            actual,
        }) => {
            assert_eq!(key, "/registry/rc/a");
            assert_eq!(expected, created.mod_revision);
            assert_eq!(actual, updated.mod_revision);
        }
        other => panic!("stale update must be Conflict, got {other:?}"),
    }
    assert_eq!(
        get(store, "/registry/rc/a").await,
        Some(updated.clone()),
        "conflict changes nothing"
    );
    assert_eq!(
        current(store).await,
        revision,
        "a conflict does not bump the revision"
    );

    match store
        .update("/registry/rc/missing", b"x".to_vec(), updated.mod_revision)
        .await
    {
        Err(Error::NotFound { key }) => assert_eq!(key, "/registry/rc/missing"),
        other => panic!("update of a missing key must be NotFound, got {other:?}"),
    }
    match store.update("/registry/rc/missing", b"x".to_vec(), 0).await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("update at revision 0 must not create, got {other:?}"),
    }
    assert_eq!(get(store, "/registry/rc/missing").await, None);
}

pub async fn conditional_delete(store: &dyn Store) {
    let created = create(store, "/registry/svc/a", "v1").await;
    let updated = update(store, "/registry/svc/a", "v2", created.mod_revision).await;
    match store
        .delete("/registry/svc/a", Some(created.mod_revision))
        .await
    {
        Err(Error::Conflict {
            key,
            expected,
            actual,
        }) => {
            assert_eq!(key, "/registry/svc/a");
            assert_eq!(expected, created.mod_revision);
            assert_eq!(actual, updated.mod_revision);
        }
        other => panic!("stale delete must be Conflict, got {other:?}"),
    }
    assert_eq!(
        get(store, "/registry/svc/a").await,
        Some(updated.clone()),
        "conflict keeps the key"
    );

    let deleted = delete(store, "/registry/svc/a", Some(updated.mod_revision)).await;
    assert_eq!(deleted.key, "/registry/svc/a");
    assert_eq!(deleted.value, b"v2", "delete returns the deleted value");
    assert_eq!(deleted.create_revision, created.create_revision);
    assert!(
        deleted.mod_revision > updated.mod_revision,
        "mod_revision is the deletion's revision"
    );
    assert_eq!(current(store).await, deleted.mod_revision);
    assert_eq!(get(store, "/registry/svc/a").await, None);

    match store.delete("/registry/svc/a", None).await {
        Err(Error::NotFound { key }) => assert_eq!(key, "/registry/svc/a"),
        other => panic!("delete of a missing key must be NotFound, got {other:?}"),
    }
    match store
        .delete("/registry/svc/a", Some(deleted.mod_revision))
        .await
    {
        Err(Error::NotFound { .. }) => {}
        other => panic!("conditional delete of a missing key must be NotFound, got {other:?}"),
    }

    let other = create(store, "/registry/svc/b", "b").await;
    let gone = delete(store, "/registry/svc/b", None).await;
    assert_eq!(gone.value, b"b");
    assert!(gone.mod_revision > other.mod_revision);
    // A key can be created again after deletion, with a new create_revision.
    let again = create(store, "/registry/svc/b", "b2").await;
    assert!(again.create_revision > gone.mod_revision);
}

pub async fn revisions_strictly_increase(store: &dyn Store) {
    let mut last = current(store).await;
    let mut step = |rev: Revision, what: &str| {
        assert!(
            rev > last,
            "{what}: revision {rev} must be above the previous {last}"
        );
        last = rev;
    };
    let a = create(store, "/r/a", "1").await;
    step(a.mod_revision, "create a");
    let b = create(store, "/r/b", "1").await;
    step(b.mod_revision, "create b");
    let a2 = update(store, "/r/a", "2", a.mod_revision).await;
    step(a2.mod_revision, "update a");
    let d = delete(store, "/r/b", None).await;
    step(d.mod_revision, "delete b");
    let _ = store.create("/r/a", b"dup".to_vec()).await;
    let c = create(store, "/r/c", "1").await;
    step(c.mod_revision, "create c after a failed create");
    assert_eq!(
        current(store).await,
        c.mod_revision,
        "current revision is the last write's"
    );
    let (_, list_rev) = list(store, "/r/").await;
    assert_eq!(list_rev, c.mod_revision);
}

pub async fn values_are_opaque_bytes(store: &dyn Store) {
    let from = current(store).await;
    let binary: Vec<u8> = (0..=255u8).collect();
    let kv = store
        .create("/bin/all", binary.clone())
        .await
        .unwrap_or_else(|e| panic!("create binary: {e}"));
    let empty = store
        .create("/bin/empty", Vec::new())
        .await
        .unwrap_or_else(|e| panic!("create empty: {e}"));
    assert_eq!(
        get(store, "/bin/all").await.map(|kv| kv.value),
        Some(binary.clone())
    );
    assert_eq!(
        get(store, "/bin/empty").await.map(|kv| kv.value),
        Some(Vec::new())
    );
    let mut stream = watch(store, "/bin/", from).await;
    assert_eq!(next_event(&mut stream).await.kv, kv);
    assert_eq!(next_event(&mut stream).await.kv, empty);
}

pub async fn watch_from_zero_replays_history(store: &dyn Store) {
    let a = create(store, "/w/a", "a1").await;
    let a2 = update(store, "/w/a", "a2", a.mod_revision).await;
    let b = create(store, "/w/b", "b1").await;
    let gone = delete(store, "/w/a", None).await;
    let mut stream = watch(store, "/w/", 0).await;
    let events = [
        next_event(&mut stream).await,
        next_event(&mut stream).await,
        next_event(&mut stream).await,
        next_event(&mut stream).await,
    ];
    assert_eq!(
        events[0],
        WatchEvent {
            kind: EventKind::Put,
            kv: a.clone(),
            prev: None
        }
    );
    assert_eq!(
        events[1],
        WatchEvent {
            kind: EventKind::Put,
            kv: a2.clone(),
            prev: Some(a.clone())
        }
    );
    assert_eq!(
        events[2],
        WatchEvent {
            kind: EventKind::Put,
            kv: b,
            prev: None
        }
    );
    assert_eq!(
        events[3],
        WatchEvent {
            kind: EventKind::Delete,
            kv: gone,
            prev: Some(a2)
        }
    );
    // Then live events follow.
    let c = create(store, "/w/c", "c1").await;
    assert_eq!(next_event(&mut stream).await.kv, c);
}

pub async fn watch_from_mid_revision(store: &dyn Store) {
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(create(store, &format!("/m/{i}"), "x").await.mod_revision);
    }
    let mut stream = watch(store, "/m/", revs[2]).await;
    let e3 = next_event(&mut stream).await;
    let e4 = next_event(&mut stream).await;
    assert_eq!(
        (e3.kv.key.as_str(), e3.revision()),
        ("/m/3", revs[3]),
        "first event after revs[2]"
    );
    assert_eq!((e4.kv.key.as_str(), e4.revision()), ("/m/4", revs[4]));
    let live = create(store, "/m/5", "x").await;
    let e5 = next_event(&mut stream).await;
    assert_eq!(
        e5.kv, live,
        "no event before revs[2] is replayed; the next one is live"
    );
}

pub async fn watch_live_events(store: &dyn Store) {
    let from = current(store).await;
    let mut stream = watch(store, "/live/", from).await;
    let created = create(store, "/live/a", "1").await;
    let updated = update(store, "/live/a", "2", created.mod_revision).await;
    let deleted = delete(store, "/live/a", Some(updated.mod_revision)).await;

    let e = next_event(&mut stream).await;
    assert_eq!(
        e,
        WatchEvent {
            kind: EventKind::Put,
            kv: created.clone(),
            prev: None
        }
    );
    let e = next_event(&mut stream).await;
    assert_eq!(
        e,
        WatchEvent {
            kind: EventKind::Put,
            kv: updated.clone(),
            prev: Some(created)
        },
        "an update's event carries the previous value"
    );
    let e = next_event(&mut stream).await;
    assert_eq!(e.kind, EventKind::Delete);
    assert_eq!(
        e.kv, deleted,
        "a delete's kv is the deleted value at the deletion revision"
    );
    assert_eq!(e.kv.value, b"2");
    assert_eq!(e.prev, Some(updated));
}

pub async fn watch_filters_by_prefix(store: &dyn Store) {
    let from = current(store).await;
    let mut stream = watch(store, "/a/", from).await;
    create(store, "/b/x", "no").await;
    let x = create(store, "/a/x", "yes").await;
    create(store, "/ab/x", "no").await;
    create(store, "/a", "no").await;
    let y = create(store, "/a/y", "yes").await;
    assert_eq!(next_event(&mut stream).await.kv, x);
    assert_eq!(
        next_event(&mut stream).await.kv,
        y,
        "keys outside the prefix are not delivered"
    );

    // The same holds for replayed history.
    let mut replay = watch(store, "/a/", from).await;
    assert_eq!(next_event(&mut replay).await.kv, x);
    assert_eq!(next_event(&mut replay).await.kv, y);
}

pub async fn compaction_makes_old_revisions_gone(store: &dyn Store) {
    let mut revs = Vec::new();
    for i in 0..4 {
        revs.push(create(store, &format!("/c/{i}"), "x").await.mod_revision);
    }
    store
        .compact(revs[2])
        .await
        .unwrap_or_else(|e| panic!("compact at {}: {e}", revs[2]));
    match store.watch("/c/", revs[0]).await {
        Err(Error::Compacted {
            requested,
            compacted,
        }) => {
            assert_eq!(requested, revs[0]);
            assert_eq!(
                compacted, revs[2],
                "history at or below the compaction revision is gone"
            );
        }
        Err(e) => panic!("watch from a compacted revision must be Compacted, got {e}"),
        Ok(_) => panic!("watch from a compacted revision must fail"),
    }
    match store.watch("/c/", revs[2] - 1).await {
        Err(Error::Compacted { .. }) => {}
        Err(e) => panic!("watch from just below the compaction must be Compacted, got {e}"),
        Ok(_) => panic!("watch from just below the compaction revision must fail"),
    }
    // From the compaction revision itself, the rest of history is still there.
    let mut stream = watch(store, "/c/", revs[2]).await;
    let e = next_event(&mut stream).await;
    assert_eq!((e.kv.key.as_str(), e.revision()), ("/c/3", revs[3]));
    // Compaction forgets history, not data.
    let (items, _) = list(store, "/c/").await;
    assert_eq!(items.len(), 4, "compaction keeps every key");
    // Compacting again, or below, is harmless; far ahead compacts up to the current revision.
    store
        .compact(revs[1])
        .await
        .unwrap_or_else(|e| panic!("compact below the last compaction: {e}"));
    let now = current(store).await;
    store
        .compact(now + 100)
        .await
        .unwrap_or_else(|e| panic!("compact ahead of the current revision: {e}"));
    let mut stream = watch(store, "/c/", now).await;
    let live = create(store, "/c/4", "x").await;
    assert_eq!(next_event(&mut stream).await.kv, live);
}

pub async fn concurrent_writers_lose_nothing(store: &dyn Store) {
    const WRITERS: usize = 8;
    const EACH: usize = 25;
    // Collect through a task so the test's own store reference is enough.
    let from = current(store).await;
    let mut stream = watch(store, "/cc/", from).await;
    let results = futures::future::join_all((0..WRITERS).map(|w| async move {
        let mut revs = Vec::new();
        for i in 0..EACH {
            revs.push(
                create(store, &format!("/cc/{w:02}-{i:03}"), "x")
                    .await
                    .mod_revision,
            );
        }
        revs
    }))
    .await;
    let revs: Vec<Revision> = results.into_iter().flatten().collect();
    let distinct: BTreeSet<_> = revs.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        WRITERS * EACH,
        "every write got its own revision"
    );
    let (items, list_rev) = list(store, "/cc/").await;
    assert_eq!(
        items.len(),
        WRITERS * EACH,
        "every acknowledged create is listed"
    );
    assert!(list_rev >= *distinct.last().unwrap_or(&0));

    let mut seen = BTreeSet::new();
    let mut last = from;
    for _ in 0..WRITERS * EACH {
        let e = next_event(&mut stream).await;
        assert!(
            e.revision() > last,
            "watch events in revision order: {} after {last}",
            e.revision()
        );
        last = e.revision();
        seen.insert(e.kv.key);
    }
    assert_eq!(
        seen.len(),
        WRITERS * EACH,
        "the watcher saw every write once"
    );
}

pub async fn concurrent_cas_increments_are_not_lost(store: &dyn Store) {
    const TASKS: usize = 4;
    const EACH: usize = 10;
    create(store, "/counter", "0").await;
    let conflicts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    futures::future::join_all((0..TASKS).map(|_| {
        let conflicts = conflicts.clone();
        async move {
            for _ in 0..EACH {
                loop {
                    let kv = get(store, "/counter")
                        .await
                        .unwrap_or_else(|| panic!("counter vanished"));
                    let n: usize = String::from_utf8_lossy(&kv.value)
                        .parse()
                        .unwrap_or_else(|e| panic!("counter value: {e}"));
                    match store
                        .update(
                            "/counter",
                            (n + 1).to_string().into_bytes(),
                            kv.mod_revision,
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(Error::Conflict { .. }) => {
                            conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => panic!("increment: {e}"),
                    }
                }
            }
        }
    }))
    .await;
    let kv = get(store, "/counter")
        .await
        .unwrap_or_else(|| panic!("counter vanished"));
    assert_eq!(
        String::from_utf8_lossy(&kv.value),
        (TASKS * EACH).to_string(),
        "every successful compare-and-swap counted ({} conflicts retried)",
        conflicts.load(std::sync::atomic::Ordering::Relaxed)
    );
}
