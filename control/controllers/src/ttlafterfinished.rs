//! The TTL-after-finished controller (Kubernetes' `pkg/controller/ttlafterfinished`): deletes
//! a finished Job (`Complete` or `Failed`) `spec.ttlSecondsAfterFinished` seconds after it
//! finished, with `Foreground` propagation (its pods go first, as Kubernetes' TTL
//! controller). Before deleting it reads the Job again from the apiserver (the cache may be
//! stale: the TTL may have changed) and deletes with that resourceVersion as a precondition.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use tokio_util::sync::CancellationToken;
use xkube_api::batch::{finish_time, finished};
use xkube_client::{Api, Client, DeleteParams, Object, PropagationPolicy, Store};

use crate::clock::SharedClock;
use crate::error::{Error, Result};
use xkube_client::runtime::{Controller, Reconciler, Requeue, WorkQueue, split_key};

/// When a finished Job expires: its finish time plus its TTL; `None` when it has no TTL or
/// has not finished.
pub fn expires_at(job: &Job) -> Option<jiff::Timestamp> {
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    finished(job)?;
    let done = job
        .status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .map(|t| t.0)
        .or_else(|| finish_time(job))?;
    done.checked_add(jiff::SignedDuration::from_secs(i64::from(ttl)))
        .ok()
}

/// How long until `job` expires at `now` (zero: delete it now); `None` when it never does.
pub fn time_left(job: &Job, now: jiff::Timestamp) -> Option<Duration> {
    let at = expires_at(job)?;
    Some(Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO))
}

/// The TTL-after-finished controller.
#[derive(Clone)]
pub struct TtlAfterFinishedController {
    client: Client,
    jobs: Store<Job>,
    clock: SharedClock,
    queue: WorkQueue<String>,
}

impl TtlAfterFinishedController {
    /// A controller over the Job cache, reading time from `clock`.
    pub fn new(client: Client, jobs: Store<Job>, clock: SharedClock) -> Self {
        TtlAfterFinishedController {
            client,
            jobs,
            clock,
            queue: WorkQueue::new(),
        }
    }

    /// Watches the Jobs that have a TTL and runs `workers` reconcilers until `shutdown`.
    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        Controller::new(
            "ttl-after-finished",
            self.clone(),
            self.queue.clone(),
            &shutdown,
        )
        .owns(&self.jobs, Duration::from_secs(30), |j| {
            j.metadata.deletion_timestamp.is_none() && expires_at(j).is_some()
        })
        .run(workers)
        .await;
    }
}

impl Reconciler for TtlAfterFinishedController {
    type Error = Error;

    /// Deletes one expired Job, or looks again when it expires.
    #[tracing::instrument(skip(self), fields(controller = "ttl-after-finished"))]
    async fn reconcile(&self, key: &str) -> Result<Requeue> {
        let (ns, name) = split_key(key);
        let Some(cached) = self.jobs.get(ns, name) else {
            return Ok(None);
        };
        if cached.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        match time_left(&cached, self.clock.now()) {
            None => return Ok(None),
            Some(left) if !left.is_zero() => return Ok(Some(left)),
            Some(_) => {}
        }
        let api: Api<Job> = Api::namespaced(self.client.clone(), ns);
        let fresh = match api.get_opt(name).await {
            Ok(Some(j)) => j,
            Ok(None) => return Ok(None),
            Err(e) => return Err(Error::api(format!("get job {key}"))(e)),
        };
        match time_left(&fresh, self.clock.now()) {
            None => return Ok(None),
            Some(left) if !left.is_zero() => return Ok(Some(left)),
            Some(_) => {}
        }
        tracing::info!(job = key, "deleting finished job whose TTL expired");
        // Foreground, as Kubernetes' TTL controller: the Job goes after its pods.
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            precondition_uid: Some(fresh.uid().to_string()),
            precondition_resource_version: Some(fresh.resource_version().to_string()),
            ..DeleteParams::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => Ok(None),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(Error::api(format!("delete expired job {key}"))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(ttl: Option<i32>, conditions: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "pi", "namespace": "default"},
            "spec": {"ttlSecondsAfterFinished": ttl, "template": {}},
            "status": {"completionTime": "2024-01-01T00:00:10Z", "conditions": conditions}
        }))
        .expect("job literal")
    }

    #[test]
    fn finished_jobs_expire_their_ttl_after_finishing() {
        let done = json!([{"type": "Complete", "status": "True",
                           "lastTransitionTime": "2024-01-01T00:00:10Z"}]);
        let j = job(Some(30), done.clone());
        let at = |s: &str| s.parse::<jiff::Timestamp>().expect("ts");
        assert_eq!(
            time_left(&j, at("2024-01-01T00:00:20Z")),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            time_left(&j, at("2024-01-01T00:01:00Z")),
            Some(Duration::ZERO)
        );
        assert_eq!(
            time_left(&job(None, done), at("2024-01-01T00:01:00Z")),
            None
        );
        let running = job(Some(30), json!([]));
        assert_eq!(time_left(&running, at("2024-01-01T00:01:00Z")), None);
    }
}
