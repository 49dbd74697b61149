//! Images as the kubelet's image manager handles them: the pull policy (with Kubernetes'
//! defaults: `:latest` or no tag means `Always`), registry credentials from the pod's
//! `imagePullSecrets` (`kubernetes.io/dockerconfigjson` and `kubernetes.io/dockercfg`; the
//! ServiceAccount admission plugin has already copied the account's), one pull per image at
//! a time on a node (later callers wait for the pull in flight), and a bound on parallel
//! pulls (`--serialize-image-pulls`, `--max-parallel-image-pulls`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine as _;
use futures::{
    FutureExt as _,
    future::{BoxFuture, Shared},
};
use k8s_openapi::api::core::v1::{Container, Secret};
use tokio::sync::Semaphore;

use crate::runtime::{ContainerRuntime, ImageInfo, StartError};

/// Image garbage collection (`--image-gc-high-threshold`, `--image-gc-low-threshold`,
/// `--minimum-image-ttl-duration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// Percent of the image filesystem in use at which collection starts (100: never).
    pub high: u8,
    /// Percent it frees down to.
    pub low: u8,
    /// An image is kept at least this long after the kubelet first saw it.
    pub min_age: Duration,
}

/// What one collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Percent in use when it started.
    pub usage: u64,
    /// Bytes it had to free to reach the low threshold.
    pub wanted: u64,
    pub freed: u64,
    /// The removed images (their first tag, or ID).
    pub removed: Vec<String>,
}

/// `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The container's policy, or Kubernetes' default for its image.
    pub fn of(c: &Container) -> Self {
        match c.image_pull_policy.as_deref() {
            Some("Always") => Self::Always,
            Some("IfNotPresent") => Self::IfNotPresent,
            Some("Never") => Self::Never,
            _ => Self::default_for(c.image.as_deref().unwrap_or_default()),
        }
    }

    /// `Always` for `:latest` or no tag (without a digest), else `IfNotPresent`.
    pub fn default_for(image: &str) -> Self {
        let r = Reference::parse(image);
        if r.digest.is_none() && r.tag.is_none_or(|t| t == "latest") {
            Self::Always
        } else {
            Self::IfNotPresent
        }
    }
}

/// An image reference: `[registry/]path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference<'a> {
    /// The registry host (`docker.io` when the first component is not a host).
    pub registry: &'a str,
    /// The repository path without the registry (`library/nginx` for `nginx`).
    pub path: String,
    /// The name as given, without tag and digest.
    pub name: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

impl<'a> Reference<'a> {
    pub fn parse(image: &'a str) -> Self {
        let (rest, digest) = match image.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (image, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, p))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first, p.to_owned())
            }
            Some(_) => ("docker.io", name.to_owned()),
            None => ("docker.io", format!("library/{name}")),
        };
        Self {
            registry,
            path,
            name,
            tag,
            digest,
        }
    }

    /// The tag or digest to pull (`latest` when there is neither).
    pub fn tag_or_digest(&self) -> &'a str {
        self.digest.or(self.tag).unwrap_or("latest")
    }
}

/// Registry credentials from a pull secret.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credential {
    pub username: String,
    pub password: String,
    /// The registry key of the secret, as written there.
    pub server: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// The registry keys of docker's own configuration for Docker Hub.
fn is_docker_hub(host: &str) -> bool {
    matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

/// Whether the secret's registry key `key` (`https://reg:5000/v1/`, `reg:5000/team`,
/// `docker.io`) covers `r`.
fn key_matches(key: &str, r: &Reference<'_>) -> bool {
    let key = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let (host, path) = key.split_once('/').unwrap_or((key, ""));
    let path = path.trim_end_matches('/');
    let host_ok = host == r.registry || (is_docker_hub(host) && is_docker_hub(r.registry));
    // `/v1` and `/v2` are API paths of old configuration files, not repositories.
    host_ok
        && (path.is_empty()
            || path == "v1"
            || path == "v2"
            || r.path == path
            || r.path.starts_with(&format!("{path}/")))
}

/// The entries of a pull secret: registry key -> (username, password).
fn secret_entries(s: &Secret) -> Vec<(String, String, String)> {
    let data = s.data.as_ref();
    let get = |k: &str| data.and_then(|d| d.get(k)).map(|b| b.0.clone());
    let auths: serde_json::Value = match s.type_.as_deref() {
        Some("kubernetes.io/dockerconfigjson") => get(".dockerconfigjson")
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|v| v["auths"].clone())
            .unwrap_or_default(),
        Some("kubernetes.io/dockercfg") => get(".dockercfg")
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default(),
        _ => serde_json::Value::Null,
    };
    let mut out = Vec::new();
    for (key, entry) in auths.as_object().into_iter().flatten() {
        let mut user = entry["username"].as_str().unwrap_or_default().to_owned();
        let mut pass = entry["password"].as_str().unwrap_or_default().to_owned();
        if let Some(auth) = entry["auth"].as_str()
            && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(auth)
            && let Some((u, p)) = String::from_utf8_lossy(&raw).split_once(':')
        {
            user = u.to_owned();
            pass = p.to_owned();
        }
        if !user.is_empty() {
            out.push((key.clone(), user, pass));
        }
    }
    out
}

/// The credentials of `secrets` for `image`, in the secrets' order.
pub fn credentials_for(image: &str, secrets: &[Secret]) -> Vec<Credential> {
    let r = Reference::parse(image);
    let mut out: Vec<Credential> = Vec::new();
    for s in secrets {
        for (server, username, password) in secret_entries(s) {
            let c = Credential {
                username,
                password,
                server,
            };
            if key_matches(&c.server, &r) && !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// What to do for a container's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The image is there and the policy does not ask for a pull.
    Present(ImageInfo),
    /// Pull it.
    Pull,
    /// It is not there and the policy is `Never`.
    NeverPull,
}

/// A finished pull.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub info: ImageInfo,
    /// The pull itself (after waiting for a pull slot).
    pub took: Duration,
}

type PullFuture = Shared<BoxFuture<'static, Result<Pulled, StartError>>>;

/// The node's image manager.
pub struct ImageManager {
    runtime: Arc<dyn ContainerRuntime>,
    slots: Arc<Semaphore>,
    inflight: Mutex<HashMap<(String, Vec<Credential>), PullFuture>>,
    /// Image ID -> (first seen, last used), as the kubelet observed them.
    seen: Mutex<HashMap<String, (Instant, Instant)>>,
}

impl std::fmt::Debug for ImageManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageManager")
            .field("slots", &self.slots.available_permits())
            .finish_non_exhaustive()
    }
}

impl ImageManager {
    /// At most `parallel` pulls at once (1: serialized, Kubernetes' default).
    pub fn new(runtime: Arc<dyn ContainerRuntime>, parallel: usize) -> Self {
        Self {
            runtime,
            slots: Arc::new(Semaphore::new(parallel.max(1))),
            inflight: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// One garbage collection: when the image filesystem is at least `high` percent full,
    /// removes images no container uses (and not `pinned`, e.g. the pause image), that the
    /// kubelet first saw `min_age` ago or earlier, least recently used first, until it is at
    /// `low` percent. `None` when nothing had to be freed (or the runtime keeps no images).
    pub async fn gc(
        &self,
        policy: &GcPolicy,
        pinned: &[String],
    ) -> crate::error::Result<Option<GcReport>> {
        let Some(fs) = self.runtime.image_fs().await? else {
            return Ok(None);
        };
        let now = Instant::now();
        let mut candidates = Vec::new();
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.retain(|id, _| fs.images.iter().any(|i| &i.id == id));
            for img in &fs.images {
                let e = seen.entry(img.id.clone()).or_insert((now, now));
                if img.in_use {
                    e.1 = now;
                }
                let is_pinned = img.tags.iter().any(|t| {
                    pinned
                        .iter()
                        .any(|p| t == p || t.strip_suffix(":latest") == Some(p.as_str()))
                });
                if !img.in_use && !is_pinned && now.duration_since(e.0) >= policy.min_age {
                    candidates.push((e.1, img.clone()));
                }
            }
        }
        if policy.high >= 100 || fs.capacity == 0 {
            return Ok(None);
        }
        let used = fs.capacity.saturating_sub(fs.available);
        let usage = used * 100 / fs.capacity;
        if usage < u64::from(policy.high) {
            return Ok(None);
        }
        let wanted = used.saturating_sub(fs.capacity * u64::from(policy.low) / 100);
        candidates.sort_by_key(|(last_used, _)| *last_used);
        let mut report = GcReport {
            usage,
            wanted,
            ..GcReport::default()
        };
        for (_, img) in candidates {
            if report.freed >= wanted {
                break;
            }
            self.runtime.remove_image(&img.id).await?;
            report.freed += img.size;
            report
                .removed
                .push(img.tags.first().cloned().unwrap_or(img.id));
        }
        Ok(Some(report))
    }

    /// Decides by the policy and what the runtime has.
    pub async fn plan(&self, image: &str, policy: PullPolicy) -> Result<Plan, StartError> {
        let present = self.runtime.image_status(image).await?;
        Ok(match (policy, present) {
            (PullPolicy::Never, None) => Plan::NeverPull,
            (PullPolicy::Always, _) if self.runtime.pulls_images() => Plan::Pull,
            (_, Some(i)) => Plan::Present(i),
            (PullPolicy::Always | PullPolicy::IfNotPresent, None) => Plan::Pull,
        })
    }

    /// Pulls `image`, trying each credential in turn (anonymously when there are none); a
    /// pull of the same image with the same credentials already under way is joined.
    pub async fn pull(&self, image: &str, creds: Vec<Credential>) -> Result<Pulled, StartError> {
        let key = (image.to_owned(), creds);
        let fut = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            inflight
                .entry(key.clone())
                .or_insert_with(|| {
                    let runtime = self.runtime.clone();
                    let slots = self.slots.clone();
                    let (image, creds) = key.clone();
                    async move {
                        // The semaphore is never closed.
                        let _slot = slots.acquire_owned().await.ok();
                        let t0 = Instant::now();
                        let mut last = None;
                        let attempts: Vec<Option<&Credential>> = if creds.is_empty() {
                            vec![None]
                        } else {
                            creds.iter().map(Some).collect()
                        };
                        for cred in attempts {
                            match runtime.pull_image(&image, cred).await {
                                Ok(info) => {
                                    return Ok(Pulled {
                                        info,
                                        took: t0.elapsed(),
                                    });
                                }
                                Err(e) => last = Some(e),
                            }
                        }
                        Err(last.unwrap_or_else(|| StartError {
                            reason: "ErrImagePull",
                            message: format!("pulling {image:?}: nothing tried"),
                        }))
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        let out = fut.await;
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        out
    }
}

/// A duration as Go prints one truncated to milliseconds (`612ms`, `1.5s`, `1m2.25s`), as
/// the kubelet's `Pulled` event shows it.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (mins, ms) = (ms / 60_000, ms % 60_000);
    let secs = format!("{}.{:03}", ms / 1000, ms % 1000);
    let secs = secs.trim_end_matches('0').trim_end_matches('.');
    if mins > 0 {
        format!("{mins}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_split_into_registry_path_tag_and_digest() {
        let r = Reference::parse("nginx");
        assert_eq!(
            (r.registry, r.path.as_str(), r.name, r.tag, r.digest),
            ("docker.io", "library/nginx", "nginx", None, None)
        );
        let r = Reference::parse("198.18.0.5:5000/team/app:1.2");
        assert_eq!(
            (r.registry, r.path.as_str(), r.name, r.tag),
            (
                "198.18.0.5:5000",
                "team/app",
                "198.18.0.5:5000/team/app",
                Some("1.2")
            )
        );
        let r = Reference::parse("localhost/app@sha256:abc");
        assert_eq!(
            (r.registry, r.tag, r.digest, r.tag_or_digest()),
            ("localhost", None, Some("sha256:abc"), "sha256:abc")
        );
        let r = Reference::parse("reg:5000/app");
        assert_eq!(
            (r.registry, r.tag, r.tag_or_digest()),
            ("reg:5000", None, "latest")
        );
    }

    #[test]
    fn default_policy_is_always_for_latest_or_no_tag_only() {
        for (image, want) in [
            ("nginx", PullPolicy::Always),
            ("nginx:latest", PullPolicy::Always),
            ("reg:5000/nginx", PullPolicy::Always),
            ("nginx:1.27", PullPolicy::IfNotPresent),
            ("nginx@sha256:abc", PullPolicy::IfNotPresent),
            ("nginx:latest@sha256:abc", PullPolicy::IfNotPresent),
        ] {
            assert_eq!(PullPolicy::default_for(image), want, "{image}");
        }
        let c: Container = serde_json::from_value(json!({
            "name": "c", "image": "nginx", "imagePullPolicy": "Never"
        }))
        .expect("container");
        assert_eq!(PullPolicy::of(&c), PullPolicy::Never);
    }

    fn secret(ty: &str, key: &str, v: serde_json::Value) -> Secret {
        use base64::Engine as _;
        let raw = serde_json::to_vec(&v).expect("json");
        serde_json::from_value(json!({
            "metadata": {"name": "s"},
            "type": ty,
            "data": {key: base64::engine::general_purpose::STANDARD.encode(raw)},
        }))
        .expect("secret")
    }

    #[test]
    fn credentials_come_from_both_secret_types_by_registry() {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:pw2");
        let secrets = [
            secret(
                "kubernetes.io/dockerconfigjson",
                ".dockerconfigjson",
                json!({"auths": {
                    "198.18.0.5:5000": {"username": "alice", "password": "pw1"},
                    "other.example:5000": {"username": "x", "password": "y"},
                }}),
            ),
            secret(
                "kubernetes.io/dockercfg",
                ".dockercfg",
                json!({"https://198.18.0.5:5000/v1/": {"auth": auth}}),
            ),
            secret(
                "kubernetes.io/dockerconfigjson",
                ".dockerconfigjson",
                json!({"auths": {"https://index.docker.io/v1/": {"username": "hub", "password": "h"}}}),
            ),
            secret("Opaque", "x", json!({})),
        ];
        let got: Vec<(String, String)> = credentials_for("198.18.0.5:5000/app:1", &secrets)
            .into_iter()
            .map(|c| (c.username, c.password))
            .collect();
        assert_eq!(
            got,
            [("alice".into(), "pw1".into()), ("bob".into(), "pw2".into())]
        );
        let hub = credentials_for("nginx:1.27", &secrets);
        assert_eq!(hub.len(), 1);
        assert_eq!(hub[0].username, "hub");
        assert!(credentials_for("quay.io/app", &secrets).is_empty());
        // A path-scoped key covers that path only.
        let scoped = [secret(
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            json!({"auths": {"reg:5000/team": {"username": "t", "password": "p"}}}),
        )];
        assert_eq!(credentials_for("reg:5000/team/app", &scoped).len(), 1);
        assert!(credentials_for("reg:5000/teamx/app", &scoped).is_empty());
        // Debug output leaves the password out.
        assert!(!format!("{:?}", credentials_for("reg:5000/team/app", &scoped)).contains("\"p\""));
    }

    #[tokio::test]
    async fn one_pull_per_image_at_a_time_and_the_parallel_bound_holds() {
        use crate::runtime::fake::FakeRuntime;
        use std::sync::atomic::Ordering::SeqCst;
        let rt = Arc::new(FakeRuntime::new());
        let m = ImageManager::new(rt.clone(), 1);
        let plan = |image, policy| {
            let m = &m;
            async move { m.plan(image, policy).await.expect("plan") }
        };
        assert_eq!(
            plan("fake/pull-a", PullPolicy::Never).await,
            Plan::NeverPull
        );
        assert_eq!(
            plan("fake/pull-a", PullPolicy::IfNotPresent).await,
            Plan::Pull
        );
        assert_eq!(plan("fake/pull-a", PullPolicy::Always).await, Plan::Pull);
        assert_eq!(plan("fake/present", PullPolicy::Always).await, Plan::Pull);
        assert!(matches!(
            plan("fake/present", PullPolicy::IfNotPresent).await,
            Plan::Present(_)
        ));
        // Three callers of one image: one pull, all get its result.
        let (a, b, c) = tokio::join!(
            m.pull("fake/pull-a", vec![]),
            m.pull("fake/pull-a", vec![]),
            m.pull("fake/pull-a", vec![]),
        );
        for r in [a, b, c] {
            assert_eq!(r.expect("pulled").info.size, 1234);
        }
        assert_eq!(rt.pulls.load(SeqCst), 1);
        assert!(matches!(
            plan("fake/pull-a", PullPolicy::IfNotPresent).await,
            Plan::Present(_)
        ));
        // Serialized (the default): two images never pull at once.
        let (b, c) = tokio::join!(m.pull("fake/pull-b", vec![]), m.pull("fake/pull-c", vec![]));
        b.expect("b");
        c.expect("c");
        assert_eq!(rt.max_parallel_pulls.load(SeqCst), 1);
        // Two at once when allowed.
        let m2 = ImageManager::new(rt.clone(), 2);
        let (d, e) = tokio::join!(
            m2.pull("fake/pull-d", vec![]),
            m2.pull("fake/pull-e", vec![])
        );
        d.expect("d");
        e.expect("e");
        assert_eq!(rt.max_parallel_pulls.load(SeqCst), 2);
        // A failed pull is reported to every caller and not remembered.
        let err = m.pull("fake/missing", vec![]).await.expect_err("missing");
        assert_eq!(err.reason, "ErrImagePull");
        let before = rt.pulls.load(SeqCst);
        let _ = m.pull("fake/missing", vec![]).await;
        assert_eq!(rt.pulls.load(SeqCst), before + 1, "a failure is retried");
    }

    #[tokio::test]
    async fn gc_frees_unused_unpinned_old_enough_images_down_to_the_low_threshold() {
        use crate::runtime::{ImageFs, RuntimeImage, fake::FakeRuntime};
        let img = |id: &str, size: u64, in_use: bool| RuntimeImage {
            id: id.into(),
            tags: vec![format!("example/{id}:1")],
            size,
            in_use,
        };
        let rt = Arc::new(FakeRuntime::new());
        *rt.image_fs.lock().expect("lock") = Some(ImageFs {
            capacity: 100,
            available: 10,
            images: vec![
                img("a", 6, false),
                img("b", 6, false),
                img("c", 6, false),
                img("used", 50, true),
                img("pause", 20, false),
            ],
        });
        let m = ImageManager::new(rt.clone(), 1);
        let pinned = vec!["example/pause:1".to_owned()];
        let young = GcPolicy {
            high: 85,
            low: 80,
            min_age: Duration::from_secs(3600),
        };
        // 90% used, 10 bytes to free, but every unused image is too young: nothing goes and
        // the report says so.
        let r = m.gc(&young, &pinned).await.expect("gc").expect("over");
        assert_eq!((r.usage, r.wanted, r.freed), (90, 10, 0));
        let policy = GcPolicy {
            min_age: Duration::ZERO,
            ..young
        };
        let r = m.gc(&policy, &pinned).await.expect("gc").expect("over");
        assert_eq!(r.freed, 12, "{r:?}");
        assert_eq!(r.removed.len(), 2, "{r:?}");
        let left: Vec<String> = rt
            .image_fs
            .lock()
            .expect("lock")
            .as_ref()
            .expect("fs")
            .images
            .iter()
            .map(|i| i.id.clone())
            .collect();
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(left.contains(&"used".into()) && left.contains(&"pause".into()));
        // Below the high threshold now (78%): nothing to do.
        assert_eq!(m.gc(&policy, &pinned).await.expect("gc"), None);
        // 100 turns it off.
        let off = GcPolicy {
            high: 100,
            ..policy
        };
        assert_eq!(m.gc(&off, &pinned).await.expect("gc"), None);
    }

    #[test]
    fn the_pull_bound_follows_the_flags() {
        let mut o = crate::Options::new("n", "/tmp/x".into());
        assert_eq!(o.parallel_image_pulls().expect("default"), 1);
        o.max_parallel_image_pulls = Some(3);
        assert!(
            o.parallel_image_pulls().is_err(),
            "serialized with a bound > 1"
        );
        o.serialize_image_pulls = false;
        assert_eq!(o.parallel_image_pulls().expect("bound"), 3);
        o.max_parallel_image_pulls = Some(0);
        assert!(o.parallel_image_pulls().is_err());
        o.max_parallel_image_pulls = None;
        assert!(o.parallel_image_pulls().expect("unbounded") > 1000);
    }

    #[test]
    fn durations_print_as_go_does_truncated_to_milliseconds() {
        for (ms, want) in [
            (0, "0s"),
            (612, "612ms"),
            (1000, "1s"),
            (1500, "1.5s"),
            (4370, "4.37s"),
            (62_250, "1m2.25s"),
            (120_000, "2m0s"),
        ] {
            assert_eq!(go_duration(Duration::from_millis(ms)), want, "{ms}");
        }
    }
}
