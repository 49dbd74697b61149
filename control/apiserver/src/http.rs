//! HTTP front end: routing of Kubernetes paths, authentication, authorization, admission,
//! content negotiation (JSON, YAML, Table), discovery, health, metrics and watch streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::instrument;
use xkube_api::patch::PatchType;
use xkube_api::table::{self, IncludeObject};
use xkube_api::{FieldSelector, LabelSelector, ResourceInfo, StatusError, meta};

use crate::admission::{self, Operation, Plugin};
use crate::auth::{Attributes, Authenticator, AuthnResult, Authorizer, UserInfo};
use crate::discovery;
use crate::metrics::Metrics;
use crate::plugins::{Admitted, QuotaLocks};
use crate::registry::{DeleteOptions, FieldValidation, Registry, WriteOptions};

/// Largest accepted request body (Kubernetes' 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Per-connection facts (TLS, the client certificate's subject), inserted as a request
/// extension by the listener.
pub use xkube_serve::Conn as ConnInfo;

/// Shared state of the HTTP handlers.
pub struct App {
    /// Registry (store access).
    pub registry: Arc<Registry>,
    /// Authenticators.
    pub authn: Authenticator,
    /// Authorizer.
    pub authz: Authorizer,
    /// Admission chain.
    pub admission: Vec<Plugin>,
    /// Per-namespace locks of quota-charged creations.
    pub quota_locks: QuotaLocks,
    /// Verifier of service-account tokens.
    pub sa_verifier: Option<crate::satoken::Verifier>,
    /// `--service-account-lookup`.
    pub sa_lookup: bool,
    /// Client of the kubelets (pods/log).
    pub kubelet: crate::logs::KubeletClient,
    /// Metrics.
    pub metrics: Metrics,
    /// Address advertised in discovery.
    pub advertise: String,
    /// Root cancellation (ends watches on shutdown).
    pub shutdown: CancellationToken,
}

type Query = HashMap<String, String>;

/// What the client accepts.
#[derive(Debug, Clone, Copy, Default)]
struct Accept {
    table: bool,
    yaml: bool,
    include: IncludeObject,
}

impl Accept {
    /// The same encoding without Table: what answers that are never tables (Scale, Status,
    /// a deletion's result) are written in.
    fn no_table(self) -> Accept {
        Accept {
            table: false,
            ..self
        }
    }
}

fn parse_accept(headers: &HeaderMap, q: &Query) -> Result<Accept, StatusError> {
    let raw = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let mut a = Accept::default();
    let mut acceptable = false;
    for part in raw.split(',') {
        let mut params = part.split(';').map(str::trim);
        let ty = params.next().unwrap_or("");
        let params: Vec<&str> = params.collect();
        let is_table = params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io");
        let other_as = params
            .iter()
            .any(|p| p.starts_with("as=") && *p != "as=Table");
        match ty {
            "application/json" | "*/*" | "application/*" if is_table => {
                a.table = true;
                acceptable = true;
                break;
            }
            "application/json" | "*/*" | "application/*" if !other_as => {
                acceptable = true;
                break;
            }
            "application/yaml" if !other_as && !is_table => {
                a.yaml = true;
                acceptable = true;
                break;
            }
            _ => {}
        }
    }
    if !acceptable {
        return Err(StatusError::not_acceptable(raw));
    }
    if let Some(i) = q.get("includeObject") {
        a.include = IncludeObject::parse(i)
            .ok_or_else(|| StatusError::bad_request(format!("invalid includeObject {i:?}")))?;
    }
    Ok(a)
}

fn json_response(code: u16, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn status_response(e: &StatusError) -> Response {
    json_response(e.code, &e.to_value())
}

fn text_response(code: u16, ctype: &'static str, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn object_response(
    code: u16,
    obj: &Value,
    accept: &Accept,
    res: &ResourceInfo,
    warnings: &[String],
) -> Response {
    let body = if accept.table && obj.get("kind").and_then(Value::as_str) != Some("Status") {
        if obj["items"].is_array() {
            let items = obj["items"].as_array().cloned().unwrap_or_default();
            table::table(
                res.plural,
                &items,
                meta::resource_version(obj),
                jiff::Timestamp::now(),
                accept.include,
            )
        } else {
            table::table(
                res.plural,
                std::slice::from_ref(obj),
                meta::resource_version(obj),
                jiff::Timestamp::now(),
                accept.include,
            )
        }
    } else {
        obj.clone()
    };
    let mut r = if accept.yaml {
        text_response(
            code,
            "application/yaml",
            serde_yaml::to_string(&body).unwrap_or_default(),
        )
    } else {
        json_response(code, &body)
    };
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "\\\""))) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
    r
}

/// A parsed API path.
#[derive(Debug, Clone)]
struct Route {
    res: &'static ResourceInfo,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    watch_path: bool,
}

fn parse_resource_path(group: &str, version: &str, segs: &[&str]) -> Option<Route> {
    let (watch_path, segs) = match segs.first() {
        Some(&"watch") => (true, &segs[1..]),
        _ => (false, segs),
    };
    let find = |p: &str| xkube_api::resources::find(group, version, p);
    let route = |res, ns: Option<&str>, name: Option<&&str>, sub: Option<&&str>| {
        Some(Route {
            res,
            ns: ns.map(str::to_string),
            name: name.map(|s| s.to_string()),
            sub: sub.map(|s| s.to_string()),
            watch_path,
        })
    };
    match segs {
        ["namespaces", ns, plural, rest @ ..]
            if find(plural).is_some_and(|r| r.namespaced) && rest.len() <= 2 =>
        {
            route(find(plural)?, Some(ns), rest.first(), rest.get(1))
        }
        [plural, rest @ ..] if rest.len() <= 2 => {
            let res = find(plural)?;
            route(res, None, rest.first(), rest.get(1))
        }
        _ => None,
    }
}

fn verb_for(method: &Method, route: &Route, watch: bool) -> &'static str {
    match (method.as_str(), route.name.is_some()) {
        ("GET", false) if watch => "watch",
        ("GET", true) if watch => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", false) => "deletecollection",
        ("DELETE", true) => "delete",
        _ => "unknown",
    }
}

fn metric_verb(verb: &str) -> &'static str {
    match verb {
        "get" => "GET",
        "list" => "LIST",
        "watch" => "WATCH",
        "create" => "POST",
        "update" => "PUT",
        "patch" => "PATCH",
        "delete" => "DELETE",
        "deletecollection" => "DELETECOLLECTION",
        _ => "OTHER",
    }
}

fn parse_query(uri: &http::Uri) -> Query {
    uri.query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

async fn read_body(body: Body) -> Result<Bytes, StatusError> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(StatusError::too_large(MAX_BODY))
            } else {
                Err(StatusError::bad_request(format!(
                    "error reading request body: {e}"
                )))
            }
        }
    }
}

fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, StatusError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let base = ct.split(';').next().unwrap_or("").trim();
    if body.is_empty() {
        return Err(StatusError::bad_request(
            "the request body is empty; an object is required",
        ));
    }
    // Nesting is bounded by serde_json's recursion limit (128) and by xkube_api::yaml, which
    // also bounds alias expansion.
    let v: Value = match base {
        "application/json"
        | ""
        | "application/json-patch+json"
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "*/*" => serde_json::from_slice(body).map_err(|e| {
            StatusError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            xkube_api::yaml::from_slice(body).map_err(|e| {
                StatusError::bad_request(format!("the request body is not valid YAML: {e}"))
            })?
        }
        "application/vnd.kubernetes.protobuf" => xkube_api::protobuf::decode(body)?,
        other => return Err(StatusError::unsupported_media_type(other)),
    };
    Ok(v)
}

fn write_options(q: &Query) -> Result<WriteOptions, StatusError> {
    let field_validation = match q.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Warn") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        Some(other) => {
            return Err(StatusError::bad_request(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {other:?}"
            )));
        }
    };
    Ok(WriteOptions {
        dry_run: q.get("dryRun").is_some_and(|d| d == "All"),
        field_validation,
    })
}

fn check_kind(res: &ResourceInfo, obj: &mut Value) -> Result<(), StatusError> {
    if !obj.is_object() {
        return Err(StatusError::bad_request(
            "the request body must be a JSON or YAML object",
        ));
    }
    let api_version = obj["apiVersion"].as_str().unwrap_or("").to_string();
    let kind = obj["kind"].as_str().unwrap_or("").to_string();
    if !kind.is_empty() && kind != res.kind {
        if xkube_api::resources::find_by_kind(&res.api_version(), &kind).is_none() {
            return Err(StatusError::bad_request(format!(
                "no kind \"{kind}\" is registered for version \"{}\"",
                if api_version.is_empty() {
                    res.api_version()
                } else {
                    api_version
                }
            )));
        }
        return Err(StatusError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): kind \"{kind}\"",
            res.kind
        )));
    }
    if !api_version.is_empty() && api_version != res.api_version() {
        return Err(StatusError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            res.api_version()
        )));
    }
    obj["apiVersion"] = json!(res.api_version());
    obj["kind"] = json!(res.kind);
    Ok(())
}

fn set_namespace(res: &ResourceInfo, ns: Option<&str>, obj: &mut Value) -> Result<(), StatusError> {
    if !res.namespaced {
        if !meta::namespace(obj).is_empty() {
            meta::remove(obj, "namespace");
        }
        return Ok(());
    }
    let Some(ns) = ns else {
        return Err(StatusError::bad_request(format!(
            "{} must be created in a namespace: POST to /api/v1/namespaces/{{namespace}}/{}",
            res.plural, res.plural
        )));
    };
    let body_ns = meta::namespace(obj);
    if body_ns.is_empty() {
        meta::set(obj, "namespace", json!(ns));
    } else if body_ns != ns {
        return Err(StatusError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

/// The single entry point of every request.
pub async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (verb, resource, resp) = dispatch(&app, req).await;
    let code = resp.status().as_u16();
    app.metrics.observe(verb, &resource, code, start.elapsed());
    tracing::debug!(%method, %path, code, elapsed_ms = start.elapsed().as_millis() as u64, "request");
    resp
}

async fn dispatch(app: &Arc<App>, req: Request) -> (&'static str, String, Response) {
    let conn = req
        .extensions()
        .get::<ConnInfo>()
        .cloned()
        .unwrap_or_default();
    // Health checks need no credentials (probes and load balancers call them).
    let health = matches!(
        req.uri().path().split('/').nth(1),
        Some("healthz" | "livez" | "readyz")
    );
    if health && req.method() == Method::GET {
        let segs: Vec<&str> = req
            .uri()
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let resp = discovery::non_resource(app, req.method(), &segs, req.headers()).await;
        return ("GET", String::new(), resp);
    }
    let user = if conn.secure {
        let authz = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let bearer = authz.and_then(crate::auth::bearer_token);
        let mut result = app.authn.authenticate(authz, conn.client_cert.as_ref());
        if result == AuthnResult::Unauthorized
            && let Some(token) = bearer
            && let Some(u) = service_account_user(app, token).await
        {
            result = AuthnResult::User(u);
        }
        match result {
            AuthnResult::User(u) => u,
            AuthnResult::Unauthorized => {
                return (
                    "OTHER",
                    String::new(),
                    status_response(&StatusError::unauthorized()),
                );
            }
        }
    } else {
        UserInfo::unsecured()
    };
    let user = match impersonate(app, user, req.headers()) {
        Ok(u) => u,
        Err(e) => return ("OTHER", String::new(), status_response(&e)),
    };
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let route = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => parse_resource_path("", "v1", rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => parse_resource_path(g, v, rest),
        _ => {
            let attrs = Attributes {
                verb: req.method().as_str().to_lowercase(),
                path: req.uri().path().to_string(),
                ..Default::default()
            };
            if let Err(reason) = app.authz.authorize(&user, &attrs) {
                let e = StatusError::new(403, "Forbidden", format!("forbidden: {reason}"));
                return ("GET", String::new(), status_response(&e));
            }
            let resp = discovery::non_resource(app, req.method(), &segs, req.headers()).await;
            return ("GET", String::new(), resp);
        }
    };
    let Some(route) = route else {
        return (
            "OTHER",
            String::new(),
            status_response(&StatusError::path_not_found()),
        );
    };
    let q = parse_query(req.uri());
    let watch = route.watch_path || q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let mut verb = verb_for(req.method(), &route, watch);
    // A WebSocket upgrade (GET) of exec/attach/portforward runs code: authorized as `create`,
    // as Kubernetes does since 1.30 (AuthorizePodWebsocketUpgradeCreatePermission).
    if verb == "get"
        && route.res.group.is_empty()
        && route.res.plural == "pods"
        && matches!(
            route.sub.as_deref(),
            Some("exec" | "attach" | "portforward")
        )
    {
        verb = "create";
    }
    let attrs = Attributes {
        verb: verb.to_string(),
        resource_request: true,
        group: route.res.group.to_string(),
        resource: route.res.plural.to_string(),
        subresource: route.sub.clone().unwrap_or_default(),
        namespace: route.ns.clone().unwrap_or_default(),
        name: route.name.clone().unwrap_or_default(),
        path: req.uri().path().to_string(),
    };
    let resource = route.res.plural.to_string();
    if let Err(reason) = app.authz.authorize(&user, &attrs) {
        let e = StatusError::forbidden(route.res.group, route.res.plural, &attrs.name, &reason);
        return (metric_verb(verb), resource, status_response(&e));
    }
    if !route.res.persisted() {
        let resp = match serve_review(app, req, &route, &user).await {
            Ok(r) => r,
            Err(e) => status_response(&e),
        };
        return (metric_verb(verb), resource, resp);
    }
    let resp = match serve_resource(app, req, route, q, verb, watch, &user).await {
        Ok(r) => r,
        Err(e) => status_response(&e),
    };
    (metric_verb(verb), resource, resp)
}

/// Kubernetes' user impersonation (`Impersonate-User`, `Impersonate-Group`,
/// `Impersonate-Uid`): each requested attribute needs the `impersonate` verb on `users`,
/// `serviceaccounts`, `groups` or `uids`; the request then runs as the impersonated user.
fn impersonate(app: &App, user: UserInfo, headers: &HeaderMap) -> Result<UserInfo, StatusError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let name = values("impersonate-user").into_iter().next();
    let groups = values("impersonate-group");
    let uid = values("impersonate-uid").into_iter().next();
    if headers
        .keys()
        .any(|k| k.as_str().starts_with("impersonate-extra-"))
    {
        return Err(StatusError::bad_request(
            "impersonating extra user attributes is not supported",
        ));
    }
    let Some(name) = name else {
        if groups.is_empty() && uid.is_none() {
            return Ok(user);
        }
        return Err(StatusError::bad_request(
            "requested impersonation of groups or uid without impersonating a user",
        ));
    };
    let check = |resource: &str, ns: &str, target: &str| -> Result<(), StatusError> {
        let attrs = Attributes::resource("impersonate", "", resource, ns, target);
        app.authz
            .authorize(&user, &attrs)
            .map_err(|reason| StatusError::forbidden("", resource, target, &reason))
    };
    let mut out_groups = Vec::new();
    match name
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, sa)) => {
            check("serviceaccounts", ns, sa)?;
            out_groups.extend([
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{ns}"),
            ]);
        }
        None => check("users", "", &name)?,
    }
    for g in &groups {
        check("groups", "", g)?;
        if !out_groups.contains(g) {
            out_groups.push(g.clone());
        }
    }
    if let Some(u) = &uid {
        check("uids", "", u)?;
    }
    if name == "system:anonymous" {
        out_groups.push("system:unauthenticated".into());
        return Ok(UserInfo {
            name,
            uid: uid.unwrap_or_default(),
            groups: out_groups,
        });
    }
    Ok(UserInfo::new(&name, &uid.unwrap_or_default(), out_groups))
}

/// The user of a service-account token, if the token verifies.
async fn service_account_user(app: &App, token: &str) -> Option<UserInfo> {
    let v = app.sa_verifier.as_ref()?;
    crate::satoken::authenticate(v, app.sa_lookup, &app.registry, token).await
}

/// The user a bearer token authenticates as (token file, then service-account tokens), for
/// TokenReviews.
pub(crate) async fn authenticate_token(app: &App, token: &str) -> Option<UserInfo> {
    if token.is_empty() {
        return None;
    }
    match app
        .authn
        .authenticate(Some(&format!("Bearer {token}")), None)
    {
        AuthnResult::User(u) => Some(u),
        AuthnResult::Unauthorized => service_account_user(app, token).await,
    }
}

/// Creates of the review kinds: authorized like any create, answered without storing.
async fn serve_review(
    app: &Arc<App>,
    req: Request,
    route: &Route,
    user: &UserInfo,
) -> Result<Response, StatusError> {
    if req.method() != Method::POST || route.name.is_some() {
        return Err(StatusError::method_not_allowed());
    }
    let q = parse_query(req.uri());
    let (parts, body) = req.into_parts();
    let accept = parse_accept(&parts.headers, &q)?;
    let bytes = read_body(body).await?;
    let mut obj = decode_body(&parts.headers, &bytes)?;
    check_kind(route.res, &mut obj)?;
    let out = crate::reviews::create(app, route.res, route.ns.as_deref(), user, obj).await?;
    Ok(object_response(201, &out, &accept, route.res, &[]))
}

/// Runs the admission chain; the caller keeps the result until the write is done and then
/// [`Admitted::commit`]s it.
#[allow(clippy::too_many_arguments)]
async fn admit(
    app: &App,
    op: Operation,
    res: &ResourceInfo,
    ns: &str,
    name: &str,
    obj: Option<&mut Value>,
    dry_run: bool,
) -> Result<Admitted, StatusError> {
    if app.admission.is_empty() {
        return Ok(Admitted::default());
    }
    let state = if admission::needs_namespace(&app.admission) && res.namespaced && !ns.is_empty() {
        Some(app.registry.namespace_state(ns).await)
    } else {
        None
    };
    admission::admit(&app.admission, op, res, ns, name, obj.as_deref(), state)?;
    crate::plugins::run(
        &app.admission,
        &app.quota_locks,
        &app.registry,
        op,
        res,
        ns,
        name,
        obj,
        dry_run,
    )
    .await
}

#[instrument(skip_all, fields(verb, resource = route.res.plural, ns = ?route.ns, name = ?route.name, sub = ?route.sub, user = %user.name))]
async fn serve_resource(
    app: &Arc<App>,
    req: Request,
    route: Route,
    q: Query,
    _verb: &'static str,
    watch: bool,
    user: &UserInfo,
) -> Result<Response, StatusError> {
    // `..`, `.`, `%2e%2e` in place of a namespace or name never reach the store.
    for (what, seg) in [("Namespace", &route.ns), ("Name", &route.name)] {
        if let Some(seg) = seg.as_deref() {
            let errs = xkube_api::validation::path_segment_name(seg);
            if !errs.is_empty() {
                return Err(StatusError::bad_request(format!(
                    "{what} parameter invalid: {seg:?}: {}",
                    errs.join(";")
                )));
            }
        }
    }
    if route.res.plural == "pods"
        && route.res.group.is_empty()
        && let Some(sub @ ("exec" | "attach" | "portforward")) = route.sub.as_deref()
    {
        let Some(name) = route.name.as_deref() else {
            return Err(StatusError::path_not_found());
        };
        if !matches!(*req.method(), Method::GET | Method::POST) {
            return Err(StatusError::method_not_allowed());
        }
        let ns = route.ns.as_deref().unwrap_or("");
        return crate::exec::pod_stream(&app.registry, &app.kubelet, route.res, sub, ns, name, req)
            .await;
    }
    let (parts, body) = req.into_parts();
    let accept = parse_accept(&parts.headers, &q)?;
    let res = route.res;
    let ns = route.ns.as_deref();
    let reg = &app.registry;
    if route.ns.is_some() && !res.namespaced {
        return Err(StatusError::path_not_found());
    }
    if let Some(sub) = route.sub.as_deref()
        && res.subresource(sub).is_none()
    {
        return Err(StatusError::path_not_found());
    }
    match (
        parts.method.clone(),
        route.name.as_deref(),
        route.sub.as_deref(),
    ) {
        (Method::GET, None, None) => {
            let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
                .map_err(|e| StatusError::bad_request(e.to_string()))?;
            let fields = FieldSelector::parse(
                q.get("fieldSelector").map_or("", String::as_str),
                res.plural,
            )
            .map_err(|e| StatusError::bad_request(e.to_string()))?;
            if watch {
                return watch_response(app, res, ns, labels, fields, &q, accept);
            }
            let from_cache = q.get("resourceVersion").is_some_and(|rv| rv == "0");
            let (items, rev) = reg.list(res, ns, &labels, &fields, from_cache).await?;
            let list = json!({
                "kind": format!("{}List", res.kind),
                "apiVersion": res.api_version(),
                "metadata": {"resourceVersion": rev.to_string()},
                "items": items,
            });
            Ok(object_response(200, &list, &accept, res, &[]))
        }
        (Method::GET, Some(name), None) if watch => {
            let fields = FieldSelector::parse(&format!("metadata.name={name}"), res.plural)
                .map_err(|e| StatusError::bad_request(e.to_string()))?;
            watch_response(app, res, ns, LabelSelector::default(), fields, &q, accept)
        }
        (Method::GET, Some(name), Some("log")) if res.plural == "pods" => {
            crate::logs::pod_log(reg, &app.kubelet, res, ns.unwrap_or(""), name, &q).await
        }
        (_, Some(_), Some("log")) => Err(StatusError::method_not_allowed()),
        (Method::GET, Some(name), None | Some("status")) => {
            let (obj, _) = reg.get(res, ns, name).await?;
            Ok(object_response(200, &obj, &accept, res, &[]))
        }
        (Method::GET, Some(name), Some("scale")) => {
            let (obj, _) = reg.get(res, ns, name).await?;
            Ok(object_response(
                200,
                &scale_of(&obj),
                &accept.no_table(),
                res,
                &[],
            ))
        }
        (Method::POST, None, None) => {
            let bytes = read_body(body).await?;
            let mut obj = decode_body(&parts.headers, &bytes)?;
            check_kind(res, &mut obj)?;
            set_namespace(res, ns, &mut obj)?;
            let opts = write_options(&q)?;
            Registry::generate_name(&mut obj);
            let name = meta::name(&obj).to_string();
            restrict_node_create(user, res, ns, &name)?;
            crate::authz::check_escalation(&app.authz, user, res, ns.unwrap_or(""), &obj)?;
            let admitted = admit(
                app,
                Operation::Create,
                res,
                ns.unwrap_or(""),
                &name,
                Some(&mut obj),
                opts.dry_run,
            )
            .await?;
            let w = reg.create(res, ns, obj, &opts).await?;
            admitted.commit(reg).await;
            Ok(object_response(201, &w.object, &accept, res, &w.warnings))
        }
        (Method::POST, Some(name), Some("binding")) => {
            let bytes = read_body(body).await?;
            let binding = decode_body(&parts.headers, &bytes)?;
            bind_pod(app, res, ns, name, &binding).await
        }
        (Method::PUT, Some(name), sub) => {
            let bytes = read_body(body).await?;
            let opts = write_options(&q)?;
            if sub == Some("scale") {
                let scale = decode_body(&parts.headers, &bytes)?;
                return update_scale(
                    app,
                    res,
                    ns,
                    name,
                    ScaleChange::Replace(&scale),
                    &opts,
                    &accept,
                )
                .await;
            }
            let mut obj = decode_body(&parts.headers, &bytes)?;
            check_kind(res, &mut obj)?;
            set_namespace(res, ns, &mut obj)?;
            let body_name = meta::name(&obj);
            if !body_name.is_empty() && body_name != name {
                return Err(StatusError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
            if sub == Some("finalize") {
                let mut o = obj.clone();
                o["status"] = reg.get(res, ns, name).await?.0["status"].clone();
                let w = reg.update(res, ns, name, o, None, &opts, None).await?;
                return Ok(object_response(200, &w.object, &accept, res, &w.warnings));
            }
            crate::authz::check_escalation(&app.authz, user, res, ns.unwrap_or(""), &obj)?;
            admit(
                app,
                Operation::Update,
                res,
                ns.unwrap_or(""),
                name,
                Some(&mut obj),
                opts.dry_run,
            )
            .await?;
            let w = reg.update(res, ns, name, obj, sub, &opts, None).await?;
            Ok(object_response(
                if w.created { 201 } else { 200 },
                &w.object,
                &accept,
                res,
                &w.warnings,
            ))
        }
        (Method::PATCH, Some(name), sub) => {
            let ct = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            // Server-side apply (application/apply-patch+yaml) is refused here too: it needs
            // field management, and treating it as a merge would drop fields silently.
            let ty = PatchType::from_content_type(ct)
                .ok_or_else(|| StatusError::unsupported_patch_type(ct))?;
            let bytes = read_body(body).await?;
            let patch = decode_body(&parts.headers, &bytes)?;
            let opts = write_options(&q)?;
            if sub == Some("scale") {
                let change = ScaleChange::Patch(&patch, ty);
                return update_scale(app, res, ns, name, change, &opts, &accept).await;
            }
            admit(
                app,
                Operation::Update,
                res,
                ns.unwrap_or(""),
                name,
                None,
                opts.dry_run,
            )
            .await?;
            let check = |o: &Value| {
                crate::authz::check_escalation(&app.authz, user, res, ns.unwrap_or(""), o)
            };
            let w = reg
                .patch_checked(res, ns, name, &patch, ty, sub, &opts, check)
                .await?;
            Ok(object_response(200, &w.object, &accept, res, &w.warnings))
        }
        (Method::DELETE, Some(name), None) => {
            let bytes = read_body(body).await?;
            let opts = delete_options(&parts.headers, &bytes, &q)?;
            admit(
                app,
                Operation::Delete,
                res,
                ns.unwrap_or(""),
                name,
                None,
                opts.dry_run,
            )
            .await?;
            let (obj, removed) = reg.delete(res, ns, name, &opts).await?;
            // 202 while a deletion waits (grace period, finalizers); a Terminating namespace
            // answers 200 as Kubernetes' does.
            let pending = !removed
                && crate::strategy::of(res).deletion != crate::strategy::Deletion::Terminating;
            Ok(object_response(
                if pending { 202 } else { 200 },
                &obj,
                &accept.no_table(),
                res,
                &[],
            ))
        }
        (Method::DELETE, None, None) => {
            let bytes = read_body(body).await?;
            let opts = delete_options(&parts.headers, &bytes, &q)?;
            let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
                .map_err(|e| StatusError::bad_request(e.to_string()))?;
            let fields = FieldSelector::parse(
                q.get("fieldSelector").map_or("", String::as_str),
                res.plural,
            )
            .map_err(|e| StatusError::bad_request(e.to_string()))?;
            let (items, rev) = reg.list(res, ns, &labels, &fields, false).await?;
            let mut deleted = Vec::new();
            for item in items {
                let name = meta::name(&item).to_string();
                let item_ns = meta::namespace(&item).to_string();
                let item_ns = (!item_ns.is_empty()).then_some(item_ns);
                admit(
                    app,
                    Operation::Delete,
                    res,
                    item_ns.as_deref().unwrap_or(""),
                    &name,
                    None,
                    opts.dry_run,
                )
                .await?;
                match reg.delete(res, item_ns.as_deref(), &name, &opts).await {
                    Ok((o, _)) => deleted.push(o),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            let list = json!({
                "kind": format!("{}List", res.kind),
                "apiVersion": res.api_version(),
                "metadata": {"resourceVersion": rev.to_string()},
                "items": deleted,
            });
            Ok(object_response(200, &list, &accept.no_table(), res, &[]))
        }
        _ => Err(StatusError::method_not_allowed()),
    }
}

/// NodeRestriction for creates: a kubelet may register only its own Node and create only its
/// own lease.
fn restrict_node_create(
    user: &UserInfo,
    res: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
) -> Result<(), StatusError> {
    let Some(node) = user.node_name() else {
        return Ok(());
    };
    let what = match (res.group, res.plural) {
        ("", "nodes") if name != node => "modify node",
        ("coordination.k8s.io", "leases") if ns == Some("kube-node-lease") && name != node => {
            "create lease"
        }
        _ => return Ok(()),
    };
    Err(StatusError::forbidden(
        res.group,
        res.plural,
        name,
        &format!("node \"{node}\" is not allowed to {what} \"{name}\""),
    ))
}

fn delete_options(
    headers: &HeaderMap,
    body: &[u8],
    q: &Query,
) -> Result<DeleteOptions, StatusError> {
    let mut o = DeleteOptions::default();
    if !body.is_empty() {
        let v = decode_body(headers, body)?;
        if !v.is_object() {
            return Err(StatusError::bad_request(
                "the request body must be a DeleteOptions object",
            ));
        }
        o.propagation = v["propagationPolicy"].as_str().map(str::to_string);
        if v["orphanDependents"] == json!(true) {
            o.propagation = Some("Orphan".into());
        }
        o.grace_period = v["gracePeriodSeconds"].as_i64();
        o.uid = v["preconditions"]["uid"].as_str().map(str::to_string);
        o.resource_version = v["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        o.dry_run = v["dryRun"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "All"));
    }
    if let Some(p) = q.get("propagationPolicy") {
        o.propagation = Some(p.clone());
    }
    if q.get("orphanDependents").is_some_and(|v| v == "true") {
        o.propagation = Some("Orphan".into());
    }
    if let Some(g) = q.get("gracePeriodSeconds") {
        o.grace_period = Some(
            g.parse()
                .map_err(|_| StatusError::bad_request("gracePeriodSeconds must be an integer"))?,
        );
    }
    if q.get("dryRun").is_some_and(|d| d == "All") {
        o.dry_run = true;
    }
    if let Some(p) = &o.propagation
        && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
    {
        return Err(StatusError::new(
            422,
            "Invalid",
            format!(
                "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
            ),
        ));
    }
    Ok(o)
}

/// The Scale of a ReplicationController (a label map selector) or an apps/v1 workload (a
/// LabelSelector, formatted as `metav1.FormatLabelSelector` does).
fn scale_of(rc: &Value) -> Value {
    let sel = &rc["spec"]["selector"];
    let selector = if sel.get("matchLabels").is_some() || sel.get("matchExpressions").is_some() {
        xkube_api::table::format_label_selector(sel)
    } else {
        meta::string_map(sel)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta::name(rc),
            "namespace": meta::namespace(rc),
            "uid": meta::uid(rc),
            "resourceVersion": meta::resource_version(rc),
            "creationTimestamp": rc["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": rc["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {"replicas": rc["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

/// `spec.replicas` of a Scale written by a client: required, not negative.
fn scale_replicas(name: &str, scale: &Value) -> Result<i64, StatusError> {
    let Some(replicas) = scale["spec"]["replicas"].as_i64() else {
        return Err(StatusError::invalid(
            "autoscaling",
            "Scale",
            name,
            &[xkube_api::FieldError::required("spec.replicas", "")]
                .into_iter()
                .collect(),
        ));
    };
    if replicas < 0 {
        return Err(StatusError::invalid(
            "autoscaling",
            "Scale",
            name,
            &[xkube_api::FieldError::invalid(
                "spec.replicas",
                replicas,
                "must be greater than or equal to 0",
            )]
            .into_iter()
            .collect(),
        ));
    }
    Ok(replicas)
}

/// What a write to the scale subresource asks for.
enum ScaleChange<'a> {
    /// PUT: the whole Scale; its `resourceVersion`, when set, is a precondition.
    Replace(&'a Value),
    /// PATCH: applied to the Scale of the current object on every attempt, as Kubernetes'
    /// patcher does inside GuaranteedUpdate; a `resourceVersion` the patch sets is a
    /// precondition, otherwise a concurrent write (a controller's status) is retried.
    Patch(&'a Value, PatchType),
}

async fn update_scale(
    app: &App,
    res: &'static ResourceInfo,
    ns: Option<&str>,
    name: &str,
    change: ScaleChange<'_>,
    opts: &WriteOptions,
    accept: &Accept,
) -> Result<Response, StatusError> {
    let w = app
        .registry
        .guaranteed_update(res, ns, name, None, opts, |cur, rev| {
            let current = scale_of(cur);
            let (scale, pinned) = match &change {
                ScaleChange::Replace(scale) => {
                    let rv = scale["metadata"]["resourceVersion"].as_str();
                    (
                        (*scale).clone(),
                        rv.filter(|s| !s.is_empty()).map(str::to_string),
                    )
                }
                ScaleChange::Patch(patch, ty) => {
                    let scale = xkube_api::patch::apply(&current, patch, *ty)?;
                    let rv = scale["metadata"]["resourceVersion"]
                        .as_str()
                        .map(str::to_string);
                    let pinned = rv.filter(|rv| *rv != meta::resource_version(&current));
                    (scale, pinned)
                }
            };
            let replicas = scale_replicas(name, &scale)?;
            if let Some(rv) = &pinned
                && *rv != rev.to_string()
            {
                return Err(StatusError::modified_conflict(res.group, res.plural, name));
            }
            let mut rc = cur.clone();
            rc["spec"]["replicas"] = json!(replicas);
            meta::remove(&mut rc, "resourceVersion");
            Ok((rc, pinned.is_none()))
        })
        .await?;
    Ok(object_response(
        200,
        &scale_of(&w.object),
        &accept.no_table(),
        res,
        &[],
    ))
}

async fn bind_pod(
    app: &App,
    res: &'static ResourceInfo,
    ns: Option<&str>,
    name: &str,
    binding: &Value,
) -> Result<Response, StatusError> {
    let node = binding["target"]["name"].as_str().unwrap_or("").to_string();
    if node.is_empty() {
        return Err(StatusError::invalid(
            "",
            "Binding",
            name,
            &[xkube_api::FieldError::required("target.name", "")]
                .into_iter()
                .collect(),
        ));
    }
    for _ in 0..5 {
        let (pod, rev) = app.registry.get(res, ns, name).await?;
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            return Err(StatusError::conflict(
                "",
                "pods/binding",
                name,
                &format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        if let Some(cur) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(StatusError::conflict(
                "",
                "pods/binding",
                name,
                &format!("pod {name} is already assigned to node \"{cur}\""),
            ));
        }
        let mut p = pod.clone();
        p["spec"]["nodeName"] = json!(node);
        let conds = p["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut conds: Vec<Value> = conds
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conds.push(
            json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
                          "lastTransitionTime": meta::format_time(jiff::Timestamp::now())}),
        );
        p["status"]["conditions"] = json!(conds);
        meta::remove(&mut p, "resourceVersion");
        let bytes = serde_json::to_vec(&p).map_err(StatusError::internal)?;
        match app
            .registry
            .store
            .update(&res.key(ns, name), bytes, rev)
            .await
        {
            Ok(_) => {
                let s = xkube_api::status::success("", "pods", name, None);
                return Ok(json_response(201, &s));
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(crate::registry::store_error(res, name, e)),
        }
    }
    Err(StatusError::modified_conflict("", "pods", name))
}

// ---------------------------------------------------------------------------------------------
// Watch.

fn watch_response(
    app: &Arc<App>,
    res: &'static ResourceInfo,
    ns: Option<&str>,
    labels: LabelSelector,
    fields: FieldSelector,
    q: &Query,
    accept: Accept,
) -> Result<Response, StatusError> {
    let cache = app
        .registry
        .caches
        .get(res.plural)
        .cloned()
        .ok_or_else(|| StatusError::internal("no watch cache"))?;
    let send_initial = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let from =
        match q.get("resourceVersion").map(String::as_str) {
            None | Some("") | Some("0") => None,
            _ if send_initial => None,
            Some(rv) => Some(rv.parse::<i64>().map_err(|_| {
                StatusError::bad_request(format!("invalid resource version: {rv:?}"))
            })?),
        };
    let bookmarks = q
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true" || v == "1");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(30 * 60));
    let req = crate::watch::Request {
        namespace: ns.map(str::to_string),
        labels,
        fields,
        from,
        send_initial,
        bookmarks,
        timeout,
        table: accept.table.then_some(accept.include),
    };
    let rx = crate::watch::serve(&cache, req, app.shutdown.clone());
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(r)
}
