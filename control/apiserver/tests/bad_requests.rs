//! Bad input never loses data: for every kind the apiserver serves and every verb, a table of
//! malformed requests, each of which must be answered with the 4xx Kubernetes gives, a
//! Kubernetes `Status` body (reason and message), a server that still answers, and a store
//! whose every key, value and revision is what it was before.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xkube_api::validation::NameRule;
use xkube_api::{RESOURCES, ResourceInfo};
use xkube_store::Store;

const JSON: &str = "application/json";
const YAML: &str = "application/yaml";
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
const MERGE: &str = "application/merge-patch+json";
const STRATEGIC: &str = "application/strategic-merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";
const APPLY_YAML: &str = "application/apply-patch+yaml";
const APPLY_JSON: &str = "application/apply-patch+json";

/// Just over Kubernetes' 3 MiB request limit.
const OVER_LIMIT: usize = 3 * 1024 * 1024 + 1;

enum Payload {
    None,
    /// Sent with a `Content-Length`.
    Full(Vec<u8>),
    /// Sent with `Transfer-Encoding: chunked` (no length known in advance).
    Chunked(Vec<u8>),
    /// The whole request written as is on a fresh connection (paths that HTTP clients would
    /// normalise, headers they would not send).
    Raw(Vec<u8>),
}

struct Case {
    what: String,
    method: Method,
    path: String,
    ctype: Option<&'static str>,
    accept: Option<&'static str>,
    payload: Payload,
    code: u16,
}

fn case(what: impl Into<String>, method: Method, path: impl Into<String>, code: u16) -> Case {
    Case {
        what: what.into(),
        method,
        path: path.into(),
        ctype: None,
        accept: None,
        payload: Payload::None,
        code,
    }
}

impl Case {
    fn body(mut self, ctype: &'static str, body: impl Into<Vec<u8>>) -> Self {
        self.ctype = Some(ctype);
        self.payload = Payload::Full(body.into());
        self
    }

    fn json(self, ctype: &'static str, v: &Value) -> Self {
        self.body(ctype, v.to_string())
    }

    fn chunked(mut self, ctype: &'static str, body: Vec<u8>) -> Self {
        self.ctype = Some(ctype);
        self.payload = Payload::Chunked(body);
        self
    }

    fn accept(mut self, accept: &'static str) -> Self {
        self.accept = Some(accept);
        self
    }
}

fn raw(what: impl Into<String>, request: String, code: u16) -> Case {
    Case {
        what: what.into(),
        method: Method::GET,
        path: String::new(),
        ctype: None,
        accept: None,
        payload: Payload::Raw(request.into_bytes()),
        code,
    }
}

fn collection(res: &ResourceInfo) -> String {
    let prefix = if res.group.is_empty() {
        "/api/v1".to_string()
    } else {
        format!("/apis/{}/{}", res.group, res.version)
    };
    if res.namespaced {
        format!("{prefix}/namespaces/{}/{}", namespace(res), res.plural)
    } else {
        format!("{prefix}/{}", res.plural)
    }
}

/// Each kind's objects live in a namespace of their own, so that one kind's LimitRange or
/// ResourceQuota never decides another kind's answers.
fn namespace(res: &ResourceInfo) -> String {
    format!("t-{}", res.plural)
}

/// A valid object of every kind (a kind without one fails the suite: add it here).
fn sample(res: &ResourceInfo, name: &str) -> Value {
    let mut meta = json!({"name": name});
    if res.namespaced {
        meta["namespace"] = json!(namespace(res));
    }
    let mut o = json!({"apiVersion": res.api_version(), "kind": res.kind, "metadata": meta});
    let template = json!({"metadata": {"labels": {"app": "s"}},
                          "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
    match res.kind {
        "Namespace" | "Node" | "ServiceAccount" => {}
        "Pod" => o["spec"] = json!({"containers": [{"name": "c", "image": "nginx"}]}),
        "ReplicationController" => {
            o["spec"] = json!({"replicas": 1, "selector": {"app": "s"}, "template": template})
        }
        "DaemonSet" | "ReplicaSet" | "Deployment" => {
            o["spec"] = json!({"selector": {"matchLabels": {"app": "s"}}, "template": template})
        }
        "Job" => {
            let mut t = template.clone();
            t["spec"]["restartPolicy"] = json!("Never");
            o["spec"] = json!({"template": t})
        }
        "CronJob" => {
            let mut t = template.clone();
            t["spec"]["restartPolicy"] = json!("OnFailure");
            o["spec"] = json!({"schedule": "*/5 * * * *",
                               "jobTemplate": {"spec": {"template": t}}})
        }
        "Service" => o["spec"] = json!({"selector": {"app": "s"}, "ports": [{"port": 80}]}),
        "Endpoints" => {
            // Not mirrored into an EndpointSlice: nothing but the requests may write.
            o["metadata"]["labels"] = json!({"endpointslice.kubernetes.io/skip-mirror": "true"});
            o["subsets"] = json!([{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]);
        }
        "Event" => {
            o["involvedObject"] = json!({"kind": "Pod", "name": "p", "namespace": namespace(res)});
            o["reason"] = json!("Sample");
            o["message"] = json!("a sample event");
        }
        "Secret" => o["data"] = json!({"k": "dmFsdWU="}),
        "ConfigMap" => o["data"] = json!({"k": "v", "other": "w"}),
        "ResourceQuota" => o["spec"] = json!({"hard": {"pods": "10"}}),
        "LimitRange" => {
            o["spec"] = json!({"limits": [{"type": "Container", "default": {"cpu": "100m"}}]})
        }
        "EndpointSlice" => {
            o["addressType"] = json!("IPv4");
            o["endpoints"] = json!([{"addresses": ["10.0.0.2"]}]);
        }
        "Lease" => o["spec"] = json!({"holderIdentity": "someone"}),
        "Role" | "ClusterRole" => {
            o["rules"] = json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}])
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let role = if res.kind == "RoleBinding" {
                "Role"
            } else {
                "ClusterRole"
            };
            o["roleRef"] =
                json!({"apiGroup": "rbac.authorization.k8s.io", "kind": role, "name": "sample"});
            o["subjects"] =
                json!([{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]);
        }
        other => panic!("the bad-request suite has no sample {other}: add one"),
    }
    o
}

fn other_kind(res: &ResourceInfo) -> &'static str {
    if res.kind == "Secret" {
        "ConfigMap"
    } else {
        "Secret"
    }
}

fn nested_json(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

fn nested_yaml(depth: usize) -> String {
    let mut s = String::from("metadata:\n  name: deep\nspec:\n");
    for i in 0..depth {
        s.push_str(&"  ".repeat(i + 1));
        s.push_str("a:\n");
    }
    s.push_str(&"  ".repeat(depth + 1));
    s.push_str("b: 1\n");
    s
}

fn alias_bomb(res: &ResourceInfo) -> String {
    let mut doc = format!(
        "apiVersion: {}\nkind: {}\nmetadata:\n  name: bomb\n  annotations:\n    a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
        res.api_version(),
        res.kind
    );
    for i in 1..12 {
        let p = format!("*a{}", i - 1);
        doc.push_str(&format!(
            "    a{i}: &a{i} [{p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}]\n"
        ));
    }
    doc
}

/// An object of the kind padded past the 3 MiB limit (valid JSON: the size alone is wrong).
fn oversized(res: &ResourceInfo) -> Vec<u8> {
    let mut o = sample(res, "huge");
    o["metadata"]["annotations"] = json!({"pad": "x".repeat(OVER_LIMIT)});
    o.to_string().into_bytes()
}

fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
}

/// Cases every kind gets.
fn kind_cases(res: &ResourceInfo, current: &Value) -> Vec<Case> {
    let c = collection(res);
    let item = format!("{c}/sample");
    let kind = res.kind;
    let mut out = Vec::new();
    let not_objects = [
        ("a string", json!("str")),
        ("a number", json!(42)),
        ("null", Value::Null),
        ("an array", json!([1, 2])),
        ("a boolean", json!(true)),
    ];

    // create
    for (what, body) in &not_objects {
        out.push(
            case(
                format!("create {kind}: body is {what}"),
                Method::POST,
                &c,
                400,
            )
            .json(JSON, body),
        );
    }
    out.push(
        case(format!("create {kind}: broken JSON"), Method::POST, &c, 400).body(
            JSON,
            format!("{{\"apiVersion\": \"{}\", \"kind\":", res.api_version()),
        ),
    );
    out.push(
        case(format!("create {kind}: broken YAML"), Method::POST, &c, 400)
            .body(YAML, "metadata: {name: [\n"),
    );
    out.push(
        case(format!("create {kind}: YAML list"), Method::POST, &c, 400).body(YAML, "- a\n- b\n"),
    );
    out.push(
        case(
            format!("create {kind}: protobuf without the k8s prefix"),
            Method::POST,
            &c,
            400,
        )
        .body(PROTOBUF, "not protobuf"),
    );
    out.push(
        case(
            format!("create {kind}: truncated protobuf"),
            Method::POST,
            &c,
            400,
        )
        .body(PROTOBUF, b"k8s\x00\x0a\x7f\x0a\x02v1".to_vec()),
    );
    let mut wrong = sample(res, "wrong");
    wrong["kind"] = json!(other_kind(res));
    out.push(
        case(
            format!("create {kind}: body of another kind"),
            Method::POST,
            &c,
            400,
        )
        .json(JSON, &wrong),
    );
    wrong["kind"] = json!("Bogus");
    out.push(
        case(
            format!("create {kind}: unregistered kind"),
            Method::POST,
            &c,
            400,
        )
        .json(JSON, &wrong),
    );
    let mut wrong = sample(res, "wrong");
    wrong["apiVersion"] = json!(if res.group.is_empty() {
        "v9".to_string()
    } else {
        format!("{}/v9", res.group)
    });
    out.push(
        case(
            format!("create {kind}: unknown apiVersion"),
            Method::POST,
            &c,
            400,
        )
        .json(JSON, &wrong),
    );
    out.push(
        case(
            format!("create {kind}: invalid name"),
            Method::POST,
            &c,
            422,
        )
        .json(JSON, &sample(res, "bad%name")),
    );
    out.push(
        case(
            format!("create {kind}: upper-case name"),
            Method::POST,
            &c,
            422,
        )
        // Kinds whose names need only be path segments refuse "..".
        .json(JSON, &{
            let lax = xkube_api::validation::name_rule(kind) == NameRule::PathSegment;
            sample(res, if lax { ".." } else { "Bad_Name" })
        }),
    );
    let mut nameless = sample(res, "");
    meta_remove(&mut nameless, "name");
    out.push(case(format!("create {kind}: no name"), Method::POST, &c, 422).json(JSON, &nameless));
    if res.namespaced {
        let mut o = sample(res, "elsewhere");
        o["metadata"]["namespace"] = json!("default");
        out.push(
            case(
                format!("create {kind}: namespace differs from the URL's"),
                Method::POST,
                &c,
                400,
            )
            .json(JSON, &o),
        );
    }
    out.push(
        case(
            format!("create {kind}: already exists"),
            Method::POST,
            &c,
            409,
        )
        .json(JSON, &sample(res, "sample")),
    );
    out.push(case(format!("create {kind}: empty body"), Method::POST, &c, 400).body(JSON, ""));
    out.push(
        case(format!("create {kind}: text/plain"), Method::POST, &c, 415)
            .body("text/plain", "hello"),
    );
    out.push(
        case(
            format!("create {kind}: server-side apply type"),
            Method::POST,
            &c,
            415,
        )
        .json(APPLY_YAML, &sample(res, "ssa")),
    );
    out.push(
        case(
            format!("create {kind}: body over 3 MiB"),
            Method::POST,
            &c,
            413,
        )
        .body(JSON, oversized(res)),
    );
    out.push(
        case(
            format!("create {kind}: chunked body over 3 MiB"),
            Method::POST,
            &c,
            413,
        )
        .chunked(JSON, oversized(res)),
    );
    out.push(
        case(
            format!("create {kind}: JSON nested 200 deep"),
            Method::POST,
            &c,
            400,
        )
        .body(JSON, nested_json(200)),
    );
    out.push(
        case(
            format!("create {kind}: YAML nested 200 deep"),
            Method::POST,
            &c,
            400,
        )
        .body(YAML, nested_yaml(200)),
    );
    out.push(
        case(
            format!("create {kind}: YAML alias bomb"),
            Method::POST,
            &c,
            400,
        )
        .body(YAML, alias_bomb(res)),
    );
    out.push(
        case(
            format!("create {kind}: bad fieldValidation"),
            Method::POST,
            format!("{c}?fieldValidation=Sometimes"),
            400,
        )
        .json(JSON, &sample(res, "fv")),
    );
    let mut unknown = sample(res, "strict");
    unknown["bogusField"] = json!(1);
    out.push(
        case(
            format!("create {kind}: unknown field under Strict"),
            Method::POST,
            format!("{c}?fieldValidation=Strict"),
            400,
        )
        .json(JSON, &unknown),
    );
    let mut typed = sample(res, "typed");
    typed["metadata"]["labels"] = json!("not a map");
    out.push(
        case(
            format!("create {kind}: labels of the wrong type"),
            Method::POST,
            &c,
            400,
        )
        .json(JSON, &typed),
    );
    let mut labels = sample(res, "labels");
    labels["metadata"]["labels"] = json!({"bad key!": "v"});
    out.push(
        case(
            format!("create {kind}: invalid label key"),
            Method::POST,
            &c,
            422,
        )
        .json(JSON, &labels),
    );

    // update
    for (what, body) in &not_objects {
        out.push(
            case(
                format!("update {kind}: body is {what}"),
                Method::PUT,
                &item,
                400,
            )
            .json(JSON, body),
        );
    }
    out.push(
        case(
            format!("update {kind}: broken JSON"),
            Method::PUT,
            &item,
            400,
        )
        .body(JSON, "{\"metadata\": "),
    );
    out.push(
        case(
            format!("update {kind}: broken YAML"),
            Method::PUT,
            &item,
            400,
        )
        .body(YAML, "kind: [\n"),
    );
    let mut o = current.clone();
    o["kind"] = json!(other_kind(res));
    out.push(
        case(
            format!("update {kind}: body of another kind"),
            Method::PUT,
            &item,
            400,
        )
        .json(JSON, &o),
    );
    let mut o = current.clone();
    o["metadata"]["name"] = json!("other");
    out.push(
        case(
            format!("update {kind}: name differs from the URL's"),
            Method::PUT,
            &item,
            400,
        )
        .json(JSON, &o),
    );
    if res.namespaced {
        let mut o = current.clone();
        o["metadata"]["namespace"] = json!("default");
        out.push(
            case(
                format!("update {kind}: namespace differs from the URL's"),
                Method::PUT,
                &item,
                400,
            )
            .json(JSON, &o),
        );
    }
    let mut o = current.clone();
    o["metadata"]["resourceVersion"] = json!("1");
    out.push(
        case(
            format!("update {kind}: stale resourceVersion"),
            Method::PUT,
            &item,
            409,
        )
        .json(JSON, &o),
    );
    let mut o = current.clone();
    o["metadata"]["uid"] = json!("00000000-0000-0000-0000-000000000000");
    out.push(
        case(
            format!("update {kind}: another uid"),
            Method::PUT,
            &item,
            409,
        )
        .json(JSON, &o),
    );
    let mut o = current.clone();
    o["metadata"]["labels"] = json!({"bad key!": "v"});
    out.push(
        case(
            format!("update {kind}: invalid label key"),
            Method::PUT,
            &item,
            422,
        )
        .json(JSON, &o),
    );
    let mut o = current.clone();
    o["metadata"]["labels"] = json!(7);
    out.push(
        case(
            format!("update {kind}: labels of the wrong type"),
            Method::PUT,
            &item,
            400,
        )
        .json(JSON, &o),
    );
    out.push(
        case(
            format!("update {kind}: server-side apply type"),
            Method::PUT,
            &item,
            415,
        )
        .json(APPLY_JSON, current),
    );
    out.push(
        case(
            format!("update {kind}: text/plain"),
            Method::PUT,
            &item,
            415,
        )
        .body("text/plain", "x"),
    );
    out.push(
        case(
            format!("update {kind}: empty body"),
            Method::PUT,
            &item,
            400,
        )
        .body(JSON, ""),
    );

    // patch: merge and strategic merge
    for (ty, ct) in [("merge", MERGE), ("strategic", STRATEGIC)] {
        for (what, body) in &not_objects {
            out.push(
                case(
                    format!("{ty} patch {kind}: body is {what}"),
                    Method::PATCH,
                    &item,
                    400,
                )
                .json(ct, body),
            );
        }
        out.push(
            case(
                format!("{ty} patch {kind}: broken JSON"),
                Method::PATCH,
                &item,
                400,
            )
            .body(ct, "{\"metadata\": {"),
        );
        out.push(
            case(
                format!("{ty} patch {kind}: YAML body"),
                Method::PATCH,
                &item,
                400,
            )
            .body(ct, "metadata:\n  labels: {a: b}\n"),
        );
        out.push(
            case(
                format!("{ty} patch {kind}: empty body"),
                Method::PATCH,
                &item,
                400,
            )
            .body(ct, ""),
        );
        let p = |what: &str, code: u16, body: Value| {
            case(
                format!("{ty} patch {kind}: {what}"),
                Method::PATCH,
                &item,
                code,
            )
            .json(ct, &body)
        };
        out.push(p("renames", 400, json!({"metadata": {"name": "other"}})));
        out.push(p(
            "removes the name",
            400,
            json!({"metadata": {"name": null}}),
        ));
        out.push(p("removes metadata", 400, json!({"metadata": null})));
        if res.namespaced {
            out.push(p(
                "moves namespace",
                400,
                json!({"metadata": {"namespace": "default"}}),
            ));
        }
        out.push(p(
            "changes the uid",
            422,
            json!({"metadata": {"uid": "00000000-0000-0000-0000-000000000000"}}),
        ));
        out.push(p("changes the kind", 422, json!({"kind": other_kind(res)})));
        out.push(p(
            "changes the apiVersion",
            422,
            json!({"apiVersion": "v9"}),
        ));
        out.push(p(
            "labels of the wrong type",
            422,
            json!({"metadata": {"labels": "x"}}),
        ));
        out.push(p(
            "invalid label key",
            422,
            json!({"metadata": {"labels": {"bad key!": "v"}}}),
        ));
        out.push(p(
            "stale resourceVersion",
            409,
            json!({"metadata": {"resourceVersion": "1"}}),
        ));
        out.push(
            case(
                format!("{ty} patch {kind}: nested 200 deep"),
                Method::PATCH,
                &item,
                400,
            )
            .body(ct, format!("{{\"metadata\": {}}}", nested_json(200))),
        );
    }
    out.push(
        case(
            format!("strategic patch {kind}: ownerReferences item without its merge key"),
            Method::PATCH,
            &item,
            400,
        )
        .json(
            STRATEGIC,
            &json!({"metadata": {"ownerReferences": [{"kind": "X"}]}}),
        ),
    );

    for (ty, ct, body) in [
        ("merge", MERGE, json!({"bogusField": 1})),
        ("strategic", STRATEGIC, json!({"bogusField": 1})),
        (
            "json",
            JSON_PATCH,
            json!([{"op": "add", "path": "/bogusField", "value": 1}]),
        ),
    ] {
        out.push(
            case(
                format!("{ty} patch {kind}: unknown field under Strict"),
                Method::PATCH,
                format!("{item}?fieldValidation=Strict"),
                422,
            )
            .json(ct, &body),
        );
    }

    // patch: JSON patch
    let jp = |what: &str, code: u16, body: Value| {
        case(
            format!("json patch {kind}: {what}"),
            Method::PATCH,
            &item,
            code,
        )
        .json(JSON_PATCH, &body)
    };
    out.push(jp(
        "body is an object",
        400,
        json!({"op": "add", "path": "/x", "value": 1}),
    ));
    out.push(jp("body is a string", 400, json!("str")));
    out.push(jp("body is null", 400, Value::Null));
    out.push(jp("operation is a number", 400, json!([1])));
    out.push(jp(
        "op is not a string",
        400,
        json!([{"op": 1, "path": "/metadata"}]),
    ));
    out.push(
        case(
            format!("json patch {kind}: broken JSON"),
            Method::PATCH,
            &item,
            400,
        )
        .body(JSON_PATCH, "[{\"op\": "),
    );
    out.push(jp(
        "failed test",
        422,
        json!([{"op": "test", "path": "/metadata/name", "value": "nope"}]),
    ));
    out.push(jp(
        "missing path",
        422,
        json!([{"op": "replace", "path": "/metadata/nosuch/x", "value": 1}]),
    ));
    out.push(jp(
        "path without a slash",
        422,
        json!([{"op": "add", "path": "metadata", "value": 1}]),
    ));
    out.push(jp(
        "unknown op",
        422,
        json!([{"op": "bogus", "path": "/metadata"}]),
    ));
    out.push(jp(
        "add without a value",
        422,
        json!([{"op": "add", "path": "/metadata/labels"}]),
    ));
    out.push(jp(
        "removes the name",
        400,
        json!([{"op": "remove", "path": "/metadata/name"}]),
    ));
    out.push(jp(
        "renames",
        400,
        json!([{"op": "replace", "path": "/metadata/name", "value": "other"}]),
    ));
    if res.namespaced {
        out.push(jp(
            "moves namespace",
            400,
            json!([{"op": "replace", "path": "/metadata/namespace", "value": "default"}]),
        ));
    }
    out.push(jp(
        "changes the uid",
        422,
        json!([{"op": "replace", "path": "/metadata/uid", "value": "x"}]),
    ));
    out.push(jp(
        "changes the kind",
        422,
        json!([{"op": "replace", "path": "/kind", "value": other_kind(res)}]),
    ));
    out.push(jp(
        "changes the apiVersion",
        422,
        json!([{"op": "replace", "path": "/apiVersion", "value": "v9"}]),
    ));
    out.push(jp(
        "replaces the object with a string",
        422,
        json!([{"op": "replace", "path": "", "value": "str"}]),
    ));
    out.push(jp(
        "labels of the wrong type",
        422,
        json!([{"op": "add", "path": "/metadata/labels", "value": 5}]),
    ));
    out.push(jp(
        "stale resourceVersion",
        409,
        json!([{"op": "replace", "path": "/metadata/resourceVersion", "value": "1"}]),
    ));
    out.push(jp(
        "10001 operations",
        413,
        Value::Array(vec![
            json!({"op": "test", "path": "/kind", "value": kind});
            10_001
        ]),
    ));
    for ct in [APPLY_YAML, APPLY_JSON, JSON, YAML, "text/plain"] {
        out.push(
            case(
                format!("patch {kind}: content type {ct}"),
                Method::PATCH,
                &item,
                415,
            )
            .body(ct, "{}"),
        );
    }
    out.push(
        case(
            format!("merge patch {kind}: missing object, body a string"),
            Method::PATCH,
            format!("{c}/missing"),
            400,
        )
        .json(MERGE, &json!("str")),
    );

    // delete
    out.push(
        case(
            format!("delete {kind}: broken JSON options"),
            Method::DELETE,
            &item,
            400,
        )
        .body(JSON, "{\"kind\":"),
    );
    out.push(
        case(
            format!("delete {kind}: options are a string"),
            Method::DELETE,
            &item,
            400,
        )
        .json(JSON, &json!("str")),
    );
    out.push(
        case(
            format!("delete {kind}: options are an array"),
            Method::DELETE,
            &item,
            400,
        )
        .json(JSON, &json!([1])),
    );
    out.push(case(
        format!("delete {kind}: unknown propagationPolicy"),
        Method::DELETE,
        format!("{item}?propagationPolicy=Sometimes"),
        422,
    ));
    out.push(case(
        format!("delete {kind}: gracePeriodSeconds not a number"),
        Method::DELETE,
        format!("{item}?gracePeriodSeconds=soon"),
        400,
    ));
    out.push(case(format!("delete {kind}: uid precondition fails"), Method::DELETE, &item, 409).json(JSON, &json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "00000000-0000-0000-0000-000000000000"}})));
    out.push(
        case(
            format!("delete {kind}: resourceVersion precondition fails"),
            Method::DELETE,
            &item,
            409,
        )
        .json(JSON, &json!({"preconditions": {"resourceVersion": "1"}})),
    );
    out.push(
        case(
            format!("delete {kind}: options over 3 MiB"),
            Method::DELETE,
            &item,
            413,
        )
        .chunked(JSON, oversized(res)),
    );
    out.push(case(
        format!("deletecollection {kind}: bad label selector"),
        Method::DELETE,
        format!("{c}?labelSelector=a+in+(b"),
        400,
    ));
    out.push(case(
        format!("deletecollection {kind}: unknown field selector"),
        Method::DELETE,
        format!("{c}?fieldSelector=spec.bogus%3Dx"),
        400,
    ));

    // list and watch
    for (what, q) in [
        ("unclosed set label selector", "labelSelector=a+in+(b"),
        ("label selector without a key", "labelSelector=%3Db"),
        (
            "label selector with a bad value",
            "labelSelector=a%3D%25%25",
        ),
        ("unknown field selector", "fieldSelector=spec.bogus%3Dx"),
        (
            "field selector without operator",
            "fieldSelector=metadata.name",
        ),
        (
            "watch from a resourceVersion that is not a number",
            "watch=1&resourceVersion=abc",
        ),
        ("bad includeObject", "includeObject=Sometimes"),
    ] {
        out.push(case(
            format!("list {kind}: {what}"),
            Method::GET,
            format!("{c}?{q}"),
            400,
        ));
    }
    let watch_path = c.replacen("/v1/", "/v1/watch/", 1);
    out.push(case(
        format!("watch {kind}: watch path from a resourceVersion that is not a number"),
        Method::GET,
        format!("{watch_path}?resourceVersion=abc"),
        400,
    ));
    out.push(
        case(
            format!("list {kind}: unacceptable Accept"),
            Method::GET,
            &c,
            406,
        )
        .accept("application/bogus"),
    );
    out.push(case(
        format!("get {kind}: missing"),
        Method::GET,
        format!("{c}/missing"),
        404,
    ));
    out.push(case(
        format!("get {kind}: unknown subresource"),
        Method::GET,
        format!("{item}/bogus"),
        404,
    ));

    // path traversal, as written on the wire (clients would resolve the dots)
    let root = if res.group.is_empty() {
        "/api/v1".to_string()
    } else {
        format!("/apis/{}/{}", res.group, res.version)
    };
    if res.namespaced {
        for ns in ["..", "%2e%2e", "."] {
            out.push(raw(
                format!("list {kind}: namespace {ns}"),
                get_request(&format!("{root}/namespaces/{ns}/{}", res.plural)),
                400,
            ));
        }
        let body = sample(res, "x").to_string();
        out.push(raw(
            format!("create {kind}: POST to namespace .."),
            format!(
                "POST {root}/namespaces/../{} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                res.plural,
                body.len()
            ),
            400,
        ));
    }
    for name in ["..", "%2e%2e", "a%2fb"] {
        out.push(raw(
            format!("get {kind}: name {name}"),
            get_request(&format!("{c}/{name}")),
            400,
        ));
    }
    out
}

/// Cases of the kinds that are only created and answered, never stored (reviews).
fn review_cases(res: &ResourceInfo) -> Vec<Case> {
    let c = collection(res);
    let kind = res.kind;
    let mut out = Vec::new();
    let mut other = json!({"apiVersion": res.api_version(), "kind": other_kind(res), "spec": {}});
    for (what, ct, body, code) in [
        ("body is a string", JSON, "\"str\"".to_string(), 400),
        ("body is null", JSON, "null".to_string(), 400),
        ("body is an array", JSON, "[1,2]".to_string(), 400),
        ("broken JSON", JSON, "{\"spec\":".to_string(), 400),
        ("broken YAML", YAML, "spec: [\n".to_string(), 400),
        ("empty body", JSON, String::new(), 400),
        ("body of another kind", JSON, other.to_string(), 400),
        ("text/plain", "text/plain", "x".to_string(), 415),
        (
            "server-side apply type",
            APPLY_YAML,
            "spec: {}\n".to_string(),
            415,
        ),
        ("JSON nested 200 deep", JSON, nested_json(200), 400),
        ("YAML nested 200 deep", YAML, nested_yaml(200), 400),
        ("YAML alias bomb", YAML, alias_bomb(res), 400),
    ] {
        out.push(case(format!("create {kind}: {what}"), Method::POST, &c, code).body(ct, body));
    }
    other["pad"] = json!("x".repeat(OVER_LIMIT));
    let big = other.to_string().into_bytes();
    out.push(
        case(
            format!("create {kind}: body over 3 MiB"),
            Method::POST,
            &c,
            413,
        )
        .body(JSON, big.clone()),
    );
    out.push(
        case(
            format!("create {kind}: chunked body over 3 MiB"),
            Method::POST,
            &c,
            413,
        )
        .chunked(JSON, big),
    );
    for method in [Method::GET, Method::DELETE] {
        out.push(case(
            format!("{method} {kind}: not served"),
            method,
            &c,
            405,
        ));
    }
    for method in [Method::PUT, Method::PATCH] {
        out.push(
            case(
                format!("{method} {kind}: not served"),
                method,
                format!("{c}/x"),
                405,
            )
            .json(MERGE, &json!({})),
        );
    }
    out
}

fn meta_remove(o: &mut Value, key: &str) {
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove(key);
    }
}

/// Cases of one kind's fields (out-of-range ports and IPs, wrong field types).
fn field_cases(res: &ResourceInfo, current: &Value) -> Vec<Case> {
    let c = collection(res);
    let item = format!("{c}/sample");
    let kind = res.kind;
    let mut out = Vec::new();
    let create = |what: &str, code: u16, edit: &dyn Fn(&mut Value)| {
        let mut o = sample(res, "fields");
        edit(&mut o);
        case(format!("create {kind}: {what}"), Method::POST, &c, code).json(JSON, &o)
    };
    let update = |what: &str, code: u16, edit: &dyn Fn(&mut Value)| {
        let mut o = current.clone();
        edit(&mut o);
        case(format!("update {kind}: {what}"), Method::PUT, &item, code).json(JSON, &o)
    };
    let merge = |what: &str, code: u16, p: Value| {
        case(
            format!("merge patch {kind}: {what}"),
            Method::PATCH,
            &item,
            code,
        )
        .json(MERGE, &p)
    };
    let strategic = |what: &str, code: u16, p: Value| {
        case(
            format!("strategic patch {kind}: {what}"),
            Method::PATCH,
            &item,
            code,
        )
        .json(STRATEGIC, &p)
    };
    match kind {
        "Service" => {
            out.push(create("port 70000", 422, &|o| {
                o["spec"]["ports"][0]["port"] = json!(70000)
            }));
            out.push(create("port 0", 422, &|o| {
                o["spec"]["ports"][0]["port"] = json!(0)
            }));
            out.push(create("port -1", 422, &|o| {
                o["spec"]["ports"][0]["port"] = json!(-1)
            }));
            out.push(create("port beyond int32", 400, &|o| {
                o["spec"]["ports"][0]["port"] = json!(1u64 << 40)
            }));
            out.push(create("port a string", 400, &|o| {
                o["spec"]["ports"][0]["port"] = json!("http")
            }));
            out.push(create("nodePort outside the range", 422, &|o| {
                o["spec"]["type"] = json!("NodePort");
                o["spec"]["ports"][0]["nodePort"] = json!(80);
            }));
            out.push(create("clusterIP outside the range", 422, &|o| {
                o["spec"]["clusterIP"] = json!("1.2.3.4")
            }));
            out.push(create("clusterIP not an IP", 422, &|o| {
                o["spec"]["clusterIP"] = json!("999.1.1.1")
            }));
            out.push(create("unknown type", 422, &|o| {
                o["spec"]["type"] = json!("Bogus")
            }));
            out.push(update("port 70000", 422, &|o| {
                o["spec"]["ports"][0]["port"] = json!(70000)
            }));
            out.push(update("targetPort 70000", 422, &|o| {
                o["spec"]["ports"][0]["targetPort"] = json!(70000)
            }));
            out.push(merge(
                "port 70000",
                422,
                json!({"spec": {"ports": [{"port": 70000}]}}),
            ));
            out.push(merge(
                "port a string",
                422,
                json!({"spec": {"ports": [{"port": "http"}]}}),
            ));
            out.push(strategic(
                "port 70000",
                422,
                json!({"spec": {"ports": [{"port": 80, "targetPort": 70000}]}}),
            ));
            out.push(strategic(
                "ports without their merge key",
                400,
                json!({"spec": {"ports": [{"name": "x"}]}}),
            ));
        }
        "Pod" => {
            out.push(create("container without image", 422, &|o| {
                o["spec"]["containers"][0] = json!({"name": "c"})
            }));
            out.push(create("no containers", 422, &|o| {
                o["spec"]["containers"] = json!([])
            }));
            out.push(create("containerPort 70000", 422, &|o| {
                o["spec"]["containers"][0]["ports"] = json!([{"containerPort": 70000}])
            }));
            out.push(create("containers not a list", 400, &|o| {
                o["spec"]["containers"] = json!("nginx")
            }));
            out.push(merge(
                "containers replaced by a string",
                422,
                json!({"spec": {"containers": "nginx"}}),
            ));
            out.push(strategic(
                "container without its merge key",
                400,
                json!({"spec": {"containers": [{"image": "x"}]}}),
            ));
        }
        "Endpoints" => {
            out.push(create("address not an IP", 422, &|o| {
                o["subsets"][0]["addresses"][0]["ip"] = json!("not-an-ip")
            }));
            out.push(create("port 0", 422, &|o| {
                o["subsets"][0]["ports"][0]["port"] = json!(0)
            }));
            out.push(merge("port 70000", 422, json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 70000}]}]})));
        }
        "ConfigMap" | "Secret" => {
            out.push(create("invalid data key", 422, &|o| {
                o["data"] = json!({"bad key!": "dg=="})
            }));
            out.push(merge("data a number", 422, json!({"data": 42})));
            out.push(merge(
                "invalid data key",
                422,
                json!({"data": {"bad key!": "dg=="}}),
            ));
        }
        "ReplicationController" => {
            out.push(create("selector not matching the template", 422, &|o| {
                o["spec"]["selector"] = json!({"app": "other"})
            }));
            out.push(create("negative replicas", 422, &|o| {
                o["spec"]["replicas"] = json!(-1)
            }));
            out.push(merge(
                "negative replicas",
                422,
                json!({"spec": {"replicas": -1}}),
            ));
        }
        "Deployment" => {
            out.push(create("both maxSurge and maxUnavailable 0", 422, &|o| {
                o["spec"]["strategy"] = json!({"type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}})
            }));
            out.push(create("rollingUpdate with Recreate", 422, &|o| {
                o["spec"]["strategy"] = json!({"type": "Recreate",
                    "rollingUpdate": {"maxSurge": 1}})
            }));
            out.push(create("maxUnavailable above 100%", 422, &|o| {
                o["spec"]["strategy"] = json!({"rollingUpdate": {"maxUnavailable": "150%"}})
            }));
            out.push(create(
                "progress deadline not above minReadySeconds",
                422,
                &|o| {
                    o["spec"]["minReadySeconds"] = json!(10);
                    o["spec"]["progressDeadlineSeconds"] = json!(10);
                },
            ));
            out.push(merge(
                "negative replicas",
                422,
                json!({"spec": {"replicas": -1}}),
            ));
            out.push(merge(
                "changes the selector",
                422,
                json!({"spec": {"selector": {"matchLabels": {"app": "other"}}}}),
            ));
        }
        "ReplicaSet" => {
            out.push(create("selector not matching the template", 422, &|o| {
                o["spec"]["selector"] = json!({"matchLabels": {"app": "other"}})
            }));
            out.push(create("no template", 422, &|o| {
                o["spec"].as_object_mut().map(|m| m.remove("template"));
            }));
            out.push(merge(
                "changes the selector",
                422,
                json!({"spec": {"selector": {"matchLabels": {"app": "other"}}}}),
            ));
        }
        "DaemonSet" => {
            out.push(create("selector not matching the template", 422, &|o| {
                o["spec"]["selector"] = json!({"matchLabels": {"app": "other"}})
            }));
            out.push(merge(
                "changes the selector",
                422,
                json!({"spec": {"selector": {"matchLabels": {"app": "other"}}}}),
            ));
        }
        "EndpointSlice" => {
            out.push(create("unknown addressType", 422, &|o| {
                o["addressType"] = json!("IPv5")
            }));
        }
        _ => {}
    }
    out
}

/// Cases of the request limits across verbs and content types, on a ConfigMap.
fn limit_cases(current: &Value) -> Vec<Case> {
    let cm = RESOURCES
        .iter()
        .find(|r| r.kind == "ConfigMap")
        .expect("configmaps are served");
    let c = collection(cm);
    let item = format!("{c}/sample");
    let mut big = current.clone();
    big["data"]["pad"] = json!("x".repeat(OVER_LIMIT));
    let big_json = big.to_string().into_bytes();
    let big_yaml = serde_yaml::to_string(&big).expect("yaml").into_bytes();
    let eight_mb = {
        let mut o = sample(cm, "eight");
        o["data"] = json!({"pad": "x".repeat(8 * 1024 * 1024)});
        o.to_string().into_bytes()
    };
    let mut out = Vec::new();
    for chunked in [false, true] {
        let how = if chunked { "chunked " } else { "" };
        let with = |c: Case, ct: &'static str, body: Vec<u8>| {
            if chunked {
                c.chunked(ct, body)
            } else {
                c.body(ct, body)
            }
        };
        out.push(with(
            case(format!("create: {how}8 MB body"), Method::POST, &c, 413),
            JSON,
            eight_mb.clone(),
        ));
        for (ct, body) in [(JSON, &big_json), (YAML, &big_yaml), (PROTOBUF, &big_json)] {
            out.push(with(
                case(
                    format!("create: {how}{ct} body over 3 MiB"),
                    Method::POST,
                    &c,
                    413,
                ),
                ct,
                body.clone(),
            ));
            out.push(with(
                case(
                    format!("update: {how}{ct} body over 3 MiB"),
                    Method::PUT,
                    &item,
                    413,
                ),
                ct,
                body.clone(),
            ));
        }
        for ct in [MERGE, STRATEGIC] {
            let body = json!({"data": {"pad": "x".repeat(OVER_LIMIT)}})
                .to_string()
                .into_bytes();
            out.push(with(
                case(
                    format!("patch: {how}{ct} body over 3 MiB"),
                    Method::PATCH,
                    &item,
                    413,
                ),
                ct,
                body,
            ));
        }
        let body = json!([{"op": "add", "path": "/data/pad", "value": "x".repeat(OVER_LIMIT)}])
            .to_string()
            .into_bytes();
        out.push(with(
            case(
                format!("patch: {how}json patch over 3 MiB"),
                Method::PATCH,
                &item,
                413,
            ),
            JSON_PATCH,
            body,
        ));
        out.push(with(
            case(
                format!("delete: {how}options over 3 MiB"),
                Method::DELETE,
                &item,
                413,
            ),
            JSON,
            big_json.clone(),
        ));
    }
    // Declared lengths are refused before routing, whatever the verb or content type; a
    // chunked body of a GET is never read, and a PATCH of an unsupported type is 415 first.
    out.push(case("list: body over 3 MiB", Method::GET, &c, 413).body(JSON, big_json.clone()));
    out.push(
        case(
            "patch: server-side apply over 3 MiB",
            Method::PATCH,
            &item,
            413,
        )
        .body(APPLY_YAML, big_yaml.clone()),
    );
    // Clients that write the whole body before they read get the answer too.
    let head = |extra: &str| {
        format!(
            "POST {c} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}\r\n"
        )
    };
    let mut declared = head(&format!("Content-Length: {}\r\n", eight_mb.len())).into_bytes();
    declared.extend_from_slice(&eight_mb);
    out.push(Case {
        payload: Payload::Raw(declared),
        ..raw(
            "create: 8 MB body written before the answer is read",
            String::new(),
            413,
        )
    });
    let mut chunked = head("Transfer-Encoding: chunked\r\n").into_bytes();
    chunked.extend_from_slice(&chunked_encoding(&eight_mb));
    out.push(Case {
        payload: Payload::Raw(chunked),
        ..raw(
            "create: chunked 8 MB body written before the answer is read",
            String::new(),
            413,
        )
    });
    // A client that waits for `100 Continue` gets the 413 without sending the body.
    out.push(raw(
        "create: 8 MB declared, client waits for 100 Continue",
        format!(
            "POST {c} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            8 * 1024 * 1024
        ),
        413,
    ));
    out
}

/// Kubernetes' words for the cases of the report (and the limits), checked on top of
/// the codes: any one of them must be in the answer.
fn expected_words(what: &str) -> Option<&'static [&'static str]> {
    let (start, end) = (|s: &str| what.starts_with(s), |s: &str| what.ends_with(s));
    Some(match () {
        _ if start("merge patch") && end("body is a string") => &[
            "error decoding patch: json: cannot unmarshal string into Go value of type map[string]interface {}",
        ],
        _ if start("merge patch") && end("body is a number") => {
            &["json: cannot unmarshal number into Go value of type map[string]interface {}"]
        }
        _ if start("merge patch") && end("body is an array") => {
            &["json: cannot unmarshal array into Go value of type map[string]interface {}"]
        }
        _ if start("merge patch") && end("body is null") => &["Invalid JSON Patch"],
        _ if start("strategic patch") && end("body is a string") => {
            &["\"json: cannot unmarshal string into Go value of type map[string]interface {}\""]
        }
        _ if end(": renames") => {
            &["the name of the object (other) does not match the name on the URL (sample)"]
        }
        _ if end(": moves namespace") => &[
            "the namespace of the provided object does not match the namespace sent on the request",
        ],
        _ if what.contains("patch") && end("changes the uid") => &["metadata.uid: Invalid value: "],
        _ if end("another uid") => {
            &["Precondition failed: UID in precondition: 00000000-0000-0000-0000-000000000000"]
        }
        _ if what.contains("over 3 MiB") || what.contains("8 MB") => {
            &["Request entity too large: limit is 3145728"]
        }
        _ if end("10001 operations") => {
            &["The allowed maximum operations in a JSON patch is 10000, got 10001"]
        }
        _ if end("YAML alias bomb") => &[
            "document contains excessive aliasing",
            "repetition limit exceeded",
        ],
        _ if what.contains("content type application/apply-patch") => &[
            "accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json",
        ],
        _ if end("namespace ..") || end("name ..") => &["may not be '..'"],
        _ if end("stale resourceVersion") => &["the object has been modified"],
        _ => return None,
    })
}

/// Every key with its value and revisions.
async fn snapshot(store: &dyn Store) -> BTreeMap<String, (Vec<u8>, i64, i64)> {
    let (kvs, _) = store.list("/").await.expect("store lists");
    kvs.into_iter()
        .map(|kv| (kv.key, (kv.value, kv.create_revision, kv.mod_revision)))
        .collect()
}

fn differences(
    before: &BTreeMap<String, (Vec<u8>, i64, i64)>,
    after: &BTreeMap<String, (Vec<u8>, i64, i64)>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => out.push(format!("{k} was deleted")),
            Some(a) if a != v => out.push(format!(
                "{k} changed:\n  before {}\n  after  {}",
                String::from_utf8_lossy(&v.0),
                String::from_utf8_lossy(&a.0)
            )),
            Some(_) => {}
        }
    }
    for k in after.keys().filter(|k| !before.contains_key(*k)) {
        out.push(format!("{k} was created"));
    }
    out
}

/// Writes the whole request, then reads the answer, as many clients do: a server that stops
/// reading and closes while the client writes resets the connection, and the client never
/// sees the answer (code 0 here).
async fn send_raw(base: &str, request: &[u8]) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let wrote = sock.write_all(request).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), sock.read_to_end(&mut buf))
        .await
        .expect("raw response in time");
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if code == 0 {
        return (
            0,
            format!("no HTTP answer (write: {wrote:?}, read: {read:?})"),
        );
    }
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

fn chunked_encoding(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 1000 + 16);
    for c in body.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

async fn run(api: &Api, c: &Case) -> (u16, String) {
    let mut req = match &c.payload {
        Payload::Raw(bytes) => return send_raw(&api.base, bytes).await,
        _ => api.http.request(c.method.clone(), api.url(&c.path)),
    };
    if let Some(ct) = c.ctype {
        req = req.header("content-type", ct);
    }
    if let Some(a) = c.accept {
        req = req.header("accept", a);
    }
    req = match &c.payload {
        Payload::Full(b) => req.body(b.clone()),
        Payload::Chunked(b) => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = b
                .chunks(64 * 1024)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            req.body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        }
        Payload::None | Payload::Raw(_) => req,
    };
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}: no answer: {e}", c.what));
    let code = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .unwrap_or_else(|e| panic!("{}: body: {e}", c.what));
    (code, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_and_verb_refuses_bad_input_and_keeps_the_store() {
    let api = start().await;
    let mut current = BTreeMap::new();
    for res in RESOURCES.iter() {
        if res.namespaced {
            let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace(res)}});
            let (code, s) = api.post("/api/v1/namespaces", &ns).await;
            assert_eq!(code, 201, "namespace for {}: {s}", res.plural);
        }
        if !res.persisted() {
            continue;
        }
        let (code, created) = api.post(&collection(res), &sample(res, "sample")).await;
        assert_eq!(code, 201, "sample {}: {created}", res.kind);
        current.insert(res.plural, created);
    }
    let mut cases = Vec::new();
    for res in RESOURCES.iter() {
        match current.get(res.plural) {
            Some(cur) => {
                cases.extend(kind_cases(res, cur));
                cases.extend(field_cases(res, cur));
            }
            None => cases.extend(review_cases(res)),
        }
    }
    cases.extend(limit_cases(&current["configmaps"]));

    let mut before = snapshot(api.server.store.as_ref()).await;
    assert!(before.len() > RESOURCES.len(), "the samples are stored");
    // Every case runs; the failures are listed together.
    let mut failures = Vec::new();
    for c in &cases {
        let (code, text) = run(&api, c).await;
        if code != c.code {
            failures.push(format!(
                "{}: expected {}, got {code}: {text:.300}",
                c.what, c.code
            ));
        }
        if let Some(words) = expected_words(&c.what)
            && !words.iter().any(|w| text.contains(w))
        {
            failures.push(format!(
                "{}: the answer does not say {words:?}: {text:.300}",
                c.what
            ));
        }
        match serde_json::from_str::<Value>(&text) {
            Ok(status) => {
                let mut wrong = Vec::new();
                if status["kind"] != "Status" || status["status"] != "Failure" {
                    wrong.push("not a failure Status");
                }
                if status["code"] != code {
                    wrong.push("its code is not the HTTP status");
                }
                if status["reason"].as_str().is_none_or(str::is_empty) {
                    wrong.push("no reason");
                }
                if status["message"].as_str().is_none_or(str::is_empty) {
                    wrong.push("no message");
                }
                if !wrong.is_empty() {
                    failures.push(format!("{}: {}: {text:.300}", c.what, wrong.join(", ")));
                }
            }
            Err(e) => failures.push(format!(
                "{}: the answer is not JSON ({e}): {text:.300}",
                c.what
            )),
        }
        let (health, _) = api.get("/healthz").await;
        assert_eq!(health, 200, "{}: the server stopped answering", c.what);
        let after = snapshot(api.server.store.as_ref()).await;
        let diff = differences(&before, &after);
        if !diff.is_empty() {
            failures.push(format!(
                "{}: the store changed:\n{}",
                c.what,
                diff.join("\n")
            ));
            before = after;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    let worded = cases
        .iter()
        .filter(|c| expected_words(&c.what).is_some())
        .count();
    println!(
        "bad-request suite: {} cases over {} kinds refused with a Status, store unchanged \
         ({worded} also checked for Kubernetes' words)",
        cases.len(),
        RESOURCES.len()
    );
    api.stop().await;
}

/// Streams a chunked body of `total` bytes, writing all of it before reading the answer;
/// `progress` is told once `signal_at` bytes are out. Returns the status code (0: none).
async fn stream_chunked(
    base: &str,
    path: &str,
    total: usize,
    signal_at: usize,
    progress: tokio::sync::oneshot::Sender<()>,
) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let chunk = vec![b' '; 64 * 1024];
    let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
    frame.extend_from_slice(&chunk);
    frame.extend_from_slice(b"\r\n");
    let mut progress = Some(progress);
    let mut sent = 0;
    let mut wrote = sock.write_all(head.as_bytes()).await;
    while wrote.is_ok() && sent < total {
        wrote = sock.write_all(&frame).await;
        sent += chunk.len();
        if sent >= signal_at
            && let Some(p) = progress.take()
        {
            let _ = p.send(());
        }
    }
    if wrote.is_ok() {
        wrote = sock.write_all(b"0\r\n\r\n").await;
    }
    let mut buf = Vec::new();
    let read = sock.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    match text.split_whitespace().nth(1).and_then(|c| c.parse().ok()) {
        Some(code) if wrote.is_ok() => (code, text),
        Some(code) => (
            code,
            format!(
                "answered, but the body could not be written ({wrote:?} after {sent} bytes): {text}"
            ),
        ),
        None => (
            0,
            format!("no HTTP answer after {sent} bytes (write: {wrote:?}, read: {read:?})"),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_are_answered_while_a_100_mb_body_is_refused() {
    let api = start().await;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kept"},
                    "data": {"k": "v"}});
    let (code, s) = api.post("/api/v1/namespaces/default/configmaps", &cm).await;
    assert_eq!(code, 201, "{s}");
    let before = snapshot(api.server.store.as_ref()).await;

    let (tx, started) = tokio::sync::oneshot::channel();
    let base = api.base.clone();
    let big = tokio::spawn(async move {
        stream_chunked(
            &base,
            "/api/v1/namespaces/default/configmaps",
            100 * 1000 * 1000,
            8 * 1024 * 1024,
            tx,
        )
        .await
    });
    // The 100 clients start once the upload is past the limit and still going.
    if started.await.is_err() {
        let ended = big.await.expect("upload task");
        panic!(
            "the upload ended before 8 MiB were sent: {} {:.300}",
            ended.0, ended.1
        );
    }
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..100 {
        let base = api.base.clone();
        clients.spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client");
            let url = format!("{base}/api/v1/namespaces/default/configmaps/kept");
            let resp = http
                .get(&url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("client {i}: no answer: {e}"));
            let code = resp.status().as_u16();
            let obj: Value = resp.json().await.expect("json");
            (i, code, obj)
        });
    }
    let mut answered = 0;
    while let Some(r) = clients.join_next().await {
        let (i, code, obj) = r.expect("client task");
        assert_eq!(code, 200, "client {i}: {obj}");
        assert_eq!(obj["data"], json!({"k": "v"}), "client {i}");
        answered += 1;
    }
    assert_eq!(answered, 100);

    // Bounded: the upload ends (refused) rather than hanging.
    let (code, text) = tokio::time::timeout(Duration::from_secs(300), big)
        .await
        .expect("the 100 MB upload is answered in bounded time")
        .expect("upload task");
    assert_eq!(code, 413, "{text:.500}");
    assert!(
        text.contains("Request entity too large: limit is 3145728")
            && !text.contains("could not be written"),
        "{text:.500}"
    );
    let after = snapshot(api.server.store.as_ref()).await;
    assert!(
        differences(&before, &after).is_empty(),
        "{:?}",
        differences(&before, &after)
    );
    assert_eq!(api.get("/healthz").await.0, 200);
    api.stop().await;
}
