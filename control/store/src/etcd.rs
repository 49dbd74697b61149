//! The etcd backend (etcd-client; checked against etcd 3.4).
//!
//! Every key is stored as `prefix + key`. The data model maps one to one: create is a txn on
//! `create_revision == 0`, update a txn on `mod_revision == expected`, delete a txn with an
//! optional `mod_revision` compare, watch an etcd watch from `from + 1` with `prev_kv`.
//!
//! Compaction: [`Store::compact`]`(r)` forgets history at or below `r`, which is etcd's
//! `compact(r + 1)` (etcd keeps the compaction revision itself). etcd cannot compact past its
//! current revision, so compacting at the current revision keeps that last revision's events.

use std::{collections::VecDeque, time::Duration};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;

use crate::{Error, EventKind, KeyValue, Result, Revision, Store, WatchEvent, WatchStream};

/// Keys per page when listing, by default.
const LIST_PAGE: i64 = 1000;

/// A store on an etcd cluster.
///
/// Keys are stored as `prefix + key`, byte for byte (like etcd's own `--namespace`): pick a
/// prefix no other user's keys start with.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    list_page: i64,
}

impl EtcdStore {
    /// Connects to `endpoints` (e.g. `http://127.0.0.1:2379`) and checks that etcd answers.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(Error::etcd("connect"))?;
        let store = EtcdStore {
            client,
            prefix: prefix.to_owned(),
            list_page: LIST_PAGE,
        };
        let revision = store.current_revision().await?;
        tracing::info!(?endpoints, prefix, revision, "connected to etcd");
        Ok(store)
    }

    /// Lists in pages of `keys` (at least 1), all read at the first page's revision.
    pub fn with_list_page(mut self, keys: i64) -> Self {
        self.list_page = keys.max(1);
        self
    }

    fn full(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(self.prefix.as_bytes());
        full.extend_from_slice(key.as_bytes());
        full
    }

    /// The etcd range `[start, end)` of every key under `prefix`.
    fn range(&self, prefix: &str) -> (Vec<u8>, Vec<u8>) {
        prefix_range(self.full(prefix))
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        let key = kv
            .key()
            .strip_prefix(self.prefix.as_bytes())
            .ok_or_else(|| Error::corrupt("etcd returned a key outside the store's prefix"))?;
        let key = std::str::from_utf8(key)
            .map_err(|_| Error::corrupt("etcd returned a key that is not UTF-8"))?;
        Ok(KeyValue {
            key: key.to_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }

    fn event(&self, event: &etcd_client::Event) -> Result<WatchEvent> {
        let kv = event
            .kv()
            .ok_or_else(|| Error::corrupt("etcd watch event without kv"))?;
        let prev = event.prev_kv().map(|p| self.kv(p)).transpose()?;
        Ok(match event.event_type() {
            EventType::Put => WatchEvent {
                kind: EventKind::Put,
                kv: self.kv(kv)?,
                prev,
            },
            EventType::Delete => {
                // etcd's delete kv carries only the key and the deletion revision; the deleted
                // value comes from prev_kv.
                let deleted = match &prev {
                    Some(p) => KeyValue {
                        mod_revision: kv.mod_revision(),
                        ..p.clone()
                    },
                    None => KeyValue {
                        mod_revision: kv.mod_revision(),
                        ..self.kv(kv)?
                    },
                };
                WatchEvent {
                    kind: EventKind::Delete,
                    kv: deleted,
                    prev,
                }
            }
        })
    }

    /// The current state of `key` after a failed txn: NotFound, or Conflict against `expected`.
    fn failed_compare(
        &self,
        key: &str,
        expected: Revision,
        responses: Vec<TxnOpResponse>,
    ) -> Error {
        let current = responses.into_iter().find_map(|r| match r {
            TxnOpResponse::Get(mut get) => get.take_kvs().into_iter().next(),
            _ => None,
        });
        match current {
            None => Error::NotFound {
                key: key.to_owned(),
            },
            Some(kv) => Error::Conflict {
                key: key.to_owned(),
                expected,
                actual: kv.mod_revision(),
            },
        }
    }
}

/// The etcd range `[start, end)` of every key starting with `start` (etcd's `\0` end means "to
/// the last key").
fn prefix_range(start: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    if start.is_empty() {
        return (vec![0], vec![0]);
    }
    let mut end = start.clone();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (start, end);
        }
    }
    // All 0xff: everything from `start` on.
    (start, vec![0])
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| Error::corrupt("etcd response without header"))
}

/// etcd's "required revision has been compacted".
fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("required revision has been compacted"))
}

/// etcd's "required revision is a future revision".
fn is_future(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("future revision"))
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut resp = self
            .client
            .kv_client()
            .get(self.full(key), None)
            .await
            .map_err(Error::etcd("get"))?;
        resp.take_kvs().first().map(|kv| self.kv(kv)).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let (mut start, end) = self.range(prefix);
        let mut kv = self.client.kv_client();
        let mut items = Vec::new();
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(self.list_page)
                .with_sort(SortTarget::Key, SortOrder::Ascend);
            if revision > 0 {
                // Later pages read the snapshot of the first.
                options = options.with_revision(revision);
            }
            let resp = kv
                .get(start.clone(), Some(options))
                .await
                .map_err(Error::etcd("list"))?;
            if revision == 0 {
                revision = header_revision(resp.header())?;
            }
            for item in resp.kvs() {
                items.push(self.kv(item)?);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok((items, revision))
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        let full = self.full(key);
        let txn = Txn::new()
            .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full, value.clone(), None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(Error::etcd("create"))?;
        if !resp.succeeded() {
            return Err(Error::AlreadyExists {
                key: key.to_owned(),
            });
        }
        let revision = header_revision(resp.header())?;
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue> {
        let full = self.full(key);
        let txn = Txn::new()
            .when([
                Compare::version(full.clone(), CompareOp::Greater, 0),
                Compare::mod_revision(full.clone(), CompareOp::Equal, expected),
            ])
            .and_then([TxnOp::put(
                full.clone(),
                value.clone(),
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full, None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(Error::etcd("update"))?;
        if !resp.succeeded() {
            return Err(self.failed_compare(key, expected, resp.op_responses()));
        }
        let revision = header_revision(resp.header())?;
        let create_revision = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Put(put) => put.prev_key().map(|p| p.create_revision()),
                _ => None,
            })
            .ok_or_else(|| Error::corrupt("etcd update without prev_kv"))?;
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: revision,
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        let full = self.full(key);
        let mut compares = vec![Compare::version(full.clone(), CompareOp::Greater, 0)];
        if let Some(expected) = expected {
            compares.push(Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                expected,
            ));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(
                full.clone(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full, None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(Error::etcd("delete"))?;
        if !resp.succeeded() {
            return Err(self.failed_compare(key, expected.unwrap_or(0), resp.op_responses()));
        }
        let revision = header_revision(resp.header())?;
        let prev = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Delete(mut del) => del.take_prev_kvs().into_iter().next(),
                _ => None,
            })
            .ok_or_else(|| Error::corrupt("etcd delete without prev_kv"))?;
        Ok(KeyValue {
            mod_revision: revision,
            ..self.kv(&prev)?
        })
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        let (start, end) = self.range(prefix);
        let options = WatchOptions::new()
            .with_range(end.clone())
            .with_start_revision(from + 1)
            .with_prev_key();
        let (watcher, mut stream) = self
            .client
            .watch_client()
            .watch(start.clone(), Some(options))
            .await
            .map_err(Error::etcd("watch"))?;

        // etcd reports a compacted start revision asynchronously on the stream; a read at the
        // same revision tells now, so that watch() itself fails with Compacted.
        let probe = self
            .client
            .kv_client()
            .get(
                start,
                Some(
                    GetOptions::new()
                        .with_range(end)
                        .with_count_only()
                        .with_revision(from + 1),
                ),
            )
            .await;
        match probe {
            Ok(_) => {}
            Err(e) if is_future(&e) => {}
            Err(e) if is_compacted(&e) => {
                // The watch's cancel response carries the compaction revision.
                let compacted = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Ok(Some(resp)) = stream.message().await {
                        if resp.compact_revision() > 0 {
                            return resp.compact_revision() - 1;
                        }
                    }
                    from + 1
                })
                .await
                .unwrap_or(from + 1);
                return Err(Error::Compacted {
                    requested: from,
                    compacted,
                });
            }
            Err(e) => {
                return Err(Error::etcd("watch")(e));
            }
        }

        struct State {
            store: EtcdStore,
            // Dropping the watcher would close the watch.
            _watcher: etcd_client::Watcher,
            stream: etcd_client::WatchStream,
            buffered: VecDeque<WatchEvent>,
            from: Revision,
            done: bool,
        }
        let state = State {
            store: self.clone(),
            _watcher: watcher,
            stream,
            buffered: VecDeque::new(),
            from,
            done: false,
        };
        Ok(futures::stream::unfold(state, |mut s| async move {
            loop {
                if let Some(event) = s.buffered.pop_front() {
                    return Some((Ok(event), s));
                }
                if s.done {
                    return None;
                }
                let failure = match s.stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 {
                            Error::Compacted {
                                requested: s.from,
                                compacted: resp.compact_revision() - 1,
                            }
                        } else if resp.canceled() {
                            Error::Backend {
                                detail: format!(
                                    "etcd canceled the watch: {}",
                                    resp.cancel_reason()
                                ),
                            }
                        } else {
                            match resp
                                .events()
                                .iter()
                                .map(|e| s.store.event(e))
                                .collect::<Result<Vec<_>>>()
                            {
                                Ok(events) => {
                                    s.buffered.extend(events);
                                    continue;
                                }
                                Err(e) => e,
                            }
                        }
                    }
                    Ok(None) => Error::Backend {
                        detail: "etcd closed the watch stream".into(),
                    },
                    Err(e) => Error::etcd("watch")(e),
                };
                s.done = true;
                return Some((Err(failure), s));
            }
        })
        .boxed())
    }

    async fn current_revision(&self) -> Result<Revision> {
        let (start, _) = self.range("");
        let resp = self
            .client
            .kv_client()
            .get(start, Some(GetOptions::new().with_count_only()))
            .await
            .map_err(Error::etcd("current revision"))?;
        header_revision(resp.header())
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let target = (revision + 1).min(self.current_revision().await?);
        if target <= 1 {
            return Ok(());
        }
        match self.client.kv_client().compact(target, None).await {
            Ok(_) => Ok(()),
            // Already compacted further.
            Err(e) if is_compacted(&e) => Ok(()),
            Err(e) => Err(Error::etcd("compact")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_range;

    #[test]
    fn prefix_range_ends_after_the_last_key_with_the_prefix() {
        assert_eq!(
            prefix_range(b"/a/".to_vec()),
            (b"/a/".to_vec(), b"/a0".to_vec())
        );
        assert_eq!(
            prefix_range(vec![b'a', 0xff, 0xff]),
            (vec![b'a', 0xff, 0xff], vec![b'b'])
        );
        assert_eq!(prefix_range(vec![0xff]), (vec![0xff], vec![0]));
        assert_eq!(
            prefix_range(Vec::new()),
            (vec![0], vec![0]),
            "empty prefix: all keys"
        );
    }
}
