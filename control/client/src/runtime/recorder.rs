//! An event recorder shared by the controllers, the scheduler and the kubelet: repeated
//! events (same involved object, field path, type, reason and message) bump `count` and
//! `lastTimestamp` of the event already written instead of creating another one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;

use crate::{Api, Client, Object, Patch};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use serde_json::json;

/// Normal event type.
pub const NORMAL: &str = "Normal";
/// Warning event type.
pub const WARNING: &str = "Warning";

const CACHE_LIMIT: usize = 4096;
/// Events [`EventRecorder::post`] holds while earlier ones are written; more are dropped
/// (Kubernetes' event broadcaster keeps 1,000 too).
const QUEUE_LIMIT: usize = 1000;

struct Posted {
    by: EventRecorder,
    obj: ObjectReference,
    type_: String,
    reason: String,
    message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DedupKey {
    namespace: String,
    kind: String,
    name: String,
    uid: String,
    field_path: String,
    type_: String,
    reason: String,
    message: String,
}

#[derive(Debug, Clone)]
struct Seen {
    event_name: String,
    count: i32,
    first: jiff::Timestamp,
}

/// Writes events through the API; clone freely.
#[derive(Clone)]
pub struct EventRecorder {
    client: Client,
    component: String,
    host: Option<String>,
    seen: Arc<Mutex<HashMap<DedupKey, Seen>>>,
    /// The writer of [`EventRecorder::post`], started on first use.
    queue: Arc<OnceLock<mpsc::Sender<Posted>>>,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder")
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

/// A reference to the object an event is about.
pub fn object_ref<K: Object + k8s_openapi::Resource>(o: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::API_VERSION.to_string()),
        kind: Some(K::KIND.to_string()),
        name: Some(o.name().to_string()),
        namespace: (!o.namespace().is_empty()).then(|| o.namespace().to_string()),
        uid: (!o.uid().is_empty()).then(|| o.uid().to_string()),
        resource_version: (!o.resource_version().is_empty())
            .then(|| o.resource_version().to_string()),
        field_path: None,
    }
}

fn time(t: jiff::Timestamp) -> Time {
    Time(t)
}

impl EventRecorder {
    /// A recorder writing as `component` (`replication-controller`, `default-scheduler`).
    pub fn new(client: Client, component: &str) -> Self {
        EventRecorder {
            client,
            component: component.to_string(),
            host: None,
            seen: Arc::new(Mutex::new(HashMap::new())),
            queue: Arc::new(OnceLock::new()),
        }
    }

    /// Same cache and client, reporting from `host` (a kubelet's node name): the events'
    /// `source.host` and `reportingInstance`.
    pub fn with_host(&self, host: &str) -> Self {
        EventRecorder {
            host: Some(host.to_string()),
            ..self.clone()
        }
    }

    /// Same cache and client, another component name.
    pub fn with_component(&self, component: &str) -> Self {
        EventRecorder {
            component: component.to_string(),
            ..self.clone()
        }
    }

    /// Records an event in the background, without waiting: the events posted through one
    /// recorder and its clones are written one at a time in the order they were posted (as
    /// Kubernetes' event broadcaster writes them), so their names and timestamps keep that
    /// order. Needs a tokio runtime; a full queue drops the event.
    pub fn post(&self, obj: ObjectReference, type_: &str, reason: &str, message: &str) {
        let tx = self.queue.get_or_init(|| {
            let (tx, mut rx) = mpsc::channel::<Posted>(QUEUE_LIMIT);
            // Ends when the last recorder (and with it the sender) is gone.
            tokio::spawn(async move {
                while let Some(p) = rx.recv().await {
                    p.by.record(&p.obj, &p.type_, &p.reason, &p.message).await;
                }
            });
            tx
        });
        let posted = Posted {
            by: self.clone(),
            obj,
            type_: type_.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
        };
        if tx.try_send(posted).is_err() {
            tracing::debug!(reason, message, "event queue full; event dropped");
        }
    }

    /// Records an event; failures are logged, never returned (events are best effort).
    pub async fn record(&self, obj: &ObjectReference, type_: &str, reason: &str, message: &str) {
        if let Err(e) = self.try_record(obj, type_, reason, message).await {
            tracing::debug!(reason, message, error = %e, "event not recorded");
        }
    }

    /// Records an event, returning the event written.
    pub async fn try_record(
        &self,
        obj: &ObjectReference,
        type_: &str,
        reason: &str,
        message: &str,
    ) -> crate::Result<Event> {
        let namespace = obj
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let key = DedupKey {
            namespace: namespace.clone(),
            kind: obj.kind.clone().unwrap_or_default(),
            name: obj.name.clone().unwrap_or_default(),
            uid: obj.uid.clone().unwrap_or_default(),
            field_path: obj.field_path.clone().unwrap_or_default(),
            type_: type_.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
        };
        let now = jiff::Timestamp::now();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let prior = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(prior) = prior {
            let count = prior.count + 1;
            let patch = Patch::Merge(json!({
                "count": count,
                "lastTimestamp": xkube_api::meta::format_time(now),
            }));
            match api.patch(&prior.event_name, &patch).await {
                Ok(ev) => {
                    self.remember(key, prior.event_name, count, prior.first);
                    return Ok(ev);
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        let base = obj.name.clone().unwrap_or_default();
        let event_name = format!("{base}.{:x}", now.as_nanosecond());
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(event_name.clone()),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: obj.clone(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some(type_.to_string()),
            count: Some(1),
            first_timestamp: Some(time(now)),
            last_timestamp: Some(time(now)),
            event_time: None::<MicroTime>,
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: self.host.clone(),
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: self.host.clone(),
            ..Event::default()
        };
        let created = api.create(&ev).await?;
        self.remember(key, event_name, 1, now);
        Ok(created)
    }

    fn remember(&self, key: DedupKey, event_name: String, count: i32, first: jiff::Timestamp) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= CACHE_LIMIT && !seen.contains_key(&key) {
            seen.clear();
        }
        seen.insert(
            key,
            Seen {
                event_name,
                count,
                first,
            },
        );
    }
}
