//! The mode-independent sync loop: object changes in, [`Proxier`] syncs out.
//!
//! Like kube-proxy's bounded-frequency runner: a change is programmed at once when the last
//! sync is at least `--min-sync-period` old, otherwise when it becomes so (changes in between
//! are coalesced into one partial sync); every `--sync-period` a full sync re-reads what the
//! kernel holds and repairs drift. A failed sync is followed by a full one, retried with a
//! doubling delay (from `--min-sync-period`, at most `--sync-period`). A node change forces a
//! full sync. The loop owns the [`ChangeTracker`], so only changed services are rebuilt.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use k8s_openapi::api::{
    core::v1::{Endpoints, Service},
    discovery::v1::EndpointSlice,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    Error,
    metrics::ProxyMetrics,
    mode::{Models, NodeInfo, Proxier},
    model::{ChangeTracker, ServiceName},
};

/// Sync timing (kube-proxy's `--min-sync-period` / `--sync-period`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    pub min_sync_period: Duration,
    pub sync_period: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            min_sync_period: Duration::from_millis(10),
            sync_period: Duration::from_secs(30),
        }
    }
}

/// What the loop is told.
#[derive(Debug, Clone)]
pub enum Input {
    ServiceApplied(Arc<Service>),
    ServiceDeleted(ServiceName),
    EndpointsApplied(Arc<Endpoints>),
    EndpointsDeleted(ServiceName),
    SliceApplied(Arc<EndpointSlice>),
    SliceDeleted(Arc<EndpointSlice>),
    /// Full lists (start): the agent watches Services and EndpointSlices; a service's slices,
    /// when it has any, take precedence over its Endpoints.
    Relist {
        services: Vec<Arc<Service>>,
        endpoints: Vec<Arc<Endpoints>>,
        slices: Vec<Arc<EndpointSlice>>,
    },
    /// A full list of Services (a watch restarted).
    ServicesRelisted(Vec<Arc<Service>>),
    /// A full list of Endpoints (a watch restarted).
    EndpointsRelisted(Vec<Arc<Endpoints>>),
    /// A full list of EndpointSlices (a watch restarted).
    SlicesRelisted(Vec<Arc<EndpointSlice>>),
    Node(NodeInfo),
}

/// Work to run after the first successful sync (on a blocking thread); retried after each
/// later successful sync until it succeeds once.
pub type FirstSyncHook = Box<dyn FnMut() -> crate::Result<()> + Send>;

/// The sync loop (module docs).
pub struct SyncLoop {
    proxier: Option<Box<dyn Proxier>>,
    tracker: ChangeTracker,
    config: SyncConfig,
    metrics: Arc<ProxyMetrics>,
    after_first_sync: Option<FirstSyncHook>,
}

enum Kind {
    Full,
    Partial,
}

impl SyncLoop {
    pub fn new(proxier: Box<dyn Proxier>, config: SyncConfig, metrics: Arc<ProxyMetrics>) -> Self {
        Self {
            proxier: Some(proxier),
            tracker: ChangeTracker::new(),
            config,
            metrics,
            after_first_sync: None,
        }
    }

    /// Runs `hook` once the first sync has succeeded: the agent removes the state of the
    /// other proxy modes only when its own mode serves (make before break).
    pub fn after_first_sync(mut self, hook: FirstSyncHook) -> Self {
        self.after_first_sync = Some(hook);
        self
    }

    fn input(&mut self, i: Input) -> bool {
        let mut node_changed = false;
        match i {
            Input::ServiceApplied(s) => self.tracker.service_applied(s),
            Input::ServiceDeleted(n) => self.tracker.service_deleted(&n),
            Input::EndpointsApplied(e) => self.tracker.endpoints_applied(e),
            Input::EndpointsDeleted(n) => self.tracker.endpoints_deleted(&n),
            Input::SliceApplied(s) => self.tracker.slice_applied(s),
            Input::SliceDeleted(s) => self.tracker.slice_deleted(&s),
            Input::Relist {
                services,
                endpoints,
                slices,
            } => self.tracker.replace_all(services, endpoints, slices),
            Input::ServicesRelisted(s) => self.tracker.replace_services(s),
            Input::EndpointsRelisted(e) => self.tracker.replace_endpoints(e),
            Input::SlicesRelisted(s) => self.tracker.replace_slices(s),
            Input::Node(n) => {
                if let Some(p) = self.proxier.as_mut() {
                    p.set_node(&n);
                }
                node_changed = true;
            }
        }
        let (s, e) = self.tracker.change_counts();
        self.metrics.set_changes(s, e);
        node_changed
    }

    /// Runs until `inputs` closes or `shutdown`; returns the proxier (its state keeps working
    /// after the agent is gone where the mode allows, e.g. pinned eBPF maps).
    pub async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        shutdown: CancellationToken,
    ) -> Result<Box<dyn Proxier>, Error> {
        let cfg = self.config;
        // Every --sync-period a periodic sync; it is a full one when the mode's full-sync
        // period is over too (kube-proxy: partial syncs every sync period, a full one hourly).
        let timing = self.proxier.as_ref().map(|p| p.timing());
        let full_every = timing
            .and_then(|t| t.full_sync_period)
            .unwrap_or(cfg.sync_period)
            .max(cfg.sync_period);
        let mut needs_full = true;
        let mut last_sync: Option<Instant> = None;
        let mut next_periodic = Instant::now();
        let mut next_full = Instant::now();
        let mut retry = cfg.min_sync_period;
        let mut retry_at: Option<Instant> = None;
        let mut pending_triggers: Vec<String> = Vec::new();
        let housekeeping = timing.and_then(|t| t.housekeeping_interval);
        let mut next_housekeeping = housekeeping.map(|i| Instant::now() + i);
        // Take what is queued before the first sync, so it starts from the full lists.
        while let Ok(i) = inputs.try_recv() {
            self.input(i);
        }
        loop {
            let now = Instant::now();
            let min_ok = last_sync.is_none_or(|t| now >= t + cfg.min_sync_period)
                && retry_at.is_none_or(|t| now >= t);
            let periodic = now >= next_periodic;
            let kind = if !min_ok {
                None
            } else if needs_full || (periodic && now >= next_full) {
                Some(Kind::Full)
            } else if periodic || self.tracker.has_changes() {
                Some(Kind::Partial)
            } else {
                None
            };
            if let Some(kind) = kind {
                let changes = self.tracker.take_changes();
                pending_triggers.extend(changes.trigger_times);
                if matches!(kind, Kind::Partial) && changes.services.is_empty() && !periodic {
                    // Objects changed, their models did not: nothing to program.
                    self.metrics.programmed(&pending_triggers);
                    pending_triggers.clear();
                    continue;
                }
                let Some(mut p) = self.proxier.take() else {
                    return Err(Error::ProxierLost);
                };
                let full = matches!(kind, Kind::Full);
                let models: Option<Models> = full.then(|| self.tracker.models().clone());
                let services = changes.services;
                let started = Instant::now();
                let (p, res) = tokio::task::spawn_blocking(move || {
                    let res = match &models {
                        Some(m) => p.sync_full(m),
                        None => p.sync_changed(&services),
                    };
                    (p, res)
                })
                .await
                .map_err(Error::Join)?;
                self.proxier = Some(p);
                let took = started.elapsed();
                last_sync = Some(Instant::now());
                match res {
                    Ok(st) => {
                        debug!(
                            full,
                            writes = st.writes,
                            services = st.services,
                            took_us = took.as_micros() as u64,
                            "synced"
                        );
                        self.metrics.synced(full, took);
                        self.metrics.programmed(&pending_triggers);
                        pending_triggers.clear();
                        next_periodic = Instant::now() + cfg.sync_period;
                        if full {
                            needs_full = false;
                            next_full = Instant::now() + full_every;
                        }
                        retry = cfg.min_sync_period;
                        retry_at = None;
                        if let Some(mut hook) = self.after_first_sync.take() {
                            let (hook, res) = tokio::task::spawn_blocking(move || {
                                let r = hook();
                                (hook, r)
                            })
                            .await
                            .map_err(Error::Join)?;
                            if let Err(e) = res {
                                warn!(error = %e, "after the first sync; retried after the next");
                                self.after_first_sync = Some(hook);
                            }
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, full, retry_in_ms = retry.as_millis() as u64, "sync failed; a full sync follows");
                        self.metrics.sync_failed();
                        needs_full = true;
                        retry_at = Some(Instant::now() + retry);
                        retry = (retry * 2).clamp(Duration::from_millis(10), cfg.sync_period);
                    }
                }
                continue;
            }
            if let Some(t) = next_housekeeping
                && now >= t
            {
                if let Some(mut p) = self.proxier.take() {
                    let (p, res) = tokio::task::spawn_blocking(move || {
                        let r = p.housekeeping();
                        (p, r)
                    })
                    .await
                    .map_err(Error::Join)?;
                    self.proxier = Some(p);
                    if let Err(e) = res {
                        warn!(error = %e, "housekeeping failed");
                    }
                }
                next_housekeeping = housekeeping.map(|i| Instant::now() + i);
                continue;
            }
            // No sync before the gate (--min-sync-period, the retry delay); the periodic one
            // waits for it too.
            let mut gate = last_sync.map_or(now, |t| t + cfg.min_sync_period);
            if let Some(r) = retry_at {
                gate = gate.max(r);
            }
            let mut deadline = next_periodic.max(gate);
            if let Some(t) = next_housekeeping {
                deadline = deadline.min(t);
            }
            if needs_full || self.tracker.has_changes() {
                deadline = deadline.min(gate);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                i = inputs.recv() => match i {
                    None => break,
                    Some(i) => {
                        if self.input(i) {
                            needs_full = true;
                        }
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
        info!("sync loop stopped");
        self.proxier.take().ok_or(Error::ProxierLost)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::mode::{ChangedServices, ModeMetrics, ProxyMode, SyncStats, Timing};

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Full(usize),
        Partial(Vec<String>),
        Node,
    }

    /// A mode that records what it is asked to do; fails the next `fail_next` syncs.
    struct Fake {
        calls: Arc<Mutex<Vec<(Call, tokio::time::Instant)>>>,
        fail_next: Arc<Mutex<u32>>,
        full_period: Option<Duration>,
    }

    struct NoMetrics;
    impl ModeMetrics for NoMetrics {
        fn render(&self, _: &mut String) {}
    }

    impl Fake {
        fn record(&self, c: Call) -> crate::Result<SyncStats> {
            if let Ok(mut v) = self.calls.lock() {
                v.push((c, tokio::time::Instant::now()));
            }
            let fail = self
                .fail_next
                .lock()
                .map(|mut f| {
                    let fail = *f > 0;
                    *f = f.saturating_sub(1);
                    fail
                })
                .unwrap_or(false);
            if fail {
                Err(Error::ProxierLost)
            } else {
                Ok(SyncStats::default())
            }
        }
    }

    impl Proxier for Fake {
        fn mode(&self) -> ProxyMode {
            ProxyMode::Ebpf
        }
        fn set_node(&mut self, _: &NodeInfo) {
            let _ = self.record(Call::Node);
        }
        fn sync_changed(&mut self, changed: &ChangedServices) -> crate::Result<SyncStats> {
            let mut names: Vec<String> = changed.iter().map(|(n, _)| n.name.clone()).collect();
            names.sort();
            self.record(Call::Partial(names))
        }
        fn sync_full(&mut self, all: &Models) -> crate::Result<SyncStats> {
            self.record(Call::Full(all.len()))
        }
        fn housekeeping(&mut self) -> crate::Result<()> {
            Ok(())
        }
        fn metrics(&self) -> Arc<dyn ModeMetrics> {
            Arc::new(NoMetrics)
        }
        fn timing(&self) -> Timing {
            Timing {
                full_sync_period: self.full_period,
                ..Timing::DEFAULT
            }
        }
    }

    fn svc(name: &str, ip: &str) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ip, "ports": [{"port": 80}]}
            }))
            .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    struct Harness {
        calls: Arc<Mutex<Vec<(Call, tokio::time::Instant)>>>,
        fail_next: Arc<Mutex<u32>>,
        tx: mpsc::Sender<Input>,
        task: tokio::task::JoinHandle<Result<Box<dyn Proxier>, Error>>,
        metrics: Arc<ProxyMetrics>,
    }

    fn start(cfg: SyncConfig) -> Harness {
        start_with(cfg, None)
    }

    fn start_with(cfg: SyncConfig, full_period: Option<Duration>) -> Harness {
        start_hooked(cfg, full_period, 0, None)
    }

    /// A loop over a [`Fake`] whose first `fail_first` syncs fail, with an after-first-sync
    /// `hook` that sees the calls recorded so far.
    fn start_hooked(
        cfg: SyncConfig,
        full_period: Option<Duration>,
        fail_first: u32,
        hook: Option<Box<dyn FnMut(usize) -> crate::Result<()> + Send>>,
    ) -> Harness {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let fail_next = Arc::new(Mutex::new(fail_first));
        let fake = Fake {
            calls: calls.clone(),
            fail_next: fail_next.clone(),
            full_period,
        };
        let metrics = Arc::new(ProxyMetrics::new());
        let (tx, rx) = mpsc::channel(64);
        let mut sync_loop = SyncLoop::new(Box::new(fake), cfg, metrics.clone());
        if let Some(mut hook) = hook {
            let seen = calls.clone();
            sync_loop = sync_loop.after_first_sync(Box::new(move || {
                hook(seen.lock().map(|v| v.len()).unwrap_or(0))
            }));
        }
        let task = tokio::spawn(sync_loop.run(rx, CancellationToken::new()));
        Harness {
            calls,
            fail_next,
            tx,
            task,
            metrics,
        }
    }

    impl Harness {
        async fn send(&self, i: Input) {
            self.tx
                .send(i)
                .await
                .unwrap_or_else(|e| panic!("send: {e}"));
        }
        fn calls(&self) -> Vec<Call> {
            self.calls
                .lock()
                .map(|v| v.iter().map(|(c, _)| c.clone()).collect())
                .unwrap_or_default()
        }
        async fn stop(self) {
            drop(self.tx);
            let r = self.task.await.unwrap_or_else(|e| panic!("join: {e}"));
            assert!(r.is_ok(), "the loop returns the proxier");
        }
    }

    const CFG: SyncConfig = SyncConfig {
        min_sync_period: Duration::from_secs(1),
        sync_period: Duration::from_secs(30),
    };

    #[tokio::test(start_paused = true)]
    async fn first_sync_is_full_and_changes_within_min_sync_period_are_coalesced() {
        let h = start(CFG);
        h.send(Input::Relist {
            services: vec![svc("a", "10.96.0.1")],
            endpoints: vec![],
            slices: vec![],
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(h.calls(), [Call::Full(1)]);
        // Three changes right after the sync: one partial sync once min-sync-period is over.
        h.send(Input::ServiceApplied(svc("b", "10.96.0.2"))).await;
        h.send(Input::ServiceApplied(svc("c", "10.96.0.3"))).await;
        h.send(Input::ServiceDeleted(ServiceName::new("default", "a")))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(h.calls().len(), 1, "nothing before min-sync-period");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            h.calls(),
            [
                Call::Full(1),
                Call::Partial(vec!["a".into(), "b".into(), "c".into()])
            ]
        );
        // A change long after the last sync is programmed at once.
        tokio::time::sleep(Duration::from_secs(5)).await;
        h.send(Input::ServiceApplied(svc("d", "10.96.0.4"))).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(h.calls().last(), Some(&Call::Partial(vec!["d".into()])));
        // An unchanged object is no change at all.
        h.send(Input::ServiceApplied(svc("d", "10.96.0.4"))).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(h.calls().len(), 3);
        assert_eq!(h.metrics.syncs(), 3);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn full_sync_every_sync_period_without_changes() {
        let h = start(CFG);
        h.send(Input::Relist {
            services: vec![svc("a", "10.96.0.1")],
            endpoints: vec![],
            slices: vec![],
        })
        .await;
        tokio::time::sleep(Duration::from_secs(95)).await;
        assert_eq!(
            h.calls(),
            [Call::Full(1), Call::Full(1), Call::Full(1), Call::Full(1)]
        );
        let at: Vec<_> = h
            .calls
            .lock()
            .map(|v| v.iter().map(|(_, t)| *t).collect())
            .unwrap_or_default();
        let gap = at[1] - at[0];
        assert!(
            gap >= CFG.sync_period && gap < CFG.sync_period + CFG.min_sync_period,
            "one sync period apart: {gap:?}"
        );
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_partial_sync_is_followed_by_a_full_one_and_a_node_change_forces_one() {
        let h = start(CFG);
        h.send(Input::Relist {
            services: vec![],
            endpoints: vec![],
            slices: vec![],
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Ok(mut f) = h.fail_next.lock() {
            *f = 1;
        }
        h.send(Input::ServiceApplied(svc("a", "10.96.0.1"))).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            h.calls(),
            [
                Call::Full(0),
                Call::Partial(vec!["a".into()]),
                Call::Full(1)
            ],
            "the failed partial sync is repaired by a full one"
        );
        let node = NodeInfo {
            name: "n1".into(),
            addrs: vec![Ipv4Addr::new(198, 18, 0, 11)],
            pod_cidr: None,
            cluster_cidr: crate::model::DEFAULT_CLUSTER_CIDR,
        };
        h.send(Input::Node(node)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(&h.calls()[3..], [Call::Node, Call::Full(1)]);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_sync_hook_runs_once_after_the_first_successful_sync() {
        let hooked = Arc::new(Mutex::new(Vec::new()));
        let seen = hooked.clone();
        let h = start_hooked(
            CFG,
            None,
            1,
            Some(Box::new(move |calls| {
                if let Ok(mut v) = seen.lock() {
                    v.push(calls);
                }
                Ok(())
            })),
        );
        h.send(Input::Relist {
            services: vec![svc("a", "10.96.0.1")],
            endpoints: vec![],
            slices: vec![],
        })
        .await;
        tokio::time::sleep(Duration::from_secs(70)).await;
        // The first full sync failed, the retry succeeded: the hook ran then, and only once.
        assert_eq!(hooked.lock().map(|v| v.clone()).unwrap_or_default(), [2]);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_first_sync_hook_is_retried_after_later_syncs_until_it_succeeds() {
        let runs = Arc::new(Mutex::new(0u32));
        let r = runs.clone();
        let h = start_hooked(
            CFG,
            None,
            0,
            Some(Box::new(move |_| {
                let n = r.lock().map(|mut n| {
                    *n += 1;
                    *n
                });
                match n {
                    Ok(1) => Err(Error::ProxierLost),
                    _ => Ok(()),
                }
            })),
        );
        h.send(Input::Relist {
            services: vec![svc("a", "10.96.0.1")],
            endpoints: vec![],
            slices: vec![],
        })
        .await;
        tokio::time::sleep(Duration::from_secs(100)).await;
        // Failed after the first sync, succeeded after the next (periodic) one, then left alone.
        assert_eq!(runs.lock().map(|n| *n).unwrap_or(0), 2);
        assert!(h.calls().len() >= 3);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn failing_full_syncs_back_off_instead_of_spinning() {
        let h = start(CFG);
        if let Ok(mut f) = h.fail_next.lock() {
            *f = 1_000;
        }
        h.send(Input::Relist {
            services: vec![svc("a", "10.96.0.1")],
            endpoints: vec![],
            slices: vec![],
        })
        .await;
        tokio::time::sleep(Duration::from_secs(100)).await;
        // Retries at 0, 1, 3, 7, 15, 31 s, then every 30 s (the sync period): 8 in 100 s.
        let n = h.calls().len();
        assert!((6..=9).contains(&n), "{n} attempts: {:?}", h.calls());
        assert!(h.calls().iter().all(|c| matches!(c, Call::Full(1))));
        if let Ok(mut f) = h.fail_next.lock() {
            *f = 0;
        }
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_mode_with_a_longer_full_sync_period_gets_partial_syncs_in_between() {
        let h = start_with(CFG, Some(Duration::from_secs(90)));
        h.send(Input::Relist {
            services: vec![svc("a", "10.96.0.1")],
            endpoints: vec![],
            slices: vec![],
        })
        .await;
        tokio::time::sleep(Duration::from_secs(100)).await;
        // Every 30 s a sync; the one at 90 s is full again.
        assert_eq!(
            h.calls(),
            [
                Call::Full(1),
                Call::Partial(vec![]),
                Call::Partial(vec![]),
                Call::Full(1)
            ]
        );
        h.stop().await;
    }

    use std::net::Ipv4Addr;
}
