//! The proxy's own metrics, named as kube-proxy names them, in Prometheus text format.
//!
//! - `kubeproxy_sync_proxy_rules_duration_seconds` (every sync),
//!   `kubeproxy_sync_full_proxy_rules_duration_seconds`,
//!   `kubeproxy_sync_partial_proxy_rules_duration_seconds`: histograms with kube-proxy's
//!   buckets (1 ms doubling, 15 buckets);
//! - `kubeproxy_network_programming_duration_seconds`: from the
//!   `endpoints.kubernetes.io/last-change-trigger-time` of an Endpoints change to the sync
//!   that programmed it (changes made before the proxy started are not observed, as in
//!   kube-proxy);
//! - `kubeproxy_sync_proxy_rules_last_timestamp_seconds`,
//!   `kubeproxy_sync_proxy_rules_endpoint_changes_total`,
//!   `kubeproxy_sync_proxy_rules_service_changes_total`.
//!
//! The mode appends its own ([`crate::mode::ModeMetrics`]).

use std::{
    fmt::Write as _,
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

/// A cumulative histogram with fixed upper bounds.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: Vec<f64>) -> Self {
        Self {
            counts: vec![0; bounds.len()],
            bounds,
            sum: 0.0,
            count: 0,
        }
    }

    /// kube-proxy's sync duration buckets: 1 ms, doubling, 15 buckets.
    pub fn sync_buckets() -> Self {
        Self::new((0..15).map(|i| 0.001 * f64::from(1u32 << i)).collect())
    }

    /// kube-proxy's network programming buckets: 0.25 s, 0.5 s, 1..59 s, 60..115 s by 5,
    /// 120..300 s by 30.
    pub fn programming_buckets() -> Self {
        let mut b = vec![0.25, 0.5];
        b.extend((1..60).map(f64::from));
        b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
        b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
        Self::new(b)
    }

    pub fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug)]
struct Inner {
    sync: Histogram,
    full: Histogram,
    partial: Histogram,
    programming: Histogram,
    last_sync_unix: Option<f64>,
    last_success: Option<Instant>,
    service_changes: u64,
    endpoint_changes: u64,
    syncs: u64,
    errors: u64,
}

/// The agent's metrics and health state (one writer: the sync loop).
#[derive(Debug)]
pub struct ProxyMetrics {
    inner: Mutex<Inner>,
    started: SystemTime,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyMetrics {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                sync: Histogram::sync_buckets(),
                full: Histogram::sync_buckets(),
                partial: Histogram::sync_buckets(),
                programming: Histogram::programming_buckets(),
                last_sync_unix: None,
                last_success: None,
                service_changes: 0,
                endpoint_changes: 0,
                syncs: 0,
                errors: 0,
            }),
            started: SystemTime::now(),
        }
    }

    fn with(&self, f: impl FnOnce(&mut Inner)) {
        if let Ok(mut i) = self.inner.lock() {
            f(&mut i);
        }
    }

    /// A successful sync of `took`.
    pub fn synced(&self, full: bool, took: Duration) {
        let secs = took.as_secs_f64();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.with(|i| {
            i.sync.observe(secs);
            if full {
                i.full.observe(secs);
            } else {
                i.partial.observe(secs);
            }
            i.last_sync_unix = Some(now);
            i.last_success = Some(Instant::now());
            i.syncs += 1;
        });
    }

    pub fn sync_failed(&self) {
        self.with(|i| i.errors += 1);
    }

    /// Object change counts from the tracker.
    pub fn set_changes(&self, services: u64, endpoints: u64) {
        self.with(|i| {
            i.service_changes = services;
            i.endpoint_changes = endpoints;
        });
    }

    /// The changes triggered at `trigger_times` (RFC 3339) are programmed now.
    pub fn programmed(&self, trigger_times: &[String]) {
        let now = SystemTime::now();
        let started = self.started;
        self.with(|i| {
            for t in trigger_times {
                let Ok(ts) = t.parse::<jiff::Timestamp>() else {
                    continue;
                };
                let at = SystemTime::from(ts);
                if at < started {
                    continue;
                }
                if let Ok(d) = now.duration_since(at) {
                    i.programming.observe(d.as_secs_f64());
                }
            }
        });
    }

    /// Observations of network programming so far.
    pub fn programming_count(&self) -> u64 {
        self.inner
            .lock()
            .map(|i| i.programming.count())
            .unwrap_or(0)
    }

    /// Syncs (full and partial) that succeeded.
    pub fn syncs(&self) -> u64 {
        self.inner.lock().map(|i| i.syncs).unwrap_or(0)
    }

    /// Healthy: a sync succeeded within `max_age` (kube-proxy's healthz reports stale when the
    /// proxy has not synced for too long).
    pub fn healthy(&self, max_age: Duration) -> bool {
        self.inner
            .lock()
            .ok()
            .and_then(|i| i.last_success)
            .is_some_and(|t| t.elapsed() <= max_age)
    }

    pub fn render(&self, out: &mut String) {
        let Ok(i) = self.inner.lock() else {
            return;
        };
        i.sync.render(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds (full and partial syncs).",
            out,
        );
        i.full.render(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs.",
            out,
        );
        i.partial.render(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs.",
            out,
        );
        i.programming.render(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds.",
            out,
        );
        if let Some(t) = i.last_sync_unix {
            let _ = writeln!(
                out,
                "# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds The last time proxy rules were successfully synced.\n# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge\nkubeproxy_sync_proxy_rules_last_timestamp_seconds {t}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP kubeproxy_sync_proxy_rules_endpoint_changes_total Cumulative proxy rules Endpoint changes.\n# TYPE kubeproxy_sync_proxy_rules_endpoint_changes_total counter\nkubeproxy_sync_proxy_rules_endpoint_changes_total {}",
            i.endpoint_changes
        );
        let _ = writeln!(
            out,
            "# HELP kubeproxy_sync_proxy_rules_service_changes_total Cumulative proxy rules Service changes.\n# TYPE kubeproxy_sync_proxy_rules_service_changes_total counter\nkubeproxy_sync_proxy_rules_service_changes_total {}",
            i.service_changes
        );
        let _ = writeln!(
            out,
            "# HELP xkube_proxy_sync_total Successful syncs.\n# TYPE xkube_proxy_sync_total counter\nxkube_proxy_sync_total {}",
            i.syncs
        );
        let _ = writeln!(
            out,
            "# HELP xkube_proxy_sync_errors_total Failed syncs.\n# TYPE xkube_proxy_sync_errors_total counter\nxkube_proxy_sync_errors_total {}",
            i.errors
        );
        // The process's open descriptors and live tasks (a connection or flow that is never
        // cleaned up shows here; the agent process also runs the kubelet).
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let _ = writeln!(
                out,
                "# HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}",
                fds.count()
            );
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let _ = writeln!(
                out,
                "# HELP xkube_runtime_alive_tasks Tasks alive in the process's tokio runtime.\n# TYPE xkube_runtime_alive_tasks gauge\nxkube_runtime_alive_tasks {}",
                rt.metrics().num_alive_tasks()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_render_in_prometheus_format() {
        let mut h = Histogram::sync_buckets();
        h.observe(0.0015);
        h.observe(1.0);
        let mut out = String::new();
        h.render("x", "help", &mut out);
        assert!(out.contains("x_bucket{le=\"0.001\"} 0\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.002\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"1.024\"} 2\n"), "{out}");
        assert!(
            out.contains("x_bucket{le=\"+Inf\"} 2\nx_sum 1.0015\nx_count 2\n"),
            "{out}"
        );
    }

    #[test]
    fn network_programming_counts_changes_after_start_only() {
        let m = ProxyMetrics::new();
        let now = jiff::Timestamp::now();
        let before = now - jiff::SignedDuration::from_secs(3600);
        m.programmed(&[before.to_string(), "garbage".into()]);
        assert_eq!(
            m.programming_count(),
            0,
            "older than the proxy, or unparsable"
        );
        let after = jiff::Timestamp::now();
        m.programmed(&[after.to_string()]);
        assert_eq!(m.programming_count(), 1);
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("kubeproxy_network_programming_duration_seconds_count 1"),
            "{out}"
        );
        assert!(
            out.contains("kubeproxy_sync_proxy_rules_endpoint_changes_total 0"),
            "{out}"
        );
    }
}
