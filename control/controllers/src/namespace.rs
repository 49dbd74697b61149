//! The namespace controller: a namespace being deleted is `Terminating`; every namespaced
//! object inside is deleted through the API, the `kubernetes` finalizer is removed through
//! the `finalize` subresource, and the namespace goes once no finalizer is left.

use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::Namespace;
use tokio_util::sync::CancellationToken;
use xkube_client::client::Body;
use xkube_client::{Api, Client, DeleteParams, ListParams, Object, PropagationPolicy, Store};

use crate::error::{Error, Result};
use xkube_client::runtime::{Controller, Reconciler, Requeue, WorkQueue};

/// The finalizer this controller owns.
pub const FINALIZER: &str = "kubernetes";

/// Finalizers left once this controller has removed its own (pure).
pub fn remaining_finalizers(ns: &Namespace) -> Vec<String> {
    ns.spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f != FINALIZER)
        .collect()
}

/// The namespace controller.
#[derive(Clone)]
pub struct NamespaceController {
    client: Client,
    namespaces: Store<Namespace>,
    queue: WorkQueue<String>,
}

impl NamespaceController {
    /// A controller over this cache.
    pub fn new(client: Client, namespaces: Store<Namespace>) -> Self {
        NamespaceController {
            client,
            namespaces,
            queue: WorkQueue::new(),
        }
    }

    /// Watches namespaces and runs `workers` reconcilers until `shutdown`.
    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        Controller::new("namespace", self.clone(), self.queue.clone(), &shutdown)
            .owns(&self.namespaces, Duration::from_secs(60), |n| {
                n.metadata.deletion_timestamp.is_some()
            })
            .run(workers)
            .await;
    }
}

impl Reconciler for NamespaceController {
    type Error = Error;

    /// Empties and finalizes one terminating namespace.
    #[tracing::instrument(skip(self), fields(controller = "namespace"))]
    async fn reconcile(&self, name: &str) -> Result<Requeue> {
        let Some(ns) = self.namespaces.get("", name) else {
            return Ok(None);
        };
        if ns.metadata.deletion_timestamp.is_none() {
            return Ok(None);
        }
        let mut remaining = 0usize;
        for res in xkube_api::RESOURCES
            .iter()
            .filter(|r| r.namespaced && r.persisted())
        {
            let api = Api::dynamic(self.client.clone(), res, Some(name));
            let list = match api.list(&ListParams::default()).await {
                Ok(l) => l,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(Error::api(format!("list {} in {name}", res.plural))(e)),
            };
            for obj in list.items {
                remaining += 1;
                if !obj.0["metadata"]["deletionTimestamp"].is_null() {
                    continue;
                }
                // Background, as Kubernetes' namespace controller: the contents go now,
                // whatever a kind's default policy (not waiting for the garbage collector).
                let dp = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..DeleteParams::default()
                };
                match api.delete(obj.name(), &dp).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => remaining -= 1,
                    Err(e) => {
                        return Err(Error::api(format!(
                            "delete {} {name}/{}",
                            res.plural,
                            obj.name()
                        ))(e));
                    }
                }
            }
        }
        if remaining > 0 {
            tracing::debug!(namespace = name, remaining, "waiting for contents to go");
            return Ok(Some(Duration::from_millis(500)));
        }
        let has_ours = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| f.iter().any(|f| f == FINALIZER));
        if has_ours {
            let mut body = serde_json::to_value(&*ns).map_err(|source| Error::Encode {
                what: "namespace",
                source,
            })?;
            body["spec"]["finalizers"] = serde_json::json!(remaining_finalizers(&ns));
            let path = format!("/api/v1/namespaces/{name}/finalize");
            let b = Body::json(&body).map_err(Error::api("encode finalize"))?;
            match self
                .client
                .request_json(Method::PUT, &path, Some(b), None)
                .await
            {
                Ok(_) => tracing::info!(namespace = name, "namespace finalized"),
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) if e.is_conflict() => return Ok(Some(Duration::from_millis(100))),
                Err(e) => return Err(Error::api(format!("finalize namespace {name}"))(e)),
            }
        }
        if !remaining_finalizers(&ns).is_empty() {
            // Someone else's finalizer: wait for them.
            return Ok(Some(Duration::from_secs(5)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_finalizer_is_removed() {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x"}, "spec": {"finalizers": ["kubernetes", "example.com/backup"]}
        }))
        .expect("namespace literal");
        assert_eq!(remaining_finalizers(&ns), ["example.com/backup"]);
    }
}
