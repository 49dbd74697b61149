//! The admission plugins that read the store: ServiceAccount, LimitRanger and ResourceQuota.
//!
//! Like Kubernetes, the chain runs in phases: the simple plugins of
//! [`crate::admission::admit`] first (namespace lifecycle, deny), then the mutating half of
//! the store-backed plugins in chain order (service account defaults, LimitRange defaults),
//! then their validating half (mountable secrets, LimitRange bounds, quota). ResourceQuota
//! counts the namespace's live objects while holding a per-namespace lock that the caller
//! keeps until the object is written ([`Admitted`]), so concurrent creates cannot overshoot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};
use xkube_api::quota::{self, Usage};
use xkube_api::{FieldSelector, LabelSelector, ResourceInfo, StatusError, limitrange, meta};

use crate::admission::{Operation, Plugin};
use crate::registry::{Registry, WriteOptions};

/// Where the service-account token is mounted in every container.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Secret type of service-account tokens.
pub const TOKEN_SECRET_TYPE: &str = "kubernetes.io/service-account-token";
/// Annotation of a token secret naming its service account.
pub const TOKEN_ANNOTATION_NAME: &str = "kubernetes.io/service-account.name";
/// Annotation of a token secret holding its service account's uid.
pub const TOKEN_ANNOTATION_UID: &str = "kubernetes.io/service-account.uid";
/// Service-account annotation restricting pods to the secrets the account lists.
pub const ENFORCE_MOUNTABLE_SECRETS: &str = "kubernetes.io/enforce-mountable-secrets";
/// Pod annotation of mirror pods (left untouched).
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

fn core(plural: &str) -> Result<&'static ResourceInfo, StatusError> {
    xkube_api::resources::find("", "v1", plural)
        .ok_or_else(|| StatusError::internal(format!("resource {plural} is not registered")))
}

/// Per-namespace locks serializing quota-charged creations.
#[derive(Default)]
pub struct QuotaLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl QuotaLocks {
    fn get(&self, ns: &str) -> Arc<tokio::sync::Mutex<()>> {
        // A poisoned map only means another request panicked while inserting; the map
        // itself is still usable.
        let mut m = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(ns.to_string()).or_default().clone()
    }
}

/// The outcome of admission, held until the write is done.
#[derive(Default)]
pub struct Admitted {
    charge: Option<QuotaCharge>,
}

struct QuotaCharge {
    _guard: tokio::sync::OwnedMutexGuard<()>,
    ns: String,
    /// Quota name and its usage including the admitted object.
    usage: Vec<(String, Usage)>,
}

impl Admitted {
    /// After a successful write: records the new usage in the quotas' `status.used` (as
    /// Kubernetes' quota admission does) and releases the namespace's quota lock. Dropping
    /// an [`Admitted`] without committing (the write failed) only releases the lock.
    pub async fn commit(self, reg: &Registry) {
        let Some(charge) = self.charge else {
            return;
        };
        let Ok(quotas) = core("resourcequotas") else {
            return;
        };
        for (name, used) in &charge.usage {
            for _ in 0..5 {
                let Ok((cur, rev)) = reg.get(quotas, Some(&charge.ns), name).await else {
                    break;
                };
                let mut next = cur.clone();
                next["status"]["hard"] = cur["spec"]["hard"].clone();
                let mut u = cur["status"]["used"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                for (k, v) in used {
                    u.insert(k.clone(), json!(v.to_string()));
                }
                u.retain(|k, _| cur["spec"]["hard"].get(k).is_some());
                next["status"]["used"] = Value::Object(u);
                if next == cur {
                    break;
                }
                meta::remove(&mut next, "resourceVersion");
                match reg
                    .update(
                        quotas,
                        Some(&charge.ns),
                        name,
                        next,
                        Some("status"),
                        &WriteOptions::default(),
                        Some((cur, rev)),
                    )
                    .await
                {
                    Ok(_) => break,
                    Err(e) if e.reason == "Conflict" => continue,
                    Err(e) => {
                        tracing::warn!(quota = %name, ns = %charge.ns, error = %e, "recording quota usage failed");
                        break;
                    }
                }
            }
        }
    }
}

/// Runs the store-backed plugins of `chain` (after [`crate::admission::admit`] passed).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    chain: &[Plugin],
    locks: &QuotaLocks,
    reg: &Registry,
    op: Operation,
    res: &ResourceInfo,
    ns: &str,
    name: &str,
    mut object: Option<&mut Value>,
    dry_run: bool,
) -> Result<Admitted, StatusError> {
    let forbidden = |msg: &str| StatusError::forbidden(res.group, res.plural, name, msg);
    let pod_create = op == Operation::Create && res.group.is_empty() && res.plural == "pods";
    // Mutating phase.
    let mut service_account = None;
    let mut limit_ranges = None;
    for p in chain {
        match p {
            Plugin::ServiceAccount if pod_create => {
                if let Some(pod) = object.as_deref_mut() {
                    service_account = admit_service_account(reg, ns, pod, &forbidden).await?;
                }
            }
            Plugin::LimitRanger if pod_create => {
                if let Some(pod) = object.as_deref_mut() {
                    let ranges = list(reg, "limitranges", ns).await?;
                    limitrange::default_requests_from_limits(pod);
                    for lr in &ranges {
                        limitrange::apply_defaults(pod, lr);
                    }
                    limit_ranges = Some(ranges);
                }
            }
            _ => {}
        }
    }
    // Validating phase.
    let mut admitted = Admitted::default();
    for p in chain {
        match p {
            Plugin::ServiceAccount => {
                if let (Some(sa), Some(pod)) = (&service_account, object.as_deref()) {
                    mountable_secrets(sa, pod).map_err(|m| forbidden(&m))?;
                }
            }
            Plugin::LimitRanger => {
                if let (Some(ranges), Some(pod)) = (&limit_ranges, object.as_deref()) {
                    for lr in ranges {
                        limitrange::validate(pod, lr).map_err(|m| forbidden(&m))?;
                    }
                }
            }
            Plugin::ResourceQuota if op == Operation::Create && res.namespaced => {
                if let Some(obj) = object.as_deref() {
                    admitted = check_quota(locks, reg, res, ns, obj, dry_run, &forbidden).await?;
                }
            }
            _ => {}
        }
    }
    Ok(admitted)
}

async fn list(reg: &Registry, plural: &str, ns: &str) -> Result<Vec<Value>, StatusError> {
    let res = core(plural)?;
    let (items, _) = reg
        .list(
            res,
            Some(ns),
            &LabelSelector::default(),
            &FieldSelector::default(),
            false,
        )
        .await?;
    Ok(items)
}

/// Looks up a service account like Kubernetes: `default` is retried for a while, since the
/// serviceaccount controller creates it shortly after the namespace.
async fn get_service_account(reg: &Registry, ns: &str, name: &str) -> Result<Value, StatusError> {
    let res = core("serviceaccounts")?;
    let attempts = if name == "default" { 10 } else { 1 };
    let interval = Duration::from_millis(rand::thread_rng().gen_range(100..200));
    for i in 0..attempts {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        match reg.get(res, Some(ns), name).await {
            Ok((sa, _)) => return Ok(sa),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Err(StatusError::not_found("", "serviceaccount", name))
}

/// Whether `secret` is a live token secret of account `sa`.
fn is_token_of(secret: &Value, sa: &Value) -> bool {
    let ann = &secret["metadata"]["annotations"];
    secret["type"] == TOKEN_SECRET_TYPE
        && ann[TOKEN_ANNOTATION_NAME].as_str() == Some(meta::name(sa))
        && ann[TOKEN_ANNOTATION_UID]
            .as_str()
            .is_none_or(|u| u.is_empty() || u == meta::uid(sa))
        && secret["data"]["token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
        && secret["metadata"]["deletionTimestamp"].is_null()
}

/// The name of a token secret the account references (waiting briefly for the token
/// controller when there is none yet).
async fn referenced_token(
    reg: &Registry,
    ns: &str,
    sa_name: &str,
    mut sa: Value,
) -> Result<Option<String>, StatusError> {
    let secrets = core("secrets")?;
    for attempt in 0..10 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            sa = get_service_account(reg, ns, sa_name).await?;
        }
        for r in sa["secrets"].as_array().into_iter().flatten() {
            let Some(n) = r["name"].as_str() else {
                continue;
            };
            if let Ok((secret, _)) = reg.get(secrets, Some(ns), n).await
                && is_token_of(&secret, &sa)
            {
                return Ok(Some(n.to_string()));
            }
        }
    }
    Ok(None)
}

/// The five rules of the ServiceAccount plugin on a pod being created; returns the account.
async fn admit_service_account(
    reg: &Registry,
    ns: &str,
    pod: &mut Value,
    forbidden: &impl Fn(&str) -> StatusError,
) -> Result<Option<Value>, StatusError> {
    if !pod["metadata"]["annotations"][MIRROR_ANNOTATION].is_null() {
        return Ok(None);
    }
    // Rule 1: the account defaults to `default` (the deprecated `serviceAccount` field is an
    // alias).
    let mut sa_name = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if sa_name.is_empty() {
        sa_name = pod["spec"]["serviceAccount"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string();
    }
    pod["spec"]["serviceAccountName"] = json!(sa_name);
    pod["spec"]["serviceAccount"] = json!(sa_name);
    // Rule 2: the account must exist.
    let sa = match get_service_account(reg, ns, &sa_name).await {
        Ok(sa) => sa,
        Err(e) => {
            return Err(forbidden(&format!(
                "error looking up service account {ns}/{sa_name}: {}",
                e.message
            )));
        }
    };
    // Rules 4 and 5: the token volume, mounted read-only in every container.
    let automount = pod["spec"]["automountServiceAccountToken"]
        .as_bool()
        .or_else(|| sa["automountServiceAccountToken"].as_bool())
        .unwrap_or(true);
    if automount {
        let Some(token) = referenced_token(reg, ns, &sa_name, sa.clone()).await? else {
            let mut e = StatusError::new(
                500,
                "ServerTimeout",
                format!(
                    "No API token found for service account \"{sa_name}\", retry after the token is automatically created and added to the service account"
                ),
            );
            e.retry_after_seconds = Some(1);
            return Err(e);
        };
        mount_token(pod, &token);
    }
    // Rule 3: the account's imagePullSecrets when the pod names none.
    let pod_pull = pod["spec"]["imagePullSecrets"]
        .as_array()
        .is_some_and(|a| !a.is_empty());
    if !pod_pull && let Some(ps) = sa["imagePullSecrets"].as_array().filter(|a| !a.is_empty()) {
        pod["spec"]["imagePullSecrets"] = json!(
            ps.iter()
                .map(|p| json!({"name": p["name"]}))
                .collect::<Vec<_>>()
        );
    }
    Ok(Some(sa))
}

/// Adds a secret volume of token secret `token` and mounts it at [`TOKEN_MOUNT_PATH`] in
/// every container that has nothing mounted there (Kubernetes' legacy token volume).
pub fn mount_token(pod: &mut Value, token: &str) {
    let volumes: Vec<Value> = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let existing = volumes
        .iter()
        .find(|v| v["secret"]["secretName"] == token)
        .and_then(|v| v["name"].as_str())
        .map(str::to_string);
    let volume_name = existing.clone().unwrap_or_else(|| {
        if volumes.iter().any(|v| v["name"] == token) {
            xkube_api::names::generate(&format!("{token}-"))
        } else {
            token.to_string()
        }
    });
    let mut needed = false;
    for key in ["initContainers", "containers"] {
        let Some(cs) = pod["spec"][key].as_array_mut() else {
            continue;
        };
        for c in cs {
            let mounted = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["mountPath"] == TOKEN_MOUNT_PATH);
            if mounted {
                continue;
            }
            if !c["volumeMounts"].is_array() {
                c["volumeMounts"] = json!([]);
            }
            if let Some(ms) = c["volumeMounts"].as_array_mut() {
                ms.push(
                    json!({"name": volume_name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH}),
                );
            }
            needed = true;
        }
    }
    if needed && existing.is_none() {
        if !pod["spec"]["volumes"].is_array() {
            pod["spec"]["volumes"] = json!([]);
        }
        if let Some(vs) = pod["spec"]["volumes"].as_array_mut() {
            vs.push(json!({"name": volume_name, "secret": {"secretName": token}}));
        }
    }
}

/// With `kubernetes.io/enforce-mountable-secrets: "true"` on the account, pods may only use
/// the secrets it lists (volumes, env, imagePullSecrets); off by default, as in Kubernetes.
fn mountable_secrets(sa: &Value, pod: &Value) -> Result<(), String> {
    if sa["metadata"]["annotations"][ENFORCE_MOUNTABLE_SECRETS] != "true" {
        return Ok(());
    }
    let sa_name = meta::name(sa);
    let listed = |n: &str| {
        sa["secrets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["name"] == n)
    };
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        if let Some(s) = v["secret"]["secretName"].as_str()
            && !listed(s)
        {
            return Err(format!(
                "volume with secret.secretName=\"{s}\" is not allowed because service account {sa_name} does not reference that secret"
            ));
        }
    }
    for (key, what) in [
        ("initContainers", "init container"),
        ("containers", "container"),
    ] {
        for c in pod["spec"][key].as_array().into_iter().flatten() {
            let cname = c["name"].as_str().unwrap_or("");
            for e in c["env"].as_array().into_iter().flatten() {
                if let Some(s) = e["valueFrom"]["secretKeyRef"]["name"].as_str()
                    && !listed(s)
                {
                    return Err(format!(
                        "{what} {cname} with envVar {} referencing secret.secretName=\"{s}\" is not allowed because service account {sa_name} does not reference that secret",
                        e["name"].as_str().unwrap_or("")
                    ));
                }
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                if let Some(s) = e["secretRef"]["name"].as_str()
                    && !listed(s)
                {
                    return Err(format!(
                        "{what} {cname} with envFrom referencing secret.secretName=\"{s}\" is not allowed because service account {sa_name} does not reference that secret"
                    ));
                }
            }
        }
    }
    let pulls: Vec<&str> = sa["imagePullSecrets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for p in pod["spec"]["imagePullSecrets"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(n) = p["name"].as_str()
            && !pulls.contains(&n)
        {
            return Err(format!(
                "image pull secret with name=\"{n}\" is not allowed because service account {sa_name} does not reference that imagePullSecret"
            ));
        }
    }
    Ok(())
}

fn now_seconds() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// The ResourceQuota check of a creation: live usage counted from the store under the
/// namespace's lock, Kubernetes' messages on refusal.
async fn check_quota(
    locks: &QuotaLocks,
    reg: &Registry,
    res: &ResourceInfo,
    ns: &str,
    obj: &Value,
    dry_run: bool,
    forbidden: &impl Fn(&str) -> StatusError,
) -> Result<Admitted, StatusError> {
    let requested = quota::usage(res, obj, now_seconds());
    if requested.is_empty() {
        return Ok(Admitted::default());
    }
    let mut quotas = list(reg, "resourcequotas", ns).await?;
    quotas.retain(|q| {
        quota::applies(q, res, obj) && quota::hard(q).keys().any(|k| requested.contains_key(k))
    });
    if quotas.is_empty() {
        return Ok(Admitted::default());
    }
    quotas.sort_by(|a, b| meta::name(a).cmp(meta::name(b)));
    let is_pod = res.group.is_empty() && res.plural == "pods";
    if is_pod {
        for q in &quotas {
            quota::pod_constraints(&quota::hard(q), obj)
                .map_err(|m| forbidden(&format!("failed quota: {}: {m}", meta::name(q))))?;
        }
    }
    let guard = locks.get(ns).lock_owned().await;
    // Live usage: every object of this resource in the namespace, as of now.
    let (live, _) = reg
        .list(
            res,
            Some(ns),
            &LabelSelector::default(),
            &FieldSelector::default(),
            false,
        )
        .await?;
    let now = now_seconds();
    let others: Vec<Value> = live
        .into_iter()
        .filter(|o| meta::name(o) != meta::name(obj) || meta::name(obj).is_empty())
        .collect();
    let mut charges = Vec::new();
    for q in &quotas {
        let hard = quota::hard(q);
        let used = quota::used(q, &hard, others.iter().map(|o| (res, o)), now);
        match quota::check(meta::name(q), &hard, &used, &requested) {
            Ok(next) => charges.push((meta::name(q).to_string(), next)),
            Err(m) => return Err(forbidden(&m)),
        }
    }
    if dry_run {
        return Ok(Admitted::default());
    }
    Ok(Admitted {
        charge: Some(QuotaCharge {
            _guard: guard,
            ns: ns.to_string(),
            usage: charges,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_volume_is_added_once_and_mounted_everywhere() {
        let mut pod = json!({"spec": {
            "initContainers": [{"name": "i"}],
            "containers": [{"name": "a"}, {"name": "b", "volumeMounts": [
                {"name": "own", "mountPath": TOKEN_MOUNT_PATH}]}],
            "volumes": [{"name": "default-token-abcde", "emptyDir": {}}]}});
        mount_token(&mut pod, "default-token-abcde");
        let vols = pod["spec"]["volumes"].as_array().expect("volumes");
        assert_eq!(
            vols.len(),
            2,
            "a second volume under a unique name: {vols:?}"
        );
        let name = vols[1]["name"].as_str().expect("name").to_string();
        assert!(name.starts_with("default-token-abcde-"), "{name}");
        assert_eq!(vols[1]["secret"]["secretName"], "default-token-abcde");
        assert_eq!(
            pod["spec"]["containers"][0]["volumeMounts"][0],
            json!({"name": name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH})
        );
        assert_eq!(
            pod["spec"]["initContainers"][0]["volumeMounts"][0]["name"],
            name
        );
        assert_eq!(
            pod["spec"]["containers"][1]["volumeMounts"]
                .as_array()
                .map(Vec::len),
            Some(1),
            "an existing mount at the path is kept"
        );
        mount_token(&mut pod, "default-token-abcde");
        assert_eq!(pod["spec"]["volumes"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn mountable_secrets_enforced_only_when_annotated() {
        let pod = json!({"spec": {"containers": [{"name": "c"}],
            "volumes": [{"name": "v", "secret": {"secretName": "other"}}]}});
        let sa = json!({"metadata": {"name": "build"}, "secrets": [{"name": "mine"}]});
        assert_eq!(mountable_secrets(&sa, &pod), Ok(()));
        let mut strict = sa.clone();
        strict["metadata"]["annotations"] = json!({ENFORCE_MOUNTABLE_SECRETS: "true"});
        assert_eq!(
            mountable_secrets(&strict, &pod),
            Err("volume with secret.secretName=\"other\" is not allowed because service account build does not reference that secret".into())
        );
    }
}
