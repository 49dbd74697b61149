//! Latency summaries (HDR histograms) and CPU accounting. Pure.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|e| panic!("constant histogram bounds rejected: {e}"))
}

/// Records `d` (at least 1 µs).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(us);
}

/// What one workload run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Successful operations (requests, connections).
    pub ok: u64,
    /// Failed operations.
    pub errors: u64,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Successful operations per second.
    pub rate: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Summary {
    pub fn new(h: &Histogram<u64>, errors: u64, wall: Duration) -> Self {
        let ok = h.len();
        let seconds = wall.as_secs_f64();
        Self {
            ok,
            errors,
            seconds,
            rate: if seconds > 0.0 {
                ok as f64 / seconds
            } else {
                0.0
            },
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

/// CPU time counters at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuSample {
    /// `usage_usec` of the nodes' cgroups (their processes: agents, pods), summed.
    pub cgroup_usec: u64,
    /// softirq time of the whole machine (`/proc/stat`), in USER_HZ ticks: packet processing
    /// in the kernel runs there, outside any cgroup.
    pub softirq_ticks: u64,
}

/// `usage_usec` from a cgroup v2 `cpu.stat`.
pub fn cgroup_usage_usec(cpu_stat: &str) -> Option<u64> {
    cpu_stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// The softirq ticks of the `cpu` line of `/proc/stat` (the 7th value).
pub fn softirq_ticks(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    line.split_whitespace().nth(7)?.parse().ok()
}

/// CPU seconds between two samples (`ticks_per_sec`: USER_HZ, 100 on Linux).
pub fn cpu_seconds(before: &CpuSample, after: &CpuSample, ticks_per_sec: u64) -> f64 {
    let cg = after.cgroup_usec.saturating_sub(before.cgroup_usec) as f64 / 1e6;
    let si = after.softirq_ticks.saturating_sub(before.softirq_ticks) as f64
        / ticks_per_sec.max(1) as f64;
    cg + si
}

/// CPU seconds per 1,000 operations.
pub fn cpu_per_1000(cpu_seconds: f64, ops: u64) -> f64 {
    if ops == 0 {
        0.0
    } else {
        cpu_seconds * 1000.0 / ops as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let s = Summary::new(&h, 3, Duration::from_secs(2));
        assert_eq!(s.ok, 1000);
        assert_eq!(s.errors, 3);
        assert!((s.rate - 500.0).abs() < 1e-9);
        // 3 significant digits: values within 0.1%.
        assert!((499..=501).contains(&s.p50_us), "{s:?}");
        assert!((899..=901).contains(&s.p90_us), "{s:?}");
        assert!((989..=991).contains(&s.p99_us), "{s:?}");
        assert!((998..=1000).contains(&s.p999_us), "{s:?}");
        assert!((999..=1001).contains(&s.max_us), "{s:?}");
        // Sub-microsecond samples count as 1 µs, not 0.
        record(&mut h, Duration::from_nanos(10));
        assert_eq!(h.min(), 1);
    }

    #[test]
    fn cpu_accounting_adds_cgroup_time_and_softirq() {
        let stat = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n";
        assert_eq!(cgroup_usage_usec(stat), Some(2_500_000));
        let proc_stat = "cpu  100 0 50 1000 5 3 40 0 0 0\ncpu0 50 0 25 500 2 1 20 0 0 0\n";
        assert_eq!(softirq_ticks(proc_stat), Some(40));
        let before = CpuSample {
            cgroup_usec: 2_500_000,
            softirq_ticks: 40,
        };
        let after = CpuSample {
            cgroup_usec: 4_000_000,
            softirq_ticks: 90,
        };
        let s = cpu_seconds(&before, &after, 100);
        assert!(
            (s - 2.0).abs() < 1e-9,
            "1.5 s in the cgroups + 0.5 s softirq: {s}"
        );
        assert!((cpu_per_1000(s, 4000) - 0.5).abs() < 1e-9);
        assert_eq!(cpu_per_1000(s, 0), 0.0);
    }
}
