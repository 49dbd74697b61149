//! The in-memory backend.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::broadcast;

use crate::{
    Error, KeyValue, Result, Revision, Store, WatchEvent, WatchStream,
    op::{self, KvTable, WriteOp},
    watch::{self, DEFAULT_WATCH_BUFFER, Fanout},
};

/// How many past events a [`MemoryStore`] keeps for watches by default.
pub const DEFAULT_MEMORY_HISTORY: usize = 10_000;

/// A store that lives in memory, for tests and as a building block.
///
/// Keeps the last [`DEFAULT_MEMORY_HISTORY`] events (or the number given to
/// [`MemoryStore::with_history`]) for watches from past revisions; older ones are compacted
/// automatically.
pub struct MemoryStore {
    state: Mutex<State>,
    fanout: Fanout,
}

struct State {
    data: BTreeMap<String, KeyValue>,
    revision: Revision,
    compacted: Revision,
    log: VecDeque<Arc<WatchEvent>>,
    history: usize,
}

impl KvTable for BTreeMap<String, KeyValue> {
    fn read(&mut self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.get(key).cloned())
    }
    fn write(&mut self, kv: &KeyValue) -> Result<()> {
        self.insert(kv.key.clone(), kv.clone());
        Ok(())
    }
    fn remove(&mut self, key: &str) -> Result<()> {
        BTreeMap::remove(self, key);
        Ok(())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_history(DEFAULT_MEMORY_HISTORY)
    }

    /// A store that keeps the last `history` events (at least one) for watches.
    pub fn with_history(history: usize) -> Self {
        Self::with_limits(history, DEFAULT_WATCH_BUFFER)
    }

    /// A store that keeps the last `history` events and lets a live watcher fall
    /// `watch_buffer` events behind before ending its stream with [`Error::WatchLagged`].
    pub fn with_limits(history: usize, watch_buffer: usize) -> Self {
        let (fanout, _) = broadcast::channel(watch_buffer.max(1));
        MemoryStore {
            state: Mutex::new(State {
                data: BTreeMap::new(),
                revision: 0,
                compacted: 0,
                log: VecDeque::new(),
                history: history.max(1),
            }),
            fanout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written: every write
        // checks first and then mutates infallibly, so a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self, op: WriteOp) -> Result<KeyValue> {
        let mut state = self.lock();
        let rev = state.revision + 1;
        let event = Arc::new(op::apply(&mut state.data, op, rev)?);
        state.revision = rev;
        state.log.push_back(event.clone());
        while state.log.len() > state.history {
            if let Some(old) = state.log.pop_front() {
                state.compacted = old.revision();
            }
        }
        let kv = event.kv.clone();
        // Sent under the lock so that live events go out in revision order. No receivers is
        // not an error.
        let _ = self.fanout.send(event);
        Ok(kv)
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.lock().data.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let state = self.lock();
        let items = state
            .data
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        Ok((items, state.revision))
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        self.write(WriteOp::Create {
            key: key.to_owned(),
            value,
        })
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue> {
        self.write(WriteOp::Update {
            key: key.to_owned(),
            value,
            expected,
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        self.write(WriteOp::Delete {
            key: key.to_owned(),
            expected,
        })
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        let state = self.lock();
        if from < state.compacted {
            return Err(Error::Compacted {
                requested: from,
                compacted: state.compacted,
            });
        }
        let history = state
            .log
            .iter()
            .filter(|e| e.revision() > from && e.kv.key.starts_with(prefix))
            .map(|e| WatchEvent::clone(e))
            .collect();
        // Subscribing under the lock: no write can fall between the history and the live part.
        let rx = self.fanout.subscribe();
        let after = from.max(state.revision);
        Ok(watch::stream(history, rx, prefix.to_owned(), after))
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.lock().revision)
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let mut state = self.lock();
        let target = revision.min(state.revision);
        if target <= state.compacted {
            return Ok(());
        }
        while state.log.front().is_some_and(|e| e.revision() <= target) {
            state.log.pop_front();
        }
        state.compacted = target;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn lagging_watcher_ends_with_an_error_instead_of_skipping() {
        let store = MemoryStore::with_limits(100, 4);
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

    #[tokio::test]
    async fn history_window_compacts_automatically() {
        let store = MemoryStore::with_history(5);
        for i in 0..20 {
            store
                .create(&format!("/k{i:02}"), vec![])
                .await
                .expect("create");
        }
        match store.watch("/", 0).await {
            Err(Error::Compacted {
                requested: 0,
                compacted: 15,
            }) => {}
            Err(e) => panic!("expected Compacted at 15, got {e}"),
            Ok(_) => panic!("expected Compacted at 15, got a stream"),
        }
        let mut stream = store.watch("/", 15).await.expect("watch inside the window");
        let first = stream
            .next()
            .await
            .expect("an event")
            .expect("not an error");
        assert_eq!(first.revision(), 16);
    }
}
