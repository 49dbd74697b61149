//! What the controllers that own pods (replication, daemonset) share: sorting a namespace's
//! pods into owned, orphans to adopt and pods to release; pods from a template with a
//! controller reference; creating and deleting pods with events; and the expectations that
//! hold a controller back until its own creates and deletes show in the cache.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::json;
use xkube_client::{Api, Client, DeleteParams, DynamicObject, Object, Patch, Store};

use crate::error::{Error, Result};
use xkube_api::pod::{controller_of, is_active};
use xkube_client::runtime::{EventRecorder, NORMAL, WARNING, object_ref, split_key};

/// Most pods created or deleted by one reconcile (Kubernetes' burstReplicas).
pub const BURST_REPLICAS: usize = 500;
/// How long unobserved creates/deletes hold back further changes.
pub const EXPECTATIONS_TTL: Duration = Duration::from_secs(60);

/// An object that owns pods: it has a kind, an API version and object metadata.
pub trait Owner: Object + k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> {}

impl<K> Owner for K where K: Object + k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> {}

/// The controller ownerReference pointing at `owner`.
pub fn controller_ref<K: Owner>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::API_VERSION.into(),
        kind: K::KIND.into(),
        name: owner.name().into(),
        uid: owner.uid().into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A pod of `template` named `name` in the owner's namespace, with the template's labels,
/// annotations and spec and a controller reference to `owner` (Kubernetes'
/// `GetPodFromTemplate`).
pub fn pod_from_template<K: Owner>(template: &PodTemplateSpec, owner: &K, name: &str) -> Pod {
    let tmeta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(owner.namespace().into()),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            owner_references: Some(vec![controller_ref(owner)]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// How the pods of a namespace relate to one owner.
#[derive(Debug, Default, PartialEq)]
pub struct Claim {
    /// Pods owned by the owner and matching its selector (those the caller keeps).
    pub owned: Vec<Arc<Pod>>,
    /// Matching active orphans to adopt.
    pub adopt: Vec<Arc<Pod>>,
    /// Owned pods whose labels no longer match: release them.
    pub release: Vec<Arc<Pod>>,
}

/// Sorts the pods of `owner`'s namespace out (pure; Kubernetes' `ClaimPods`): owned pods
/// that `matches` and that `keep` accepts, active orphans that `matches` (none while the
/// owner is being deleted), and owned pods that no longer match. Pods of other controllers
/// are left alone.
pub fn claim<K: Owner>(
    owner: &K,
    pods: &[Arc<Pod>],
    matches: impl Fn(&Pod) -> bool,
    keep: impl Fn(&Pod) -> bool,
) -> Claim {
    let mut c = Claim::default();
    let deleting = owner.metadata().deletion_timestamp.is_some();
    for p in pods {
        if p.namespace() != owner.namespace() {
            continue;
        }
        let matches = matches(p);
        match controller_of(p.metadata.owner_references.as_ref()) {
            Some(r) if r.uid == owner.uid() => {
                if !matches {
                    c.release.push(p.clone());
                } else if keep(p) {
                    c.owned.push(p.clone());
                }
            }
            Some(_) => {}
            None => {
                if matches && is_active(p) && !deleting {
                    c.adopt.push(p.clone());
                }
            }
        }
    }
    c
}

/// Whether `owner`, as the apiserver has it now, is the same object and not being deleted
/// (Kubernetes' `RecheckDeletionTimestamp`, asked before adopting): the cache may not show an
/// orphaning delete yet, and adopting what the garbage collector has just released would get
/// it deleted with the owner.
pub async fn may_adopt<K: Owner>(client: &Client, owner: &K) -> Result<bool> {
    let Some(res) = xkube_api::resources::find_by_kind(K::API_VERSION, K::KIND) else {
        return Ok(false);
    };
    let api = Api::<DynamicObject>::dynamic(client.clone(), res, Some(owner.namespace()));
    match api.get_opt(owner.name()).await {
        Ok(Some(o)) => Ok(xkube_api::meta::uid(&o.0) == owner.uid()
            && o.0["metadata"]["deletionTimestamp"].is_null()),
        Ok(None) => Ok(false),
        Err(e) => Err(Error::api(format!("recheck {} {}", K::KIND, owner.name()))(
            e,
        )),
    }
}

/// What a release that meets a conflict (the pod changed since the cache saw it) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseConflict {
    /// Fail the sync (it is retried with backoff).
    Fail,
    /// Skip the pod; its change queues the next sync.
    Skip,
}

/// Creates and deletes not yet observed in the cache, per controller key.
#[derive(Debug, Default)]
pub struct Expectations {
    inner: Mutex<HashMap<String, Pending>>,
}

#[derive(Debug, Default)]
struct Pending {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    since: Option<Instant>,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records creates and deletes about to be sent for `key`.
    pub fn expect(&self, key: &str, creates: &[String], deletes: &[String]) {
        let mut m = self.lock();
        let p = m.entry(key.to_string()).or_default();
        p.creates.extend(creates.iter().cloned());
        p.deletes.extend(deletes.iter().cloned());
        p.since = Some(Instant::now());
    }

    /// A create or delete that failed will never be observed.
    pub fn lower(&self, key: &str, create: Option<&str>, delete: Option<&str>) {
        let mut m = self.lock();
        if let Some(p) = m.get_mut(key) {
            if let Some(c) = create {
                p.creates.remove(c);
            }
            if let Some(d) = delete {
                p.deletes.remove(d);
            }
        }
    }

    /// Drops everything about `key`.
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Checks the cache: whether every expected create has appeared and every expected
    /// delete has happened (or the expectations expired).
    pub fn satisfied(&self, key: &str, pods: &Store<Pod>) -> bool {
        let mut m = self.lock();
        let Some(p) = m.get_mut(key) else {
            return true;
        };
        let (ns, _) = split_key(key);
        p.creates.retain(|n| pods.get(ns, n).is_none());
        p.deletes.retain(|n| {
            pods.get(ns, n)
                .is_some_and(|pod| pod.metadata.deletion_timestamp.is_none())
        });
        let expired = p.since.is_some_and(|s| s.elapsed() > EXPECTATIONS_TTL);
        if p.creates.is_empty() && p.deletes.is_empty() || expired {
            m.remove(key);
            return true;
        }
        false
    }
}

/// Writes the pods of one controller: creates and deletes with events and expectations,
/// adoption and release. Clones share the expectations.
#[derive(Clone)]
pub struct PodControl {
    client: Client,
    recorder: EventRecorder,
    /// Creates and deletes sent and not yet seen in the cache, per controller key.
    pub expectations: Arc<Expectations>,
}

impl PodControl {
    /// Pod writes through `client`, events through `recorder`.
    pub fn new(client: Client, recorder: EventRecorder) -> Self {
        PodControl {
            client,
            recorder,
            expectations: Arc::new(Expectations::default()),
        }
    }

    /// Releases the pods of `claim.release` and adopts those of `claim.adopt`; returns the
    /// owned pods with the adopted ones. Pods that are gone, or that changed since the cache
    /// saw them (adoption; release per `on_conflict`), are skipped.
    pub async fn adopt_and_release<K: Owner>(
        &self,
        owner: &K,
        claim: &Claim,
        on_conflict: ReleaseConflict,
    ) -> Result<Vec<Arc<Pod>>> {
        let ns = owner.namespace();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        for p in &claim.release {
            let refs: Vec<OwnerReference> = p
                .metadata
                .owner_references
                .iter()
                .flatten()
                .filter(|r| r.uid != owner.uid())
                .cloned()
                .collect();
            let patch = Patch::Merge(json!({"metadata": {
                "ownerReferences": refs, "resourceVersion": p.resource_version()}}));
            match api.patch(p.name(), &patch).await {
                Ok(_) => {
                    tracing::info!(pod = p.name(), "released pod whose labels no longer match")
                }
                Err(e) if e.is_not_found() => {}
                Err(e) if e.is_conflict() && on_conflict == ReleaseConflict::Skip => {}
                Err(e) => return Err(Error::api(format!("release pod {ns}/{}", p.name()))(e)),
            }
        }
        let mut owned = claim.owned.clone();
        if !claim.adopt.is_empty() && !may_adopt(&self.client, owner).await? {
            return Ok(owned);
        }
        for p in &claim.adopt {
            let mut refs = p.metadata.owner_references.clone().unwrap_or_default();
            refs.push(controller_ref(owner));
            let patch = Patch::Merge(json!({"metadata": {
                "ownerReferences": refs, "resourceVersion": p.resource_version()}}));
            match api.patch(p.name(), &patch).await {
                Ok(adopted) => {
                    tracing::info!(pod = p.name(), "adopted orphan pod");
                    owned.push(Arc::new(adopted));
                }
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(Error::api(format!("adopt pod {ns}/{}", p.name()))(e)),
            }
        }
        Ok(owned)
    }

    /// Creates `pods` for the controller of `key` in slow-start batches of 1, 2, 4, ..., so
    /// that a failing create (quota, admission) stops early instead of failing once per pod;
    /// records `SuccessfulCreate`/`FailedCreate` on `owner` and lowers the expectations of
    /// creates that failed or were not sent. Returns the first error.
    pub async fn create<K: Owner>(&self, key: &str, owner: &K, pods: &[Pod]) -> Result<()> {
        if pods.is_empty() {
            return Ok(());
        }
        let ns = owner.namespace();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let obj = object_ref(owner);
        let names: Vec<String> = pods.iter().map(|p| p.name().to_string()).collect();
        self.expectations.expect(key, &names, &[]);
        let mut first_err = None;
        let mut start = 0;
        let mut batch = 1;
        while start < pods.len() {
            let end = (start + batch).min(pods.len());
            let results = join_all(pods[start..end].iter().map(|pod| {
                let api = api.clone();
                async move { (pod.name(), api.create(pod).await) }
            }))
            .await;
            let mut failed = false;
            for (name, r) in results {
                match r {
                    Ok(_) => {
                        self.recorder
                            .record(
                                &obj,
                                NORMAL,
                                "SuccessfulCreate",
                                &format!("Created pod: {name}"),
                            )
                            .await;
                    }
                    Err(e) => {
                        self.expectations.lower(key, Some(name), None);
                        failed = true;
                        self.recorder
                            .record(
                                &obj,
                                WARNING,
                                "FailedCreate",
                                &format!("Error creating: {e}"),
                            )
                            .await;
                        first_err.get_or_insert(Error::api(format!("create pod {ns}/{name}"))(e));
                    }
                }
            }
            if failed {
                for name in &names[end..] {
                    self.expectations.lower(key, Some(name), None);
                }
                break;
            }
            start = end;
            batch *= 2;
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Deletes `victims` for the controller of `key`, records `SuccessfulDelete` on `owner`
    /// and lowers the expectations of deletes that failed (a pod already gone is no error).
    /// Returns the first error.
    pub async fn delete<K: Owner>(&self, key: &str, owner: &K, victims: &[Arc<Pod>]) -> Result<()> {
        if victims.is_empty() {
            return Ok(());
        }
        let ns = owner.namespace();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let obj = object_ref(owner);
        let names: Vec<String> = victims.iter().map(|p| p.name().to_string()).collect();
        self.expectations.expect(key, &[], &names);
        let results = join_all(names.iter().map(|name| {
            let api = api.clone();
            async move { (name, api.delete(name, &DeleteParams::default()).await) }
        }))
        .await;
        let mut first_err = None;
        for (name, r) in results {
            match r {
                Ok(_) => {
                    self.recorder
                        .record(
                            &obj,
                            NORMAL,
                            "SuccessfulDelete",
                            &format!("Deleted pod: {name}"),
                        )
                        .await;
                }
                Err(e) if e.is_not_found() => self.expectations.lower(key, None, Some(name)),
                Err(e) => {
                    self.expectations.lower(key, None, Some(name));
                    first_err.get_or_insert(Error::api(format!("delete pod {ns}/{name}"))(e));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::ReplicationController;

    fn pod(name: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}
        }))
        .expect("pod literal")
    }

    #[test]
    fn expectations_hold_until_creates_and_deletes_are_observed() {
        let mut w: xkube_client::Writer<Pod> = xkube_client::Writer::new();
        let store = w.store();
        let e = Expectations::default();
        assert!(e.satisfied("default/web", &store), "nothing pending");
        e.expect(
            "default/web",
            &["web-aaaaa".into(), "web-bbbbb".into()],
            &["old".into()],
        );
        w.relist([pod("old")]);
        assert!(!e.satisfied("default/web", &store), "creates not seen yet");
        w.apply(xkube_client::Event::Applied(pod("web-aaaaa")));
        e.lower("default/web", Some("web-bbbbb"), None);
        assert!(
            !e.satisfied("default/web", &store),
            "the delete is not seen yet"
        );
        w.apply(xkube_client::Event::Deleted(pod("old")));
        assert!(e.satisfied("default/web", &store));
    }

    #[test]
    fn controller_refs_name_the_owners_kind_and_api_version() {
        let rc: ReplicationController = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "rc-uid"}}))
        .expect("rc literal");
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "kube-system", "uid": "ds-uid"},
            "spec": {"selector": {}, "template": {}}}))
        .expect("ds literal");
        let r = controller_ref(&rc);
        assert_eq!(
            (
                r.api_version.as_str(),
                r.kind.as_str(),
                r.name.as_str(),
                r.uid.as_str()
            ),
            ("v1", "ReplicationController", "web", "rc-uid")
        );
        assert_eq!(
            (r.controller, r.block_owner_deletion),
            (Some(true), Some(true))
        );
        let r = controller_ref(&ds);
        assert_eq!(
            (r.api_version.as_str(), r.kind.as_str()),
            ("apps/v1", "DaemonSet")
        );
        let template: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "agent"}, "annotations": {"a": "b"}, "name": "ignored"},
            "spec": {"containers": [{"name": "c", "image": "agent:1"}]}}))
        .expect("template literal");
        let p = pod_from_template(&template, &ds, "agent-abcde");
        assert_eq!(p.metadata.name.as_deref(), Some("agent-abcde"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(
            p.metadata.labels,
            template.metadata.as_ref().and_then(|m| m.labels.clone())
        );
        assert_eq!(
            p.metadata.annotations,
            template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.clone())
        );
        assert_eq!(p.spec, template.spec);
        assert_eq!(p.metadata.owner_references, Some(vec![controller_ref(&ds)]));
    }
}
