//! Storage strategy of every resource: create, update, patch, delete with Kubernetes'
//! semantics (uid, timestamps, generation, resourceVersion, status subresources, allocation,
//! graceful and cascading deletion) on top of the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};
use xkube_api::patch::PatchType;
use xkube_api::validation::{ErrorList, FieldError};
use xkube_api::{FieldSelector, LabelSelector, ResourceInfo, StatusError, meta, typed};
use xkube_store::{Revision, Store};

use crate::alloc::{AllocError, Allocators};
use crate::strategy::{self, Deletion};
use crate::watchcache::{WatchCache, decode};

/// How many times a write without a resourceVersion precondition is tried when other
/// writers keep winning the race for the object. Kubernetes' storage retries without bound;
/// a bound turns a pathological livelock into a 409 rather than a hung request.
pub const WRITE_ATTEMPTS: usize = 32;

/// The `preconditions` of a DELETE (uid, resourceVersion) against the current object.
fn check_delete_preconditions(
    res: &ResourceInfo,
    name: &str,
    cur: &Value,
    rev: Revision,
    opts: &DeleteOptions,
) -> Result<(), StatusError> {
    if let Some(uid) = &opts.uid
        && uid != meta::uid(cur)
    {
        return Err(StatusError::conflict(
            res.group,
            res.plural,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta::uid(cur)
            ),
        ));
    }
    if let Some(rv) = &opts.resource_version
        && *rv != rev.to_string()
    {
        return Err(StatusError::conflict(
            res.group,
            res.plural,
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {rev}"
            ),
        ));
    }
    Ok(())
}

/// The pause after the `attempt`-th lost write race: none after the first, then a random
/// 0..=attempt ms (at most 20 ms). Two writers that read, write and retry in the same rhythm
/// can otherwise lose to each other in lockstep until the attempts run out.
async fn lost_race_pause(attempt: usize) {
    if attempt > 1 {
        let ms = rand::thread_rng().gen_range(0..=attempt.min(20) as u64);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// `?fieldValidation=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Unknown fields are errors (400).
    Strict,
    /// Unknown fields are warnings (the default).
    #[default]
    Warn,
    /// Unknown fields are dropped silently.
    Ignore,
}

/// Options of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// `?dryRun=All`.
    pub dry_run: bool,
    /// `?fieldValidation=`.
    pub field_validation: FieldValidation,
}

/// Deletion options (query and `DeleteOptions` body).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `propagationPolicy` (`Orphan`, `Background`, `Foreground`), or legacy `orphanDependents`.
    pub propagation: Option<String>,
    /// `gracePeriodSeconds`.
    pub grace_period: Option<i64>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `dryRun`.
    pub dry_run: bool,
}

/// Store errors as Kubernetes statuses.
pub fn store_error(res: &ResourceInfo, name: &str, e: xkube_store::Error) -> StatusError {
    match e {
        xkube_store::Error::NotFound { .. } => StatusError::not_found(res.group, res.plural, name),
        xkube_store::Error::AlreadyExists { .. } => {
            StatusError::already_exists(res.group, res.plural, name)
        }
        xkube_store::Error::Conflict { .. } => {
            StatusError::modified_conflict(res.group, res.plural, name)
        }
        xkube_store::Error::Compacted {
            requested,
            compacted,
        } => StatusError::expired(requested, compacted + 1),
        other => StatusError::internal(other),
    }
}

fn now() -> String {
    meta::format_time(jiff::Timestamp::now())
}

/// Spec-like content of an object: everything except metadata and status.
fn spec_part(v: &Value) -> Value {
    let mut s = v.clone();
    if let Some(m) = s.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    s
}

/// The registry: the only code that writes API objects to the store.
pub struct Registry {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Allocators of cluster IPs and node ports.
    pub alloc: Allocators,
    /// Watch caches by plural.
    pub caches: HashMap<&'static str, Arc<WatchCache>>,
}

/// Result of a write: the object and any warnings.
pub struct Written {
    /// The stored object (with resourceVersion).
    pub object: Value,
    /// `Warning` headers.
    pub warnings: Vec<String>,
    /// Whether a new object was created (201) rather than updated (200).
    pub created: bool,
}

impl Registry {
    /// Reads one object.
    pub async fn get(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> Result<(Value, Revision), StatusError> {
        let key = res.key(ns, name);
        match self.store.get(&key).await {
            Ok(Some(kv)) => {
                let v = decode(&kv, kv.mod_revision)
                    .ok_or_else(|| StatusError::internal(format!("undecodable object at {key}")))?;
                Ok((v, kv.mod_revision))
            }
            Ok(None) => Err(StatusError::not_found(res.group, res.plural, name)),
            Err(e) => Err(store_error(res, name, e)),
        }
    }

    /// Lists objects (from the watch cache when `from_cache`, else a consistent store read).
    pub async fn list(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        from_cache: bool,
    ) -> Result<(Vec<Value>, Revision), StatusError> {
        let prefix = res.key_prefix(ns);
        let (items, rev): (Vec<Value>, Revision) = match self
            .caches
            .get(res.plural)
            .and_then(|c| if from_cache { c.list(&prefix) } else { None })
        {
            Some((items, rev)) => (items.iter().map(|v| v.value().clone()).collect(), rev),
            None => {
                let (kvs, rev) = self
                    .store
                    .list(&prefix)
                    .await
                    .map_err(|e| store_error(res, "", e))?;
                (
                    kvs.iter()
                        .filter_map(|kv| decode(kv, kv.mod_revision))
                        .collect(),
                    rev,
                )
            }
        };
        let items = items
            .into_iter()
            .filter(|o| labels.matches_object(o) && fields.matches(o))
            .collect();
        Ok((items, rev))
    }

    fn prepare(
        &self,
        res: &ResourceInfo,
        obj: Value,
        opts: &WriteOptions,
        warnings: &mut Vec<String>,
    ) -> Result<(Value, ErrorList), StatusError> {
        let p = typed::prepare(res.kind, obj, true)
            .map_err(|e| StatusError::bad_request(e.to_string()))?;
        if !p.unknown_fields.is_empty() {
            match opts.field_validation {
                FieldValidation::Strict => {
                    let list = p
                        .unknown_fields
                        .iter()
                        .map(|f| format!("unknown field \"{f}\""))
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(StatusError::bad_request(format!(
                        "strict decoding error: {list}"
                    )));
                }
                FieldValidation::Warn => {
                    warnings.extend(
                        p.unknown_fields
                            .iter()
                            .map(|f| format!("unknown field \"{f}\"")),
                    );
                }
                FieldValidation::Ignore => {}
            }
        }
        Ok((p.object, p.errors))
    }

    /// Sets `metadata.name` from `metadata.generateName` plus 5 random characters when the
    /// object has no name (done before admission, so messages name the object).
    pub fn generate_name(obj: &mut Value) {
        if meta::name(obj).is_empty()
            && let Some(g) = obj["metadata"]["generateName"]
                .as_str()
                .filter(|g| !g.is_empty())
        {
            let name = xkube_api::names::generate(g);
            meta::set(obj, "name", json!(name));
        }
    }

    /// Creates an object (already checked against the request's kind and namespace).
    pub async fn create(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> Result<Written, StatusError> {
        let mut warnings = Vec::new();
        Self::generate_name(&mut obj);
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            meta::remove(&mut obj, k);
        }
        meta::set(&mut obj, "uid", json!(uuid::Uuid::new_v4().to_string()));
        meta::set(&mut obj, "creationTimestamp", json!(now()));
        let strategy = strategy::of(res);
        if strategy.generation && obj.get("spec").is_some() {
            meta::set(&mut obj, "generation", json!(1));
        } else {
            meta::remove(&mut obj, "generation");
        }
        let (mut obj, errors) = self.prepare(res, obj, opts, &mut warnings)?;
        let name = meta::name(&obj).to_string();
        if !errors.is_empty() {
            return Err(StatusError::invalid(res.group, res.kind, &name, &errors));
        }
        (strategy.prepare_for_create)(&mut obj);
        let owner = format!("{}/{}", ns.unwrap_or(""), name);
        let mut allocated = Allocated::default();
        if strategy.allocates && !opts.dry_run {
            self.allocate_service(&mut obj, None, &owner, &mut allocated)
                .await?;
        }
        let key = res.key(ns, &name);
        if opts.dry_run {
            return Ok(Written {
                object: obj,
                warnings,
                created: true,
            });
        }
        let bytes = serde_json::to_vec(&obj).map_err(StatusError::internal)?;
        match self.store.create(&key, bytes).await {
            Ok(kv) => {
                meta::set(
                    &mut obj,
                    "resourceVersion",
                    json!(kv.mod_revision.to_string()),
                );
                Ok(Written {
                    object: obj,
                    warnings,
                    created: true,
                })
            }
            Err(e) => {
                self.release(&allocated).await;
                Err(store_error(res, &name, e))
            }
        }
    }

    async fn release(&self, a: &Allocated) {
        for ip in &a.ips {
            self.alloc.release_ip(ip).await;
        }
        for p in &a.ports {
            self.alloc.release_port(*p).await;
        }
    }

    /// Allocates the cluster IP and node ports of a Service being created (`old` = None) or
    /// updated, recording what was newly allocated in `allocated`.
    async fn allocate_service(
        &self,
        obj: &mut Value,
        old: Option<&Value>,
        owner: &str,
        allocated: &mut Allocated,
    ) -> Result<(), StatusError> {
        let name = meta::name(obj).to_string();
        let ty = obj["spec"]["type"]
            .as_str()
            .unwrap_or("ClusterIP")
            .to_string();
        let invalid = |errs: Vec<FieldError>| {
            StatusError::invalid(
                "",
                "Service",
                &name,
                &errs.into_iter().collect::<ErrorList>(),
            )
        };
        let mut errs = Vec::new();
        if ty != "ExternalName" {
            let old_ip = old
                .and_then(|o| o["spec"]["clusterIP"].as_str())
                .unwrap_or("")
                .to_string();
            let want = obj["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
            if want == "None" {
                obj["spec"]["clusterIPs"] = json!(["None"]);
            } else if !old_ip.is_empty() && (want.is_empty() || want == old_ip) {
                obj["spec"]["clusterIP"] = json!(old_ip);
                obj["spec"]["clusterIPs"] = json!([old_ip]);
            } else if want.is_empty() {
                match self.alloc.allocate_any_ip(owner).await {
                    Ok(ip) => {
                        let ip = ip.to_string();
                        obj["spec"]["clusterIP"] = json!(ip);
                        obj["spec"]["clusterIPs"] = json!([ip]);
                        allocated.ips.push(ip);
                    }
                    Err(e) => {
                        return Err(StatusError::internal(format!(
                            "failed to allocate a serviceIP: {e:?}"
                        )));
                    }
                }
            } else {
                match self.alloc.allocate_ip(&want, owner).await {
                    Ok(()) => {
                        obj["spec"]["clusterIPs"] = json!([want]);
                        allocated.ips.push(want);
                    }
                    Err(AllocError::NotInRange(range)) => errs.push(FieldError::invalid_raw(
                        "spec.clusterIPs",
                        format!("[]string{{{want:?}}}"),
                        format!(
                            "failed to allocate IP {want}: the provided IP ({want}) is not in the valid range. The range of valid IPs is {range}"
                        ),
                    )),
                    Err(AllocError::Taken) => errs.push(FieldError::invalid_raw(
                        "spec.clusterIPs",
                        format!("[]string{{{want:?}}}"),
                        format!("failed to allocate IP {want}: provided IP is already allocated"),
                    )),
                    Err(e) => return Err(StatusError::internal(format!("failed to allocate IP {want}: {e:?}"))),
                }
            }
        }
        let wants_node_ports = ty == "NodePort"
            || (ty == "LoadBalancer"
                && obj["spec"]["allocateLoadBalancerNodePorts"] != json!(false));
        let old_ports: Vec<i32> = old
            .map(|o| {
                o["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["nodePort"].as_i64().map(|n| n as i32))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(ports) = obj["spec"]["ports"].as_array_mut() {
            for (i, p) in ports.iter_mut().enumerate() {
                let requested = p["nodePort"].as_i64().map(|n| n as i32).filter(|n| *n != 0);
                if !wants_node_ports {
                    if let Some(m) = p.as_object_mut() {
                        m.remove("nodePort");
                    }
                    continue;
                }
                match requested {
                    Some(np) if old_ports.contains(&np) || allocated.ports.contains(&np) => {}
                    Some(np) => match self.alloc.allocate_port(np, owner).await {
                        Ok(()) => allocated.ports.push(np),
                        Err(AllocError::NotInRange(range)) => errs.push(FieldError::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            np,
                            format!("provided port is not in the valid range. The range of valid ports is {range}"),
                        )),
                        Err(AllocError::Taken) => errs.push(FieldError::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            np,
                            "provided port is already allocated",
                        )),
                        Err(e) => return Err(StatusError::internal(format!("failed to allocate port {np}: {e:?}"))),
                    },
                    None => match self.alloc.allocate_any_port(owner).await {
                        Ok(np) => {
                            p["nodePort"] = json!(np);
                            allocated.ports.push(np);
                        }
                        Err(e) => return Err(StatusError::internal(format!("failed to allocate a nodePort: {e:?}"))),
                    },
                }
            }
        }
        if !errs.is_empty() {
            self.release(allocated).await;
            return Err(invalid(errs));
        }
        Ok(())
    }

    /// Replaces an object (PUT, or the result of a PATCH), or a subresource (`status`).
    #[allow(clippy::too_many_arguments)]
    pub async fn update(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        mut new: Value,
        subresource: Option<&str>,
        opts: &WriteOptions,
        current: Option<(Value, Revision)>,
    ) -> Result<Written, StatusError> {
        let mut warnings = Vec::new();
        let (cur, cur_rev) = match current {
            Some(c) => c,
            None => self.get(res, ns, name).await?,
        };
        // A uid in the new object is a precondition (Kubernetes' DefaultUpdatedObjectInfo).
        let (uid, cur_uid) = (meta::uid(&new), meta::uid(&cur));
        if !uid.is_empty() && uid != cur_uid {
            return Err(StatusError::conflict(
                res.group,
                res.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {cur_uid}"
                ),
            ));
        }
        if let Some(rv) = new["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
            && rv != cur_rev.to_string()
        {
            return Err(StatusError::modified_conflict(res.group, res.plural, name));
        }
        if subresource == Some("status") {
            let status = new.get("status").cloned().unwrap_or(Value::Null);
            new = cur.clone();
            if let Some(m) = new.as_object_mut() {
                m.insert("status".into(), status);
            }
        } else if res.has_status()
            && let Some(m) = new.as_object_mut()
        {
            match cur.get("status") {
                Some(s) => m.insert("status".into(), s.clone()),
                None => m.remove("status"),
            };
        }
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match cur["metadata"].get(k) {
                Some(v) => meta::set(&mut new, k, v.clone()),
                None => meta::remove(&mut new, k),
            }
        }
        meta::set(&mut new, "name", json!(name));
        if let Some(ns) = ns.filter(|_| res.namespaced) {
            meta::set(&mut new, "namespace", json!(ns));
        }
        meta::remove(&mut new, "resourceVersion");
        if let Some(m) = new.as_object_mut() {
            m.insert("apiVersion".into(), json!(res.api_version()));
            m.insert("kind".into(), json!(res.kind));
        }
        let (mut new, mut errors) = self.prepare(res, new, opts, &mut warnings)?;
        errors.extend(typed::validate_update(res.kind, &cur, &new));
        if !errors.is_empty() {
            return Err(StatusError::invalid(res.group, res.kind, name, &errors));
        }
        if spec_part(&new) != spec_part(&cur)
            && let Some(g) = cur["metadata"]["generation"].as_i64()
        {
            meta::set(&mut new, "generation", json!(g + 1));
        }
        let mut cur_cmp = cur.clone();
        meta::remove(&mut cur_cmp, "resourceVersion");
        if new == cur_cmp {
            return Ok(Written {
                object: cur,
                warnings,
                created: false,
            });
        }
        let owner = format!("{}/{}", ns.unwrap_or(""), name);
        let mut allocated = Allocated::default();
        let strategy = strategy::of(res);
        if strategy.allocates && subresource.is_none() && !opts.dry_run {
            self.allocate_service(&mut new, Some(&cur), &owner, &mut allocated)
                .await?;
        }
        if opts.dry_run {
            return Ok(Written {
                object: new,
                warnings,
                created: false,
            });
        }
        let empty = |v: &Value| v.as_array().is_none_or(|f| f.is_empty());
        // A terminating namespace goes when its last finalizer (spec.finalizers, as removed
        // through the finalize subresource) is gone.
        let finalize = !new["metadata"]["deletionTimestamp"].is_null()
            && empty(&new["metadata"]["finalizers"])
            && (strategy.finalized)(&new);
        let key = res.key(ns, name);
        let bytes = serde_json::to_vec(&new).map_err(StatusError::internal)?;
        match self.store.update(&key, bytes, cur_rev).await {
            Ok(kv) => {
                if strategy.allocates {
                    self.release_unused_service_allocations(&cur, &new).await;
                }
                meta::set(
                    &mut new,
                    "resourceVersion",
                    json!(kv.mod_revision.to_string()),
                );
                if finalize {
                    let _ = self.store.delete(&key, Some(kv.mod_revision)).await;
                }
                Ok(Written {
                    object: new,
                    warnings,
                    created: false,
                })
            }
            Err(e) => {
                self.release(&allocated).await;
                Err(store_error(res, name, e))
            }
        }
    }

    async fn release_unused_service_allocations(&self, old: &Value, new: &Value) {
        let ports = |v: &Value| -> Vec<i32> {
            v["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["nodePort"].as_i64().map(|n| n as i32))
                .collect()
        };
        let keep = ports(new);
        for p in ports(old) {
            if !keep.contains(&p) {
                self.alloc.release_port(p).await;
            }
        }
        let old_ip = old["spec"]["clusterIP"].as_str().unwrap_or("");
        if !old_ip.is_empty()
            && old_ip != "None"
            && new["spec"]["clusterIP"].as_str() != Some(old_ip)
        {
            self.alloc.release_ip(old_ip).await;
        }
    }

    /// Applies a patch, retrying on write conflicts unless the patch pins a resourceVersion.
    /// Refused as Kubernetes refuses them, before anything is written: a body that is not a
    /// patch of its type (400), a JSON patch operation that fails (422), a result whose name
    /// or namespace differs from the URL's (400), whose uid, kind or apiVersion changed, or
    /// that does not decode as the kind (422 naming the field), or that fails validation (422).
    /// `check` runs on every patched object before it is written (RBAC's escalation check);
    /// an error from it is the answer and nothing is written.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch_checked(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        patch: &Value,
        ty: PatchType,
        subresource: Option<&str>,
        opts: &WriteOptions,
        check: impl Fn(&Value) -> Result<(), StatusError>,
    ) -> Result<Written, StatusError> {
        xkube_api::patch::check_shape(patch, ty)?;
        self.guaranteed_update(res, ns, name, subresource, opts, |cur, rev| {
            let mut patched = xkube_api::patch::apply(cur, patch, ty)?;
            check_patched(res, ns, name, cur, &mut patched, opts.field_validation)?;
            check(&patched)?;
            let pinned = patched["metadata"]["resourceVersion"].as_str() != Some(&rev.to_string());
            Ok((patched, !pinned))
        })
        .await
    }

    /// Kubernetes' GuaranteedUpdate: reads the object, lets `change` build the new one from
    /// it and its revision, and updates conditionally on that revision. A write conflict
    /// reads again (up to [`WRITE_ATTEMPTS`], after a short random pause; see
    /// [`lost_race_pause`]) while `change` says the write may be retried (the second of its
    /// pair; false when the new object pins a resourceVersion).
    pub async fn guaranteed_update(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        opts: &WriteOptions,
        mut change: impl FnMut(&Value, Revision) -> Result<(Value, bool), StatusError>,
    ) -> Result<Written, StatusError> {
        for attempt in 1..=WRITE_ATTEMPTS {
            let (cur, rev) = self.get(res, ns, name).await?;
            let (next, retry) = change(&cur, rev)?;
            match self
                .update(res, ns, name, next, subresource, opts, Some((cur, rev)))
                .await
            {
                Err(e) if e.reason == "Conflict" && retry && attempt < WRITE_ATTEMPTS => {
                    lost_race_pause(attempt).await
                }
                other => return other,
            }
        }
        Err(StatusError::modified_conflict(res.group, res.plural, name))
    }

    /// Deletes an object with Kubernetes' semantics; returns the final or terminating object
    /// and whether it is gone. For kinds that own dependents
    /// ([`xkube_api::resources::owns_dependents`]), `Orphan` and `Foreground`
    /// (the policy asked for, else the kind's default) mark the object with the garbage
    /// collector's `orphan` or `foregroundDeletion` finalizer: the collector releases or
    /// deletes the dependents, then removes the finalizer, and the object goes.
    /// `Background` removes it now; the collector deletes dependents whose owner is gone.
    pub async fn delete(
        self: &Arc<Self>,
        res: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<(Value, bool), StatusError> {
        let strategy = strategy::of(res);
        let policy = opts.propagation.as_deref().unwrap_or(strategy.propagation);
        let finalizer = match policy {
            "Orphan" => Some(meta::ORPHAN_FINALIZER),
            "Foreground" => Some(meta::FOREGROUND_FINALIZER),
            _ => None,
        };
        match finalizer {
            Some(f) if xkube_api::resources::owns_dependents(res) => {
                self.delete_via_gc(res, ns, name, opts, f).await
            }
            _ => self.delete_leaf(res, ns, name, opts).await,
        }
    }

    /// Marks an object for deletion by the garbage collector: its finalizer `f` and a
    /// deletionTimestamp. An object already being deleted is answered as it is.
    async fn delete_via_gc(
        self: &Arc<Self>,
        res: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
        f: &str,
    ) -> Result<(Value, bool), StatusError> {
        let key = res.key(ns, name);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (mut cur, rev) = self.get(res, ns, name).await?;
            check_delete_preconditions(res, name, &cur, rev, opts)?;
            if opts.dry_run || !cur["metadata"]["deletionTimestamp"].is_null() {
                return Ok((cur, false));
            }
            let finalizers = cur["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !finalizers.iter().any(|x| x == f) {
                let mut finalizers = finalizers;
                finalizers.push(json!(f));
                meta::set(&mut cur, "finalizers", json!(finalizers));
            }
            match self
                .mark_deleting(res, name, &key, rev, cur, Some(0), None)
                .await
            {
                Err(e)
                    if e.reason == "Conflict"
                        && opts.resource_version.is_none()
                        && attempt < WRITE_ATTEMPTS =>
                {
                    lost_race_pause(attempt).await
                }
                r => return r.map(|o| (o, false)),
            }
        }
    }

    /// Deletes one object without touching dependents; `true` when it is gone from the store
    /// (rather than marked for graceful or finalized deletion). As Kubernetes' storage does,
    /// a write that lost a race with another writer (the kubelet updating a pod's status, a
    /// controller adding a label) is retried on the fresh object unless the caller pinned a
    /// resourceVersion: a plain DELETE never answers 409.
    async fn delete_leaf(
        self: &Arc<Self>,
        res: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<(Value, bool), StatusError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.delete_leaf_once(res, ns, name, opts).await {
                Err(e)
                    if e.reason == "Conflict"
                        && opts.resource_version.is_none()
                        && attempt < WRITE_ATTEMPTS
                        && e.message.contains("the object has been modified") =>
                {
                    lost_race_pause(attempt).await
                }
                r => return r,
            }
        }
    }

    async fn delete_leaf_once(
        self: &Arc<Self>,
        res: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<(Value, bool), StatusError> {
        let (cur, rev) = self.get(res, ns, name).await?;
        check_delete_preconditions(res, name, &cur, rev, opts)?;
        if opts.dry_run {
            return Ok((cur, false));
        }
        let key = res.key(ns, name);
        let strategy = strategy::of(res);
        // Namespaces: Terminating, contents removed in the background, then the namespace.
        if strategy.deletion == Deletion::Terminating {
            let first = cur["metadata"]["deletionTimestamp"].is_null();
            let o = self
                .mark_deleting(res, name, &key, rev, cur, None, Some("Terminating"))
                .await?;
            if first {
                let me = self.clone();
                let ns_name = name.to_string();
                tokio::spawn(async move { me.finalize_namespace(&ns_name).await });
            }
            return Ok((o, false));
        }
        // Objects with finalizers wait for them.
        if cur["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
        {
            return Ok((
                self.mark_deleting(res, name, &key, rev, cur, opts.grace_period, None)
                    .await?,
                false,
            ));
        }
        // Pods bound to a node terminate gracefully: the kubelet finishes the deletion.
        if strategy.deletion == Deletion::GracefulOnNode {
            let grace = opts
                .grace_period
                .or_else(|| cur["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30);
            let bound = cur["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty());
            let finished = matches!(
                cur["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            );
            if bound && grace > 0 && !finished {
                return Ok((
                    self.mark_deleting(res, name, &key, rev, cur, Some(grace), None)
                        .await?,
                    false,
                ));
            }
        }
        let kv = self
            .store
            .delete(&key, Some(rev))
            .await
            .map_err(|e| store_error(res, name, e))?;
        let mut gone = cur.clone();
        meta::set(
            &mut gone,
            "resourceVersion",
            json!(kv.mod_revision.to_string()),
        );
        if strategy.allocates {
            let ip = cur["spec"]["clusterIP"].as_str().unwrap_or("");
            if !ip.is_empty() && ip != "None" {
                self.alloc.release_ip(ip).await;
            }
            for p in cur["spec"]["ports"].as_array().into_iter().flatten() {
                if let Some(np) = p["nodePort"].as_i64() {
                    self.alloc.release_port(np as i32).await;
                }
            }
        }
        Ok((gone, true))
    }

    /// Marks `cur` (at revision `rev`) as being deleted, for a deletion that waits (for
    /// finalizers, the kubelet, or a namespace's contents): its deletionTimestamp (now plus
    /// `grace`), the grace period, and `phase` in its status. An object already marked is
    /// answered as it is.
    #[allow(clippy::too_many_arguments)]
    async fn mark_deleting(
        &self,
        res: &ResourceInfo,
        name: &str,
        key: &str,
        rev: Revision,
        mut o: Value,
        grace: Option<i64>,
        phase: Option<&str>,
    ) -> Result<Value, StatusError> {
        if !o["metadata"]["deletionTimestamp"].is_null() {
            return Ok(o);
        }
        let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace.unwrap_or(0));
        meta::set(&mut o, "deletionTimestamp", json!(meta::format_time(at)));
        if let Some(g) = grace {
            meta::set(&mut o, "deletionGracePeriodSeconds", json!(g));
        }
        if let Some(phase) = phase {
            o["status"]["phase"] = json!(phase);
        }
        meta::remove(&mut o, "resourceVersion");
        let bytes = serde_json::to_vec(&o).map_err(StatusError::internal)?;
        let kv = self
            .store
            .update(key, bytes, rev)
            .await
            .map_err(|e| store_error(res, name, e))?;
        meta::set(
            &mut o,
            "resourceVersion",
            json!(kv.mod_revision.to_string()),
        );
        Ok(o)
    }

    /// Removes every object of a terminating namespace, then the namespace.
    pub async fn finalize_namespace(self: &Arc<Self>, ns: &str) {
        for res in xkube_api::RESOURCES
            .iter()
            .filter(|r| r.namespaced && r.persisted())
        {
            for attempt in 0..50 {
                let Ok((kvs, _)) = self.store.list(&res.key_prefix(Some(ns))).await else {
                    break;
                };
                if kvs.is_empty() {
                    break;
                }
                for kv in kvs {
                    let _ = self.store.delete(&kv.key, None).await;
                    if strategy::of(res).allocates
                        && let Some(svc) = decode(&kv, kv.mod_revision)
                    {
                        if let Some(ip) = svc["spec"]["clusterIP"]
                            .as_str()
                            .filter(|i| *i != "None" && !i.is_empty())
                        {
                            self.alloc.release_ip(ip).await;
                        }
                        for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
                            if let Some(np) = p["nodePort"].as_i64() {
                                self.alloc.release_port(np as i32).await;
                            }
                        }
                    }
                }
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        // The contents are gone: that was the `kubernetes` finalizer's job. Other finalizers
        // (spec or metadata) keep the namespace Terminating until their owners remove them.
        let Some(nsres) = xkube_api::resources::find("", "v1", "namespaces") else {
            return;
        };
        let key = nsres.key(None, ns);
        for _ in 0..10 {
            let Ok(Some(kv)) = self.store.get(&key).await else {
                return;
            };
            let Ok(mut o) = serde_json::from_slice::<Value>(&kv.value) else {
                return;
            };
            if let Some(f) = o["spec"]["finalizers"].as_array_mut() {
                f.retain(|x| x != "kubernetes");
            }
            let rest = |v: &Value| v.as_array().is_some_and(|f| !f.is_empty());
            if !rest(&o["spec"]["finalizers"]) && !rest(&o["metadata"]["finalizers"]) {
                let _ = self.store.delete(&key, Some(kv.mod_revision)).await;
                return;
            }
            let Ok(bytes) = serde_json::to_vec(&o) else {
                return;
            };
            match self.store.update(&key, bytes, kv.mod_revision).await {
                Ok(_) => return,
                // Someone else changed it meanwhile: look again.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Namespace state for admission.
    pub async fn namespace_state(&self, ns: &str) -> crate::admission::NamespaceState {
        use crate::admission::NamespaceState;
        match self.store.get(&format!("/registry/namespaces/{ns}")).await {
            Ok(Some(kv)) => match decode(&kv, kv.mod_revision) {
                Some(v) if !v["metadata"]["deletionTimestamp"].is_null() => {
                    NamespaceState::Terminating
                }
                _ => NamespaceState::Active,
            },
            _ => NamespaceState::Missing,
        }
    }
}

/// Checks the result of a patch as Kubernetes' patch handler and update strategy do: the name
/// and namespace must stay those of the URL (400), uid, kind and apiVersion cannot change and
/// the result must decode as the kind (422 with the field), without unknown fields under
/// `fieldValidation=Strict` (422 on `patch`). A namespace on a cluster-scoped object is dropped.
fn check_patched(
    res: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    cur: &Value,
    patched: &mut Value,
    validation: FieldValidation,
) -> Result<(), StatusError> {
    let invalid = |e: FieldError| {
        StatusError::invalid(res.group, res.kind, name, &std::iter::once(e).collect())
    };
    if !patched.is_object() {
        return Err(invalid(FieldError::invalid_raw(
            "patch",
            xkube_api::validation::format_value(patched),
            format!("the patched object must be a {} object", res.kind),
        )));
    }
    let api_version = res.api_version();
    for (field, want) in [("kind", res.kind), ("apiVersion", api_version.as_str())] {
        if let Some(got) = patched.get(field).filter(|v| !v.is_null())
            && got.as_str() != Some(want)
        {
            return Err(invalid(FieldError::invalid(
                field,
                got.clone(),
                format!("field is immutable: the {field} of the object is {want:?}"),
            )));
        }
    }
    let patched_name = meta::name(patched);
    if patched_name != name {
        return Err(StatusError::bad_request(format!(
            "the name of the object ({patched_name}) does not match the name on the URL ({name})"
        )));
    }
    let patched_ns = meta::namespace(patched).to_string();
    match ns.filter(|_| res.namespaced) {
        Some(ns) if !patched_ns.is_empty() && patched_ns != ns => {
            return Err(StatusError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        None if !patched_ns.is_empty() => meta::remove(patched, "namespace"),
        _ => {}
    }
    let uid = meta::uid(patched);
    if !uid.is_empty() && uid != meta::uid(cur) {
        return Err(invalid(FieldError::invalid(
            "metadata.uid",
            uid,
            "field is immutable",
        )));
    }
    match typed::prepare(res.kind, patched.clone(), false) {
        Err(e) => {
            let field = if e.path.is_empty() {
                "patch"
            } else {
                e.path.as_str()
            };
            Err(invalid(FieldError::invalid_raw(field, e.value, e.message)))
        }
        Ok(p) if validation == FieldValidation::Strict && !p.unknown_fields.is_empty() => {
            let list = p
                .unknown_fields
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect::<Vec<_>>()
                .join(", ");
            Err(invalid(FieldError::invalid(
                "patch",
                p.unknown_fields.clone(),
                format!("strict decoding error: {list}"),
            )))
        }
        Ok(_) => Ok(()),
    }
}

#[derive(Default)]
struct Allocated {
    ips: Vec<String>,
    ports: Vec<i32>,
}
