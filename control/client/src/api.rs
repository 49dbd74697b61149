//! Typed access to one resource: [`Api<K>`] for k8s-openapi types and [`DynamicObject`] for
//! any resource of the registry in `xkube-api`.

use std::fmt::Write as _;
use std::marker::PhantomData;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::{Stream, StreamExt};
use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use xkube_api::ResourceInfo;

use crate::client::{Body, Client};
use crate::error::{ApiStatus, Error, Result};

/// REST coordinates of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiResource {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Version (`v1`).
    pub version: &'static str,
    /// Kind (`Pod`).
    pub kind: &'static str,
    /// Plural (`pods`).
    pub plural: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
}

impl ApiResource {
    /// Coordinates of a k8s-openapi type.
    pub fn of<K: k8s_openapi::Resource + 'static>() -> Self {
        let namespaced = std::any::TypeId::of::<K::Scope>()
            == std::any::TypeId::of::<k8s_openapi::NamespaceResourceScope>();
        ApiResource {
            group: K::GROUP,
            version: K::VERSION,
            kind: K::KIND,
            plural: K::URL_PATH_SEGMENT,
            namespaced,
        }
    }

    /// `apiVersion` (`v1`, `apps/v1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Collection path, in `namespace` when namespaced and given.
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        let root = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace {
            Some(ns) if self.namespaced => format!("{root}/namespaces/{ns}/{}", self.plural),
            _ => format!("{root}/{}", self.plural),
        }
    }
}

impl From<&ResourceInfo> for ApiResource {
    fn from(r: &ResourceInfo) -> Self {
        ApiResource {
            group: r.group,
            version: r.version,
            kind: r.kind,
            plural: r.plural,
            namespaced: r.namespaced,
        }
    }
}

/// What the client needs from an object: its identity.
pub trait Object: Clone + Send + Sync + Serialize + DeserializeOwned + 'static {
    /// `metadata.name` (empty when unset).
    fn name(&self) -> &str;
    /// `metadata.namespace` (empty for cluster-scoped objects).
    fn namespace(&self) -> &str;
    /// `metadata.resourceVersion` (empty when unset).
    fn resource_version(&self) -> &str;
    /// `metadata.uid` (empty when unset).
    fn uid(&self) -> &str;
}

impl<K> Object for K
where
    K: k8s_openapi::Metadata<Ty = ObjectMeta>
        + Clone
        + Send
        + Sync
        + Serialize
        + DeserializeOwned
        + 'static,
{
    fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or("")
    }
    fn namespace(&self) -> &str {
        self.metadata().namespace.as_deref().unwrap_or("")
    }
    fn resource_version(&self) -> &str {
        self.metadata().resource_version.as_deref().unwrap_or("")
    }
    fn uid(&self) -> &str {
        self.metadata().uid.as_deref().unwrap_or("")
    }
}

/// Any object as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DynamicObject(pub Value);

impl Object for DynamicObject {
    fn name(&self) -> &str {
        xkube_api::meta::name(&self.0)
    }
    fn namespace(&self) -> &str {
        xkube_api::meta::namespace(&self.0)
    }
    fn resource_version(&self) -> &str {
        xkube_api::meta::resource_version(&self.0)
    }
    fn uid(&self) -> &str {
        xkube_api::meta::uid(&self.0)
    }
}

/// Parameters of list and watch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListParams {
    /// `labelSelector`.
    pub label_selector: Option<String>,
    /// `fieldSelector`.
    pub field_selector: Option<String>,
    /// `limit` (lists only).
    pub limit: Option<u32>,
    /// `continue` token (lists only).
    pub continue_token: Option<String>,
    /// `timeoutSeconds` (watches: the server closes the stream after it).
    pub timeout_seconds: Option<u32>,
}

impl ListParams {
    /// Selects by label.
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = Some(selector.to_string());
        self
    }

    /// Selects by field.
    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = Some(selector.to_string());
        self
    }

    fn query(&self, out: &mut Vec<(String, String)>) {
        if let Some(s) = self.label_selector.as_ref().filter(|s| !s.is_empty()) {
            out.push(("labelSelector".into(), s.clone()));
        }
        if let Some(s) = self.field_selector.as_ref().filter(|s| !s.is_empty()) {
            out.push(("fieldSelector".into(), s.clone()));
        }
    }
}

/// Kinds of patches.
#[derive(Debug, Clone, PartialEq)]
pub enum Patch {
    /// RFC 7386 JSON merge patch.
    Merge(Value),
    /// RFC 6902 JSON patch (an array of operations).
    Json(Value),
    /// Kubernetes' strategic merge patch.
    Strategic(Value),
}

impl Patch {
    fn body(&self) -> Result<Body> {
        let (ct, v) = match self {
            Patch::Merge(v) => ("application/merge-patch+json", v),
            Patch::Json(v) => ("application/json-patch+json", v),
            Patch::Strategic(v) => ("application/strategic-merge-patch+json", v),
        };
        let mut b = Body::json(v)?;
        b.content_type = ct;
        Ok(b)
    }
}

/// Deletion propagation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropagationPolicy {
    /// Leave dependents.
    Orphan,
    /// Delete dependents in the background.
    Background,
    /// Delete dependents first.
    Foreground,
}

impl PropagationPolicy {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PropagationPolicy::Orphan => "Orphan",
            PropagationPolicy::Background => "Background",
            PropagationPolicy::Foreground => "Foreground",
        }
    }
}

/// Parameters of delete.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeleteParams {
    /// `propagationPolicy`.
    pub propagation_policy: Option<PropagationPolicy>,
    /// `gracePeriodSeconds`.
    pub grace_period_seconds: Option<i64>,
    /// Precondition on the resourceVersion.
    pub precondition_resource_version: Option<String>,
    /// Precondition on the uid (the object is not a newer one of the same name).
    pub precondition_uid: Option<String>,
}

impl DeleteParams {
    fn body(&self) -> Value {
        let mut o = json!({"kind": "DeleteOptions", "apiVersion": "v1"});
        if let Some(p) = self.propagation_policy {
            o["propagationPolicy"] = json!(p.as_str());
        }
        if let Some(g) = self.grace_period_seconds {
            o["gracePeriodSeconds"] = json!(g);
        }
        if let Some(rv) = &self.precondition_resource_version {
            o["preconditions"]["resourceVersion"] = json!(rv);
        }
        if let Some(uid) = &self.precondition_uid {
            o["preconditions"]["uid"] = json!(uid);
        }
        o
    }
}

/// A list answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectList<K> {
    /// The items.
    pub items: Vec<K>,
    /// `metadata.resourceVersion` of the list (where a watch continues).
    pub resource_version: String,
    /// `metadata.continue` (more pages).
    pub continue_token: Option<String>,
}

/// Parameters of the pod `log` subresource.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogParams {
    /// Container (required when the pod has several).
    pub container: Option<String>,
    /// Keep streaming new output.
    pub follow: bool,
    /// Only the last lines.
    pub tail_lines: Option<i64>,
    /// The previous instance of the container.
    pub previous: bool,
    /// Prefix lines with RFC 3339 timestamps.
    pub timestamps: bool,
    /// Only output newer than this many seconds.
    pub since_seconds: Option<i64>,
}

impl LogParams {
    fn query(&self) -> Vec<(String, String)> {
        let mut q = Vec::new();
        if let Some(c) = &self.container {
            q.push(("container".into(), c.clone()));
        }
        if self.follow {
            q.push(("follow".into(), "true".into()));
        }
        if let Some(t) = self.tail_lines {
            q.push(("tailLines".into(), t.to_string()));
        }
        if self.previous {
            q.push(("previous".into(), "true".into()));
        }
        if self.timestamps {
            q.push(("timestamps".into(), "true".into()));
        }
        if let Some(s) = self.since_seconds {
            q.push(("sinceSeconds".into(), s.to_string()));
        }
        q
    }
}

/// One event of a watch stream.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<K> {
    /// An object appeared.
    Added(K),
    /// An object changed.
    Modified(K),
    /// An object went away (its last state).
    Deleted(K),
    /// Progress: the stream is current up to this resourceVersion.
    Bookmark(String),
    /// The server ended the watch with this status (410 = relist).
    Error(ApiStatus),
}

/// Encodes query pairs as `?k=v&k2=v2` (empty when none).
pub fn encode_query(pairs: &[(String, String)]) -> String {
    let mut s = String::new();
    for (k, v) in pairs {
        s.push(if s.is_empty() { '?' } else { '&' });
        let _ = write!(
            s,
            "{}={}",
            k,
            url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
        );
    }
    s
}

fn decode<K: DeserializeOwned>(what: &str, v: Value) -> Result<K> {
    serde_json::from_value(v).map_err(|source| Error::Decode {
        what: what.to_string(),
        source,
    })
}

/// Parses one line of a watch stream.
pub fn parse_watch_line<K: DeserializeOwned>(line: &[u8]) -> Result<WatchEvent<K>> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "type")]
        ty: String,
        object: Value,
    }
    let raw: Raw = serde_json::from_slice(line).map_err(|source| Error::Decode {
        what: "watch event".into(),
        source,
    })?;
    Ok(match raw.ty.as_str() {
        "ADDED" => WatchEvent::Added(decode("watch object", raw.object)?),
        "MODIFIED" => WatchEvent::Modified(decode("watch object", raw.object)?),
        "DELETED" => WatchEvent::Deleted(decode("watch object", raw.object)?),
        "BOOKMARK" => WatchEvent::Bookmark(
            raw.object["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        ),
        "ERROR" => WatchEvent::Error(serde_json::from_value(raw.object).unwrap_or_default()),
        other => {
            return Err(Error::Invalid(format!(
                "unknown watch event type {other:?}"
            )));
        }
    })
}

/// Splits a byte stream into newline-terminated JSON lines and parses each.
pub(crate) fn line_stream<K: DeserializeOwned + Send + 'static>(
    body: impl Stream<Item = reqwest::Result<bytes::Bytes>> + Send + Unpin + 'static,
) -> impl Stream<Item = Result<WatchEvent<K>>> + Send {
    futures::stream::unfold(
        (body, BytesMut::new(), false),
        |(mut body, mut buf, done)| async move {
            if done {
                return None;
            }
            loop {
                if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line = buf.split_to(pos + 1);
                    let line = &line[..pos];
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Some((parse_watch_line(line), (body, buf, false)));
                }
                match body.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(chunk.chunk()),
                    Some(Err(e)) => return Some((Err(Error::Http(e)), (body, buf, true))),
                    None => {
                        if buf.iter().all(u8::is_ascii_whitespace) {
                            return None;
                        }
                        let line = buf.split();
                        return Some((parse_watch_line(&line), (body, buf, true)));
                    }
                }
            }
        },
    )
}

/// Typed access to one resource in one namespace (or all of them, or none).
#[derive(Debug, Clone)]
pub struct Api<K> {
    client: Client,
    resource: ApiResource,
    namespace: Option<String>,
    _k: PhantomData<fn() -> K>,
}

impl<K: Object + k8s_openapi::Resource> Api<K> {
    /// Objects of `K` in `namespace`.
    pub fn namespaced(client: Client, namespace: &str) -> Self {
        Self::with_resource(client, ApiResource::of::<K>(), Some(namespace))
    }

    /// Objects of `K` in the client's default namespace.
    pub fn default_namespaced(client: Client) -> Self {
        let ns = client.default_namespace().to_string();
        Self::namespaced(client, &ns)
    }

    /// Objects of `K` across all namespaces (list and watch), or cluster-scoped objects.
    pub fn all(client: Client) -> Self {
        Self::with_resource(client, ApiResource::of::<K>(), None)
    }
}

impl Api<DynamicObject> {
    /// Any registered resource, as JSON.
    pub fn dynamic(client: Client, resource: &ResourceInfo, namespace: Option<&str>) -> Self {
        Self::with_resource(client, resource.into(), namespace)
    }
}

impl<K: Object> Api<K> {
    /// Access with explicit coordinates.
    pub fn with_resource(client: Client, resource: ApiResource, namespace: Option<&str>) -> Self {
        Api {
            client,
            resource,
            namespace: namespace
                .filter(|_| resource.namespaced)
                .map(str::to_string),
            _k: PhantomData,
        }
    }

    /// The resource.
    pub fn resource(&self) -> &ApiResource {
        &self.resource
    }

    /// The namespace, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Collection path.
    pub fn collection_path(&self) -> String {
        self.resource.collection_path(self.namespace.as_deref())
    }

    /// Path of one object, optionally a subresource.
    pub fn object_path(&self, name: &str, sub: Option<&str>) -> String {
        let mut p = format!("{}/{}", self.collection_path(), name);
        if let Some(s) = sub {
            p.push('/');
            p.push_str(s);
        }
        p
    }

    fn what(&self, name: &str) -> String {
        format!("{} {name}", self.resource.kind)
    }

    /// `GET` one object.
    pub async fn get(&self, name: &str) -> Result<K> {
        let v = self.client.get_json(&self.object_path(name, None)).await?;
        decode(&self.what(name), v)
    }

    /// `GET` one object, `None` when absent.
    pub async fn get_opt(&self, name: &str) -> Result<Option<K>> {
        match self.get(name).await {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `LIST` (one page when `lp.limit` is set, everything otherwise).
    pub async fn list(&self, lp: &ListParams) -> Result<ObjectList<K>> {
        let mut q = Vec::new();
        lp.query(&mut q);
        if let Some(l) = lp.limit {
            q.push(("limit".into(), l.to_string()));
        }
        if let Some(c) = &lp.continue_token {
            q.push(("continue".into(), c.clone()));
        }
        let path = format!("{}{}", self.collection_path(), encode_query(&q));
        let v = self.client.get_json(&path).await?;
        let resource_version = v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let continue_token = v["metadata"]["continue"]
            .as_str()
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        let mut items = Vec::new();
        if let Value::Array(list) = v["items"].clone() {
            items.reserve(list.len());
            for mut it in list {
                // Lists omit kind/apiVersion on items; typed decoding wants them.
                if let Some(m) = it.as_object_mut() {
                    m.entry("kind").or_insert(json!(self.resource.kind));
                    m.entry("apiVersion")
                        .or_insert(json!(self.resource.api_version()));
                }
                items.push(decode(&format!("{} list item", self.resource.kind), it)?);
            }
        }
        Ok(ObjectList {
            items,
            resource_version,
            continue_token,
        })
    }

    /// `POST` a new object.
    pub async fn create(&self, obj: &K) -> Result<K> {
        let body = Body::json(&to_value(obj)?)?;
        let v = self
            .client
            .request_json(Method::POST, &self.collection_path(), Some(body), None)
            .await?;
        decode(&self.what(obj.name()), v)
    }

    /// `PUT` an object (optimistic concurrency on its resourceVersion).
    pub async fn replace(&self, name: &str, obj: &K) -> Result<K> {
        let body = Body::json(&to_value(obj)?)?;
        let v = self
            .client
            .request_json(Method::PUT, &self.object_path(name, None), Some(body), None)
            .await?;
        decode(&self.what(name), v)
    }

    /// `PATCH` an object.
    pub async fn patch(&self, name: &str, patch: &Patch) -> Result<K> {
        let v = self
            .client
            .request_json(
                Method::PATCH,
                &self.object_path(name, None),
                Some(patch.body()?),
                None,
            )
            .await?;
        decode(&self.what(name), v)
    }

    /// `DELETE` an object; returns the answer (the object or a `Status`).
    pub async fn delete(&self, name: &str, dp: &DeleteParams) -> Result<Value> {
        let mut q = Vec::new();
        if let Some(p) = dp.propagation_policy {
            q.push(("propagationPolicy".to_string(), p.as_str().to_string()));
        }
        let path = format!("{}{}", self.object_path(name, None), encode_query(&q));
        self.client
            .request_json(Method::DELETE, &path, Some(Body::json(&dp.body())?), None)
            .await
    }

    /// `GET` the status subresource.
    pub async fn get_status(&self, name: &str) -> Result<K> {
        let v = self
            .client
            .get_json(&self.object_path(name, Some("status")))
            .await?;
        decode(&self.what(name), v)
    }

    /// `PUT` the status subresource.
    pub async fn replace_status(&self, name: &str, obj: &K) -> Result<K> {
        let body = Body::json(&to_value(obj)?)?;
        let v = self
            .client
            .request_json(
                Method::PUT,
                &self.object_path(name, Some("status")),
                Some(body),
                None,
            )
            .await?;
        decode(&self.what(name), v)
    }

    /// `PATCH` the status subresource.
    pub async fn patch_status(&self, name: &str, patch: &Patch) -> Result<K> {
        let v = self
            .client
            .request_json(
                Method::PATCH,
                &self.object_path(name, Some("status")),
                Some(patch.body()?),
                None,
            )
            .await?;
        decode(&self.what(name), v)
    }

    /// `GET` the scale subresource.
    pub async fn get_scale(&self, name: &str) -> Result<k8s_openapi::api::autoscaling::v1::Scale> {
        let v = self
            .client
            .get_json(&self.object_path(name, Some("scale")))
            .await?;
        decode("Scale", v)
    }

    /// Sets `spec.replicas` through the scale subresource.
    pub async fn scale(
        &self,
        name: &str,
        replicas: i32,
    ) -> Result<k8s_openapi::api::autoscaling::v1::Scale> {
        let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
        let v = self
            .client
            .request_json(
                Method::PATCH,
                &self.object_path(name, Some("scale")),
                Some(patch.body()?),
                None,
            )
            .await?;
        decode("Scale", v)
    }

    /// `POST` a binding of pod `name` to `node` (the scheduler's write).
    pub async fn bind(&self, name: &str, node: &str) -> Result<()> {
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": self.namespace.clone().unwrap_or_default()},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        self.client
            .request_json(
                Method::POST,
                &self.object_path(name, Some("binding")),
                Some(Body::json(&binding)?),
                None,
            )
            .await?;
        Ok(())
    }

    /// One watch connection from `resource_version` (`""`/`"0"`: current state first, as
    /// ADDED events). The stream ends when the server closes it; resuming and relisting on
    /// 410 is [`crate::watcher`]'s job.
    pub async fn watch(
        &self,
        lp: &ListParams,
        resource_version: &str,
    ) -> Result<impl Stream<Item = Result<WatchEvent<K>>> + Send + use<K>> {
        let mut q = vec![
            ("watch".to_string(), "1".to_string()),
            ("allowWatchBookmarks".to_string(), "true".to_string()),
        ];
        if !resource_version.is_empty() {
            q.push(("resourceVersion".into(), resource_version.to_string()));
        }
        lp.query(&mut q);
        if let Some(t) = lp.timeout_seconds {
            q.push(("timeoutSeconds".into(), t.to_string()));
        }
        let path = format!("{}{}", self.collection_path(), encode_query(&q));
        let resp = self
            .client
            .send(Method::GET, &path, None, None, None)
            .await?;
        Ok(line_stream(Box::pin(resp.bytes_stream())))
    }

    /// The `log` subresource of pod `name` as a byte stream (ends when the log does, or
    /// never with `follow` until the container stops).
    pub async fn logs(
        &self,
        name: &str,
        lp: &LogParams,
    ) -> Result<impl Stream<Item = Result<bytes::Bytes>> + Send + use<K>> {
        let path = format!(
            "{}{}",
            self.object_path(name, Some("log")),
            encode_query(&lp.query())
        );
        let resp = self
            .client
            .send(Method::GET, &path, None, Some("*/*"), None)
            .await?;
        Ok(resp.bytes_stream().map(|r| r.map_err(Error::Http)))
    }

    /// Polls until `cond` holds for the object (or it is absent and `cond(None)` holds).
    pub async fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        mut cond: impl FnMut(Option<&K>) -> bool,
    ) -> Result<Option<K>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let cur = self.get_opt(name).await?;
            if cond(cur.as_ref()) {
                return Ok(cur);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Invalid(format!(
                    "timed out waiting for the condition on {} {name}",
                    self.resource.plural
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn to_value<K: Serialize>(obj: &K) -> Result<Value> {
    serde_json::to_value(obj).map_err(|source| Error::Decode {
        what: "object".into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Namespace, Pod};

    #[test]
    fn paths_follow_kubernetes_layout() {
        let pods = ApiResource::of::<Pod>();
        assert!(pods.namespaced);
        assert_eq!(
            pods.collection_path(Some("default")),
            "/api/v1/namespaces/default/pods"
        );
        assert_eq!(pods.collection_path(None), "/api/v1/pods");
        let ns = ApiResource::of::<Namespace>();
        assert!(!ns.namespaced);
        assert_eq!(ns.collection_path(Some("x")), "/api/v1/namespaces");
        let jobs = ApiResource::of::<k8s_openapi::api::batch::v1::Job>();
        assert_eq!(
            jobs.collection_path(Some("a")),
            "/apis/batch/v1/namespaces/a/jobs"
        );
        assert_eq!(
            encode_query(&[("labelSelector".into(), "a in (x,y),b!=c".into())]),
            "?labelSelector=a+in+%28x%2Cy%29%2Cb%21%3Dc"
        );
    }

    #[test]
    fn parses_watch_lines() {
        let ev: WatchEvent<Pod> = parse_watch_line(
            br#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","resourceVersion":"5"}}}"#,
        )
        .expect("added");
        assert!(
            matches!(ev, WatchEvent::Added(p) if p.name() == "a" && p.resource_version() == "5")
        );
        let ev: WatchEvent<Pod> = parse_watch_line(
            br#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old"}}"#,
        )
        .expect("error");
        assert!(matches!(ev, WatchEvent::Error(s) if s.code == 410));
        let ev: WatchEvent<Pod> = parse_watch_line(
            br#"{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"9"}}}"#,
        )
        .expect("bookmark");
        assert_eq!(ev, WatchEvent::Bookmark("9".into()));
        assert!(parse_watch_line::<Pod>(b"{").is_err());
    }
}
