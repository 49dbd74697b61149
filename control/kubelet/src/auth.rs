//! Authentication and authorization of kubelet API requests, as Kubernetes' kubelet does them
//! (`pkg/kubelet/server/auth.go`, webhook modes):
//! - **authentication**: a client certificate verified against `--client-ca-file` (CN = user,
//!   O = groups), else a bearer token checked with a `TokenReview` posted to the apiserver
//!   (`--authentication-token-webhook`), else `system:anonymous` when `--anonymous-auth`;
//!   otherwise 401. An invalid token is 401 even with anonymous access on.
//! - **authorization**: each request maps to `nodes/<subresource>` attributes
//!   ([`request_attributes`]); a `SubjectAccessReview` per attribute asks the apiserver
//!   (`--authorization-mode Webhook`), the first allowed one admits the request; otherwise 403
//!   with Kubernetes' message.
//!
//! Results are cached like Kubernetes' defaults: token reviews 2 min, allowed access reviews
//! 5 min, denied ones 30 s. Errors are not cached.

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
    sync::Mutex,
    time::Duration,
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use tokio::time::Instant;
use xkube_client::{Api, Client};

/// How long a token review answer is reused (Kubernetes' `--authentication-token-webhook-cache-ttl`).
pub const TOKEN_TTL: Duration = Duration::from_secs(120);
/// How long an allowed access review is reused (`--authorization-webhook-cache-authorized-ttl`).
pub const ALLOWED_TTL: Duration = Duration::from_secs(300);
/// How long a denied access review is reused (`--authorization-webhook-cache-unauthorized-ttl`).
pub const DENIED_TTL: Duration = Duration::from_secs(30);
/// Entries per cache at which expired ones are dropped; when none has expired, the cache
/// starts over (a flood of distinct tokens cannot grow it without bound).
const CACHE_PRUNE_AT: usize = 4096;

/// Kubelet authorization modes (`--authorization-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthorizationMode {
    /// Ask the apiserver with SubjectAccessReviews.
    #[value(name = "Webhook")]
    Webhook,
    /// Every authenticated request is allowed.
    #[value(name = "AlwaysAllow")]
    AlwaysAllow,
}

/// Who sent a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The identity of a verified client certificate.
    pub fn from_cert(user: String, groups: Vec<String>) -> Self {
        UserInfo {
            name: user,
            groups,
            ..Self::default()
        }
    }

    /// `system:anonymous` in `system:unauthenticated`.
    pub fn anonymous() -> Self {
        UserInfo {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            ..Self::default()
        }
    }
}

/// What a request does, in the API's terms: `verb` on `nodes/<subresource>` of this node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub verb: &'static str,
    pub subresource: &'static str,
}

/// Whether `path` is `prefix` or below it (Kubernetes' `isSubpath`).
fn is_subpath(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|r| r.starts_with('/'))
}

/// The attributes a request is authorized against, tried in order (Kubernetes 1.33 with
/// KubeletFineGrainedAuthz, beta and on): `/stats` -> stats, `/metrics` -> metrics, `/logs`
/// -> log, `/spec` -> spec, `/pods` -> pods then proxy, `/healthz` -> healthz then proxy,
/// everything else (exec, run, attach, portForward, containerLogs) -> proxy. The verb follows
/// the method: GET get, POST create, PUT update, PATCH patch, DELETE delete; except that
/// `/exec`, `/run`, `/attach` and `/portForward` are `create` whatever the method: a
/// WebSocket upgrade is a GET, and `get nodes/proxy` (a metrics scraper's right) must not run
/// commands (the apiserver authorizes `pods/exec` the same way).
pub fn request_attributes(method: &http::Method, path: &str) -> Vec<Attributes> {
    let runs_code = ["/exec/", "/run/", "/attach/", "/portForward/"]
        .iter()
        .any(|p| is_subpath(path, p));
    let verb = match *method {
        _ if runs_code => "create",
        http::Method::POST => "create",
        http::Method::GET => "get",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "",
    };
    let subresources: &[&'static str] = if is_subpath(path, "/stats/") {
        &["stats"]
    } else if is_subpath(path, "/metrics") {
        &["metrics"]
    } else if is_subpath(path, "/logs/") {
        &["log"]
    } else if is_subpath(path, "/spec/") {
        &["spec"]
    } else if is_subpath(path, "/pods") {
        &["pods", "proxy"]
    } else if is_subpath(path, "/healthz") {
        &["healthz", "proxy"]
    } else {
        &["proxy"]
    };
    subresources
        .iter()
        .map(|&subresource| Attributes { verb, subresource })
        .collect()
}

/// Kubernetes' 403 message for a denied request (the last subresource tried).
pub fn forbidden_message(user: &str, attrs: &[Attributes]) -> String {
    let verb = attrs.first().map_or("", |a| a.verb);
    let sub = attrs.last().map_or("", |a| a.subresource);
    format!("Forbidden (user={user}, verb={verb}, resource=nodes, subresource={sub})")
}

/// Why a request was not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No (valid) credentials: 401.
    Unauthenticated,
    /// Authenticated but not allowed: 403 with this message.
    Forbidden(String),
    /// The apiserver could not be asked: 500 with this message.
    AuthorizationError(String),
}

/// A small map whose entries expire.
struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    fn new() -> Self {
        TtlCache {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, k: &K) -> Option<V> {
        let m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        m.get(k)
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, k: K, v: V, ttl: Duration) {
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if m.len() >= CACHE_PRUNE_AT {
            m.retain(|_, (until, _)| now < *until);
            if m.len() >= CACHE_PRUNE_AT {
                m.clear();
            }
        }
        m.insert(k, (now + ttl, v));
    }
}

/// The kubelet API's authenticator and authorizer.
pub struct Auth {
    node_name: String,
    anonymous: bool,
    /// The apiserver for TokenReviews; `None`: bearer tokens are not accepted.
    token_webhook: Option<Client>,
    /// The apiserver for SubjectAccessReviews; `None`: AlwaysAllow.
    authz_webhook: Option<Client>,
    tokens: TtlCache<String, Option<UserInfo>>,
    reviews: TtlCache<(UserInfo, Attributes), bool>,
}

impl Auth {
    /// `client` is the kubelet's own client of the apiserver.
    pub fn new(
        node_name: &str,
        anonymous: bool,
        token_webhook: bool,
        mode: AuthorizationMode,
        client: &Client,
    ) -> Self {
        Auth {
            node_name: node_name.to_owned(),
            anonymous,
            token_webhook: token_webhook.then(|| client.clone()),
            authz_webhook: (mode == AuthorizationMode::Webhook).then(|| client.clone()),
            tokens: TtlCache::new(),
            reviews: TtlCache::new(),
        }
    }

    /// Who sent the request: the client certificate's user, else the bearer token's (from
    /// the `Authorization` header value), else anonymous when allowed.
    pub async fn authenticate(
        &self,
        cert_user: Option<UserInfo>,
        authorization: Option<&str>,
    ) -> Result<UserInfo, Denied> {
        if let Some(u) = cert_user {
            return Ok(u);
        }
        let token = authorization.and_then(|h| {
            let (scheme, token) = h.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim())
                .filter(|t| !t.is_empty())
        });
        match (token, &self.token_webhook) {
            (Some(t), Some(client)) => self.review_token(client, t).await,
            // A token nobody checks is not a credential; anonymous still needs allowing.
            _ if self.anonymous => Ok(UserInfo::anonymous()),
            _ => Err(Denied::Unauthenticated),
        }
    }

    async fn review_token(&self, client: &Client, token: &str) -> Result<UserInfo, Denied> {
        if let Some(cached) = self.tokens.get(&token.to_owned()) {
            return cached.ok_or(Denied::Unauthenticated);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let answer = match Api::<TokenReview>::all(client.clone())
            .create(&review)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                // Kubernetes answers 401 when the token cannot be checked.
                tracing::warn!(error = %e, "token review failed");
                return Err(Denied::Unauthenticated);
            }
        };
        let status = answer.status.unwrap_or_default();
        let user = (status.authenticated == Some(true))
            .then(|| status.user.unwrap_or_default())
            .map(|u| UserInfo {
                name: u.username.unwrap_or_default(),
                uid: u.uid.unwrap_or_default(),
                groups: u.groups.unwrap_or_default(),
                extra: u.extra.unwrap_or_default(),
            })
            .filter(|u| !u.name.is_empty());
        self.tokens.put(token.to_owned(), user.clone(), TOKEN_TTL);
        user.ok_or(Denied::Unauthenticated)
    }

    /// Whether `user` may do what `attrs` describe: allowed when any attribute is.
    pub async fn authorize(&self, user: &UserInfo, attrs: &[Attributes]) -> Result<(), Denied> {
        let Some(client) = &self.authz_webhook else {
            return Ok(());
        };
        for a in attrs {
            if self.review_access(client, user, a).await? {
                return Ok(());
            }
        }
        Err(Denied::Forbidden(forbidden_message(&user.name, attrs)))
    }

    async fn review_access(
        &self,
        client: &Client,
        user: &UserInfo,
        a: &Attributes,
    ) -> Result<bool, Denied> {
        let key = (user.clone(), a.clone());
        if let Some(allowed) = self.reviews.get(&key) {
            return Ok(allowed);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: Some(user.uid.clone()).filter(|u| !u.is_empty()),
                groups: Some(user.groups.clone()),
                extra: Some(user.extra.clone()).filter(|e| !e.is_empty()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(a.verb.to_owned()),
                    group: Some(String::new()),
                    version: Some("v1".into()),
                    resource: Some("nodes".into()),
                    subresource: Some(a.subresource.to_owned()),
                    name: Some(self.node_name.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(client.clone())
            .create(&review)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "subject access review failed");
                Denied::AuthorizationError(format!(
                    "Authorization error (user={}, verb={}, resource=nodes, subresource={})",
                    user.name, a.verb, a.subresource
                ))
            })?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        let ttl = if allowed { ALLOWED_TTL } else { DENIED_TTL };
        self.reviews.put(key, allowed, ttl);
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use axum::{Json, Router, extract::State, routing::post};
    use serde_json::{Value, json};

    use super::*;

    fn attrs(method: http::Method, path: &str) -> Vec<(&'static str, &'static str)> {
        request_attributes(&method, path)
            .into_iter()
            .map(|a| (a.verb, a.subresource))
            .collect()
    }

    #[test]
    fn requests_map_to_node_subresources_like_kubernetes() {
        use http::Method;
        assert_eq!(attrs(Method::GET, "/stats/summary"), [("get", "stats")]);
        assert_eq!(attrs(Method::GET, "/stats"), [("get", "stats")]);
        assert_eq!(attrs(Method::GET, "/metrics"), [("get", "metrics")]);
        assert_eq!(
            attrs(Method::GET, "/metrics/cadvisor"),
            [("get", "metrics")]
        );
        assert_eq!(attrs(Method::GET, "/logs/syslog"), [("get", "log")]);
        assert_eq!(attrs(Method::GET, "/spec/"), [("get", "spec")]);
        assert_eq!(
            attrs(Method::GET, "/pods"),
            [("get", "pods"), ("get", "proxy")]
        );
        assert_eq!(
            attrs(Method::GET, "/healthz"),
            [("get", "healthz"), ("get", "proxy")]
        );
        assert_eq!(
            attrs(Method::POST, "/exec/default/p/c"),
            [("create", "proxy")]
        );
        assert_eq!(
            attrs(Method::POST, "/run/default/p/c"),
            [("create", "proxy")]
        );
        assert_eq!(
            attrs(Method::GET, "/containerLogs/default/p/c"),
            [("get", "proxy")]
        );
        // Streaming paths run code or reach into the pod: `create` for every method.
        assert_eq!(
            attrs(Method::GET, "/exec/default/p/c"),
            [("create", "proxy")]
        );
        assert_eq!(attrs(Method::PUT, "/attach/x"), [("create", "proxy")]);
        assert_eq!(attrs(Method::GET, "/portForward/x"), [("create", "proxy")]);
        assert_eq!(attrs(Method::DELETE, "/x"), [("delete", "proxy")]);
        // Prefixes match whole segments only.
        assert_eq!(attrs(Method::GET, "/podsx"), [("get", "proxy")]);
        assert_eq!(attrs(Method::GET, "/statsx"), [("get", "proxy")]);
    }

    #[tokio::test]
    async fn caches_expire_and_stay_bounded() {
        let c: TtlCache<usize, bool> = TtlCache::new();
        c.put(0, true, Duration::from_secs(10));
        assert_eq!(c.get(&0), Some(true));
        assert_eq!(c.get(&1), None);
        for k in 1..=CACHE_PRUNE_AT {
            c.put(k, true, Duration::from_secs(10));
        }
        let len = c.entries.lock().expect("lock").len();
        assert!(len <= CACHE_PRUNE_AT, "{len} entries");
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(c.get(&CACHE_PRUNE_AT), None, "expired");
    }

    #[test]
    fn forbidden_message_is_kubernetes_wording() {
        let a = request_attributes(&http::Method::POST, "/exec/default/p/c");
        assert_eq!(
            forbidden_message("system:serviceaccount:default:x", &a),
            "Forbidden (user=system:serviceaccount:default:x, verb=create, resource=nodes, subresource=proxy)"
        );
    }

    /// A stand-in apiserver: `tok-alice` is alice in `devs`, every other token is invalid;
    /// alice may `get nodes/pods` of node n1 and nothing else. Counts the reviews.
    #[derive(Default)]
    struct Fake {
        token_reviews: AtomicUsize,
        access_reviews: AtomicUsize,
        seen: Mutex<Vec<Value>>,
    }

    async fn token_review(State(f): State<Arc<Fake>>, Json(body): Json<Value>) -> Json<Value> {
        f.token_reviews.fetch_add(1, Ordering::SeqCst);
        let ok = body["spec"]["token"] == "tok-alice";
        let mut answer = body.clone();
        answer["status"] = if ok {
            json!({"authenticated": true,
                   "user": {"username": "alice", "uid": "u-1", "groups": ["devs"]}})
        } else {
            json!({"authenticated": false, "error": "invalid token"})
        };
        Json(answer)
    }

    async fn access_review(State(f): State<Arc<Fake>>, Json(body): Json<Value>) -> Json<Value> {
        f.access_reviews.fetch_add(1, Ordering::SeqCst);
        f.seen.lock().expect("seen").push(body.clone());
        let spec = &body["spec"];
        let ra = &spec["resourceAttributes"];
        let allowed = spec["user"] == "alice"
            && ra["verb"] == "get"
            && ra["resource"] == "nodes"
            && ra["subresource"] == "pods"
            && ra["name"] == "n1";
        let mut answer = body.clone();
        answer["status"] = json!({"allowed": allowed});
        Json(answer)
    }

    async fn fake_apiserver() -> (Client, Arc<Fake>) {
        let fake = Arc::new(Fake::default());
        let app = Router::new()
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                post(token_review),
            )
            .route(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                post(access_review),
            )
            .with_state(fake.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).await {
                panic!("fake apiserver: {e}");
            }
        });
        let client =
            Client::new(&xkube_client::Config::new(format!("http://{addr}"))).expect("client");
        (client, fake)
    }

    #[tokio::test]
    async fn certificates_tokens_and_anonymous_requests_authenticate_in_that_order() {
        let (client, fake) = fake_apiserver().await;
        let auth = Auth::new("n1", false, true, AuthorizationMode::Webhook, &client);
        let cert = UserInfo::from_cert("system:node:n1".into(), vec!["system:nodes".into()]);
        assert_eq!(
            auth.authenticate(Some(cert.clone()), Some("Bearer tok-alice"))
                .await,
            Ok(cert)
        );
        assert_eq!(fake.token_reviews.load(Ordering::SeqCst), 0);
        let alice = auth
            .authenticate(None, Some("Bearer tok-alice"))
            .await
            .expect("valid token");
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.uid, "u-1");
        assert_eq!(alice.groups, ["devs"]);
        assert_eq!(
            auth.authenticate(None, Some("Bearer nope")).await,
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            auth.authenticate(None, None).await,
            Err(Denied::Unauthenticated),
            "anonymous is off by default"
        );
        assert_eq!(
            auth.authenticate(None, Some("Basic YTpi")).await,
            Err(Denied::Unauthenticated)
        );

        let open = Auth::new("n1", true, true, AuthorizationMode::Webhook, &client);
        assert_eq!(
            open.authenticate(None, None).await,
            Ok(UserInfo::anonymous())
        );
        assert_eq!(
            open.authenticate(None, Some("Bearer nope")).await,
            Err(Denied::Unauthenticated),
            "an invalid token is not anonymous"
        );

        let no_webhook = Auth::new("n1", false, false, AuthorizationMode::Webhook, &client);
        let before = fake.token_reviews.load(Ordering::SeqCst);
        assert_eq!(
            no_webhook
                .authenticate(None, Some("Bearer tok-alice"))
                .await,
            Err(Denied::Unauthenticated)
        );
        assert_eq!(fake.token_reviews.load(Ordering::SeqCst), before);
    }

    /// Moves the tokio clock forward by `d` (the caches' clock) between requests. Paused only
    /// for the jump: while requests are in flight a paused clock would fire the client's
    /// connect timeout.
    async fn skip(d: Duration) {
        tokio::time::pause();
        tokio::time::advance(d).await;
        tokio::time::resume();
    }

    #[tokio::test]
    async fn token_reviews_are_cached_for_two_minutes() {
        let (client, fake) = fake_apiserver().await;
        let auth = Auth::new("n1", false, true, AuthorizationMode::Webhook, &client);
        for _ in 0..3 {
            auth.authenticate(None, Some("Bearer tok-alice"))
                .await
                .expect("alice");
            let _ = auth.authenticate(None, Some("Bearer nope")).await;
        }
        assert_eq!(fake.token_reviews.load(Ordering::SeqCst), 2);
        skip(TOKEN_TTL + Duration::from_secs(1)).await;
        auth.authenticate(None, Some("Bearer tok-alice"))
            .await
            .expect("alice");
        assert_eq!(fake.token_reviews.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn access_reviews_fall_back_to_proxy_and_cache_allowed_longer_than_denied() {
        let (client, fake) = fake_apiserver().await;
        let auth = Auth::new("n1", false, true, AuthorizationMode::Webhook, &client);
        let alice = auth
            .authenticate(None, Some("Bearer tok-alice"))
            .await
            .expect("alice");
        let pods = request_attributes(&http::Method::GET, "/pods");
        let exec = request_attributes(&http::Method::POST, "/exec/default/p/c");
        assert_eq!(auth.authorize(&alice, &pods).await, Ok(()));
        {
            let seen = fake.seen.lock().expect("seen");
            let ra = &seen[0]["spec"]["resourceAttributes"];
            assert_eq!(seen[0]["kind"], "SubjectAccessReview");
            assert_eq!(seen[0]["spec"]["groups"], json!(["devs"]));
            assert_eq!(seen[0]["spec"]["uid"], "u-1");
            assert_eq!(
                ra,
                &json!({"verb": "get", "group": "", "version": "v1", "resource": "nodes",
                        "subresource": "pods", "name": "n1"})
            );
        }
        assert_eq!(
            auth.authorize(&alice, &exec).await,
            Err(Denied::Forbidden(
                "Forbidden (user=alice, verb=create, resource=nodes, subresource=proxy)".into()
            ))
        );
        assert_eq!(fake.access_reviews.load(Ordering::SeqCst), 2);
        // Both answers come from the cache for 30 s.
        auth.authorize(&alice, &pods).await.expect("cached allow");
        auth.authorize(&alice, &exec)
            .await
            .expect_err("cached deny");
        assert_eq!(fake.access_reviews.load(Ordering::SeqCst), 2);
        // After 30 s the denial is asked again, the allowance is not.
        skip(DENIED_TTL + Duration::from_secs(1)).await;
        auth.authorize(&alice, &pods).await.expect("cached allow");
        auth.authorize(&alice, &exec)
            .await
            .expect_err("denied again");
        assert_eq!(fake.access_reviews.load(Ordering::SeqCst), 3);
        // After 5 min the allowance is asked again too.
        skip(ALLOWED_TTL).await;
        auth.authorize(&alice, &pods).await.expect("allowed again");
        assert_eq!(fake.access_reviews.load(Ordering::SeqCst), 4);

        // /pods falls back to nodes/proxy: a user allowed only that gets through.
        let bob = UserInfo::from_cert("bob".into(), vec![]);
        assert!(matches!(
            auth.authorize(&bob, &pods).await,
            Err(Denied::Forbidden(m)) if m == "Forbidden (user=bob, verb=get, resource=nodes, subresource=proxy)"
        ));
        let subs: Vec<String> = fake
            .seen
            .lock()
            .expect("seen")
            .iter()
            .rev()
            .take(2)
            .map(|r| r["spec"]["resourceAttributes"]["subresource"].to_string())
            .collect();
        assert_eq!(subs, ["\"proxy\"", "\"pods\""], "pods first, then proxy");

        let always = Auth::new("n1", false, true, AuthorizationMode::AlwaysAllow, &client);
        let before = fake.access_reviews.load(Ordering::SeqCst);
        assert_eq!(always.authorize(&bob, &exec).await, Ok(()));
        assert_eq!(fake.access_reviews.load(Ordering::SeqCst), before);
    }

    #[tokio::test]
    async fn an_unreachable_apiserver_is_an_authorization_error_not_an_allowance() {
        // Port 1 on loopback: nothing listens.
        let client = Client::new(&xkube_client::Config::new("http://127.0.0.1:1")).expect("client");
        let auth = Auth::new("n1", false, true, AuthorizationMode::Webhook, &client);
        let u = UserInfo::from_cert("alice".into(), vec![]);
        let exec = request_attributes(&http::Method::POST, "/exec/default/p/c");
        assert!(matches!(
            auth.authorize(&u, &exec).await,
            Err(Denied::AuthorizationError(_))
        ));
        assert_eq!(
            auth.authenticate(None, Some("Bearer t")).await,
            Err(Denied::Unauthenticated)
        );
    }
}
