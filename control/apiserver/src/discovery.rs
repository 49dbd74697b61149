//! Non-resource endpoints: discovery (`/api`, `/api/v1`, `/apis`), `/version`, health,
//! `/metrics` and the OpenAPI documents of [`crate::openapi`].

use std::sync::Arc;

use axum::response::Response;
use http::{HeaderMap, Method};
use serde_json::{Value, json};
use xkube_api::{RESOURCES, StatusError};

use crate::http::App;
use crate::openapi;

fn json(code: u16, v: &Value) -> Response {
    let mut r = Response::new(axum::body::Body::from(
        serde_json::to_vec(v).unwrap_or_default(),
    ));
    *r.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn text(body: String, ctype: &'static str) -> Response {
    let mut r = Response::new(axum::body::Body::from(body));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}

/// `/api/v1` resource list.
pub fn core_resources() -> Value {
    resources("", "v1")
}

/// The API groups other than core, each with its versions (`/apis`).
pub fn groups() -> Value {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, vs)) if !vs.contains(&r.version) => vs.push(r.version),
            Some(_) => {}
            None => groups.push((r.group, vec![r.version])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0].clone()})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// One API group with its versions (`/apis/{group}`), if any resource belongs to it.
pub fn group(name: &str) -> Option<Value> {
    let mut g = groups()["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == name)?
        .clone();
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

/// The resource list of one group version (`/api/v1`, `/apis/{group}/{version}`).
pub fn resources(group: &str, version: &str) -> Value {
    let mut out = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        out.push(e);
        for s in r.subresources {
            let mut e = json!({
                "name": format!("{}/{}", r.plural, s.name),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": s.kind,
                "verbs": s.verbs,
            });
            if !s.group.is_empty() {
                e["group"] = json!(s.group);
                e["version"] = json!(s.version);
            }
            out.push(e);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out})
}

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-xkube",
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

/// Whether an `Accept` header admits JSON (no header does).
fn accepts_json(headers: &HeaderMap) -> bool {
    let Some(accept) = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    accept.split(',').any(|m| {
        let m = m.split(';').next().unwrap_or("").trim();
        matches!(m, "" | "application/json" | "application/*" | "*/*")
    })
}

/// Serves one OpenAPI document as JSON, with its hash as ETag (`If-None-Match` gets a 304).
/// Kubernetes also serves protobuf; a client that accepts only protobuf gets a 406 (kubectl
/// then does without the v2 document: it reads v3 as JSON).
async fn openapi(
    headers: &HeaderMap,
    pick: impl FnOnce(&'static openapi::Documents) -> Option<&'static openapi::Document>,
) -> Response {
    if !accepts_json(headers) {
        let accept = headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let e = StatusError::new(
            406,
            "NotAcceptable",
            format!("only application/json is served here (asked for {accept})"),
        );
        return json(406, &e.to_value());
    }
    let Some(doc) = pick(openapi::documents().await) else {
        return json(404, &StatusError::path_not_found().to_value());
    };
    let etag = doc.etag();
    let fresh = headers
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut r = if fresh {
        let mut r = Response::new(axum::body::Body::empty());
        *r.status_mut() = http::StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(axum::body::Body::from(doc.body.clone()));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    };
    if let Ok(v) = http::HeaderValue::from_str(&etag) {
        r.headers_mut().insert(http::header::ETAG, v);
    }
    // The URLs carry the hash, but a client may ask an old hash: revalidate with the ETag.
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache, private"),
    );
    r
}

/// Serves non-resource paths.
pub async fn non_resource(
    app: &Arc<App>,
    method: &Method,
    segs: &[&str],
    headers: &HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return json(405, &StatusError::method_not_allowed().to_value());
    }
    match segs {
        [] => {
            let mut paths = vec![
                "/api",
                "/api/v1",
                "/apis",
                "/healthz",
                "/livez",
                "/readyz",
                "/metrics",
                "/version",
                "/openapi/v2",
                "/openapi/v3",
            ];
            paths.sort();
            json(200, &json!({"paths": paths}))
        }
        ["api"] => json(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": app.advertise}]}),
        ),
        ["api", "v1"] => json(200, &core_resources()),
        ["apis"] => json(200, &groups()),
        ["apis", g] => match group(g) {
            Some(v) => json(200, &v),
            None => json(404, &StatusError::path_not_found().to_value()),
        },
        ["apis", g, v] if RESOURCES.iter().any(|r| r.group == *g && r.version == *v) => {
            json(200, &resources(g, v))
        }
        ["version"] => json(200, &version()),
        ["readyz"] => {
            let pending: Vec<&str> = app
                .registry
                .caches
                .iter()
                .filter(|(_, c)| !c.is_ready())
                .map(|(p, _)| *p)
                .collect();
            if pending.is_empty() {
                text("ok".into(), "text/plain; charset=utf-8")
            } else {
                let mut r = text(
                    format!(
                        "[-]watch-cache-sync failed: {}\nreadyz check failed\n",
                        pending.join(",")
                    ),
                    "text/plain; charset=utf-8",
                );
                *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                r
            }
        }
        ["healthz"] | ["livez"] => text("ok".into(), "text/plain; charset=utf-8"),
        ["healthz" | "livez" | "readyz", _] => text("ok".into(), "text/plain; charset=utf-8"),
        ["metrics"] => text(app.metrics.render(), "text/plain; version=0.0.4"),
        ["openapi", "v2"] => openapi(headers, |d| Some(&d.v2)).await,
        ["openapi", "v3"] => openapi(headers, |d| Some(&d.v3_index)).await,
        ["openapi", "v3", rest @ ..] => {
            let key = rest.join("/");
            openapi(headers, |d| d.v3.get(&key)).await
        }
        _ => json(404, &StatusError::path_not_found().to_value()),
    }
}
