//! Pod garbage collection: terminated pods beyond `--terminated-pod-gc-threshold` are
//! deleted, oldest first.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio_util::sync::CancellationToken;
use xkube_client::{Api, Client, DeleteParams, Object, Store};

use crate::error::{Error, Result};
use xkube_api::pod as podutil;

/// The terminated pods to delete so that at most `threshold` remain (pure; a threshold of 0
/// disables collection, as in Kubernetes).
pub fn pods_to_collect(pods: &[Arc<Pod>], threshold: usize) -> Vec<Arc<Pod>> {
    if threshold == 0 {
        return Vec::new();
    }
    let mut terminated: Vec<Arc<Pod>> = pods
        .iter()
        .filter(|p| podutil::is_terminal(p) && !podutil::is_terminating(p))
        .cloned()
        .collect();
    if terminated.len() <= threshold {
        return Vec::new();
    }
    terminated.sort_by(|a, b| {
        let t = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        t(a).cmp(&t(b)).then_with(|| a.name().cmp(b.name()))
    });
    let excess = terminated.len() - threshold;
    terminated.truncate(excess);
    terminated
}

/// The pod garbage collector.
#[derive(Clone)]
pub struct PodGcController {
    client: Client,
    pods: Store<Pod>,
    threshold: usize,
    period: Duration,
}

impl PodGcController {
    /// A collector keeping at most `threshold` terminated pods, checking every `period`.
    pub fn new(client: Client, pods: Store<Pod>, threshold: usize, period: Duration) -> Self {
        PodGcController {
            client,
            pods,
            threshold,
            period,
        }
    }

    /// Collects every period until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        self.pods.wait_ready().await;
        let mut tick = tokio::time::interval(self.period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.collect().await {
                tracing::warn!(error = %e, "pod garbage collection failed");
            }
        }
    }

    /// One collection pass.
    #[tracing::instrument(skip(self), fields(controller = "podgc"))]
    pub async fn collect(&self) -> Result<usize> {
        let victims = pods_to_collect(&self.pods.list(), self.threshold);
        let n = victims.len();
        for p in victims {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), p.namespace());
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            match api.delete(p.name(), &dp).await {
                Ok(_) => {
                    tracing::info!(pod = %xkube_client::runtime::key_of(&*p), "garbage collected terminated pod")
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(Error::api(format!("delete terminated pod {}", p.name()))(e)),
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, phase: &str, created: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
                "status": {"phase": phase}
            }))
            .expect("pod literal"),
        )
    }

    #[test]
    fn collects_oldest_terminated_pods_over_the_threshold() {
        let pods = vec![
            pod("new-done", "Succeeded", "2024-03-01T00:00:00Z"),
            pod("old-failed", "Failed", "2024-01-01T00:00:00Z"),
            pod("running", "Running", "2023-01-01T00:00:00Z"),
            pod("mid-done", "Succeeded", "2024-02-01T00:00:00Z"),
        ];
        let names: Vec<String> = pods_to_collect(&pods, 1)
            .iter()
            .map(|p| p.name().to_string())
            .collect();
        assert_eq!(names, ["old-failed", "mid-done"]);
        assert!(pods_to_collect(&pods, 3).is_empty());
        assert!(pods_to_collect(&pods, 0).is_empty(), "0 disables");
    }
}
