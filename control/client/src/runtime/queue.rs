//! A work queue of object keys, as in client-go: a key waiting more than once is queued once,
//! a key is never handed to two workers at the same time (a key added while it is being
//! processed is queued again when the worker is done), and failures requeue with
//! per-key exponential backoff.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// First retry delay after a failure.
pub const BACKOFF_BASE: Duration = Duration::from_millis(5);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

struct State<K> {
    queue: VecDeque<K>,
    dirty: HashSet<K>,
    processing: HashSet<K>,
    failures: HashMap<K, u32>,
    shutdown: bool,
}

/// A deduplicating, rate-limited work queue; clone freely (clones share the queue).
pub struct WorkQueue<K> {
    state: Arc<Mutex<State<K>>>,
    notify: Arc<Notify>,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        WorkQueue {
            state: self.state.clone(),
            notify: self.notify.clone(),
        }
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> Default for WorkQueue<K> {
    fn default() -> Self {
        Self::new()
    }
}

/// Backoff delay after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_MAX)
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    /// An empty queue.
    pub fn new() -> Self {
        WorkQueue {
            state: Arc::new(Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
                shutdown: false,
            })),
            notify: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<K>> {
        // Every critical section leaves the state consistent; a poisoned lock only means a
        // panic elsewhere.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` (once, however often it is added before a worker takes it).
    pub fn add(&self, key: K) {
        let mut s = self.lock();
        if s.shutdown || !s.dirty.insert(key.clone()) {
            return;
        }
        if !s.processing.contains(&key) {
            s.queue.push_back(key);
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            self.add(key);
            return;
        }
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    /// Queues `key` after its backoff delay, which doubles with each consecutive failure.
    pub fn add_rate_limited(&self, key: K) -> Duration {
        let delay = {
            let mut s = self.lock();
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            backoff(*n)
        };
        self.add_after(key, delay);
        delay
    }

    /// Resets the failure count of `key`.
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    /// Number of consecutive failures of `key`.
    pub fn failures(&self, key: &K) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// Keys waiting (not counting those being processed).
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether no key is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the next key, waiting for one; `None` once the queue is shut down.
    pub async fn get(&self) -> Option<K> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if s.shutdown {
                    return None;
                }
                if let Some(k) = s.queue.pop_front() {
                    s.dirty.remove(&k);
                    s.processing.insert(k.clone());
                    let more = !s.queue.is_empty();
                    drop(s);
                    if more {
                        self.notify.notify_one();
                    }
                    return Some(k);
                }
            }
            notified.await;
        }
    }

    /// Marks `key` as processed; queues it again if it was added meanwhile.
    pub fn done(&self, key: &K) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.dirty.contains(key) {
            s.queue.push_back(key.clone());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Stops handing out keys; waiting workers return `None`.
    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.notify.notify_waiters();
    }
}

/// What a reconcile asks for when it succeeds.
pub type Requeue = Option<Duration>;

/// Runs `workers` workers on `queue` until `shutdown`: each takes a key, runs `reconcile`,
/// requeues after the returned delay on success and with backoff on error.
pub async fn run_workers<K, E, F, Fut>(
    name: &'static str,
    queue: WorkQueue<K>,
    workers: usize,
    shutdown: CancellationToken,
    reconcile: F,
) where
    K: Clone + Eq + Hash + Send + Sync + std::fmt::Display + 'static,
    E: std::fmt::Display,
    F: Fn(K) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Requeue, E>> + Send,
{
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let q = queue.clone();
        let f = reconcile.clone();
        set.spawn(async move {
            while let Some(key) = q.get().await {
                match f(key.clone()).await {
                    Ok(requeue) => {
                        q.forget(&key);
                        if let Some(d) = requeue {
                            q.add_after(key.clone(), d);
                        }
                    }
                    Err(e) => {
                        let delay = q.add_rate_limited(key.clone());
                        tracing::warn!(controller = name, %key, error = %e, retry_in = ?delay, "reconcile failed");
                    }
                }
                q.done(&key);
            }
        });
    }
    shutdown.cancelled().await;
    queue.shutdown();
    while set.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn deduplicates_and_never_hands_a_key_to_two_workers() {
        let q: WorkQueue<String> = WorkQueue::new();
        q.add("a".into());
        q.add("a".into());
        q.add("b".into());
        assert_eq!(q.len(), 2, "a queued once");
        let a = q.get().await.expect("a");
        assert_eq!(a, "a");
        q.add("a".into());
        let b = q.get().await.expect("b");
        assert_eq!(b, "b");
        assert!(q.is_empty(), "a is being processed: not handed out again");
        q.done(&a);
        assert_eq!(q.get().await.as_deref(), Some("a"), "requeued after done");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_and_forget_resets() {
        let q: WorkQueue<&'static str> = WorkQueue::new();
        assert_eq!(q.add_rate_limited("k"), BACKOFF_BASE);
        assert_eq!(q.add_rate_limited("k"), BACKOFF_BASE * 2);
        assert_eq!(q.add_rate_limited("k"), BACKOFF_BASE * 4);
        assert_eq!(q.failures(&"k"), 3);
        q.forget(&"k");
        assert_eq!(q.failures(&"k"), 0);
        assert_eq!(backoff(100), BACKOFF_MAX);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(q.get().await, Some("k"));
    }

    #[tokio::test(start_paused = true)]
    async fn workers_retry_failed_keys_until_they_succeed() {
        let q: WorkQueue<String> = WorkQueue::new();
        let attempts = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let a = attempts.clone();
        let s2 = stop.clone();
        let task = tokio::spawn(run_workers(
            "test",
            q.clone(),
            2,
            stop.clone(),
            move |_k: String| {
                let a = a.clone();
                let s2 = s2.clone();
                async move {
                    if a.fetch_add(1, Ordering::SeqCst) < 3 {
                        Err("not yet")
                    } else {
                        s2.cancel();
                        Ok(None)
                    }
                }
            },
        ));
        q.add("x".into());
        task.await.expect("workers end");
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            4,
            "three failures then success"
        );
    }
}
