//! Reading the proxy's own Prometheus metrics (text format) for the bench's report.

/// `<name>_sum` and `<name>_count` of an unlabelled histogram in `text`.
pub fn sum_count(text: &str, name: &str) -> Option<(f64, u64)> {
    let value = |suffix: &str| {
        let key = format!("{name}_{suffix}");
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
    };
    Some((value("sum")?, value("count")? as u64))
}

/// The mean of the observations between two readings of one histogram, in milliseconds, and
/// their number (none when there was none).
pub fn mean_ms_between(
    before: Option<(f64, u64)>,
    after: Option<(f64, u64)>,
) -> (Option<f64>, u64) {
    let (s0, c0) = before.unwrap_or((0.0, 0));
    match after {
        Some((s1, c1)) if c1 > c0 => (Some((s1 - s0) / (c1 - c0) as f64 * 1e3), c1 - c0),
        _ => (None, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE kubeproxy_sync_full_proxy_rules_duration_seconds histogram
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{le=\"0.001\"} 0
kubeproxy_sync_full_proxy_rules_duration_seconds_sum 0.5
kubeproxy_sync_full_proxy_rules_duration_seconds_count 2
kubeproxy_sync_proxy_rules_duration_seconds_sum 0.75
kubeproxy_sync_proxy_rules_duration_seconds_count 5
";

    #[test]
    fn histogram_sums_and_counts_are_read_by_exact_name() {
        assert_eq!(
            sum_count(TEXT, "kubeproxy_sync_full_proxy_rules_duration_seconds"),
            Some((0.5, 2))
        );
        assert_eq!(
            sum_count(TEXT, "kubeproxy_sync_proxy_rules_duration_seconds"),
            Some((0.75, 5))
        );
        assert_eq!(
            sum_count(TEXT, "kubeproxy_network_programming_duration_seconds"),
            None
        );
        // Between two readings: (0.75 - 0.5) s over 3 observations.
        let (mean, n) = mean_ms_between(Some((0.5, 2)), Some((0.75, 5)));
        assert_eq!(n, 3);
        assert!((mean.expect("mean") - 250.0 / 3.0).abs() < 1e-9);
        assert_eq!(mean_ms_between(Some((0.5, 2)), Some((0.5, 2))), (None, 0));
        assert_eq!(mean_ms_between(None, Some((0.5, 2))), (Some(250.0), 2));
    }
}
