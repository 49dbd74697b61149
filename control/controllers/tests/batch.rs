//! Jobs and CronJobs against an in-process apiserver, with no kubelet: the test moves pods
//! to Succeeded or Failed through `pods/status` itself. The Job and CronJob controllers run
//! on a fake clock the test advances (back-offs and schedules without waiting).

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event, Pod};
use serde_json::json;
use support::{Cluster, eventually};
use xkube_client::runtime::{EventRecorder, reflect};
use xkube_client::{Api, ListParams, Object, Patch};
use xkube_controllers::clock::{Clock, FakeClock};
use xkube_controllers::cronjob::CronJobController;
use xkube_controllers::job::JobController;

/// A control plane whose Job and CronJob controllers read `clock`.
async fn start(clock: &FakeClock) -> Cluster {
    let c = Cluster::start(|o| {
        o.controllers = vec!["*".into(), "-job".into(), "-cronjob".into()];
    })
    .await;
    let client = c.client.clone();
    let sd = &c.shutdown;
    let recorder = EventRecorder::new(client.clone(), "controller-manager");
    let jobs = reflect::<Job>(&client, sd);
    let pods = reflect::<Pod>(&client, sd);
    let jc = JobController::new(
        client.clone(),
        jobs.clone(),
        pods,
        recorder.clone(),
        Arc::new(clock.clone()),
    )
    .resync_every(Duration::from_millis(200));
    tokio::spawn(jc.run(2, sd.clone()));
    let cc = CronJobController::new(
        client.clone(),
        reflect::<CronJob>(&client, sd),
        jobs,
        recorder,
        Arc::new(clock.clone()),
    )
    .resync_every(Duration::from_millis(200));
    tokio::spawn(cc.run(2, sd.clone()));
    c
}

fn job_json(name: &str, spec: serde_json::Value) -> Job {
    let mut v = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
                 "containers": [{"name": "c", "image": "busybox", "command": ["true"]}]}}}
    });
    for (k, val) in spec.as_object().expect("spec object") {
        v["spec"][k] = val.clone();
    }
    serde_json::from_value(v).expect("job literal")
}

/// The Job's pods (by its `job-name` label), with whether each is active.
async fn job_pods(c: &Cluster, job: &str) -> Vec<Pod> {
    c.list_pods("default", &format!("job-name={job}")).await
}

fn active(p: &Pod) -> bool {
    xkube_api::pod::is_active(p)
}

/// Moves a pod to `phase` with its container terminated at `finished`.
async fn finish(c: &Cluster, pod: &str, phase: &str, finished: jiff::Timestamp) {
    let code = if phase == "Succeeded" { 0 } else { 1 };
    let at = xkube_api::meta::format_time(finished);
    c.pods("default")
        .patch_status(
            pod,
            &Patch::Merge(json!({"status": {"phase": phase, "containerStatuses": [{
                "name": "c", "image": "busybox", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": code, "startedAt": at, "finishedAt": at}}}]}})),
        )
        .await
        .expect("pod status patched");
}

fn condition<'a>(job: &'a Job, ty: &str) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == ty && c.status == "True"))
}

async fn events_for(c: &Cluster, name: &str) -> Vec<(String, String)> {
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_3_parallelism_2_completes_with_never_more_than_2_active() {
    let clock = FakeClock::new(jiff::Timestamp::now());
    let c = start(&clock).await;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    jobs.create(&job_json("pi", json!({"completions": 3, "parallelism": 2})))
        .await
        .expect("job created");

    // The server generated the selector and the labels.
    let job = jobs.get("pi").await.expect("job");
    let uid = job.uid().to_string();
    let spec = job.spec.clone().expect("spec");
    assert_eq!(
        spec.selector.and_then(|s| s.match_labels),
        Some(
            [(
                "batch.kubernetes.io/controller-uid".to_string(),
                uid.clone()
            )]
            .into()
        )
    );
    assert_eq!(
        (spec.backoff_limit, spec.manual_selector),
        (Some(6), Some(false))
    );

    // Two pods start, and no third while they run.
    eventually("two active pods", || async {
        (job_pods(&c, "pi")
            .await
            .iter()
            .filter(|p| active(p))
            .count()
            == 2)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(job_pods(&c, "pi").await.len(), 2, "parallelism 2 exceeded");

    let mut seen = BTreeSet::new();
    let mut max_active = 0;
    let deadline = tokio::time::Instant::now() + support::DEADLINE;
    loop {
        let job = jobs.get("pi").await.expect("job");
        if condition(&job, "Complete").is_some() {
            break;
        }
        let pods = job_pods(&c, "pi").await;
        let running: Vec<&Pod> = pods.iter().filter(|p| active(p)).collect();
        max_active = max_active.max(running.len());
        for p in &pods {
            if seen.insert(p.name().to_string()) {
                let labels = p.metadata.labels.clone().unwrap_or_default();
                assert_eq!(labels.get("controller-uid"), Some(&uid), "{labels:?}");
                assert_eq!(
                    labels
                        .get("batch.kubernetes.io/job-name")
                        .map(String::as_str),
                    Some("pi")
                );
                let suffix = p.name().strip_prefix("pi-").expect("named after the job");
                assert_eq!(suffix.len(), 5, "{}", p.name());
                let owner = xkube_api::pod::controller_of(p.metadata.owner_references.as_ref())
                    .expect("controller ref");
                assert_eq!(
                    (owner.kind.as_str(), owner.uid.as_str()),
                    ("Job", uid.as_str())
                );
            }
        }
        // Finish one active pod at a time.
        if let Some(p) = running.first() {
            finish(&c, p.name(), "Succeeded", clock.now()).await;
        }
        assert!(seen.len() <= 3, "more pods than completions: {seen:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the job to complete"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        max_active, 2,
        "parallelism 2 was reached and never exceeded"
    );
    assert_eq!(seen.len(), 3, "exactly completions pods ran");
    let job = jobs.get("pi").await.expect("job");
    let st = job.status.clone().expect("status");
    assert_eq!(
        (st.succeeded, st.failed, st.active),
        (Some(3), Some(0), Some(0))
    );
    assert!(st.completion_time.is_some() && st.start_time.is_some());
    assert!(condition(&job, "SuccessCriteriaMet").is_some());
    assert_eq!(
        condition(&job, "Complete")
            .and_then(|c| c.reason.clone())
            .as_deref(),
        Some("CompletionsReached")
    );
    let reasons: Vec<String> = eventually("Completed event", || async {
        let evs = events_for(&c, "pi").await;
        evs.iter()
            .any(|(r, _)| r == "Completed")
            .then_some(evs.into_iter().map(|(r, _)| r).collect())
    })
    .await;
    assert_eq!(
        reasons.iter().filter(|r| *r == "SuccessfulCreate").count(),
        3,
        "{reasons:?}"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_pods_back_off_then_the_job_fails_past_its_backoff_limit() {
    let clock = FakeClock::new(jiff::Timestamp::now());
    let c = start(&clock).await;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    jobs.create(&job_json("flaky", json!({"backoffLimit": 2})))
        .await
        .expect("job created");

    let mut failed = BTreeSet::new();
    for attempt in 1..=3 {
        let pod = eventually(&format!("pod {attempt}"), || async {
            job_pods(&c, "flaky")
                .await
                .into_iter()
                .find(|p| active(p) && !failed.contains(p.name()))
        })
        .await;
        assert_eq!(
            job_pods(&c, "flaky")
                .await
                .iter()
                .filter(|p| active(p))
                .count(),
            1,
            "one pod at a time"
        );
        finish(&c, pod.name(), "Failed", clock.now()).await;
        failed.insert(pod.name().to_string());
        if attempt == 3 {
            break;
        }
        // The controller saw the failure ...
        eventually("failure counted", || async {
            let j = jobs.get("flaky").await.expect("job");
            (j.status.and_then(|s| s.failed) == Some(attempt)).then_some(())
        })
        .await;
        // ... and, on the fake clock, the back-off (10 s, then 20 s) holds the next pod
        // back for as long as the clock stands still (several resyncs of 200 ms).
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(
            job_pods(&c, "flaky").await.iter().all(|p| !active(p)),
            "a new pod started during the back-off after failure {attempt}"
        );
        clock.advance(Duration::from_secs(10 << (attempt - 1)) + Duration::from_secs(1));
    }
    let job = eventually("Failed condition", || async {
        let j = jobs.get("flaky").await.expect("job");
        condition(&j, "Failed").is_some().then_some(j)
    })
    .await;
    let failed_cond = condition(&job, "Failed").expect("failed");
    assert_eq!(failed_cond.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert!(condition(&job, "FailureTarget").is_some());
    assert!(condition(&job, "Complete").is_none());
    let st = job.status.clone().expect("status");
    assert_eq!(
        (st.failed, st.succeeded, st.active),
        (Some(3), Some(0), Some(0))
    );
    assert_eq!(
        job_pods(&c, "flaky").await.len(),
        3,
        "backoffLimit 2: three tries in all"
    );
    eventually("BackoffLimitExceeded event", || async {
        events_for(&c, "flaky")
            .await
            .iter()
            .any(|(r, m)| {
                r == "BackoffLimitExceeded" && m == "Job has reached the specified backoff limit"
            })
            .then_some(())
    })
    .await;
    c.stop().await;
}

fn cron_json(name: &str, policy: &str, successful_limit: i32) -> CronJob {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {"schedule": "* * * * *", "concurrencyPolicy": policy,
                 "successfulJobsHistoryLimit": successful_limit,
                 "jobTemplate": {"metadata": {"labels": {"cron": name}},
                                 "spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                                     "containers": [{"name": "c", "image": "busybox"}]}}}}}
    }))
    .expect("cronjob literal")
}

/// Jobs of `cronjob`, oldest first.
async fn cron_jobs(c: &Cluster, cronjob: &str) -> Vec<Job> {
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    let mut v: Vec<Job> = jobs
        .list(&ListParams::default().labels(&format!("cron={cronjob}")))
        .await
        .expect("jobs")
        .items
        .into_iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .collect();
    v.sort_by(|a, b| a.name().cmp(b.name()));
    v
}

/// Moves the fake clock to 5 s past the next minute.
fn next_minute(clock: &FakeClock) -> jiff::Timestamp {
    let now = clock.now().as_second();
    let minute = (now.div_euclid(60) + 1) * 60;
    let t = jiff::Timestamp::from_second(minute + 5).expect("timestamp");
    clock.set(t);
    jiff::Timestamp::from_second(minute).expect("timestamp")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_job_every_minute_creates_jobs_and_keeps_its_history() {
    let clock = FakeClock::new(jiff::Timestamp::now());
    let c = start(&clock).await;
    let cjs: Api<CronJob> = Api::namespaced(c.client.clone(), "default");
    cjs.create(&cron_json("tick", "Allow", 1))
        .await
        .expect("cronjob created");
    let cj = cjs.get("tick").await.expect("cronjob");
    let spec = cj.spec.clone().expect("spec");
    assert_eq!(
        (spec.suspend, spec.failed_jobs_history_limit),
        (Some(false), Some(1))
    );

    // Nothing before the first minute boundary.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(cron_jobs(&c, "tick").await.is_empty());

    let mut names = Vec::new();
    for round in 0..3 {
        let minute = next_minute(&clock);
        let want = format!("tick-{}", minute.as_second() / 60);
        let job = eventually(&format!("job {want}"), || async {
            cron_jobs(&c, "tick")
                .await
                .into_iter()
                .find(|j| j.name() == want)
        })
        .await;
        let ann = job.metadata.annotations.clone().unwrap_or_default();
        let scheduled = ann
            .get("batch.kubernetes.io/cronjob-scheduled-timestamp")
            .expect("scheduled timestamp annotation");
        assert_eq!(scheduled.parse::<jiff::Timestamp>().ok(), Some(minute));
        let owner = xkube_api::pod::controller_of(job.metadata.owner_references.as_ref())
            .expect("controller ref");
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("CronJob", cj.uid())
        );
        let st = eventually("cronjob status", || async {
            let st = cjs
                .get("tick")
                .await
                .expect("cronjob")
                .status
                .unwrap_or_default();
            (st.last_schedule_time.as_ref().map(|t| t.0) == Some(minute)).then_some(st)
        })
        .await;
        let listed: Vec<String> = st
            .active
            .iter()
            .flatten()
            .filter_map(|r| r.name.clone())
            .collect();
        assert!(listed.contains(&want), "{listed:?}");
        // Its pod succeeds, so the Job completes and leaves the active list.
        let pod = eventually("the job's pod", || async {
            job_pods(&c, &want).await.into_iter().find(active)
        })
        .await;
        finish(&c, pod.name(), "Succeeded", clock.now()).await;
        eventually("job left the active list", || async {
            let st = cjs
                .get("tick")
                .await
                .expect("cronjob")
                .status
                .unwrap_or_default();
            (st.active.is_none() && st.last_successful_time.is_some()).then_some(())
        })
        .await;
        names.push(want);
        // successfulJobsHistoryLimit 1: only the latest finished Job stays.
        let left = eventually("history limit applied", || async {
            let left: Vec<String> = cron_jobs(&c, "tick")
                .await
                .iter()
                .map(|j| j.name().to_string())
                .collect();
            (left.len() == 1).then_some(left)
        })
        .await;
        assert_eq!(left, [names[round].clone()]);
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_skips_while_a_job_runs_and_replace_swaps_it() {
    let clock = FakeClock::new(jiff::Timestamp::now());
    let c = start(&clock).await;
    let cjs: Api<CronJob> = Api::namespaced(c.client.clone(), "default");
    cjs.create(&cron_json("solo", "Forbid", 3))
        .await
        .expect("cronjob created");
    cjs.create(&cron_json("swap", "Replace", 3))
        .await
        .expect("cronjob created");

    let first = next_minute(&clock);
    for cj in ["solo", "swap"] {
        eventually(&format!("first job of {cj}"), || async {
            (cron_jobs(&c, cj).await.len() == 1).then_some(())
        })
        .await;
    }
    // The first Jobs keep running (their pods stay Pending); the next minute comes.
    let second = next_minute(&clock);
    eventually("JobAlreadyActive", || async {
        events_for(&c, "solo")
            .await
            .iter()
            .any(|(r, _)| r == "JobAlreadyActive")
            .then_some(())
    })
    .await;
    let solo: Vec<String> = cron_jobs(&c, "solo")
        .await
        .iter()
        .map(|j| j.name().to_string())
        .collect();
    assert_eq!(
        solo,
        [format!("solo-{}", first.as_second() / 60)],
        "Forbid started nothing new"
    );

    let swapped = eventually("Replace swapped the job", || async {
        let names: Vec<String> = cron_jobs(&c, "swap")
            .await
            .iter()
            .map(|j| j.name().to_string())
            .collect();
        (names == [format!("swap-{}", second.as_second() / 60)]).then_some(names)
    })
    .await;
    // The status follows the swap in a later write of the controller.
    eventually("status.active names the new job", || async {
        let st = cjs
            .get("swap")
            .await
            .expect("cronjob")
            .status
            .unwrap_or_default();
        let active: Vec<String> = st
            .active
            .iter()
            .flatten()
            .filter_map(|r| r.name.clone())
            .collect();
        (active == swapped).then_some(())
    })
    .await;
    assert!(
        events_for(&c, "swap")
            .await
            .iter()
            .any(|(r, m)| r == "SuccessfulDelete"
                && *m == format!("Deleted job swap-{}", first.as_second() / 60)),
        "Replace deleted the running job"
    );
    c.stop().await;
}
