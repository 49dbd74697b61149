//! The serviceaccount controller (a `default` ServiceAccount in every active namespace) and
//! the token controller (a signed token Secret per ServiceAccount, referenced from it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use xkube_client::{Api, Client, DeleteParams, Object, Patch, Store};

use crate::error::{Error, Result};
use xkube_api::satoken::{ANNOTATION_NAME, ANNOTATION_UID, Claims, SECRET_TYPE, Signer};
use xkube_client::runtime::{Controller, Reconciler, Requeue, Seen, WorkQueue, split_key};

/// Name of the account every namespace gets.
pub const DEFAULT_ACCOUNT: &str = "default";

/// Creates the `default` ServiceAccount of every active namespace.
#[derive(Clone)]
pub struct ServiceAccountController {
    client: Client,
    namespaces: Store<Namespace>,
    accounts: Store<ServiceAccount>,
    queue: WorkQueue<String>,
}

impl ServiceAccountController {
    /// A controller over these caches.
    pub fn new(
        client: Client,
        namespaces: Store<Namespace>,
        accounts: Store<ServiceAccount>,
    ) -> Self {
        ServiceAccountController {
            client,
            namespaces,
            accounts,
            queue: WorkQueue::new(),
        }
    }

    /// Watches and reconciles until `shutdown`.
    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        Controller::new(
            "serviceaccount",
            self.clone(),
            self.queue.clone(),
            &shutdown,
        )
        .owns(&self.namespaces, Duration::from_secs(60), |_| true)
        .watches(&self.accounts, |s, q| {
            if let Seen::Object(sa) = s
                && sa.name() == DEFAULT_ACCOUNT
            {
                q.add(sa.namespace().to_string());
            }
        })
        .run(workers)
        .await;
    }
}

impl Reconciler for ServiceAccountController {
    type Error = Error;

    /// Makes sure namespace `ns` has its default account.
    #[tracing::instrument(skip(self), fields(controller = "serviceaccount"))]
    async fn reconcile(&self, ns: &str) -> Result<Requeue> {
        let Some(namespace) = self.namespaces.get("", ns) else {
            return Ok(None);
        };
        if namespace.metadata.deletion_timestamp.is_some()
            || self.accounts.get(ns, DEFAULT_ACCOUNT).is_some()
        {
            return Ok(None);
        }
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(DEFAULT_ACCOUNT.into()),
                namespace: Some(ns.into()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        match Api::<ServiceAccount>::namespaced(self.client.clone(), ns)
            .create(&sa)
            .await
        {
            Ok(_) => {
                tracing::info!(namespace = ns, "created default service account");
                Ok(None)
            }
            Err(e) if e.is_conflict() => Ok(None),
            // The namespace is going away (403 from NamespaceLifecycle) or gone.
            Err(e) if e.is_not_found() || e.status().is_some_and(|s| s.code == 403) => Ok(None),
            Err(e) => Err(Error::api(format!(
                "create default service account in {ns}"
            ))(e)),
        }
    }
}

/// Whether `secret` is a valid token secret of `sa` (pure).
pub fn is_token_of(secret: &Secret, sa: &ServiceAccount) -> bool {
    let ann = secret.metadata.annotations.as_ref();
    secret.type_.as_deref() == Some(SECRET_TYPE)
        && secret.namespace() == sa.namespace()
        && ann.and_then(|a| a.get(ANNOTATION_NAME)).map(String::as_str) == Some(sa.name())
        && ann
            .and_then(|a| a.get(ANNOTATION_UID))
            .is_none_or(|u| u.is_empty() || u == sa.uid())
        && secret
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key("token"))
}

/// Keeps one token Secret per ServiceAccount and deletes tokens of deleted accounts.
#[derive(Clone)]
pub struct TokenController {
    client: Client,
    accounts: Store<ServiceAccount>,
    secrets: Store<Secret>,
    signer: Arc<Signer>,
    root_ca: Option<Vec<u8>>,
    queue: WorkQueue<String>,
}

impl TokenController {
    /// A controller over these caches, signing with `signer`; `root_ca` (PEM) goes into each
    /// secret as `ca.crt`.
    pub fn new(
        client: Client,
        accounts: Store<ServiceAccount>,
        secrets: Store<Secret>,
        signer: Arc<Signer>,
        root_ca: Option<Vec<u8>>,
    ) -> Self {
        TokenController {
            client,
            accounts,
            secrets,
            signer,
            root_ca,
            queue: WorkQueue::new(),
        }
    }

    /// Watches and reconciles until `shutdown`.
    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        Controller::new("token", self.clone(), self.queue.clone(), &shutdown)
            .owns(&self.accounts, Duration::from_secs(60), |_| true)
            .watches(&self.secrets, |s, q| {
                if let Seen::Object(sec) = s
                    && sec.type_.as_deref() == Some(SECRET_TYPE)
                    && let Some(sa) = sec
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(ANNOTATION_NAME))
                {
                    q.add(format!("{}/{sa}", sec.namespace()));
                }
            })
            .run(workers)
            .await;
    }
}

impl Reconciler for TokenController {
    type Error = Error;

    /// Makes sure account `key` has a token secret (or, when the account is gone, that its
    /// tokens are gone).
    #[tracing::instrument(skip(self), fields(controller = "token"))]
    async fn reconcile(&self, key: &str) -> Result<Requeue> {
        let (ns, name) = split_key(key);
        let secret_api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let tokens_named = |sa_name: &str| {
            self.secrets.filter(|s| {
                s.namespace() == ns
                    && s.type_.as_deref() == Some(SECRET_TYPE)
                    && s.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(ANNOTATION_NAME))
                        .map(String::as_str)
                        == Some(sa_name)
            })
        };
        let Some(sa) = self.accounts.get(ns, name) else {
            let tokens = tokens_named(name);
            if tokens.is_empty() {
                return Ok(None);
            }
            // The cache may lag behind an account created just now: ask the apiserver.
            let sa_api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
            match sa_api.get_opt(name).await {
                Ok(None) => {}
                Ok(Some(_)) => return Ok(Some(Duration::from_millis(50))),
                Err(e) => return Err(Error::api(format!("get service account {key}"))(e)),
            }
            for s in tokens {
                match secret_api.delete(s.name(), &DeleteParams::default()).await {
                    Ok(_) | Err(_) => {}
                }
            }
            return Ok(None);
        };
        if sa.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        // Tokens of an older account of the same name.
        for s in tokens_named(name) {
            let uid = s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_UID));
            if uid.is_some_and(|u| !u.is_empty() && u != sa.uid()) {
                let _ = secret_api.delete(s.name(), &DeleteParams::default()).await;
            }
        }
        let refs: Vec<ObjectReference> = sa.secrets.clone().unwrap_or_default();
        let referenced_valid = refs.iter().any(|r| {
            r.name
                .as_deref()
                .and_then(|n| self.secrets.get(ns, n))
                .is_some_and(|s| is_token_of(&s, &sa))
        });
        if referenced_valid {
            return Ok(None);
        }
        let secret_name = match tokens_named(name).into_iter().find(|s| is_token_of(s, &sa)) {
            Some(existing) => existing.name().to_string(),
            None => {
                let secret_name = xkube_api::names::generate(&format!("{name}-token-"));
                let claims = Claims::new(ns, name, sa.uid(), &secret_name);
                let token = self.signer.sign(&claims)?;
                let mut data = BTreeMap::new();
                data.insert("token".to_string(), ByteString(token.into_bytes()));
                data.insert("namespace".to_string(), ByteString(ns.as_bytes().to_vec()));
                if let Some(ca) = &self.root_ca {
                    data.insert("ca.crt".to_string(), ByteString(ca.clone()));
                }
                let mut ann = BTreeMap::new();
                ann.insert(ANNOTATION_NAME.to_string(), name.to_string());
                ann.insert(ANNOTATION_UID.to_string(), sa.uid().to_string());
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(secret_name.clone()),
                        namespace: Some(ns.to_string()),
                        annotations: Some(ann),
                        ..ObjectMeta::default()
                    },
                    type_: Some(SECRET_TYPE.into()),
                    data: Some(data),
                    ..Secret::default()
                };
                match secret_api.create(&secret).await {
                    Ok(_) => tracing::info!(secret = %secret_name, "created token secret"),
                    Err(e) if e.is_not_found() || e.status().is_some_and(|s| s.code == 403) => {
                        return Ok(None);
                    }
                    Err(e) => {
                        return Err(Error::api(format!(
                            "create token secret {ns}/{secret_name}"
                        ))(e));
                    }
                }
                secret_name
            }
        };
        let mut new_refs: Vec<ObjectReference> = refs
            .into_iter()
            .filter(|r| {
                r.name
                    .as_deref()
                    .is_some_and(|n| self.secrets.get(ns, n).is_some())
            })
            .collect();
        new_refs.push(ObjectReference {
            name: Some(secret_name),
            ..ObjectReference::default()
        });
        let patch = Patch::Merge(json!({
            "metadata": {"resourceVersion": sa.resource_version()},
            "secrets": new_refs,
        }));
        match Api::<ServiceAccount>::namespaced(self.client.clone(), ns)
            .patch(name, &patch)
            .await
        {
            Ok(_) => Ok(None),
            Err(e) if e.is_conflict() => Ok(Some(Duration::from_millis(50))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(Error::api(format!(
                "reference token from service account {key}"
            ))(e)),
        }
    }
}
