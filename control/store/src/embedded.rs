//! The embedded backend: one crash-safe redb file.
//!
//! Layout: table `data` maps each key to `create_revision | mod_revision | value`; table
//! `events` maps each revision still in the watch window to its encoded [`WatchEvent`]; table
//! `meta` holds the current and the compacted revision. All three change in the same
//! transaction, committed with immediate durability before any write is acknowledged, so a crash
//! never loses an acknowledged write, never reorders them, and revisions only grow across
//! restarts.
//!
//! Writes are group-committed: callers queue their operation; whoever finds no commit running
//! starts one on the blocking pool, which drains the queue in batches (one transaction and one
//! fsync per batch), publishes the batch's events to live watchers in revision order, then
//! answers each caller. Only one commit runs at a time, which is what keeps the live events in
//! order.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use redb::{Database, Durability, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use crate::{
    Error, EventKind, KeyValue, Result, Revision, Store, WatchEvent, WatchStream,
    op::{self, KvTable, WriteOp},
    watch::{self, DEFAULT_WATCH_BUFFER, Fanout},
};

const DATA: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("data");
const EVENTS: TableDefinition<'_, i64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<'_, &str, i64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

/// The file inside the data dir.
pub const STORE_FILE: &str = "store.redb";

/// Tuning of an [`EmbeddedStore`].
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// How many past revisions stay in the event log for watches; older ones are compacted
    /// automatically. At least 1.
    pub history: u64,
    /// How many live events a watcher may fall behind before its stream ends with
    /// [`Error::WatchLagged`].
    pub watch_buffer: usize,
    /// The most writes committed in one transaction.
    pub max_batch: usize,
    /// redb's quick repair: each commit also saves the allocator state and uses a two-phase
    /// commit (two fsyncs instead of one), so that reopening after a crash is instant instead
    /// of a checksum walk over the whole file. Off by default: it made commits 4-10x slower
    /// here (see the crate's README), and both modes survive SIGKILL (tests/crash.rs).
    pub quick_repair: bool,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            history: 10_000,
            watch_buffer: DEFAULT_WATCH_BUFFER,
            max_batch: 512,
            quick_repair: false,
        }
    }
}

/// The default store: `<dir>/store.redb`, durable before acknowledging.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    fanout: Fanout,
    history: i64,
    max_batch: usize,
    quick_repair: bool,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    committing: bool,
}

enum Op {
    Write(WriteOp),
    Compact(Revision),
}

struct Pending {
    op: Op,
    reply: oneshot::Sender<Result<Option<KeyValue>>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` with default options.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, EmbeddedOptions::default()).await
    }

    pub async fn open_with(dir: impl AsRef<Path>, options: EmbeddedOptions) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        let inner = blocking(move || Inner::open(&dir, &options)).await?;
        Ok(EmbeddedStore {
            inner: Arc::new(inner),
        })
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn submit(&self, op: Op) -> Result<Option<KeyValue>> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = self.inner.lock_queue();
            queue.pending.push(Pending { op, reply });
            !std::mem::replace(&mut queue.committing, true)
        };
        if start {
            let committer = Committer {
                inner: self.inner.clone(),
                finished: false,
            };
            tokio::task::spawn_blocking(move || committer.run());
        }
        answer.await.map_err(|_| Error::Backend {
            detail: "the embedded store's commit task stopped before answering".into(),
        })?
    }

    async fn write(&self, op: WriteOp) -> Result<KeyValue> {
        self.submit(Op::Write(op))
            .await?
            .ok_or_else(|| Error::Backend {
                detail: "a write got no result".into(),
            })
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        blocking(move || {
            let txn = inner
                .db
                .begin_read()
                .map_err(|e| Error::redb("begin read", e))?;
            f(&txn)
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Backend {
            detail: format!("blocking store task: {e}"),
        })?
}

impl Inner {
    fn open(dir: &Path, options: &EmbeddedOptions) -> Result<Inner> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            op: "create data dir",
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(STORE_FILE);
        let db = open_database(&path)?;
        // Create the tables so that readers never meet a missing one.
        let txn = db
            .begin_write()
            .map_err(|e| Error::redb("begin write", e))?;
        let (revision, compacted) = {
            txn.open_table(DATA)
                .map_err(|e| Error::redb("open data", e))?;
            txn.open_table(EVENTS)
                .map_err(|e| Error::redb("open events", e))?;
            let meta = txn
                .open_table(META)
                .map_err(|e| Error::redb("open meta", e))?;
            (
                meta_get(&meta, META_REVISION)?,
                meta_get(&meta, META_COMPACTED)?,
            )
        };
        txn.commit().map_err(|e| Error::redb("commit", e))?;
        tracing::info!(path = %path.display(), revision, compacted, "opened embedded store");
        let (fanout, _) = broadcast::channel(options.watch_buffer.max(1));
        Ok(Inner {
            db,
            path,
            fanout,
            history: i64::try_from(options.history.max(1)).unwrap_or(i64::MAX),
            max_batch: options.max_batch.max(1),
            quick_repair: options.quick_repair,
            queue: Mutex::new(Queue::default()),
        })
    }

    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        // The queue is a Vec and a flag, each changed by single infallible steps: a poisoned
        // lock still guards consistent data.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn commit_batch(&self, batch: Vec<Pending>) {
        let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|p| (p.op, p.reply)).unzip();
        match self.apply_batch(ops) {
            Ok((results, events)) => {
                for event in events {
                    // No receivers is not an error.
                    let _ = self.fanout.send(event);
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, path = %self.path.display(), "embedded store commit failed");
                let detail = format!("commit failed: {err}");
                let mut err = Some(err);
                for reply in replies {
                    let e = err.take().unwrap_or_else(|| Error::Backend {
                        detail: detail.clone(),
                    });
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    /// Applies a batch in one durable transaction. The outer error aborts the whole batch (none
    /// of it was committed); the inner results are per operation.
    #[allow(clippy::type_complexity)]
    fn apply_batch(
        &self,
        ops: Vec<Op>,
    ) -> Result<(Vec<Result<Option<KeyValue>>>, Vec<Arc<WatchEvent>>)> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| Error::redb("begin write", e))?;
        txn.set_durability(Durability::Immediate);
        txn.set_quick_repair(self.quick_repair);
        let mut results = Vec::with_capacity(ops.len());
        let mut events = Vec::new();
        {
            let mut data = txn
                .open_table(DATA)
                .map_err(|e| Error::redb("open data", e))?;
            let mut log = txn
                .open_table(EVENTS)
                .map_err(|e| Error::redb("open events", e))?;
            let mut meta = txn
                .open_table(META)
                .map_err(|e| Error::redb("open meta", e))?;
            let mut revision = meta_get(&meta, META_REVISION)?;
            let mut compacted = meta_get(&meta, META_COMPACTED)?;
            for op in ops {
                match op {
                    Op::Write(op) => {
                        let rev = revision + 1;
                        match op::apply(&mut RedbKv(&mut data), op, rev) {
                            Ok(event) => {
                                revision = rev;
                                log.insert(rev, encode_event(&event).as_slice())
                                    .map_err(|e| Error::redb("log event", e))?;
                                results.push(Ok(Some(event.kv.clone())));
                                events.push(Arc::new(event));
                            }
                            Err(
                                e @ (Error::NotFound { .. }
                                | Error::AlreadyExists { .. }
                                | Error::Conflict { .. }),
                            ) => results.push(Err(e)),
                            Err(e) => return Err(e),
                        }
                    }
                    Op::Compact(target) => {
                        let target = target.min(revision);
                        if target > compacted {
                            drop_events(&mut log, target)?;
                            compacted = target;
                        }
                        results.push(Ok(None));
                    }
                }
            }
            if revision - compacted > self.history {
                compacted = revision - self.history;
                drop_events(&mut log, compacted)?;
            }
            meta.insert(META_REVISION, revision)
                .map_err(|e| Error::redb("write revision", e))?;
            meta.insert(META_COMPACTED, compacted)
                .map_err(|e| Error::redb("write compacted revision", e))?;
        }
        txn.commit().map_err(|e| Error::redb("commit", e))?;
        Ok((results, events))
    }
}

/// The commit loop, on the blocking pool; runs until the queue is empty.
struct Committer {
    inner: Arc<Inner>,
    finished: bool,
}

impl Committer {
    fn run(mut self) {
        loop {
            let batch: Vec<Pending> = {
                let mut queue = self.inner.lock_queue();
                if queue.pending.is_empty() {
                    queue.committing = false;
                    self.finished = true;
                    return;
                }
                let n = queue.pending.len().min(self.inner.max_batch);
                queue.pending.drain(..n).collect()
            };
            self.inner.commit_batch(batch);
        }
    }
}

impl Drop for Committer {
    /// A commit loop that panicked, or never ran because the runtime is shutting down: fail the
    /// waiting writes (their reply channels close) and let the next write start a new loop.
    fn drop(&mut self) {
        if !self.finished {
            let mut queue = self.inner.lock_queue();
            queue.pending.clear();
            queue.committing = false;
        }
    }
}

/// Opens the database file. A file still locked by a store of this process that is being
/// dropped (its last commit task finishing), or by a killed process the kernel is still tearing
/// down, is retried for a short while.
fn open_database(path: &Path) -> Result<Database> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match Database::builder().set_cache_size(64 << 20).create(path) {
            Ok(db) => return Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(Error::redb("open database", e)),
        }
    }
}

fn meta_get(meta: &impl ReadableTable<&'static str, i64>, key: &str) -> Result<Revision> {
    Ok(meta
        .get(key)
        .map_err(|e| Error::redb("read meta", e))?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// Removes the logged events at or below `upto`.
fn drop_events(log: &mut redb::Table<'_, i64, &[u8]>, upto: Revision) -> Result<()> {
    loop {
        let first = log
            .first()
            .map_err(|e| Error::redb("read events", e))?
            .map(|(k, _)| k.value());
        match first {
            Some(rev) if rev <= upto => {
                log.remove(rev).map_err(|e| Error::redb("drop event", e))?;
            }
            _ => break,
        }
    }
    Ok(())
}

struct RedbKv<'a, 't>(&'a mut redb::Table<'t, &'static str, &'static [u8]>);

impl KvTable for RedbKv<'_, '_> {
    fn read(&mut self, key: &str) -> Result<Option<KeyValue>> {
        read_kv(self.0, key)
    }
    fn write(&mut self, kv: &KeyValue) -> Result<()> {
        let mut buf = Vec::with_capacity(16 + kv.value.len());
        buf.extend_from_slice(&kv.create_revision.to_le_bytes());
        buf.extend_from_slice(&kv.mod_revision.to_le_bytes());
        buf.extend_from_slice(&kv.value);
        self.0
            .insert(kv.key.as_str(), buf.as_slice())
            .map_err(|e| Error::redb("write key", e))?;
        Ok(())
    }
    fn remove(&mut self, key: &str) -> Result<()> {
        self.0
            .remove(key)
            .map_err(|e| Error::redb("delete key", e))?;
        Ok(())
    }
}

fn read_kv(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<KeyValue>> {
    match table.get(key).map_err(|e| Error::redb("read key", e))? {
        Some(v) => Ok(Some(decode_kv(key.to_owned(), v.value())?)),
        None => Ok(None),
    }
}

fn decode_kv(key: String, bytes: &[u8]) -> Result<KeyValue> {
    let mut r = Reader(bytes);
    let create_revision = r.i64()?;
    let mod_revision = r.i64()?;
    Ok(KeyValue {
        key,
        value: r.0.to_vec(),
        create_revision,
        mod_revision,
    })
}

fn encode_event(event: &WatchEvent) -> Vec<u8> {
    fn kv(buf: &mut Vec<u8>, kv: &KeyValue) {
        bytes(buf, kv.key.as_bytes());
        buf.extend_from_slice(&kv.create_revision.to_le_bytes());
        buf.extend_from_slice(&kv.mod_revision.to_le_bytes());
        bytes(buf, &kv.value);
    }
    fn bytes(buf: &mut Vec<u8>, b: &[u8]) {
        // Keys and values are far below 4 GiB (the apiserver caps bodies at a few MiB).
        buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
        buf.extend_from_slice(b);
    }
    let mut buf = Vec::new();
    buf.push(match event.kind {
        EventKind::Put => 0,
        EventKind::Delete => 1,
    });
    kv(&mut buf, &event.kv);
    match &event.prev {
        Some(prev) => {
            buf.push(1);
            kv(&mut buf, prev);
        }
        None => buf.push(0),
    }
    buf
}

fn decode_event(bytes: &[u8]) -> Result<WatchEvent> {
    fn kv(r: &mut Reader<'_>) -> Result<KeyValue> {
        let key = String::from_utf8(r.bytes()?.to_vec())
            .map_err(|_| Error::corrupt("event key is not UTF-8"))?;
        let create_revision = r.i64()?;
        let mod_revision = r.i64()?;
        let value = r.bytes()?.to_vec();
        Ok(KeyValue {
            key,
            value,
            create_revision,
            mod_revision,
        })
    }
    let mut r = Reader(bytes);
    let kind = match r.u8()? {
        0 => EventKind::Put,
        1 => EventKind::Delete,
        k => return Err(Error::corrupt(format!("unknown event kind {k}"))),
    };
    let event_kv = kv(&mut r)?;
    let prev = match r.u8()? {
        0 => None,
        _ => Some(kv(&mut r)?),
    };
    Ok(WatchEvent {
        kind,
        kv: event_kv,
        prev,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(Error::corrupt("truncated record"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn i64(&mut self) -> Result<i64> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(b))
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        let n = usize::try_from(u64::from_le_bytes(b))
            .map_err(|_| Error::corrupt("record length overflows"))?;
        self.take(n)
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        self.read(move |txn| {
            let data = txn
                .open_table(DATA)
                .map_err(|e| Error::redb("open data", e))?;
            read_kv(&data, &key)
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let prefix = prefix.to_owned();
        self.read(move |txn| {
            let data = txn
                .open_table(DATA)
                .map_err(|e| Error::redb("open data", e))?;
            let meta = txn
                .open_table(META)
                .map_err(|e| Error::redb("open meta", e))?;
            let revision = meta_get(&meta, META_REVISION)?;
            let mut items = Vec::new();
            for entry in data
                .range(prefix.as_str()..)
                .map_err(|e| Error::redb("list", e))?
            {
                let (k, v) = entry.map_err(|e| Error::redb("list", e))?;
                let key = k.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                items.push(decode_kv(key.to_owned(), v.value())?);
            }
            Ok((items, revision))
        })
        .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        self.write(WriteOp::Create {
            key: key.to_owned(),
            value,
        })
        .await
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue> {
        self.write(WriteOp::Update {
            key: key.to_owned(),
            value,
            expected,
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        self.write(WriteOp::Delete {
            key: key.to_owned(),
            expected,
        })
        .await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        // Subscribe before reading the history: every event committed after the snapshot is
        // then in the receiver (events in both are dropped by revision).
        let rx = self.inner.fanout.subscribe();
        let owned = prefix.to_owned();
        let (history, revision) = self
            .read(move |txn| {
                let meta = txn
                    .open_table(META)
                    .map_err(|e| Error::redb("open meta", e))?;
                let compacted = meta_get(&meta, META_COMPACTED)?;
                let revision = meta_get(&meta, META_REVISION)?;
                if from < compacted {
                    return Err(Error::Compacted {
                        requested: from,
                        compacted,
                    });
                }
                let log = txn
                    .open_table(EVENTS)
                    .map_err(|e| Error::redb("open events", e))?;
                let mut history = Vec::new();
                if from < revision {
                    for entry in log
                        .range(from + 1..=revision)
                        .map_err(|e| Error::redb("read events", e))?
                    {
                        let (_, v) = entry.map_err(|e| Error::redb("read events", e))?;
                        let event = decode_event(v.value())?;
                        if event.kv.key.starts_with(owned.as_str()) {
                            history.push(event);
                        }
                    }
                }
                Ok((history, revision))
            })
            .await?;
        Ok(watch::stream(
            history,
            rx,
            prefix.to_owned(),
            from.max(revision),
        ))
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.read(|txn| {
            let meta = txn
                .open_table(META)
                .map_err(|e| Error::redb("open meta", e))?;
            meta_get(&meta, META_REVISION)
        })
        .await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.submit(Op::Compact(revision)).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_encoding_round_trips() {
        let kv = KeyValue {
            key: "/registry/pods/default/a".into(),
            value: b"\x00\xffbinary".to_vec(),
            create_revision: 3,
            mod_revision: 9,
        };
        for event in [
            WatchEvent {
                kind: EventKind::Put,
                kv: kv.clone(),
                prev: None,
            },
            WatchEvent {
                kind: EventKind::Delete,
                kv: KeyValue {
                    mod_revision: 12,
                    ..kv.clone()
                },
                prev: Some(kv.clone()),
            },
        ] {
            let decoded = decode_event(&encode_event(&event)).expect("decodes");
            assert_eq!(decoded, event);
        }
    }

    #[test]
    fn truncated_event_is_corrupt_not_a_panic() {
        let event = WatchEvent {
            kind: EventKind::Put,
            kv: KeyValue {
                key: "k".into(),
                value: vec![1, 2, 3],
                create_revision: 1,
                mod_revision: 1,
            },
            prev: None,
        };
        let bytes = encode_event(&event);
        for n in 0..bytes.len() {
            assert!(
                matches!(decode_event(&bytes[..n]), Err(Error::Corrupt { .. })),
                "prefix of {n} bytes must be rejected"
            );
        }
    }
}
