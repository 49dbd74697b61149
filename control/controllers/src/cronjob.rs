//! The CronJob controller (Kubernetes' `cronjob_controllerv2`): creates a Job from
//! `spec.jobTemplate` at each time of `spec.schedule` (in `spec.timeZone`, else the
//! controller's own zone), keeps `status.active`, `lastScheduleTime` and
//! `lastSuccessfulTime`, and deletes finished Jobs beyond the history limits.
//!
//! - **Which time.** The most recent scheduled time after `status.lastScheduleTime` (else
//!   the CronJob's creation) and at or before now; earlier missed times are skipped, as in
//!   Kubernetes (more than 100 missed records `TooManyMissedTimes`). With
//!   `startingDeadlineSeconds`, nothing older than that is started (`MissSchedule`).
//! - **Its Job** is named `<cronjob>-<scheduled time in Unix minutes>` (so one time starts
//!   one Job, whichever controller instance gets there), carries the template's labels and
//!   annotations plus `batch.kubernetes.io/cronjob-scheduled-timestamp` (RFC 3339 in the
//!   CronJob's zone) and a controller ownerReference.
//! - **concurrencyPolicy**: `Allow` starts it regardless; `Forbid` skips the time while a
//!   Job is active (`JobAlreadyActive`); `Replace` deletes the active Jobs first.
//! - `suspend` stops new Jobs (running ones go on). Finished Jobs leave `status.active`
//!   (`SawCompletedJob`); the oldest finished Jobs beyond `successfulJobsHistoryLimit` /
//!   `failedJobsHistoryLimit` are deleted with their pods (Background propagation).
//!
//! Time comes from a [`Clock`](crate::clock::Clock), so tests can fake it; a sync is
//! requeued for the next scheduled time.

use std::sync::Arc;
use std::time::Duration;

use jiff::Zoned;
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use tokio_util::sync::CancellationToken;
use xkube_api::batch::{
    COMPLETE, CRONJOB_SCHEDULED_TIMESTAMP, Schedule, finish_time, finished, time_zone,
};
use xkube_client::{Api, Client, DeleteParams, Object, PropagationPolicy, Store};

use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::podcontrol::controller_ref;
use xkube_api::pod::controller_of;
use xkube_client::runtime::{
    Controller, EventRecorder, NORMAL, Reconciler, Requeue, Seen, WARNING, WorkQueue, key_of,
    object_ref, split_key,
};

/// How often every CronJob is looked at even without a change (the requeue for the next
/// scheduled time is what normally wakes it).
pub const RESYNC: Duration = Duration::from_secs(30);

/// The name of the Job for `scheduled`: `<cronjob>-<Unix minutes>`.
pub fn job_name(cronjob: &str, scheduled: jiff::Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// `t` as Go's `time.RFC3339` prints it (`Z` for UTC, else the offset).
pub fn rfc3339(t: &Zoned) -> String {
    let offset = t.offset();
    if offset.seconds() == 0 {
        t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        t.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

/// The most recent scheduled time to start (pure; Kubernetes' `mostRecentScheduleTime`):
/// after `status.lastScheduleTime` (else the creation time, and not before now minus
/// `startingDeadlineSeconds` when `with_deadline`), at or before `now`; with the number of
/// times missed since then (approximate, as Kubernetes counts them).
pub fn most_recent_schedule(
    cj: &CronJob,
    schedule: &Schedule,
    tz: &TimeZone,
    now: jiff::Timestamp,
    with_deadline: bool,
) -> (Option<Zoned>, i64) {
    let created = cj.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let last = cj
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .map(|t| t.0);
    let Some(mut earliest) = last.or(created) else {
        return (None, 0);
    };
    if with_deadline
        && let Some(d) = cj.spec.as_ref().and_then(|s| s.starting_deadline_seconds)
        && let Ok(deadline) = now.checked_sub(jiff::SignedDuration::from_secs(d))
        && deadline > earliest
    {
        earliest = deadline;
    }
    let earliest = earliest.to_zoned(tz.clone());
    let now = now.to_zoned(tz.clone());
    let Some(t1) = schedule.next_after(&earliest) else {
        return (None, 0);
    };
    if t1.timestamp() > now.timestamp() {
        return (None, 0);
    }
    let missed = match schedule.next_after(&t1) {
        Some(t2) if t2.timestamp() <= now.timestamp() => {
            let interval = (t2.timestamp().as_second() - t1.timestamp().as_second()).max(1);
            (now.timestamp().as_second() - t1.timestamp().as_second()) / interval + 1
        }
        _ => 1,
    };
    (schedule.last_between(&earliest, &now), missed)
}

/// The Job the CronJob starts for `scheduled` (Kubernetes' `getJobFromTemplate2`).
pub fn job_from_template(cj: &CronJob, scheduled: &Zoned) -> Job {
    let template = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(CRONJOB_SCHEDULED_TIMESTAMP.into(), rfc3339(scheduled));
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(cj.name(), scheduled.timestamp())),
            namespace: Some(cj.namespace().into()),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref(cj)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// A reference to `job` for `status.active`.
pub fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: Some(job.name().into()),
        namespace: Some(job.namespace().into()),
        uid: Some(job.uid().into()),
        resource_version: (!job.resource_version().is_empty())
            .then(|| job.resource_version().into()),
        ..ObjectReference::default()
    }
}

/// The finished Jobs to delete beyond the history limits: the oldest (by start time, then
/// name) successful and failed ones past `successfulJobsHistoryLimit` and
/// `failedJobsHistoryLimit`.
pub fn history_victims(cj: &CronJob, children: &[Arc<Job>]) -> Vec<Arc<Job>> {
    let spec = cj.spec.as_ref();
    let mut out = Vec::new();
    for (kind, limit) in [
        (COMPLETE, spec.and_then(|s| s.successful_jobs_history_limit)),
        (
            xkube_api::batch::FAILED,
            spec.and_then(|s| s.failed_jobs_history_limit),
        ),
    ] {
        let Some(limit) = limit else { continue };
        let mut done: Vec<Arc<Job>> = children
            .iter()
            .filter(|j| finished(j) == Some(kind) && j.metadata.deletion_timestamp.is_none())
            .cloned()
            .collect();
        let start = |j: &Job| {
            j.status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0)
        };
        // Jobs without a start time sort last, as Kubernetes' byJobStartTime.
        done.sort_by(|a, b| match (start(a), start(b)) {
            (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.name().cmp(b.name())),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.name().cmp(b.name()),
        });
        let excess = done.len().saturating_sub(limit.max(0) as usize);
        out.extend(done.into_iter().take(excess));
    }
    out
}

/// The CronJob controller.
#[derive(Clone)]
pub struct CronJobController {
    client: Client,
    cronjobs: Store<CronJob>,
    jobs: Store<Job>,
    recorder: EventRecorder,
    clock: SharedClock,
    resync: Duration,
    queue: WorkQueue<String>,
}

impl CronJobController {
    /// A controller over these caches, reading time from `clock`.
    pub fn new(
        client: Client,
        cronjobs: Store<CronJob>,
        jobs: Store<Job>,
        recorder: EventRecorder,
        clock: SharedClock,
    ) -> Self {
        CronJobController {
            client,
            cronjobs,
            jobs,
            recorder: recorder.with_component("cronjob-controller"),
            clock,
            resync: RESYNC,
            queue: WorkQueue::new(),
        }
    }

    /// Looks at every CronJob this often (tests with a fake clock, whose requeues follow
    /// real time, shorten it).
    pub fn resync_every(mut self, period: Duration) -> Self {
        self.resync = period;
        self
    }

    /// Watches the caches and runs `workers` reconcilers until `shutdown`.
    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        let cronjobs = self.cronjobs.clone();
        Controller::new("cronjob", self.clone(), self.queue.clone(), &shutdown)
            .owns(&self.cronjobs, self.resync, |_| true)
            .watches(&self.jobs, move |s, q| match s {
                Seen::Object(job) => {
                    if let Some(r) = controller_of(job.metadata.owner_references.as_ref())
                        && r.kind == "CronJob"
                    {
                        q.add(format!("{}/{}", job.namespace(), r.name));
                    }
                }
                Seen::All => cronjobs.list().iter().for_each(|c| q.add(key_of(&**c))),
            })
            .run(workers)
            .await;
    }

    async fn delete_job(&self, cj: &CronJob, job: &Job) -> Result<()> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), job.namespace());
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match api.delete(job.name(), &dp).await {
            Ok(_) => {
                self.recorder
                    .record(
                        &object_ref(cj),
                        NORMAL,
                        "SuccessfulDelete",
                        &format!("Deleted job {}", job.name()),
                    )
                    .await;
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Error::api(format!("delete job {}", key_of(job)))(e)),
        }
    }

    async fn write_status(&self, cj: &CronJob, status: CronJobStatus) -> Result<()> {
        if cj.status.clone().unwrap_or_default() == status {
            return Ok(());
        }
        let api: Api<CronJob> = Api::namespaced(self.client.clone(), cj.namespace());
        let mut updated = cj.clone();
        updated.status = Some(status);
        match api.replace_status(cj.name(), &updated).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Error::api(format!(
                "update status of cronjob {}",
                key_of(cj)
            ))(e)),
        }
    }

    /// Brings `status.active` in line with the Jobs (pure apart from the events and a GET of
    /// a listed Job the cache does not have).
    async fn sync_active(
        &self,
        cj: &CronJob,
        children: &[Arc<Job>],
        status: &mut CronJobStatus,
    ) -> Result<()> {
        let obj = object_ref(cj);
        let mut active = status.active.take().unwrap_or_default();
        for j in children {
            let listed = active.iter().any(|r| r.uid.as_deref() == Some(j.uid()));
            match finished(j) {
                None if !listed && j.metadata.deletion_timestamp.is_none() => {
                    active.push(job_ref(j))
                }
                Some(cond) => {
                    if listed {
                        active.retain(|r| r.uid.as_deref() != Some(j.uid()));
                        self.recorder
                            .record(
                                &obj,
                                NORMAL,
                                "SawCompletedJob",
                                &format!("Saw completed job: {}, condition: {cond}", j.name()),
                            )
                            .await;
                    }
                    if cond == COMPLETE
                        && let Some(done) = j
                            .status
                            .as_ref()
                            .and_then(|s| s.completion_time.as_ref())
                            .map(|t| t.0)
                            .or_else(|| finish_time(j))
                        && status
                            .last_successful_time
                            .as_ref()
                            .is_none_or(|t| t.0 < done)
                    {
                        status.last_successful_time = Some(Time(done));
                    }
                }
                None => {}
            }
        }
        // Listed Jobs the cache does not know: gone, unless the apiserver still has them.
        let mut kept = Vec::with_capacity(active.len());
        for r in active {
            let uid = r.uid.clone().unwrap_or_default();
            if children.iter().any(|j| j.uid() == uid) {
                kept.push(r);
                continue;
            }
            let name = r.name.clone().unwrap_or_default();
            let api: Api<Job> = Api::namespaced(self.client.clone(), cj.namespace());
            match api.get_opt(&name).await {
                Ok(Some(j)) if j.uid() == uid => kept.push(r),
                Ok(_) => {
                    self.recorder
                        .record(
                            &obj,
                            NORMAL,
                            "MissingJob",
                            &format!("Active job went missing: {name}"),
                        )
                        .await
                }
                Err(e) => return Err(Error::api(format!("get job {}/{name}", cj.namespace()))(e)),
            }
        }
        status.active = (!kept.is_empty()).then_some(kept);
        Ok(())
    }

    /// When to look at `cj` again: just after its next scheduled time.
    fn next_requeue(&self, schedule: &Schedule, tz: &TimeZone, now: jiff::Timestamp) -> Requeue {
        let next = schedule.next_after(&now.to_zoned(tz.clone()))?;
        let wait = Duration::try_from(next.timestamp().duration_since(now)).ok()?;
        Some(wait + Duration::from_millis(100))
    }
}

impl Reconciler for CronJobController {
    type Error = Error;

    /// Starts the Job of the most recent scheduled time, if it is due, and tidies up.
    #[tracing::instrument(skip(self), fields(controller = "cronjob"))]
    async fn reconcile(&self, key: &str) -> Result<Requeue> {
        let (ns, name) = split_key(key);
        let Some(cj) = self.cronjobs.get(ns, name) else {
            return Ok(None);
        };
        let children: Vec<Arc<Job>> = self.jobs.filter(|j| {
            j.namespace() == ns
                && controller_of(j.metadata.owner_references.as_ref())
                    .is_some_and(|r| r.uid == cj.uid())
        });
        let now = self.clock.now();
        let mut status = cj.status.clone().unwrap_or_default();
        self.sync_active(&cj, &children, &mut status).await?;
        let requeue = self.schedule(&cj, &children, &mut status, now).await?;
        // History: the oldest finished Jobs past the limits.
        for victim in history_victims(&cj, &children) {
            self.delete_job(&cj, &victim).await?;
            if let Some(a) = status.active.as_mut() {
                a.retain(|r| r.uid.as_deref() != Some(victim.uid()));
            }
        }
        self.write_status(&cj, status).await?;
        Ok(requeue)
    }
}

impl CronJobController {
    /// The scheduling half of a sync: starts (or skips) the due Job, updating `status`;
    /// returns when to look again.
    async fn schedule(
        &self,
        cj: &CronJob,
        children: &[Arc<Job>],
        status: &mut CronJobStatus,
        now: jiff::Timestamp,
    ) -> Result<Requeue> {
        let obj = object_ref(cj);
        let Some(spec) = cj.spec.as_ref() else {
            return Ok(None);
        };
        if cj.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let tz = match time_zone(spec.time_zone.as_deref()) {
            Ok(tz) => tz,
            Err(e) => {
                let zone = spec.time_zone.as_deref().unwrap_or("");
                self.recorder
                    .record(
                        &obj,
                        WARNING,
                        "UnknownTimeZone",
                        &format!("invalid timeZone: {zone:?}: {e}"),
                    )
                    .await;
                return Ok(None);
            }
        };
        if spec.suspend == Some(true) {
            return Ok(None);
        }
        let schedule = match Schedule::parse(&spec.schedule) {
            Ok(s) => s,
            Err(e) => {
                self.recorder
                    .record(
                        &obj,
                        WARNING,
                        "UnparseableSchedule",
                        &format!("unparseable schedule: {:?} : {e}", spec.schedule),
                    )
                    .await;
                return Ok(None);
            }
        };
        let requeue = self.next_requeue(&schedule, &tz, now);
        let (scheduled, missed) = most_recent_schedule(cj, &schedule, &tz, now, true);
        if missed > 100 {
            self.recorder
                .record(
                    &obj,
                    WARNING,
                    "TooManyMissedTimes",
                    &format!("too many missed start times: {missed}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"),
                )
                .await;
        }
        let Some(scheduled) = scheduled else {
            return Ok(requeue);
        };
        if let Some(d) = spec.starting_deadline_seconds
            && scheduled.timestamp() + jiff::SignedDuration::from_secs(d) < now
        {
            self.recorder
                .record(
                    &obj,
                    WARNING,
                    "MissSchedule",
                    &format!(
                        "Missed scheduled time to start a job: {}",
                        scheduled
                            .timestamp()
                            .strftime("%a, %d %b %Y %H:%M:%S +0000")
                    ),
                )
                .await;
            return Ok(requeue);
        }
        let name = job_name(cj.name(), scheduled.timestamp());
        let active = status.active.clone().unwrap_or_default();
        if children.iter().any(|j| j.name() == name)
            || active.iter().any(|r| r.name.as_deref() == Some(&name))
        {
            // This time's Job exists already.
            return Ok(requeue);
        }
        match spec.concurrency_policy.as_deref() {
            Some("Forbid") if !active.is_empty() => {
                self.recorder
                    .record(
                        &obj,
                        NORMAL,
                        "JobAlreadyActive",
                        "Not starting job because prior execution is running and concurrency policy is Forbid",
                    )
                    .await;
                return Ok(requeue);
            }
            Some("Replace") => {
                for r in &active {
                    if let Some(j) = children.iter().find(|j| Some(j.uid()) == r.uid.as_deref()) {
                        self.delete_job(cj, j).await?;
                    }
                }
                status.active = None;
            }
            _ => {}
        }
        let job = job_from_template(cj, &scheduled);
        let api: Api<Job> = Api::namespaced(self.client.clone(), cj.namespace());
        let created = match api.create(&job).await {
            Ok(j) => j,
            Err(e) if e.is_conflict() => match api.get_opt(&name).await {
                // Ours from an earlier sync whose status write was lost.
                Ok(Some(j))
                    if controller_of(j.metadata.owner_references.as_ref())
                        .is_some_and(|r| r.uid == cj.uid()) =>
                {
                    j
                }
                Ok(_) => return Ok(requeue),
                Err(e) => return Err(Error::api(format!("get job {}/{name}", cj.namespace()))(e)),
            },
            Err(e) => {
                self.recorder
                    .record(
                        &obj,
                        WARNING,
                        "FailedCreate",
                        &format!("Error creating job: {e}"),
                    )
                    .await;
                return Err(Error::api(format!("create job {}/{name}", cj.namespace()))(
                    e,
                ));
            }
        };
        self.recorder
            .record(
                &obj,
                NORMAL,
                "SuccessfulCreate",
                &format!("Created job {}", created.name()),
            )
            .await;
        status
            .active
            .get_or_insert_with(Vec::new)
            .push(job_ref(&created));
        status.last_schedule_time = Some(Time(scheduled.timestamp()));
        Ok(requeue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::merge;
    use serde_json::{Value, json};

    fn cron_job(extra: Value) -> CronJob {
        let mut v = json!({
            "metadata": {"name": "hello", "namespace": "default", "uid": "cj-uid",
                         "creationTimestamp": "2024-03-01T10:00:30Z"},
            "spec": {"schedule": "* * * * *", "concurrencyPolicy": "Allow",
                     "successfulJobsHistoryLimit": 2, "failedJobsHistoryLimit": 1,
                     "jobTemplate": {"metadata": {"labels": {"team": "a"}},
                                     "spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                                         "containers": [{"name": "c", "image": "busybox"}]}}}}}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).expect("cronjob literal")
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp literal")
    }

    fn due(cj: &CronJob, now: &str) -> (Option<String>, i64) {
        let spec = cj.spec.as_ref().expect("spec");
        let schedule = Schedule::parse(&spec.schedule).expect("schedule");
        let (t, missed) = most_recent_schedule(cj, &schedule, &TimeZone::UTC, at(now), true);
        (t.map(|t| t.timestamp().to_string()), missed)
    }

    #[test]
    fn the_most_recent_unmet_time_after_creation_or_the_last_schedule() {
        let cj = cron_job(json!({}));
        assert_eq!(due(&cj, "2024-03-01T10:00:50Z"), (None, 0));
        assert_eq!(
            due(&cj, "2024-03-01T10:01:05Z"),
            (Some("2024-03-01T10:01:00Z".into()), 1)
        );
        // Several missed: only the latest starts.
        assert_eq!(
            due(&cj, "2024-03-01T10:05:05Z"),
            (Some("2024-03-01T10:05:00Z".into()), 5)
        );
        let scheduled = cron_job(json!({"status": {"lastScheduleTime": "2024-03-01T10:05:00Z"}}));
        assert_eq!(due(&scheduled, "2024-03-01T10:05:30Z"), (None, 0));
        // A starting deadline keeps old times from starting.
        let strict = cron_job(json!({"spec": {"startingDeadlineSeconds": 10}}));
        assert_eq!(due(&strict, "2024-03-01T10:01:20Z"), (None, 0));
        assert_eq!(
            due(&strict, "2024-03-01T10:01:05Z"),
            (Some("2024-03-01T10:01:00Z".into()), 1)
        );
    }

    #[test]
    fn jobs_are_named_by_scheduled_minute_and_annotated() {
        let cj = cron_job(json!({}));
        let t: Zoned = "2024-03-01T10:01:00+00:00[UTC]".parse().expect("zoned");
        let j = job_from_template(&cj, &t);
        assert_eq!(j.metadata.name.as_deref(), Some("hello-28488121"));
        assert_eq!(28488121 * 60, t.timestamp().as_second());
        assert_eq!(
            j.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CRONJOB_SCHEDULED_TIMESTAMP))
                .map(String::as_str),
            Some("2024-03-01T10:01:00Z")
        );
        assert_eq!(
            j.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("team"))
                .map(String::as_str),
            Some("a")
        );
        let owner = controller_of(j.metadata.owner_references.as_ref()).expect("owner");
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("CronJob", "cj-uid")
        );
        let ny: Zoned = t.with_time_zone(TimeZone::get("America/New_York").expect("zone"));
        assert_eq!(rfc3339(&ny), "2024-03-01T05:01:00-05:00");
    }

    fn finished_job(name: &str, cond: &str, start: &str) -> Arc<Job> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": name},
                "spec": {"template": {}},
                "status": {"startTime": start,
                           "conditions": [{"type": cond, "status": "True"}]}
            }))
            .expect("job literal"),
        )
    }

    #[test]
    fn history_limits_delete_the_oldest_finished_jobs() {
        let cj = cron_job(json!({}));
        let jobs = vec![
            finished_job("s3", "Complete", "2024-03-01T10:03:00Z"),
            finished_job("s1", "Complete", "2024-03-01T10:01:00Z"),
            finished_job("s2", "Complete", "2024-03-01T10:02:00Z"),
            finished_job("f1", "Failed", "2024-03-01T10:01:30Z"),
            finished_job("f2", "Failed", "2024-03-01T10:02:30Z"),
        ];
        let names: Vec<String> = history_victims(&cj, &jobs)
            .iter()
            .map(|j| j.name().to_string())
            .collect();
        assert_eq!(names, ["s1", "f1"]);
    }
}
