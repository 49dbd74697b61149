//! The controller runtime, as kube-rs keeps it in kube-runtime: shared informers feeding
//! caches ([`informer`]), a deduplicating rate-limited work queue and its workers ([`queue`]),
//! an event recorder ([`recorder`]), and [`Controller`], which wires them together the way
//! every controller of the control plane (and the scheduler) uses them.

pub mod informer;
pub mod queue;
pub mod recorder;

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{Object, Store};
pub use informer::{Seen, enqueue_on_change, key_of, on_change, reflect, split_key};
pub use queue::{Requeue, WorkQueue, run_workers};
pub use recorder::{EventRecorder, NORMAL, WARNING, object_ref};

/// A controller: brings the object behind a work-queue key to its desired state.
pub trait Reconciler: Clone + Send + Sync + 'static {
    /// What a failed reconcile reports (logged; the key is retried with backoff).
    type Error: Display + Send;

    /// Reconciles `key` once; idempotent, never called twice at a time for one key.
    fn reconcile(&self, key: &str) -> impl Future<Output = Result<Requeue, Self::Error>> + Send;
}

type Ready = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A controller's plumbing: its work queue of `namespace/name` keys, the caches whose
/// changes enqueue keys, and the workers. [`Controller::run`] waits until every cache it was
/// given has listed, then hands keys to the [`Reconciler`] until shutdown.
pub struct Controller<R> {
    name: &'static str,
    reconciler: R,
    queue: WorkQueue<String>,
    shutdown: CancellationToken,
    ready: Vec<Ready>,
}

impl<R: Reconciler> Controller<R> {
    /// A controller named `name` (in logs) feeding `queue` to `reconciler`.
    pub fn new(
        name: &'static str,
        reconciler: R,
        queue: WorkQueue<String>,
        shutdown: &CancellationToken,
    ) -> Self {
        Controller {
            name,
            reconciler,
            queue,
            shutdown: shutdown.clone(),
            ready: Vec::new(),
        }
    }

    /// Reconciles the objects of `store` that pass `keep`: each when it changes (its
    /// [`key_of`]), and all of them every `resync` and whenever the cache was rebuilt.
    pub fn owns<K: Object>(
        self,
        store: &Store<K>,
        resync: Duration,
        keep: impl Fn(&K) -> bool + Send + 'static,
    ) -> Self {
        enqueue_on_change(store, &self.queue, &self.shutdown, Some(resync), keep);
        self.waits_for(store)
    }

    /// Calls `map` with every change of `store` (and [`Seen::All`] when the cache was
    /// rebuilt) to enqueue the keys it affects: the owner of a changed pod, the services
    /// whose selector may match it.
    pub fn watches<K: Object>(
        self,
        store: &Store<K>,
        mut map: impl FnMut(Seen<K>, &WorkQueue<String>) + Send + 'static,
    ) -> Self {
        let q = self.queue.clone();
        on_change(store, &self.shutdown, None, move |s| map(s, &q));
        self.waits_for(store)
    }

    /// Also waits for `store` to list before the first reconcile.
    pub fn waits_for<K: Object>(mut self, store: &Store<K>) -> Self {
        let store = store.clone();
        self.ready
            .push(Box::pin(async move { store.wait_ready().await }));
        self
    }

    /// Runs `workers` workers until shutdown (see [`run_workers`]).
    pub async fn run(self, workers: usize) {
        for ready in self.ready {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = ready => {}
            }
        }
        let reconciler = self.reconciler;
        run_workers(
            self.name,
            self.queue,
            workers,
            self.shutdown,
            move |key: String| {
                let r = reconciler.clone();
                async move { r.reconcile(&key).await }
            },
        )
        .await;
    }
}
