//! Serving one watch request from a resource's [`WatchCache`]: the initial events, the live
//! events that pass the watcher's namespace, label and field selectors (an object that starts
//! or stops matching is ADDED or DELETED, as Kubernetes' cacher does), bookmarks, the timeout,
//! and the errors a client re-watches or re-lists on.

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use xkube_api::table::{self, IncludeObject};
use xkube_api::{FieldSelector, LabelSelector, ResourceInfo, StatusError, meta};
use xkube_store::Revision;

use crate::watchcache::{CachedEvent, EventType, Message, Start, WatchCache};

/// Lines a watcher may have waiting to be written before it stops reading the cache.
const BUFFERED_LINES: usize = 256;

/// One watch request.
pub struct Request {
    /// The namespace (`None`: every namespace).
    pub namespace: Option<String>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// `resourceVersion` to start after (`None`: the current state as ADDED events first).
    pub from: Option<Revision>,
    /// `sendInitialEvents=true`: end the initial events with a bookmark marked
    /// `k8s.io/initial-events-end` (when bookmarks are allowed).
    pub send_initial: bool,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// `timeoutSeconds`.
    pub timeout: Duration,
    /// Objects as `meta.k8s.io/v1` Table rows (`kubectl get -w`) rather than themselves.
    pub table: Option<IncludeObject>,
}

/// A watch event as one line of the JSON stream, `{"type":...,"object":...}\n`.
pub fn event_line(ty: &str, object: &Value) -> Bytes {
    #[derive(Serialize)]
    struct Line<'a> {
        #[serde(rename = "type")]
        ty: &'a str,
        object: &'a Value,
    }
    let mut v = serde_json::to_vec(&Line { ty, object }).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

struct Watcher {
    res: &'static ResourceInfo,
    prefix: String,
    labels: LabelSelector,
    fields: FieldSelector,
    table: Option<IncludeObject>,
    sent_columns: bool,
}

impl Watcher {
    fn matches(&self, o: &Value) -> bool {
        self.labels.matches_object(o) && self.fields.matches(o)
    }

    /// The type this watcher sees `ev` as, if it sees it at all.
    fn filter(&self, ev: &CachedEvent) -> Option<EventType> {
        if !ev.key.starts_with(&self.prefix) {
            return None;
        }
        if self.labels.is_empty() && self.fields.is_empty() {
            return Some(ev.kind);
        }
        let new = self.matches(&ev.object);
        match ev.kind {
            EventType::Added | EventType::Deleted => new.then_some(ev.kind),
            EventType::Modified => {
                let old = ev.prev.as_deref().is_some_and(|p| self.matches(p));
                match (old, new) {
                    (true, true) => Some(EventType::Modified),
                    (false, true) => Some(EventType::Added),
                    (true, false) => Some(EventType::Deleted),
                    (false, false) => None,
                }
            }
        }
    }

    fn render(&mut self, ty: EventType, ev: &CachedEvent) -> Bytes {
        let Some(include) = self.table else {
            return ev.json_line(ty);
        };
        let mut t = table::table(
            self.res.plural,
            std::slice::from_ref(ev.object.value()),
            meta::resource_version(&ev.object),
            jiff::Timestamp::now(),
            include,
        );
        if self.sent_columns {
            t["columnDefinitions"] = json!([]);
        }
        self.sent_columns = true;
        event_line(ty.as_str(), &t)
    }

    fn bookmark(&self, rev: Revision, initial_end: bool) -> Bytes {
        let mut m = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            m["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event_line(
            "BOOKMARK",
            &json!({"kind": self.res.kind, "apiVersion": self.res.api_version(), "metadata": m}),
        )
    }
}

/// Starts serving `req` from `cache`: the lines of the JSON watch stream arrive on the
/// returned receiver, which ends when the watch does (timeout, `shutdown`, the cache
/// re-listing, the watcher falling behind, or the receiver being dropped).
pub fn serve(
    cache: &WatchCache,
    req: Request,
    shutdown: CancellationToken,
) -> mpsc::Receiver<Bytes> {
    let res = cache.resource;
    let prefix = res.key_prefix(req.namespace.as_deref());
    let start = cache.start(&prefix, req.from);
    let mut w = Watcher {
        res,
        prefix,
        labels: req.labels,
        fields: req.fields,
        table: req.table,
        sent_columns: false,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(BUFFERED_LINES);
    tokio::spawn(async move {
        let (initial, mut revision, mut live) = match start {
            Start::TooOld { oldest } => {
                let e = StatusError::expired(req.from.unwrap_or(0), oldest);
                let _ = tx.send(event_line("ERROR", &e.to_value())).await;
                return;
            }
            Start::NotReady => {
                let e = StatusError::unavailable("the watch cache is not ready yet; try again");
                let _ = tx.send(event_line("ERROR", &e.to_value())).await;
                return;
            }
            Start::Ok {
                initial,
                revision,
                live,
            } => (initial, revision, live),
        };
        for ev in &initial {
            if let Some(ty) = w.filter(ev)
                && tx.send(w.render(ty, ev)).await.is_err()
            {
                return;
            }
        }
        if req.send_initial && req.bookmarks && tx.send(w.bookmark(revision, true)).await.is_err() {
            return;
        }
        let deadline = tokio::time::sleep(req.timeout);
        tokio::pin!(deadline);
        loop {
            let msg = tokio::select! {
                _ = &mut deadline => return,
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                m = live.recv() => m,
            };
            match msg {
                Ok(Message::Event(ev)) => {
                    if ev.revision <= revision {
                        continue;
                    }
                    revision = ev.revision;
                    if let Some(ty) = w.filter(&ev)
                        && tx.send(w.render(ty, &ev)).await.is_err()
                    {
                        return;
                    }
                }
                Ok(Message::Progress(rev)) => {
                    if req.bookmarks && rev >= revision {
                        revision = rev;
                        if tx.send(w.bookmark(rev, false)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(Message::Reset) | Err(broadcast::error::RecvError::Closed) => return,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "watcher fell behind; closing it");
                    let e = StatusError::expired(revision, revision + 1);
                    let _ = tx.send(event_line("ERROR", &e.to_value())).await;
                    return;
                }
            }
        }
    });
    rx
}
