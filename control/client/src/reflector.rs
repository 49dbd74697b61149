//! A reflector: a [`watcher`] feeding a local cache with one writer and many cheap readers.
//!
//! [`Reflector::run`] owns the only [`Writer`]; every component reads through [`Store`]
//! handles, which hand out `Arc<K>` without copying objects and announce changes on a
//! broadcast channel (level-triggered consumers re-read the store; a lagged receiver should
//! treat the lag as [`Change::Resynced`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{Api, ListParams, Object};
use crate::watcher::{Event, watcher};

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub type ObjectKey = (String, String);

/// A change of the cache.
#[derive(Debug, Clone)]
pub enum Change<K> {
    /// An object was added or changed.
    Applied(Arc<K>),
    /// An object was removed.
    Deleted(Arc<K>),
    /// The cache was rebuilt from a full list (after the Applied/Deleted of the difference).
    Resynced,
}

const CHANGES_CAPACITY: usize = 4096;

struct Shared<K> {
    objects: RwLock<HashMap<ObjectKey, Arc<K>>>,
    changes: broadcast::Sender<Change<K>>,
    ready: watch::Sender<bool>,
}

impl<K> Shared<K> {
    fn read(&self) -> RwLockReadGuard<'_, HashMap<ObjectKey, Arc<K>>> {
        // A poisoned lock only means a panic elsewhere while holding it; the map itself is
        // always in a consistent state (every write is a single insert/remove/replace).
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, HashMap<ObjectKey, Arc<K>>> {
        self.objects.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A read handle on a reflector cache; clone freely.
pub struct Store<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Store {
            shared: self.shared.clone(),
        }
    }
}

impl<K> std::fmt::Debug for Store<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("len", &self.shared.read().len())
            .field("ready", &*self.shared.ready.borrow())
            .finish()
    }
}

impl<K: Object> Store<K> {
    /// One object (`namespace` empty for cluster-scoped ones).
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.shared
            .read()
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every object.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.shared.read().values().cloned().collect()
    }

    /// Objects for which `f` holds.
    pub fn filter(&self, mut f: impl FnMut(&K) -> bool) -> Vec<Arc<K>> {
        self.shared
            .read()
            .values()
            .filter(|o| f(o))
            .cloned()
            .collect()
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.shared.read().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first list has been loaded.
    pub fn is_ready(&self) -> bool {
        *self.shared.ready.borrow()
    }

    /// Waits for the first list.
    pub async fn wait_ready(&self) {
        let mut rx = self.shared.ready.subscribe();
        // The sender lives as long as `self.shared`, which we hold: this cannot fail.
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Change notifications from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change<K>> {
        self.shared.changes.subscribe()
    }
}

/// The single writer of a cache (not `Clone`).
pub struct Writer<K> {
    shared: Arc<Shared<K>>,
    /// The (re)list being received (between `Init` and `InitDone`).
    relist: Option<HashMap<ObjectKey, Arc<K>>>,
}

impl<K: Object> Default for Writer<K> {
    fn default() -> Self {
        Self::new()
    }
}

fn key_of<K: Object>(o: &K) -> ObjectKey {
    (o.namespace().to_string(), o.name().to_string())
}

impl<K: Object> Writer<K> {
    /// An empty cache.
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        let (ready, _) = watch::channel(false);
        Writer {
            shared: Arc::new(Shared {
                objects: RwLock::new(HashMap::new()),
                changes,
                ready,
            }),
            relist: None,
        }
    }

    /// A reader of this cache.
    pub fn store(&self) -> Store<K> {
        Store {
            shared: self.shared.clone(),
        }
    }

    fn notify(&self, c: Change<K>) {
        // No receivers is fine.
        let _ = self.shared.changes.send(c);
    }

    /// Applies a whole (re)list at once: `Init`, each object, `InitDone`.
    pub fn relist(&mut self, items: impl IntoIterator<Item = K>) {
        self.apply(Event::Init);
        for o in items {
            self.apply(Event::InitApply(o));
        }
        self.apply(Event::InitDone);
    }

    /// Applies one watcher event.
    pub fn apply(&mut self, ev: Event<K>) {
        match ev {
            Event::Applied(o) => {
                let o = Arc::new(o);
                self.shared.write().insert(key_of(&*o), o.clone());
                self.notify(Change::Applied(o));
            }
            Event::Deleted(o) => {
                let removed = self.shared.write().remove(&key_of(&o));
                self.notify(Change::Deleted(removed.unwrap_or_else(|| Arc::new(o))));
            }
            Event::Init => self.relist = Some(HashMap::new()),
            Event::InitApply(o) => {
                self.relist
                    .get_or_insert_with(HashMap::new)
                    .insert(key_of(&o), Arc::new(o));
            }
            Event::InitDone => {
                // The new set replaces the old one in one swap; the changes are told from the
                // two maps as they are (nothing is copied).
                let fresh = self.relist.take().unwrap_or_default();
                let old = std::mem::replace(&mut *self.shared.write(), fresh);
                let cur = self.shared.read();
                for (k, o) in &old {
                    if !cur.contains_key(k) {
                        self.notify(Change::Deleted(o.clone()));
                    }
                }
                for (k, o) in cur.iter() {
                    let same = old.get(k).is_some_and(|p| {
                        p.resource_version() == o.resource_version() && p.uid() == o.uid()
                    });
                    if !same {
                        self.notify(Change::Applied(o.clone()));
                    }
                }
                drop(cur);
                self.notify(Change::Resynced);
                self.shared.ready.send_replace(true);
            }
        }
    }
}

/// List + watch of one resource into a cache.
pub struct Reflector<K> {
    api: Api<K>,
    lp: ListParams,
    writer: Writer<K>,
}

impl<K: Object> Reflector<K> {
    /// A reflector of `api` filtered by `lp` (selectors).
    pub fn new(api: Api<K>, lp: ListParams) -> Self {
        Reflector {
            api,
            lp,
            writer: Writer::new(),
        }
    }

    /// A reader of the cache.
    pub fn store(&self) -> Store<K> {
        self.writer.store()
    }

    /// Runs until `cancel`: watch errors are logged and retried with backoff.
    pub async fn run(mut self, cancel: CancellationToken) {
        let resource = self.api.resource().plural;
        let stream = watcher(self.api.clone(), self.lp.clone());
        tokio::pin!(stream);
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return,
                n = stream.next() => n,
            };
            match next {
                Some(Ok(ev)) => self.writer.apply(ev),
                Some(Err(e)) => tracing::warn!(resource, error = %e, "watch failed; retrying"),
                None => return,
            }
        }
    }

    /// Spawns [`Reflector::run`] and returns the store and the task.
    pub fn spawn(self, cancel: CancellationToken) -> (Store<K>, tokio::task::JoinHandle<()>) {
        let store = self.store();
        (store, tokio::spawn(self.run(cancel)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(name: &str, rv: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "d", "resourceVersion": rv, "uid": name}
        }))
        .expect("configmap")
    }

    fn drain(rx: &mut broadcast::Receiver<Change<ConfigMap>>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(c) = rx.try_recv() {
            out.push(match c {
                Change::Applied(o) => format!("applied {}", o.name()),
                Change::Deleted(o) => format!("deleted {}", o.name()),
                Change::Resynced => "resynced".into(),
            });
        }
        out
    }

    #[test]
    fn a_streamed_relist_replaces_the_set_when_it_is_complete() {
        let mut w = Writer::<ConfigMap>::new();
        let store = w.store();
        let mut rx = store.subscribe();
        w.relist([cm("a", "1"), cm("b", "1")]);
        assert_eq!(store.len(), 2);
        assert!(store.is_ready());
        assert_eq!(drain(&mut rx).last().map(String::as_str), Some("resynced"));
        // A relist in progress changes nothing readers see until it is done.
        w.apply(Event::Init);
        w.apply(Event::InitApply(cm("b", "1")));
        w.apply(Event::InitApply(cm("c", "2")));
        assert_eq!(store.len(), 2);
        assert!(store.get("d", "c").is_none());
        assert!(drain(&mut rx).is_empty());
        w.apply(Event::InitDone);
        assert!(store.get("d", "a").is_none());
        assert!(store.get("d", "c").is_some());
        // Only what changed is told: a gone, c new; b unchanged.
        assert_eq!(drain(&mut rx), ["deleted a", "applied c", "resynced"]);
        // A relist that starts over (an error mid-list) drops what it had received.
        w.apply(Event::Init);
        w.apply(Event::InitApply(cm("x", "3")));
        w.apply(Event::Init);
        w.apply(Event::InitDone);
        assert!(store.is_empty());
    }
}
