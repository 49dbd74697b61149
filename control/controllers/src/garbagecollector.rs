//! The garbage collector: owner references kept true, as Kubernetes' GC does it.
//!
//! - A dependent (a pod, a ReplicaSet, a Job, ...) none of whose owners exists any more is
//!   deleted: this is how `propagationPolicy=Background` removes what a deleted owner left,
//!   including a pod its controller created after the owner was gone (cache lag). An owner
//!   the cache does not show is looked up live before anything is deleted; the delete
//!   carries the dependent's uid as a precondition.
//! - A dependent with an owner that is gone and one that is not loses the dangling
//!   reference.
//! - An owner being deleted with the `orphan` finalizer (`propagationPolicy=Orphan`): its
//!   dependents lose their reference to it, then the finalizer goes (and the apiserver
//!   removes the owner).
//! - An owner being deleted with the `foregroundDeletion` finalizer: its dependents are
//!   deleted (owners among them in the foreground too, so a Deployment waits for its
//!   ReplicaSets, which wait for their pods); once none is left the finalizer goes.
//!
//! It watches the kinds of [`xkube_api::resources::GC_OWNERS`] and pods, as JSON, through
//! one cache each. Keys are `<kind index>|<namespace>/<name>`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use xkube_api::meta::{self, FOREGROUND_FINALIZER, ORPHAN_FINALIZER};
use xkube_api::{ResourceInfo, resources};
use xkube_client::runtime::{Controller, Reconciler, Requeue, Seen, WorkQueue};
use xkube_client::{
    Api, Client, DeleteParams, DynamicObject, ListParams, Patch, PropagationPolicy, Reflector,
    Store,
};

use crate::error::{Error, Result};

/// How often every object is looked at again (missed events, owners the cache never saw).
const RESYNC: Duration = Duration::from_secs(60);
/// How often an owner waiting for its dependents to go is looked at again.
const WAIT: Duration = Duration::from_secs(2);

/// One watched kind and its cache.
struct Kind {
    res: &'static ResourceInfo,
    store: Store<DynamicObject>,
}

/// What became of one owner reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnerState {
    /// The owner exists and is not deleting its dependents.
    Solid,
    /// The owner exists and is being deleted in the foreground.
    WaitingForDependents,
    /// No owner with that uid exists.
    Absent,
}

/// The garbage collector.
#[derive(Clone)]
pub struct GarbageCollector {
    client: Client,
    kinds: Arc<Vec<Kind>>,
    queue: WorkQueue<String>,
}

fn finalizers(o: &Value) -> Vec<&str> {
    o["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn deleting(o: &Value) -> bool {
    !o["metadata"]["deletionTimestamp"].is_null()
}

fn owner_refs(o: &Value) -> &[Value] {
    o["metadata"]["ownerReferences"]
        .as_array()
        .map_or(&[], Vec::as_slice)
}

fn refers_to(o: &Value, uid: &str) -> bool {
    owner_refs(o).iter().any(|r| r["uid"] == uid)
}

/// Whether the collector has anything to do with `o`: it has owners, or it is an owner
/// being deleted with one of the collector's finalizers.
fn interesting(o: &Value) -> bool {
    !owner_refs(o).is_empty()
        || (deleting(o)
            && finalizers(o)
                .iter()
                .any(|f| *f == ORPHAN_FINALIZER || *f == FOREGROUND_FINALIZER))
}

impl GarbageCollector {
    /// A collector with its own caches of the watched kinds (started here).
    pub fn new(client: Client, shutdown: &CancellationToken) -> Self {
        let mut kinds = Vec::new();
        let watched = std::iter::once(&("", "pods")).chain(resources::GC_OWNERS);
        for (group, plural) in watched {
            let Some(res) = resources::RESOURCES
                .iter()
                .find(|r| r.group == *group && r.plural == *plural)
            else {
                continue;
            };
            let r = Reflector::new(
                Api::dynamic(client.clone(), res, None),
                ListParams::default(),
            );
            let store = r.store();
            tokio::spawn(r.run(shutdown.clone()));
            kinds.push(Kind { res, store });
        }
        GarbageCollector {
            client,
            kinds: Arc::new(kinds),
            queue: WorkQueue::new(),
        }
    }

    fn kind_of(&self, api_version: &str, kind: &str) -> Option<usize> {
        self.kinds
            .iter()
            .position(|k| k.res.api_version() == api_version && k.res.kind == kind)
    }

    fn key(idx: usize, ns: &str, name: &str) -> String {
        format!("{idx}|{ns}/{name}")
    }

    /// Every watched object that refers to `uid` in namespace `ns`, with its kind index.
    fn dependents(&self, ns: &str, uid: &str) -> Vec<(usize, Arc<DynamicObject>)> {
        let mut out = Vec::new();
        for (i, k) in self.kinds.iter().enumerate() {
            for o in k
                .store
                .filter(|o| meta::namespace(&o.0) == ns && refers_to(&o.0, uid))
            {
                out.push((i, o));
            }
        }
        out
    }

    /// Watches the caches and runs `workers` reconcilers until `shutdown`.
    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        let mut c = Controller::new(
            "garbagecollector",
            self.clone(),
            self.queue.clone(),
            &shutdown,
        );
        for (idx, kind) in self.kinds.iter().enumerate() {
            let me = self.clone();
            let store = kind.store.clone();
            c = c.watches(&kind.store, move |s, q| match s {
                Seen::Object(o) => {
                    let (ns, name) = (meta::namespace(&o.0), meta::name(&o.0));
                    if interesting(&o.0) {
                        q.add(Self::key(idx, ns, name));
                    }
                    // Owners waiting for their dependents hear about each of them.
                    for r in owner_refs(&o.0) {
                        let (av, k) = (
                            r["apiVersion"].as_str().unwrap_or(""),
                            r["kind"].as_str().unwrap_or(""),
                        );
                        if let (Some(i), Some(n)) = (me.kind_of(av, k), r["name"].as_str()) {
                            q.add(Self::key(i, ns, n));
                        }
                    }
                    // A deleted owner: its dependents may now be garbage.
                    if store.get(ns, name).is_none() && idx != 0 {
                        for (i, d) in me.dependents(ns, meta::uid(&o.0)) {
                            q.add(Self::key(i, ns, meta::name(&d.0)));
                        }
                    }
                }
                Seen::All => me.enqueue_all(q),
            });
        }
        let me = self.clone();
        let sd = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RESYNC);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = sd.cancelled() => return,
                    _ = tick.tick() => me.enqueue_all(&me.queue),
                }
            }
        });
        c.run(workers).await;
    }

    fn enqueue_all(&self, q: &WorkQueue<String>) {
        for (i, k) in self.kinds.iter().enumerate() {
            for o in k.store.filter(|o| interesting(&o.0)) {
                q.add(Self::key(i, meta::namespace(&o.0), meta::name(&o.0)));
            }
        }
    }

    fn api(&self, idx: usize, ns: &str) -> Api<DynamicObject> {
        Api::dynamic(self.client.clone(), self.kinds[idx].res, Some(ns))
    }

    /// The state of the owner `r` of an object in `ns`: from the cache, and when the cache
    /// does not show it, from the apiserver. Kinds the collector does not watch are looked
    /// up live too; unknown kinds count as solid (nothing is deleted on a guess).
    async fn owner_state(&self, ns: &str, r: &Value) -> Result<OwnerState> {
        let (av, kind, name, uid) = (
            r["apiVersion"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
            r["uid"].as_str().unwrap_or(""),
        );
        let state = |o: &Value| {
            if meta::uid(o) != uid {
                OwnerState::Absent
            } else if deleting(o) && finalizers(o).contains(&FOREGROUND_FINALIZER) {
                OwnerState::WaitingForDependents
            } else {
                OwnerState::Solid
            }
        };
        let res = match self.kind_of(av, kind) {
            Some(i) => {
                if let Some(o) = self.kinds[i].store.get(ns, name)
                    && meta::uid(&o.0) == uid
                {
                    return Ok(state(&o.0));
                }
                self.kinds[i].res
            }
            None => match resources::find_by_kind(av, kind) {
                Some(res) => res,
                None => return Ok(OwnerState::Solid),
            },
        };
        let ns = res.namespaced.then_some(ns);
        match Api::<DynamicObject>::dynamic(self.client.clone(), res, ns)
            .get_opt(name)
            .await
        {
            Ok(Some(o)) => Ok(state(&o.0)),
            Ok(None) => Ok(OwnerState::Absent),
            Err(e) => Err(Error::api(format!("look up owner {kind} {name}"))(e)),
        }
    }

    /// Deletes `o` (kind `idx`) with `policy`, unless it is a newer object of that name.
    async fn delete(&self, idx: usize, o: &Value, policy: PropagationPolicy) -> Result<()> {
        let (ns, name) = (meta::namespace(o), meta::name(o));
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            precondition_uid: Some(meta::uid(o).to_string()),
            ..DeleteParams::default()
        };
        match self.api(idx, ns).delete(name, &dp).await {
            Ok(_) => {
                tracing::info!(
                    kind = self.kinds[idx].res.kind,
                    namespace = ns,
                    name,
                    ?policy,
                    "garbage collector deleted dependent"
                );
                Ok(())
            }
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(Error::api(format!(
                "delete {} {ns}/{name}",
                self.kinds[idx].res.kind
            ))(e)),
        }
    }

    /// Removes the owner references of `o` whose uid is in `uids`.
    async fn drop_refs(&self, idx: usize, o: &Value, uids: &[&str]) -> Result<()> {
        let (ns, name) = (meta::namespace(o), meta::name(o));
        let refs: Vec<&Value> = owner_refs(o)
            .iter()
            .filter(|r| !uids.iter().any(|u| r["uid"] == *u))
            .collect();
        let patch = Patch::Merge(json!({"metadata": {
            "ownerReferences": refs, "resourceVersion": meta::resource_version(o)}}));
        match self.api(idx, ns).patch(name, &patch).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Error::api(format!(
                "remove owner references of {} {ns}/{name}",
                self.kinds[idx].res.kind
            ))(e)),
        }
    }

    /// Removes finalizer `f` from the owner `o` (kind `idx`); the apiserver then removes an
    /// owner that has no finalizer left.
    async fn remove_finalizer(&self, idx: usize, o: &Value, f: &str) -> Result<()> {
        let (ns, name) = (meta::namespace(o), meta::name(o));
        let rest: Vec<&str> = finalizers(o).into_iter().filter(|x| *x != f).collect();
        let patch = Patch::Merge(json!({"metadata": {
            "finalizers": rest, "resourceVersion": meta::resource_version(o)}}));
        match self.api(idx, ns).patch(name, &patch).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Error::api(format!(
                "remove finalizer {f} of {} {ns}/{name}",
                self.kinds[idx].res.kind
            ))(e)),
        }
    }

    /// An owner being deleted with one of the collector's finalizers.
    async fn finish_owner(&self, idx: usize, o: &Value) -> Result<Requeue> {
        let (ns, uid) = (meta::namespace(o), meta::uid(o));
        let fins = finalizers(o);
        if fins.contains(&ORPHAN_FINALIZER) {
            for (i, d) in self.dependents(ns, uid) {
                self.drop_refs(i, &d.0, &[uid]).await?;
            }
            self.remove_finalizer(idx, o, ORPHAN_FINALIZER).await?;
            return Ok(None);
        }
        if fins.contains(&FOREGROUND_FINALIZER) {
            let deps = self.dependents(ns, uid);
            if deps.is_empty() {
                self.remove_finalizer(idx, o, FOREGROUND_FINALIZER).await?;
                return Ok(None);
            }
            // Each dependent decides by all its owners (Kubernetes' attemptToDeleteItem): one
            // another owner keeps loses the reference, the others are deleted (owners among
            // them in the foreground).
            for (i, d) in deps.iter().filter(|(_, d)| !deleting(&d.0)) {
                self.check_dependent(*i, &d.0).await?;
            }
            return Ok(Some(WAIT));
        }
        Ok(None)
    }

    /// A dependent: deleted when no owner is left, dangling references dropped otherwise.
    async fn check_dependent(&self, idx: usize, o: &Value) -> Result<Requeue> {
        let ns = meta::namespace(o);
        let mut solid = 0;
        let mut waiting = Vec::new();
        let mut absent = Vec::new();
        for r in owner_refs(o) {
            let uid = r["uid"].as_str().unwrap_or("");
            match self.owner_state(ns, r).await? {
                OwnerState::Solid => solid += 1,
                OwnerState::WaitingForDependents => waiting.push(uid),
                OwnerState::Absent => absent.push(uid),
            }
        }
        if solid > 0 {
            // Another owner keeps it: it no longer belongs to the gone ones, nor to those
            // deleting their dependents (they would wait for it forever).
            let drop: Vec<&str> = absent.iter().chain(&waiting).copied().collect();
            if !drop.is_empty() {
                self.drop_refs(idx, o, &drop).await?;
            }
            return Ok(None);
        }
        let waiting = waiting.len();
        if absent.is_empty() && waiting == 0 {
            return Ok(None);
        }
        if deleting(o) {
            return Ok(None);
        }
        // Owners deleted in the foreground wait for this one: take its own dependents first.
        let policy = if waiting > 0 && resources::owns_dependents(self.kinds[idx].res) {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        self.delete(idx, o, policy).await?;
        Ok(None)
    }
}

impl Reconciler for GarbageCollector {
    type Error = Error;

    #[tracing::instrument(skip(self), fields(controller = "garbagecollector"))]
    async fn reconcile(&self, key: &str) -> Result<Requeue> {
        let Some((idx, ns, name)) = key.split_once('|').and_then(|(i, rest)| {
            let (ns, name) = rest.split_once('/')?;
            Some((i.parse::<usize>().ok()?, ns, name))
        }) else {
            return Ok(None);
        };
        let Some(kind) = self.kinds.get(idx) else {
            return Ok(None);
        };
        let Some(obj) = kind.store.get(ns, name) else {
            return Ok(None);
        };
        let o = &obj.0;
        if deleting(o) && interesting(o) && !finalizers(o).is_empty() {
            let requeue = self.finish_owner(idx, o).await?;
            if requeue.is_some() || owner_refs(o).is_empty() {
                return Ok(requeue);
            }
        }
        if owner_refs(o).is_empty() {
            return Ok(None);
        }
        self.check_dependent(idx, o).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_objects_with_owners_or_gc_finalizers_interest_the_collector() {
        assert!(!interesting(&json!({"metadata": {"name": "a"}})));
        assert!(interesting(
            &json!({"metadata": {"ownerReferences": [{"uid": "u"}]}})
        ));
        // A finalizer of someone else's, or one not yet acted on (no deletionTimestamp).
        assert!(!interesting(&json!({"metadata": {
            "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["example.com/x"]}})));
        assert!(!interesting(
            &json!({"metadata": {"finalizers": ["orphan"]}})
        ));
        assert!(interesting(&json!({"metadata": {
            "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["foregroundDeletion"]}})));
    }

    #[test]
    fn references_are_matched_by_uid() {
        let o = json!({"metadata": {"ownerReferences": [{"uid": "a"}, {"uid": "b"}]}});
        assert!(refers_to(&o, "a") && refers_to(&o, "b") && !refers_to(&o, "c"));
    }
}
