//! One watch cache per resource: a single task follows one store watch and keeps the current
//! objects plus a window of recent events; every HTTP watcher reads from it, so N watchers
//! cost no store reads.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Deref;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use xkube_api::ResourceInfo;
use xkube_store::{EventKind, KeyValue, Revision, Store};

/// Type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// `ADDED`.
    Added,
    /// `MODIFIED`.
    Modified,
    /// `DELETED`.
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// An object as the cache holds it: decoded, and encoded as JSON at most once, on first use,
/// for every watcher that writes it (Kubernetes' cacher shares one serialization per event
/// the same way). It derefs to the [`Value`].
#[derive(Debug)]
pub struct CachedObject {
    value: Value,
    json: OnceLock<Bytes>,
}

impl CachedObject {
    /// Wraps a decoded object.
    pub fn new(value: Value) -> Self {
        CachedObject {
            value,
            json: OnceLock::new(),
        }
    }

    /// The object.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The object as JSON (encoded by the first caller).
    pub fn json(&self) -> &Bytes {
        self.json
            .get_or_init(|| serde_json::to_vec(&self.value).unwrap_or_default().into())
    }
}

impl Deref for CachedObject {
    type Target = Value;

    fn deref(&self) -> &Value {
        &self.value
    }
}

/// A decoded change to one object.
#[derive(Debug)]
pub struct CachedEvent {
    /// Type.
    pub kind: EventType,
    /// Store key.
    pub key: String,
    /// Revision of the change.
    pub revision: Revision,
    /// The object after the change (for deletes: the last state, at the deletion revision).
    pub object: Arc<CachedObject>,
    /// The object before the change, if any.
    pub prev: Option<Arc<CachedObject>>,
    /// The event's line of a JSON watch stream per type a watcher may see it as (a selector
    /// turns a MODIFIED into an ADDED or DELETED), built on first use and shared.
    lines: [OnceLock<Bytes>; 3],
}

impl CachedEvent {
    /// An event; its lines are built when first asked for.
    pub fn new(
        kind: EventType,
        key: String,
        revision: Revision,
        object: Arc<CachedObject>,
        prev: Option<Arc<CachedObject>>,
    ) -> Self {
        CachedEvent {
            kind,
            key,
            revision,
            object,
            prev,
            lines: Default::default(),
        }
    }

    /// `{"type":<ty>,"object":<the object>}` and a newline: one line of a JSON watch stream,
    /// encoded once per event and type however many watchers write it.
    pub fn json_line(&self, ty: EventType) -> Bytes {
        self.lines[ty as usize]
            .get_or_init(|| {
                let object = self.object.json();
                let mut b = BytesMut::with_capacity(object.len() + 32);
                b.put_slice(b"{\"type\":\"");
                b.put_slice(ty.as_str().as_bytes());
                b.put_slice(b"\",\"object\":");
                b.put_slice(object);
                b.put_slice(b"}\n");
                b.freeze()
            })
            .clone()
    }
}

/// What the cache broadcasts to live watchers.
#[derive(Debug, Clone)]
pub enum Message {
    /// A change.
    Event(Arc<CachedEvent>),
    /// Nothing before this revision is pending (bookmark).
    Progress(Revision),
    /// The cache re-listed: watchers must end so clients re-watch.
    Reset,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Arc<CachedObject>>,
    history: VecDeque<Arc<CachedEvent>>,
    /// Events with revision > `oldest` are in `history`.
    oldest: Revision,
    /// Last revision applied.
    revision: Revision,
    ready: bool,
}

/// What a new watcher starts from.
pub enum Start {
    /// The resourceVersion is older than the cache window.
    TooOld {
        /// Oldest resourceVersion the cache can serve.
        oldest: Revision,
    },
    /// Events to send first, then the live receiver.
    Ok {
        /// Initial events (synthetic ADDED or replayed history).
        initial: Vec<Arc<CachedEvent>>,
        /// Revision the initial events bring the watcher to.
        revision: Revision,
        /// Live messages after that.
        live: broadcast::Receiver<Message>,
    },
    /// The cache has not finished its first list.
    NotReady,
}

/// The watch cache of one resource.
pub struct WatchCache {
    /// The resource.
    pub resource: &'static ResourceInfo,
    state: RwLock<State>,
    tx: broadcast::Sender<Message>,
    capacity: usize,
}

/// Decodes a stored value and stamps its resourceVersion.
pub fn decode(kv: &KeyValue, revision: Revision) -> Option<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value).ok()?;
    xkube_api::meta::set(
        &mut v,
        "resourceVersion",
        Value::String(revision.to_string()),
    );
    Some(v)
}

impl WatchCache {
    /// A cache keeping `capacity` events; call [`WatchCache::run`] to feed it.
    pub fn new(resource: &'static ResourceInfo, capacity: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(4096);
        Arc::new(WatchCache {
            resource,
            state: RwLock::new(State::default()),
            tx,
            capacity: capacity.max(1),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A poisoned lock means the single writer panicked mid-update; the data is still the
        // last consistent state it wrote, so keep serving it.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The feeder: the only writer of the cache. Lists, watches, and re-lists on errors.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        bookmark: Duration,
        cancel: CancellationToken,
    ) {
        let prefix = self.resource.key_prefix(None);
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let (items, rev) = match store.list(&prefix).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(resource = self.resource.plural, error = %e, "watch cache list failed");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
            {
                let mut st = self.write();
                let was_ready = st.ready;
                st.objects = items
                    .iter()
                    .filter_map(|kv| {
                        decode(kv, kv.mod_revision)
                            .map(|v| (kv.key.clone(), Arc::new(CachedObject::new(v))))
                    })
                    .collect();
                st.history.clear();
                st.oldest = rev;
                st.revision = rev;
                st.ready = true;
                if was_ready {
                    let _ = self.tx.send(Message::Reset);
                }
            }
            let mut stream = match store.watch(&prefix, rev).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(resource = self.resource.plural, error = %e, "watch cache watch failed");
                    continue;
                }
            };
            let mut tick = tokio::time::interval(bookmark);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {
                        let rev = self.read().revision;
                        let _ = self.tx.send(Message::Progress(rev));
                    }
                    ev = stream.next() => match ev {
                        Some(Ok(ev)) => self.apply(ev),
                        Some(Err(e)) => {
                            tracing::warn!(resource = self.resource.plural, error = %e, "watch cache re-lists");
                            break;
                        }
                        None => {
                            tokio::select! {
                                _ = cancel.cancelled() => return,
                                _ = tokio::time::sleep(Duration::from_millis(200)) => break,
                            }
                        }
                    }
                }
            }
        }
    }

    fn apply(&self, ev: xkube_store::WatchEvent) {
        let revision = ev.revision();
        let prev = ev
            .prev
            .as_ref()
            .and_then(|p| decode(p, p.mod_revision))
            .map(|p| Arc::new(CachedObject::new(p)));
        let Some(obj) = decode(&ev.kv, revision) else {
            tracing::warn!(key = ev.kv.key, "undecodable object in store");
            return;
        };
        let obj = Arc::new(CachedObject::new(obj));
        let mut st = self.write();
        let kind = match ev.kind {
            EventKind::Delete => {
                st.objects.remove(&ev.kv.key);
                EventType::Deleted
            }
            EventKind::Put => {
                let existed = st.objects.insert(ev.kv.key.clone(), obj.clone()).is_some();
                if existed || prev.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                }
            }
        };
        let ce = Arc::new(CachedEvent::new(kind, ev.kv.key, revision, obj, prev));
        st.history.push_back(ce.clone());
        while st.history.len() > self.capacity {
            if let Some(old) = st.history.pop_front() {
                st.oldest = old.revision;
            }
        }
        st.revision = revision;
        // Sent under the lock so a watcher that snapshots then subscribes misses nothing.
        let _ = self.tx.send(Message::Event(ce));
    }

    /// Whether the first list has been loaded.
    pub fn is_ready(&self) -> bool {
        self.read().ready
    }

    /// The revision the cache has reached (0 before its first list).
    pub fn revision(&self) -> Revision {
        self.read().revision
    }

    /// The current object at `key`, if the cache is ready and holds it.
    pub fn get(&self, key: &str) -> Option<Arc<CachedObject>> {
        let st = self.read();
        if !st.ready {
            return None;
        }
        st.objects.get(key).cloned()
    }

    /// The current objects under `prefix` and the cache revision.
    pub fn list(&self, prefix: &str) -> Option<(Vec<Arc<CachedObject>>, Revision)> {
        let st = self.read();
        if !st.ready {
            return None;
        }
        let items = st
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        Some((items, st.revision))
    }

    /// Starts a watcher from `from` (`None` = current state as synthetic ADDED events).
    pub fn start(&self, prefix: &str, from: Option<Revision>) -> Start {
        let st = self.read();
        if !st.ready {
            return Start::NotReady;
        }
        let live = self.tx.subscribe();
        match from {
            None => {
                let initial = st
                    .objects
                    .range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| {
                        Arc::new(CachedEvent::new(
                            EventType::Added,
                            k.clone(),
                            xkube_api::meta::resource_version(v).parse().unwrap_or(0),
                            v.clone(),
                            None,
                        ))
                    })
                    .collect();
                Start::Ok {
                    initial,
                    revision: st.revision,
                    live,
                }
            }
            Some(rv) if rv < st.oldest => Start::TooOld {
                oldest: st.oldest + 1,
            },
            Some(rv) => Start::Ok {
                initial: st
                    .history
                    .iter()
                    .filter(|e| e.revision > rv && e.key.starts_with(prefix))
                    .cloned()
                    .collect(),
                revision: st.revision.max(rv),
                live,
            },
        }
    }

    /// Waits until the cache has seen `revision` (or the timeout passes).
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.read().revision < revision && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_line_is_encoded_once_and_shared() {
        let pod =
            json!({"kind": "Pod", "metadata": {"name": "p", "labels": {"a": "\"quoted\"\n"}}});
        let ev = CachedEvent::new(
            EventType::Modified,
            "/registry/pods/default/p".into(),
            7,
            Arc::new(CachedObject::new(pod.clone())),
            None,
        );
        let (first, second) = (
            ev.json_line(EventType::Modified),
            ev.json_line(EventType::Modified),
        );
        // The same bytes, not an equal copy: every watcher writes one buffer.
        assert_eq!(first.as_ptr(), second.as_ptr());
        assert!(first.ends_with(b"}\n") && !first[..first.len() - 1].contains(&b'\n'));
        let line: Value = serde_json::from_slice(&first).expect("one JSON object");
        assert_eq!(line, json!({"type": "MODIFIED", "object": pod}));
        // A watcher whose selector turns the change into a deletion gets its own line.
        let deleted: Value =
            serde_json::from_slice(&ev.json_line(EventType::Deleted)).expect("json");
        assert_eq!(deleted["type"], "DELETED");
        assert_eq!(deleted["object"], pod);
    }
}
