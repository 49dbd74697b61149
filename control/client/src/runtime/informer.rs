//! Shared informers: one reflector per resource feeding a cache, and change subscriptions
//! that turn cache changes into work-queue keys.

use std::sync::Arc;
use std::time::Duration;

use super::queue::WorkQueue;
use crate::{Api, Change, Client, ListParams, Object, Reflector, Store};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// Starts a reflector of every `K` (all namespaces) and returns its cache.
pub fn reflect<K>(client: &Client, shutdown: &CancellationToken) -> Store<K>
where
    K: Object + k8s_openapi::Resource,
{
    let r = Reflector::new(Api::<K>::all(client.clone()), ListParams::default());
    let store = r.store();
    tokio::spawn(r.run(shutdown.clone()));
    store
}

/// A change as seen by a subscriber: an object, or "everything may have changed".
#[derive(Debug, Clone)]
pub enum Seen<K> {
    /// An object was added, changed or removed (its latest or last state).
    Object(Arc<K>),
    /// The cache was rebuilt or notifications were lost: re-read everything.
    All,
}

/// Calls `f` for every change of `store` until `shutdown`, and with [`Seen::All`] every
/// `resync` (level-triggered safety net) and when notifications were lost.
pub fn on_change<K, F>(
    store: &Store<K>,
    shutdown: &CancellationToken,
    resync: Option<Duration>,
    mut f: F,
) where
    K: Object,
    F: FnMut(Seen<K>) + Send + 'static,
{
    let mut rx = store.subscribe();
    let shutdown = shutdown.clone();
    let store = store.clone();
    tokio::spawn(async move {
        store.wait_ready().await;
        f(Seen::All);
        let period = resync.unwrap_or(Duration::from_secs(3600 * 24 * 365));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick(), if resync.is_some() => f(Seen::All),
                r = rx.recv() => match r {
                    Ok(Change::Applied(o)) | Ok(Change::Deleted(o)) => f(Seen::Object(o)),
                    Ok(Change::Resynced) => f(Seen::All),
                    Err(RecvError::Lagged(n)) => {
                        tracing::debug!(lost = n, "change notifications lagged; resyncing");
                        f(Seen::All);
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    });
}

/// Adds the key ([`key_of`]) of every changed object of `store` that passes `keep` to
/// `queue`, and of every cached one that passes it on [`Seen::All`] (see [`on_change`]).
pub fn enqueue_on_change<K>(
    store: &Store<K>,
    queue: &WorkQueue<String>,
    shutdown: &CancellationToken,
    resync: Option<Duration>,
    keep: impl Fn(&K) -> bool + Send + 'static,
) where
    K: Object,
{
    let q = queue.clone();
    let all = store.clone();
    on_change(store, shutdown, resync, move |s| match s {
        Seen::Object(o) => {
            if keep(&o) {
                q.add(key_of(&*o));
            }
        }
        Seen::All => all
            .filter(|o| keep(o))
            .iter()
            .for_each(|o| q.add(key_of(&**o))),
    });
}

/// `namespace/name` (or `name` for cluster-scoped objects), the key of work queues.
pub fn key_of<K: Object>(o: &K) -> String {
    if o.namespace().is_empty() {
        o.name().to_string()
    } else {
        format!("{}/{}", o.namespace(), o.name())
    }
}

/// Splits a key into `(namespace, name)`.
pub fn split_key(key: &str) -> (&str, &str) {
    match key.split_once('/') {
        Some((ns, n)) => (ns, n),
        None => ("", key),
    }
}
