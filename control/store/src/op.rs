//! Write semantics shared by the memory and embedded backends.

use crate::{Error, EventKind, KeyValue, Result, Revision, WatchEvent};

/// One write, as the trait's create/update/delete describe it.
#[derive(Debug)]
pub(crate) enum WriteOp {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

/// The key-value table a write is applied to.
pub(crate) trait KvTable {
    fn read(&mut self, key: &str) -> Result<Option<KeyValue>>;
    fn write(&mut self, kv: &KeyValue) -> Result<()>;
    fn remove(&mut self, key: &str) -> Result<()>;
}

/// Applies `op` as the write at revision `rev`.
///
/// On success the table holds the result and the returned event describes it (its `kv` is what
/// the trait method returns); the caller must then record `rev` as the current revision and log
/// the event. On error nothing was changed and `rev` stays unused.
pub(crate) fn apply(table: &mut impl KvTable, op: WriteOp, rev: Revision) -> Result<WatchEvent> {
    match op {
        WriteOp::Create { key, value } => {
            if table.read(&key)?.is_some() {
                return Err(Error::AlreadyExists { key });
            }
            let kv = KeyValue {
                key,
                value,
                create_revision: rev,
                mod_revision: rev,
            };
            table.write(&kv)?;
            Ok(WatchEvent {
                kind: EventKind::Put,
                kv,
                prev: None,
            })
        }
        WriteOp::Update {
            key,
            value,
            expected,
        } => {
            let Some(prev) = table.read(&key)? else {
                return Err(Error::NotFound { key });
            };
            if prev.mod_revision != expected {
                return Err(Error::Conflict {
                    key,
                    expected,
                    actual: prev.mod_revision,
                });
            }
            let kv = KeyValue {
                key,
                value,
                create_revision: prev.create_revision,
                mod_revision: rev,
            };
            table.write(&kv)?;
            Ok(WatchEvent {
                kind: EventKind::Put,
                kv,
                prev: Some(prev),
            })
        }
        WriteOp::Delete { key, expected } => {
            let Some(prev) = table.read(&key)? else {
                return Err(Error::NotFound { key });
            };
            if let Some(expected) = expected
                && prev.mod_revision != expected
            {
                return Err(Error::Conflict {
                    key,
                    expected,
                    actual: prev.mod_revision,
                });
            }
            table.remove(&key)?;
            let kv = KeyValue {
                mod_revision: rev,
                ..prev.clone()
            };
            Ok(WatchEvent {
                kind: EventKind::Delete,
                kv,
                prev: Some(prev),
            })
        }
    }
}
