//! Non-resource endpoints: discovery (`/api`, `/api/v1`, `/apis`), `/version`, health,
//! `/metrics` and the OpenAPI documents kubectl reads for validation and patch metadata.

use std::sync::Arc;

use axum::response::Response;
use http::{HeaderMap, Method};
use serde_json::{Value, json};
use xkube_api::{RESOURCES, StatusError};

use crate::http::App;

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

fn operation_params() -> Value {
    json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string"}, "uniqueItems": true},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}, "uniqueItems": true},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}, "uniqueItems": true},
    ])
}

/// A small OpenAPI v3 document for one group version: the paths and operations with the
/// `fieldValidation` parameter (kubectl then validates on the server), and `x-kubernetes-*`
/// extensions on the kinds.
pub fn openapi_v3(group: &str, version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    let root = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let gvk = json!([{"group": group, "version": version, "kind": r.kind}]);
        let base = if r.namespaced {
            format!("{root}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{root}/{}", r.plural)
        };
        let op = |id: String| {
            json!({
                "operationId": id,
                "parameters": operation_params(),
                "x-kubernetes-group-version-kind": gvk[0].clone(),
                "responses": {"200": {"description": "OK"}},
            })
        };
        paths.insert(base.clone(), json!({"post": op(format!("createNamespaced{}", r.kind)), "get": op(format!("list{}", r.kind))}));
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"put": op(format!("replace{}", r.kind)), "patch": op(format!("patch{}", r.kind)),
                   "get": op(format!("read{}", r.kind)), "delete": op(format!("delete{}", r.kind))}),
        );
        let pkg = if group.is_empty() {
            "core"
        } else {
            group.split('.').next().unwrap_or(group)
        };
        schemas.insert(
            format!("io.k8s.api.{pkg}.{version}.{}", r.kind),
            json!({"type": "object", "x-kubernetes-group-version-kind": gvk}),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0-xkube"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// Serves non-resource paths.
pub async fn non_resource(
    app: &Arc<App>,
    method: &Method,
    segs: &[&str],
    headers: &HeaderMap,
) -> Response {
    let _ = headers;
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
        ["openapi", "v3"] => {
            let mut paths = serde_json::Map::new();
            for r in RESOURCES.iter() {
                let (key, url) = if r.group.is_empty() {
                    (
                        "api/v1".to_string(),
                        "/openapi/v3/api/v1?hash=xkube1".to_string(),
                    )
                } else {
                    let gv = format!("apis/{}/{}", r.group, r.version);
                    (gv.clone(), format!("/openapi/v3/{gv}?hash=xkube1"))
                };
                paths.insert(key, json!({"serverRelativeURL": url}));
            }
            json(200, &json!({"paths": paths}))
        }
        ["openapi", "v3", "api", "v1"] => json(200, &openapi_v3("", "v1")),
        ["openapi", "v3", "apis", g, v]
            if RESOURCES.iter().any(|r| r.group == *g && r.version == *v) =>
        {
            json(200, &openapi_v3(g, v))
        }
        _ => json(404, &StatusError::path_not_found().to_value()),
    }
}
