//! The Job controller (Kubernetes' `pkg/controller/job`, NonIndexed completion): runs pods
//! of `spec.template` until `spec.completions` of them succeeded, at most `spec.parallelism`
//! at a time, and keeps `status` current.
//!
//! - **Pods** are named `<job>-<5 random characters>`, carry the template's labels (the
//!   generated `batch.kubernetes.io/controller-uid`, `controller-uid`,
//!   `batch.kubernetes.io/job-name` and `job-name`) and a controller ownerReference.
//!   Matching orphans are adopted, owned pods whose labels stop matching released.
//! - **Wanted active pods**: with `completions`, `min(completions - succeeded, parallelism)`;
//!   without, `parallelism` until one pod succeeded, then whatever still runs. Extra active
//!   pods are deleted (pending and not ready first).
//! - **Failures**: after a failed pod, new pods wait an exponential back-off (10 s per
//!   failure since the last success, doubling, at most 6 minutes, counted from the last
//!   failure's finish time). More failed pods than `backoffLimit` (for `OnFailure`, that many
//!   container restarts of running pods) fail the Job with `BackoffLimitExceeded`;
//!   `activeDeadlineSeconds` since `startTime` with `DeadlineExceeded`.
//! - **Finishing** as Kubernetes 1.33 does: an interim condition first (`SuccessCriteriaMet`,
//!   or `FailureTarget` while active pods are deleted), then the terminal `Complete` (with
//!   `completionTime`) or `Failed` once no pod of the Job is terminating. Events:
//!   `SuccessfulCreate`, `SuccessfulDelete`, `Completed`, `BackoffLimitExceeded`,
//!   `DeadlineExceeded`, `Suspended`, `Resumed`.
//! - **Suspend** deletes the active pods and sets `Suspended`; resuming resets `startTime`.
//!
//! **Counting.** Kubernetes counts finished pods once, through a tracking finalizer on every
//! pod and `status.uncountedTerminatedPods`. Here the succeeded and failed counts are those
//! of the Job's finished pods that still exist, and never go down: a finished pod deleted
//! before a later one finishes is not counted twice, but that later one may not be counted
//! (a replacement pod then runs). `Indexed` completion, pod failure policies, success
//! policies and `backoffLimitPerIndex` are not implemented (the Job is treated as
//! NonIndexed and the policies are ignored).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio_util::sync::CancellationToken;
use xkube_api::LabelSelector;
use xkube_api::batch::{
    COMPLETE, FAILED, FAILURE_TARGET, SUCCESS_CRITERIA_MET, SUSPENDED, finished, has_condition,
};
use xkube_client::{Api, Client, Object, Store};

use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::podcontrol::{self, BURST_REPLICAS, Claim, PodControl, ReleaseConflict};
use xkube_api::pod::{self as podutil, controller_of, is_active, is_terminal};
use xkube_client::runtime::{
    Controller, EventRecorder, NORMAL, Reconciler, Requeue, Seen, WARNING, WorkQueue, key_of,
    object_ref, split_key,
};

/// The first pod-failure back-off.
pub const POD_FAILURE_BACKOFF: Duration = Duration::from_secs(10);
/// The longest pod-failure back-off.
pub const MAX_POD_FAILURE_BACKOFF: Duration = Duration::from_secs(6 * 60);

/// `<job>-<5 random characters>`.
pub fn pod_name(job: &str) -> String {
    xkube_api::names::generate(&format!("{job}-"))
}

/// The pod selector of a Job; `None` when it is missing or invalid (it selects nothing).
pub fn job_selector(job: &Job) -> Option<LabelSelector> {
    let sel = job.spec.as_ref()?.selector.as_ref()?;
    LabelSelector::from_meta(sel).ok().filter(|s| !s.is_empty())
}

/// Sorts pods out for `job` (pure): its owned pods are all of them, finished ones included.
pub fn claim_pods(job: &Job, pods: &[Arc<Pod>]) -> Claim {
    let selector = job_selector(job);
    podcontrol::claim(
        job,
        pods,
        |p| {
            selector
                .as_ref()
                .is_some_and(|s| s.matches(&p.metadata.labels.clone().unwrap_or_default()))
        },
        |_| true,
    )
}

/// When a finished pod finished (Kubernetes' `getFinishedTime`): the last container's
/// finish time, else when it stopped being ready, else its deletion, else its creation.
pub fn finish_time(pod: &Pod) -> Option<jiff::Timestamp> {
    let status = pod.status.as_ref();
    let containers: Option<Vec<jiff::Timestamp>> = status
        .and_then(|s| s.container_statuses.as_ref())
        .filter(|cs| !cs.is_empty())
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    c.state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref())
                        .and_then(|t| t.finished_at.as_ref())
                        .map(|t| t.0)
                })
                .collect::<Option<Vec<_>>>()
        })
        .and_then(|v| v);
    if let Some(t) = containers.and_then(|v| v.into_iter().max()) {
        return Some(t);
    }
    let not_ready = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "False")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
    if not_ready.is_some() {
        return not_ready;
    }
    if let Some(d) = &pod.metadata.deletion_timestamp {
        let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
        return d.0.checked_sub(jiff::SignedDuration::from_secs(grace)).ok();
    }
    pod.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// The back-off before the next pod after `failures` consecutive failures: 10 s, doubling,
/// at most 6 minutes (none without failures).
pub fn backoff_delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let mut d = POD_FAILURE_BACKOFF;
    for _ in 1..failures {
        d *= 2;
        if d >= MAX_POD_FAILURE_BACKOFF {
            return MAX_POD_FAILURE_BACKOFF;
        }
    }
    d
}

/// How long new pods still wait after the failures since the last success among `pods`
/// (Kubernetes' back-off record, computed from the pods).
pub fn backoff_remaining(pods: &[Arc<Pod>], now: jiff::Timestamp) -> Duration {
    let last_success = pods
        .iter()
        .filter(|p| podutil::phase(p) == "Succeeded")
        .filter_map(|p| finish_time(p))
        .max();
    let failures: Vec<jiff::Timestamp> = pods
        .iter()
        .filter(|p| podutil::phase(p) == "Failed")
        .filter_map(|p| finish_time(p))
        .filter(|t| last_success.is_none_or(|s| *t > s))
        .collect();
    let Some(last_failure) = failures.iter().max() else {
        return Duration::ZERO;
    };
    let delay = backoff_delay(failures.len() as u32);
    let elapsed = now.duration_since(*last_failure).as_secs_f64().max(0.0);
    delay.saturating_sub(Duration::from_secs_f64(elapsed))
}

/// Whether the container restarts of the running and pending pods reach `backoffLimit`
/// (restartPolicy OnFailure only: those pods never fail; Kubernetes'
/// `pastBackoffLimitOnFailure`).
pub fn past_backoff_limit_on_failure(job: &Job, pods: &[Arc<Pod>]) -> bool {
    let spec = job.spec.as_ref();
    let policy = spec
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.restart_policy.as_deref());
    if policy != Some("OnFailure") {
        return false;
    }
    let limit = spec.and_then(|s| s.backoff_limit).unwrap_or(6);
    let restarts: i32 = pods
        .iter()
        .filter(|p| matches!(podutil::phase(p), "Running" | "Pending"))
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum();
    if limit == 0 {
        restarts > 0
    } else {
        restarts >= limit
    }
}

/// A condition with both times at `now`.
fn condition(ty: &str, reason: &str, message: &str, now: jiff::Timestamp) -> JobCondition {
    JobCondition {
        type_: ty.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Kubernetes' `ensureJobConditionStatus`: sets condition `ty` to `status` (appending only a
/// True one); returns whether the list changed.
fn ensure_condition(
    list: &mut Vec<JobCondition>,
    ty: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: jiff::Timestamp,
) -> bool {
    if let Some(c) = list.iter_mut().find(|c| c.type_ == ty) {
        if c.status != status
            || c.reason.as_deref() != Some(reason)
            || c.message.as_deref() != Some(message)
        {
            *c = JobCondition {
                status: status.into(),
                ..condition(ty, reason, message, now)
            };
            return true;
        }
        return false;
    }
    if status == "True" {
        list.push(condition(ty, reason, message, now));
        return true;
    }
    false
}

/// How a Job ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// `Complete` or `Failed`.
    pub terminal: &'static str,
    /// `CompletionsReached`, `BackoffLimitExceeded`, `DeadlineExceeded`, ...
    pub reason: String,
    /// The condition's message.
    pub message: String,
}

impl Finish {
    fn interim(&self) -> &'static str {
        if self.terminal == COMPLETE {
            SUCCESS_CRITERIA_MET
        } else {
            FAILURE_TARGET
        }
    }
}

fn success() -> Finish {
    Finish {
        terminal: COMPLETE,
        reason: "CompletionsReached".into(),
        message: "Reached expected number of succeeded pods".into(),
    }
}

fn failure(reason: &str, message: &str) -> Finish {
    Finish {
        terminal: FAILED,
        reason: reason.into(),
        message: message.into(),
    }
}

/// The pods of a Job, sorted out (pure).
#[derive(Debug, Default)]
pub struct PodCounts {
    /// Pods neither finished nor being deleted.
    pub active: Vec<Arc<Pod>>,
    /// Active pods that are ready.
    pub ready: i32,
    /// Pods being deleted that have not finished.
    pub terminating: i32,
    /// Succeeded pods (never fewer than the status already says).
    pub succeeded: i32,
    /// Failed pods (never fewer than the status already says).
    pub failed: i32,
}

/// Counts `owned` pods against the Job's current status.
pub fn count_pods(job: &Job, owned: &[Arc<Pod>]) -> PodCounts {
    let status = job.status.clone().unwrap_or_default();
    let active: Vec<Arc<Pod>> = owned.iter().filter(|p| is_active(p)).cloned().collect();
    let phase_count =
        |phase: &str| owned.iter().filter(|p| podutil::phase(p) == phase).count() as i32;
    PodCounts {
        ready: active.iter().filter(|p| podutil::is_ready(p)).count() as i32,
        terminating: owned
            .iter()
            .filter(|p| podutil::is_terminating(p) && !is_terminal(p))
            .count() as i32,
        succeeded: phase_count("Succeeded").max(status.succeeded.unwrap_or(0)),
        failed: phase_count("Failed").max(status.failed.unwrap_or(0)),
        active,
    }
}

/// Why the Job must fail now, if it must (before any pod is created or deleted):
/// an interim `FailureTarget` already recorded, too many failures, or its deadline.
pub fn failure_due(
    job: &Job,
    counts: &PodCounts,
    owned: &[Arc<Pod>],
    start: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
) -> Option<Finish> {
    let status = job.status.as_ref();
    if let Some(c) = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == FAILURE_TARGET && c.status == "True")
    {
        return Some(failure(
            c.reason.as_deref().unwrap_or(""),
            c.message.as_deref().unwrap_or(""),
        ));
    }
    let spec = job.spec.as_ref()?;
    if counts.failed > spec.backoff_limit.unwrap_or(6) || past_backoff_limit_on_failure(job, owned)
    {
        return Some(failure(
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ));
    }
    if let (Some(ads), Some(start), false) = (
        spec.active_deadline_seconds,
        start,
        spec.suspend == Some(true),
    ) && now.duration_since(start) >= jiff::SignedDuration::from_secs(ads)
    {
        return Some(failure(
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        ));
    }
    None
}

/// How many active pods the Job wants (Kubernetes' `manageJob`).
pub fn wanted_active(job: &Job, succeeded: i32, active: i32) -> i32 {
    let spec = job.spec.as_ref();
    let parallelism = spec.and_then(|s| s.parallelism).unwrap_or(1).max(0);
    match spec.and_then(|s| s.completions) {
        None if succeeded > 0 => active,
        None => parallelism,
        Some(c) => (c - succeeded).clamp(0, parallelism),
    }
}

/// Whether the Job has all the successes it needs and no active pod.
pub fn complete(job: &Job, succeeded: i32, active: i32) -> bool {
    active == 0
        && match job.spec.as_ref().and_then(|s| s.completions) {
            None => succeeded > 0,
            Some(c) => succeeded >= c,
        }
}

/// The Job controller.
#[derive(Clone)]
pub struct JobController {
    client: Client,
    jobs: Store<Job>,
    pods: Store<Pod>,
    pod_control: PodControl,
    recorder: EventRecorder,
    clock: SharedClock,
    resync: Duration,
    queue: WorkQueue<String>,
}

/// How often every unfinished Job is looked at even without a change.
pub const RESYNC: Duration = Duration::from_secs(30);

impl JobController {
    /// A controller over these caches, reading time from `clock`.
    pub fn new(
        client: Client,
        jobs: Store<Job>,
        pods: Store<Pod>,
        recorder: EventRecorder,
        clock: SharedClock,
    ) -> Self {
        let recorder = recorder.with_component("job-controller");
        JobController {
            pod_control: PodControl::new(client.clone(), recorder.clone()),
            recorder,
            client,
            jobs,
            pods,
            clock,
            resync: RESYNC,
            queue: WorkQueue::new(),
        }
    }

    /// Looks at every unfinished Job this often (tests with a fake clock, whose back-off
    /// and deadline requeues follow real time, shorten it).
    pub fn resync_every(mut self, period: Duration) -> Self {
        self.resync = period;
        self
    }

    /// Watches the caches and runs `workers` reconcilers until `shutdown`.
    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        let jobs = self.jobs.clone();
        Controller::new("job", self.clone(), self.queue.clone(), &shutdown)
            .owns(&self.jobs, self.resync, |j| finished(j).is_none())
            .watches(&self.pods, move |s, q| match s {
                Seen::Object(pod) => {
                    if let Some(r) = controller_of(pod.metadata.owner_references.as_ref()) {
                        if r.kind == "Job" {
                            q.add(format!("{}/{}", pod.namespace(), r.name));
                        }
                        return;
                    }
                    // An orphan: any Job that might adopt it.
                    let labels = pod.metadata.labels.clone().unwrap_or_default();
                    for job in jobs.filter(|j| {
                        j.namespace() == pod.namespace()
                            && job_selector(j).is_some_and(|s| s.matches(&labels))
                    }) {
                        q.add(key_of(&*job));
                    }
                }
                Seen::All => jobs.list().iter().for_each(|j| q.add(key_of(&**j))),
            })
            .run(workers)
            .await;
    }

    async fn write_status(&self, job: &Job, status: JobStatus) -> Result<()> {
        if job.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let api: Api<Job> = Api::namespaced(self.client.clone(), job.namespace());
        let mut updated = job.clone();
        updated.status = Some(status);
        match api.replace_status(job.name(), &updated).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Error::api(format!("update status of job {}", key_of(job)))(
                e,
            )),
        }
    }

    /// Creates or deletes pods toward the wanted number; returns the active count after it
    /// and when to look again (the back-off).
    async fn manage(
        &self,
        key: &str,
        job: &Job,
        counts: &PodCounts,
        owned: &[Arc<Pod>],
        now: jiff::Timestamp,
    ) -> Result<(i32, Requeue)> {
        let active = counts.active.len() as i32;
        let spec = job.spec.as_ref();
        if spec.and_then(|s| s.suspend) == Some(true) {
            self.pod_control.delete(key, job, &counts.active).await?;
            return Ok((0, None));
        }
        let want = wanted_active(job, counts.succeeded, active);
        if active > want {
            let n = ((active - want) as usize).min(BURST_REPLICAS);
            let victims = crate::replication::pods_to_delete(&counts.active, n);
            self.pod_control.delete(key, job, &victims).await?;
            return Ok((active - n as i32, None));
        }
        let mut diff = want - active;
        if spec.and_then(|s| s.pod_replacement_policy.as_deref()) == Some("Failed") {
            diff -= counts.terminating;
        }
        if diff <= 0 {
            return Ok((active, None));
        }
        let wait = backoff_remaining(owned, now);
        if !wait.is_zero() {
            return Ok((active, Some(wait)));
        }
        let n = (diff as usize).min(BURST_REPLICAS);
        let template = spec.map(|s| s.template.clone()).unwrap_or_default();
        let pods: Vec<Pod> = (0..n)
            .map(|_| podcontrol::pod_from_template(&template, job, &pod_name(job.name())))
            .collect();
        self.pod_control.create(key, job, &pods).await?;
        Ok((active + n as i32, None))
    }
}

impl Reconciler for JobController {
    type Error = Error;

    /// Brings one Job to its desired state.
    #[tracing::instrument(skip(self), fields(controller = "job"))]
    async fn reconcile(&self, key: &str) -> Result<Requeue> {
        let (ns, name) = split_key(key);
        let Some(job) = self.jobs.get(ns, name) else {
            self.pod_control.expectations.forget(key);
            return Ok(None);
        };
        if finished(&job).is_some() {
            self.pod_control.expectations.forget(key);
            return Ok(None);
        }
        let now = self.clock.now();
        // Read the expectations before the pods, so a pod created meanwhile is not missed.
        let satisfied = self.pod_control.expectations.satisfied(key, &self.pods);
        let pods = self.pods.filter(|p| p.namespace() == ns);
        let owned = self
            .pod_control
            .adopt_and_release(&*job, &claim_pods(&job, &pods), ReleaseConflict::Fail)
            .await?;
        let counts = count_pods(&job, &owned);
        let spec = job.spec.clone().unwrap_or_default();
        let suspended = spec.suspend == Some(true);
        let prev = job.status.clone().unwrap_or_default();
        let mut status = JobStatus {
            conditions: prev.conditions.clone(),
            start_time: prev.start_time.clone(),
            completion_time: prev.completion_time.clone(),
            succeeded: Some(counts.succeeded),
            failed: Some(counts.failed),
            // Always empty: finished pods are counted from the pods (see the module doc).
            uncounted_terminated_pods: Some(Default::default()),
            ..prev.clone()
        };
        if status.start_time.is_none() && !suspended {
            status.start_time = Some(Time(now));
        }
        let start = status.start_time.as_ref().map(|t| t.0);
        let mut conditions = status.conditions.take().unwrap_or_default();
        let mut requeue: Requeue = None;
        let obj = object_ref(&*job);

        let mut active = counts.active.len() as i32;
        let mut terminating = counts.terminating;
        let mut ready = counts.ready;
        let mut finish = if has_condition(&job, SUCCESS_CRITERIA_MET) {
            Some(success())
        } else {
            failure_due(&job, &counts, &owned, start, now)
        };
        if finish.is_none()
            && let (Some(ads), Some(start), false) =
                (spec.active_deadline_seconds, start, suspended)
        {
            let left = jiff::SignedDuration::from_secs(ads) - now.duration_since(start);
            requeue = Duration::try_from(left).ok();
        }
        if finish.is_some() {
            // A finishing Job removes its active pods; it is finished once none is left.
            self.pod_control.delete(key, &*job, &counts.active).await?;
            terminating += active;
            active = 0;
            ready = 0;
            if !satisfied {
                requeue = Some(Duration::from_secs(1));
            }
        } else {
            if satisfied && job.metadata.deletion_timestamp.is_none() {
                let (a, wait) = self.manage(key, &job, &counts, &owned, now).await?;
                active = a;
                if wait.is_some() {
                    requeue = wait;
                }
                let reason_changed = if suspended {
                    ensure_condition(
                        &mut conditions,
                        SUSPENDED,
                        "True",
                        "JobSuspended",
                        "Job suspended",
                        now,
                    )
                    .then_some(("Suspended", "Job suspended"))
                } else {
                    let resumed = ensure_condition(
                        &mut conditions,
                        SUSPENDED,
                        "False",
                        "JobResumed",
                        "Job resumed",
                        now,
                    );
                    if resumed {
                        status.start_time = Some(Time(now));
                    }
                    resumed.then_some(("Resumed", "Job resumed"))
                };
                if let Some((reason, message)) = reason_changed {
                    self.recorder.record(&obj, NORMAL, reason, message).await;
                }
            }
            if complete(&job, counts.succeeded, active) {
                finish = Some(success());
            }
        }
        status.active = Some(active);
        status.ready = Some(ready);
        status.terminating = Some(terminating);
        let mut done = None;
        if let Some(f) = &finish {
            ensure_condition(
                &mut conditions,
                f.interim(),
                "True",
                &f.reason,
                &f.message,
                now,
            );
            if terminating == 0 {
                ensure_condition(
                    &mut conditions,
                    f.terminal,
                    "True",
                    &f.reason,
                    &f.message,
                    now,
                );
                if f.terminal == COMPLETE {
                    status.completion_time = Some(Time(now));
                }
                done = Some(f.clone());
            }
        }
        status.conditions = (!conditions.is_empty()).then_some(conditions);
        self.write_status(&job, status).await?;
        match done {
            Some(f) if f.terminal == COMPLETE => {
                self.recorder
                    .record(&obj, NORMAL, "Completed", "Job completed")
                    .await;
                self.pod_control.expectations.forget(key);
            }
            Some(f) => {
                self.recorder
                    .record(&obj, WARNING, &f.reason, &f.message)
                    .await;
                self.pod_control.expectations.forget(key);
            }
            None => {}
        }
        Ok(requeue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::merge;
    use serde_json::{Value, json};

    fn job(extra: Value) -> Job {
        let mut v = json!({
            "metadata": {"name": "pi", "namespace": "default", "uid": "job-uid"},
            "spec": {"completions": 3, "parallelism": 2, "backoffLimit": 2,
                     "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "job-uid"}},
                     "template": {"metadata": {"labels": {"batch.kubernetes.io/controller-uid": "job-uid",
                                                          "job-name": "pi"}},
                                  "spec": {"restartPolicy": "Never",
                                           "containers": [{"name": "c", "image": "busybox"}]}}}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).expect("job literal")
    }

    fn pod(name: &str, phase: &str, finished: &str) -> Arc<Pod> {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"batch.kubernetes.io/controller-uid": "job-uid", "job-name": "pi"},
                         "creationTimestamp": "2024-01-01T00:00:00Z",
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "pi",
                                              "uid": "job-uid", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": phase}
        });
        if !finished.is_empty() {
            merge(
                &mut v,
                json!({"status": {"containerStatuses": [{"name": "c", "image": "busybox",
                    "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 1, "finishedAt": finished}}}]}}),
            );
        }
        Arc::new(serde_json::from_value(v).expect("pod literal"))
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp literal")
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_up_to_six_minutes() {
        let d: Vec<u64> = (0..8).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(d, [0, 10, 20, 40, 80, 160, 320, 360]);
        assert_eq!(backoff_delay(30), MAX_POD_FAILURE_BACKOFF);
    }

    #[test]
    fn backoff_counts_failures_since_the_last_success_from_the_last_failure() {
        let pods = vec![
            pod("f1", "Failed", "2024-01-01T00:00:10Z"),
            pod("s1", "Succeeded", "2024-01-01T00:00:20Z"),
            pod("f2", "Failed", "2024-01-01T00:00:30Z"),
            pod("f3", "Failed", "2024-01-01T00:00:40Z"),
        ];
        // Two failures after the success: 20 s from the last one.
        assert_eq!(
            backoff_remaining(&pods, at("2024-01-01T00:00:45Z")),
            Duration::from_secs(15)
        );
        assert_eq!(
            backoff_remaining(&pods, at("2024-01-01T00:01:00Z")),
            Duration::ZERO
        );
        assert_eq!(
            backoff_remaining(&pods[..2], at("2024-01-01T00:00:21Z")),
            Duration::ZERO,
            "a success resets the back-off"
        );
    }

    #[test]
    fn counts_never_go_below_the_status_and_sort_pods() {
        let j = job(json!({"status": {"succeeded": 2, "failed": 0}}));
        let pods = vec![
            pod("a", "Running", ""),
            pod("b", "Succeeded", "2024-01-01T00:00:10Z"),
            pod("c", "Failed", "2024-01-01T00:00:10Z"),
        ];
        let c = count_pods(&j, &pods);
        assert_eq!(
            (c.active.len(), c.succeeded, c.failed, c.terminating),
            (1, 2, 1, 0)
        );
    }

    #[test]
    fn wanted_active_follows_completions_and_parallelism() {
        let j = job(json!({}));
        assert_eq!(wanted_active(&j, 0, 0), 2);
        assert_eq!(wanted_active(&j, 2, 0), 1, "only one completion left");
        assert_eq!(wanted_active(&j, 3, 0), 0);
        let work_queue = job(json!({"spec": {"completions": null, "parallelism": 3}}));
        assert_eq!(wanted_active(&work_queue, 0, 0), 3);
        assert_eq!(
            wanted_active(&work_queue, 1, 2),
            2,
            "after a success, no new pods"
        );
        assert!(complete(&work_queue, 1, 0) && !complete(&work_queue, 1, 1));
        assert!(complete(&j, 3, 0) && !complete(&j, 2, 0));
    }

    #[test]
    fn fails_past_the_backoff_limit_or_the_deadline() {
        let j = job(json!({"spec": {"activeDeadlineSeconds": 60}}));
        let pods: Vec<Arc<Pod>> = (0..3)
            .map(|i| pod(&format!("f{i}"), "Failed", "2024-01-01T00:00:10Z"))
            .collect();
        let now = at("2024-01-01T00:00:30Z");
        let start = Some(at("2024-01-01T00:00:00Z"));
        let c = count_pods(&j, &pods);
        assert_eq!(
            failure_due(&j, &c, &pods, start, now).map(|f| f.reason),
            Some("BackoffLimitExceeded".to_string()),
            "3 failures > backoffLimit 2"
        );
        let c = count_pods(&j, &pods[..2]);
        assert_eq!(failure_due(&j, &c, &pods[..2], start, now), None);
        let late = at("2024-01-01T00:01:00Z");
        assert_eq!(
            failure_due(&j, &c, &pods[..2], start, late).map(|f| f.reason),
            Some("DeadlineExceeded".to_string())
        );
    }

    #[test]
    fn on_failure_jobs_count_container_restarts() {
        let j = job(json!({"spec": {"template": {"spec": {"restartPolicy": "OnFailure"}}}}));
        let mut v = serde_json::to_value(&*pod("r", "Running", "")).expect("pod json");
        merge(
            &mut v,
            json!({"status": {"containerStatuses": [{"name": "c", "image": "busybox", "imageID": "",
                "ready": false, "restartCount": 2}]}}),
        );
        let restarted: Vec<Arc<Pod>> = vec![Arc::new(serde_json::from_value(v).expect("pod"))];
        assert!(past_backoff_limit_on_failure(&j, &restarted));
        let never = job(json!({}));
        assert!(!past_backoff_limit_on_failure(&never, &restarted));
    }

    #[test]
    fn conditions_are_appended_true_and_updated_in_place() {
        let now = at("2024-01-01T00:00:00Z");
        let mut list = Vec::new();
        assert!(!ensure_condition(
            &mut list,
            SUSPENDED,
            "False",
            "JobResumed",
            "Job resumed",
            now
        ));
        assert!(list.is_empty(), "a False condition is not appended");
        assert!(ensure_condition(
            &mut list,
            SUSPENDED,
            "True",
            "JobSuspended",
            "Job suspended",
            now
        ));
        assert!(!ensure_condition(
            &mut list,
            SUSPENDED,
            "True",
            "JobSuspended",
            "Job suspended",
            now
        ));
        assert!(ensure_condition(
            &mut list,
            SUSPENDED,
            "False",
            "JobResumed",
            "Job resumed",
            now
        ));
        assert_eq!((list.len(), list[0].status.as_str()), (1, "False"));
    }

    #[test]
    fn claims_only_pods_of_the_generated_selector() {
        let j = job(json!({}));
        let mut v = serde_json::to_value(&*pod("other", "Running", "")).expect("pod json");
        merge(
            &mut v,
            json!({"metadata": {"labels": {"batch.kubernetes.io/controller-uid": "x"},
                                "ownerReferences": null}}),
        );
        let pods = vec![
            pod("mine", "Succeeded", "2024-01-01T00:00:10Z"),
            Arc::new(serde_json::from_value(v).expect("pod")),
        ];
        let c = claim_pods(&j, &pods);
        assert_eq!(c.owned.len(), 1);
        assert!(c.adopt.is_empty() && c.release.is_empty());
    }
}
