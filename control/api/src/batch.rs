//! batch/v1 Job and CronJob: Kubernetes' defaults (with the Job's generated selector),
//! validation, Table columns, and cron schedules.
//!
//! **The generated selector.** Kubernetes' Job strategy gives a Job that does not ask for a
//! manual selector the selector `batch.kubernetes.io/controller-uid=<uid>` and the labels
//! `batch.kubernetes.io/controller-uid`, `controller-uid`, `batch.kubernetes.io/job-name` and
//! `job-name` on its pod template, before validation. Our apiserver sets the uid before it
//! defaults and validates, so [`default_job`] does it there (only when the Job has a uid and
//! no selector: a create); validation then checks it as Kubernetes' does.
//!
//! **Schedules.** [`Schedule`] parses what Kubernetes' `cron.ParseStandard` takes: five
//! fields (minute, hour, day of month, month, day of week; names like `MON`, `JAN`; a day
//! matches when either restricted day field does, Vixie cron's rule), the descriptors
//! `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`, and
//! `@every <duration>`.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Zoned;
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Value, json};

use crate::table::{
    AGE, Col, NAME, age, col, format_label_selector, human_duration, template_cols,
};
use crate::validation::{
    ErrorList, FieldError, go_label_selector, go_map, label_value, qualified_name,
    validate_label_selector, validate_meta, validate_pod_spec,
};
use crate::{defaults, meta};

/// The label (and selector key) holding the uid of a pod's Job.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// The unprefixed uid label Kubernetes still puts on Job pods.
pub const LEGACY_CONTROLLER_UID_LABEL: &str = "controller-uid";
/// The label holding the name of a pod's Job.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// The unprefixed name label Kubernetes still puts on Job pods.
pub const LEGACY_JOB_NAME_LABEL: &str = "job-name";
/// The annotation of a CronJob's Job with the time it was scheduled for (RFC 3339, in the
/// CronJob's time zone).
pub const CRONJOB_SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// Job condition types.
pub const COMPLETE: &str = "Complete";
/// The Job failed (terminal).
pub const FAILED: &str = "Failed";
/// The Job met its success criteria; `Complete` follows once no pod is terminating.
pub const SUCCESS_CRITERIA_MET: &str = "SuccessCriteriaMet";
/// The Job is failing; `Failed` follows once no pod is terminating.
pub const FAILURE_TARGET: &str = "FailureTarget";
/// The Job is suspended.
pub const SUSPENDED: &str = "Suspended";

const RESTART_POLICIES: &[&str] = &["OnFailure", "Never"];
const COMPLETION_MODES: &[&str] = &["NonIndexed", "Indexed"];
const CONCURRENCY_POLICIES: &[&str] = &["Allow", "Forbid", "Replace"];

// ---------------------------------------------------------------------------------------------
// Defaults.

/// Job defaults (batch/v1 `SetDefaults_Job`): completions and parallelism 1 when both are
/// unset (parallelism 1 when only it is), backoffLimit 6, completionMode NonIndexed, suspend
/// and manualSelector false, podReplacementPolicy TerminatingOrFailed (Failed with a pod
/// failure policy), the template's pod spec defaults; the generated selector and labels when
/// the Job has a uid and no selector; and the Job's labels from its template's when it has
/// none.
pub fn default_job(job: &mut Job) {
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let Some(spec) = job.spec.as_mut() else {
        return;
    };
    default_job_spec(spec);
    if spec.manual_selector != Some(true) && spec.selector.is_none() && !uid.is_empty() {
        generate_selector(spec, &uid, &name);
    }
    spec.manual_selector.get_or_insert(false);
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone());
    if let Some(labels) = template_labels
        && job.metadata.labels.as_ref().is_none_or(|l| l.is_empty())
    {
        job.metadata.labels = Some(labels);
    }
}

fn default_job_spec(spec: &mut JobSpec) {
    if spec.completions.is_none() && spec.parallelism.is_none() {
        spec.completions = Some(1);
    }
    spec.parallelism.get_or_insert(1);
    spec.backoff_limit
        .get_or_insert(if spec.backoff_limit_per_index.is_some() {
            i32::MAX
        } else {
            6
        });
    spec.completion_mode
        .get_or_insert_with(|| "NonIndexed".to_string());
    spec.suspend.get_or_insert(false);
    let replacement = if spec.pod_failure_policy.is_some() {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    spec.pod_replacement_policy
        .get_or_insert_with(|| replacement.to_string());
    if let Some(pod_spec) = spec.template.spec.as_mut() {
        defaults::default_pod_spec(pod_spec);
    }
}

/// Kubernetes' `generateSelector`: the uid and name labels on the template (labels the user
/// set are kept; validation rejects wrong ones) and the uid in the selector.
fn generate_selector(spec: &mut JobSpec, uid: &str, name: &str) {
    let labels = spec
        .template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(BTreeMap::new);
    for key in [LEGACY_JOB_NAME_LABEL, JOB_NAME_LABEL] {
        labels.entry(key.into()).or_insert_with(|| name.into());
    }
    for key in [LEGACY_CONTROLLER_UID_LABEL, CONTROLLER_UID_LABEL] {
        labels.entry(key.into()).or_insert_with(|| uid.into());
    }
    spec.selector
        .get_or_insert_with(LabelSelector::default)
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .entry(CONTROLLER_UID_LABEL.into())
        .or_insert_with(|| uid.into());
}

/// CronJob defaults (batch/v1 `SetDefaults_CronJob`): concurrencyPolicy Allow, suspend
/// false, successfulJobsHistoryLimit 3, failedJobsHistoryLimit 1, and the job template's pod
/// spec defaults.
pub fn default_cron_job(cj: &mut CronJob) {
    let Some(spec) = cj.spec.as_mut() else {
        return;
    };
    if spec.concurrency_policy.as_deref().is_none_or(str::is_empty) {
        spec.concurrency_policy = Some("Allow".into());
    }
    spec.suspend.get_or_insert(false);
    spec.successful_jobs_history_limit.get_or_insert(3);
    spec.failed_jobs_history_limit.get_or_insert(1);
    if let Some(pod_spec) = spec
        .job_template
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
    {
        defaults::default_pod_spec(pod_spec);
    }
}

// ---------------------------------------------------------------------------------------------
// Validation.

fn non_negative<T: Into<Value> + PartialOrd + Default + Copy>(
    v: Option<T>,
    path: &str,
    errs: &mut ErrorList,
) {
    if let Some(n) = v
        && n < T::default()
    {
        errs.push(FieldError::invalid(
            path,
            n,
            "must be greater than or equal to 0",
        ));
    }
}

fn template_labels(t: &PodTemplateSpec) -> BTreeMap<String, String> {
    t.metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// Kubernetes' `validateJobSpec` (what a Job and a CronJob's job template share): counts,
/// completion mode, and a pod template with restartPolicy OnFailure or Never.
fn validate_job_spec(spec: &JobSpec, path: &str, errs: &mut ErrorList) {
    non_negative(spec.parallelism, &format!("{path}.parallelism"), errs);
    non_negative(spec.completions, &format!("{path}.completions"), errs);
    non_negative(
        spec.active_deadline_seconds,
        &format!("{path}.activeDeadlineSeconds"),
        errs,
    );
    non_negative(spec.backoff_limit, &format!("{path}.backoffLimit"), errs);
    non_negative(
        spec.ttl_seconds_after_finished,
        &format!("{path}.ttlSecondsAfterFinished"),
        errs,
    );
    if let Some(mode) = spec.completion_mode.as_deref() {
        if !COMPLETION_MODES.contains(&mode) {
            errs.push(FieldError::not_supported(
                format!("{path}.completionMode"),
                mode,
                COMPLETION_MODES,
            ));
        } else if mode == "Indexed" && spec.completions.is_none() {
            errs.push(FieldError::required(
                format!("{path}.completions"),
                "when completion mode is Indexed",
            ));
        }
    }
    let tpath = format!("{path}.template");
    for (k, v) in template_labels(&spec.template) {
        let lpath = format!("{tpath}.metadata.labels");
        for m in qualified_name(&k) {
            errs.push(FieldError::invalid(&lpath, k.as_str(), m));
        }
        for m in label_value(&v) {
            errs.push(FieldError::invalid(&lpath, v.as_str(), m));
        }
    }
    match &spec.template.spec {
        Some(pod_spec) => {
            errs.extend(validate_pod_spec(pod_spec, &format!("{tpath}.spec")));
            let rp = pod_spec.restart_policy.as_deref().unwrap_or("");
            if !RESTART_POLICIES.contains(&rp) {
                errs.push(FieldError::not_supported(
                    format!("{tpath}.spec.restartPolicy"),
                    rp,
                    RESTART_POLICIES,
                ));
            }
        }
        None => errs.push(FieldError::required(format!("{tpath}.spec"), "")),
    }
}

/// Validates a Job (batch/v1 `ValidateJob`): metadata, the generated selector (unless
/// `manualSelector`), a selector that matches the template's labels, and the spec.
pub fn validate_job(job: &Job) -> ErrorList {
    let mut errs = validate_meta(&job.metadata, "Job", true, "metadata.");
    let Some(spec) = &job.spec else {
        errs.push(FieldError::required("spec", ""));
        return errs;
    };
    if spec.manual_selector != Some(true)
        && let Some(sel) = &spec.selector
    {
        let uid = job.metadata.uid.as_deref().unwrap_or("");
        if uid.is_empty() {
            errs.push(FieldError::required("metadata.uid", ""));
        }
        let name = job.metadata.name.as_deref().unwrap_or("");
        let labels = template_labels(&spec.template);
        for (key, want) in [
            (LEGACY_CONTROLLER_UID_LABEL, uid),
            (JOB_NAME_LABEL, name),
            (LEGACY_JOB_NAME_LABEL, name),
            (CONTROLLER_UID_LABEL, uid),
        ] {
            let path = format!("spec.template.metadata.labels[{key}]");
            match labels.get(key) {
                None => errs.push(FieldError::required(path, "")),
                Some(v) if v != want => errs.push(FieldError::invalid(
                    path,
                    v.as_str(),
                    format!("must be '{want}'"),
                )),
                Some(_) => {}
            }
        }
        let expected = BTreeMap::from([(CONTROLLER_UID_LABEL.to_string(), uid.to_string())]);
        let generated = crate::selector::LabelSelector::from_meta(sel)
            .is_ok_and(|s| !s.is_empty() && s.matches(&expected));
        if !generated {
            errs.push(FieldError::invalid_raw(
                "spec.selector",
                go_label_selector(sel),
                "`selector` not auto-generated",
            ));
        }
    }
    match &spec.selector {
        None => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => {
            validate_label_selector(sel, "spec.selector", &mut errs);
            let labels = template_labels(&spec.template);
            let matches =
                crate::selector::LabelSelector::from_meta(sel).is_ok_and(|s| s.matches(&labels));
            if !matches {
                errs.push(FieldError::invalid_raw(
                    "spec.template.metadata.labels",
                    go_map(&labels),
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
    validate_job_spec(spec, "spec", &mut errs);
    errs
}

/// Job update rules (batch/v1 `ValidateJobSpecUpdate`): completions, selector, template and
/// completionMode are immutable; parallelism and the rest may change.
pub fn validate_job_update(old: &Value, new: &Value) -> ErrorList {
    let mut errs = ErrorList::default();
    for field in ["completions", "selector", "template", "completionMode"] {
        let (o, n) = (&old["spec"][field], &new["spec"][field]);
        if o != n {
            let value = match field {
                "selector" => serde_json::from_value(n.clone())
                    .map(|s: LabelSelector| go_label_selector(&s))
                    .unwrap_or_else(|_| n.to_string()),
                _ => crate::validation::format_value(n),
            };
            errs.push(FieldError::invalid_raw(
                format!("spec.{field}"),
                value,
                "field is immutable",
            ));
        }
    }
    errs
}

/// Validates a CronJob (batch/v1 `ValidateCronJobCreate`): a name of at most 52 characters
/// (its Jobs append 11), a standard schedule without `TZ=`, a known time zone, the
/// concurrency policy, non-negative limits, and a job template whose selector is left to
/// the server.
pub fn validate_cron_job(cj: &CronJob) -> ErrorList {
    let mut errs = validate_meta(&cj.metadata, "CronJob", true, "metadata.");
    if let Some(name) = cj.metadata.name.as_deref()
        && name.len() > 52
    {
        errs.push(FieldError::invalid(
            "metadata.name",
            name,
            "must be no more than 52 characters",
        ));
    }
    let Some(spec) = &cj.spec else {
        errs.push(FieldError::required("spec", ""));
        return errs;
    };
    if spec.schedule.is_empty() {
        errs.push(FieldError::required("spec.schedule", ""));
    } else {
        if let Err(e) = Schedule::parse(&spec.schedule) {
            errs.push(FieldError::invalid(
                "spec.schedule",
                spec.schedule.as_str(),
                e,
            ));
        }
        if spec.schedule.contains("TZ") {
            errs.push(FieldError::invalid(
                "spec.schedule",
                spec.schedule.as_str(),
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            ));
        }
    }
    if let Some(tz) = spec.time_zone.as_deref() {
        if tz.is_empty() {
            errs.push(FieldError::invalid(
                "spec.timeZone",
                tz,
                "timeZone must be nil or non-empty string",
            ));
        } else if tz.eq_ignore_ascii_case("Local") {
            errs.push(FieldError::invalid(
                "spec.timeZone",
                tz,
                "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
            ));
        } else if let Err(e) = time_zone(Some(tz)) {
            errs.push(FieldError::invalid("spec.timeZone", tz, e));
        }
    }
    non_negative(
        spec.starting_deadline_seconds,
        "spec.startingDeadlineSeconds",
        &mut errs,
    );
    match spec.concurrency_policy.as_deref().unwrap_or("") {
        "" => errs.push(FieldError::required("spec.concurrencyPolicy", "")),
        p if !CONCURRENCY_POLICIES.contains(&p) => errs.push(FieldError::not_supported(
            "spec.concurrencyPolicy",
            p,
            CONCURRENCY_POLICIES,
        )),
        _ => {}
    }
    non_negative(
        spec.successful_jobs_history_limit,
        "spec.successfulJobsHistoryLimit",
        &mut errs,
    );
    non_negative(
        spec.failed_jobs_history_limit,
        "spec.failedJobsHistoryLimit",
        &mut errs,
    );
    let tpath = "spec.jobTemplate";
    if let Some(labels) = spec
        .job_template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
    {
        for (k, v) in labels {
            for m in qualified_name(k).into_iter().chain(label_value(v)) {
                errs.push(FieldError::invalid(
                    format!("{tpath}.metadata.labels"),
                    k.as_str(),
                    m,
                ));
            }
        }
    }
    match &spec.job_template.spec {
        Some(js) => {
            validate_job_spec(js, &format!("{tpath}.spec"), &mut errs);
            if let Some(sel) = &js.selector {
                errs.push(FieldError::invalid_raw(
                    format!("{tpath}.spec.selector"),
                    go_label_selector(sel),
                    "`selector` will be auto-generated",
                ));
            }
            if js.manual_selector == Some(true) {
                errs.push(FieldError::not_supported(
                    format!("{tpath}.spec.manualSelector"),
                    true,
                    &["nil", "false"],
                ));
            }
        }
        None => errs.push(FieldError::required(format!("{tpath}.spec"), "")),
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// Schedules.

/// A parsed CronJob schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron pattern.
    Cron(Box<croner::Cron>),
    /// `@every <duration>`: a constant delay (whole seconds, at least one).
    Every(Duration),
}

impl Schedule {
    /// Parses a schedule as Kubernetes' `cron.ParseStandard` does; the error says why not.
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("@every ") {
            let d = crate::duration::parse(rest.trim())
                .map_err(|e| format!("failed to parse duration {s}: {e}"))?;
            // robfig/cron rounds the delay down to whole seconds, at least one.
            return Ok(Schedule::Every(Duration::from_secs(d.as_secs().max(1))));
        }
        let pattern = match s {
            "@midnight" => "0 0 * * *",
            _ => s,
        };
        if !pattern.starts_with('@') {
            let fields: Vec<&str> = pattern.split_whitespace().collect();
            if fields.len() != 5 {
                return Err(format!(
                    "expected exactly 5 fields, found {}: [{}]",
                    fields.len(),
                    fields.join(" ")
                ));
            }
        }
        croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(pattern)
            .map(|c| Schedule::Cron(Box::new(c)))
            .map_err(|e| e.to_string())
    }

    /// The first activation strictly after `t`, in `t`'s time zone (None when the schedule
    /// never fires again, like `0 0 30 2 *`).
    pub fn next_after(&self, t: &Zoned) -> Option<Zoned> {
        match self {
            Schedule::Cron(c) => c.find_next_occurrence(t, false).ok(),
            Schedule::Every(d) => {
                // robfig/cron: t + delay, truncated to the second.
                let next = t.timestamp().as_second() + d.as_secs() as i64;
                jiff::Timestamp::from_second(next)
                    .ok()
                    .map(|ts| ts.to_zoned(t.time_zone().clone()))
            }
        }
    }
}

impl Schedule {
    /// The last activation at or before `t` that is strictly after `after` (`@every`
    /// counts its delays from `after`, as robfig/cron's constant-delay schedule does from the
    /// previous activation).
    pub fn last_between(&self, after: &Zoned, t: &Zoned) -> Option<Zoned> {
        match self {
            Schedule::Cron(c) => c
                .find_previous_occurrence(t, true)
                .ok()
                .filter(|p| p.timestamp() > after.timestamp()),
            Schedule::Every(d) => {
                let d = d.as_secs() as i64;
                let elapsed = t.timestamp().as_second() - after.timestamp().as_second();
                let k = elapsed.div_euclid(d);
                if k < 1 {
                    return None;
                }
                jiff::Timestamp::from_second(after.timestamp().as_second() + k * d)
                    .ok()
                    .map(|ts| ts.to_zoned(t.time_zone().clone()))
            }
        }
    }
}

/// The time zone of a CronJob: the named IANA zone, or the controller's own (the system's)
/// when none is named, as Kubernetes does.
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, String> {
    match name {
        None => Ok(TimeZone::system()),
        Some(n) => TimeZone::get(n).map_err(|_| format!("unknown time zone {n}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Conditions.

/// Whether `job` has condition `ty` with status True.
pub fn has_condition(job: &Job, ty: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == ty && c.status == "True"))
}

/// `Complete` or `Failed` when the Job has finished (Kubernetes' `IsJobFinished`).
pub fn finished(job: &Job) -> Option<&'static str> {
    [COMPLETE, FAILED]
        .into_iter()
        .find(|ty| has_condition(job, ty))
}

/// When the Job finished: the transition time of its terminal condition.
pub fn finish_time(job: &Job) -> Option<jiff::Timestamp> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == COMPLETE || c.type_ == FAILED) && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

// ---------------------------------------------------------------------------------------------
// Table.

/// Table columns of `jobs` and `cronjobs` (kubectl 1.33's printers).
pub(crate) fn columns(plural: &str) -> Option<Vec<Col>> {
    let wide = template_cols(
        "A label query over pods that should match the pod count. Normally, the system sets this field for you. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors",
    );
    let mut cols = match plural {
        "jobs" => vec![
            NAME,
            col("Status", 0, "Status of the job."),
            col(
                "Completions",
                0,
                "The number of pods which reached phase Succeeded. The value increases monotonically for a given spec. However, it may decrease in reaction to scale down of elastic indexed jobs.",
            ),
            col("Duration", 0, "Time required to complete the job."),
            AGE,
        ],
        "cronjobs" => vec![
            NAME,
            col(
                "Schedule",
                0,
                "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
            ),
            col(
                "Timezone",
                0,
                "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones. If not specified, this will default to the time zone of the kube-controller-manager process.",
            ),
            Col {
                ty: "boolean",
                ..col(
                    "Suspend",
                    0,
                    "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions.  Defaults to false.",
                )
            },
            Col {
                ty: "integer",
                ..col("Active", 0, "A list of pointers to currently running jobs.")
            },
            col(
                "Last Schedule",
                0,
                "Information when was the last time the job was successfully scheduled.",
            ),
            AGE,
        ],
        _ => return None,
    };
    cols.extend(wide);
    Some(cols)
}

fn containers(template: &Value) -> (String, String) {
    let list = template["spec"]["containers"].as_array();
    let pick = |k: &str| {
        list.into_iter()
            .flatten()
            .filter_map(|c| c[k].as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    (pick("name"), pick("image"))
}

fn condition_true(o: &Value, ty: &str) -> bool {
    o["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == ty && c["status"] == "True"))
}

/// kubectl's STATUS of a Job.
fn job_status(o: &Value) -> &'static str {
    if condition_true(o, COMPLETE) {
        "Complete"
    } else if condition_true(o, FAILED) {
        "Failed"
    } else if !o["metadata"]["deletionTimestamp"].is_null() {
        "Terminating"
    } else if condition_true(o, SUSPENDED) {
        "Suspended"
    } else if condition_true(o, FAILURE_TARGET) {
        "FailureTarget"
    } else {
        "Running"
    }
}

/// Table cells of a Job or a CronJob (wide columns included).
pub(crate) fn row_cells(plural: &str, o: &Value, now: jiff::Timestamp) -> Option<Vec<Value>> {
    let name = json!(meta::name(o));
    let created = json!(age(&o["metadata"]["creationTimestamp"], now));
    match plural {
        "jobs" => {
            let succeeded = o["status"]["succeeded"].as_i64().unwrap_or(0);
            let completions = match o["spec"]["completions"].as_i64() {
                Some(c) => format!("{succeeded}/{c}"),
                None => match o["spec"]["parallelism"].as_i64().unwrap_or(0) {
                    p if p > 1 => format!("{succeeded}/1 of {p}"),
                    _ => format!("{succeeded}/1"),
                },
            };
            let time = |k: &str| o["status"][k].as_str().and_then(meta::parse_time);
            let duration = match (time("startTime"), time("completionTime")) {
                (None, _) => String::new(),
                (Some(s), None) => human_duration(now.as_second() - s.as_second()),
                (Some(s), Some(c)) => human_duration(c.as_second() - s.as_second()),
            };
            let (names, images) = containers(&o["spec"]["template"]);
            Some(vec![
                name,
                json!(job_status(o)),
                json!(completions),
                json!(duration),
                created,
                json!(names),
                json!(images),
                json!(format_label_selector(&o["spec"]["selector"])),
            ])
        }
        "cronjobs" => {
            let spec = &o["spec"];
            let suspend = match spec["suspend"].as_bool() {
                Some(true) => "True",
                Some(false) => "False",
                None => "<unset>",
            };
            let last = match o["status"]["lastScheduleTime"].as_str() {
                Some(_) => age(&o["status"]["lastScheduleTime"], now),
                None => "<none>".into(),
            };
            let (names, images) = containers(&spec["jobTemplate"]["spec"]["template"]);
            Some(vec![
                name,
                json!(spec["schedule"].as_str().unwrap_or("")),
                json!(spec["timeZone"].as_str().unwrap_or("<none>")),
                json!(suspend),
                json!(o["status"]["active"].as_array().map_or(0, Vec::len)),
                json!(last),
                created,
                json!(names),
                json!(images),
                json!(format_label_selector(
                    &spec["jobTemplate"]["spec"]["selector"]
                )),
            ])
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(v: Value) -> Job {
        serde_json::from_value(v).expect("job literal")
    }

    fn new_job() -> Job {
        job(json!({
            "metadata": {"name": "pi", "namespace": "default", "uid": "u-1"},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "pi", "image": "perl"}]}}}
        }))
    }

    #[test]
    fn job_defaults_generate_the_selector_and_labels() {
        let mut j = new_job();
        default_job(&mut j);
        let spec = j.spec.as_ref().expect("spec");
        assert_eq!(
            (
                spec.completions,
                spec.parallelism,
                spec.backoff_limit,
                spec.completion_mode.as_deref(),
                spec.suspend,
                spec.manual_selector
            ),
            (
                Some(1),
                Some(1),
                Some(6),
                Some("NonIndexed"),
                Some(false),
                Some(false)
            )
        );
        let want = BTreeMap::from([(CONTROLLER_UID_LABEL.to_string(), "u-1".to_string())]);
        assert_eq!(
            spec.selector.as_ref().and_then(|s| s.match_labels.clone()),
            Some(want)
        );
        let labels = template_labels(&spec.template);
        assert_eq!(
            labels.get("controller-uid").map(String::as_str),
            Some("u-1")
        );
        assert_eq!(labels.get("job-name").map(String::as_str), Some("pi"));
        assert_eq!(labels.get(JOB_NAME_LABEL).map(String::as_str), Some("pi"));
        assert_eq!(j.metadata.labels.as_ref(), Some(&labels));
        assert!(validate_job(&j).is_empty(), "{:?}", validate_job(&j));
    }

    #[test]
    fn parallelism_alone_leaves_completions_unset() {
        let mut j = new_job();
        j.spec.as_mut().expect("spec").parallelism = Some(3);
        default_job(&mut j);
        let spec = j.spec.as_ref().expect("spec");
        assert_eq!((spec.completions, spec.parallelism), (None, Some(3)));
    }

    #[test]
    fn job_restart_policy_must_be_on_failure_or_never() {
        let mut j = new_job();
        if let Some(s) = j.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            s.restart_policy = None;
        }
        default_job(&mut j);
        assert_eq!(
            validate_job(&j).aggregate_message(),
            "spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
        );
    }

    #[test]
    fn a_foreign_selector_is_not_auto_generated() {
        let mut j = new_job();
        j.spec.as_mut().expect("spec").selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("app".into(), "x".into())])),
            ..LabelSelector::default()
        });
        default_job(&mut j);
        let msg = validate_job(&j).aggregate_message();
        assert!(msg.contains("`selector` not auto-generated"), "{msg}");
        // With manualSelector the user's selector stands (it must match the labels).
        let mut j = new_job();
        let spec = j.spec.as_mut().expect("spec");
        spec.manual_selector = Some(true);
        spec.selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("app".into(), "x".into())])),
            ..LabelSelector::default()
        });
        spec.template.metadata = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            labels: Some(BTreeMap::from([("app".into(), "x".into())])),
            ..Default::default()
        });
        default_job(&mut j);
        assert!(validate_job(&j).is_empty(), "{:?}", validate_job(&j));
    }

    #[test]
    fn job_template_and_completions_are_immutable_parallelism_is_not() {
        let old = json!({"spec": {"completions": 3, "parallelism": 1, "template": {"a": 1}}});
        let more = json!({"spec": {"completions": 3, "parallelism": 2, "template": {"a": 1}}});
        assert!(validate_job_update(&old, &more).is_empty());
        let other = json!({"spec": {"completions": 4, "parallelism": 1, "template": {"a": 2}}});
        assert_eq!(
            validate_job_update(&old, &other).aggregate_message(),
            "[spec.completions: Invalid value: 4: field is immutable, spec.template: Invalid value: {\"a\":2}: field is immutable]"
        );
    }

    fn cron_job(schedule: &str) -> CronJob {
        serde_json::from_value(json!({
            "metadata": {"name": "hello", "namespace": "default"},
            "spec": {"schedule": schedule, "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox"}]}}}}}
        }))
        .expect("cronjob literal")
    }

    #[test]
    fn cron_job_defaults_and_schedule_validation() {
        let mut cj = cron_job("*/1 * * * *");
        default_cron_job(&mut cj);
        let spec = cj.spec.as_ref().expect("spec");
        assert_eq!(
            (
                spec.concurrency_policy.as_deref(),
                spec.suspend,
                spec.successful_jobs_history_limit,
                spec.failed_jobs_history_limit
            ),
            (Some("Allow"), Some(false), Some(3), Some(1))
        );
        assert!(
            validate_cron_job(&cj).is_empty(),
            "{:?}",
            validate_cron_job(&cj)
        );
        for ok in [
            "@hourly",
            "@daily",
            "@midnight",
            "@every 90s",
            "0 9 * * MON-FRI",
            "0 0 1 JAN *",
        ] {
            let mut cj = cron_job(ok);
            default_cron_job(&mut cj);
            assert!(
                validate_cron_job(&cj).is_empty(),
                "{ok}: {:?}",
                validate_cron_job(&cj)
            );
        }
        let mut cj = cron_job("* * * *");
        default_cron_job(&mut cj);
        assert_eq!(
            validate_cron_job(&cj).aggregate_message(),
            "spec.schedule: Invalid value: \"* * * *\": expected exactly 5 fields, found 4: [* * * *]"
        );
        let mut cj = cron_job("61 * * * *");
        default_cron_job(&mut cj);
        assert!(!validate_cron_job(&cj).is_empty());
        let mut cj = cron_job("TZ=UTC 0 * * * *");
        default_cron_job(&mut cj);
        assert!(
            validate_cron_job(&cj)
                .aggregate_message()
                .contains("use timeZone field instead")
        );
    }

    #[test]
    fn cron_job_time_zone_and_template_rules() {
        let mut cj = cron_job("0 * * * *");
        default_cron_job(&mut cj);
        let spec = cj.spec.as_mut().expect("spec");
        spec.time_zone = Some("Mars/Olympus".into());
        spec.concurrency_policy = Some("Sometimes".into());
        if let Some(js) = spec.job_template.spec.as_mut() {
            js.selector = Some(LabelSelector::default());
        }
        let msg = validate_cron_job(&cj).aggregate_message();
        assert!(
            msg.contains(
                "spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("spec.concurrencyPolicy: Unsupported value: \"Sometimes\""),
            "{msg}"
        );
        assert!(msg.contains("spec.jobTemplate.spec.selector"), "{msg}");
        let mut long = cron_job("0 * * * *");
        long.metadata.name = Some("x".repeat(53));
        default_cron_job(&mut long);
        assert!(
            validate_cron_job(&long)
                .aggregate_message()
                .contains("must be no more than 52 characters")
        );
    }

    fn at(s: &str) -> Zoned {
        s.parse().expect("zoned literal")
    }

    #[test]
    fn schedules_fire_at_the_next_matching_minute() {
        let every_minute = Schedule::parse("* * * * *").expect("parses");
        assert_eq!(
            every_minute.next_after(&at("2024-03-01T10:00:30+00:00[UTC]")),
            Some(at("2024-03-01T10:01:00+00:00[UTC]"))
        );
        assert_eq!(
            every_minute.next_after(&at("2024-03-01T10:01:00+00:00[UTC]")),
            Some(at("2024-03-01T10:02:00+00:00[UTC]")),
            "strictly after"
        );
        let hourly = Schedule::parse("@hourly").expect("parses");
        assert_eq!(
            hourly.next_after(&at("2024-03-01T10:00:00+00:00[UTC]")),
            Some(at("2024-03-01T11:00:00+00:00[UTC]"))
        );
        // Day of month OR day of week when both are restricted (Vixie cron).
        let either = Schedule::parse("0 0 13 * FRI").expect("parses");
        assert_eq!(
            either.next_after(&at("2024-03-01T12:00:00+00:00[UTC]")),
            Some(at("2024-03-08T00:00:00+00:00[UTC]"))
        );
        let at_ = at("2024-03-01T10:05:30+00:00[UTC]");
        assert_eq!(
            every_minute.last_between(&at("2024-03-01T10:00:00+00:00[UTC]"), &at_),
            Some(at("2024-03-01T10:05:00+00:00[UTC]"))
        );
        assert_eq!(
            every_minute.last_between(&at("2024-03-01T10:05:00+00:00[UTC]"), &at_),
            None,
            "strictly after the last activation"
        );
        assert_eq!(
            hourly.last_between(
                &at("2024-03-01T09:59:00+00:00[UTC]"),
                &at("2024-03-01T10:00:00+00:00[UTC]")
            ),
            Some(at("2024-03-01T10:00:00+00:00[UTC]")),
            "at or before"
        );
        let every = Schedule::parse("@every 90s").expect("parses");
        assert_eq!(
            every.next_after(&at("2024-03-01T10:00:00+00:00[UTC]")),
            Some(at("2024-03-01T10:01:30+00:00[UTC]"))
        );
        assert_eq!(
            every.last_between(
                &at("2024-03-01T10:00:00+00:00[UTC]"),
                &at("2024-03-01T10:04:00+00:00[UTC]")
            ),
            Some(at("2024-03-01T10:03:00+00:00[UTC]"))
        );
        // In a named zone the schedule is read in that zone.
        let nine = Schedule::parse("0 9 * * *").expect("parses");
        let tz = time_zone(Some("America/New_York")).expect("zone");
        let from = at("2024-03-01T12:00:00+00:00[UTC]").with_time_zone(tz);
        assert_eq!(
            nine.next_after(&from).map(|z| z.timestamp().to_string()),
            Some("2024-03-01T14:00:00Z".to_string())
        );
    }

    #[test]
    fn job_and_cron_job_rows() {
        let now: jiff::Timestamp = "2024-01-10T00:10:00Z".parse().expect("ts");
        let j = json!({"metadata": {"name": "pi", "creationTimestamp": "2024-01-10T00:00:00Z"},
            "spec": {"completions": 3, "parallelism": 2,
                     "selector": {"matchLabels": {CONTROLLER_UID_LABEL: "u"}},
                     "template": {"spec": {"containers": [{"name": "pi", "image": "perl"}]}}},
            "status": {"succeeded": 3, "startTime": "2024-01-10T00:00:01Z",
                       "completionTime": "2024-01-10T00:00:41Z",
                       "conditions": [{"type": "Complete", "status": "True"}]}});
        assert_eq!(
            row_cells("jobs", &j, now),
            Some(vec![
                json!("pi"),
                json!("Complete"),
                json!("3/3"),
                json!("40s"),
                json!("10m"),
                json!("pi"),
                json!("perl"),
                json!("batch.kubernetes.io/controller-uid=u")
            ])
        );
        let running = json!({"metadata": {"name": "w"}, "spec": {"parallelism": 2},
            "status": {"startTime": "2024-01-10T00:09:00Z"}});
        let cells = row_cells("jobs", &running, now).expect("row");
        assert_eq!(
            (&cells[1], &cells[2], &cells[3]),
            (&json!("Running"), &json!("0/1 of 2"), &json!("60s"))
        );
        let cj = json!({"metadata": {"name": "hello", "creationTimestamp": "2024-01-10T00:00:00Z"},
            "spec": {"schedule": "*/1 * * * *", "suspend": false,
                     "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}},
            "status": {"active": [{"name": "hello-1"}], "lastScheduleTime": "2024-01-10T00:09:00Z"}});
        assert_eq!(
            row_cells("cronjobs", &cj, now),
            Some(vec![
                json!("hello"),
                json!("*/1 * * * *"),
                json!("<none>"),
                json!("False"),
                json!(1),
                json!("60s"),
                json!("10m"),
                json!("c"),
                json!("busybox"),
                json!("<none>")
            ])
        );
        assert_eq!(columns("jobs").map(|c| c.len()), Some(8));
        assert_eq!(columns("cronjobs").map(|c| c.len()), Some(10));
    }
}
